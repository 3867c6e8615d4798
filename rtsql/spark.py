"""``rtsql refresh --full --engine spark``: the full model build on Apache Spark.

DuckDB stays the serving layer; the heavy, embarrassingly parallel part of a full refresh
(interactions, item-item and user-user co-occurrence, top-K, trending counts) runs as a PySpark
job (rtsql/spark_job.py). This module is the rtsql side:

1. write the job's config from the database's settings and event-type weights;
2. export the events up to the current last event_id as Parquet into a work folder;
3. run the job (in this process, ``local[2]`` unless ``master`` names a cluster);
4. load its output in one transaction (``refresh.load_model``), with the exported last event_id
   as the watermark, so a later incremental refresh or ``rtsql tail`` continues exactly where
   the job stopped.

PySpark is an optional extra (``pip install 'rtsql[spark]'``) and needs Java; without either,
``EngineUnavailable`` says what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from . import refresh as refresh_mod
from . import settings
from .errors import InvalidSetting, RtsqlError
from .sqlutil import scalar
from .vocabulary import SPARK_MEASURES

EXTRA = "pip install 'rtsql[spark]'"


class EngineUnavailable(RtsqlError):
    """PySpark or Java is missing."""


class SparkJobFailed(RtsqlError):
    """The job could not run on its input (a path that does not exist, a column that is not
    there): Spark's first line of the reason."""


def check_available() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise EngineUnavailable(f"--engine spark needs PySpark: {EXTRA}") from None
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (java_home and Path(java_home, "bin", "java").exists()):
        raise EngineUnavailable("--engine spark needs Java 17 or newer: install a JDK and put "
                                "`java` on PATH or set JAVA_HOME")


def job_config(con, values: dict | None = None) -> dict:
    """What the job reads, from the database: the model settings, event-type weights, the key
    ranges and the last event_id to include (the watermark the loaded model will carry)."""
    values = values or settings.get_all(con)
    if values["similarity"] not in SPARK_MEASURES:  # auto: cosine at Spark's scale
        raise InvalidSetting(f"the Spark engine builds cosine lists; the setting similarity is "
                             f"{values['similarity']!r}, which only the local engine builds "
                             "(`rtsql refresh`), or choose `rtsql settings similarity cosine`")
    n_users, n_items = refresh_mod._shape(con)
    measure = refresh_mod._measure(values)
    return {
        "event_types": [{"event_type": t, "weight": w, "uses_value": u, "negative_values": n}
                        for t, w, u, n in con.execute(
                            "select event_type, weight, uses_value, negative_values "
                            "from event_types order by event_type").fetchall()],
        "decay_rate": refresh_mod._decay_rate(values["half_life_days"]),
        "max_history": values["max_history"],
        # the interactions column the models read (the pair_weight setting)
        "model_weight": refresh_mod.PAIR_WEIGHT_COLUMNS[values["pair_weight"]],
        "max_item_users": values["max_item_users"],
        # similarity entries a task holds at once (the local engine's per-thread budget)
        "block_cells": refresh_mod.engine_options(values)["block_cells"],
        "neighbors": values["neighbors"],
        "list_length": measure.list_length,
        "shrinkage": values["shrinkage"],
        "min_support": values["min_support"],
        "user_cf": values["user_cf"],
        "trending_window_seconds": values["trending_window_days"] * 86400.0,
        "n_users": n_users,
        "n_items": n_items,
        "watermark": scalar(con, "select coalesce(max(event_id), 0) from events"),
        "now": time.time(),
    }


def export_events(con, folder: Path, watermark: int) -> Path:
    """The events up to ``watermark`` as Parquet files in ``folder/events``."""
    target = folder / "events"
    shutil.rmtree(target, ignore_errors=True)  # a previous export in a kept --work folder
    _to_parquet(con, "select event_id, user_key, item_key, event_type, value, ts from events "
                     f"where event_id <= {int(watermark)}", target)
    return target


def _to_parquet(con, query: str, folder: Path) -> None:
    """rtsql's own ``query`` as ``folder/part.parquet`` (the folder is what Spark reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    literal = str(folder / "part.parquet").replace("'", "''")
    con.execute(f"copy ({query}) to '{literal}' (format parquet)")


def external_config(con, folder: Path, uris: list[str], mapping) -> dict:
    """The job's ``external`` part for ``--events``: where the files are, the column mapping,
    ingest's accepted ranges, and the id dictionaries (exported to ``folder/ids``) with the
    keys new ids start after (forgotten users' keys are never given again)."""
    values = settings.get_all(con)
    ids = folder / "ids"
    for table, columns in (("users", "user_id, user_key"), ("items", "item_id, item_key")):
        _to_parquet(con, f"select {columns} from {table}", ids / table)
    ahead = values["ingest_max_ahead_hours"] * 3600
    return {
        "uris": list(uris), "columns": dict(mapping.columns), "event_type": mapping.event_type,
        "ids": str(ids.resolve()), "ts_min": values["ingest_min_ts"],
        "ts_max": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + ahead)),
        "max_abs_value": values["ingest_max_abs_value"],
        "user_key_floor": scalar(con, "select greatest(coalesce(max(user_key), 0), coalesce("
                                      "(select max(user_key) from forgotten_users), 0)) from users"),
        "item_key_floor": scalar(con, "select coalesce(max(item_key), 0) from items"),
    }


# what a Spark build's result says of its item lists (similarity auto, at any catalog size)
SPARK_MEASURE_NOTE = ("the Spark engine built cosine item lists (similarity auto means cosine "
                      "on Spark; ease and sparse_ease are built by the local engine: "
                      "`rtsql refresh --full`)")


def refresh(con, *, master: str | None = None, conf: dict | None = None,
            work: str | os.PathLike | None = None, keep: bool = False, session=None,
            events: list[str] | None = None, mapping=None,
            log=lambda line: None) -> refresh_mod.RefreshResult:
    """A full refresh built by Spark and loaded into ``con``'s database. ``session``: a
    SparkSession to use (and leave running); else one is started for the job and stopped.
    ``events``: Parquet files, globs or URIs the user already has (mapped with ``mapping``, an
    ingest.ColumnMapping), read by Spark together with the database's own events."""
    from . import ingest, spark_job

    check_available()
    start = time.perf_counter()
    config = job_config(con)
    folder = Path(work).expanduser() if work else Path(tempfile.mkdtemp(prefix="rtsql-spark-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if events:
            config["external"] = external_config(con, folder, events,
                                                 mapping or ingest.ColumnMapping())

        def stage(name: str) -> None:  # each step with the time since the build started
            log(f"spark [{time.perf_counter() - start:6.1f}s] {name}")

        stage("export: the events as Parquet")
        events = export_events(con, folder, config["watermark"])
        (folder / "job.json").write_text(json.dumps(config, indent=1))
        stage(f"job: starting Spark ({master or 'local[2]'})")
        from pyspark.errors import PySparkException

        spark = session or spark_job.session(master, conf)
        try:
            spark_job.build(spark, str(events), config, str(folder / "model"),
                            lambda name: stage(f"job: {name}"))
        except (PySparkException, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SparkJobFailed(f"the Spark job failed: {reason}") from None
        finally:
            if session is None:
                spark.stop()
        rejected = folder / "model" / "rejected"
        if rejected.is_dir():
            for reason, n in con.execute(
                    f"select reason, count from read_parquet('{rejected.as_posix()}/*.parquet') "
                    "order by reason").fetchall():
                log(f"spark: {n} rows of --events skipped: {reason}")
        stage("load: the model into the database")
        result = refresh_mod.load_model(con, folder / "model")
        result.notes.append(SPARK_MEASURE_NOTE)
        stage("done")
    finally:
        if not keep and not work:
            shutil.rmtree(folder, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result
