"""The serving benchmark (`rtsql serve` issue): a real server process, a real open-loop HTTP
load generator in another process, the SQL macro through a Python client in the same run.

    python benchmarks/bench_serve.py [--events 10000000] [--seconds 30]
                                     [--rates 200,400,800,1200,1600,2000] [--post-rate 200]
                                     [--post-wait visible|durable] [--db PATH]

Steps, on the synthetic set (cached under benchmarks/data/), in one run:
1. a database: `rtsql ingest` + `rtsql refresh --full` processes (or --db, copied), and the
   full refresh again with materialize_recommendations on (user_recommendations for all);
2. the SQL macro recommend(user, 10) through DuckDB's Python client, and the in-memory scorer
   in-process, over the same users (the peer and the floor);
3. `rtsql serve` started; time to ready and resident memory;
4. GET /recommend at 200 requests/s, open loop, for --seconds: p50 / p99 / max at the client;
5. rising rates (--rates), 10 s each: the highest with p99 <= 50 ms and no errors;
6. POST /events in batches of 100 at --post-rate batches/s while GETs run at 200/s: events/s
   committed, GET and POST latencies, and freshness: after every 10th POST is answered, the
   time until a GET shows its probe event (a new user's purchase), and the time until a
   refresh's lists include it (/health's watermark reaches the event id, polled every 100 ms);
   with --post-wait durable the POSTs are answered once journaled, and a probe's freshness
   counts from that answer;
7. SIGTERM: the exit code.
Latencies are measured from each request's scheduled send time. The machine is shared: same-run
ratios are what count.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from common import copy_database, dataset, print_table, run_process

HERE = Path(__file__).resolve().parent


def cli(db: str) -> list[str]:
    return [sys.executable, "-m", "rtsql.cli", "--db", db]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(ms: list[float]) -> str:
    if not ms:
        return "-"
    p50, p99 = np.percentile(ms, [50, 99])
    return f"{p50:.2f} / {p99:.2f} / {max(ms):.1f}"


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a process, MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def start_server(db: str, port: int, log_path: Path) -> subprocess.Popen:
    """`rtsql serve` on ``port``, once /health answers; its log goes to ``log_path`` (a pipe
    nobody reads fills up, 64 KB, and then stalls the server on its next status line)."""
    log = open(log_path, "w")
    server = subprocess.Popen(cli(db) + ["serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=log, text=True)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
            return server
        except OSError:
            if server.poll() is not None:
                sys.exit(f"server failed: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)


def stop_if_running(server: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after a minute: no server outlives the benchmark."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def load(port: int, spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "load.json"
        out = subprocess.run([sys.executable, str(HERE / "loadgen.py"), str(port), str(result)],
                             input=json.dumps(spec), capture_output=True, text=True,
                             timeout=spec["seconds"] * 10 + 120)
        if out.returncode != 0:
            sys.exit(f"load generator failed: {out.stderr[-2000:]}")
        return json.loads(result.read_text())


def macro_and_scorer(db: str, users: list[str]) -> tuple[list[float], list[float], float]:
    """Seconds per recommend(user, 10): the SQL macro, then the in-memory scorer; and the
    scorer's load time."""
    import rtsql
    from rtsql import recommend, scoring
    from rtsql.serving import ServingState

    con = rtsql.connect(db)
    macro = []
    for user in users:
        start = time.perf_counter()
        recommend.recommend(con, user, 10)
        macro.append(time.perf_counter() - start)
    start = time.perf_counter()
    state = ServingState.load(con)
    loaded = time.perf_counter() - start
    scoring.warm_up()  # as serve does before its first request
    scorer = []
    for user in users:
        start = time.perf_counter()
        state.recommend(user, 10)
        scorer.append(time.perf_counter() - start)
    con.close()
    return macro, scorer, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rates", default="200,400,800,1200,1600,2000")
    parser.add_argument("--post-rate", type=float, default=250,
                        help="POST batches/s (100 events each); above the 200/s target, so "
                             "that keeping up shows headroom")
    parser.add_argument("--post-wait", choices=("visible", "durable"), default="visible",
                        help="POST /events?wait=: answered once committed (visible) or once "
                             "journaled (durable)")
    parser.add_argument("--post-only", action="store_true",
                        help="only step 6 (and the server's start): trials of serve's settings")
    parser.add_argument("--refresh-pairs", type=int, default=3)
    parser.add_argument("--macro-calls", type=int, default=300)
    parser.add_argument("--db", help="use a copy of this refreshed database")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rtsql-serve-"))
    db = str(work / "serve.duckdb")
    rows = []
    if args.db:
        copy_database(args.db, db)
        refresh_seconds = float("nan")
    else:
        data = dataset(args.events, "parquet")
        run_process(cli(db) + ["ingest", str(data)])
        # full refreshes without and with user_recommendations, interleaved (the machine's
        # speed drifts): the median of each and of the pairs' extra time
        plain, with_table = [], []
        for _ in range(args.refresh_pairs):
            run_process(cli(db) + ["settings", "materialize_recommendations", "--reset"])
            plain.append(run_process(cli(db) + ["refresh", "--full"])[0])
            run_process(cli(db) + ["settings", "materialize_recommendations", "true"])
            with_table.append(run_process(cli(db) + ["refresh", "--full"])[0])
        run_process(cli(db) + ["settings", "materialize_recommendations", "--reset"])
        refresh_seconds = float(np.median(plain))
        extra = [w - p for p, w in zip(plain, with_table)]
        rows.append((f"full refresh (process), median of {len(plain)}",
                     f"{refresh_seconds:.1f} s", " ".join(f"{x:.1f}" for x in plain)))
        rows.append(("  the same writing user_recommendations (top 10 of every user)",
                     f"{np.median(with_table):.1f} s",
                     f"+{np.median(extra):.1f} s = {np.median(extra) / refresh_seconds:.0%} of "
                     f"the refresh (pairs: {' '.join(f'{x / p:.0%}' for x, p in zip(extra, plain))})"))

    import duckdb

    con = duckdb.connect(db, read_only=True)
    users = [r[0] for r in con.execute("select user_id from users order by hash(user_id) "
                                       "limit 5000").fetchall()]
    items = [r[0] for r in con.execute("select item_id from items order by hash(item_id) "
                                       "limit 5000").fetchall()]
    # a probe purchase shows as "because you bought" only for an item with an item-cf list
    probe_items = [r[0] for r in con.execute(
        "select i.item_id from items i join item_neighbor_lists l using (item_key) "
        "order by hash(i.item_id) limit 1000").fetchall()]
    events = con.execute("select count(*) from events").fetchall()[0][0]
    con.close()

    if not args.post_only:
        macro, scorer, loaded = macro_and_scorer(db, users[:args.macro_calls])
        ms = lambda xs: [x * 1000 for x in xs]  # noqa: E731
        rows.append(("SQL macro recommend(user, 10), Python client, in-process",
                     percentiles(ms(macro)), f"{len(macro)} calls"))
        rows.append(("in-memory scorer, in-process (no HTTP)", percentiles(ms(scorer)),
                     f"load {loaded:.2f} s"))

    port = free_port()
    start = time.perf_counter()
    log_path = work / "serve.log"
    server = start_server(db, port, log_path)
    atexit.register(stop_if_running, server)  # a failed load exits through sys.exit
    ready = time.perf_counter() - start
    rss, peak = memory_mib(server.pid)
    rows.append(("serve: start to ready; resident / peak memory", f"{ready:.1f} s",
                 f"{rss:.0f} / {peak:.0f} MiB"))

    base = {"users": users, "items": items, "probe_items": probe_items, "post_rate": 0,
            "post_size": 100}
    if not args.post_only:
        gets(port, base, args, rows)
    post_and_report(port, base, args, rows, server, work, events, log_path)


def gets(port: int, base: dict, args, rows: list) -> None:
    """Steps 4 and 5: GETs alone, at 200/s and at rising rates."""
    got = load(port, {**base, "seconds": args.seconds, "get_rate": 200})
    rows.append((f"GET /recommend at 200/s open loop, {args.seconds:.0f} s (ms p50/p99/max)",
                 percentiles(got["get_ms"]), f"{got['errors']} errors"))
    rows.append(("  of which the load generator sent late (ms p50/p99/max)",
                 percentiles(got["late_ms"]), "its own scheduling, not the server"))

    best = None
    for rate in [float(r) for r in args.rates.split(",")]:
        got = load(port, {**base, "seconds": 10, "get_rate": rate})
        p99 = np.percentile(got["get_ms"], 99) if got["get_ms"] else float("inf")
        ok = got["errors"] == 0 and p99 <= 50
        rows.append((f"  GET at {rate:.0f}/s, 10 s", percentiles(got["get_ms"]),
                     f"{got['errors']} errors{'' if ok else ', p99 over 50 ms'}"))
        if not ok:
            break
        best = rate
    rows.append(("highest GET rate with p99 <= 50 ms", f"{best or 0:.0f}/s", ""))


def post_and_report(port: int, base: dict, args, rows: list, server, work: Path, events: int,
                    log_path: Path) -> None:
    """Step 6 and the end: POSTs with GETs, the refreshes, SIGTERM, the table."""
    got = load(port, {**base, "seconds": args.seconds, "get_rate": 200,
                      "post_rate": args.post_rate, "post_wait": args.post_wait})
    rows.append((f"POST /events?wait={args.post_wait}, 100 per batch at {args.post_rate:.0f}/s, "
                 "with GETs at 200/s",
                 f"{got['events'] / got['seconds']:.0f} events/s",
                 f"{got['errors']} errors"))
    rows.append(("  GET latency meanwhile (ms p50/p99/max)", percentiles(got["get_ms"]), ""))
    rows.append(("  POST latency (ms p50/p99/max)", percentiles(got["post_ms"]), ""))
    rows.append(("  POST answered -> visible to GET, every 10th (ms p50/p99/max)",
                 percentiles(got["fresh_ms"]), ""))
    rows.append(("  POST answered -> in the item lists, every 10th (ms p50/p99/max)",
                 percentiles(got["model_ms"]),
                 f"model freshness; {got['model_unfolded']} not folded in 60 s"))
    rss, peak = memory_mib(server.pid)
    rows.append(("serve: resident / peak memory at the end", f"{rss:.0f} / {peak:.0f} MiB", ""))

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
    def by_kind(name: str) -> dict[str, float]:
        return {line.split('"')[1]: float(line.split()[-1])
                for line in metrics.decode().splitlines() if line.startswith(name + "{")}

    kinds, last = by_kind("rtsql_refreshes"), by_kind("rtsql_last_refresh_seconds")
    rows.append(("background refreshes: full / incremental (count; last s)",
                 f"{kinds.get('full', 0):.0f} / {kinds.get('incremental', 0):.0f}",
                 f"last {last.get('full', 0):.2f} s / {last.get('incremental', 0):.2f} s"))
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=300)
    rows.append(("SIGTERM: exit code", str(server.returncode), ""))
    notes = [line for line in log_path.read_text().splitlines() if "note:" in line]
    print("\n".join(["serve's refresh notes:"] + notes[-10:]) if notes else "", file=sys.stderr)
    print(f"bench_serve: {events:,} events, {os.cpu_count()} cores")
    print_table(["measure", "value", "note"], rows)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
