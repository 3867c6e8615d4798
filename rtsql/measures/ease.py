"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

The item-item weights B minimize |X - X B|^2 + lambda |B|^2 with diag(B) = 0, in closed form
from the inverse of the items' Gram matrix. B is dense, asymmetric and signed: a negative
weight says "users who have a rarely have b", and those weights carry much of EASE's accuracy.
rtsql serves B through the same lists as every measure, so it keeps the largest weights by
magnitude, positive and negative, ``k`` per item on average over the whole matrix (a popular
item's row holds many strong weights, a rare item's few), at most ``LIST_CAP_FACTOR`` x k per
item; recommend() sums them like any other list.

lambda is given in units of the mean squared interaction weight (``ease_lambda`` x mean x^2),
so the same setting means the same on binary events, event-type weights, ratings or decayed
weights: scaling every weight by c scales the Gram matrix by c^2, and lambda with it, which
leaves B unchanged.

The inverse P = (G + lambda' I)^-1 is dense (n x n for n items), so only the
``ease_max_items`` most popular items take part. A full build costs n^3 / 3 + 2 n^3 / 3
multiply-adds (Cholesky, inverse) and about 16 n^2 bytes. ``EaseFactor`` keeps P, so new events
update it instead (docs/design.md, "EASE between full refreshes"): a user whose row x becomes
x + d changes G by x d' + d x' + d d', a rank-2 term, and the Woodbury identity folds r such
terms into P in about n^2 r multiply-adds (a 1,000-event batch from 500 users: r <= 1,000
against n^3); new items border P (Schur complement) at n^2 per item. lambda' stays frozen at
the full build's value between full refreshes (a change of it is not low-rank).

``EaseDual`` computes the same P through the users' side (Woodbury on the whole of G): about
u^3 + nnz (u + n) multiply-adds for u users and nothing n x n, the cheaper while users are
fewer than items (``solver``; setting ``ease_solver``); it keeps nothing, so each refresh
recomputes its lists at the current lambda'.

``ease_dropout`` p > 0 gives the denoising form (DLAE: Steck, "Autoencoders that don't overfit
towards the identity", NeurIPS 2020): the regularizer is lambda' I + kappa diag(G) with
kappa = p / (1 - p), each item held back by its own squared weights; B keeps the same closed
form, and an update adds one rank-1 term per item whose diagonal moved.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numba import njit

from ..vocabulary import AUTO, EASE_SOLVERS
from .base import Measure, Model, Notice, Progress
from .engine import Neighbors

ITEMS, USERS = EASE_SOLVERS

NUMERICAL_ZERO = 1e-9  # relative to the largest |weight|
LIST_CAP_FACTOR = 8  # a list holds at most this many times k entries
BLOCK_ROWS = 1024  # rows of P per step of the blocked passes over it

Buffer = Callable[[int], np.ndarray]  # capacity -> a zeroed capacity x capacity float64 array


class Ease(Model):
    name = "ease"
    incremental = False  # not the engine's exact update: EaseFactor.update (refresh.py uses it)
    parameters = ("ease_lambda", "ease_dropout", "ease_max_items", "ease_solver")

    def full(self, m: sp.csr_matrix, measure: Measure, progress: Progress | None = None,
             notice: Notice | None = None) -> Neighbors:
        return ease(m, measure, progress, notice)

    def served(self, measure: Measure) -> int:
        return list_cap(measure)


def list_cap(measure: Measure) -> int:
    return LIST_CAP_FACTOR * measure.k


def ease_rows(m: sp.csr_matrix, measure: Measure, notice: Notice | None = None) -> np.ndarray:
    """The rows that enter the inverse: every row with features, or the ``ease_max_items``
    with the most features (ties: the lower key), with a notice."""
    present = np.diff(m.indptr)
    rows = np.flatnonzero(present > 0)
    if len(rows) > measure.ease_max_items:
        order = np.lexsort((rows, -present[rows]))
        rows = np.sort(rows[order[:measure.ease_max_items]])
        if notice:
            notice(f"ease: {len(order)} items have interactions; the {len(rows)} most popular "
                   f"(setting ease_max_items) get lists, the rest none: raise ease_max_items "
                   f"(memory about 16 x n^2 bytes) or use similarity cosine")
    return rows


def solver(m: sp.csr_matrix, rows: np.ndarray, measure: Measure) -> str:
    """How the closed form for ``rows`` of ``m`` (items x users) is computed: the
    ``ease_solver`` setting, or under auto the one with fewer multiply-adds, the items'
    inverse (EaseFactor: n^3) or the users' side (EaseDual: u^3 + nnz (u + n), u the users
    with entries in the rows), the users' side only while its rounding stays within
    DUAL_ROUNDING (dual_rounding)."""
    if measure.ease_solver != AUTO:
        return measure.ease_solver
    sub = m[rows]
    n, nnz = float(len(rows)), float(sub.nnz)
    u = float(np.count_nonzero(np.bincount(sub.indices, minlength=m.shape[1])))
    if u ** 3 + nnz * (u + n) >= n ** 3:
        return ITEMS
    lam = measure.ease_lambda * mean_square(sub)
    return USERS if dual_rounding(sub, lam, measure.ease_kappa) <= DUAL_ROUNDING else ITEMS


DUAL_ROUNDING = 1e-10  # the users' side's relative rounding auto accepts (solver)


def dual_rounding(sub: sp.csr_matrix, lam: float, kappa: float) -> float:
    """A bound on the users' side's rounding relative to P's largest entry: P's diagonal is a
    difference D - (D X' K^-1 X D), and K's condition number grows with G[i, i] / L[i, i]:
    about eps (1 + max G[i, i] / L[i, i])^2 (tests/test_measures.py holds EaseDual to it).
    Small against 1e-10 at EASE's usual lambda (ml-latest-small: G / L at most 1.4)."""
    g = np.asarray(sub.multiply(sub).sum(axis=1)).ravel()
    ratio = float(np.max(g / (lam + kappa * g), initial=0.0))
    return float(np.finfo(np.float64).eps) * (1.0 + ratio) ** 2


def mean_square(sub: sp.csr_matrix) -> float:
    """lambda's unit: the mean squared weight of the rows' entries (1 without entries)."""
    return float(np.mean(sub.data ** 2)) if sub.nnz else 1.0


@dataclass
class EaseFactor:
    """P = (G + lam I + kappa diag(G))^-1 for the items ``rows`` (keys, in P's order),
    G = X_rows X_rows^T their Gram matrix, ``lam`` = ease_lambda x lambda's unit, frozen at the
    build, ``kappa`` DLAE's factor (Measure.ease_kappa; 0: plain EASE). P is the leading
    n x n block of ``buffer`` (capacity x capacity, C order, e.g. a memory-mapped file), so
    items can join without moving it; the rest of the buffer is never touched."""

    rows: np.ndarray
    lam: float
    buffer: np.ndarray
    kappa: float = 0.0

    @property
    def p(self) -> np.ndarray:
        n = len(self.rows)
        return self.buffer[:n, :n]

    @classmethod
    def build(cls, m: sp.csr_matrix, rows: np.ndarray, lam: float, buffer: Buffer,
              capacity: int, kappa: float = 0.0) -> EaseFactor:
        """The inverse for ``rows`` of ``m`` (items x users), in a buffer of ``capacity`` >= n:
        the Gram matrix written block by block, then LAPACK's Cholesky inverse in place."""
        n = len(rows)
        factor = cls(np.asarray(rows, np.int64), float(lam), buffer(max(capacity, n, 1)),
                     float(kappa))
        sub = m[rows].tocsr()
        p = factor.p
        for start in range(0, n, BLOCK_ROWS):
            p[start:start + BLOCK_ROWS] = (sub[start:start + BLOCK_ROWS] @ sub.T).toarray()
        p[np.diag_indices(n)] *= 1.0 + kappa
        p[np.diag_indices(n)] += lam
        _cholesky_inverse(factor.buffer, n)
        _mirror_upper(p)  # dpotri fills the upper triangle
        return factor

    def update(self, m: sp.csr_matrix, old: sp.csr_matrix, new: sp.csr_matrix,
               threads: int = 1) -> int:
        """Fold changed users into P: ``old`` and ``new`` are their rows (users x items, the
        same users in the same order) before and after, ``m`` (items x users) the matrix after.
        Items of ``m`` with entries that are not yet rows join (at the end). Both changes are
        low-rank corrections of the old block, applied in one pass over it. Returns the rank
        (Woodbury terms plus joined items).

        Users (Woodbury): dG = sum over users of x d' + d x' + d d' (x the old row, d = new -
        old) = W' C W, W stacking each user's x and d, C = [[0, 1], [1, 1]] per user ([1] for a
        user with no old row), and with kappa each item whose G[i, i] moved adds e_i to W and
        kappa dG[i, i] to C's diagonal; so P1 = P - Y' Z with Y = W P, Z = (C^-1 + W P W')^-1 Y.
        Items (bordered inverse): with A = G[joined, rows] and the Schur complement
        S = G[joined, joined] + lam I + kappa diag(G[joined, joined]) - A P1 A', the inverse is
        [[P1 + (A P1)' S^-1 (A P1), -(A P1)' S^-1], [-S^-1 (A P1), S^-1]], where
        A P1 = A P - (A Y') Z needs only the old P."""
        n = len(self.rows)
        position = np.full(m.shape[0], -1, np.int64)
        position[self.rows] = np.arange(n)
        joined = np.flatnonzero((np.diff(m.indptr) > 0) & (position < 0))
        extra = len(joined)
        if n + extra > self.buffer.shape[0]:
            raise ValueError(f"ease: {n + extra} items do not fit the inverse's capacity "
                             f"{self.buffer.shape[0]}: a full refresh rebuilds it")
        old_cols, new_cols = _columns(old, position, n), _columns(new, position, n)
        w, c_inverse = _woodbury_terms(old_cols, new_cols)
        if self.kappa:
            w, c_inverse = _diagonal_terms(w, c_inverse, old_cols, new_cols, self.kappa)
        r = w.shape[0]
        if not r and not extra:
            return 0
        part = m[joined].tocsr()
        a = (part @ m[self.rows].T).tocsr()  # extra x n, columns in P's order
        p = self.p
        products = _sparse_times(sp.vstack([w, a]).tocsr(), p, threads)  # [W; A] P
        y, ap = products[:r], products[r:]
        if r:
            z = np.linalg.solve(c_inverse + np.asarray(w @ y.T), y)
            if extra:
                ap = ap - np.asarray(w @ ap.T).T @ z  # A P1
        if extra:
            gram = (part @ part.T).toarray()
            schur = gram + np.diag(self.lam + self.kappa * np.diag(gram)) - np.asarray(a @ ap.T)
            s_inverse = np.linalg.inv((schur + schur.T) / 2)
            s_inverse = (s_inverse + s_inverse.T) / 2
            t = s_inverse @ ap
        # the corrections are symmetric: the upper triangle's blocks, then mirrored (half the
        # multiply-adds of the whole square for one more pass over memory; BLAS's dsyr2k,
        # which writes one triangle in place, is slower than these gemm blocks)
        for start in range(0, n, BLOCK_ROWS):
            end = start + BLOCK_ROWS
            if r:
                p[start:end, start:] -= y[:, start:end].T @ z[:, start:]
            if extra:
                p[start:end, start:] += ap[:, start:end].T @ t[:, start:]
        _mirror_upper(p, threads)
        if extra:
            self.rows = np.r_[self.rows, joined].astype(np.int64)
            p = self.p
            p[n:, :n] = -t
            p[:n, n:] = -t.T
            p[n:, n:] = s_inverse
        return r + extra

    def lists(self, measure: Measure, active: np.ndarray | None = None,
              progress: Progress | None = None) -> Neighbors:
        """EASE lists of the rows flagged ``active`` (by row key; default all: rows whose item
        lost every entry stay in P, with zero weights, until the next full build), as ease()
        describes, from B = I - P diag(1 / diag P) computed block by block (P is kept)."""
        keys = self.rows if active is None else self.rows[active[self.rows]]
        p = self.p
        return _select(lambda at: (p, at), p.diagonal(), self.rows, np.sort(keys), measure,
                       progress)


@dataclass
class EaseDual:
    """The same P = (G + L)^-1, L = lam I + kappa diag(G), through the users' side (Woodbury):
    with X the users' rows (u users with entries, over the items ``rows``) and D = L^-1,

        P = D - D X' K^-1 X D,   K = I + X D X'   (u x u),

    so nothing n x n is formed: K's inverse costs u^3 multiply-adds, M = K^-1 X D (u x n,
    dense) u per entry of X, and a block of P's rows D_b - D_b X_b' M one row of M per entry
    of X in the block. The lists then cost about u^3 + nnz (u + n) multiply-adds and 8 u (u + n)
    bytes, against the inverse's n^3 and 8 n^2: the cheaper while users are fewer than items
    (``solver``). Nothing is kept: each refresh recomputes, at the current lambda'."""

    rows: np.ndarray
    xt: sp.csr_matrix  # X' scaled by D: n x u, rows in P's order (D X')
    m: np.ndarray  # K^-1 X D, u x n, C order
    d: np.ndarray  # D's diagonal
    diagonal: np.ndarray  # P's

    @classmethod
    def build(cls, m: sp.csr_matrix, rows: np.ndarray, lam: float, kappa: float = 0.0,
              threads: int = 1) -> EaseDual:
        """For ``rows`` of ``m`` (items x users)."""
        sub = m[np.asarray(rows, np.int64)].tocsr()
        sub = sub[:, np.flatnonzero(np.diff(sub.tocsc().indptr))]  # users with entries
        d = 1.0 / (lam + kappa * np.asarray(sub.multiply(sub).sum(axis=1)).ravel())
        dxt = sp.diags(d) @ sub  # D X', n x u
        u = sub.shape[1]
        k = np.ascontiguousarray((sub.T @ dxt).toarray())  # X D X'
        k[np.diag_indices(u)] += 1.0
        _cholesky_inverse(k, u)
        _mirror_upper(k, threads)
        mt = _sparse_times(dxt.tocsr(), k, threads)  # (K^-1 X D)' = D X' K^-1, n x u
        diagonal = d - np.asarray(dxt.multiply(mt).sum(axis=1)).ravel()
        return cls(np.asarray(rows, np.int64), dxt.tocsr(), np.ascontiguousarray(mt.T), d,
                   diagonal)

    def p_rows(self, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``at`` (positions in P) of P: D_b - D_b X_b' M, and their positions in it."""
        out = _sparse_times(self.xt[at], self.m, 1)
        np.negative(out, out=out)
        out[np.arange(len(at)), at] += self.d[at]
        return out, np.arange(len(at))

    def row_bounds(self, at: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """For the rows ``at`` of P, a bound on each row's largest |B| over the columns ``at``
        (B[a, b] = P[a, b] x scale[b]): off the diagonal P[a, b] = -sum_u xt[a, u] m[u, b],
        so |B[a, b]| <= sum_u |xt[a, u]| max_b |m[u, b] scale[b]|, about nnz + u n
        multiply-adds. It is the row's largest |B| for an item with one user (the long tail's
        many) and looser the more users an item has."""
        most = _user_bounds(self.m, at, scale)
        xt = self.xt[at]
        return np.asarray(abs(xt) @ most).ravel()

    def lists(self, measure: Measure, active: np.ndarray | None = None,
              progress: Progress | None = None) -> Neighbors:
        """As EaseFactor.lists."""
        keys = self.rows if active is None else self.rows[active[self.rows]]
        return _select(self.p_rows, self.diagonal, self.rows, np.sort(keys), measure, progress,
                       self.row_bounds)


def _mirror_upper(p: np.ndarray, threads: int = 2) -> None:
    """Copy the upper triangle of the square ``p`` onto its lower one: tiles that fit the
    cache, bands of rows on ``threads`` (compiled, without the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    n = len(p)
    bands = range(0, n, BLOCK_ROWS)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(lambda start: _mirror_band(p, start, min(start + BLOCK_ROWS, n)), bands))


@njit(nogil=True, cache=True)
def _mirror_band(p, start, end):
    """Rows start..end of the lower triangle from the upper one, in 64 x 64 tiles (a tile of
    the upper triangle read row by row is written column by column into cache-resident
    lines)."""
    tile = 64
    for i0 in range(start, end, tile):
        i1 = min(i0 + tile, end)
        for j0 in range(0, i1, tile):
            j1 = min(j0 + tile, i1)
            for j in range(j0, j1):
                for i in range(max(i0, j + 1), i1):
                    p[i, j] = p[j, i]


def _woodbury_terms(old: sp.csr_matrix, new: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """W and C^-1 of dG = W' C W for users whose rows go from ``old`` to ``new``: each user's
    old row x (if any) then d = new - old, interleaved; C^-1 block diagonal, [[-1, 1], [1, 0]]
    (the inverse of [[0, 1], [1, 1]]) per user with an old row, [1] for one without. Pairing
    x with d (not the old row with the new one, which nearly cancel) keeps C^-1 + W P W' well
    conditioned."""
    delta = (new - old).tocsr()
    delta.eliminate_zeros()
    moved = np.diff(delta.indptr) > 0
    old, delta = old[moved], delta[moved]
    has_old = np.diff(old.indptr) > 0
    stacked = sp.vstack([old[has_old], delta]).tocsr()
    users = np.flatnonzero(has_old)
    first = np.cumsum(np.r_[0, has_old + 1])[:-1].astype(np.int64)  # user j's first row in W
    order = np.empty(stacked.shape[0], np.int64)
    order[first[users]] = np.arange(len(users))
    order[first + has_old] = len(users) + np.arange(len(has_old))
    r = stacked.shape[0]
    c_inverse = np.zeros((r, r))
    at = first[users]
    c_inverse[at, at] = -1.0
    c_inverse[at, at + 1] = c_inverse[at + 1, at] = 1.0
    single = first[~has_old]
    c_inverse[single, single] = 1.0
    return stacked[order].tocsr(), c_inverse


def _diagonal_terms(w: sp.csr_matrix, c_inverse: np.ndarray, old: sp.csr_matrix,
                    new: sp.csr_matrix, kappa: float) -> tuple[sp.csr_matrix, np.ndarray]:
    """W and C^-1 with DLAE's diagonal change: kappa dG[i, i] e_i e_i' for each item whose
    squared-weight sum moved (``old`` / ``new``: the changed users' rows, in P's columns)."""
    before = np.asarray(old.multiply(old).sum(axis=0)).ravel()
    after = np.asarray(new.multiply(new).sum(axis=0)).ravel()
    moved = after - before
    items = np.flatnonzero(np.abs(moved) > 1e-12 * (after + before))  # not rounding's noise
    if not len(items):
        return w, c_inverse
    unit = sp.csr_matrix((np.ones(len(items)), (np.arange(len(items)), items)),
                         shape=(len(items), w.shape[1]))
    r = w.shape[0]
    grown = np.zeros((r + len(items), r + len(items)))
    grown[:r, :r] = c_inverse
    grown[np.arange(r, r + len(items)), np.arange(r, r + len(items))] = 1.0 / (kappa * moved[items])
    return sp.vstack([w, unit]).tocsr(), grown


def _sparse_times(w: sp.csr_matrix, p: np.ndarray, threads: int) -> np.ndarray:
    """W P (W sparse, P dense with any row stride: the leading block of a larger buffer, which
    scipy's product would first copy whole), in bands of P's columns on ``threads``: a band
    streams P's rows once (W by columns) into an accumulator that stays in cache, so P is read
    from memory once in all, not once per entry of W."""
    from concurrent.futures import ThreadPoolExecutor

    wc = w.tocsc()
    out = np.empty((w.shape[0], p.shape[1]))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(lambda lo: _sparse_times_band(
            wc.indptr, wc.indices, wc.data, p, out, lo, min(lo + SPARSE_BAND, p.shape[1])),
            range(0, p.shape[1], SPARSE_BAND)))
    return out


SPARSE_BAND = 128  # columns of P per task of _sparse_times (a 1,000-row band is 1 MiB)


@njit(nogil=True, cache=True)
def _sparse_times_band(indptr, indices, data, p, out, lo, hi):
    """out[:, lo:hi] = W P[:, lo:hi] for W in CSC (its columns are P's rows); each entry of
    out sums its terms in the order of P's rows, as scipy's product does."""
    width = hi - lo
    row = np.empty(width)
    acc = np.zeros((out.shape[0], width))
    for k in range(len(indptr) - 1):
        if indptr[k] == indptr[k + 1]:
            continue
        for j in range(width):
            row[j] = p[k, lo + j]
        for e in range(indptr[k], indptr[k + 1]):
            weight, i = data[e], indices[e]
            for j in range(width):
                acc[i, j] += weight * row[j]
    out[:, lo:hi] = acc


def _columns(rows: sp.csr_matrix, position: np.ndarray, n: int) -> sp.csr_matrix:
    """``rows`` (users x items) restricted to the factor's items, columns in P's order."""
    coo = rows.tocoo()
    at = position[coo.col]
    keep = at >= 0
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], at[keep])), shape=(rows.shape[0], n))


def ease(m: sp.csr_matrix, measure: Measure, progress: Progress | None = None,
         notice: Notice | None = None) -> Neighbors:
    """EASE lists: the ``k`` x n weights of largest magnitude over the whole of B (n rows),
    at most ``list_cap`` per row, each list ordered by (weight desc, key asc). Weights within
    rounding of zero are left out (e.g. between items no user links, which the exact inverse
    leaves at 0: they would be neighbours by the sign of a rounding error)."""
    rows = ease_rows(m, measure, notice)
    if solver(m, rows, measure) == USERS:
        return dual_lists(m, rows, measure, progress)
    factor = EaseFactor.build(m, rows, measure.ease_lambda * mean_square(m[rows]),
                              lambda size: np.zeros((size, size)), len(rows), measure.ease_kappa)
    return factor.lists(measure, progress=progress)


def dual_lists(m: sp.csr_matrix, rows: np.ndarray, measure: Measure,
               progress: Progress | None = None) -> Neighbors:
    """The lists of ``rows`` through the users' side (EaseDual), at the current lambda'."""
    return EaseDual.build(m, rows, measure.ease_lambda * mean_square(m[rows]),
                          measure.ease_kappa, measure.threads).lists(measure, progress=progress)


PRows = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # P's row positions -> (array, rows)


RowBounds = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (P's positions, scale) -> bounds
BOUND_SLACK = 1e-6  # relative: a bound and the |B| it bounds are both rounded (n eps each)


def _select(p_rows: PRows, diagonal: np.ndarray, rows: np.ndarray, keys: np.ndarray,
            measure: Measure, progress: Progress | None,
            row_bounds: RowBounds | None = None) -> Neighbors:
    """The lists of the items ``keys`` (ascending) among themselves, from P over ``rows``
    (``diagonal``: P's; ``p_rows(positions)``: an array holding those rows of P, columns in
    P's order, and where each is in it): one compiled pass over P's rows gives each row's
    ``cap`` largest |B| (no row keeps more), whose budget-th largest overall is the global
    threshold; blocks of rows run on ``threads``.

    With ``row_bounds`` (a bound on each row's largest |B|), the rows go in order of their
    bounds, largest first; once enough rows are done for the budget, the budget-th largest
    of their candidates is at most the global threshold, so a row whose bound is below it
    keeps no entry and is not computed at all (about half of a catalog's rows, the items
    with one to three users). The lists are the same, bit for bit."""
    n = len(keys)
    cap = min(list_cap(measure), n - 1)
    if cap <= 0:  # no item or one: no neighbours
        return Neighbors.empty()
    position = np.full(int(rows.max()) + 1, -1, np.int64)
    position[rows] = np.arange(len(rows))
    at = position[keys]
    scale = -1.0 / diagonal[at]  # B[a, b] = P[a, b] x scale[b]
    cols = np.zeros((n, cap), np.int64)
    vals = np.zeros((n, cap))  # a row left out keeps zeros: no entry
    largest = np.zeros(n)
    budget = min(measure.k * n, n * cap)  # >= 1: n >= 2, k >= 1
    if row_bounds is None:
        _candidate_pass(p_rows, at, scale, np.arange(n), cols, vals, largest, measure,
                        progress, 0, n)
        threshold = _largest(np.abs(vals).ravel(), budget).min()
    else:  # the rows left out keep zeros: no candidate at or above the threshold
        threshold = _bounded_passes(p_rows, at, scale,
                                    row_bounds(at, scale) * (1.0 + BOUND_SLACK), budget, cols,
                                    vals, largest, measure, progress)
    zero = NUMERICAL_ZERO * float(largest.max())
    row, nb, score, rank = _kept(cols, vals, keys, max(threshold, np.nextafter(zero, np.inf)))
    return Neighbors(keys[row], nb, score, rank)


@njit(nogil=True, cache=True)
def _kept(cols, vals, keys, least):
    """The candidates with |B| >= ``least``, each row's by weight desc, then key asc: (row,
    neighbour key, weight, rank within the row)."""
    n, cap = vals.shape
    count = np.zeros(n, np.int64)
    for i in range(n):
        for c in range(cap):
            count[i] += abs(vals[i, c]) >= least
    total = count.sum()
    row, nb = np.empty(total, np.int64), np.empty(total, np.int64)
    score, rank = np.empty(total), np.empty(total, np.int64)
    at = 0
    for i in range(n):
        if count[i] == 0:
            continue
        picked = np.empty(count[i], np.int64)
        c2 = 0
        for c in range(cap):
            if abs(vals[i, c]) >= least:
                picked[c2] = c
                c2 += 1
        picked = picked[np.argsort(keys[cols[i, picked]], kind="mergesort")]
        picked = picked[np.argsort(-vals[i, picked], kind="mergesort")]  # stable: key asc
        for r in range(len(picked)):
            row[at], nb[at] = i, keys[cols[i, picked[r]]]
            score[at], rank[at] = vals[i, picked[r]], r + 1
            at += 1
    return row, nb, score, rank


def _bounded_passes(p_rows: PRows, at: np.ndarray, scale: np.ndarray, bounds: np.ndarray,
                    budget: int, cols: np.ndarray, vals: np.ndarray, largest: np.ndarray,
                    measure: Measure, progress: Progress | None) -> float:
    """_select's passes with row bounds: rows in order of their bounds, largest first, in
    passes that double; before each pass after the first (whose rows' candidates reach the
    budget), the budget-th largest candidate so far (at most the final threshold) ends the
    order where the bounds fall below it. Returns the threshold: the budget-th largest
    candidate of the rows passed over (the others have none above it)."""
    n, cap = vals.shape
    order = np.argsort(-bounds, kind="stable")
    pos = _candidate_pass(p_rows, at, scale, order[:-(-budget // cap)], cols, vals, largest,
                          measure, progress, 0, n)
    best = _largest(np.abs(vals[order[:pos]]).ravel(), budget)  # of the rows done so far
    while pos < n:
        stop = pos + int(np.count_nonzero(bounds[order[pos:]] >= best.min()))  # bounds descend
        if stop == pos:
            break
        end = _candidate_pass(p_rows, at, scale, order[pos:min(stop, 2 * pos)], cols, vals,
                              largest, measure, progress, pos, n)
        best = _largest(np.concatenate([best, np.abs(vals[order[pos:end]]).ravel()]), budget)
        pos = end
    if progress:
        progress(n, n)
    return float(best.min())


def _largest(values: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` largest of ``values`` (count <= len), in no order."""
    return np.partition(values, len(values) - count)[len(values) - count:]


def _candidate_pass(p_rows: PRows, at: np.ndarray, scale: np.ndarray, which: np.ndarray,
                    cols: np.ndarray, vals: np.ndarray, largest: np.ndarray, measure: Measure,
                    progress: Progress | None, done: int, total: int) -> int:
    """_row_candidates of the rows ``which`` (indices into ``at``) in blocks of at most
    BLOCK_ROWS on ``threads``, a multiple of threads of them, each every so many rows of
    ``which`` (the bounded passes' rows come heaviest first); progress counts rows from
    ``done`` up to ``total``. Returns the new done."""
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, measure.threads)
    count = threads * -(-len(which) // (BLOCK_ROWS * threads))
    blocks = [which[b::count] for b in range(count)]

    def block(own: np.ndarray) -> None:
        p, row_at = p_rows(at[own])
        _row_candidates(p, row_at, own, at, scale, cols, vals, largest)

    with ThreadPoolExecutor(threads) as pool:
        for own, _ in zip(blocks, pool.map(block, blocks)):
            done += len(own)
            if progress:
                progress(done, total)
    return done


@njit(nogil=True, cache=True)
def _user_bounds(m, at, scale):
    """Each row u of ``m``: max_j |m[u, at[j]] x scale[j]| (EaseDual.row_bounds)."""
    out = np.zeros(m.shape[0])
    for u in range(m.shape[0]):
        most = 0.0
        for j in range(len(at)):
            most = max(most, abs(m[u, at[j]] * scale[j]))
        out[u] = most
    return out


@njit(nogil=True, cache=True)
def _row_candidates(p, row_at, own, at, scale, cols, vals, largest):
    """For the rows i = own[r] of B (B[i, j] = P[at[i], at[j]] x scale[j], 0 on the diagonal;
    row i of P is p[row_at[r]]): into cols[i], vals[i] and largest[i], the ``cap`` (cols'
    width) entries of largest magnitude, any order (ties at the cut: the lower columns), and
    the row's largest |B|. The cut is the cap-th largest magnitude, found by selection (no
    sort, no heap): a sample of every ``SAMPLE_STEP``-th entry gives a lower bound that about
    1.5 cap entries pass, and the exact cut is selected among those (among all, in the rare
    row where fewer than cap pass)."""
    n, cap = len(at), cols.shape[1]
    magnitude = np.empty(n)
    candidates = np.empty(n, np.int64)
    scratch = np.empty(n)
    base = at[0]
    contiguous = True  # at[j] == base + j for every j: P's columns are read without a gather
    for j in range(n):  # (not from the ends alone: after items join P, ``at`` may be a
        if at[j] != base + j:  # permutation of a contiguous range)
            contiguous = False
            break
    samples = n // SAMPLE_STEP
    rank = (cap * 3) // (2 * SAMPLE_STEP)  # the bound's rank in the sample
    for r in range(len(row_at)):
        i = own[r]
        row = row_at[r]
        if contiguous:
            for j in range(n):
                magnitude[j] = abs(p[row, base + j] * scale[j])
        else:
            for j in range(n):
                magnitude[j] = abs(p[row, at[j]] * scale[j])
        magnitude[i] = 0.0
        top = 0.0
        for j in range(n):
            top = max(top, magnitude[j])
        largest[i] = top
        count = 0
        if rank < samples:
            for t in range(samples):
                scratch[t] = magnitude[t * SAMPLE_STEP]
            bound = _kth_smallest(scratch[:samples], samples - rank)
            for j in range(n):  # branch-free: the candidates are a few percent of the row
                candidates[count] = j
                count += magnitude[j] >= bound
        if count >= cap:
            for t in range(count):
                scratch[t] = magnitude[candidates[t]]
        else:
            count = n
            candidates[:] = np.arange(n)
            scratch[:] = magnitude
        cut = _kth_smallest(scratch[:count], count - cap)  # cap < n, so count >= cap
        c = 0
        for t in range(count):
            j = candidates[t]
            if magnitude[j] > cut:
                cols[i, c] = j
                c += 1
        for t in range(count):
            if c == cap:
                break
            j = candidates[t]
            if magnitude[j] == cut:
                cols[i, c] = j
                c += 1
        for k in range(cap):
            j = cols[i, k]
            vals[i, k] = 0.0 if j == i else p[row, at[j]] * scale[j]


SAMPLE_STEP = 16  # _row_candidates' sample: every 16th entry of a row


@njit(nogil=True, cache=True)
def _kth_smallest(a, k):
    """The k-th smallest value of ``a`` (from 0), by quickselect (Hoare's partition, median
    of three); reorders ``a``."""
    lo, hi = 0, len(a) - 1
    while hi > lo:
        mid = (lo + hi) >> 1
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return a[k]
    return a[k]


@functools.cache
def _lapack(name: str):
    """LAPACK's ``name`` (uplo, n, a, lda, info) from SciPy's Cython LAPACK, called through
    ctypes. scipy.linalg.lapack's wrappers hold the GIL for the whole call (the whole
    factorization of the inverse); a ctypes call releases it, so the tail and the HTTP server keep
    answering while a background refresh inverts."""
    import ctypes

    from scipy.linalg import cython_lapack  # here, not at the top: it slows every start

    capsule = cython_lapack.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    int_p = ctypes.POINTER(ctypes.c_int)
    prototype = ctypes.CFUNCTYPE(None, ctypes.c_char_p, int_p, ctypes.c_void_p, int_p, int_p)
    return prototype(get_pointer(capsule, get_name(capsule)))


def _cholesky_inverse(buffer: np.ndarray, n: int) -> None:
    """Overwrites the upper triangle of the leading n x n block of the C-ordered ``buffer``
    (symmetric positive definite there) with that of its inverse (LAPACK dpotrf then dpotri
    on the Fortran-lower triangle, which is C's upper; the leading dimension is the
    buffer's)."""
    import ctypes

    if not buffer.flags.c_contiguous or buffer.dtype != np.float64:
        raise ValueError("ease: the inverse's buffer must be C-ordered float64")
    size, lda, info = ctypes.c_int(n), ctypes.c_int(buffer.shape[1]), ctypes.c_int(0)
    for step, what in (("dpotrf", "the Gram matrix is not positive definite"),
                       ("dpotri", "inverse failed")):
        _lapack(step)(b"L", ctypes.byref(size), buffer.ctypes.data, ctypes.byref(lda),
                      ctypes.byref(info))
        if info.value != 0:
            raise np.linalg.LinAlgError(f"ease: {what} ({info.value})")
