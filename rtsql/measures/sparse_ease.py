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

lambda' and the lists are as ease.py's: ``ease_lambda`` x the mean squared weight, plus, with
``ease_dropout``, DLAE's kappa G[a, a] on each regressor's diagonal; the k x n
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
    parameters = ("ease_lambda", "ease_dropout", "ease_neighbors")

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
    ``progress`` hears the rows solved, piece by piece.

    Rows are solved in the order of their strongest regressor, not of their keys: consecutive
    systems then read many of the same regressors' lists, which stay in cache."""
    n = lists.shape[0]
    size = np.diff(lists.indptr)
    strongest = np.full(n, -1, np.int64)
    strongest[size > 0] = lists.indices[lists.indptr[:-1][size > 0]]
    order = np.argsort(strongest, kind="stable")
    cost = np.cumsum(size[order].astype(np.float64) ** 3 + size[order])
    pieces = max(1, threads * PIECES_PER_THREAD)
    bounds = np.searchsorted(cost, np.linspace(0, cost[-1] if n else 0, pieces + 1)[1:-1])
    starts = np.unique(np.r_[0, bounds, n])
    width = int(size.max(initial=0))
    out = np.zeros(lists.nnz)

    def solve(span):  # each piece writes its own rows' entries of out
        return _solve_columns(order[span[0]:span[1]], lists.indptr, lists.indices, lists.data,
                              diag, lam, n, width, out)

    spans = list(zip(starts[:-1], starts[1:]))
    retried = done = 0
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for (start, end), again in zip(spans, pool.map(solve, spans)):
            retried += again
            done += int(end - start)
            if progress:
                progress(done, n)
    return out, retried


# fastmath: the dot products of the Cholesky and the substitutions vectorize (reassociated
# sums; tests/test_measures.py holds the results to the numpy reference within 1e-9)
@njit(nogil=True, cache=True, error_model="numpy", fastmath=True)
def _solve_columns(rows, indptr, nb, g, diag, lam, n, width, out):
    """The regressions of ``rows``: for row b with regressors N = nb[indptr[b]:indptr[b + 1]],
    A = G[N, N] + lam I (G[a, c] from a's list or c's, 0 when in neither; G[a, a] = diag[a]),
    and A w = G[N, b] by Cholesky; w goes to out[indptr[b]:indptr[b + 1]]. Returns the number
    of systems solved again with doubled lam (not positive definite).

    The fill is branch-free: items outside N map to the spare row and column ``width``, which
    collect the writes nobody reads. Each regressor's list fills its own row; the lower
    triangle then takes G[a, c] from the later regressor's list where both lists hold it (the
    same value either way, up to the order of the sums)."""
    position = np.full(n, width, np.int32)
    a_mat = np.empty((width + 1, width + 1))
    low = np.empty((width, width))
    x = np.empty(width)
    retried = 0
    for b in rows:
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
            row = a_mat[p]
            for t in range(indptr[a], indptr[a + 1]):
                row[position[nb[t]]] = g[t]
        for p in range(c):
            position[nb[s + p]] = width
        for p in range(c):
            a_mat[p, p] = diag[nb[s + p]]
            for q in range(p):
                if a_mat[p, q] == 0.0:  # lists hold only G > 0: 0 is "not in p's list"
                    a_mat[p, q] = a_mat[q, p]
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
        for p in range(c - 1, -1, -1):  # back: L^T w = y, by rows of L (contiguous)
            x[p] /= low[p, p]
            for q in range(p):
                x[q] -= low[p, q] * x[p]
        for p in range(c):
            out[s + p] = x[p]
    return retried


@njit(nogil=True, cache=True, error_model="numpy", fastmath=True)
def _cholesky(a_mat, low, c, reg):
    """L with L L^T = a_mat[:c, :c] + reg I (lower triangle read), in low's lower triangle;
    False when not positive definite. Column by column (Cholesky-Crout); the rows below the
    diagonal go four at a time, so each load of L[j, :j] serves four dot products."""
    for j in range(c):
        acc = a_mat[j, j] + reg
        for q in range(j):
            acc -= low[j, q] * low[j, q]
        if not acc > 0:
            return False
        d = np.sqrt(acc)
        low[j, j] = d
        i = j + 1
        while i + 3 < c:
            a0, a1, a2, a3 = a_mat[i, j], a_mat[i + 1, j], a_mat[i + 2, j], a_mat[i + 3, j]
            for q in range(j):
                lj = low[j, q]
                a0 -= low[i, q] * lj
                a1 -= low[i + 1, q] * lj
                a2 -= low[i + 2, q] * lj
                a3 -= low[i + 3, q] * lj
            low[i, j], low[i + 1, j], low[i + 2, j], low[i + 3, j] = a0 / d, a1 / d, a2 / d, a3 / d
            i += 4
        while i < c:
            acc = a_mat[i, j]
            for q in range(j):
                acc -= low[i, q] * low[j, q]
            low[i, j] = acc / d
            i += 1
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
    # DLAE: each regressor's own diagonal also regularizes it (kappa G[a, a])
    weights, retried = column_weights(lists, diag * (1.0 + measure.ease_kappa),
                                      measure.ease_lambda * scale, measure.threads, phase(1))
    if retried and notice:
        notice(f"sparse_ease: {retried} of {len(rows)} items' systems were not positive "
               f"definite with weak co-occurrences left out; solved with more regularization")
    # B[a, b] = weights of row b's entry a: transpose, so rows are history items (the
    # transposition leaves each row's columns ascending)
    b = sp.csr_matrix((weights, lists.indices, lists.indptr), shape=(n, n)).T.tocsr()
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
    order = _by_score_within_rows(row, score)
    nb, score = nb[order], score[order]
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


@njit(nogil=True, cache=True)
def _by_score_within_rows(row, score):
    """The order of entries grouped by ascending ``row`` (columns ascending within a row)
    that sorts each row by score descending, ties by the lower column: np.lexsort((nb,
    -score, row)) without sorting what is already in order."""
    order = np.arange(len(row))
    s = 0
    while s < len(row):
        e = s + 1
        while e < len(row) and row[e] == row[s]:
            e += 1
        order[s:e] = s + np.argsort(-score[s:e], kind="mergesort")
        s = e
    return order
