"""Every activity feature at every snapshot of a chunk of patients, in one compiled pass (numba).

Why compiled: the numpy formulation (a running sum and two ``searchsorted`` gathers per feature, per chunk) read
every event array a few dozen times and cost about 150 CPU-s of the 10M-visit build's 330. Here each patient's
snapshots are visited in time order while one pointer per event source moves forward: an event is added to the
running counts when it becomes known (time <= t) and leaves a window's counts when it falls out of it, so a chunk
is one sequential pass over its events and snapshots. The rules are those of ``features/build/run.py`` (as-of rule,
whole-second window edges, ties) and the tests compare the results with counts taken directly from the feeds.

A snapshot that provably repeats its patient's previous one is not stored: no source gained an event, no window
lost one and no booking opened or closed since the previous snapshot (the as-of snapshot is always kept).

The compiled pass is ``features/build/jit.py``; numba is imported when it is first used, not at import time,
and its compiled code is cached beside the module, so only the first build after an install compiles (seconds).
"""

from __future__ import annotations

import numpy as np

from features.catalog import ACTIVITY_TIMESTAMPS, WINDOWS, activity_features
from features.feeds.vocabulary import Vocabulary

#: a chunk's output: float32 feature rows and float64 timestamp rows (``output_buffer``)
Buffers = tuple[np.ndarray, np.ndarray]


def feature_names(vocab: Vocabulary) -> list[str]:
    """The kernel's output rows, in order: the snapshot file's feature columns (``features/build/run.py``).
    ``snapshot_jit.run`` writes its rows in this order (one department share per department of ``vocab``)."""
    return activity_features(vocab) + ACTIVITY_TIMESTAMPS


def _money(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Amounts as float and as whole cents, and whether they are whole cents (then sums are exact in cents, so a
    patient's total is the same whatever else the chunk holds)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    cents = np.round(x * 100.0)
    whole = bool(np.all(np.abs(x * 100.0 - cents) < 1e-6))
    return x, cents.astype(np.int64), whole


def output_buffer(snapshots: int, vocab: Vocabulary, reuse: Buffers | None = None) -> Buffers:
    """Buffers for ``snapshot_features``: one float32 row per feature and one float64 row per timestamp (the file's
    types, so Arrow takes the rows without a cast), ``reuse`` when large enough. Reusing buffers across chunks
    matters: the first touch of a fresh 300 MB buffer cost more than the arithmetic that fills it."""
    n_features = len(activity_features(vocab))
    if reuse is not None and reuse[0].shape[1] >= snapshots and reuse[0].shape[0] == n_features:
        return reuse
    n = max(snapshots, 1)
    return np.empty((n_features, n), np.float32), np.empty((len(ACTIVITY_TIMESTAMPS), n), np.float64)


def _bookings_in_order(bk: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The bookings by patient, then booked time (pk, booked, end, appointment time), and their ends by patient,
    then end time (pk, end): the pass opens and closes them as its pointers meet those times."""
    pk, booked, end = (np.asarray(bk[c], dtype=np.int64) for c in ("pk", "booked_us", "end_us"))
    by_booked, by_end = np.lexsort((booked, pk)), np.lexsort((end, pk))
    sched = np.asarray(bk["sched_us"], dtype=np.int64)
    return pk[by_booked], booked[by_booked], end[by_booked], sched[by_booked], pk[by_end], end[by_end]


def snapshot_features(snap_pk: np.ndarray, snap_ts: np.ndarray, src: dict[str, dict[str, np.ndarray]],
                      bookings: dict[str, np.ndarray], keep_us: int | None, vocab: Vocabulary,
                      out: Buffers | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features at the snapshots (``snap_pk``, ``snap_ts``: sorted by patient, then time, unique) of whole patients,
    from the chunk's event sources (each sorted by patient, then time; visits in their tie order) and bookings
    (grouped by patient). With ``keep_us`` (the as-of time), snapshots that repeat the previous one are dropped;
    without it every snapshot is computed. Returns name -> values (float32 features, float64 timestamps: views into
    ``out``, an ``output_buffer``) and the kept snapshots' positions."""
    V, B, P, S, D, E = (src[k] for k in ("visit", "billed", "paid", "status", "past_due", "engagement"))
    b_amt, b_cents, b_whole = _money(B["amount"])
    p_amt, p_cents, p_whole = _money(P["amount"])
    s_amt, s_cents, s_whole = _money(S["wo_amt"])
    names = feature_names(vocab)
    n = len(snap_pk)
    out = output_buffer(n, vocab, out)
    kept = np.empty(n, dtype=np.int64)

    def c(a: np.ndarray, dtype: type) -> np.ndarray:   # the dtypes the build fetches: no copy, one compiled signature
        return np.ascontiguousarray(a, dtype=dtype)

    from features.build import (
        jit as snapshot_jit,  # numba: imported on first use, not with this module
    )

    k = snapshot_jit.run(c(snap_pk, np.int64), c(snap_ts, np.int64), -1 if keep_us is None else int(keep_us),  # type: ignore[call-arg]  # numba's Dispatcher stub does not know the jitted parameters
                         keep_us is not None, np.array(WINDOWS, dtype=np.int64), len(vocab.of("department")),
                         c(V["pk"], np.int32), c(V["ts_us"], np.int64), c(V["outcome"], np.int8), c(V["dept"], np.int8),
                         c(B["pk"], np.int32), c(B["ts_us"], np.int64), b_amt, b_cents, b_whole, c(B["plan"], np.int8),
                         c(P["pk"], np.int32), c(P["ts_us"], np.int64), p_amt, p_cents, p_whole,
                         c(S["pk"], np.int32), c(S["ts_us"], np.int64), c(S["kind"], np.int8), s_amt, s_cents, s_whole,
                         c(D["pk"], np.int32), c(D["ts_us"], np.int64), c(D["step"], np.int8),
                         c(E["pk"], np.int32), c(E["ts_us"], np.int64), c(E["ch"], np.int8), c(E["outbound"], np.bool_),
                         c(E["positive"], np.bool_), c(E["login"], np.bool_),
                         *_bookings_in_order(bookings), out[0], out[1], kept)
    rows = [*out[0], *out[1]]
    return {name: rows[i][:k] for i, name in enumerate(names)}, kept[:k]
