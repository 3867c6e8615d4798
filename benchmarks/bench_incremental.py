"""The 1,000-event incremental refresh, in-process, on copies of a refreshed database:
--rounds copies, each taking --warmup batches and then --batches timed ones (bench_scale's
batches: existing and new users, existing items), with the time per statement (the
batches' ingests and refreshes).

    python benchmarks/bench_incremental.py --db 10M.duckdb [--rounds 3] [--batches 5] [--state]

Prints each round's median and the statements that took the most time per batch. For a
same-run A/B, run it from two checkouts one after the other, each importing its own rtsql
(the machine is shared: compare figures of one session only). With --state, also what serve
does after each refresh: the serving state advanced by what the refresh rewrote
(State.advanced_model, with_model, catch_up) against a whole ServingState.load, both timed.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

from common import TimedConnection, incremental_batches, print_table, scratch_copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a refreshed database (copied)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--statements", type=int, default=8, help="slowest statements shown")
    parser.add_argument("--state", action="store_true",
                        help="also time serve's state after each refresh: advanced vs loaded")
    args = parser.parse_args()

    import rtsql

    rows, statements, swaps = [], collections.Counter(), []
    for round_ in range(args.rounds):
        with scratch_copy(args.db, "incremental.duckdb") as db:
            con = rtsql.connect(db)
            incremental_batches(con, db.parent, args.warmup, seed=100 + round_)
            times: dict[str, list[float]] = {}
            swap = StateSwaps(con) if args.state else None
            seconds = incremental_batches(TimedConnection(con, times), db.parent, args.batches,
                                          seed=200 + round_, after_refresh=swap)
            swaps += swap.rows if swap else []
            con.close()
        statements.update({text: sum(values) for text, values in times.items()})
        rows.append((round_ + 1, " ".join(f"{s:.3f}" for s in seconds),
                     f"{statistics.median(seconds):.3f}"))
    print_table(["round", "refresh s per batch", "median s"], rows)
    per_batch = args.rounds * args.batches
    print_table(["statement", "ms per batch"],
                [(text, f"{seconds / per_batch * 1000:.1f}")
                 for text, seconds in statements.most_common(args.statements)])
    if swaps:
        print_table(["item list rows", "user list rows", "users", "state advanced ms",
                     "loaded whole ms"], swaps)


class StateSwaps:
    """After each refresh, serve's step: the state it holds advanced by what the refresh
    rewrote, timed, then a whole load, timed (the next batch starts from the advanced one)."""

    def __init__(self, con):
        from rtsql.serving import ServingState

        self.con, self.load, self.rows = con, ServingState.load, []
        self.state = self.load(con)

    def __call__(self, result) -> None:
        self.state.catch_up(self.con)  # the batch's events, as serve's writer would have
        w = result.rewritten
        if w is None:  # a full refresh: serve loads it whole too
            self.state = self.load(self.con)
            return
        start = time.perf_counter()
        model = self.state.advanced_model(self.con, w.since, w.item_lists, w.user_lists,
                                          w.users, w.content)
        advanced = self.state.with_model(model, w.users)
        advanced.catch_up(self.con)
        middle = time.perf_counter()
        self.load(self.con)
        end = time.perf_counter()
        self.state = advanced
        self.rows.append(("all" if w.item_lists is None else len(w.item_lists),
                          len(w.user_lists), len(w.users), f"{(middle - start) * 1000:.0f}",
                          f"{(end - middle) * 1000:.0f}"))


if __name__ == "__main__":
    main()
