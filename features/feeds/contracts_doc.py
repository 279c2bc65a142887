"""Render docs/data-contracts.md from the contracts in code, so the document never goes stale.

``make docs`` (``carecast data contracts-doc``) writes it; a test asserts the committed file equals
``render()``. The validation and importer sections come from the rule texts kept beside the code
that applies them (``features.feeds.validate.QUARANTINE_RULES``, ``features.feeds.noshow_import.MAPPING``).
"""

from __future__ import annotations

from features.feeds.contracts import CONTRACTS, FEEDS, Column, Contract
from features.feeds.noshow_import import MAPPING
from features.feeds.validate import QUARANTINE_RULES
from features.feeds.vocabulary import VOCABULARY_RULES


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _bounds(col: Column) -> str:
    if col.min is not None and col.max is not None:
        return f"{col.min:g} to {col.max:g}"
    if col.min is not None:
        return f">= {col.min:g}"
    if col.max is not None:
        return f"<= {col.max:g}"
    return ""


def _feed(c: Contract) -> list[str]:
    lines = [f"## {c.feed}", "", c.description, "",
             f"Key: `{c.key}` (unique). Event time: `{c.timestamp}`.", "",
             "| column | type | nullable | allowed values | bounds | description |",
             "|---|---|---|---|---|---|"]
    for col in c.columns:
        allowed = ", ".join(col.allowed) if col.allowed else "the site's vocabulary" if col.vocabulary else ""
        lines.append(f"| `{col.name}` | {col.kind} | {'yes' if col.nullable else 'no'} | {allowed} | "
                     f"{_bounds(col)} | {_cell(col.description)} |")
    lines.append("")
    if c.rules:
        lines += ["| rule | why | reads |", "|---|---|---|"]
        for r in c.rules:
            lines.append(f"| {_cell(r.name)} | {_cell(r.description)} | {', '.join(r.needs) or 'this feed'} |")
        lines.append("")
    return lines


def render() -> str:
    """The whole contracts document as markdown."""
    lines = ["# Data contracts", "",
             "<!-- Generated from features/feeds/contracts.py by `make docs`; edit the code, not this file. -->", "",
             "CareCast reads four feeds. Each is `FEED.parquet` (a file, or a folder of parquet parts) or "
             "`FEED.csv` in one folder. Types: `string`, `int` (int64), `float` (float64), `bool`, "
             "`timestamp` (UTC). `carecast data validate SRC` checks them against the contracts below.", ""]
    for feed in FEEDS:
        lines += _feed(CONTRACTS[feed])
    lines += ["## The site's vocabulary", ""]
    lines += [f"- {rule}" for rule in VOCABULARY_RULES]
    lines += ["", "## Validation and quarantine", ""]
    lines += [f"- {rule}" for rule in QUARANTINE_RULES]
    lines += ["", "`carecast data validate` exits 0 when every row loaded, 1 when rows were quarantined "
              "(0 with `--allow-quarantine`), 2 when a feed could not be read.", "",
              "## Public no-show dataset importer", "",
              "`carecast data import-noshow KaggleV2-May-2016.csv --out DIR` maps the public \"Medical "
              "Appointment No Shows\" dataset (Vitória, Brazil, 2016) into the four feeds, validates them, and "
              "writes validated feeds to `DIR`, bad rows to `DIR/quarantine`. Source timestamps are taken as UTC, "
              "as written.", ""]
    lines += [f"- {m}" for m in MAPPING]
    return "\n".join(lines) + "\n"
