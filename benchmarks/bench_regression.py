"""A one-minute regression benchmark at 1M synthetic events, to run before committing.

    python benchmarks/bench_regression.py [--events 1000000]

Whole processes for ingest and the full refresh (time and peak RSS), then in-process: three
incremental refreshes of 1,000 events, recommend() and similar_items() latency over 200 users
and items through the SQL macros, and the peer in the same run: implicit's
CosineRecommender(K=50).fit on the same weighted interaction matrix. Ratios are what count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import (
    dataset,
    incremental_batches,
    macro_latencies,
    p50_p99_ms,
    print_table,
    run_process,
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="A setting before the refresh (e.g. similarity=cosine).")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "r.duckdb")
        cli = [sys.executable, "-m", "rtsql.cli", "--db", db]
        wall, rss = run_process(cli + ["ingest", str(dataset(args.events, "parquet"))])
        rows.append(("ingest (process)", round(wall, 2), int(rss), None))
        for assignment in args.set:
            run_process(cli + ["settings", *assignment.split("=", 1)])
        wall, rss = run_process(cli + ["refresh", "--full"])
        rows.append(("full refresh (process)", round(wall, 2), int(rss), None))
        refresh_wall = wall

        import rtsql

        con = rtsql.connect(db)
        incremental = incremental_batches(con, Path(tmp), 3)
        rows.append(("incremental refresh, 1,000 events (median of 3)",
                     round(statistics.median(incremental), 3), None,
                     round(refresh_wall / statistics.median(incremental), 1)))
        for name, calls in macro_latencies(con, 200):
            rows.append((f"{name} p50 / p99 ms", p50_p99_ms(calls), None, None))
        matrix = con.execute("select user_key, item_key, weight from interactions").fetchnumpy()
        con.close()
    try:
        import scipy.sparse as sp
        from implicit.nearest_neighbours import CosineRecommender
    except ImportError:
        print("implicit is not installed (pip install '.[bench]'): peer row skipped",
              file=sys.stderr)
    else:
        warnings.filterwarnings("ignore", module="implicit")
        x = sp.csr_matrix((matrix["weight"].astype(np.float32),
                           (matrix["user_key"], matrix["item_key"])))
        start = time.perf_counter()
        CosineRecommender(K=50).fit(x, show_progress=False)
        fit = time.perf_counter() - start
        rows.append(("implicit CosineRecommender(K=50).fit (in-process)", round(fit, 2), None,
                     round(refresh_wall / fit, 1)))
    print_table(["figure", "seconds", "peak RSS MiB", "ratio"], rows)


if __name__ == "__main__":
    main()
