"""The feature build on Spark: the DuckDB build's own per-patient pass, run once per hash bucket of patients.

Patients are independent: every snapshot and label of a patient depends only on that patient's rows, the as-of time
and the site's vocabulary. So Spark reads the four feeds (a local folder here; any path Spark reads), tags each row
with ``pmod(xxhash64(patient_id), buckets)`` and shuffles the rows of each bucket to one task
(``groupBy(bucket).applyInArrow``). The task writes its bucket's feeds to a scratch folder and runs
``features.build.run.build_patients`` on them: the same DuckDB queries, the same compiled snapshot pass
(``kernel.py`` / ``jit.py``) and the same label rules as ``carecast features build`` with DuckDB, writing its parts
of the profile, activity, label and as-of-snapshot files. The driver then concatenates the parts (bucket order) into
the one-file layout the offline store, training and the manifest read, computes the population defaults over them
(``compute_defaults``) and writes the manifest (``write_manifest``, ``engine: spark``).

What is global is decided before the per-bucket pass, by the same rules: the site's vocabulary (value counts by
Spark, then ``resolve_vocabulary``) and the default as-of time (per-patient latest times by ``LATEST_PER_PATIENT_SQL``
in each bucket, the top few across buckets by Spark, then ``as_of_from_top``).

Limits: the tasks write their parts, and the driver reads them, under ``$CARECAST_HOME/tmp``: on a cluster that
folder must be a mount every executor shares. Rows are in bucket order, patient order within a bucket (the DuckDB
build: patient order), so the files hold the same rows as the DuckDB build's but not the same bytes, and the
manifest's ``snapshot_hash`` (a hash of the files) differs between the engines; it is the same for two Spark builds
of the same feeds with the same bucket count.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from carecast import logs
from carecast import spark as carecast_spark
from carecast.settings import Settings
from features.build import labels
from features.build import run as build_run
from features.catalog import ACTIVITY_FILE, DEFAULTS_FILE, PROFILE_FILE
from features.feeds import vocabulary as vocab_rule
from features.feeds.files import feed_path
from features.feeds.vocabulary import Vocabulary

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logs.get("features.build.spark")

FEEDS = ("patients", "visits", "billing", "engagement")
BUCKET, FEED, SEP = "_bucket", "_feed", "__"
#: the files one bucket writes (``build_patients``), and the parquet settings of the assembled file
_LATEST = "latest.parquet"
_PARTS: dict[str, dict[str, Any]] = {PROFILE_FILE: {"compression": "zstd"}, ACTIVITY_FILE: build_run.SNAPSHOT_PARQUET,
          **{labels.label_file(Path(), t).name: {} for t in ("no_show", "churn", "channel")}, _LATEST: {}}
_TIMES_SCHEMA = "patient_id string, t timestamp, pev_rows long"
_RESULT_SCHEMA = ("bucket int, patients long, snapshots long, events string, label_rows string, first_us long, "
                  "seconds double")


def feed_schemas(data: Path) -> dict[str, pa.Schema]:
    """Each feed's arrow schema as written (from the parquet footers): the tasks hand DuckDB the feeds in exactly
    these types (Spark reads nanosecond timestamps as integers, and text as large strings)."""
    out = {}
    for feed in FEEDS:
        path = feed_path(data, feed)
        if path is None:
            raise FileNotFoundError(f"{Path(data) / (feed + '.parquet')}: feed '{feed}' not found")
        if path.suffix != ".parquet":
            raise build_run.BuildRefused(f"{path}: the Spark build reads parquet feeds (validate the feeds first: "
                             "`carecast data validate` writes parquet)")
        out[feed] = pads.dataset(path, format="parquet").schema.remove_metadata()
    return out


def bucketed_feeds(spark: SparkSession, data: Path, schemas: dict[str, pa.Schema], buckets: int) -> DataFrame:
    """The four feeds as one DataFrame: each feed's columns prefixed with its name (``visits__status``), the feed in
    ``_feed`` and the patient's hash bucket in ``_bucket``, hash-partitioned on the bucket (a task takes one or more
    whole buckets; ``groupBy(bucket)`` then needs no second shuffle)."""
    from pyspark.sql import functions as F

    frames = []
    for feed in FEEDS:
        df = spark.read.parquet(str(feed_path(data, feed)))
        cols = [F.col(f"`{c}`").alias(f"{feed}{SEP}{c}") for c in schemas[feed].names]
        frames.append(df.select(*cols, F.lit(feed).alias(FEED),
                                F.pmod(F.xxhash64(F.col("patient_id")), F.lit(buckets)).cast("int").alias(BUCKET)))
    union = frames[0]
    for df in frames[1:]:
        union = union.unionByName(df, allowMissingColumns=True)
    return union.repartition(buckets, BUCKET)


def bucket_feeds(table: pa.Table, schemas: dict[str, pa.Schema], folder: Path) -> Path:
    """A bucket's rows (``bucketed_feeds``) as the four feed files in ``folder``, in their written types."""
    folder.mkdir(parents=True, exist_ok=True)
    for feed, schema in schemas.items():
        rows = table.filter(pc.equal(table.column(FEED), feed))
        cols = [_typed(rows.column(f"{feed}{SEP}{f.name}"), f.type) for f in schema]
        pq.write_table(pa.Table.from_arrays(cols, schema=schema), folder / f"{feed}.parquet", compression="none")
    return folder


def _typed(column: pa.ChunkedArray, to: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """A column as Spark handed it, in its written type (an all-null column written as type null comes back as
    integers: no cast leads to null)."""
    return pa.nulls(len(column)) if pa.types.is_null(to) else column.cast(to)


def _micros(t: dt.datetime | None) -> int | None:
    """A naive UTC time (DuckDB's TIMESTAMP) as epoch microseconds."""
    return None if t is None else (t - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)


def _one_value(table: pa.Table, column: str) -> int:
    return int(table.column(column)[0].as_py())


def patient_times_task(settings: Settings, schemas: dict[str, pa.Schema]) -> Callable[[pa.Table], pa.Table]:
    """The per-bucket input of the default as-of time: each patient's latest time (``LATEST_PER_PATIENT_SQL``), and
    one row with ``t`` null holding the bucket's ``pev`` row count."""
    scratch = carecast_spark.local_dir(settings)

    def task(table: pa.Table) -> pa.Table:
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch, prefix="times-") as tmp:
            feeds = bucket_feeds(table, schemas, Path(tmp) / "feeds")
            con = build_run.connect(settings, threads=1, tmp=Path(tmp) / "duckdb")
            try:
                build_run._feed_views(con, feeds)
                con.execute(f"CREATE TEMP TABLE pev AS {build_run._patient_events_sql()}")
                n = con.execute("SELECT COUNT(*) FROM pev").fetchall()[0][0]
                times = con.sql(f"""SELECT patient_id::VARCHAR AS patient_id, t::TIMESTAMPTZ AS t, 0::BIGINT AS pev_rows
                    FROM ({build_run.LATEST_PER_PATIENT_SQL})
                    UNION ALL SELECT NULL, NULL, {int(n)}::BIGINT""").to_arrow_table()
            finally:
                con.close()
        return times

    return task


def bucket_task(settings: Settings, schemas: dict[str, pa.Schema], parts: Path, as_of_ts: dt.datetime,
                vocab: Vocabulary, rows_per_chunk: int) -> Callable[[pa.Table], pa.Table]:
    """The per-bucket build: ``build_patients`` on the bucket's feeds, its files into ``parts/b<bucket>/``; returns
    one row of counts (and the bucket's earliest event by the as-of time, for the manifest's history)."""
    scratch = carecast_spark.local_dir(settings)
    lit = f"TIMESTAMP '{as_of_ts.isoformat(sep=' ')}'"

    def task(table: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        bucket = _one_value(table, BUCKET)
        out = parts / f"b{bucket:05d}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch, prefix=f"bucket-{bucket}-") as tmp:
            feeds = bucket_feeds(table, schemas, Path(tmp) / "feeds")
            del table
            work = Path(tmp) / "work"
            work.mkdir()
            con = build_run.connect(settings, threads=1, tmp=Path(tmp) / "duckdb")
            try:
                build_run.load_feeds(con, feeds, as_of_ts)
                built = build_run.build_patients(con, feeds, out, work, as_of_ts, vocab, rows_per_chunk, workers=1)
                first = con.execute(f"SELECT MIN(first_ts) FROM pev WHERE first_ts <= {lit}").fetchall()[0][0]
            finally:
                con.close()
            (work / _LATEST).replace(out / _LATEST)
        return pa.table({"bucket": pa.array([bucket], pa.int32()), "patients": [built.patients],
                         "snapshots": [built.snapshots], "events": [json.dumps(built.events)],
                         "label_rows": [json.dumps(built.label_rows)],
                         "first_us": pa.array([_micros(first)], pa.int64()),
                         "seconds": [time.perf_counter() - t0]})

    return task


def spark_vocabulary(spark: SparkSession, data: Path, settings: Settings) -> Vocabulary:
    """The site's vocabulary: the value counts of ``feed_vocabulary`` (every column in one Spark job), then
    ``resolve_vocabulary``."""
    from pyspark.sql import functions as F

    frames: dict[str, DataFrame] = {}
    values = []
    for feed, col in vocab_rule.COLUMNS:
        df = frames.setdefault(feed, spark.read.parquet(str(feed_path(data, feed))))
        values.append(df.select(F.lit(col).alias("c"), F.col(f"`{col}`").cast("string").alias("v")))
    union = values[0]
    for df in values[1:]:
        union = union.unionByName(df)
    counts: dict[str, dict[str, int]] = {col: {} for _, col in vocab_rule.COLUMNS}
    for r in union.where(F.col("v").isNotNull()).groupBy("c", "v").count().collect():
        counts[r["c"]][str(r["v"])] = int(r["count"])
    return build_run.resolve_vocabulary(counts, data, settings)


def spark_as_of(times: DataFrame) -> dt.datetime:
    """The default as-of time (``as_of_from_top``) from the per-bucket patient times (``patient_times_task``)."""
    from pyspark.sql import functions as F

    n = int(times.agg(F.sum("pev_rows")).collect()[0][0] or 0)
    k = build_run.outliers_allowed(n)
    latest = times.where(F.col("t").isNotNull()).orderBy(F.col("t").desc()).limit(k + 1)
    top = [r[0] for r in latest.select(F.unix_micros("t")).collect()]
    return build_run.as_of_from_top([_from_micros(t) for t in top], k)


def _from_micros(us: int) -> dt.datetime:
    """Epoch microseconds as a naive UTC time (the build's as-of form). Times leave Spark as integers: a collected
    timestamp is naive in the Python process's local zone, whatever the session's."""
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(us))


def _naive_utc(t: dt.datetime) -> dt.datetime:
    """An as-of time given by the caller (aware, or naive UTC) as naive UTC."""
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def assemble(parts: Path, out: Path, work: Path) -> None:
    """Concatenate the buckets' parts (bucket order) into the build's files in ``out`` (the as-of snapshots into
    ``work``), one part in memory at a time; each file appears only once complete."""
    buckets = sorted(p for p in parts.iterdir() if p.is_dir())
    for name, options in _PARTS.items():
        target = (work if name == _LATEST else out) / name
        tmp = target.with_name(name + ".tmp")
        writer: pq.ParquetWriter | None = None
        for b in buckets:
            if not (b / name).exists():
                continue
            table = pq.read_table(b / name)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, **options)
            writer.write_table(table, row_group_size=500_000)
        if writer is None:
            raise FileNotFoundError(f"{parts}: no bucket wrote {name}")
        writer.close()
        tmp.replace(target)


def build_features_spark(settings: Settings, data: Path, as_of: dt.datetime | None = None, master: str | None = None,
                         rows_per_chunk: int = 1_000_000, buckets: int | None = None,
                         spark: SparkSession | None = None) -> build_run.BuildSummary:
    """``features.build.run.build_features`` on Spark (module doc): the same files in ``settings.feature_dir``."""
    from pyspark import StorageLevel

    t0 = time.perf_counter()
    data = Path(data)
    out = settings.feature_dir
    out.mkdir(parents=True, exist_ok=True)
    work = settings.home / "tmp" / f"spark-build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    parts = work / "parts"
    parts.mkdir(parents=True)
    nb = buckets or settings.features.spark_buckets
    schemas = feed_schemas(data)   # before Spark starts: a feed that is missing or not parquet is refused at once
    with logs.stage(log, "features build (spark): session") as info:
        spark = spark or carecast_spark.session(settings, master)
        info["master"] = spark.sparkContext.master
        info["buckets"] = nb
    with logs.stage(log, "features build (spark): read feeds") as info:
        rows = bucketed_feeds(spark, data, schemas, nb).persist(StorageLevel.DISK_ONLY)
        vocab = spark_vocabulary(spark, data, settings)
        info["vocabulary"] = "; ".join(f"{c} {len(v)}" for c, v in vocab.codes.items())
    try:
        if as_of is None:
            with logs.stage(log, "features build (spark): as-of time") as info:
                times = rows.groupBy(BUCKET).applyInArrow(patient_times_task(settings, schemas), _TIMES_SCHEMA)
                times = times.persist(StorageLevel.DISK_ONLY)
                as_of_ts = spark_as_of(times)
                times.unpersist()
                info["as_of"] = as_of_ts.isoformat()
        else:
            as_of_ts = _naive_utc(as_of)
        with logs.stage(log, "features build (spark): buckets") as info:
            task = bucket_task(settings, schemas, parts, as_of_ts, vocab, rows_per_chunk)
            results = rows.groupBy(BUCKET).applyInArrow(task, _RESULT_SCHEMA).orderBy("bucket").collect()
            info["buckets"] = len(results)
            info["slowest_bucket_s"] = round(max((r["seconds"] for r in results), default=0.0), 1)
    finally:
        rows.unpersist()
    built = _sum(results)
    with logs.stage(log, "features build (spark): assemble") as info:
        assemble(parts, out, work)
        info["snapshots"] = built.snapshots
    with logs.stage(log, "features build (spark): population defaults") as info:
        con = build_run.connect(settings)
        try:
            defaults = build_run.compute_defaults(con, out, as_of_ts, vocab, work / _LATEST)
        finally:
            con.close()
        (out / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=1, sort_keys=True))
        info["columns"] = len(defaults)
    firsts = [_from_micros(r["first_us"]) for r in results if r["first_us"] is not None]
    shutil.rmtree(work, ignore_errors=True)
    return build_run.write_manifest(out, data, as_of_ts, min(firsts) if firsts else None, built, vocab, "spark", t0,
                                    extra={"spark": {"master": spark.sparkContext.master, "buckets": nb}})


def _sum(results: list) -> build_run.PatientOutputs:
    """The buckets' counts added up."""
    events: dict[str, int] = {}
    label_rows: dict[str, int] = {}
    for r in results:
        for k, v in json.loads(r["events"]).items():
            events[k] = events.get(k, 0) + int(v)
        for k, v in json.loads(r["label_rows"]).items():
            label_rows[k] = label_rows.get(k, 0) + int(v)
    return build_run.PatientOutputs(patients=sum(int(r["patients"]) for r in results),
                                    snapshots=sum(int(r["snapshots"]) for r in results), events=events,
                                    label_rows=label_rows)
