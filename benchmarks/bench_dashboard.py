"""The dashboard benchmark: how long each view of `rtsql serve`'s page takes to get its data,
on a large database, with impressions and an A/B test under way.

    python benchmarks/bench_dashboard.py --db PATH [--impressions 200000] [--repeat 20]

Steps, in one run:
1. the database is copied, two A/B variants are set with ab_auto_metric clicks;
2. `rtsql serve` starts on the copy; --impressions impressions (two variants, two strategies,
   over 14 days) are POSTed, and clicks on a tenth of them;
3. once the server has refreshed the new events, each view's calls as the page makes them
   (in parallel: the view waits for the slowest), the views in turn for --repeat rounds after
   an uncounted warm-up round; p50 / p99 / max of each view; GET /recommend alone is the same
   run's reference;
4. the bytes of every asset the page loads.
Target: every view answers in under 200 ms at 10M events; the assets under 300 KB in all.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from bench_serve import free_port, start_server
from common import copy_database, print_table

ASSETS = ("index.html", "app.js", "app.css")


def get(base: str, path: str) -> float:
    """Seconds for one GET (status 200 required)."""
    start = time.perf_counter()
    with urllib.request.urlopen(base + path, timeout=60) as answer:
        answer.read()
        assert answer.status == 200, (path, answer.status)
    return time.perf_counter() - start


def post(base: str, path: str, rows: list[dict]) -> dict:
    request = urllib.request.Request(base + path, data=json.dumps(rows).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=600) as answer:
        return json.loads(answer.read())


def feed(base: str, users: list[str], items: list[str], n: int, seed: int = 3) -> None:
    """n impressions over the last 14 days, clicks on about a tenth (more for 'b')."""
    rng = np.random.default_rng(seed)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    for start in range(0, n, 20_000):
        shown, clicks = [], []
        for i in range(start, min(n, start + 20_000)):
            user, item = users[rng.integers(len(users))], items[rng.integers(len(items))]
            variant = "a" if i % 2 else "b"
            ts = now - dt.timedelta(minutes=float(rng.uniform(60, 14 * 1440)))
            shown.append({"user_id": user, "item_id": item, "ts": ts.isoformat(),
                          "strategy": "hybrid" if i % 3 else "trending", "variant": variant})
            if rng.random() < (0.08 if variant == "a" else 0.12):
                clicks.append({"user_id": user, "item_id": item, "event_type": "click",
                               "ts": (ts + dt.timedelta(minutes=5)).isoformat()})
        post(base, "/impressions", shown)
        post(base, "/events", clicks)


def views(user: str, item: str) -> dict[str, list[str]]:
    """Each view's calls, as rtsql/ui/app.js makes them."""
    u, i = urllib.parse.quote(user), urllib.parse.quote(item)
    return {
        "overview": ["/ui/api/overview"],
        "feedback by strategy": ["/ui/api/feedback?by=strategy"],
        "feedback by variant": ["/ui/api/feedback?by=variant"],
        "user": [f"/ui/api/user/{u}", f"/recommend/{u}?k=10", f"/similar-users/{u}?k=10"],
        "item": [f"/ui/api/item/{i}", f"/similar-items/{i}?k=10&by=cf",
                 f"/similar-items/{i}?k=10&by=content"],
        "settings": ["/ui/api/settings"],
        "GET /recommend alone (reference)": [f"/recommend/{u}?k=10"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a refreshed database (copied)")
    parser.add_argument("--impressions", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    import rtsql
    from rtsql import feedback, settings

    work = Path(tempfile.mkdtemp(prefix="rtsql-dash-"))
    db = work / "dash.duckdb"
    copy_database(args.db, db)
    con = rtsql.connect(db)
    feedback.set_variants(con, {"a": 0.5, "b": 0.5}, {})
    settings.set_value(con, "ab_auto_metric", "clicks")
    events = con.execute("select count(*) from events").fetchone()[0]
    users = [r[0] for r in con.execute("select user_id from users using sample 2000 "
                                       "(reservoir, 1)").fetchall()]
    items = [r[0] for r in con.execute("select item_id from items using sample 2000 "
                                       "(reservoir, 1)").fetchall()]
    con.close()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(str(db), port, work / "serve.log")
    try:
        while True:  # the scorer loaded
            try:
                get(base, "/trending")
                break
            except OSError:
                time.sleep(0.2)
        started = time.perf_counter()
        feed(base, users, items, args.impressions)
        fed = time.perf_counter() - started
        print(f"{events:,} events; {args.impressions:,} impressions posted in {fed:.1f} s",
              file=sys.stderr)
        while True:  # measured on a quiet server: the refresh of the new events done
            health = json.loads(urllib.request.urlopen(base + "/health").read())
            if not health["pending_events"]:
                break
            time.sleep(0.5)
        print(f"refreshed {time.perf_counter() - started:.1f} s after the first post",
              file=sys.stderr)
        pool = concurrent.futures.ThreadPoolExecutor(4)
        names = list(views(users[0], items[0]))
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.repeat + 1):  # the views in turn; round 0 warms up, not counted
            for name in names:
                calls = views(users[r % len(users)], items[r % len(items)])[name]
                started = time.perf_counter()
                list(pool.map(lambda path: get(base, path), calls))
                if r:
                    seconds[name].append(time.perf_counter() - started)
        rows = []
        for name in names:
            ms = np.array(seconds[name]) * 1000
            p50, p99 = np.percentile(ms, [50, 99])
            rows.append([name, len(views(users[0], items[0])[name]), f"{p50:.1f}", f"{p99:.1f}",
                         f"{ms.max():.1f}",
                         "yes" if ms.max() < 200 or name.startswith("GET") else "NO"])
        print_table(["view", "calls", "p50 ms", "p99 ms", "max ms", "< 200 ms"], rows)
        sizes = {name: len(urllib.request.urlopen(f"{base}/ui/{name}").read())
                 for name in ASSETS}
        print_table(["asset", "bytes"], [[n, f"{b:,}"] for n, b in sizes.items()]
                    + [["all", f"{sum(sizes.values()):,} (budget 307,200)"]])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
