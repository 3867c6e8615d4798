"""A one-minute regression benchmark at 1M synthetic events, to run before committing.

    python benchmarks/bench_regression.py [--events 1000000]

Whole processes for ingest and the full refresh (time and peak RSS), then in-process: three
incremental refreshes of 1,000 events, recommend() and similar_items() latency over 200 users
and items through the SQL macros, and the peer in the same run: implicit's
CosineRecommender(K=50).fit on the same weighted interaction matrix. Ratios are what count.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import dataset, print_table, run_process


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "r.duckdb")
        cli = [sys.executable, "-m", "rtsql.cli", "--db", db]
        wall, rss = run_process(cli + ["ingest", str(dataset(args.events, "parquet"))])
        rows.append(("ingest (process)", round(wall, 2), int(rss), None))
        wall, rss = run_process(cli + ["refresh", "--full"])
        rows.append(("full refresh (process)", round(wall, 2), int(rss), None))
        refresh_wall = wall

        import rtsql
        from rtsql import ingest, refresh

        con = rtsql.connect(db)
        n_users = con.execute("select max(user_key) from users").fetchall()[0][0]
        n_items = con.execute("select max(item_key) from items").fetchall()[0][0]
        rng = random.Random(1)
        incremental = []
        for batch in range(3):
            path = Path(tmp) / f"b{batch}.csv"
            lines = [f"u{rng.randrange(1, n_users + 500)},i{rng.randrange(1, n_items)},view,"
                     f"2026-11-02T00:{batch:02d}:{n % 60:02d},\n" for n in range(1000)]
            path.write_text("user_id,item_id,event_type,ts,value\n" + "".join(lines))
            ingest.ingest(con, [path])
            incremental.append(refresh.refresh(con).seconds)
        rows.append(("incremental refresh, 1,000 events (median of 3)",
                     round(statistics.median(incremental), 3), None,
                     round(refresh_wall / statistics.median(incremental), 1)))
        users = [r[0] for r in con.execute(
            "select user_id from users order by hash(user_id) limit 200").fetchall()]
        items = [r[0] for r in con.execute(
            "select item_id from items order by hash(item_id) limit 200").fetchall()]
        for name, sql, keys in (("recommend(user, 10)", "select * from recommend(?, 10)", users),
                                ("similar_items(item, 10)", "select * from similar_items(?, 10)",
                                 items)):
            times = []
            for key in keys:
                start = time.perf_counter()
                con.execute(sql, [key]).fetchall()
                times.append(time.perf_counter() - start)
            rows.append((f"{name} p50 / p99 ms",
                         f"{np.median(times) * 1000:.1f} / {np.percentile(times, 99) * 1000:.1f}",
                         None, None))
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
