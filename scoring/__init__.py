"""Batch scoring: tonight's risk lists from the champions (a stage of its own; the pipeline composes it)."""
