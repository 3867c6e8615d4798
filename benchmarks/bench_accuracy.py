"""Offline accuracy, ../shared/EVAL.md protocol 1 (per-user temporal hold-out) on MovieLens.

    python benchmarks/bench_accuracy.py [--variants default,shrink0,tfidf,nocap] [--strategies]

rtsql runs through its own path: `rtsql.evaluate.holdout` over a database holding all ratings
(as rating events, weighted by their value) and the catalog (movies.csv genres and tags.csv user
tags): it splits, ingests the train events into a scratch database, refreshes, and asks the
`recommend` SQL macro. --tune-budget tunes on a validation split of the train events only. The peers, measured in the same run on the binary train matrix,
are implicit's CosineRecommender(K=20, K=100), TFIDFRecommender(K=100), BM25Recommender(K=100),
ALS(64 factors, 15 iterations, regularization 0.05), popularity, and EASE as EVAL.md measures it
(dense closed form on the binary matrix, lambda 300, in numpy).

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
    "cosine": {"similarity": "cosine"},  # the defaults before the 2026-12-04 nested search
    "cosine_old_blend": {"similarity": "cosine", "weight_user_cf": "0.3", "weight_content": "0.1"},
    "shrink5": {"shrinkage": "5"},
    "tfidf": {"similarity": "tfidf", "neighbors": "100"},
    "nocap": {"max_history": "0"},
    "rp3beta": {"similarity": "rp3beta"},
    "rp3b25": {"similarity": "rp3beta", "rp3_beta": "0.25"},
    "rp3a75b25k100": {"similarity": "rp3beta", "rp3_alpha": "0.75", "rp3_beta": "0.25",
                      "neighbors": "100"},
    "rp3b25k100": {"similarity": "rp3beta", "rp3_beta": "0.25", "neighbors": "100"},
    "ease": {"similarity": "ease"},
    "ease1000": {"similarity": "ease", "ease_lambda": "1000"},
    "binary": {"_binary": True},
}


def split(half: int | None = None):
    """Protocol 1: each user's events sorted by (timestamp, item); the last 20% are test.
    ``half`` 0 / 1 keeps the users with even / odd ids (two disjoint datasets)."""
    by_user: dict[str, list] = {}
    with open(DATA / "ratings.csv", newline="") as f:
        for row in csv.DictReader(f):
            if half is not None and int(row["userId"]) % 2 != half:
                continue
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
    """The peers are scored with rtsql's own metric code."""
    from rtsql.evaluate import ranking_metrics

    m = ranking_metrics(recommended, truth, 10, n_train_items)
    return m.precision, m.recall, m.ndcg, m.coverage


def build_database(path: Path, events, binary: bool = False):
    """An rtsql database holding ``events`` (user, ts, item, rating) as rating events (or as
    views), with the MovieLens catalog: genres and user tags as tags, first genre as category."""
    import rtsql
    from rtsql import catalog, ingest

    workdir = path.parent
    events_csv = workdir / (path.stem + ".csv")
    with open(events_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "event_type", "ts", "value"])
        for user, ts, item, rating in events:
            w.writerow([user, item, "view" if binary else "rating", ts, "" if binary else rating])
    tags: dict[str, set] = {}
    with open(DATA / "tags.csv", newline="") as f:
        for row in csv.DictReader(f):
            tags.setdefault(row["movieId"], set()).add(row["tag"].strip().lower().replace("|", " "))
    items = workdir / "items.csv"
    with open(DATA / "movies.csv", newline="") as f, open(items, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["item_id", "title", "category", "tags"])
        for row in csv.DictReader(f):
            genres = row["genres"].split("|")
            w.writerow([row["movieId"], row["title"], genres[0], "|".join(sorted(
                {g.lower() for g in genres} | tags.get(row["movieId"], set())))])
    con = rtsql.connect(path)
    ingest.ingest(con, [events_csv])
    catalog.load_items(con, items)
    return con


def all_events(half: int | None = None):
    with open(DATA / "ratings.csv", newline="") as f:
        return [(r["userId"], int(r["timestamp"]), int(r["movieId"]), float(r["rating"]))
                for r in csv.DictReader(f)
                if half is None or int(r["userId"]) % 2 == half]


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
    # EASE as EVAL.md measures it: the dense closed form on the binary matrix, lambda 300
    start = time.perf_counter()
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += 300.0
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    fit = time.perf_counter() - start
    scores = x[eval_users] @ b
    scores[x[eval_users].nonzero()] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    recs = {u: [items[k] for k in top[n]] for n, u in enumerate(truth)}
    out.append(("EASE dense, lambda 300 (numpy)", metrics(recs, truth, n_train_items), fit))
    return out


def main():
    if not (DATA / "ratings.csv").exists():
        sys.exit(f"MovieLens not found at {DATA}: this benchmark needs ../shared/datasets/")
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="default,shrink5,tfidf,nocap,binary")
    parser.add_argument("--strategies", action="store_true",
                        help="Also score each single strategy of the default variant.")
    parser.add_argument("--half", type=int, choices=(0, 1),
                        help="Only the users with even (0) or odd (1) ids: a second and a "
                             "third dataset, disjoint, for figures on data not searched alone.")
    parser.add_argument("--tune-budget", type=int, default=0,
                        help="Also tune on a validation split of the train events (nested: the "
                             "test events are never seen while tuning) and score the winner.")
    args = parser.parse_args()
    from rtsql import evaluate
    from rtsql.output import render

    train, train_items, truth = split(args.half)
    n_train_items = len({str(i) for _, _, i, _ in train})
    print(f"protocol 1: {len(train)} train events, {len(truth)} evaluated users, "
          f"{n_train_items} train items", file=sys.stderr)
    rows = []

    def add(name, result):
        m = result.metrics
        rows.append((name, round(m.precision, 4), round(m.recall, 4), round(m.ndcg, 4),
                     round(m.coverage, 4), round(result.refresh_seconds, 2),
                     round(result.query_ms_per_user, 1)))
        print(rows[-1], file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        events = all_events(args.half)
        cons = {}
        for variant in args.variants.split(","):
            config = dict(VARIANTS[variant])
            binary = config.pop("_binary", False)
            if binary not in cons:
                cons[binary] = build_database(tmp / f"all_{binary}.duckdb", events, binary)
            strategies = (["hybrid", "item", "user", "content", "trending"]
                          if args.strategies and variant == "default" else ["hybrid"])
            for result in evaluate.holdout(cons[binary], strategies=strategies, overrides=config):
                add(f"rtsql {variant} {result.strategy}", result)
        if args.tune_budget:
            train_db = build_database(tmp / "train.duckdb", [(u, ts, i, r) for u, ts, i, r in train])
            trials = evaluate.tune(train_db, budget=args.tune_budget)
            best = trials[0]
            print(f"tuned on validation: {best.overrides} ({best.score:.4f})", file=sys.stderr)
            [result] = evaluate.holdout(cons[False], overrides=best.overrides)
            add("rtsql tuned hybrid", result)
            train_db.close()
        for con in cons.values():
            con.close()
    for name, (p, r, n, cov), fit in peers(train, truth, n_train_items):
        rows.append((name, round(p, 4), round(r, 4), round(n, 4), round(cov, 4), round(fit, 2),
                     None))
    print(render(["model", "P@10", "R@10", "NDCG@10", "coverage", "fit s", "ms/user"], rows),
          end="")


if __name__ == "__main__":
    main()
