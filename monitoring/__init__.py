"""Monitoring: drift of live data against training data (a stage of its own; the pipeline composes it)."""
