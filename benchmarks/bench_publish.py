"""Snapshot publishes, in-process, on a copy of a refreshed database: a full publish (after a
refresh) and an events publish (after a batch of writes), each --repeat times.

    python benchmarks/bench_publish.py --db 10M.duckdb [--repeat 2]

Prints seconds per publish and the snapshot's size.
"""

from __future__ import annotations

import argparse
import time

from common import print_table, scratch_copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a refreshed database (copied)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import rtsql
    from rtsql import snapshot

    with scratch_copy(args.db, "publish.duckdb") as db:
        con = rtsql.connect(db)
        target = db.with_name("publish.snapshot.duckdb")
        publisher = snapshot.Publisher(target, db)
        rows = []
        for kind, publish in (("full", publisher.full), ("events", publisher.events)):
            for n in range(args.repeat):
                start = time.perf_counter()
                publish(con)
                rows.append([kind, n + 1, f"{time.perf_counter() - start:.2f}"])
        con.close()
        print(f"snapshot: {target.stat().st_size / 2**20:.0f} MiB")
    print_table(["publish", "run", "seconds"], rows)

if __name__ == "__main__":
    main()
