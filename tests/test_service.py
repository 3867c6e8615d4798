"""The serving process's threads: requests keep the cores first."""

from __future__ import annotations

import os
import threading
import time
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


def test_after_a_refresh_serve_swaps_in_only_what_it_rewrote(tmp_path, monkeypatch):
    """A background refresh folds posted events in; serve takes only the rows it rewrote
    (State.advanced_model, not a whole load), and the state equals a load of the database."""
    import rtsql
    from rtsql import refresh, settings
    from rtsql.service import Service
    from rtsql.serving import ServingState

    from helpers import assert_same_state

    db_path = small_database(tmp_path)
    con = rtsql.connect(db_path)
    settings.set_value(con, "similarity", "cosine")  # updated in place: no rebuild on the way
    refresh.refresh(con, full=True)
    settings.set_value(con, "tail_refresh_seconds", "0")
    con.close()
    advanced = []
    original = ServingState.advanced_model

    def spy(self, *args):
        advanced.append(original(self, *args))
        return advanced[-1]

    monkeypatch.setattr(ServingState, "advanced_model", spy)
    service = Service(db_path).start(warm=False)
    try:
        body = b"".join(b'{"user_id": "user-%d", "item_id": "sku-%d", "event_type": "cart", '
                        b'"ts": "2026-11-30T12:00:00"}\n' % (i % 7, i) for i in range(40))
        service.submit_events(body).result(timeout=120)
        last = service.state.seen["event_id"]
        deadline = time.monotonic() + 120
        while service.state.model.watermark < last:  # the refresh folded them in
            assert time.monotonic() < deadline, "no refresh folded the events in"
            time.sleep(0.1)
        with service.lock:
            cursor = service.con.cursor()
            assert_same_state(service.state, ServingState.load(cursor))
            cursor.close()
        assert advanced and advanced[-1] is not None
    finally:
        service.stop()
