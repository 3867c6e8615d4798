"""Real-time accuracy, ../shared/EVAL.md protocol 2 (prequential replay) on MovieLens.

    python benchmarks/bench_prequential.py [--events 3000] [--recency 0,1] [--refresh-every 100]

All events sorted by (timestamp, user, item); the first 80% are ingested in bulk and refreshed.
Then the stream is replayed one event at a time: before an event (u, i) of a known user on an
item new to them, u's top 10 is asked through the `recommend` SQL macro (a hit when i is in it);
then the event is ingested the way the product does it (a file through `rtsql.ingest`; the
macro sees it at once) and an incremental refresh runs every --refresh-every events. Each
--recency value (recency_half_life_days) is a separate replay; --events bounds the replayed part
(the first N events after the warm-up) so a run takes minutes.

Data: MovieLens ml-latest-small (GroupLens, University of Minnesota; F. M. Harper and J. A.
Konstan, ACM TiiS 5(4), 2015), non-commercial research use, read from ../shared/datasets/.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-latest-small"
HEADER = ["user_id", "item_id", "event_type", "ts", "value"]


def load():
    with open(DATA / "ratings.csv", newline="") as f:
        rows = [(int(r["timestamp"]), r["userId"], r["movieId"], r["rating"])
                for r in csv.DictReader(f)]
    rows.sort(key=lambda r: (r[0], int(r[1]), int(r[2])))
    return rows


def replay(rows, n_stream: int, recency: float, refresh_every: int, workdir: Path):
    import rtsql
    from rtsql import ingest, recommend, refresh, settings

    cut = int(len(rows) * 0.8)
    warm, stream = rows[:cut], rows[cut:cut + n_stream]
    bulk = workdir / "warm.csv"
    with open(bulk, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows([(u, i, "rating", ts, v) for ts, u, i, v in warm])
    con = rtsql.connect(workdir / f"pq_{recency}.duckdb")
    ingest.ingest(con, [bulk])
    settings.set_value(con, "recency_half_life_days", str(recency))
    refresh.refresh(con, full=True)
    history: dict[str, set] = {}
    for ts, u, i, v in warm:
        history.setdefault(u, set()).add(i)
    hits = evaluated = 0
    latencies = []
    for n, (ts, u, i, v) in enumerate(stream):
        start = time.perf_counter()
        if u in history and i not in history[u]:
            recs = [r[1] for r in recommend.recommend(con, u, 10).rows]
            hits += i in recs
            evaluated += 1
        path = workdir / f"e{n}.csv"
        path.write_text(",".join(HEADER) + f"\n{u},{i},rating,{ts},{v}\n")
        ingest.ingest(con, [path])
        if (n + 1) % refresh_every == 0:
            refresh.refresh(con)
        latencies.append(time.perf_counter() - start)
        history.setdefault(u, set()).add(i)
    con.close()
    return hits / max(evaluated, 1), evaluated, np.median(latencies), np.percentile(latencies, 99)


def main():
    if not (DATA / "ratings.csv").exists():
        sys.exit(f"MovieLens not found at {DATA}: this benchmark needs ../shared/datasets/")
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--recency", default="0,1")
    parser.add_argument("--refresh-every", type=int, default=100)
    args = parser.parse_args()
    from rtsql.output import render

    rows = load()
    table = []
    for recency in [float(x) for x in args.recency.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            hr, n, p50, p99 = replay(rows, args.events, recency, args.refresh_every, Path(tmp))
        table.append((recency, n, round(hr, 4), round(p50 * 1000, 1), round(p99 * 1000, 1)))
    print(render(["recency_half_life_days", "evaluated", "HR@10", "step p50 ms", "step p99 ms"],
                 table), end="")


if __name__ == "__main__":
    main()
