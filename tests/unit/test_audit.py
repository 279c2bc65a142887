"""Code tier: the access trail's hash chain (carecast/audit.py) and the page's display guards."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from carecast.audit import AuditLog, AuditUnavailable
from serving.ui.data import _safe, neutral, short


def _trail(tmp_path: Path, n: int = 5) -> AuditLog:
    t = AuditLog(tmp_path / "audit", retention_days=30)
    for i in range(n):
        t.record("user:ann" if i % 2 == 0 else "key:outreach", f"page {i}", [f"P{i}", "P-common"], {"page": i})
    return t


def test_records_answer_who_saw_and_what_saw(tmp_path: Path) -> None:
    t = _trail(tmp_path)
    assert [r.seq for r in t.who_saw("P-common")] == [1, 2, 3, 4, 5]
    assert [r.what for r in t.who_saw("P3")] == ["page 3"]
    assert [r.seq for r in t.what_saw("ann")] == [1, 3, 5] and [r.seq for r in t.what_saw("key:outreach")] == [2, 4]
    assert t.who_saw("P-nobody") == [] and t.what_saw("bob") == []
    v = t.verify()
    assert v.ok and v.records == 5 and len(v.head) == 64


def test_reading_a_missing_trail_creates_nothing(tmp_path: Path) -> None:
    t = AuditLog(tmp_path / "audit")
    assert t.who_saw("P1") == [] and t.verify().ok and t.purge() == 0
    assert not (tmp_path / "audit").exists()


@pytest.mark.parametrize("tamper, seq, reason", [
    ("UPDATE records SET who = 'user:eve' WHERE seq = 3", 3, "content does not match its hash"),
    ("UPDATE records SET patients = '[\"P9\"]' WHERE seq = 2", 2, "content does not match"),
    ("DELETE FROM records WHERE seq = 4", 4, "record 4 is missing"),
    ("DELETE FROM record_patients WHERE seq = 2 AND patient_id = 'P1'", 2, "patient index"),
    ("DELETE FROM records WHERE seq <= 2; DELETE FROM record_patients WHERE seq <= 2", 3, "no recorded purge"),
])
def test_a_tampered_record_is_named(tmp_path: Path, tamper: str, seq: int, reason: str) -> None:
    t = _trail(tmp_path)
    t.close()
    db = sqlite3.connect(tmp_path / "audit" / "audit.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):   # the store itself refuses edits
        db.execute("UPDATE records SET who = 'x' WHERE seq = 1")
    db.executescript("DROP TRIGGER records_append_only_update; DROP TRIGGER records_append_only_delete;")
    db.executescript(tamper)
    if "seq <= 2" in tamper:   # a forger who also moves the start of the chain
        h = db.execute("SELECT prev FROM records WHERE seq = 3").fetchone()[0]
        db.execute("INSERT INTO chain VALUES ('anchor', ?), ('anchor_seq', '2')", (h,))
    db.commit()
    db.close()
    v = AuditLog(tmp_path / "audit").verify()
    assert not v.ok and v.broken_seq == seq and reason in v.reason, v


def test_purge_keeps_the_chain_verifiable(tmp_path: Path) -> None:
    t = _trail(tmp_path)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    assert t.purge(later) == 5
    t.record("user:ann", "page again", ["P1"])
    v = t.verify()
    assert v.ok and v.records == 2, v                # the purge record and the new one
    assert [r.what for r in t.what_saw("system:retention")] == ["audit purge"]
    assert t.who_saw("P-common") == []


def test_an_unwritable_trail_raises(tmp_path: Path) -> None:
    (tmp_path / "audit").write_text("not a folder")
    with pytest.raises(AuditUnavailable):
        AuditLog(tmp_path / "audit").record("user:ann", "page", ["P1"])


def test_display_guards() -> None:
    assert neutral("P1\u202e23\u2066x\u200f") == "P1\ufffd23\ufffdx\ufffd"
    assert short("A" * 3000) == "A" * 23 + "\u2026" and short("A12") == "A12"
    for lead in ("=", "+", "-", "@", "\t", "\r"):
        assert _safe(lead + "cmd") == "'" + lead + "cmd"
    assert _safe("P0001") == "P0001" and _safe("\u202e=1") == "\ufffd=1"
