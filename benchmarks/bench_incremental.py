"""The 1,000-event incremental refresh, in-process, on copies of a refreshed database:
--rounds copies, each taking --warmup batches and then --batches timed ones (bench_scale's
batches: existing and new users, existing items), with the time per statement (the
batches' ingests and refreshes).

    python benchmarks/bench_incremental.py --db 10M.duckdb [--rounds 3] [--batches 5]

Prints each round's median and the statements that took the most time per batch. For a
same-run A/B, run it from two checkouts one after the other, each importing its own rtsql
(the machine is shared: compare figures of one session only).
"""

from __future__ import annotations

import argparse
import collections
import statistics

from common import TimedConnection, incremental_batches, print_table, scratch_copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a refreshed database (copied)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--statements", type=int, default=8, help="slowest statements shown")
    args = parser.parse_args()

    import rtsql

    rows, statements = [], collections.Counter()
    for round_ in range(args.rounds):
        with scratch_copy(args.db, "incremental.duckdb") as db:
            con = rtsql.connect(db)
            incremental_batches(con, db.parent, args.warmup, seed=100 + round_)
            times: dict[str, list[float]] = {}
            seconds = incremental_batches(TimedConnection(con, times), db.parent, args.batches,
                                          seed=200 + round_)
            con.close()
        statements.update({text: sum(values) for text, values in times.items()})
        rows.append((round_ + 1, " ".join(f"{s:.3f}" for s in seconds),
                     f"{statistics.median(seconds):.3f}"))
    print_table(["round", "refresh s per batch", "median s"], rows)
    per_batch = args.rounds * args.batches
    print_table(["statement", "ms per batch"],
                [(text, f"{seconds / per_batch * 1000:.1f}")
                 for text, seconds in statements.most_common(args.statements)])


if __name__ == "__main__":
    main()
