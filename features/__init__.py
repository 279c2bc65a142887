"""Feeds and features: data contracts, validation, synthetic history, importers and the Feast store."""
