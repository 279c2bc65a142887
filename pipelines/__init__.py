"""Composition of the stages: the `carecast` CLI and the end-to-end pipeline."""
