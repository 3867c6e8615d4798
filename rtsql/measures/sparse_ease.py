"""Sparse EASE: Steck's regression restricted to each item's strongest co-occurring items.

Dense EASE (ease.py) gives column b of B, what each history item adds to b's score, as the
ridge regression of b's column of X on every other item's column:

    B[:, b] = (G_{-b,-b} + lambda' I)^-1 G_{-b,b},   G = X^T X (the items' Gram matrix)

(the block inverse of G + lambda' I turns Steck's -P[:, b] / P[b, b] into exactly this). Here
the regressors of b are only its ``ease_neighbors`` items of largest co-occurrence N(b) (ties:
the lower key), as in the neighbourhood-restricted regressions of fsSLIM (Ning & Karypis 2011)
and the sparse approximation of Steck's Markov random fields (NeurIPS 2019):

    B[N(b), b] = (G[N(b), N(b)] + lambda' I)^-1 G[N(b), b]

Each column is an m x m system (m = |N(b)|), so a build costs about n x (m^3 / 3 + m^2)
multiply-adds plus the co-occurrence products the sparse engine computes for cosine, and its
memory grows with n x m, not with n^2: catalogs of a million items fit. G[N, N] is read from
the co-occurrence lists themselves: G[a, c] is known when c is among a's m strongest or a
among c's; a pair outside both lists (a weak co-occurrence) counts as 0. On the grocery log of
benchmarks/README.md this scores as dense EASE does (NDCG@10 within 0.0002 at m = 300).

lambda' and the lists are as ease.py's: ``ease_lambda`` x the mean squared weight; the k x n
weights of largest magnitude, at most ``ease.LIST_CAP_FACTOR`` x k per item, served signed.
A column whose truncated system is not positive definite (possible only because weak pairs
count as 0) is solved again with twice the regularization, until it is; the build says how
many. There is no exact update (``incremental`` is false): the refresh keeps the lists until
enough new events arrive (setting ``rebuild_fraction``), then rebuilds them in full.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from numba import njit

from .base import Measure, Model, Notice, Progress, Weights
from .ease import NUMERICAL_ZERO, list_cap
from .engine import Neighbors, RowSimilarity, _lists_for

PIECES_PER_THREAD = 8  # columns are solved in this many pieces per thread (load balance)


class SparseEase(Model):
    name = "sparse_ease"
    incremental = False

    def full(self, m: sp.csr_matrix, measure: Measure, progress: Progress | None = None,
             notice: Notice | None = None) -> Neighbors:
        return sparse_ease(m, measure, progress, notice)

    def served(self, measure: Measure) -> int:
        return list_cap(measure)


def cooccurrence_lists(m: sp.csr_matrix, measure: Measure,
                       progress: Progress | None = None) -> sp.csr_matrix:
    """Each row's ``ease_neighbors`` largest co-occurrences G[a, c] = m[a] . m[c] (c != a,
    G > 0), ordered by (G desc, c asc), as a CSR matrix in list order (not sorted by column).
    The fused kernel of the sparse engine computes them (products and top-m in one pass)."""
    n = m.shape[0]
    weights = Weights(m, m.T.tocsr(), np.ones(n))
    lists_measure = Measure(k=measure.ease_neighbors, block_cells=measure.block_cells,
                            threads=measure.threads)
    sim = RowSimilarity(m, weights, lists_measure)
    lists = _lists_for(sim, np.flatnonzero(sim.present), progress)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(lists.row, minlength=n), out=indptr[1:])
    return sp.csr_matrix((lists.score, lists.nb.astype(np.int32), indptr), shape=(n, n))


def column_weights(lists: sp.csr_matrix, diag: np.ndarray, lam: float, threads: int = 1,
                   progress: Progress | None = None) -> tuple[np.ndarray, int]:
    """For each row b of ``lists`` (its regressors N(b) and G[N(b), b]), the weights
    B[N(b), b], aligned with ``lists.data``; and how many systems needed more regularization.
    ``progress`` hears the rows solved, piece by piece."""
    n = lists.shape[0]
    size = np.diff(lists.indptr).astype(np.float64)
    cost = np.cumsum(size ** 3 + size)
    pieces = max(1, threads * PIECES_PER_THREAD)
    bounds = np.searchsorted(cost, np.linspace(0, cost[-1] if n else 0, pieces + 1)[1:-1])
    starts = np.unique(np.r_[0, bounds, n])
    width = int(size.max(initial=0))

    def solve(span):
        return _solve_columns(span[0], span[1], lists.indptr, lists.indices, lists.data, diag,
                              lam, n, width)

    spans = list(zip(starts[:-1], starts[1:]))
    out = np.zeros(lists.nnz)
    retried = 0
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for (start, end), (weights, again) in zip(spans, pool.map(solve, spans)):
            out[lists.indptr[start]:lists.indptr[end]] = weights
            retried += again
            if progress:
                progress(int(end), n)
    return out, retried


# fastmath: the dot products of the Cholesky and the substitutions vectorize (reassociated
# sums: 4.5x faster on a 256 x 256 system; results agree with the numpy reference to 1e-9)
@njit(nogil=True, cache=True, error_model="numpy", fastmath=True)
def _solve_columns(start, end, indptr, nb, g, diag, lam, n, width):
    """The regressions of rows start..end-1: for row b with regressors N = nb[indptr[b]:
    indptr[b + 1]], A = G[N, N] + lam I (G[a, c] from a's list or c's, 0 when in neither;
    G[a, a] = diag[a]), and A w = G[N, b] by Cholesky. Returns the w's, concatenated, and the
    number of systems solved again with doubled lam (not positive definite)."""
    base = indptr[start]
    out = np.zeros(indptr[end] - base)
    position = np.full(n, -1, np.int64)
    a_mat = np.empty((width, width))
    low = np.empty((width, width))
    x = np.empty(width)
    retried = 0
    for b in range(start, end):
        s = indptr[b]
        c = indptr[b + 1] - s
        if c == 0:
            continue
        for p in range(c):
            position[nb[s + p]] = p
        for p in range(c):
            for q in range(c):
                a_mat[p, q] = 0.0
        for p in range(c):
            a = nb[s + p]
            a_mat[p, p] = diag[a]
            for t in range(indptr[a], indptr[a + 1]):
                q = position[nb[t]]
                if q >= 0:
                    a_mat[p, q] = g[t]
                    a_mat[q, p] = g[t]
        for p in range(c):
            position[nb[s + p]] = -1
        reg = lam
        while not _cholesky(a_mat, low, c, reg):
            reg *= 2.0
        if reg != lam:
            retried += 1
        for p in range(c):  # forward: L y = G[N, b]
            acc = g[s + p]
            for q in range(p):
                acc -= low[p, q] * x[q]
            x[p] = acc / low[p, p]
        for p in range(c - 1, -1, -1):  # back: L^T w = y
            acc = x[p]
            for q in range(p + 1, c):
                acc -= low[q, p] * x[q]
            x[p] = acc / low[p, p]
        for p in range(c):
            out[s - base + p] = x[p]
    return out, retried


@njit(nogil=True, cache=True, error_model="numpy", fastmath=True)
def _cholesky(a_mat, low, c, reg):
    """L with L L^T = a_mat[:c, :c] + reg I, in low's lower triangle; False when not positive
    definite."""
    for j in range(c):
        acc = a_mat[j, j] + reg
        for q in range(j):
            acc -= low[j, q] * low[j, q]
        if not acc > 0:
            return False
        d = np.sqrt(acc)
        low[j, j] = d
        for i in range(j + 1, c):
            acc = a_mat[i, j]
            for q in range(j):
                acc -= low[i, q] * low[j, q]
            low[i, j] = acc / d
    return True


def sparse_ease(m: sp.csr_matrix, measure: Measure, progress: Progress | None = None,
                notice: Notice | None = None) -> Neighbors:
    """Sparse EASE lists (module docstring): rows of B are history items, as ease.ease's."""
    n = m.shape[0]
    rows = np.flatnonzero(np.diff(m.indptr))
    if len(rows) < 2:
        return Neighbors.empty()
    scale = float(np.mean(m.data ** 2)) if m.nnz else 1.0

    def phase(number: int):  # two phases, each half of the progress: lists, then solves
        return lambda done, total: progress and progress(
            number * total + done, 2 * total)

    lists = cooccurrence_lists(m, measure, phase(0))
    diag = np.asarray(m.multiply(m).sum(axis=1)).ravel()
    weights, retried = column_weights(lists, diag, measure.ease_lambda * scale, measure.threads,
                                      phase(1))
    if retried and notice:
        notice(f"sparse_ease: {retried} of {len(rows)} items' systems were not positive "
               f"definite with weak co-occurrences left out; solved with more regularization")
    # B[a, b] = weights of row b's entry a: transpose, so rows are history items
    columns = np.repeat(np.arange(n), np.diff(lists.indptr))
    b = sp.csr_matrix((weights, (lists.indices, columns)), shape=(n, n))
    return select_lists(b, measure, len(rows))


def select_lists(b: sp.csr_matrix, measure: Measure, n_items: int) -> Neighbors:
    """ease.ease's selection on a sparse B: each row's ``list_cap`` largest magnitudes, of
    which the k x ``n_items`` largest overall (and not within rounding of zero),
    ordered by (weight desc, key asc)."""
    b.sort_indices()
    cap = list_cap(measure)
    if not b.nnz:
        return Neighbors.empty()
    zero = NUMERICAL_ZERO * float(np.abs(b.data).max())
    capped = _row_cap(b.indptr, b.indices, b.data, cap)
    magnitudes = np.abs(b.data[capped])
    budget = min(measure.k * n_items, len(magnitudes))
    threshold = np.partition(magnitudes, len(magnitudes) - budget)[len(magnitudes) - budget]
    keep = np.zeros(b.nnz, bool)
    keep[capped] = True
    keep &= (np.abs(b.data) >= threshold) & (np.abs(b.data) > zero)
    row = np.repeat(np.arange(b.shape[0]), np.diff(b.indptr))[keep]
    nb, score = b.indices[keep].astype(np.int64), b.data[keep]
    order = np.lexsort((nb, -score, row))
    row, nb, score = row[order], nb[order], score[order]
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    rank = np.arange(len(row)) - np.repeat(starts, np.diff(np.r_[starts, len(row)])) + 1
    return Neighbors(row.astype(np.int64), nb, score, rank.astype(np.int64))


@njit(nogil=True, cache=True)
def _row_cap(indptr, indices, data, cap):
    """Positions of each row's ``cap`` largest |data| (ties: the lower column), sorted."""
    out = np.empty(len(data), np.int64)
    kept = 0
    for r in range(len(indptr) - 1):
        s, e = indptr[r], indptr[r + 1]
        if e - s <= cap:
            for t in range(s, e):
                out[kept] = t
                kept += 1
            continue
        order = np.argsort(-np.abs(data[s:e]), kind="mergesort")  # stable: columns ascend
        chosen = np.sort(order[:cap])
        for t in chosen:
            out[kept] = s + t
            kept += 1
    return out[:kept]
