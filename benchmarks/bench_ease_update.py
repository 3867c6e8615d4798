"""EASE between full refreshes: folding 1,000-event batches into the stored inverse, against a
full rebuild measured in the same run, on ml-latest-small with the default settings.

    python benchmarks/bench_ease_update.py [--batches 5] [--batch 1000] [--shape random]
                                           [--threads 2] [--solver auto|items|users]

The database holds ml-latest-small's ratings minus the stream; the stream is ``--batches``
batches of ``--batch`` events, either a random sample of the ratings (``random``: events of
many users, the harder case, rank up to 2 per user) or the latest ratings by time
(``latest``: MovieLens users rate in sessions, so few users). ``similarity auto`` picks dense
EASE (9.7k items); ``--solver`` its ease_solver (auto goes through the users' side here, 610
users: each refresh recomputes; items updates the stored inverse). Times are whole refreshes (interactions, the inverse's update, the list
selection and the writes), in this process, on a database file. After the stream, a full
refresh rebuilds the lists at the then-current lambda': the table compares the two (entries
in common, largest score difference), which is what the frozen lambda' costs.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

from common import print_table
from datasets import DATASETS


def lists(con) -> dict[tuple[int, int], float]:
    return {(a, b): s for a, b, s in con.execute(
        "select item_key, neighbor_key, score from item_neighbors").fetchall()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--shape", choices=["random", "latest"], default="random")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--solver", choices=["auto", "items", "users"], default="auto",
                        help="ease_solver: the items' inverse (updated) or the users' side "
                             "(recomputed); auto picks by cost (users on ml-latest-small)")
    args = parser.parse_args()
    data = DATASETS["ml"]
    data.require()
    from rtsql import ingest, refresh, settings

    events = data.events()
    size = args.batches * args.batch
    if args.shape == "latest":
        events.sort(key=lambda e: (e[1], e[2]))
        base, stream = events[:-size], events[-size:]
    else:
        picked = set(random.Random(7).sample(range(len(events)), size))
        base = [e for n, e in enumerate(events) if n not in picked]
        stream = [e for n, e in enumerate(events) if n in picked]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        con = data.build_database(tmp / "ml.duckdb", base)
        settings.set_value(con, "threads", str(args.threads))
        settings.set_value(con, "ease_solver", args.solver)
        start = time.perf_counter()
        first = refresh.refresh(con)
        full_seconds = time.perf_counter() - start
        rows = [["full (before the stream)", len(base), "", first.mode, f"{full_seconds:.2f}", "1.00"]]
        for n in range(args.batches):
            batch = stream[n * args.batch:(n + 1) * args.batch]
            path = tmp / f"batch{n}.csv"
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["user_id", "item_id", "event_type", "ts", "value"])
                w.writerows([u, i, data.event_type, ts, v] for u, ts, i, v in batch)
            ingest.ingest(con, [path])
            start = time.perf_counter()
            result = refresh.refresh(con)
            seconds = time.perf_counter() - start
            if result.notes:
                print("\n".join(result.notes), file=sys.stderr)
            rows.append([f"batch {n + 1}", len(batch), result.changed_users, result.mode,
                         f"{seconds:.2f}", f"{seconds / full_seconds:.3f}"])
        incremental = lists(con)
        start = time.perf_counter()
        refresh.refresh(con, full=True)
        rebuilt_seconds = time.perf_counter() - start
        rebuilt = lists(con)
        rows.append(["full (after the stream)", len(events), "", "full",
                     f"{rebuilt_seconds:.2f}", f"{rebuilt_seconds / full_seconds:.2f}"])
        con.close()
    print_table(["refresh", "events", "users changed", "mode", "seconds", "vs first full"], rows)
    common = incremental.keys() & rebuilt.keys()
    largest = max((abs(incremental[k] - rebuilt[k]) for k in common), default=0.0)
    scale = max((abs(s) for s in rebuilt.values()), default=1.0)
    print(f"\nlists after the stream vs a full rebuild at the current lambda': "
          f"{len(common) / max(len(rebuilt), 1):.4f} of the entries in common, largest score "
          f"difference {largest:.2e} ({largest / scale:.2e} of the largest |score|)")


if __name__ == "__main__":
    main()
