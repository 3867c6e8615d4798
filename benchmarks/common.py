"""Helpers shared by the benchmark scripts: data sets, whole-process timing, tables."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def dataset(events: int, fmt: str) -> Path:
    """The synthetic set of ``events`` events in ``fmt``, generated once and cached."""
    from rtsql import generate

    DATA.mkdir(exist_ok=True)
    path = DATA / f"events_{events}.{ 'csv' if fmt == 'csv' else 'parquet'}"
    if not path.exists():
        table, _ = generate.synthetic_events(generate.SyntheticSpec(events=events))
        generate.write_events(table, path, fmt)
    return path


def copy_database(source: str | Path, target: str | Path) -> None:
    """A scratch copy of a refreshed database, with EASE's stored inverse beside it when it
    has one (``<db>.ease``, copied sparse, and its metadata), so the copy refreshes as the
    original would instead of rebuilding in full."""
    shutil.copyfile(source, target)
    for suffix in (".ease", ".ease.json"):
        if Path(f"{source}{suffix}").exists():
            subprocess.run(["cp", "--sparse=always", f"{source}{suffix}", f"{target}{suffix}"],
                           check=True)


@contextlib.contextmanager
def scratch_copy(source: str | Path, name: str):
    """A copy of a refreshed database (copy_database) in a temporary folder, removed after."""
    work = Path(tempfile.mkdtemp(prefix="rtsql-bench-"))
    try:
        target = work / name
        copy_database(source, target)
        yield target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_process(args: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run a whole process; returns (wall seconds, peak RSS of that process in MiB)."""
    wall, _, peak = _run(args, env)
    return wall, peak


def run_output(args: list[str], env: dict | None = None,
               limit: float | None = None) -> tuple[str | None, float]:
    """Run a whole process; returns (its stdout, its peak RSS in MiB); stdout None when it was
    stopped after ``limit`` seconds (a peer that does not finish)."""
    _, out, peak = _run(args, env, limit)
    return out, peak


def _run(args, env, limit: float | None = None):
    """os.wait4 gives the rusage of exactly this child (RUSAGE_CHILDREN would give the largest
    child so far)."""
    import signal
    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True,
                                env={**os.environ, **(env or {})})
        timer = threading.Timer(limit, proc.send_signal, [signal.SIGKILL]) if limit else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        if timer:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if limit and proc.returncode == -signal.SIGKILL:
            return wall, None, usage.ru_maxrss / 1024
        if proc.returncode != 0:
            sys.exit(f"{' '.join(map(str, args))} failed:\n{err.read()[-3000:]}")
        return wall, out.read(), usage.ru_maxrss / 1024


def incremental_batches(con, directory: Path, batches: int, seed: int = 7,
                        after_refresh=None) -> list[float]:
    """Ingest ``batches`` CSV files of 1,000 events (existing users and about 5% new ones,
    existing items, mostly views) into ``con``, refreshing after each; the refresh seconds.
    ``after_refresh(result)``, if given, runs after each refresh (untimed)."""
    import random

    from rtsql import ingest, refresh

    n_users = con.execute("select max(user_key) from users").fetchall()[0][0]
    n_items = con.execute("select max(item_key) from items").fetchall()[0][0]
    rng = random.Random(seed)
    seconds = []
    for batch in range(batches):
        path = Path(directory) / f"batch{batch}.csv"
        lines = [f"u{rng.randrange(1, int(n_users * 1.05) + 2)},i{rng.randrange(1, n_items)},"
                 f"{rng.choice(['view', 'view', 'click', 'cart'])},"
                 f"2026-11-01T00:{batch % 60:02d}:{n % 60:02d},\n" for n in range(1000)]
        path.write_text("user_id,item_id,event_type,ts,value\n" + "".join(lines))
        ingest.ingest(con, [path])
        start = time.perf_counter()
        result = refresh.refresh(con)
        seconds.append(time.perf_counter() - start)
        if after_refresh is not None:
            after_refresh(result)
    return seconds


def macro_latencies(con, calls: int) -> list[tuple[str, list[float]]]:
    """Seconds per call of recommend(user, 10) and similar_items(item, 10) through the SQL
    macros, over ``calls`` users and items picked by hash."""
    users = [r[0] for r in con.execute(
        "select user_id from users order by hash(user_id) limit ?", [calls]).fetchall()]
    items = [r[0] for r in con.execute(
        "select item_id from items order by hash(item_id) limit ?", [calls]).fetchall()]
    figures = []
    for name, sql, keys in (("recommend(user, 10)", "select * from recommend(?, 10)", users),
                            ("similar_items(item, 10)", "select * from similar_items(?, 10)",
                             items)):
        times = []
        for key in keys:
            start = time.perf_counter()
            con.execute(sql, [key]).fetchall()
            times.append(time.perf_counter() - start)
        figures.append((name, times))
    return figures


def p50_p99_ms(seconds: list[float]) -> str:
    import numpy as np

    return f"{np.median(seconds) * 1000:.1f} / {np.percentile(seconds, 99) * 1000:.1f}"


def median(values):
    return statistics.median(values)


def print_table(columns, rows):
    from rtsql.output import render

    print(render(columns, rows, "table"), end="")


class TimedConnection:
    """A connection that times each statement it runs (and each other call) into ``into``."""

    def __init__(self, con, into: dict[str, list[float]]):
        self._con, self._into = con, into

    def execute(self, sql: str, *args):
        start = time.perf_counter()
        result = self._con.execute(sql, *args)
        self._into.setdefault(" ".join(sql.split())[:60], []).append(
            time.perf_counter() - start)
        return result

    def __getattr__(self, name: str):
        attribute = getattr(self._con, name)
        if not callable(attribute):
            return attribute

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = attribute(*args, **kwargs)
            self._into.setdefault(name, []).append(time.perf_counter() - start)
            return result
        return timed
