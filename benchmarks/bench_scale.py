"""The scale suite (Scale issue): one command, one table, rtsql next to implicit in the same run.

    python benchmarks/bench_scale.py [--sizes 1000000,10000000] [--repeat 3]
                                     [--users 1000] [--batches 7] [--skip-nocap]
                                     [--cosine]

For each size, on the Foundation generator's synthetic set (cached under benchmarks/data/):
- batch ingest from Parquet (and from CSV at the largest size), whole `rtsql ingest` processes;
- full refresh, a whole `rtsql refresh --full` process (item-item top-50 and everything
  recommend() needs: interaction matrix, user-user, content, trending), time and peak RSS, with
  the default history cap and with the cap off (max_history 0), and with --cosine at
  similarity cosine (the measure of the peer below; the default, auto, picks by catalog size);
- the peer on the same interaction matrix: implicit's CosineRecommender(K=50).fit, in-process
  time and the peak RSS of its process (implicit has no cap: compare it with both rows);
- end to end: ingest + full refresh processes against a peer script that reads the same Parquet
  with DuckDB, builds the weighted matrix and fits implicit, as one process;
- incremental refresh of 1,000-event batches (existing and new users), p50 / p99;
- recommend(user, 10) and similar_items(item, 10) through the SQL macros over --users random
  users and items, p50 / p99;
- the database file size.
Every timing is the median of --repeat runs (latencies: percentiles over the calls). The
machine is shared; ratios measured in one run are what count.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import (
    dataset,
    incremental_batches,
    macro_latencies,
    median,
    p50_p99_ms,
    print_table,
    run_output,
    run_process,
)

# implicit's fit on the weighted interaction matrix of a refreshed rtsql database
PEER_FIT = """
import sys, time, warnings
import duckdb, numpy as np, scipy.sparse as sp
warnings.filterwarnings("ignore")
from implicit.nearest_neighbours import CosineRecommender
con = duckdb.connect(sys.argv[1], read_only=True)
m = con.execute("select user_key, item_key, weight from interactions").fetchnumpy()
con.close()
x = sp.csr_matrix((m["weight"].astype(np.float32), (m["user_key"], m["item_key"])))
start = time.perf_counter()
CosineRecommender(K=50).fit(x, show_progress=False)
print(time.perf_counter() - start)
"""

# the end-to-end peer: Parquet -> weighted matrix -> implicit, one process
PEER_END_TO_END = """
import sys, warnings
import duckdb, numpy as np, scipy.sparse as sp
warnings.filterwarnings("ignore")
from implicit.nearest_neighbours import CosineRecommender
con = duckdb.connect()
m = con.execute('''
    select dense_rank() over (order by user_id) - 1 as u, dense_rank() over (order by item_id) - 1 as i,
           sum(case event_type when 'view' then 1 when 'click' then 2 when 'search' then 1
                               when 'cart' then 4 when 'purchase' then 8 else 1 end) as w
    from read_parquet(?) group by user_id, item_id''', [sys.argv[1]]).fetchnumpy()
x = sp.csr_matrix((m["w"].astype(np.float32), (m["u"], m["i"])))
CosineRecommender(K=50).fit(x, show_progress=False)
"""


def cli(db: str) -> list[str]:
    return [sys.executable, "-m", "rtsql.cli", "--db", db]


def remove_database(path: str) -> None:
    for p in (path, path + ".wal"):
        Path(p).unlink(missing_ok=True)


def have_implicit() -> bool:
    import importlib.util

    if importlib.util.find_spec("implicit") is None:
        print("implicit is not installed (pip install '.[bench]'): peer rows skipped",
              file=sys.stderr)
        return False
    return True


def timed_processes(args: list[str], repeat: int, before=None) -> tuple[float, float]:
    """Median wall seconds and largest peak RSS (MiB) of ``repeat`` runs of a process."""
    runs = []
    for _ in range(repeat):
        if before:
            before()
        runs.append(run_process(args))
    return median([w for w, _ in runs]), max(m for _, m in runs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--users", type=int, default=1000, help="calls per latency figure")
    parser.add_argument("--batches", type=int, default=7, help="incremental batches of 1,000")
    parser.add_argument("--skip-nocap", action="store_true", help="no cap-off refresh row")
    parser.add_argument("--cosine", action="store_true",
                        help="also a full refresh at similarity cosine, implicit's measure")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    peer = have_implicit()
    rows = []

    def row(figure, events, value, unit, peer_value=None, ratio=None, peak=None):
        rows.append((figure, f"{events:,}", value, unit, peer_value, ratio, peak))
        print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for events in sizes:
            parquet = dataset(events, "parquet")
            db = str(Path(tmp) / f"r{events}.duckdb")
            ingest_wall, peak = timed_processes(cli(db) + ["ingest", str(parquet)], args.repeat,
                                                lambda db=db: remove_database(db))
            row("ingest Parquet (process)", events, f"{events / ingest_wall:,.0f}", "events/s",
                peak=int(peak))
            if events == max(sizes):
                csv = dataset(events, "csv")
                csv_db = str(Path(tmp) / "csv.duckdb")
                wall_csv, peak_csv = timed_processes(
                    cli(csv_db) + ["ingest", str(csv)], args.repeat,
                    lambda csv_db=csv_db: remove_database(csv_db))
                remove_database(csv_db)
                row("ingest CSV (process)", events, f"{events / wall_csv:,.0f}", "events/s",
                    peak=int(peak_csv))

            fit = fit_peak = None
            refresh_runs = {}
            runs = [("default cap 500", {"max_history": "500"})]
            runs += [] if args.skip_nocap else [("cap off", {"max_history": "0"})]
            runs += [("similarity cosine", {"similarity": "cosine"})] if args.cosine else []
            for label, changed in runs:
                for name, value in changed.items():
                    run_process(cli(db) + ["settings", name, value])
                refresh_runs[label] = timed_processes(cli(db) + ["refresh", "--full"],
                                                      args.repeat)
                for name in changed:
                    run_process(cli(db) + ["settings", name, "--reset"])
                cap = changed.get("max_history")
                if cap == "500" and peer:
                    fits = [run_output([sys.executable, "-c", PEER_FIT, db])
                            for _ in range(args.repeat)]
                    fit = median([float(out) for out, _ in fits])
                    fit_peak = max(p for _, p in fits)
            run_process(cli(db) + ["refresh", "--full"])
            for label, (wall, peak) in refresh_runs.items():
                row(f"full refresh, {label} (process)", events, f"{wall:.2f}", "s",
                    f"{fit:.2f}" if fit else None, f"{wall / fit:.2f}" if fit else None,
                    int(peak))
            if fit:
                row("implicit CosineRecommender(K=50).fit (in-process)", events, f"{fit:.2f}",
                    "s", peak=int(fit_peak))

            if events == min(sizes):
                end_to_end(db, parquet, refresh_runs["default cap 500"][0], ingest_wall, peer,
                           args.repeat, row, events)
            latencies(db, events, args, row)
            row("database file size", events, f"{os.path.getsize(db) / 2**20:.1f}", "MiB")
            Path(db).unlink(missing_ok=True)
    print_table(["figure", "events", "value", "unit", "implicit", "rtsql / implicit",
                 "peak RSS MiB"], rows)


def end_to_end(db, parquet, refresh_wall, ingest_wall, peer, repeat, row, events):
    ours = ingest_wall + refresh_wall
    if peer:
        theirs, _ = timed_processes([sys.executable, "-c", PEER_END_TO_END, str(parquet)],
                                    repeat)
        row("end to end: ingest + full refresh vs Parquet -> implicit fit (processes)", events,
            f"{ours:.2f}", "s", f"{theirs:.2f}", f"{ours / theirs:.2f}")
    else:
        row("end to end: ingest + full refresh (processes)", events, f"{ours:.2f}", "s")


def latencies(db, events, args, row):
    import rtsql

    con = rtsql.connect(db)
    with tempfile.TemporaryDirectory() as tmp:
        times = incremental_batches(con, Path(tmp), args.batches)
    row("incremental refresh, 1,000 events: p50 / p99", events,
        f"{np.median(times):.2f} / {np.percentile(times, 99):.2f}", "s")
    for name, calls in macro_latencies(con, args.users):
        row(f"{name} through the SQL macro: p50 / p99", events, p50_p99_ms(calls), "ms")
    con.close()


if __name__ == "__main__":
    main()
