"""The Spark build on a real standalone cluster: a master and two workers started by this test
as separate processes on 127.0.0.1 (the launch classes ship with pyspark), then
`rtsql refresh --full --engine spark --master spark://...` and the `spark-job` +
`spark-submit` + `load-model` path, each compared with the local engine's lists. The cluster's
processes are stopped at the end, whatever happens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from standalone import standalone_cluster

import rtsql
from rtsql import ingest, refresh, settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_events"

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def spark_home() -> Path:
    pyspark = pytest.importorskip("pyspark", reason="the Spark engine needs pip install 'rtsql[spark]'")
    return Path(pyspark.__file__).parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``spark://127.0.0.1:PORT`` of a master with two one-core workers, all on loopback."""
    from rtsql import spark

    spark_home()
    spark.check_available()
    with standalone_cluster(tmp_path_factory.mktemp("cluster"), workers=2) as master:
        yield master


def sample_db_with_local_lists(path: Path) -> dict:
    """The sample set in a new database at ``path``, refreshed by the local engine (cosine, the
    measure Spark builds); returns its lists, which the Spark build must reproduce."""
    con = rtsql.connect(path)
    settings.set_value(con, "similarity", "cosine")
    ingest.ingest(con, sorted((SAMPLE / "events").iterdir()))
    refresh.refresh(con, full=True)
    con.close()
    return lists(path)


def lists(db: Path) -> dict:
    con = rtsql.connect(db, read_only=True)
    try:
        return {t: con.execute(f"select * from {t} order by all").fetchall()
                for t in ("interactions", "item_neighbors", "user_neighbors",
                          "item_neighbor_lists")}
    finally:
        con.close()


def rtsql_cli(db: Path, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "rtsql.cli", "--db", str(db), *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_refresh_on_a_standalone_cluster_equals_the_local_engine(cluster, tmp_path):
    db = tmp_path / "c.duckdb"
    want = sample_db_with_local_lists(db)
    out = rtsql_cli(db, "refresh", "--full", "--engine", "spark", "--master", cluster)
    assert "refresh full" in out
    for stage in ("export:", "job: item-item lists", "job: user-user lists", "load:"):
        assert stage in out  # progress: each stage with its elapsed time
    assert lists(db) == want  # bit for bit: the sample's weights are exact


def test_spark_submit_to_the_cluster_then_load_model_equals_the_local_engine(cluster, tmp_path):
    db = tmp_path / "s.duckdb"
    want = sample_db_with_local_lists(db)
    config, export, model = tmp_path / "job.json", tmp_path / "export", tmp_path / "model"
    rtsql_cli(db, "spark-job", "--config", str(config), "--export", str(export))
    from rtsql import spark_job

    submit = subprocess.run(
        [str(spark_home() / "bin" / "spark-submit"), "--master", cluster, spark_job.__file__,
         "--events", str(export / "events"), "--config", str(config), "--out", str(model)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
             "PYSPARK_PYTHON": sys.executable})
    assert submit.returncode == 0, submit.stderr[-3000:]
    rtsql_cli(db, "load-model", str(model))
    assert lists(db) == want
