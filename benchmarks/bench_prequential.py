"""Real-time accuracy, ../shared/EVAL.md protocol 2 (prequential replay).

    python benchmarks/bench_prequential.py [--dataset ml|tafeng] [--limit 3000|all]
                                           [--recency 0,1] [--refresh-every 100]
                                           [--engine memory,sql] [--set NAME=V1/V2]

rtsql runs through `rtsql.evaluate.prequential`: the first 80% of the events (by time, user,
item) are ingested and refreshed in a scratch database, then the stream replays one event at a
time through the tail's file-following code (incremental refresh every --refresh-every events);
before an event of a known user on an item new to them, `recommend` is asked for 10 items.
Each --recency value (recency_half_life_days) and --engine (memory: the serving scorer, as
`rtsql serve` answers; sql: the recommend macro per event, the reference) is a separate replay,
timed whole ("protocol s"). --limit bounds the replayed events (the first N after the
warm-up); `all` replays the whole last 20% (about 20,000 events).

The peer, in the same run and on the same events: implicit's CosineRecommender(K=20) fitted on
the warm-up (binary) and frozen, given each user's current history at query time.

Data (benchmarks/datasets.py, read from ../shared/datasets/): MovieLens ml-latest-small
(GroupLens, University of Minnesota; F. M. Harper and J. A. Konstan, ACM TiiS 5(4), 2015),
non-commercial research use, or the Ta Feng grocery log's even half (``--dataset tafeng``,
dated by day: its many same-day events are ordered by user and item id as strings, the order
rtsql's replay uses, for both sides).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from datasets import DATASETS


def peer(events, limit: int):
    """implicit CosineRecommender(K=20) frozen at warm-up, current history at query time."""
    import scipy.sparse as sp

    warnings.filterwarnings("ignore", module="implicit")
    from implicit.nearest_neighbours import CosineRecommender

    # EVAL.md's order (time, user, item), with ids compared as rtsql's replay compares them
    ordered = sorted(events, key=lambda e: (e[1], str(e[0]), str(e[2])))
    cut = int(len(ordered) * 0.8)
    warm, stream = ordered[:cut], ordered[cut:cut + limit]
    items = sorted({i for _, _, i, _ in warm})
    index = {i: k for k, i in enumerate(items)}
    users = sorted({u for u, *_ in warm})
    uindex = {u: k for k, u in enumerate(users)}
    x = sp.csr_matrix((np.ones(len(warm), np.float32),
                       ([uindex[u] for u, *_ in warm], [index[i] for _, _, i, _ in warm])),
                      shape=(len(users), len(items)))
    x.data[:] = 1
    model = CosineRecommender(K=20)
    model.fit(x, show_progress=False)
    history: dict[str, set] = {}
    for u, _, i, _ in warm:
        history.setdefault(u, set()).add(i)
    hits = evaluated = 0
    latencies = []
    for u, _, i, _ in stream:
        start = time.perf_counter()
        if u in history and i not in history[u]:
            known = [index[j] for j in history[u] if j in index]
            row = sp.csr_matrix((np.ones(len(known), np.float32), ([0] * len(known), known)),
                                shape=(1, len(items)))
            ids, _ = model.recommend(0, row, N=10, filter_already_liked_items=True)
            hits += i in {items[k] for k in ids}
            evaluated += 1
        history.setdefault(u, set()).add(i)
        latencies.append(time.perf_counter() - start)
    return hits / max(evaluated, 1), evaluated, latencies


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml")
    parser.add_argument("--limit", default="3000")
    parser.add_argument("--engine", default="memory")
    parser.add_argument("--recency", default="0,1")
    parser.add_argument("--refresh-every", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of rtsql's scratch database (repeatable); "
                             "NAME=V1/V2 replays once per value")
    args = parser.parse_args()
    dataset = DATASETS[args.dataset]
    dataset.require()
    from rtsql import evaluate
    from rtsql.output import render

    events = dataset.events()
    limit = None if args.limit == "all" else int(args.limit)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        con = dataset.build_database(Path(tmp) / "all.duckdb", events)
        names = [text.split("=", 1)[0] for text in args.set]
        grid = list(itertools.product(*(text.split("=", 1)[1].split("/") for text in args.set)))
        for engine, recency, values in itertools.product(
                args.engine.split(","), args.recency.split(","), grid):
            chosen = dict(zip(names, values))
            start = time.perf_counter()
            res = evaluate.prequential(
                con, limit=limit, refresh_every=args.refresh_every,
                overrides={"recency_half_life_days": recency, **chosen}, engine=engine)
            wall = time.perf_counter() - start
            p50, p99 = evaluate.summarize_latencies(res.latencies)
            label = "".join(f", {k}={v}" for k, v in chosen.items())
            table.append((f"rtsql {engine}, recency_half_life_days={recency}{label}",
                          res.evaluated,
                          round(res.hit_rate, 4), round(p50, 2), round(p99, 2),
                          round(wall, 1)))
            print(table[-1], file=sys.stderr)
        con.close()
    start = time.perf_counter()
    hr, evaluated, latencies = peer(events, limit if limit is not None else len(events))
    wall = time.perf_counter() - start
    p50, p99 = evaluate.summarize_latencies(latencies)
    table.append(("implicit Cosine K=20, frozen, current history", evaluated, round(hr, 4),
                  round(p50, 2), round(p99, 2), round(wall, 1)))
    print(render(["model", "evaluated", "HR@10", "step p50 ms", "step p99 ms", "protocol s"],
                 table), end="")


if __name__ == "__main__":
    main()
