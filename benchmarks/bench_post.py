"""The writer's cost of one POST /events batch, in-process: ingest_bodies on a copy of a
database, with the dictionary joins and with the server's known-keys path.

    python benchmarks/bench_post.py --db 10M.duckdb [--bodies 30] [--events 100] [--statements]

Each body holds --events views by known users on known items (the steady-stream case). The
two paths alternate body by body on the same copy; p50 / p99 ms of each. The server's POST
latency under load adds queueing behind the group commit and the background refresh
(bench_serve.py measures that). --statements also prints the median time of each statement
the known-keys path runs (where a group commit's fixed cost goes).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from common import TimedConnection, print_table, scratch_copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a refreshed database (copied)")
    parser.add_argument("--bodies", type=int, default=30)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--statements", action="store_true")
    args = parser.parse_args()

    import rtsql
    from rtsql import ingest
    from rtsql.serving import ServingState

    with scratch_copy(args.db, "post.duckdb") as db:
        con = rtsql.connect(db)
        state = ServingState.load(con)
        users = [r[0] for r in con.execute("select user_id from users limit 500").fetchall()]
        items = [r[0] for r in con.execute("select item_id from items limit 500").fetchall()]
        last = state.seen["event_id"]
        seconds = {"dictionary joins": [], "known keys (serve's writer)": []}
        statements: dict[str, list[float]] = {}
        for n in range(2 * args.bodies):
            body = "\n".join(json.dumps({
                "user_id": users[(n * 7 + i) % len(users)],
                "item_id": items[(n * 13 + i) % len(items)],
                "event_type": "view", "ts": "2026-12-01T10:00:00"})
                for i in range(args.events)).encode()
            name = list(seconds)[n % 2]
            known = state.keys_of if n % 2 else None
            start = time.perf_counter()
            result = ingest.ingest_bodies(
                TimedConnection(con, statements) if known and args.statements else con,
                [(f"bench#{n}", body)], last_event_id=last, known_keys=known)
            seconds[name].append(time.perf_counter() - start)
            last += result[0].ingested
        con.close()
    rows = []
    for name, values in seconds.items():
        p50, p99 = np.percentile(np.array(values) * 1000, [50, 99])
        rows.append([name, len(values), f"{p50:.2f}", f"{p99:.2f}"])
    print_table(["path", "bodies", "p50 ms", "p99 ms"], rows)
    if statements:
        print_table(["statement (known keys)", "calls per body", "p50 ms"], [
            [text, len(times) // args.bodies, f"{np.median(times) * 1000:.2f}"]
            for text, times in sorted(statements.items(), key=lambda kv: -np.median(kv[1]))])


if __name__ == "__main__":
    main()
