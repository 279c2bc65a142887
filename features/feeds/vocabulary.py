"""The site's vocabulary: the codes each descriptive column takes, and the order that numbers them.

Why: departments, visit types, payer classes, languages and sexes are a clinic's own, not the product's. They
are learned from the feeds at validation (or pinned in ``carecast.yaml``), recorded in
``validated/vocabulary.json``, the build manifest and every model's metadata, and everything downstream (feature
names, category codes, the Feast views, the API and the page) follows the recorded vocabulary. Codes with meaning
for the product itself (visit and statement statuses, channels, engagement kinds and outcomes) stay in the
contracts: features and labels compute from them, so a site maps its own values onto them when it imports.

The rule is ``VOCABULARY_RULES`` (docs/data-contracts.md repeats it); ``resolve`` applies it, a pure function.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: (feed, column) of every vocabulary column, in the order the vocabulary lists them
COLUMNS: tuple[tuple[str, str], ...] = (("patients", "sex"), ("patients", "preferred_language"),
                                        ("patients", "insurance_type"), ("visits", "department"),
                                        ("visits", "visit_type"))
COLUMN_NAMES = tuple(c for _, c in COLUMNS)
#: the code every value outside a vocabulary is read as
OTHER = "other"
#: the file beside the feeds (declared by their exporter) and in the validated folder (resolved)
FILE = "vocabulary.json"
#: integer codes are stored as TINYINT in the build: a column holds at most this many codes
MAX_CODES = 100

VOCABULARY_RULES = (
    f"Vocabulary columns ({', '.join(f'`{f}.{c}`' for f, c in COLUMNS)}) take the site's own codes: they are "
    "learned from the feeds at validation, never checked against a fixed list.",
    "Pinned: a column listed under `vocabulary:` in `carecast.yaml` takes exactly the listed codes in that order, "
    f"plus `{OTHER}` last when not listed; every other value is read as `{OTHER}`.",
    f"Declared: a `{FILE}` beside the feeds (`{{\"columns\": {{\"department\": [...], ...}}}}`, written by the "
    "synthetic generator or an importer) gives codes that are kept, in its order, whether seen or not.",
    "Learned: after the declared codes, every other code seen at least `vocabulary.min_count` times (default 10) "
    "in the loaded rows, most frequent first, ties by name; at most `vocabulary.max_codes` codes in all (default "
    f"50). The rest are read as `{OTHER}`, appended when any value is.",
    f"Code i of a column is its i-th code; an empty cell is -1; a value outside the vocabulary is `{OTHER}`'s code "
    "when the vocabulary has one, else -1 (unknown). The same rule codes the feeds in the build, the training "
    "rows and the API's requests, whose answers say when a value was read as another.",
    f"The resolved vocabulary is written to `validated/{FILE}`, recorded in the feature build's manifest and with "
    "every model; feature names follow it (`dept_share_<department>`, the code as a lower-case identifier).",
)


class VocabularyError(ValueError):
    """A vocabulary file or setting cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Vocabulary:
    """Codes per vocabulary column (``COLUMN_NAMES``) and where each column's codes came from."""

    codes: dict[str, tuple[str, ...]]
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for col in COLUMN_NAMES:
            if col not in self.codes:
                raise VocabularyError(f"vocabulary: column '{col}' missing")

    def of(self, column: str) -> tuple[str, ...]:
        return self.codes[column]

    def code(self, column: str, value: Any) -> int:
        """The integer code of ``value`` (``VOCABULARY_RULES``): its position, else ``other``'s, else -1."""
        return encoder(self.codes[column])(value)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": {c: list(v) for c, v in self.codes.items()}, "sources": dict(self.sources)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "vocabulary") -> Vocabulary:
        cols = raw.get("columns")
        if not isinstance(cols, Mapping):
            raise VocabularyError(f"{where}: 'columns' must map each vocabulary column to its codes")
        codes = {c: _codes(cols.get(c), f"{where}: columns.{c}") for c in COLUMN_NAMES}
        return cls(codes, {c: str(s) for c, s in (raw.get("sources") or {}).items()})


def _codes(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise VocabularyError(f"{where}: must be a list of codes")
    out = tuple(str(v) for v in value)
    if any(not v for v in out) or len(set(out)) != len(out):
        raise VocabularyError(f"{where}: codes must be non-empty and unique")
    if len(out) > MAX_CODES:
        raise VocabularyError(f"{where}: at most {MAX_CODES} codes")
    return out


def encoder(codes: Sequence[str]) -> Any:
    """A function value -> integer code for one column (``VOCABULARY_RULES``); built once, called per value."""
    index = {v: i for i, v in enumerate(codes)}
    other = index.get(OTHER, -1)

    def code(value: Any) -> int:
        if value is None or (isinstance(value, float) and value != value):   # None or NaN: empty
            return -1
        return index.get(value, other)
    return code


def read_declared(folder: Path) -> dict[str, tuple[str, ...]]:
    """The codes a feed folder declares (its ``vocabulary.json``), or none."""
    path = Path(folder) / FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VocabularyError(f"{path}: not a readable vocabulary file ({exc})") from None
    cols = raw.get("columns") if isinstance(raw, Mapping) else None
    if not isinstance(cols, Mapping):
        raise VocabularyError(f"{path}: 'columns' must map vocabulary columns to their codes")
    unknown = [c for c in cols if c not in COLUMN_NAMES]
    if unknown:
        raise VocabularyError(f"{path}: columns.{unknown[0]}: not a vocabulary column "
                              f"(one of {', '.join(COLUMN_NAMES)})")
    return {c: _codes(v, f"{path}: columns.{c}") for c, v in cols.items()}


def read_sources(folder: Path) -> dict[str, str]:
    """Where a resolved vocabulary file's codes came from (validation's ``sources``), or none."""
    path = Path(folder) / FILE
    try:
        raw = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in (raw.get("sources") or {}).items()} if raw.get("resolved") else {}


def resolve(counts: Mapping[str, Mapping[str, int]], declared: Mapping[str, Sequence[str]],
            pinned: Mapping[str, Sequence[str] | None], min_count: int, max_codes: int,
            declared_sources: Mapping[str, str] | None = None) -> Vocabulary:
    """``VOCABULARY_RULES`` as a pure function: value counts per column (of the loaded rows), the declared codes,
    the pinned codes (None: not pinned) -> the vocabulary. ``declared_sources``: where the declared codes came
    from, when they are a vocabulary validation resolved (the build re-resolves a validated folder's)."""
    codes: dict[str, tuple[str, ...]] = {}
    sources: dict[str, str] = {}
    for col in COLUMN_NAMES:
        pin = pinned.get(col)
        if pin:
            codes[col] = tuple(pin) + (() if OTHER in pin else (OTHER,))
            sources[col] = "pinned"
            continue
        have = list(declared.get(col, ()))
        seen = counts.get(col, {})
        learned = sorted((v for v, n in seen.items() if n >= min_count and v not in have), key=lambda v: (-seen[v], v))
        out = have + learned[:max(0, max_codes - len(have))]
        if OTHER not in out and any(v not in out for v in seen):
            out.append(OTHER)
        codes[col] = tuple(out)
        sources[col] = "declared" if have and len(out) == len(have) else "learned"
        if declared_sources and col in declared_sources and len(out) == len(have):
            sources[col] = declared_sources[col]
    return Vocabulary(codes, sources)


def write(vocab: Vocabulary, folder: Path, **extra: Any) -> Path:
    """``folder/vocabulary.json`` (written whole, then renamed: a reader never sees half a file)."""
    path = Path(folder) / FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({**vocab.to_dict(), **extra}, indent=1) + "\n")
    tmp.replace(path)
    return path


_BUILD_CACHE: dict[str, tuple[float, Vocabulary]] = {}


def of_manifest(path: Path) -> Vocabulary:
    """The vocabulary a feature build recorded in its manifest (cached while the file is unchanged)."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no features built; run `carecast features build --data DIR` first") from None
    hit = _BUILD_CACHE.get(str(path))
    if hit is not None and hit[0] == mtime:
        return hit[1]
    raw = json.loads(path.read_text()).get("vocabulary")
    if raw is None:
        raise VocabularyError(f"{path}: the build records no vocabulary (built by an older version); "
                              "run `carecast features build` again")
    vocab = Vocabulary.from_dict(raw, f"{path}: vocabulary")
    _BUILD_CACHE[str(path)] = (mtime, vocab)
    return vocab
