"""Helpers shared by the benchmark scripts: data sets, whole-process timing, tables."""

from __future__ import annotations

import os
import resource
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
    """Run a whole process; returns (wall seconds, peak RSS of that child in MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024


def median(values):
    return statistics.median(values)


def print_table(columns, rows):
    from rtsql.output import render

    print(render(columns, rows, "table"), end="")
