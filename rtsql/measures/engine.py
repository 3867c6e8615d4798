"""The blocked sparse engine: top-K lists of a matrix's rows, full and exact-incremental.

A measure (cosine.py, rp3beta.py) weights the matrix; this engine multiplies it. One engine serves item-item (rows = items, features = users), user-user (rows = users,
features = items) and content (rows = items, features = catalog terms). Rows are processed in
blocks sized by their multiply-adds, so only about ``block_cells`` similarities per thread are in
memory at once. Full lists come from the fused kernel (kernel.py: numba, products and top-K in
one pass per row); the incremental update, which needs every entry of a changed row, uses a
block's sparse product (scipy's C code) and a per-row partition and sort of padded 2-D arrays
(numpy's C code), which compute the same bits. All release the GIL, so blocks run on
``threads`` threads. Cost grows with the multiply-adds, sum over features of
(rows having the feature)^2, and with the entries the products produce, not with n^2.

Similarity of rows a and b (docs/design.md, "Exactness of the incremental refresh"), for
cosine (scale = 1 / |row|; other measures weight left, right and scale otherwise):
    sim(a, b) = dot(a, b) * (1 / |a|) * (1 / |b|) * support / (support + shrinkage)
(in that order of floating-point operations, which the Spark job repeats)
kept when sim > 0 and support >= min_support, where support is the number of features both rows
have. Shrinkage multiplies by a support factor (as in Koren's neighbourhood models) instead of
adding to the denominator: that keeps sim unchanged when all weights are scaled by one factor,
which forward decay relies on (moving the landmark scales every weight). Lists are ordered by score descending
then neighbour key ascending, the tie rule that makes incremental and full results comparable.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import scipy.sparse as sp

from .params import Measure, Progress, Weights


@dataclass
class Neighbors:
    """Flat top-K lists: row[i] has neighbour nb[i] with score[i] at rank[i] (1-based)."""

    row: np.ndarray
    nb: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    # rows whose list holds every positive neighbour (fewer than the stored length exist)
    complete_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @classmethod
    def empty(cls) -> "Neighbors":
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64))

    @classmethod
    def concat(cls, parts: list["Neighbors"]) -> "Neighbors":
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("row", "nb", "score", "rank", "complete_rows")))

    @classmethod
    def from_rows(cls, rows: np.ndarray, count: np.ndarray, nb: np.ndarray, score: np.ndarray,
                  complete_rows: np.ndarray) -> "Neighbors":
        """From per-row arrays (rows x width, the first ``count`` slots of each row used)."""
        used = np.arange(nb.shape[1])[None, :] < count[:, None]
        rank = np.broadcast_to(np.arange(1, nb.shape[1] + 1), nb.shape)
        return cls(np.repeat(rows, count).astype(np.int64), nb[used], score[used],
                   rank[used].astype(np.int64), np.asarray(complete_rows, np.int64))

    def row_count(self) -> int:
        return int(np.count_nonzero(np.bincount(self.row))) if len(self.row) else 0

    def where(self, mask: np.ndarray) -> "Neighbors":
        return Neighbors(self.row[mask], self.nb[mask], self.score[mask], self.rank[mask],
                         self.complete_rows)


@dataclass
class Block:
    """Similarities of some rows against all rows, sparse: row ``rows[r]`` has ``sims[e]`` with
    column ``cols[e]`` for e in ``indptr[r]:indptr[r + 1]``. Entries <= 0 are not neighbours (the
    row itself, pairs below min_support, negative content dots); absent pairs share no feature."""

    rows: np.ndarray
    indptr: np.ndarray
    cols: np.ndarray
    sims: np.ndarray

    def entry_rows(self) -> np.ndarray:
        return np.repeat(self.rows, np.diff(self.indptr))


class RowSimilarity:
    """Similarities of chosen rows of ``m`` (entities x features, CSR, cleaned by
    rtsql.measures.rows_matrix) against all rows, as ``weights`` define them."""

    def __init__(self, m: sp.csr_matrix, weights: Weights, measure: Measure):
        # the products are of the raw weights, scaled afterwards (dot * scale_a * scale_b):
        # weights that are multiples of a power of two (event-type weights, ratings, no decay)
        # then give exact dot products in any order of summation, so every engine (this one,
        # the Spark job) computes the same bits and exact ties stay ties
        self.m, self.mt, self.scale = weights.left, weights.right, weights.scale
        self.present = np.diff(m.indptr) > 0
        self.measure = measure
        self.needs_support = measure.min_support > 1 or measure.shrinkage > 0
        self._matrix = m
        # the entries a row's product can produce (its multiply-adds, at most n): sizes blocks
        per_feature = np.diff(self.mt.indptr).astype(np.float64)
        row_of = np.repeat(np.arange(self.n), np.diff(self.m.indptr))
        self.cost = np.minimum(np.bincount(row_of, per_feature[self.m.indices], self.n), self.n)

    @cached_property
    def binary(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """The matrix with every entry 1, and its transpose: their product counts support."""
        binary = self._matrix.copy()
        binary.data[:] = 1.0
        return binary, binary.T.tocsr()

    @property
    def n(self) -> int:
        return self.m.shape[0]

    def split(self, rows: np.ndarray) -> list[np.ndarray]:
        """Consecutive pieces of ``rows`` whose products hold about ``block_cells`` entries."""
        if not len(rows):
            return []
        used = np.cumsum(self.cost[rows]) // max(self.measure.block_cells, 1)
        return np.split(rows, np.flatnonzero(np.diff(used)) + 1)

    def block(self, rows: np.ndarray) -> Block:
        """Similarities of ``rows`` against every row, the row itself excluded."""
        product = self.m[rows] @ self.mt  # sparse dot products (scipy releases the GIL)
        entry_rows = np.repeat(rows, np.diff(product.indptr))
        sims = product.data * self.scale[entry_rows] * self.scale[product.indices]
        if self.needs_support:
            binary, binary_t = self.binary
            support = _values_at(binary[rows] @ binary_t, product)
            if self.measure.shrinkage > 0:
                sims *= support / (support + self.measure.shrinkage)
            sims[support < self.measure.min_support] = 0.0
        block = Block(rows, product.indptr, product.indices, sims)
        sims[product.indices == entry_rows] = 0.0  # a row is not its own neighbour
        return block

    def map_blocks(self, rows: np.ndarray, work: Callable[[Block], object],
                   progress: Progress | None = None) -> list:
        """``work(block)`` for each block of ``rows``, on ``measure.threads`` threads, in order.
        The sparse products and numpy's sorts release the GIL, so threads use every core."""
        return self.map_pieces(rows, lambda piece: work(self.block(piece)), progress)

    def map_pieces(self, rows: np.ndarray, work: Callable[[np.ndarray], object],
                   progress: Progress | None = None) -> list:
        """``work(piece)`` for each piece of ``rows`` (``split``), on ``measure.threads``
        threads, in order."""
        pieces, results, done = self.split(rows), [], 0
        workers = max(1, min(self.measure.threads, len(pieces)))
        with ThreadPoolExecutor(workers) as pool:
            for piece, result in zip(pieces, pool.map(work, pieces)):
                results.append(result)
                done += len(piece)
                if progress:
                    progress(done, len(rows))
        return results


def _values_at(other: sp.csr_matrix, pattern: sp.csr_matrix) -> np.ndarray:
    """Entries of ``other`` at the positions of ``pattern``'s entries (a subset of other's)."""
    if other.nnz == pattern.nnz and np.array_equal(other.indptr, pattern.indptr) \
            and np.array_equal(other.indices, pattern.indices):
        return other.data  # the same products in the same order: the usual case
    n = other.shape[1]
    key_other = np.repeat(np.arange(other.shape[0]), np.diff(other.indptr)) * n + other.indices
    key = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr)) * n + pattern.indices
    order = np.argsort(key_other)
    return other.data[order[np.searchsorted(key_other, key, sorter=order)]]


def top_k(block: Block, k: int, n_columns: int) -> Neighbors:
    """Top-k positive entries of each row of ``block``, ordered by (score desc, column asc)."""
    count, nb, score, few = top_per_row(block.indptr, block.cols, block.sims, k)
    complete = block.rows[few | (k >= n_columns)]  # the list holds every neighbour
    return Neighbors.from_rows(block.rows, count, nb, score, complete)


def top_per_row(indptr: np.ndarray, nb: np.ndarray, score: np.ndarray, limit: int):
    """The ``limit`` best positive entries of each segment ``indptr[r]:indptr[r + 1]``, ordered
    by (score desc, nb asc). Returns the count per row, nb and score as rows x limit arrays, and
    which rows have fewer than ``limit`` positive entries.

    Rows of similar length are padded into 2-D arrays, so numpy's per-row partition and sort do
    the work in C: a row's threshold is its limit-th largest score, entries at or above it are
    the candidates (limit of them, more on ties), and only those are sorted.
    """
    n_rows = len(indptr) - 1
    out_nb = np.full((n_rows, limit), -1, np.int64)
    out_score = np.zeros((n_rows, limit))
    count = np.zeros(n_rows, np.int64)
    few = np.ones(n_rows, bool)
    lengths = np.diff(indptr)
    padded_score = np.append(score, 0.0)  # a padding slot points at the trailing 0
    for group in _groups_of_similar_length(lengths):
        offsets = np.arange(lengths[group].max())
        index = indptr[group][:, None] + offsets
        index[offsets >= lengths[group][:, None]] = len(score)
        sims = padded_score[index]
        width = sims.shape[1]
        if width > limit:
            kth = np.partition(sims, width - limit, axis=1)[:, width - limit]
            few[group] = kth <= 0
            keep = sims >= np.maximum(kth, np.finfo(np.float64).tiny)[:, None]
        else:
            keep = sims > 0
            few[group] = np.count_nonzero(keep, axis=1) < limit
        c, s, n = _ordered(index, sims, keep, nb, limit)
        out_nb[group, :c.shape[1]], out_score[group, :s.shape[1]], count[group] = c, s, n
    return count, out_nb, out_score, few


def _groups_of_similar_length(lengths: np.ndarray, cells: int = 1 << 21):
    """Non-empty rows in groups of similar length, each padding to at most ~``cells`` cells."""
    order = np.argsort(lengths, kind="stable")
    order = order[lengths[order] > 0]
    start = 0
    while start < len(order):
        widths = lengths[order[start:]]  # ascending: a group's width is its last row's length
        fits = np.arange(1, len(widths) + 1) * widths <= cells
        end = start + max(1, int(np.argmin(fits)) if not fits.all() else len(widths))
        yield order[start:end]
        start = end


def _ordered(index: np.ndarray, sims: np.ndarray, keep: np.ndarray, nb: np.ndarray, limit: int):
    """Kept entries of each row, ordered by (sim desc, nb asc) and cut to ``limit``."""
    kept = np.count_nonzero(keep, axis=1)
    r, c = np.nonzero(keep)  # row-major
    position = np.arange(len(r)) - np.repeat(np.cumsum(kept) - kept, kept)
    width = int(kept.max()) if len(kept) else 0
    neg = np.full((len(kept), width), np.inf)  # -sim; empty slots sort last
    cols = np.full((len(kept), width), np.iinfo(np.int64).max)
    neg[r, position], cols[r, position] = -sims[r, c], nb[index[r, c]]
    order = np.argsort(neg, axis=1)
    sorted_neg = np.take_along_axis(neg, order, axis=1)
    equal = (sorted_neg[:, 1:] == sorted_neg[:, :-1]) & np.isfinite(sorted_neg[:, 1:])
    tied = np.flatnonzero(equal.any(axis=1))
    if len(tied):  # equal scores: the lower neighbour key first (the tie rule): sort those rows
        # by key, then stably by score (two C sorts, faster than np.lexsort here)
        by_key = np.argsort(cols[tied], axis=1)
        by_score = np.argsort(np.take_along_axis(neg[tied], by_key, axis=1), axis=1, kind="stable")
        order[tied] = np.take_along_axis(by_key, by_score, axis=1)
    order = order[:, :limit]
    return (np.take_along_axis(cols, order, axis=1), -np.take_along_axis(neg, order, axis=1),
            np.minimum(kept, limit))


def full(m: sp.csr_matrix, weights: Weights, measure: Measure,
         progress: Progress | None = None) -> Neighbors:
    """Top-K lists of every non-empty row."""
    sim = RowSimilarity(m, weights, measure)
    rows = np.flatnonzero(sim.present)
    return _lists_for(sim, rows, progress)


def _lists_for(sim: RowSimilarity, rows: np.ndarray, progress: Progress | None = None
               ) -> Neighbors:
    """The lists of ``rows``: per block of rows, the fused kernel (kernel.top_lists) computes
    the products and keeps the top entries in one compiled pass, the same bits as
    ``top_k(sim.block(rows))`` without holding the block's products."""
    from .kernel import top_lists  # numba: imported where lists are built, not by Spark's tasks

    length, measure = sim.measure.list_length, sim.measure

    def lists(piece: np.ndarray) -> Neighbors:
        count, nb, score, few = top_lists(
            piece.astype(np.int64), sim.m.indptr, sim.m.indices, sim.m.data, sim.mt.indptr,
            sim.mt.indices, sim.mt.data, sim.scale, sim.n, length, float(measure.shrinkage),
            float(measure.min_support), sim.needs_support)
        return Neighbors.from_rows(piece, count, nb, score, piece[few | (length >= sim.n)])

    return Neighbors.concat(sim.map_pieces(rows, lists, progress))


@dataclass
class StoredLists:
    """What the incremental update needs to know of the stored lists, per entity: the score and
    neighbour of its last stored entry (-inf for a complete list, which holds every positive
    neighbour), how many entries it stores (read for truncated lists only), and which stored
    entries point at changed rows."""

    kth_score: np.ndarray  # per entity
    kth_nb: np.ndarray  # per entity
    count: np.ndarray  # per entity with a truncated list
    pointing_row: np.ndarray  # entities whose list holds a changed entity (once per entry)


@dataclass
class IncrementalResult:
    replace_rows: np.ndarray  # entities whose stored lists are replaced by `lists`
    lists: Neighbors  # new complete lists of replaced rows (changed ones recomputed)
    candidates: Neighbors  # (j <- changed i) entries that may enter j's list; rank unused
    merge_rows: np.ndarray  # entities j whose new list = top-L(stored minus changed, candidates)


def incremental(m: sp.csr_matrix, weights: Weights, changed: np.ndarray, stored: StoredLists,
                measure: Measure) -> IncrementalResult:
    """Exact update after the rows ``changed`` of ``matrix`` changed (docs/design.md).

    A stored list holds a row's top entries, up to ``measure.list_length`` (a buffer beyond the k that
    are served); every entry it lacks ranks below its last one, or it is complete (it holds every
    positive neighbour). Changed rows get new lists. Another row j can only see sim(j, i) move for
    changed i; its new list is top-L(its entries not pointing at changed rows + the changed
    entries that now rank above its last entry, or all positive ones for a complete list). That
    is exact for as many entries as it keeps, so the row is recomputed from the matrix only when
    fewer than k would remain.
    """
    sim = RowSimilarity(m, weights, measure)
    changed = np.unique(changed[changed < sim.n])
    kth_score = _pad(stored.kth_score, sim.n, -np.inf)
    kth_nb = _pad(stored.kth_nb, sim.n, np.iinfo(np.int64).max)
    count = _pad(stored.count, sim.n, 0)
    def lists_and_candidates(block: Block):
        # candidates j <- i: sim(j, i) = sim(i, j) ranks above j's last stored entry
        i, j, s = block.entry_rows(), block.cols, block.sims
        above = (s > kth_score[j]) | ((s == kth_score[j]) & (i < kth_nb[j]))
        above &= s > 0
        return (top_k(block, measure.list_length, sim.n),
                Neighbors(j[above], i[above], s[above], np.zeros(int(above.sum()), np.int64)))

    results = sim.map_blocks(changed, lists_and_candidates)
    lists = [lists for lists, _ in results]
    cands = [cands for _, cands in results]
    candidates = Neighbors.concat(cands)
    is_changed = np.zeros(sim.n, bool)
    is_changed[changed] = True
    candidates = candidates.where(~is_changed[candidates.row])

    # a truncated list that would keep fewer than k entries is recomputed
    pointing = stored.pointing_row[~is_changed[_clip(stored.pointing_row, sim.n)]]
    affected = np.union1d(pointing, candidates.row)
    truncated = np.isfinite(kth_score[affected])
    lost = np.bincount(pointing, minlength=sim.n)[affected]
    gained = np.bincount(candidates.row, minlength=sim.n)[affected]
    recompute = affected[truncated & (count[affected] - lost + gained < measure.k)]
    merge_rows = np.setdiff1d(affected, recompute)
    if len(recompute):
        lists.append(_lists_for(sim, recompute))
    candidates = candidates.where(np.isin(candidates.row, merge_rows))
    return IncrementalResult(np.union1d(changed, recompute), Neighbors.concat(lists), candidates,
                             merge_rows)


def merge_lists(kept: dict, candidates: Neighbors, rows: np.ndarray,
                 truncated: np.ndarray, stored: int
                 ) -> tuple[Neighbors, np.ndarray, np.ndarray]:
    """The second half of the incremental update (after ``incremental``), for the rows it
    merges. New lists of ``rows``: their kept entries (in list order, with their stored ``rank``)
    plus candidates, ordered by (score desc, neighbour asc) and cut to ``stored``; complete when
    the old list was and nothing was cut. Also: which kept entries stay at their stored rank,
    and which entries of the new lists are those.

    ``kept`` holds the stored entries of ``rows`` that do not point at changed rows, as arrays
    ``row``, ``nb``, ``score`` and ``rank``, in any order.

    A merge, not a sort: a row's kept entries are placed by their stored rank (a list is in
    order), its candidates are few and sorted once; one compiled pass per row
    (kernel.merge_rows) walks both.
    """
    from .kernel import merge_rows  # compiled: the Spark job, which ships this module, never merges

    n_rows = len(rows)
    slot = np.zeros(int(rows.max(initial=-1)) + 1, np.int64)  # rows (sorted) -> 0..n_rows - 1
    slot[rows] = np.arange(n_rows)
    k_row, k_rank = np.asarray(kept["row"], np.int64), np.asarray(kept["rank"], np.int64)
    k_grid = np.full((n_rows, int(k_rank.max(initial=0))), -1, np.int64)
    k_grid[slot[k_row], k_rank - 1] = np.arange(len(k_row))
    cr = slot[np.asarray(candidates.row, np.int64)]
    order = np.lexsort((candidates.nb, -candidates.score, cr))  # candidates are few
    cr, c_nb, c_score = cr[order], candidates.nb[order], candidates.score[order]
    c_count = np.bincount(cr, minlength=n_rows)
    c_start = np.r_[0, np.cumsum(c_count)].astype(np.int64)
    out_nb = np.full(n_rows * stored, -1, np.int64)
    out_score = np.zeros(n_rows * stored)
    out_stays = np.zeros(n_rows * stored, bool)
    stays = np.zeros(len(k_row), bool)
    count = np.zeros(n_rows, np.int64)
    merge_rows(k_grid, np.asarray(kept["nb"], np.int64), np.asarray(kept["score"], np.float64),
               k_rank, c_start, np.asarray(c_nb, np.int64),
               np.asarray(c_score, np.float64), stored, out_nb, out_score, out_stays, stays,
               count)
    total = np.count_nonzero(k_grid >= 0, axis=1) + c_count
    complete = np.setdiff1d(rows[total <= stored], truncated)
    merged = Neighbors.from_rows(rows, count, out_nb.reshape(n_rows, stored),
                                 out_score.reshape(n_rows, stored), complete)
    used = np.arange(stored)[None, :] < count[:, None]
    return merged, stays, out_stays.reshape(n_rows, stored)[used]


def _pad(values: np.ndarray, n: int, fill) -> np.ndarray:
    out = np.full(n, fill, dtype=np.asarray(values).dtype if len(values) else type(fill))
    m = min(n, len(values))
    out[:m] = values[:m]
    return out


def _clip(keys: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(keys, n - 1) if n else keys
