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
import re
import statistics
import time

from common import incremental_batches, print_table, scratch_copy


class TimedConnection:
    """A connection whose execute() calls are timed by statement (their first 70 characters)."""

    def __init__(self, con):
        self._con = con
        self.seconds: collections.Counter = collections.Counter()

    def __getattr__(self, name):
        return getattr(self._con, name)

    def execute(self, query, *args, **kwargs):
        start = time.perf_counter()
        result = self._con.execute(query, *args, **kwargs)
        self.seconds[re.sub(r"\s+", " ", query.strip())[:70]] += time.perf_counter() - start
        return result


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
            timed = TimedConnection(con)
            seconds = incremental_batches(timed, db.parent, args.batches, seed=200 + round_)
            con.close()
        statements.update(timed.seconds)
        rows.append((round_ + 1, " ".join(f"{s:.3f}" for s in seconds),
                     f"{statistics.median(seconds):.3f}"))
    print_table(["round", "refresh s per batch", "median s"], rows)
    per_batch = args.rounds * args.batches
    print_table(["statement", "ms per batch"],
                [(text, f"{seconds / per_batch * 1000:.1f}")
                 for text, seconds in statements.most_common(args.statements)])


if __name__ == "__main__":
    main()
