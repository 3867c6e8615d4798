"""What the shop features cost at serving time (Shop issue): GET /recommend with 10% of the
items hidden and repeats suppressed, against the same database without, in one run.

    python benchmarks/bench_shop.py --db 10M.duckdb [--seconds 30] [--pairs 2] [--hidden 0.1]

Two copies of a refreshed database (--db, e.g. the one bench_serve or bench_scale built):
- plain: as it is;
- shop: a random --hidden share of the items hidden (`rtsql item hide`'s table), and
  suppress_after_impressions 3 with, for each of the sampled users, three impressions in the
  last hour of each of their current top 5 items (so 5 items of each list are left out) and
  one of 20 random items (counted, not enough to leave them out).
For each copy, alternating (the machine's speed drifts) --pairs times: the SQL macro and the
in-memory scorer in-process over --macro-calls users, then `rtsql serve` with GET
/recommend at 200/s open loop for --seconds (the load generator of bench_serve).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
from pathlib import Path

import numpy as np

from bench_serve import free_port, load, macro_and_scorer, percentiles, start_server
from common import copy_database, print_table


def make_shop(db: str, users: list[str], hidden: float, seed: int = 7) -> dict:
    """Hide a share of the items and record impressions that suppress 5 items per user."""
    import rtsql
    from rtsql import availability, feedback, recommend, settings

    con = rtsql.connect(db)
    rng = random.Random(seed)
    items = [r[0] for r in con.execute("select item_id from items order by item_key").fetchall()]
    hide = rng.sample(items, int(len(items) * hidden))
    availability.set_available(con, hide, False)
    settings.set_value(con, "suppress_after_impressions", "3")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = []
    for user in users:
        top = [r[1] for r in recommend.recommend(con, user, 5).rows]
        for item in top:
            rows += [{"user_id": user, "item_id": item, "strategy": "hybrid",
                      "ts": (now - dt.timedelta(minutes=m)).isoformat()} for m in (10, 20, 30)]
        rows += [{"user_id": user, "item_id": item, "strategy": "hybrid",
                  "ts": (now - dt.timedelta(minutes=5)).isoformat()}
                 for item in rng.sample(items, 20)]
    loaded = feedback.load_impression_rows(con, rows, "bench_shop")
    suppressed = con.execute("select count(*) from rtsql_suppressed(NULL, NULL)").fetchall()[0][0]
    con.close()
    return {"hidden": len(hide), "impressions": loaded["loaded"], "suppressed": suppressed}


def serve_gets(db: str, users: list[str], items: list[str], seconds: float) -> dict:
    port = free_port()
    server = start_server(db, port, Path(db).with_suffix(".log"))
    try:
        return load(port, {"users": users, "items": items, "probe_items": items,
                           "post_rate": 0, "post_size": 100, "seconds": seconds,
                           "get_rate": 200})
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a refreshed database (copied)")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--hidden", type=float, default=0.1)
    parser.add_argument("--users", type=int, default=2000, help="users the GETs ask for")
    parser.add_argument("--macro-calls", type=int, default=200)
    args = parser.parse_args()

    import duckdb

    work = Path(tempfile.mkdtemp(prefix="rtsql-shop-"))
    copies = {"plain": str(work / "plain.duckdb"), "shop": str(work / "shop.duckdb")}
    for path in copies.values():
        copy_database(args.db, path)
    con = duckdb.connect(args.db, read_only=True)
    users = [r[0] for r in con.execute("select user_id from users order by hash(user_id) "
                                       "limit ?", [args.users]).fetchall()]
    items = [r[0] for r in con.execute("select item_id from items order by hash(item_id) "
                                       "limit 1000").fetchall()]
    events = con.execute("select count(*) from events").fetchall()[0][0]
    con.close()
    made = make_shop(copies["shop"], users, args.hidden)

    got = {name: {"macro": [], "scorer": [], "get": [], "errors": 0} for name in copies}
    for _ in range(args.pairs):
        for name, db in copies.items():
            macro, scorer, _ = macro_and_scorer(db, users[:args.macro_calls])
            got[name]["macro"] += [x * 1000 for x in macro]
            got[name]["scorer"] += [x * 1000 for x in scorer]
            result = serve_gets(db, users, items, args.seconds)
            got[name]["get"] += result["get_ms"]
            got[name]["errors"] += result["errors"]
    rows = []
    for label, key in (("GET /recommend at 200/s, ms p50 / p99 / max", "get"),
                       ("in-memory scorer, in-process, ms p50 / p99 / max", "scorer"),
                       ("SQL macro recommend(user, 10), ms p50 / p99 / max", "macro")):
        p50 = [float(np.percentile(got[n][key], 50)) for n in copies]
        rows.append((label, percentiles(got["plain"][key]), percentiles(got["shop"][key]),
                     f"{p50[1] / p50[0]:.2f}"))
    print(f"bench_shop: {events:,} events; shop copy: {made['hidden']:,} items hidden, "
          f"{made['impressions']:,} impressions, {made['suppressed']:,} (user, item) pairs "
          f"suppressed; {args.pairs} alternating pairs; GET errors plain "
          f"{got['plain']['errors']}, shop {got['shop']['errors']}")
    print_table(["measure", "plain", "shop (hidden + no repeats)", "p50 shop / plain"], rows)


if __name__ == "__main__":
    main()
