"""The serving process's threads: requests keep the cores first."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from helpers import small_database

TASKS = Path("/proc/self/task")


def nice(task: int) -> int:
    """A thread's nice value, from Linux's /proc (field 19 of stat)."""
    return int((TASKS / str(task) / "stat").read_text().rsplit(")", 1)[1].split()[16])


def tasks() -> set[int]:
    return {int(name) for name in os.listdir(TASKS)}


@pytest.mark.skipif(not TASKS.exists() or not hasattr(os, "setpriority"),
                    reason="thread priorities are set and read through Linux's /proc")
def test_the_writer_the_follower_and_duckdbs_threads_run_below_the_requests(tmp_path):
    from rtsql.service import BACKGROUND_NICE, Service

    db_path = small_database(tmp_path)
    before = tasks()
    service = Service(db_path).start(warm=False)
    try:
        service.con.execute("select sum(range) from range(3000000)").fetchall()  # the pool works
        started = tasks() - before
        python_threads = {t.native_id for t in threading.enumerate()}
        assert nice(service._writer.native_id) == BACKGROUND_NICE
        assert nice(service._follow.native_id) == BACKGROUND_NICE
        # the threads DuckDB started when serve opened the database (not Python's)
        native = [t for t in started if t not in python_threads]
        duckdb_threads = service.con.execute(
            "select current_setting('threads')").fetchall()[0][0]
        assert sum(nice(t) == BACKGROUND_NICE for t in native) >= duckdb_threads - 1
        assert nice(threading.get_native_id()) == 0  # the caller, serve's event loop, keeps it
    finally:
        service.stop()
