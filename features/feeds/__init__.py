"""Feeds: the data contracts, validation and the importers that turn a site's exports into the four feeds."""
