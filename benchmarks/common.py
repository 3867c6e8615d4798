"""Helpers shared by the benchmark scripts: data sets, whole-process timing, tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
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


def run_process(args: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run a whole process; returns (wall seconds, peak RSS of that process in MiB)."""
    wall, _, peak = _run(args, env)
    return wall, peak


def run_output(args: list[str], env: dict | None = None) -> tuple[str, float]:
    """Run a whole process; returns (its stdout, its peak RSS in MiB)."""
    _, out, peak = _run(args, env)
    return out, peak


def _run(args, env):
    """os.wait4 gives the rusage of exactly this child (RUSAGE_CHILDREN would give the largest
    child so far)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True,
                                env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(map(str, args))} failed:\n{err.read()[-3000:]}")
        return wall, out.read(), usage.ru_maxrss / 1024


def median(values):
    return statistics.median(values)


def print_table(columns, rows):
    from rtsql.output import render

    print(render(columns, rows, "table"), end="")
