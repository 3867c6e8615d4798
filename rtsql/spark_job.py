"""The full model build as an Apache Spark job: interactions, neighbour lists, trending counts.

This file depends on PySpark (with numpy, scipy and pandas) and the engine's two source files
beside it, so a cluster runs it without rtsql installed::

    spark-submit --master yarn rtsql/spark_job.py --events s3a://shop/events/ \\
        --config job.json --out s3a://shop/model/

(``python -m rtsql.spark_job`` is the same.) ``rtsql refresh --full --engine spark`` writes the
config from the database's settings, runs this job (in-process, ``local[2]`` unless
``--master`` says otherwise) and loads its output (``rtsql load-model``); docs/spark.md
describes the layouts in and out.

Reading, the interaction matrix, the caps and trending are DataFrame operations; the neighbour
lists are computed in the executors by the local engine's own kernel (rtsql/measures/engine.py,
shipped with the job; numpy, scipy and pandas, which PySpark's Arrow functions need anyway), one
task per block of rows over Arrow batches (``applyInPandas``), so the shuffle carries the matrix's
entries, not one row per multiply-add. Nothing large is collected to the driver (a few scalars:
the newest event time, the user count). Each step repeats the local engine's floating-point
operations in the same order (rtsql/refresh.py, rtsql/measures/engine.py): the event weight
``type weight * value * exp(max(rate * (epoch(ts) - t0), -200))``, per-pair dot products of raw
weights scaled afterwards, ``dot * (1/|a|) * (1/|b|)``, then the shrinkage factor. Where the sums
are exact (weights that are multiples of a power of two: event-type weights, ratings, no decay)
both engines compute the same bits, so ties break the same way (score descending, neighbour key
ascending). Elsewhere they agree to rounding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# input columns (rtsql's events table, exported as Parquet)
EVENT_COLUMNS = ("event_id", "user_key", "item_key", "event_type", "value", "ts")
OUTPUTS = ("interactions", "item_neighbors", "user_neighbors", "item_counts", "model")


def build(spark, events_uri: str, config: dict, out_uri: str, stage=lambda name: None) -> dict:
    """Run the job; returns the model scalars it also writes to ``out_uri/model``. ``stage``
    is called with each step's name as it starts (progress)."""
    from pyspark.sql import functions as F

    events = spark.read.parquet(events_uri).select(*EVENT_COLUMNS)
    if config.get("watermark") is not None:
        events = events.where(F.col("event_id") <= F.lit(int(config["watermark"])))
    types = spark.createDataFrame(
        [(t["event_type"], float(t["weight"]), bool(t["uses_value"]),
          bool(t.get("negative_values", False))) for t in config["event_types"]],
        "event_type string, type_weight double, uses_value boolean, negative_values boolean")
    if config.get("external"):
        events = events.unionByName(_external_events(spark, config, types, out_uri))
        config = {**config, **_key_ranges(spark, out_uri, config)}
    newest = events.agg(F.max(F.unix_micros("ts")).alias("t"), F.max("event_id").alias("w"),
                        F.count(F.lit(1)).alias("n")).first()
    # the decay landmark: the newest event (the local full refresh's rule)
    t0 = newest["t"] / 1e6 if newest["t"] is not None else float(config["now"])
    rate = float(config["decay_rate"])

    def describe(step: str | None) -> None:
        spark.sparkContext.setJobDescription(step)  # names the stages in Spark's event log
        if step:
            stage(step.removeprefix("rtsql: "))

    describe("rtsql: interactions")
    _interactions(events, types.drop("negative_values"), rate, t0) \
        .write.mode("overwrite").parquet(f"{out_uri}/interactions")
    describe("rtsql: history cap")
    capped = _capped(spark.read.parquet(f"{out_uri}/interactions"), config).persist()
    users_with_history = capped.select("user_key").distinct().count()
    _neighbour_lists(spark, capped, config, out_uri, describe)
    capped.unpersist()
    describe("rtsql: trending counts")
    window_us = round(float(config["trending_window_seconds"]) * 1e6)
    _counts(events, newest["t"] or 0, window_us, bool(config.get("external")), out_uri)
    describe(None)
    model = {"t0": t0, "decay_rate": rate, "idf_n": float(users_with_history),
             # the database's last event id: file events (-1) are not in its events table
             "watermark": int(config["watermark"]) if config.get("watermark") is not None
             else max(int(newest["w"] or 0), 0), "events": int(newest["n"]),
             "external": bool(config.get("external"))}
    if newest["t"] is not None:  # the trending windows, which the next refresh moves on from
        model["trending"] = [newest["t"], window_us]
    spark.createDataFrame([model]).coalesce(1).write.mode("overwrite").json(f"{out_uri}/model")
    return model


def _interactions(events, types, rate: float, t0: float):
    """The interaction matrix: one row per (user, item), its weight the sum of its events'
    weights (type weight x value x the forward decay against ``t0``)."""
    from pyspark.sql import functions as F

    epoch = F.unix_micros("ts").cast("double") / F.lit(1e6)
    weighted = events.join(F.broadcast(types), "event_type").withColumn(
        "w", F.col("type_weight")
        * F.when(F.col("uses_value"), F.col("value")).otherwise(F.lit(1.0))
        * F.exp(F.greatest(F.lit(rate) * (epoch - F.lit(t0)), F.lit(-200.0))))
    return weighted.groupBy("user_key", "item_key").agg(
        F.sum("w").alias("weight"), F.count(F.lit(1)).cast("int").alias("events"),
        F.max("ts").alias("last_ts"),
        F.max_by("event_type", F.struct("ts", "event_id")).alias("last_event_type"),
        F.max("w").alias("peak"))


def _capped(interactions, config: dict):
    """The capped history co-occurrence reads: each user's max_history latest items, the
    models' weight of a pair (the column the pair_weight setting names, rtsql/spark.py),
    positive weights only."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cap = int(config["max_history"])
    latest = Window.partitionBy("user_key").orderBy(F.col("last_ts").desc(),
                                                     F.col("item_key").desc())
    capped = interactions
    if cap > 0:
        capped = capped.withColumn("rn", F.row_number().over(latest)).where(F.col("rn") <= cap)
    capped = capped.select("user_key", "item_key", F.col(config["model_weight"]).alias("weight"),
                           "last_ts")
    return capped.where(F.col("weight") > 0)


def _neighbour_lists(spark, capped, config: dict, out_uri: str, describe) -> None:
    """The item-item lists, and the user-user ones (empty without user_cf), computed in the
    executors by the shipped engine."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    stored = int(config["list_length"])
    ship_engine(spark)
    # blocks of rows, one task each: one per core. Every block receives the entries of the
    # features its rows touch, so more blocks ship more copies; a cluster whose tasks need
    # less memory each sets "blocks" in the config
    blocks = int(config.get("blocks") or spark.sparkContext.defaultParallelism)
    describe("rtsql: item-item lists")
    _lists(capped, "item_key", "user_key", config, stored, int(config["n_items"]), blocks) \
        .write.mode("overwrite").parquet(f"{out_uri}/item_neighbors")
    describe("rtsql: user-user lists")
    if not config["user_cf"]:
        spark.createDataFrame([], "user_key int, neighbor_key int, score double, rank int, "
                                  "complete boolean") \
            .write.mode("overwrite").parquet(f"{out_uri}/user_neighbors")
        return
    # each item counts with its max_item_users most recent users (refresh.most_recent_per_item)
    item_cap, by_item = int(config.get("max_item_users", 0)), capped
    if item_cap > 0:
        recent = Window.partitionBy("item_key").orderBy(F.col("last_ts").desc(),
                                                         F.col("user_key").desc())
        by_item = capped.withColumn("rn", F.row_number().over(recent)) \
            .where(F.col("rn") <= item_cap)
    _lists(by_item, "user_key", "item_key", config, stored, int(config["n_users"]), blocks) \
        .write.mode("overwrite").parquet(f"{out_uri}/user_neighbors")


def _counts(events, newest_us: int, window_us: int, external: bool, out_uri: str) -> None:
    """Trending counts per item against the newest event (the ranking is done on load); with
    external events, what later local refreshes need to count them in trending and
    popularity."""
    from pyspark.sql import functions as F

    now_us = F.lit(newest_us)
    ts_us = F.unix_micros("ts")
    events.groupBy("item_key").agg(
        F.count(F.when(ts_us > now_us - window_us, 1)).alias("recent"),
        F.count(F.when((ts_us <= now_us - window_us) & (ts_us > now_us - 2 * window_us), 1))
        .alias("previous"),
        F.count(F.lit(1)).alias("popularity")) \
        .write.mode("overwrite").parquet(f"{out_uri}/item_counts")
    if external:
        external_events = events.where(F.col("event_id") < 0)
        external_events.groupBy("item_key").agg(F.count(F.lit(1)).alias("events")) \
            .write.mode("overwrite").parquet(f"{out_uri}/external_counts")
        external_events.where(ts_us > now_us - 2 * window_us).select("item_key", "ts") \
            .write.mode("overwrite").parquet(f"{out_uri}/external_recent")


def _external_events(spark, config: dict, types, out_uri: str):
    """Events from Parquet the user already has (``config.external``): columns mapped as
    ``rtsql ingest --map`` does, the same checks as ingest (rows that fail are counted by
    reason in ``out/rejected``; they stay where they are), and string ids turned into rtsql's
    keys: known ids keep theirs (``ids/users``, ``ids/items`` exported by rtsql), new ones get
    the next keys in order of first appearance (time, then id), written to ``out/new_users``
    and ``out/new_items`` for the load. They come before the database's own events (event_id
    -1: the later event wins a tie on time)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ext = config["external"]
    raw = spark.read.parquet(*ext["uris"])
    names = set(raw.columns)

    def col(canonical: str):
        name = ext["columns"].get(canonical, canonical)
        return F.col(f"`{name}`") if name in names else None

    missing = [c for c in ("user_id", "item_id", "ts") if col(c) is None]
    if missing or (col("event_type") is None and not ext.get("event_type")):
        raise ValueError(f"--events: no column for {', '.join(missing or ['event_type'])} "
                         f"(columns: {', '.join(sorted(names))}); map it with --map")
    ts_type = dict(raw.dtypes)[ext["columns"].get("ts", "ts")]
    if ts_type.startswith("timestamp") or ts_type == "date":
        ts = col("ts").cast("timestamp")
    elif ts_type in ("int", "bigint", "double", "float", "smallint"):
        ts = F.timestamp_micros((col("ts").cast("double") * 1e6).cast("long"))
    else:
        ts = F.to_timestamp(F.trim(col("ts").cast("string")))
    event_type = (F.lower(F.trim(col("event_type").cast("string"))) if col("event_type")
                  is not None else F.lit(ext["event_type"]))
    value = col("value").cast("double") if col("value") is not None else F.lit(None).cast("double")
    rows = raw.select(F.trim(col("user_id").cast("string")).alias("user_id"),
                      F.trim(col("item_id").cast("string")).alias("item_id"),
                      event_type.alias("event_type"), ts.alias("ts"), value.alias("value"))
    rows = rows.join(F.broadcast(types), "event_type", "left")
    reason = (F.when(F.coalesce(F.col("user_id"), F.lit("")) == "", "missing user_id")
              .when(F.coalesce(F.col("item_id"), F.lit("")) == "", "missing item_id")
              .when(F.col("type_weight").isNull(), "unknown event type")
              .when(F.col("ts").isNull(), "missing or unparseable timestamp")
              .when(F.col("value").isNotNull() & (F.isnan("value") | (F.abs("value") == float("inf"))),
                    "non-numeric value")
              .when(F.col("uses_value") & F.col("value").isNull(), "missing value")
              .when((F.col("ts") < F.lit(ext["ts_min"]).cast("timestamp"))
                    | (F.col("ts") > F.lit(ext["ts_max"]).cast("timestamp")),
                    "timestamp outside the accepted window")
              .when(F.abs("value") > float(ext["max_abs_value"]), "value out of range")
              .when((F.col("value") < 0) & ~F.col("negative_values"), "negative value"))
    rows = rows.withColumn("reason", reason).persist()
    rows.where(F.col("reason").isNotNull()).groupBy("reason").count() \
        .write.mode("overwrite").parquet(f"{out_uri}/rejected")
    good = rows.where(F.col("reason").isNull())
    keyed = good
    for column, table, key in (("user_id", "users", "user_key"), ("item_id", "items", "item_key")):
        known = spark.read.parquet(f"{ext['ids']}/{table}")
        first = good.groupBy(column).agg(F.min("ts").alias("first_ts")) \
            .join(known, column, "left_anti")
        # one ordered numbering of the new ids (a single partition: new ids only)
        ranked = first.withColumn("n", F.row_number().over(Window.orderBy("first_ts", column)))
        new = ranked.select(column, (F.col("n") + F.lit(int(ext[f"{key}_floor"])))
                            .cast("int").alias(key))
        new.write.mode("overwrite").parquet(f"{out_uri}/new_{table}")
        ids = known.unionByName(spark.read.parquet(f"{out_uri}/new_{table}"))
        keyed = keyed.join(ids, column)
    return keyed.select(F.lit(-1).cast("long").alias("event_id"), "user_key", "item_key",
                        "event_type", "ts", "value").select(*EVENT_COLUMNS)


def _key_ranges(spark, out_uri: str, config: dict) -> dict:
    """n_users / n_items after the new ids: the lists' 'complete' flag compares with them."""
    from pyspark.sql import functions as F

    out = {}
    for table, key, name in (("users", "user_key", "n_users"), ("items", "item_key", "n_items")):
        top = spark.read.parquet(f"{out_uri}/new_{table}").agg(F.max(key)).first()[0]
        out[name] = max(int(config[name]), int(top) + 1 if top is not None else 0)
    return out


def _lists(capped, row: str, feature: str, config: dict, stored: int, n_rows: int, blocks: int):
    """Top-``stored`` cosine neighbours of each ``row`` over the shared ``feature``s: (row,
    neighbor_key, score, rank, complete), computed by the local engine's kernel in the
    executors (``_block_lists``), one task per block of rows.

    Rows are split into ``blocks`` by key (key mod blocks). A task's rows are similar only to
    rows that share one of their features, so the task receives every entry of each feature its
    rows have, with the entry's row scale (1/|row|) attached: a shuffle of at most ``blocks``
    copies of the matrix's entries, and in practice fewer (a block rarely touches every
    feature), instead of one row per multiply-add."""
    from pyspark.sql import functions as F

    x = capped.select(F.col(row).alias("r"), F.col(feature).alias("f"), F.col("weight").alias("w"))
    scale = x.groupBy("r").agg(F.sum(F.col("w") * F.col("w")).alias("n2")).select(
        "r", (F.lit(1.0) / F.sqrt("n2")).alias("s"))
    x = x.join(scale, "r")
    wanted = x.select(F.pmod(F.col("r"), F.lit(blocks)).alias("b"), "f").distinct()
    shipped = wanted.join(x, "f").select("b", "r", "f", "w", "s")
    kernel = _block_lists(row, blocks, n_rows, stored, float(config["shrinkage"]),
                          int(config["min_support"]), int(config.get("block_cells", 1 << 22)))
    return shipped.groupBy("b").applyInPandas(
        kernel, f"{row} int, neighbor_key int, score double, rank int, complete boolean")


def _block_lists(key: str, blocks: int, n_rows: int, stored: int, shrinkage: float, min_support: int,
                 block_cells: int):
    """The function each task runs on its block's entries (a pandas frame with b, r, f, w, s):
    the lists of its rows (column ``key``) by the local engine's RowSimilarity and top_k (rtsql/measures/engine.py, shipped with the job
    by ``ship_engine``) over the block's rows. Keys are renumbered in order, so the products
    add in the local engine's order and ties break on the same keys."""
    def run(frame):
        import numpy as np
        import pandas as pd
        import scipy.sparse as sp
        from _rtsql_engine import engine, params

        block = int(frame["b"].iat[0])
        rows, r = np.unique(frame["r"].to_numpy(np.int64), return_inverse=True)
        features, f = np.unique(frame["f"].to_numpy(np.int64), return_inverse=True)
        m = sp.csr_matrix((frame["w"].to_numpy(np.float64), (r, f)),
                          shape=(len(rows), len(features)))
        m.sum_duplicates()
        scale = np.zeros(len(rows))
        scale[r] = frame["s"].to_numpy(np.float64)
        measure = params.Measure(k=stored, shrinkage=shrinkage, min_support=min_support,
                                 block_cells=block_cells, threads=1)
        sim = engine.RowSimilarity(m, params.Weights(m, m.T.tocsr(), scale), measure)
        own = np.flatnonzero(rows % blocks == block)
        lists = engine.Neighbors.concat(
            sim.map_blocks(own, lambda b: engine.top_k(b, stored, n_rows)))
        complete = np.zeros(len(rows), bool)
        complete[lists.complete_rows] = True
        return pd.DataFrame({key: rows[lists.row].astype(np.int32),
                             "neighbor_key": rows[lists.nb].astype(np.int32),
                             "score": lists.score, "rank": lists.rank.astype(np.int32),
                             "complete": complete[lists.row]})

    return run


SHIPPED_ENGINE = ("engine.py", "params.py")  # tests/test_architecture.py keeps them standalone


def ship_engine(spark) -> None:
    """Make rtsql's similarity engine importable in the executors as ``_rtsql_engine``: its
    two source files (rtsql/measures/engine.py and params.py, which need numpy and scipy only),
    zipped from beside this file and added with ``addPyFile``. The cluster needs no rtsql."""
    import tempfile
    import zipfile
    from pathlib import Path

    source = Path(__file__).resolve().with_name("measures")
    target = Path(tempfile.mkdtemp(prefix="rtsql-engine-")) / "_rtsql_engine.zip"
    # the same bytes for the same sources: a session that runs the job twice adds the file
    # twice, which Spark accepts only when the contents match
    with zipfile.ZipFile(target, "w") as z:
        for name in ("__init__.py",) + SHIPPED_ENGINE:
            text = "" if name == "__init__.py" else (source / name).read_text()
            z.writestr(zipfile.ZipInfo(f"_rtsql_engine/{name}", (2000, 1, 1, 0, 0, 0)), text)
    spark.sparkContext.addPyFile(str(target))


def session(master: str | None = None, conf: dict | None = None, app: str = "rtsql-build"):
    """A SparkSession: ``master`` (default: the environment's, else local[2]) and extra conf."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app)
    if master:
        builder = builder.master(master)
    elif not _has_master():
        builder = builder.master("local[2]")
    import os
    import sys

    # executors start this interpreter (the same packages) unless the environment names one
    python = {} if os.environ.get("PYSPARK_PYTHON") else {"spark.pyspark.python": sys.executable}
    settings = {**python, "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                "spark.sql.session.timeZone": "UTC", "spark.sql.shuffle.partitions": "8",
                **(conf or {})}
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _has_master() -> bool:
    import os

    return "--master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "") or \
        "SPARK_MASTER" in os.environ or "spark.master" in os.environ.get("SPARK_CONF", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rtsql-spark-job", description=__doc__.split("\n")[0])
    parser.add_argument("--events", required=True, help="events Parquet (folder, glob or URI)")
    parser.add_argument("--config", required=True, help="job config JSON written by rtsql")
    parser.add_argument("--out", required=True, help="output folder or URI")
    parser.add_argument("--master", help="Spark master (spark-submit sets it)")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    spark = session(args.master)
    try:
        start = time.perf_counter()
        model = build(spark, args.events, config, args.out, lambda name: print(
            f"rtsql-spark-job [{time.perf_counter() - start:6.1f}s] {name}", file=sys.stderr,
            flush=True))
    except ValueError as exc:  # the input does not fit the config: say so, no traceback
        print(f"rtsql-spark-job: {exc}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    print(json.dumps(model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
