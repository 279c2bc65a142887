"""The Spark session of the Spark feature build (``features/build/spark.py``) and the Spark fit
(``training/spark_fit.py``), from the ``spark:`` settings. pyspark is imported only when a session is asked for.

Why these settings: the Python workers must run this interpreter (its venv has numba, DuckDB and XGBoost) and import
this checkout; Spark's scratch, warehouse and Ivy folders live under the home (nothing in ``$HOME`` or the working
directory); the session time zone is UTC (every CareCast time is); parquet nanosecond timestamps (what pandas
writes) are read as integers and typed back by the tasks, since Spark has no nanosecond timestamp type.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from carecast.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def local_dir(settings: Settings) -> Path:
    """Spark's scratch folder (``spark.local_dir``, default ``$CARECAST_HOME/tmp/spark``)."""
    return Path(settings.spark.local_dir or settings.home / "tmp" / "spark")


def session(settings: Settings, master: str | None = None, app: str = "carecast") -> SparkSession:
    """The process's Spark session: the active one if there is one (its master and folders stay as they were),
    else a new one on ``master`` (default ``spark.master``)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    scratch = local_dir(settings)
    scratch.mkdir(parents=True, exist_ok=True)
    # the workers are started by the JVM with this process's environment: this interpreter, this checkout first
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    os.environ["PYTHONPATH"] = path
    conf = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": settings.spark.driver_memory,
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.default.parallelism": str(settings.spark.shuffle_partitions),
        "spark.local.dir": str(scratch),
        "spark.sql.warehouse.dir": str(scratch / "warehouse"),
        "spark.jars.ivy": str(scratch / "ivy"),
        "spark.driver.extraJavaOptions": f"-Djava.io.tmpdir={scratch} -Dderby.system.home={scratch}",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.legacy.parquet.nanosAsLong": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.executorEnv.PYTHONPATH": path,
        "spark.pyspark.python": sys.executable,
    }
    builder = SparkSession.builder.master(master or settings.spark.master).appName(app)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
