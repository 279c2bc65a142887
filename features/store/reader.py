"""The one reader of features: as of a time (training frames, batch scoring) and online (serving).

It owns the two rules every path shares:

* **known / unknown patient**: online, a patient is known when the store holds any of ``KNOWN_BY`` for them
  (one feature of each patient view); as of a time (batch scoring), when both patient views have a snapshot
  at or before it. Training frames keep NaN where a row has no snapshot yet (what the models learn from).
* **a new patient's profile**: an unknown patient gets ONE coherent profile, that of a patient with no history
  (``new_patient_features``): no visits, bookings, bills or outreach (counts, sums and flags 0), rates NaN (a share
  of nothing), days-since NaN (never happened), ``days_past_due`` 0, ``open_bookings`` 0 and
  ``days_to_next_booked`` NaN; the profile columns (sex, language, ...) are what is known of the patient (the
  build's profile when the patients feed has them, as in batch scoring; else missing: NaN, code -1). Never
  per-feature population medians: they contradicted each other ("next appointment in 11 days" beside "no upcoming
  appointment"). The same rule fills a training or scoring row read before the patient's first activity snapshot.
  Request-time (appointment) features are computed as for anyone; a missing category code is ``-1``.
  ``population_defaults`` (the build's medians / modes) stay for reference, not for filling rows.

The measured fast paths stay behind it: the DuckDB ASOF join for large training frames (``asof_join``), the
DuckDB "latest snapshot" query for batch scoring (``snapshots_as_of``), and the online read plan
(``features.store.online_plan``) that reads Feast's SQLite / Redis layout directly (``OnlineReader``). Values
reach SQL as bound parameters, never as text.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carecast import logs
from carecast.settings import Settings
from carecast.targets import Target, as_target, target_info
from features.catalog import (
    ACTIVITY_FILE,
    ACTIVITY_TIMESTAMPS,
    AGE_BANDS,
    APPOINTMENT_FEATURES,
    APPOINTMENT_REQUEST_FIELDS,
    CATEGORY_SOURCES,
    DEFAULTS_FILE,
    GROUP_COLUMNS,
    MANIFEST_FILE,
    PROFILE_FEATURES,
    PROFILE_FILE,
    activity_features,
    categorical_columns,
    categories,
    feature_columns,
    patient_features,
)
from features.feeds.vocabulary import Vocabulary
from features.request import appointment_features, recency_features, to_epoch
from features.store import feast_internals
from features.store.online_plan import FeatureMismatch, FeatureStoreEmpty, FeatureStoreUnavailable, OnlinePlan
from features.store.repo import feature_service, get_store, repo_config, require_build, vocabulary

log = logs.get("features.store.reader")

#: stored features whose presence online makes a patient known: one of each patient view (profile, activity)
KNOWN_BY = ("sex_code", "visits_all")
#: the activity feature whose absence in a point-in-time row means "no activity snapshot yet": a count, never NaN in
#: a snapshot
HISTORY_BY = "visits_all"

# --------------------------------------------------------------------------- the rules


def population_defaults(settings: Settings) -> dict[str, float]:
    """Medians (numeric) / modes (codes, flags) over all patients at the build's as-of time."""
    path = settings.feature_dir / DEFAULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no population defaults; run `carecast features build` first")
    raw = json.loads(path.read_text())
    return {k: (float("nan") if v is None else float(v)) for k, v in raw.items()}


def _is_share(name: str) -> bool:
    """A rate or share: of nothing, it is undefined (NaN), as the build's kernel computes it (``jit.rate``)."""
    return "_rate" in name or name.startswith("dept_share_") or name == "share_paid"


#: the request-time features of a patient whose every stored timestamp is missing (nothing ever happened)
_NEW_RECENCY = {k: float(v[0]) for k, v in recency_features(
    {"request_ts": [0.0], "birth_year": [float("nan")], **{c: [float("nan")] for c in ACTIVITY_TIMESTAMPS}}).items()}


def new_patient_value(name: str) -> float:
    """One feature of a new patient of whom nothing else is known, by the feature's kind (any vocabulary): a profile
    that is missing (NaN; category codes -1); stored timestamps NaN; the request-time features computed from those
    (never happened: NaN; ``days_past_due`` 0; no birth year: age NaN); rates and shares NaN (of nothing, as the
    build's kernel computes them); counts, sums and flags 0."""
    if name in PROFILE_FEATURES:
        return -1.0 if name in CATEGORY_SOURCES else float("nan")
    if name in ACTIVITY_TIMESTAMPS:
        return float("nan")
    if name in _NEW_RECENCY:
        return _NEW_RECENCY[name]
    return float("nan") if _is_share(name) else 0.0


def new_patient_activity(vocab: Vocabulary) -> dict[str, float]:
    """The stored activity features of a patient with no history (a test checks it equals the build's kernel on a
    patient with no events)."""
    return {c: new_patient_value(c) for c in [*activity_features(vocab), *ACTIVITY_TIMESTAMPS]}


def new_patient_features(vocab: Vocabulary) -> dict[str, float]:
    """Every patient feature (``patient_features(vocab)``) of a new patient: one coherent profile, never medians."""
    return {c: new_patient_value(c) for c in patient_features(vocab)}


def fill_new_patients(df: pd.DataFrame, vocab: Vocabulary) -> pd.DataFrame:
    """Rows read before the patient's first activity snapshot (``HISTORY_BY`` missing) get the activity of a patient
    with no history, in place; their profile and request-time features stay as read (the days-since features of
    NaN timestamps already are a new patient's)."""
    if HISTORY_BY not in df.columns:
        return df
    none = df[HISTORY_BY].isna().to_numpy()
    if none.any():
        act = new_patient_activity(vocab)
        for c in act:
            if c in df.columns:
                df.loc[none, c] = act[c]
    return df


@dataclass(frozen=True)
class _Columns:
    """Where a feature list's patient features and category codes are (computed once per list)."""

    names: tuple[str, ...]
    patient: np.ndarray
    categories: list[int]

    @classmethod
    def of(cls, names: Sequence[str]) -> _Columns:
        names = tuple(names)
        return cls(names, np.flatnonzero([n not in APPOINTMENT_FEATURES for n in names]),
                   [j for j, n in enumerate(names) if n in CATEGORY_SOURCES])


def _finish(X: np.ndarray, known: np.ndarray, cols: _Columns) -> np.ndarray:
    """The rule for unknown patients and missing codes, in place: every patient feature of an unknown row is a new
    patient's (``new_patient_features``); a missing category code is -1."""
    if not known.all():
        d = np.array([new_patient_value(cols.names[j]) for j in cols.patient], dtype=np.float64)
        X[np.ix_(np.flatnonzero(~known), cols.patient)] = d
    if cols.categories:
        X[:, cols.categories] = np.nan_to_num(X[:, cols.categories], nan=-1).astype(np.int64)
    return X


def request_row(target: Target, request: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """Request fields the on-demand views expect, from a serving request (natural or epoch values); ``now``
    (epoch seconds) when the request gives no ``as_of``."""
    request = request or {}
    ts = request.get("request_ts", request.get("as_of"))
    row: dict[str, Any] = {"request_ts": to_epoch(ts) if ts is not None else now}
    if target == "no_show":
        row["scheduled_ts"] = to_epoch(request.get("scheduled_ts", request.get("scheduled_at")))
        row["booked_ts"] = to_epoch(request.get("booked_ts", request.get("booked_at")))
        row["department"] = request.get("department")
        row["visit_type"] = request.get("visit_type")
        row["telehealth"] = int(bool(request.get("telehealth", False)))
        missing = [k for k in ("scheduled_ts", "booked_ts") if row[k] is None]
        if missing:
            raise ValueError(f"no_show request needs scheduled_at and booked_at (missing: {', '.join(missing)})")
    return row


# --------------------------------------------------------------------------- as of each row's time: training


@dataclass
class TrainingFrame:
    frame: pd.DataFrame
    feature_columns: list[str]
    categorical_columns: dict[str, list[str]]
    feature_service: str
    snapshot_hash: str
    #: the site's vocabulary of the build (``Vocabulary.to_dict``): recorded with every model trained on the frame
    vocabulary: dict[str, Any] = field(default_factory=dict)


def _add_groups(df: pd.DataFrame, vocab: Vocabulary) -> pd.DataFrame:
    age = df["age_years"]
    band = pd.Series("unknown", index=df.index, dtype=object)
    for lo, hi, name in AGE_BANDS:
        band[(age >= lo) & (age < hi)] = name
    df["group_age_band"] = band

    def decode(col: str, cats: tuple[str, ...]) -> pd.Series:
        codes = df[col].fillna(-1).astype(int)
        return codes.map(lambda i: cats[i] if 0 <= i < len(cats) else "unknown")

    df["group_sex"] = decode("sex_code", vocab.of("sex"))
    df["group_insurance"] = decode("insurance_code", vocab.of("insurance_type"))
    df["group_language"] = decode("language_code", vocab.of("preferred_language"))
    return df


def asof_join(settings: Settings, store: Any, refs: list[str], entity: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time join as DuckDB ASOF joins generated from the registered feature views.

    Same result as Feast's DuckDB offline store for these views: each entity row gets the latest snapshot with
    ``event_timestamp <= row time`` (snapshots are unique per patient and time, and ``created`` equals
    ``event_timestamp``, so the created-timestamp filter and tie-break are no-ops). Feast's own join expands
    every entity row against every earlier snapshot before de-duplicating, which ran out of memory for 2M
    appointments; the ASOF join is linear. Tests check both paths agree.
    """
    from features.build.run import connect

    by_view: dict[str, list[str]] = {}
    for r in refs:
        v, f = r.split(":")
        by_view.setdefault(v, []).append(f)
    con = connect(settings, memory_limit="2GB")  # DuckDB spills to the home's tmp beyond this
    # only the join keys go to DuckDB; features come back as numpy and are placed by row number, so the entity
    # frame's other columns (ids, request fields) never round-trip through DuckDB and no ORDER BY is needed
    ent = pd.DataFrame({"patient_id": entity["patient_id"].to_numpy(), "event_timestamp": entity["event_timestamp"],
                        "_row": np.arange(len(entity), dtype=np.int64)})
    con.register("entity_df", ent)
    # 1) narrow ASOF joins find each row's snapshot (its row number in the view's parquet file); 2) the features
    #    of those snapshots come from one streaming hash join per view. An ASOF join carrying all ~70 feature
    #    columns sorts them all (51 s for 500k rows over 6.6M snapshots; this: a few seconds).
    paths, feats_of, joins = [], [], []
    for i, (view, feats) in enumerate(by_view.items()):
        src = store.get_feature_view(view).batch_source
        ts, cr = src.timestamp_field, src.created_timestamp_column
        paths.append(str(src.path))
        feats_of.append(feats)
        joins.append(f"""ASOF LEFT JOIN (SELECT patient_id AS _k{i}, "{ts}" AS _t{i}, file_row_number AS _r{i}
                         FROM read_parquet($p{i}, file_row_number=true) WHERE "{cr}" <= "{ts}") v{i}
                         ON e.patient_id = v{i}._k{i} AND e.event_timestamp >= v{i}._t{i}""")
    hits = ", ".join(f"v{i}._r{i}" for i in range(len(paths)))
    con.execute(f"CREATE TEMP TABLE hits AS SELECT e._row, {hits} FROM entity_df e {' '.join(joins)}",
                {f"p{i}": p for i, p in enumerate(paths)})
    con.unregister("entity_df")
    df = entity.reset_index(drop=True)   # a copy with a fresh index, as the joined frame had
    for i, (path, feats) in enumerate(zip(paths, feats_of, strict=True)):
        cols = ", ".join(f'f."{f}"' for f in feats)
        res = con.execute(f"""SELECT h._row, {cols} FROM hits h LEFT JOIN
                              (SELECT file_row_number AS _r, * FROM read_parquet(?, file_row_number=true)) f
                              ON h._r{i} = f._r""", [path]).fetchnumpy()
        rows = np.asarray(res.pop("_row"))
        for name, col in res.items():
            if np.ma.isMaskedArray(col) and np.ma.getmaskarray(col).any():   # NULL (no snapshot yet) -> NaN
                col = np.ma.filled(col.astype(np.float64), np.nan)
            col = np.asarray(col)
            out = np.empty(len(df), dtype=col.dtype)
            out[rows] = col
            df[name] = out
        del res
    con.close()
    return df


def join_engine(settings: Settings, rows: int, engine: str = "auto") -> str:
    """Which point-in-time join ``historical`` runs for ``rows`` entity rows: "asof" or "feast"."""
    if engine not in ("auto", "asof", "feast"):
        raise ValueError(f"engine must be 'auto', 'asof' or 'feast', not {engine!r}")
    if engine == "auto":
        return "asof" if rows > settings.features.asof_above_rows else "feast"
    return engine


def historical(settings: Settings, target: Target, entity: pd.DataFrame, via_odfv: bool = False,
               engine: str = "auto") -> pd.DataFrame:
    """Point-in-time features for ``entity`` rows (ids, event_timestamp, request fields) via Feast.

    The stored features come from ``get_historical_features`` on the target's feature-service views (DuckDB
    offline store, ``filter_by_created_timestamp=True``). The request-time features are computed by the same
    pure functions the on-demand views call (``features.request``): Feast's python-mode on-demand
    views convert the whole retrieval to Python lists offline, which is slow for millions of rows, so by
    default they are applied here vectorised; ``via_odfv=True`` runs them through Feast (tests check both agree).
    ``engine``: "feast" (``get_historical_features``), "asof" (DuckDB ASOF joins generated from the registered views,
    ``asof_join``: linear in time and memory; tests check both give the same frames) or "auto": ASOF above
    ``features.asof_above_rows`` entity rows, Feast's join up to it.
    """
    store = get_store(settings)
    service = store.get_feature_service(target_info(target).feature_service)
    if via_odfv:
        return fill_new_patients(store.get_historical_features(entity_df=entity, features=service,
                                                               filter_by_created_timestamp=True).to_df(),
                                 vocabulary(settings))
    refs = []
    for proj in service.feature_view_projections:
        if proj.name in ("patient_profile", "patient_activity"):
            refs += [f"{proj.name}:{f.name}" for f in proj.features]
    refs += ["patient_profile:birth_year"] + [f"patient_activity:{c}" for c in ACTIVITY_TIMESTAMPS]
    refs = sorted(set(refs), key=refs.index)
    if join_engine(settings, len(entity), engine) == "asof":
        df = asof_join(settings, store, refs, entity)
    else:
        df = store.get_historical_features(entity_df=entity, features=refs, filter_by_created_timestamp=True).to_df()
    batch = {c: df[c].to_numpy(dtype=float, na_value=np.nan) for c in [*ACTIVITY_TIMESTAMPS, "birth_year"]}
    batch["request_ts"] = df["request_ts"].to_numpy(dtype=float)
    for k, v in recency_features(batch).items():
        df[k] = np.asarray(v)   # lists -> arrays here: pandas infers types of big lists slowly
    if target == "no_show":
        # strings and the telehealth flag as Python lists (the function compares each flag with True/1/"true":
        # fast on Python ints, slow on numpy scalars); timestamps as arrays
        req = {c: df[c].tolist() if c in ("department", "visit_type", "telehealth") else df[c].to_numpy()
               for c in APPOINTMENT_REQUEST_FIELDS}
        for k, v in appointment_features(req, categories(vocabulary(settings))).items():
            df[k] = np.asarray(v)
    return fill_new_patients(df, vocabulary(settings))


def training_frame(settings: Settings, target: Target, engine: str = "auto") -> TrainingFrame:
    """Labelled prediction points with point-in-time-correct features from the registered feature service: Feast's
    get_historical_features, or above ``features.asof_above_rows`` rows the equivalent ASOF join (``historical``)."""
    from features.build.labels import label_file  # here, not at the top: it imports duckdb, which serving never needs

    target_info(target)
    manifest = require_build(settings)
    service_name = target_info(target).feature_service
    with logs.stage(log, f"features training frame ({target})") as info:
        cols = ["patient_id", "event_timestamp", "request_ts", "label"]
        if target == "no_show":
            cols = ["appointment_id", *cols, *APPOINTMENT_REQUEST_FIELDS]
        entity = pd.read_parquet(label_file(settings.feature_dir, target), columns=cols)
        entity = entity[entity["label"].notna()].reset_index(drop=True)
        entity["label"] = entity["label"].astype("int64")
        entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)
        info["rows"] = len(entity)
        info["join"] = join_engine(settings, len(entity), engine)
        df = historical(settings, target, entity, engine=info["join"])
        vocab = vocabulary(settings)
        fcols = feature_columns(target, vocab)
        for c in CATEGORY_SOURCES:
            if c in df:
                df[c] = df[c].fillna(-1).astype("int64")
        df = _add_groups(df, vocab)
        ids = ["appointment_id", "patient_id"] if target == "no_show" else ["patient_id"]
        df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
        df = df.sort_values(["event_timestamp", *ids], kind="stable").reset_index(drop=True)
        df = df[[*ids, "event_timestamp", "label", *fcols, *GROUP_COLUMNS]]
        for c in fcols:
            if c not in CATEGORY_SOURCES:
                df[c] = df[c].astype("float64")
        info["features"] = len(fcols)
    return TrainingFrame(frame=df, feature_columns=fcols, categorical_columns=categorical_columns(target, vocab),
                         feature_service=service_name, snapshot_hash=str(manifest["snapshot_hash"]),
                         vocabulary=vocab.to_dict())


# --------------------------------------------------------------------------- as of one time: batch scoring


def snapshots_as_of(settings: Settings, as_of: dt.datetime) -> pd.DataFrame:
    """Each known patient's latest snapshot at or before ``as_of`` (both views), with the recency features at
    ``request_ts = as_of``: one row per patient, ``patient_id`` first. The batch fast path: one DuckDB query
    over the build's parquet files."""
    import duckdb

    fdir = settings.feature_dir
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        pf = con.execute("""
            WITH a AS (SELECT * FROM read_parquet($activity)
                       WHERE event_timestamp <= CAST($as_of AS TIMESTAMPTZ) AND created <= CAST($as_of AS TIMESTAMPTZ)
                       QUALIFY row_number() OVER (PARTITION BY patient_id ORDER BY event_timestamp DESC, created DESC) = 1),
                 p AS (SELECT * FROM read_parquet($profile) WHERE event_timestamp <= CAST($as_of AS TIMESTAMPTZ)
                       QUALIFY row_number() OVER (PARTITION BY patient_id ORDER BY event_timestamp DESC, created DESC) = 1)
            SELECT p.* EXCLUDE (event_timestamp, created), a.* EXCLUDE (patient_id, event_timestamp, created)
            FROM p JOIN a USING (patient_id)""",
                         {"activity": str(fdir / ACTIVITY_FILE), "profile": str(fdir / PROFILE_FILE),
                          "as_of": as_of.isoformat()}).df()
    finally:
        con.close()
    ts = as_of.timestamp()
    rec = recency_features({"request_ts": np.full(len(pf), ts), "birth_year": pf["birth_year"].to_numpy(float),
                            **{c: pf[c].to_numpy(float) for c in pf.columns if c.endswith("_ts")}})
    for k, v in rec.items():
        pf[k] = np.asarray(v, dtype=float)
    return pf


def unknown_patients(settings: Settings, patient_ids: pd.Index, as_of: dt.datetime | None = None) -> pd.DataFrame:
    """Patient-feature rows for patients with no activity snapshot, indexed by ``patient_ids``: a new patient's
    (``new_patient_features``), with the profile the build holds for them (the patients feed, known by ``as_of``)."""
    new = new_patient_features(vocabulary(settings))
    df = pd.DataFrame(new, index=patient_ids)
    path = settings.feature_dir / PROFILE_FILE
    if len(patient_ids) and path.exists():
        prof = pd.read_parquet(path).drop_duplicates("patient_id", keep="last").set_index("patient_id")
        if as_of is not None:
            prof = prof[pd.to_datetime(prof["event_timestamp"], utc=True) <= pd.Timestamp(as_of)]
        prof = prof.reindex(patient_ids)
        have = prof["event_timestamp"].notna().to_numpy()
        if have.any():
            for c in PROFILE_FEATURES:
                if c in df.columns:
                    df.loc[have, c] = prof.loc[have, c].to_numpy(dtype=float)
            at = (as_of or dt.datetime.now(dt.UTC)).timestamp()
            age = recency_features({"request_ts": np.full(int(have.sum()), at),
                                    "birth_year": prof.loc[have, "birth_year"].to_numpy(dtype=float)})["age_years"]
            df.loc[have, "age_years"] = np.asarray(age, dtype=float)
    return df


# --------------------------------------------------------------------------- online: serving


def _request_rows(target: Target, patient_ids: Sequence[str], requests: Sequence[Mapping[str, Any]] | None
                  ) -> list[dict[str, Any]]:
    if requests is not None and len(requests) != len(patient_ids):
        raise ValueError("requests must have one entry per patient id")
    now = time.time()
    return [request_row(target, dict(requests[i]) if requests else None, now) for i in range(len(patient_ids))]


def online_features(settings: Settings, target: Target, patient_ids: list[str],
                    requests: list[dict] | None = None) -> tuple[pd.DataFrame, list[bool]]:
    """Serving features in ``feature_columns(target)`` order through Feast's ``get_online_features``, plus
    whether each patient was known: the reference answer the fast path (``OnlineReader``) is checked against.

    ``requests`` (one dict per patient id): for no_show the appointment (``scheduled_at``, ``booked_at``,
    ``department``, ``visit_type``, ``telehealth``); any target may give ``as_of`` (default: now) for the
    days-since features. Unknown patients get a new patient's features (``new_patient_features``).
    """
    target_info(target)
    rows = _request_rows(target, patient_ids, requests)
    for row, pid in zip(rows, patient_ids, strict=True):
        row["patient_id"] = pid
    store = get_store(settings)
    resp = store.get_online_features(features=feature_service(settings, target), entity_rows=rows).to_dict()
    fcols = feature_columns(target, vocabulary(settings))
    n = len(patient_ids)
    known = np.array([any(resp[k][i] is not None for k in KNOWN_BY) for i in range(n)], dtype=bool)
    nan = float("nan")
    matrix = np.empty((n, len(fcols)), dtype=np.float64)
    for j, c in enumerate(fcols):
        matrix[:, j] = [nan if v is None else v for v in resp.get(c, [None] * n)]
    cols = _Columns.of(fcols)
    _finish(matrix, known, cols)
    df = pd.DataFrame(matrix, columns=fcols)
    if cols.categories:
        cats = [fcols[j] for j in cols.categories]
        df[cats] = matrix[:, cols.categories].astype(np.int64)
    return df, known.tolist()


_NO_PLAN_RETRY_S = 60.0

#: seconds between re-checks of the stamp prompted by a batch where nobody was known (an emptied store looks
#: exactly like a batch of new patients until the stamp is read)
_RECHECK_ALL_UNKNOWN_S = 1.0


@dataclass(frozen=True)
class StoreState:
    """What the online store holds, from its materialization stamp: ``ok``, or the 503 ``code`` and the reason."""

    ok: bool
    code: str = ""
    reason: str = ""
    stamp: Mapping[str, Any] | None = None

    def error(self) -> FeatureStoreUnavailable:
        return (FeatureStoreEmpty if self.code == FeatureStoreEmpty.code else FeatureStoreUnavailable)(self.reason)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok}
        if not self.ok:
            out.update(code=self.code, reason=self.reason)
        if self.stamp:
            out["stamp"] = dict(self.stamp)
        return out


class OnlineReader:
    """Online reads for serving: ``fetch(target, patient_ids, requests, feature_names) -> (float32 X, known)``.

    The same answer as ``online_features`` (a test checks they agree bit for bit), through an ``OnlinePlan`` per
    (target, feature list) when the plan covers the feature service, else through ``online_features``. Plans are
    rebuilt after the registry's cache TTL, as Feast refreshes its registry (in a thread, answering with the
    current plan meanwhile). Constructing one imports Feast (about 3 s): start-up only.

    Fails safe: every read runs in the reader's own thread pool and is given up after
    ``online_store.read_deadline_s`` in all (the Redis client has no retries and socket timeouts within it), so a
    hung store costs a request that long and never a thread of the caller's event loop. Reads are refused with
    the reason (``FeatureStoreUnavailable`` / ``FeatureStoreEmpty``) while the store's materialization stamp says it
    is missing, empty or from another build (``check``: at start, on the service's poll, and after a batch in which
    nobody was known): population defaults for everyone would look like answers. Nothing is created by reading.
    """

    def __init__(self, settings: Settings) -> None:
        from concurrent.futures import ThreadPoolExecutor

        feast_internals.check_version()
        self.settings = settings
        self.deadline_s = float(settings.online_store.read_deadline_s)
        self.plans: dict[tuple[str, tuple[str, ...]], tuple[float, OnlinePlan | None]] = {}
        self.redis_clients: dict[str, Any] = {}
        self._columns: dict[tuple[str, ...], _Columns] = {}
        self._refresh_lock = threading.Lock()
        self._refreshing: set[tuple[str, tuple[str, ...]]] = set()
        self._redis_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="carecast-feature-read")
        self.state: StoreState = StoreState(False, FeatureStoreUnavailable.code, "online store not checked yet")
        self._checked_at = -float("inf")

    # --- the store's state ------------------------------------------------------------------------
    def check(self) -> StoreState:
        """Read the materialization stamp (within the deadline) and compare it with the feature build; keep and
        return the result. Never raises: a store that cannot be read is a state, not an error."""
        try:
            state = self._pool.submit(self._check_now).result(timeout=self.deadline_s)
        except FutureTimeout:
            state = StoreState(False, FeatureStoreUnavailable.code,
                               f"online store did not answer within {self.deadline_s:g}s (online_store.read_deadline_s)")
        except Exception as exc:  # noqa: BLE001  (any failure to read the stamp means: not usable; say which kind)
            state = StoreState(False, FeatureStoreUnavailable.code, f"online store not readable: {type(exc).__name__}")
        if state != self.state:
            (log.info if state.ok else log.error)("online store %s", "ready" if state.ok else f"not usable: {state.reason}")
        self.state, self._checked_at = state, time.monotonic()
        return state

    def _check_now(self) -> StoreState:
        manifest_file = self.settings.feature_dir / MANIFEST_FILE
        if not manifest_file.exists():
            return StoreState(False, FeatureStoreUnavailable.code, "no feature build (run `carecast features build`)")
        build_hash = str(json.loads(manifest_file.read_text()).get("snapshot_hash", ""))
        o = self.settings.online_store
        try:
            stamp = self._read_stamp()
        except FileNotFoundError as exc:
            return StoreState(False, FeatureStoreUnavailable.code, str(exc))
        except (OSError, sqlite3.Error) as exc:  # the kind and the driver's message: a path or a state, never an id
            return StoreState(False, FeatureStoreUnavailable.code, f"{o.type} online store not readable: "
                                                                  f"{type(exc).__name__}: {exc}")
        if stamp is None:
            return StoreState(False, FeatureStoreEmpty.code, f"{o.type} online store holds no materialization "
                                                             "(run `carecast features materialize`)")
        if int(stamp.get("entities", 0)) <= 0:
            return StoreState(False, FeatureStoreEmpty.code, f"{o.type} online store was loaded with 0 patients",
                              stamp)
        if stamp.get("build_hash") != build_hash:
            return StoreState(False, FeatureStoreUnavailable.code,
                              f"{o.type} online store is stale: loaded from build {str(stamp.get('build_hash'))[:12]}, "
                              f"features are build {build_hash[:12]} (run `carecast features materialize`)", stamp)
        return StoreState(True, stamp=stamp)

    def _read_stamp(self) -> dict[str, Any] | None:
        """The stamp ``features.store.online_write.write_stamp`` left, or None; FileNotFoundError when there is no
        store at all. Read-only: a missing online.db stays missing."""
        from features.store import online_write

        o = self.settings.online_store
        if o.type == "redis":
            from redis.exceptions import RedisError

            try:
                blob = self._redis_client(o.redis_connection_string).get(online_write.stamp_redis_key(o.project))
            except RedisError as exc:
                raise OSError(f"Redis {type(exc).__name__}") from None
            return json.loads(blob) if blob else None
        path = Path(repo_config(self.settings)["online_store"]["path"])
        if not path.exists():
            raise FileNotFoundError(f"sqlite online store missing: {path.name} (run `carecast features materialize`)")
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = con.execute(f"SELECT stamp FROM {online_write.STAMP_TABLE} WHERE project = ?", [o.project]).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        finally:
            con.close()
        return json.loads(row[0]) if row else None

    # --- reads -----------------------------------------------------------------------------------
    def fetch(self, target: str, patient_ids: Sequence[str], requests: Sequence[Mapping[str, Any]] | None,
              feature_names: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        if requests is not None and len(requests) != len(patient_ids):
            raise ValueError("requests must have one entry per patient id")
        if not self.state.ok:
            raise self.state.error()
        names = tuple(feature_names)
        try:
            plan = self._plan(target, names)  # built once per registry TTL, from local files: not a store read
        except sqlite3.Error as exc:
            raise FeatureStoreUnavailable(f"sqlite online store: {type(exc).__name__}") from None
        X, known = self._within_deadline(self._fetch_now, plan, target, patient_ids, requests, names)
        if patient_ids and not any(known) and time.monotonic() - self._checked_at >= _RECHECK_ALL_UNKNOWN_S:
            state = self.check()  # nobody known: new patients, or a store emptied since the last check
            if not state.ok:
                raise state.error()
        return X, known

    def _within_deadline(self, fn: Any, *args: Any) -> Any:
        try:
            return self._pool.submit(fn, *args).result(timeout=self.deadline_s)
        except FutureTimeout:
            raise FeatureStoreUnavailable(f"{self.settings.online_store.type} online store: no answer within "
                                          f"{self.deadline_s:g}s (online_store.read_deadline_s)") from None

    def _fetch_now(self, plan: OnlinePlan | None, target: str, patient_ids: Sequence[str],
                   requests: Sequence[Mapping[str, Any]] | None, names: tuple[str, ...]) -> tuple[np.ndarray, list[bool]]:
        try:
            if plan is None:
                return self.fetch_reference(target, patient_ids, requests, names)
            X, known = plan.fetch(list(patient_ids), _request_rows(as_target(target), patient_ids, requests))
        except sqlite3.Error as exc:
            raise FeatureStoreUnavailable(f"sqlite online store: {type(exc).__name__}") from None
        cols = self._columns.get(names)
        if cols is None:
            cols = self._columns[names] = _Columns.of(names)
        _finish(X, known, cols)
        return X.astype(np.float32), known.tolist()

    def fetch_reference(self, target: str, patient_ids: Sequence[str],
                        requests: Sequence[Mapping[str, Any]] | None,
                        feature_names: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Through ``online_features`` (Feast's own online read and on-demand views)."""
        frame, known = online_features(self.settings, as_target(target), list(patient_ids),
                                       [dict(r) for r in requests] if requests is not None else None)
        names = list(feature_names)
        cols = list(frame.columns)
        if cols != names:
            missing = [n for n in names if n not in cols]
            if missing:
                raise FeatureMismatch(f"{target}: feature store lacks {', '.join(missing[:5])}")
            frame = frame[names]
        X = frame.to_numpy(dtype=np.float32, na_value=np.nan)
        return X, [bool(k) for k in known]

    def _plan(self, target: str, names: tuple[str, ...]) -> OnlinePlan | None:
        key = (target, names)
        hit = self.plans.get(key)
        if hit is not None:
            ttl = hit[1].ttl if hit[1] is not None else _NO_PLAN_RETRY_S
            if time.monotonic() - hit[0] >= ttl:
                self._refresh_later(key)  # keep answering with the current plan meanwhile
            return hit[1]
        return self.build_plan(key)

    def build_plan(self, key: tuple[str, tuple[str, ...]]) -> OnlinePlan | None:
        """Build (or rebuild) the plan for (target, feature names); None where Feast's own read is needed."""
        name, names = key
        target = as_target(name)
        now = time.monotonic()
        available = feature_columns(target, vocabulary(self.settings))
        missing = [n for n in names if n not in available]
        if missing:
            raise FeatureMismatch(f"{target}: feature store lacks {', '.join(missing[:5])}")
        plan: OnlinePlan | None
        try:
            plan = OnlinePlan.build(get_store(self.settings), feature_service(self.settings, target), target,
                                    names, KNOWN_BY, lambda o: self._redis_client(str(o.connection_string)))
        except feast_internals.Unsupported as exc:
            log.info("%s features read through Feast's get_online_features: %s", target, exc)
            plan = None
        self.plans[key] = (now, plan)
        return plan

    def _redis_client(self, conn: str) -> Any:
        """This reader's redis-py client for a plain Redis server, made on first use and kept: plans are
        rebuilt every registry TTL and a client per plan would reconnect each time. Connection parameters
        are parsed as Feast's own ``_get_client`` parses them; no retries (redis-py retries three times by
        default, each after its own timeout) and socket timeouts no longer than the read deadline (a value in
        the connection string below it wins)."""
        with self._redis_lock:
            client = self.redis_clients.get(conn)
            if client is None:
                from redis import Redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                nodes, kwargs = feast_internals.redis_connection(conn)
                for k in ("socket_timeout", "socket_connect_timeout"):
                    kwargs[k] = min(float(kwargs.get(k) or self.deadline_s), self.deadline_s)
                kwargs["retry"] = Retry(NoBackoff(), 0)
                kwargs.pop("retry_on_timeout", None)
                if not nodes or "host" not in nodes[0] or "port" not in nodes[0]:
                    raise feast_internals.Unsupported("no host:port in the Redis connection string")
                client = self.redis_clients[conn] = Redis(host=nodes[0]["host"], port=nodes[0]["port"], **kwargs)
            return client

    def _refresh_later(self, key: tuple[str, tuple[str, ...]]) -> None:
        """Rebuild a stale plan (registry TTL) in a thread: building one reads the registry (~30 ms)."""
        with self._refresh_lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)

        def run() -> None:
            try:
                self.build_plan(key)
            except Exception as exc:  # noqa: BLE001  (a background refresh must not die: keep the current plan; name the failure, never data)
                log.error("feature read plan refresh failed: %s", type(exc).__name__)
                self.plans[key] = (time.monotonic(), self.plans[key][1])
            finally:
                with self._refresh_lock:
                    self._refreshing.discard(key)

        threading.Thread(target=run, name="carecast-feature-plan", daemon=True).start()

    def close(self) -> None:
        """Let the read threads go (a read stuck on a hung store ends at its socket timeout)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
