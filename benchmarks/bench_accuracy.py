"""Offline accuracy, ../shared/EVAL.md protocol 1 (per-user temporal hold-out).

    python benchmarks/bench_accuracy.py [--dataset ml|tafeng] [--half 0|1]
        [--variants default,shrink5,...] [--strategies] [--tune-budget N]

rtsql runs through its own path: `rtsql.evaluate.holdout` over a database holding all events
of the dataset (benchmarks/datasets.py: MovieLens ratings as rating events weighted by their
value, with the movie catalog; or Ta Feng purchases): it splits, ingests the train events into
a scratch database, refreshes, and asks the `recommend` SQL macro. --tune-budget tunes on a
validation split of the train events only. The peers, measured in the same run on the binary
train matrix, are implicit's CosineRecommender(K=20, K=100), TFIDFRecommender(K=100),
BM25Recommender(K=100), ALS(64 factors, 15 iterations, regularization 0.05), popularity, and
EASE as EVAL.md measures it (dense closed form on the binary matrix, lambda 300 and 1000, in
float32 numpy), and SANSA (its sparse approximation) where the bench-sansa extra installed
it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import DATASETS  # noqa: E402

MOVIELENS = DATASETS["ml"]
DATA = MOVIELENS.folder

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
    """MovieLens protocol-1 split (datasets.Dataset.split)."""
    return MOVIELENS.split(half)


def metrics(recommended: dict[str, list[str]], truth: dict[str, set], n_train_items: int):
    """The peers are scored with rtsql's own metric code."""
    from rtsql.evaluate import ranking_metrics

    m = ranking_metrics(recommended, truth, 10, n_train_items)
    return m.precision, m.recall, m.ndcg, m.coverage


def build_database(path: Path, events, binary: bool = False):
    """A MovieLens database (datasets.Dataset.build_database)."""
    return MOVIELENS.build_database(path, events, binary)


def all_events(half: int | None = None):
    return MOVIELENS.events(half)


def peers(train, truth, n_train_items):
    import scipy.sparse as sp

    warnings.filterwarnings("ignore", module="implicit")
    from implicit.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender

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
    # EASE as EVAL.md measures it: the dense closed form on the binary matrix, in float32
    for lam in (300.0, 1000.0):
        start = time.perf_counter()
        gram = (x.T @ x).toarray().astype(np.float32)
        gram[np.diag_indices_from(gram)] += lam
        p = np.linalg.inv(gram)
        del gram
        p /= -np.diag(p)[None, :]
        np.fill_diagonal(p, 0.0)
        fit = time.perf_counter() - start
        scores = x[eval_users] @ p
        del p
        recs = dict(zip(truth, top_unseen(scores, x[eval_users], items)))
        out.append((f"EASE dense, lambda {lam:g} (numpy float32)",
                    metrics(recs, truth, n_train_items), fit))
    out.extend(sansa_peers(x, eval_users, items, truth, n_train_items))
    return out


def top_unseen(scores: np.ndarray, seen, items: list[str]) -> list[list[str]]:
    """Each row's 10 best items by score (ties: the lower index) among those its row of
    ``seen`` (sparse) does not hold; ``scores`` is overwritten."""
    scores[seen.nonzero()] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    return [[items[k] for k in row] for row in top]


SANSA_LAMBDAS = (300.0, 1000.0)  # as the dense EASE peer's
SANSA_ENTRIES = (50, 200)  # weights per item of each factor: rtsql's default budget (k), 4x


def sansa_peers(x, eval_users, items, truth, n_train_items):
    """SANSA (Spisak et al., RecSys 2023; the `sansa` package of the bench-sansa extra): EASE
    through a sparse LDL^T of the Gram matrix (CHOLMOD, sparsified) and a sparse approximate
    inverse of L, on the same binary matrix, at EASE's lambdas and at a weight density of
    rtsql's list budget (k = 50 per item) and 4x it. Skipped with a message where it is not
    installed."""
    try:
        from sansa import (
            SANSA,
            CHOLMODGramianFactorizerConfig,
            SANSAConfig,
            UMRUnitLowerTriangleInverterConfig,
        )
    except ImportError as exc:
        print(f"SANSA peer skipped ({exc}): apt-get install libsuitesparse-dev, then pip "
              "install '.[bench-sansa]'", file=sys.stderr)
        return []
    import logging

    logging.getLogger("sansa").setLevel(logging.ERROR)  # its per-fit advice on the factorizer
    out = []
    n, evaluated = x.shape[1], list(truth)
    for lam in SANSA_LAMBDAS:
        for per_item in SANSA_ENTRIES:
            model = SANSA(SANSAConfig(l2=lam, weight_matrix_density=min(1.0, per_item / n),
                                      gramian_factorizer_config=CHOLMODGramianFactorizerConfig(),
                                      lower_triangle_inverter_config=(
                                          UMRUnitLowerTriangleInverterConfig())))
            start = time.perf_counter()
            model.fit(x)
            fit = time.perf_counter() - start
            recs = {}
            for lo in range(0, len(eval_users), 2048):  # dense scores, a block of users at once
                block = x[eval_users[lo:lo + 2048]]
                recs.update(zip(evaluated[lo:lo + 2048],
                                top_unseen(model.forward(block).toarray(), block, items)))
            out.append((f"SANSA, lambda {lam:g}, {per_item} weights per item",
                        metrics(recs, truth, n_train_items), fit))
            print(out[-1], file=sys.stderr)  # each fit takes minutes on the grocery log
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml")
    parser.add_argument("--variants", default="default,shrink5,tfidf,nocap,binary")
    parser.add_argument("--strategies", action="store_true",
                        help="Also score each single strategy of the default variant.")
    parser.add_argument("--half", type=int, choices=(0, 1),
                        help="Only one half of the users (datasets.py): a second and a third "
                             "dataset, disjoint, for figures on data not searched alone.")
    parser.add_argument("--tune-budget", type=int, default=0,
                        help="Also tune on a validation split of the train events (nested: the "
                             "test events are never seen while tuning) and score the winner.")
    args = parser.parse_args()
    dataset = DATASETS[args.dataset]
    dataset.require()
    from rtsql import evaluate
    from rtsql.output import render

    events = dataset.events(args.half)
    train, _, truth = dataset.split(events=events)
    n_train_items = len({str(i) for _, _, i, _ in train})
    print(f"{dataset.name} protocol 1: {len(train)} train events, {len(truth)} evaluated users, "
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
        cons = {}
        for variant in args.variants.split(","):
            config = dict(VARIANTS[variant])
            binary = config.pop("_binary", False)
            if binary not in cons:
                cons[binary] = dataset.build_database(tmp / f"all_{binary}.duckdb", events,
                                                      binary)
            strategies = (["hybrid", "item", "user", "content", "trending"]
                          if args.strategies and variant == "default" else ["hybrid"])
            for result in evaluate.holdout(cons[binary], strategies=strategies, overrides=config):
                add(f"rtsql {variant} {result.strategy}", result)
        if args.tune_budget:
            train_db = dataset.build_database(tmp / "train.duckdb", train)
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
