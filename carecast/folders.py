"""Dated output folders (risk lists, drift reports) and the ``LATEST`` pointer that names the newest.

A writer fills a folder, then moves the pointer with one rename, so a reader (the page, the pipeline,
monitoring) never sees a half-written folder; one helper, used by every stage that writes or reads them.
"""

from __future__ import annotations

from pathlib import Path

LATEST = "LATEST"


def write_latest(root: Path, folder: Path) -> None:
    """Point ``root/LATEST`` at ``folder`` atomically."""
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(folder.name + "\n")
    tmp.replace(root / LATEST)


def latest(root: Path) -> Path | None:
    """The folder ``root/LATEST`` names, or None when there is no pointer."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    return root / pointer.read_text().strip()
