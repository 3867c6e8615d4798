"""Batch ingest throughput: events/s from Parquet and from CSV, whole `rtsql ingest` processes.

    python benchmarks/bench_ingest.py [--events 10000000] [--repeat 3]

The peer in the same run is DuckDB itself loading the same file into a plain table
(read_parquet / read_csv with no validation, no rejects, no id dictionaries): the floor that
rtsql's validation and bookkeeping are measured against.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import dataset, median, print_table, run_process

PEER = """
import duckdb, sys
con = duckdb.connect(sys.argv[1])
reader = "read_parquet" if sys.argv[2].endswith(".parquet") else "read_csv"
con.execute(f"create table ev as select * from {reader}(?)", [sys.argv[2]])
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for fmt in ("parquet", "csv"):
        path = dataset(args.events, fmt)
        ours, peer = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                db = str(Path(tmp) / "b.duckdb")
                ours.append(run_process([sys.executable, "-m", "rtsql.cli", "--db", db,
                                         "ingest", str(path)]))
            with tempfile.TemporaryDirectory() as tmp:
                peer.append(run_process([sys.executable, "-c", PEER, str(Path(tmp) / "p.duckdb"),
                                         str(path)]))
        t_ours, t_peer = median([w for w, _ in ours]), median([w for w, _ in peer])
        rows.append((fmt, args.events, round(t_ours, 2), int(args.events / t_ours),
                     round(t_peer, 2), int(args.events / t_peer), round(t_ours / t_peer, 2),
                     int(max(m for _, m in ours))))
    print_table(["format", "events", "rtsql s", "rtsql ev/s", "duckdb-raw s", "raw ev/s",
                 "ratio", "rtsql peak MiB"], rows)


if __name__ == "__main__":
    main()
