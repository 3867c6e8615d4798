"""Offline accuracy, ../shared/EVAL.md protocol 1 (per-user temporal hold-out) on MovieLens.

    python benchmarks/bench_accuracy.py [--variants default,shrink0,tfidf,nocap] [--strategies]

rtsql runs through its own path: ingest of the train events (event type rating, weighted by
its value), the catalog (movies.csv genres and tags.csv user tags), a full refresh, then the
`recommend` SQL macro per user. The peers, measured in the same run on the binary train matrix,
are implicit's CosineRecommender(K=20, K=100), TFIDFRecommender(K=100), BM25Recommender(K=100),
ALS(64 factors, 15 iterations, regularization 0.05) and popularity.

Data: MovieLens ml-latest-small, F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens
Datasets: History and Context. ACM TiiS 5, 4: 19. GroupLens, University of Minnesota; used for
research, non-commercially, as its README asks. Read from ../shared/datasets/, never copied.
"""

from __future__ import annotations

import argparse
import csv
import warnings
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-latest-small"

VARIANTS = {
    # name: settings applied before the full refresh
    "default": {},
    "shrink5": {"shrinkage": "5"},
    "tfidf": {"similarity": "tfidf", "neighbors": "100", "shrinkage": "0"},
    "nocap": {"max_history": "0"},
    "binary": {"_binary": True},
}


def split():
    """Protocol 1: each user's events sorted by (timestamp, item); the last 20% are test."""
    by_user: dict[str, list] = {}
    with open(DATA / "ratings.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_user.setdefault(row["userId"], []).append(
                (int(row["timestamp"]), int(row["movieId"]), float(row["rating"])))
    train, test = [], {}
    for user, events in by_user.items():
        events.sort(key=lambda e: (e[0], e[1]))
        cut = math.ceil(0.8 * len(events))
        train += [(user, *e) for e in events[:cut]]
        test[user] = {str(e[1]) for e in events[cut:]}
    train_items = {}
    for user, ts, item, rating in train:
        train_items.setdefault(user, set()).add(str(item))
    truth = {u: t - train_items.get(u, set()) for u, t in test.items()}
    truth = {u: t for u, t in truth.items() if t and u in train_items}
    return train, train_items, truth


def metrics(recommended: dict[str, list[str]], truth: dict[str, set], n_train_items: int):
    p = r = ndcg = 0.0
    seen = set()
    for user, items in truth.items():
        recs = recommended.get(user, [])[:10]
        seen.update(recs)
        hits = [1 if i in items else 0 for i in recs]
        p += sum(hits) / 10
        r += sum(hits) / len(items)
        dcg = sum(h / math.log2(k + 2) for k, h in enumerate(hits))
        idcg = sum(1 / math.log2(k + 2) for k in range(min(len(items), 10)))
        ndcg += dcg / idcg
    n = len(truth)
    return p / n, r / n, ndcg / n, len(seen) / n_train_items


def build_database(workdir: Path, train, binary: bool):
    import rtsql
    from rtsql import catalog, ingest

    events = workdir / ("train_binary.csv" if binary else "train.csv")
    with open(events, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "event_type", "ts", "value"])
        for user, ts, item, rating in train:
            w.writerow([user, item, "view" if binary else "rating", ts, "" if binary else rating])
    train_items = {str(item) for _, _, item, _ in train}
    tags: dict[str, set] = {}
    with open(DATA / "tags.csv", newline="") as f:
        for row in csv.DictReader(f):
            tags.setdefault(row["movieId"], set()).add(row["tag"].strip().lower().replace("|", " "))
    items = workdir / "items.csv"
    with open(DATA / "movies.csv", newline="") as f, open(items, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["item_id", "title", "category", "tags"])
        for row in csv.DictReader(f):
            if row["movieId"] in train_items:  # protocol: candidates are the train items
                genres = row["genres"].split("|")
                w.writerow([row["movieId"], row["title"], genres[0],
                            "|".join(sorted(set(g.lower() for g in genres) | tags.get(row["movieId"], set())))])
    con = rtsql.connect(workdir / f"ml_{'binary' if binary else 'rating'}.duckdb")
    ingest.ingest(con, [events])
    catalog.load_items(con, items)
    return con


def evaluate_rtsql(con, truth, n_train_items, strategy="hybrid"):
    from rtsql import recommend

    recs, times = {}, []
    for user in truth:
        start = time.perf_counter()
        rows = recommend.recommend(con, user, 10, strategy=strategy).rows
        times.append(time.perf_counter() - start)
        recs[user] = [r[1] for r in rows]
    return metrics(recs, truth, n_train_items), float(np.median(times))


def peers(train, truth, n_train_items):
    import scipy.sparse as sp

    warnings.filterwarnings("ignore", module="implicit")
    from implicit.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import (BM25Recommender, CosineRecommender,
                                             TFIDFRecommender)

    users = sorted({u for u, *_ in train})
    items = sorted({str(i) for _, _, i, _ in train})
    uidx, iidx = {u: k for k, u in enumerate(users)}, {i: k for k, i in enumerate(items)}
    rows = np.array([uidx[u] for u, *_ in train])
    cols = np.array([iidx[str(i)] for _, _, i, _ in train])
    x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), len(items)))
    x.data[:] = 1.0
    eval_users = np.array([uidx[u] for u in truth])
    out = []
    popularity = np.asarray(x.sum(axis=0)).ravel()
    recs = {}
    for u in truth:
        scores = popularity.copy()
        scores[x[uidx[u]].indices] = -1
        recs[u] = [items[k] for k in np.argsort(-scores, kind="stable")[:10]]
    out.append(("popularity", metrics(recs, truth, n_train_items), 0.0))
    for name, model in [
        ("implicit Cosine K=20", CosineRecommender(K=20)),
        ("implicit Cosine K=100", CosineRecommender(K=100)),
        ("implicit TFIDF K=100", TFIDFRecommender(K=100)),
        ("implicit BM25 K=100", BM25Recommender(K=100)),
        ("implicit ALS 64/15/0.05", AlternatingLeastSquares(
            factors=64, iterations=15, regularization=0.05, random_state=0)),
    ]:
        start = time.perf_counter()
        model.fit(x, show_progress=False)
        fit = time.perf_counter() - start
        ids, _ = model.recommend(eval_users, x[eval_users], N=10, filter_already_liked_items=True)
        recs = {u: [items[k] for k in ids[n]] for n, u in enumerate(truth)}
        out.append((name, metrics(recs, truth, n_train_items), fit))
    return out


def main():
    if not (DATA / "ratings.csv").exists():
        sys.exit(f"MovieLens not found at {DATA}: this benchmark needs ../shared/datasets/")
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="default,shrink5,tfidf,nocap,binary")
    parser.add_argument("--strategies", action="store_true",
                        help="Also score each single strategy of the default variant.")
    args = parser.parse_args()
    from rtsql import refresh, settings
    from rtsql.output import render

    train, train_items, truth = split()
    n_train_items = len({str(i) for _, _, i, _ in train})
    print(f"protocol 1: {len(train)} train events, {len(truth)} evaluated users, "
          f"{n_train_items} train items", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cons = {}
        for variant in args.variants.split(","):
            config = dict(VARIANTS[variant])
            binary = config.pop("_binary", False)
            if binary not in cons:
                cons[binary] = build_database(Path(tmp), train, binary)
            con = cons[binary]
            for name, setting in settings.SETTINGS.items():
                settings.reset(con, name)
            for name, value in config.items():
                settings.set_value(con, name, value)
            result = refresh.refresh(con, full=True)
            strategies = (["hybrid", "item", "user", "content", "trending"]
                          if args.strategies and variant == "default" else ["hybrid"])
            for strategy in strategies:
                (p, r, n, cov), latency = evaluate_rtsql(con, truth, n_train_items, strategy)
                rows.append((f"rtsql {variant} {strategy}", round(p, 4), round(r, 4),
                             round(n, 4), round(cov, 4), round(result.seconds, 2),
                             round(latency * 1000, 1)))
        for con in cons.values():
            con.close()
    for name, (p, r, n, cov), fit in peers(train, truth, n_train_items):
        rows.append((name, round(p, 4), round(r, 4), round(n, 4), round(cov, 4), round(fit, 2),
                     None))
    print(render(["model", "P@10", "R@10", "NDCG@10", "coverage", "fit s", "ms/user"], rows),
          end="")


if __name__ == "__main__":
    main()
