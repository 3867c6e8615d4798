"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

The item-item weights B minimize |X - X B|^2 + lambda |B|^2 with diag(B) = 0, in closed form
from the inverse of the items' Gram matrix. B is dense and asymmetric; rtsql keeps each item's
top-K positive weights as its list, so recommend() sums them like any other list. The inverse
is dense (n x n for n items), so only the ``ease_max_items`` most popular items take part, and
every refresh with new events rebuilds the lists in full (no exact incremental update).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import Measure, Model, Notice, Progress
from .engine import Block, Neighbors, top_k

NUMERICAL_ZERO = 1e-9  # relative to the largest |weight|


class Ease(Model):
    name = "ease"
    incremental = False

    def full(self, m: sp.csr_matrix, measure: Measure, progress: Progress | None = None,
             notice: Notice | None = None) -> Neighbors:
        return ease(m, measure, progress, notice)


def ease(m: sp.csr_matrix, measure: Measure, progress: Progress | None = None,
         notice: Notice | None = None) -> Neighbors:
    """EASE (Steck 2019): the closed-form item-item weights B = I - P diag(1 / diag P), with
    P = (G + lambda I)^-1 and G = M M^T the rows' Gram matrix, B's diagonal zero; row a's list
    is its top-K positive B[a, b] (a user's score of b is the sum of B[a, b] over history rows
    a, as recommend() sums list scores). Dense: about 16 n^2 bytes and n^3 multiply-adds for n
    rows, so only the ``ease_max_items`` rows with the most features (ties: the lower key) enter;
    the others get no list and are no one's neighbour (``notice`` says so)."""
    present = np.diff(m.indptr)
    rows = np.flatnonzero(present > 0)
    if len(rows) > measure.ease_max_items:
        order = np.lexsort((rows, -present[rows]))
        rows = np.sort(rows[order[:measure.ease_max_items]])
        if notice:
            notice(f"ease: {len(order)} items have interactions; the {len(rows)} most popular "
                   f"(setting ease_max_items) get lists, the rest none: raise ease_max_items "
                   f"(memory about 16 x n^2 bytes) or use similarity cosine")
    if not len(rows):
        return Neighbors.empty()
    from scipy.linalg import lapack  # imported here: scipy.linalg adds ~0.1 s to every start

    sub = m[rows]
    gram = (sub @ sub.T).toarray()
    gram[np.diag_indices_from(gram)] += measure.ease_lambda
    del sub
    factor, info = lapack.dpotrf(gram, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"ease: the Gram matrix is not positive definite ({info})")
    p, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"ease: inverse failed ({info})")
    for start in range(0, len(p), 1024):  # dpotri fills the upper triangle: mirror it
        end = start + 1024
        p[start:end, :start] = p[:start, start:end].T
        square = p[start:end, start:end]
        square[...] = np.triu(square) + np.triu(square, 1).T
    diag = p.diagonal().copy()
    p /= -diag[None, :]  # B[a, b] = -P[a, b] / P[b, b]
    np.fill_diagonal(p, 0.0)
    # weights within rounding of zero are zero (e.g. between items no user links, which the
    # exact inverse leaves at 0): they would be neighbours by the sign of a rounding error;
    # applied per block, so no n x n temporary is made
    threshold = NUMERICAL_ZERO * max(p.max(), -p.min())
    n = len(rows)
    step = max(1, measure.block_cells // n)
    parts = []
    for start in range(0, n, step):
        chunk = p[start:start + step]
        indptr = np.arange(chunk.shape[0] + 1, dtype=np.int64) * n
        # list entries are original row keys
        block = Block(rows[start:start + step], indptr, np.tile(rows, chunk.shape[0]),
                      np.where(chunk > threshold, chunk, 0.0).ravel())
        parts.append(top_k(block, measure.list_length, n))
        if progress:
            progress(min(start + step, n), n)
    return Neighbors.concat(parts)
