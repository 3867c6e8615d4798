"""``ease_dropout auto``: a full refresh chooses the EASE regression's denoising rate on its own
matrix, by how well each candidate's lists rank the users' newest items.

Plain EASE and its denoising form (DLAE) win on different data: the rate that pays on a basket
log (staples predict little) costs on MovieLens (popular titles carry signal), so no fixed
value is right for both (benchmarks/README.md, "Quality on a second domain"). The choice is
made as a tuning run would make it, on the data the refresh already holds:

- the held-out part: of each user's entries (the capped interaction matrix, ordered by the
  time of their latest event), those at position >= ceil(TRAIN_FRACTION n), as protocol 1
  splits events; the rest is the training matrix;
- each candidate's lists are built on the training matrix; a user's scores are its training
  row times the lists (the item-item term of the recommend formula), its training items
  excluded, and NDCG@10 is taken against its held-out items (at most ``MAX_USERS`` users, a
  fixed sample);
- the best candidate wins, ties to the earlier one (plain EASE first).

It costs one build per candidate on the training matrix, so a refresh makes it again only when
the model settings or the measure changed or the matrix has grown (or shrunk) by a factor of
``RETUNE_GROWTH`` since (refresh.py keeps the choice in model_state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from . import measures, ranking
from .vocabulary import DEFAULT_K, TRAIN_FRACTION

# (dropout rate p, factor of ease_lambda): plain EASE at the user's lambda, and DLAE, whose
# popularity-scaled diagonal already regularizes, with less of the uniform part. p 0.5 at the
# full lambda, a third candidate, won on none of the six validation splits (benchmarks/README.md)
CANDIDATES: tuple[tuple[float, float], ...] = ((0.0, 1.0), (0.75, 1.0 / 3.0))
MAX_USERS = 10_000
RETUNE_GROWTH = 2.0
K = DEFAULT_K  # NDCG@K: the length of a recommend() list
USER_BLOCK = 512  # users ranked at once


@dataclass(frozen=True)
class Trial:
    dropout: float
    lam: float
    ndcg: float


def split(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Flags of the held-out entries: of each user's entries by (time, item), those at position
    >= ceil(TRAIN_FRACTION n)."""
    user = cols["user_key"].astype(np.int64)
    order = np.lexsort((cols["item_key"], cols["last_us"], user))
    u = user[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    counts = np.diff(np.r_[starts, len(u)])
    pos = np.arange(len(u)) - np.repeat(starts, counts)
    cut = np.ceil(TRAIN_FRACTION * counts - 1e-9).astype(np.int64)
    held = np.zeros(len(u), bool)
    held[order] = pos >= np.repeat(cut, counts)
    return held


def ndcg(train: sp.csr_matrix, truth: sp.csr_matrix, lists: measures.Neighbors,
         users: np.ndarray) -> float:
    """Mean NDCG@K over ``users`` of their rankings: the items train[u] @ W scores above 0
    (W[i, j]: j's score in i's list), the user's training items excluded, by score
    descending, then item key."""
    n = train.shape[1]
    w = sp.csr_matrix((lists.score, (lists.row, lists.nb)), shape=(n, n))
    discount = ranking.discounts(K)
    ideal = np.r_[0.0, np.cumsum(discount)]  # ideal[m]: ranking.ideal_dcg(m, K), m <= K
    total = 0.0
    for lo in range(0, len(users), USER_BLOCK):
        block = users[lo:lo + USER_BLOCK]
        rows = train[block]
        scores = (rows @ w).tocsr()
        scores = (scores - scores.multiply(rows != 0)).tocsr()  # training items out
        count, top, _, _ = measures.top_per_row(scores.indptr, scores.indices, scores.data, K)
        rank = np.broadcast_to(np.arange(K), top.shape)
        used = rank < count[:, None]
        r = np.broadcast_to(np.arange(len(block))[:, None], top.shape)[used]
        c, rank = top[used], rank[used]
        held = truth[block]
        hit = np.asarray(held[r, c]).ravel() > 0 if len(r) else np.zeros(0, bool)
        dcg = np.bincount(r[hit], weights=discount[rank[hit]], minlength=len(block))
        total += float(np.sum(dcg / ideal[np.minimum(np.diff(held.indptr), K)]))
    return total / max(len(users), 1)


def choose(cols: dict[str, np.ndarray], shape: tuple[int, int], measure: measures.Measure,
           progress=None) -> list[Trial]:
    """Every candidate's trial, best first; [] when no user has a held-out item."""
    held = split(cols)
    user = cols["user_key"].astype(np.int64)
    item = cols["item_key"].astype(np.int64)
    weight = cols["weight"].astype(np.float64)
    train = sp.csr_matrix((weight[~held], (user[~held], item[~held])), shape=shape)
    truth = sp.csr_matrix((np.ones(int(held.sum())), (user[held], item[held])), shape=shape)
    users = np.flatnonzero((np.diff(truth.indptr) > 0) & (np.diff(train.indptr) > 0))
    if not len(users):
        return []
    if len(users) > MAX_USERS:
        users = np.sort(np.random.default_rng(0).choice(users, MAX_USERS, replace=False))
    items = train.T.tocsr()
    trials = []
    for number, (dropout, factor) in enumerate(CANDIDATES):
        candidate = replace(measure, ease_dropout=dropout, ease_lambda=measure.ease_lambda * factor)
        lists = measures.full(items, candidate)
        trials.append(Trial(dropout, candidate.ease_lambda, ndcg(train, truth, lists, users)))
        if progress:
            progress(number + 1, len(CANDIDATES))
    return sorted(trials, key=lambda t: -t.ndcg)  # stable: ties keep the candidates' order


def due(tuned_entries: float, entries: int) -> bool:
    """Whether a matrix of ``entries`` has moved far enough from the one the choice was made on."""
    if tuned_entries <= 0:
        return True
    ratio = entries / tuned_entries
    return ratio >= RETUNE_GROWTH or ratio <= 1.0 / RETUNE_GROWTH or math.isnan(ratio)
