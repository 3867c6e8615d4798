"""Local engine vs the Spark job (Spark issue): whole `rtsql refresh --full` processes.

    python benchmarks/bench_spark.py [--sizes 1000000,10000000] [--master local[2]]
    python benchmarks/bench_spark.py --sizes 1000000 --standalone 2   # a 2-worker cluster

For each size, on the synthetic set (cached under benchmarks/data/), one database is ingested
once; then, on copies of it:
- `rtsql refresh --full` (the local engine), wall time and peak RSS;
- `rtsql refresh --full --engine spark --master local[2]`, wall time and peak RSS of the whole
  process tree (the Python driver and the JVM it starts), and the shuffle records and bytes the
  job wrote (Spark's event log), next to the co-occurrence's multiply-adds (computed from the
  database: the sum over users of their capped history squared, and over items of their capped
  users squared), which the executors compute and the old self-join job shuffled one row each;
- a check that both built the same lists (item_neighbors and user_neighbors, row for row).
The machine is shared and has 2 cores: what counts is the ratio in one run, and the shuffle
sizes, which do not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from common import dataset, print_table

RTSQL = [sys.executable, "-m", "rtsql.cli"]


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total / 2**20


def run_tree(args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS of the process tree in MiB, stdout), sampled every 0.2 s."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = 0.0, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_mib(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{err[-3000:]}")
    return wall, peak, out


def shuffle_by_step(log_dir: Path) -> dict[str, tuple[int, int]]:
    """(shuffle bytes written, records written) per job description in Spark's event log."""
    step_of_stage: dict[int, str] = {}
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for log in (p for p in log_dir.rglob("*") if p.is_file()):  # v2 logs are folders
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            kind = event.get("Event")
            if kind == "SparkListenerJobStart":
                step = (event.get("Properties") or {}).get("spark.job.description", "other")
                for stage in event.get("Stage IDs", []):
                    step_of_stage[stage] = step
            elif kind == "SparkListenerTaskEnd":
                metrics = (event.get("Task Metrics") or {}).get("Shuffle Write Metrics") or {}
                step = step_of_stage.get(event["Stage ID"], "other")
                out[step][0] += metrics.get("Shuffle Bytes Written", 0)
                out[step][1] += metrics.get("Shuffle Records Written", 0)
    return {k: (v[0], v[1]) for k, v in out.items()}


def pair_products(db: Path) -> tuple[int, int]:
    """The multiply-adds of the co-occurrence (what the old self-join job shuffled, one row
    each): item-item, the sum over users of (capped history)^2 - history; user-user, the sum
    over items of (their capped users)^2 - users, with both caps as the refresh applies them."""
    import duckdb
    import numpy as np

    from rtsql import refresh, settings

    con = duckdb.connect(str(db), read_only=True)
    try:
        stored = dict(con.execute("select name, value from rtsql_settings").fetchall())

        def value(name: str):
            setting = settings.SETTINGS[name]
            return setting.type(stored[name]) if name in stored else setting.default

        cols = refresh._capped_entries(con, {name: value(name)
                                             for name in ("max_history", "pair_weight")})
        per_user = np.bincount(cols["user_key"].astype(np.int64)).astype(np.int64)
        keep = refresh.most_recent_per_item(cols, value("max_item_users"))
        per_item = np.bincount(cols["item_key"][keep].astype(np.int64)).astype(np.int64)
        return int((per_user * per_user - per_user).sum()), int((per_item * per_item - per_item).sum())
    finally:
        con.close()


def lists(db: Path) -> list:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return [con.execute(f"select * from {t} order by all").fetchall()
                for t in ("item_neighbors", "user_neighbors")]
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--standalone", type=int, metavar="WORKERS",
                        help="start a standalone cluster of this many one-core workers on "
                             "127.0.0.1 and use it as the master")
    args = parser.parse_args()
    if args.standalone:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from standalone import standalone_cluster

        logs = Path(tempfile.mkdtemp(prefix="rtsql-standalone-"))
        with standalone_cluster(logs, workers=args.standalone) as master:
            args.master = master
            run(args)
        shutil.rmtree(logs, ignore_errors=True)
    else:
        run(args)


def run(args) -> None:
    rows, shuffles = [], []
    work = Path(tempfile.mkdtemp(prefix="rtsql-bench-spark-"))
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            base = work / f"base_{size}.duckdb"
            subprocess.run(RTSQL + ["--db", str(base), "ingest", str(dataset(size, "parquet"))],
                           check=True, capture_output=True)
            # Spark builds cosine lists; the local default (auto) would build ease where the
            # catalog is small enough, which is not the same work
            subprocess.run(RTSQL + ["--db", str(base), "settings", "similarity", "cosine"],
                           check=True, capture_output=True)
            local, spark = work / "local.duckdb", work / "spark.duckdb"
            for copy in (local, spark):
                shutil.copyfile(base, copy)
            wall_l, rss_l, _ = run_tree(RTSQL + ["--db", str(local), "refresh", "--full"])
            log_dir = work / f"eventlog_{size}"
            log_dir.mkdir()
            wall_s, rss_s, _ = run_tree(RTSQL + [
                "--db", str(spark), "refresh", "--full", "--engine", "spark",
                "--master", args.master, "--spark-conf", "spark.eventLog.enabled=true",
                "--spark-conf", "spark.eventLog.compress=false",
                "--spark-conf", f"spark.eventLog.dir={log_dir}"])
            same = lists(local) == lists(spark)
            rows.append((f"{size:,}", f"{wall_l:.1f}", f"{rss_l:.0f}", f"{wall_s:.1f}",
                         f"{rss_s:.0f}", f"{wall_s / wall_l:.1f}x", "yes" if same else "NO"))
            steps = shuffle_by_step(log_dir)
            item_pairs, user_pairs = pair_products(local)
            shuffles.append((f"{size:,}", f"{item_pairs:,}", f"{user_pairs:,}",
                             f"{sum(r for _, r in steps.values()):,}",
                             f"{sum(b for b, _ in steps.values()) / 2**20:.0f}"))
            for f in (base, local, spark):
                f.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    master = "standalone" if args.master.startswith("spark://") else args.master
    print_table(["events", "local s", "local RSS MiB", f"spark {master} s",
                 "spark RSS MiB (driver+JVM)", "spark/local", "same lists"], rows)
    print()
    print_table(["events", "item-item multiply-adds", "user-user multiply-adds",
                 "job shuffle records", "job shuffle MiB"], shuffles)


if __name__ == "__main__":
    main()
