"""Freshness and sustained ingest through `rtsql tail` on a database holding 1M events.

    python benchmarks/bench_tail.py [--events 1000000] [--rate 20000] [--seconds 20]

A writer appends events to a followed file at a steady rate (in 50 ms ticks); every 250 ms one of
them is a probe: the first event of a new user. A reader process-side loop opens the published
snapshot read-only and asks `recommend(probe, 1)`; a probe is fresh once its reason says
"because you ..." (its history reached the snapshot). Freshness = that moment minus the append.
Sustained throughput = events that reached the database / seconds of writing. Publish time is
measured on the final database in-process (median of 5).
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import numpy as np

from common import dataset, print_table

HEADER = "user_id,item_id,event_type,ts,value\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db, snap, folder = tmp / "t.duckdb", tmp / "t.snapshot.duckdb", tmp / "in"
        folder.mkdir()
        rtsql = [sys.executable, "-m", "rtsql.cli", "--db", str(db)]
        subprocess.run(rtsql + ["ingest", str(dataset(args.events, "parquet"))], check=True,
                       capture_output=True)
        subprocess.run(rtsql + ["refresh", "--full"], check=True, capture_output=True)
        log = open(tmp / "tail.log", "w")
        tail = subprocess.Popen(rtsql + ["tail", str(folder), "--publish", str(snap)],
                                stderr=log, stdout=log)
        while not snap.exists():
            time.sleep(0.05)
        probes: dict[str, float] = {}
        fresh: dict[str, float] = {}
        stop = threading.Event()
        written = [0]

        def writer():
            rng = random.Random(1)
            n_users, n_items = args.events // 100, args.events // 200
            live = folder / "live.csv"
            with open(live, "w") as f:
                f.write(HEADER)
            per_tick = max(1, int(args.rate * 0.05))
            next_probe, tick = time.monotonic(), time.monotonic()
            while not stop.is_set():
                lines = [f"u{rng.randrange(1, n_users)},i{rng.randrange(1, n_items)},view,"
                         f"2026-11-01T00:00:00,\n" for _ in range(per_tick)]
                probe = None
                if time.monotonic() >= next_probe:
                    probe = f"probe-{len(probes)}"
                    lines.append(f"{probe},i1,purchase,2026-11-01T00:00:00,\n")
                    next_probe += 0.25
                with open(live, "a") as f:
                    f.write("".join(lines))
                if probe:
                    probes[probe] = time.monotonic()
                written[0] += len(lines)
                tick += 0.05
                time.sleep(max(0.0, tick - time.monotonic()))

        def reader():
            while not stop.is_set() or len(fresh) < len(probes):
                waiting = [p for p in list(probes) if p not in fresh]
                if not waiting:
                    time.sleep(0.01)
                    continue
                try:
                    con = duckdb.connect(str(snap), read_only=True)
                    for probe in waiting:
                        rows = con.execute("select reason from recommend(?, 1)", [probe]).fetchall()
                        if rows and "because you" in rows[0][0]:
                            fresh[probe] = time.monotonic()
                    con.close()
                except duckdb.Error:
                    time.sleep(0.01)
                if stop.is_set() and time.monotonic() - stop_time[0] > 15:
                    break

        stop_time = [0.0]
        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        stop_time[0] = time.monotonic()
        wrote_for = stop_time[0] - start
        for t in threads:
            t.join()
        tail.send_signal(signal.SIGTERM)
        tail.wait()
        log.close()
        con = duckdb.connect(str(db))
        arrived = con.execute("select count(*) from events").fetchall()[0][0] - args.events
        con.close()
        import rtsql as lib
        from rtsql import snapshot

        lcon = lib.connect(db)
        publish = [snapshot.publish(lcon, tmp / "p.duckdb") for _ in range(5)]
        lcon.close()
        ages = np.array([fresh[p] - probes[p] for p in fresh])
        print_table(
            ["db events", "target ev/s", "written", "arrived", "sustained ev/s", "probes",
             "fresh", "freshness p50 ms", "p99 ms", "max ms", "publish p50 ms"],
            [(args.events, args.rate, written[0], arrived, int(arrived / wrote_for), len(probes),
              len(fresh), round(float(np.median(ages)) * 1000) if len(ages) else None,
              round(float(np.percentile(ages, 99)) * 1000) if len(ages) else None,
              round(float(ages.max()) * 1000) if len(ages) else None,
              round(float(np.median(publish)) * 1000))])
        print((tmp / "tail.log").read_text().strip().splitlines()[-3:], file=sys.stderr)


if __name__ == "__main__":
    main()
