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

The inverse is dense (n x n for n items), so only the ``ease_max_items`` most popular items
take part, and every refresh with new events rebuilds the lists in full (no exact incremental
update). Cost: n^3 / 3 + 2 n^3 / 3 multiply-adds (Cholesky, inverse), about 16 n^2 bytes.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from .base import Measure, Model, Notice, Progress
from .engine import Neighbors

NUMERICAL_ZERO = 1e-9  # relative to the largest |weight|
LIST_CAP_FACTOR = 8  # a list holds at most this many times k entries


class Ease(Model):
    name = "ease"
    incremental = False

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


def ease_weights(sub: sp.csr_matrix, ease_lambda: float) -> np.ndarray:
    """B = I - P diag(1 / diag P), P = (G + lambda' I)^-1, G = sub sub^T the rows' Gram matrix,
    lambda' = ease_lambda x the mean squared weight; B's diagonal zero. Row a, column b: what
    history row a adds to b's score."""
    scale = float(np.mean(sub.data ** 2)) if sub.nnz else 1.0
    p = np.ascontiguousarray((sub @ sub.T).toarray(), dtype=np.float64)
    p[np.diag_indices_from(p)] += ease_lambda * scale
    _cholesky_inverse(p)
    for start in range(0, len(p), 1024):  # dpotri fills the upper triangle: mirror it
        end = start + 1024
        p[start:end, :start] = p[:start, start:end].T
        square = p[start:end, start:end]
        square[...] = np.triu(square) + np.triu(square, 1).T
    diag = p.diagonal().copy()
    p /= -diag[None, :]  # B[a, b] = -P[a, b] / P[b, b]
    np.fill_diagonal(p, 0.0)
    return p


@functools.cache
def _lapack(name: str):
    """LAPACK's ``name`` (uplo, n, a, lda, info) from SciPy's Cython LAPACK, called through
    ctypes. scipy.linalg.lapack's wrappers hold the GIL for the whole call (measured: 0.9 s of
    a 5,000-item inverse); a ctypes call releases it, so the tail and the HTTP server keep
    answering while a background refresh inverts."""
    import ctypes

    from scipy.linalg import cython_lapack  # here: scipy.linalg adds ~0.1 s to every start

    capsule = cython_lapack.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    int_p = ctypes.POINTER(ctypes.c_int)
    prototype = ctypes.CFUNCTYPE(None, ctypes.c_char_p, int_p, ctypes.c_void_p, int_p, int_p)
    return prototype(get_pointer(capsule, get_name(capsule)))


def _cholesky_inverse(a: np.ndarray) -> None:
    """Overwrites the upper triangle of the symmetric positive definite C-ordered ``a`` with
    that of its inverse (LAPACK dpotrf then dpotri on the Fortran-lower triangle, which is
    C's upper)."""
    import ctypes

    n, info = ctypes.c_int(a.shape[0]), ctypes.c_int(0)
    for step, what in (("dpotrf", "the Gram matrix is not positive definite"),
                       ("dpotri", "inverse failed")):
        _lapack(step)(b"L", ctypes.byref(n), a.ctypes.data, ctypes.byref(n),
                      ctypes.byref(info))
        if info.value != 0:
            raise np.linalg.LinAlgError(f"ease: {what} ({info.value})")


def ease(m: sp.csr_matrix, measure: Measure, progress: Progress | None = None,
         notice: Notice | None = None) -> Neighbors:
    """EASE lists: the ``k`` x n weights of largest magnitude over the whole of B (n rows),
    at most ``list_cap`` per row, each list ordered by (weight desc, key asc). Weights within
    rounding of zero are left out (e.g. between items no user links, which the exact inverse
    leaves at 0: they would be neighbours by the sign of a rounding error)."""
    rows = ease_rows(m, measure, notice)
    if not len(rows):
        return Neighbors.empty()
    n = len(rows)
    cap = min(list_cap(measure), n - 1)
    if cap <= 0:  # one item: no neighbours
        return Neighbors.empty()
    p = ease_weights(m[rows], measure.ease_lambda)
    zero = NUMERICAL_ZERO * max(p.max(), -p.min())
    step = max(1, measure.block_cells // n)
    # pass 1: each row's cap largest magnitudes (no row keeps more), whose budget-th largest
    # overall is the global threshold; blocks keep the temporaries at block_cells entries
    best, kept = [], []
    for start in range(0, n, step):
        magnitude = np.abs(p[start:start + step])
        best.append(_row_best(magnitude, cap))
        kept.append(np.take_along_axis(magnitude, best[-1], axis=1).ravel())
    magnitudes = np.concatenate(kept)
    budget = min(measure.k * n, len(magnitudes))  # >= 1: n >= 2, k >= 1
    threshold = np.partition(magnitudes, len(magnitudes) - budget)[len(magnitudes) - budget]
    # pass 2: each row's kept entries, ordered
    parts = []
    for block, start in enumerate(range(0, n, step)):
        cols = best[block]
        vals = np.take_along_axis(p[start:start + step], cols, axis=1)
        keep = (np.abs(vals) >= threshold) & (np.abs(vals) > zero)
        count = keep.sum(axis=1)
        # order within a row: weight desc, then key asc; dropped entries sort last
        key = np.where(keep, -vals, np.inf)
        order = np.lexsort((cols, key), axis=1) if cols.size else cols
        nb = rows[np.take_along_axis(cols, order, axis=1)]
        score = np.take_along_axis(vals, order, axis=1)
        parts.append(Neighbors.from_rows(rows[start:start + step], count, nb, score,
                                         np.empty(0, np.int64)))
        if progress:
            progress(min(start + step, n), n)
    return Neighbors.concat(parts)


def _row_best(magnitude: np.ndarray, cap: int) -> np.ndarray:
    """Column indices of each row's ``cap`` largest magnitudes (any order)."""
    if cap >= magnitude.shape[1]:
        return np.broadcast_to(np.arange(magnitude.shape[1]), magnitude.shape).copy()
    return np.argpartition(-magnitude, cap - 1, axis=1)[:, :cap]
