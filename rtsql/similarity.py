"""Top-K cosine neighbours over the rows of a sparse matrix: full and exact-incremental.

One engine serves item-item (rows = items, features = users), user-user (rows = users,
features = items) and content (rows = items, features = catalog terms). Rows are processed in
blocks, so only ``block x n`` similarities are in memory at once, and each block keeps its top-K
with ``argpartition``; the sparse products run in scipy's C code.

Similarity of rows a and b (see ../shared/DESIGN_NOTES.md):
    sim(a, b) = dot(a, b) / (|a| |b|) * support / (support + shrinkage)
kept when sim > 0 and support >= min_support, where support is the number of features both rows
have. Shrinkage multiplies by a support factor (as in Koren's neighbourhood models) instead of
adding to the denominator: that keeps sim unchanged when all weights are scaled by one factor,
which forward decay relies on (moving the landmark scales every weight). Lists are ordered by score descending
then neighbour key ascending, the tie rule that makes incremental and full results comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Measure:
    """``cosine``: dot / (|a| |b|). ``tfidf`` (as implicit's TFIDFRecommender): dot of the
    square-rooted weights times idf(a) * idf(b), idf(r) = ln(idf_n) - ln(1 + features of r),
    which damps rows present everywhere; ``idf_n`` is frozen at the last full refresh so that
    incremental refresh stays exact."""

    k: int = 50
    shrinkage: float = 0.0
    min_support: int = 1
    block_cells: int = 1 << 24  # similarities held at once (rows per block x entities)
    kind: str = "cosine"
    idf_n: float = 0.0
    store: int = 0  # entries stored per row (>= k; 0: k): a buffer that refills lists

    @property
    def stored(self) -> int:
        return max(self.store, self.k)


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

    def where(self, mask: np.ndarray) -> "Neighbors":
        return Neighbors(self.row[mask], self.nb[mask], self.score[mask], self.rank[mask],
                         self.complete_rows)


class RowSimilarity:
    """Similarities of chosen rows of ``matrix`` (entities x features, CSR) against all rows."""

    def __init__(self, matrix: sp.csr_matrix, measure: Measure):
        self.m = matrix.tocsr().astype(np.float64)
        self.m.sum_duplicates()
        self.m.eliminate_zeros()
        self.measure = measure
        if measure.kind == "tfidf":
            self.m.data = np.sqrt(self.m.data)
            present = np.diff(self.m.indptr)
            idf = np.log(max(measure.idf_n, 1.0)) - np.log1p(present)
            self.scale = np.where(present > 0, np.maximum(idf, 0.0), 0.0)
            self.norms = present.astype(np.float64)  # non-zero marks a non-empty row
        else:
            self.norms = np.sqrt(np.asarray(self.m.multiply(self.m).sum(axis=1)).ravel())
            with np.errstate(divide="ignore"):
                self.scale = np.where(self.norms > 0, 1.0 / self.norms, 0.0)
        self.mt = self.m.T.tocsr()
        self.needs_support = measure.min_support > 1 or measure.shrinkage > 0
        if self.needs_support:
            binary = self.m.copy()
            binary.data[:] = 1.0
            self.binary, self.binary_t = binary, binary.T.tocsr()

    @property
    def n(self) -> int:
        return self.m.shape[0]

    def blocks(self, rows: np.ndarray):
        """Yield (rows of the block, dense similarity block |rows| x n, self excluded)."""
        per_block = max(1, self.measure.block_cells // max(self.n, 1))
        for start in range(0, len(rows), per_block):
            block = rows[start:start + per_block]
            sims = (self.m[block] @ self.mt).toarray()  # dot products, scaled in place
            sims *= self.scale[block][:, None]
            sims *= self.scale[None, :]
            if self.needs_support:
                support = (self.binary[block] @ self.binary_t).toarray()
                if self.measure.shrinkage > 0:
                    sims *= support / (support + self.measure.shrinkage)
                sims[support < self.measure.min_support] = 0.0
            sims[np.arange(len(block)), block] = 0.0
            yield block, sims


def top_k(block: np.ndarray, sims: np.ndarray, k: int) -> Neighbors:
    """Top-k positive entries of each row of ``sims``, ordered by (score desc, column asc)."""
    n = sims.shape[1]
    # one threshold per row: the k-th largest value, but at least the smallest positive number
    # (only positive similarities are kept); one comparison makes the mask
    if k < n:
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]  # faster than selecting near the end
        threshold = np.maximum(kth, np.finfo(sims.dtype).tiny)
        complete = block[kth <= 0]  # fewer than k positive entries: the list holds them all
    else:
        threshold = np.full(len(sims), np.finfo(sims.dtype).tiny)
        complete = block
    keep = sims >= threshold[:, None]
    r, c = np.nonzero(keep)  # row-major: c ascending within each row
    s = sims[r, c]
    order = np.lexsort((c, -s, r))
    r, c, s = r[order], c[order], s[order]
    starts = np.searchsorted(r, np.arange(len(block)))
    rank = np.arange(len(r)) - starts[r] + 1
    mask = rank <= k  # ties at the k-th score are cut by the column rule
    return Neighbors(block[r[mask]].astype(np.int64), c[mask].astype(np.int64), s[mask],
                     rank[mask].astype(np.int64), complete.astype(np.int64))


def full(matrix: sp.csr_matrix, measure: Measure, progress: Progress | None = None
         ) -> Neighbors:
    """Top-K lists of every non-empty row."""
    sim = RowSimilarity(matrix, measure)
    rows = np.flatnonzero(sim.norms > 0)
    return _lists_for(sim, rows, progress)


def _lists_for(sim: RowSimilarity, rows: np.ndarray, progress: Progress | None = None
               ) -> Neighbors:
    parts, done = [], 0
    for block, sims in sim.blocks(rows):
        parts.append(top_k(block, sims, sim.measure.stored))
        done += len(block)
        if progress:
            progress(done, len(rows))
    return Neighbors.concat(parts)


@dataclass
class StoredLists:
    """What the incremental update needs to know of the stored lists, per entity: the score and
    neighbour of its last stored entry (-inf for a complete list, which holds every positive
    neighbour), how many entries it stores, and which stored entries point at changed rows."""

    kth_score: np.ndarray  # per entity
    kth_nb: np.ndarray  # per entity
    count: np.ndarray  # per entity
    pointing_row: np.ndarray  # entities whose list holds a changed entity (once per entry)


@dataclass
class IncrementalResult:
    replace_rows: np.ndarray  # entities whose stored lists are replaced by `lists`
    lists: Neighbors  # new complete lists of replaced rows (changed ones recomputed)
    candidates: Neighbors  # (j <- changed i) entries that may enter j's list; rank unused
    merge_rows: np.ndarray  # entities j whose new list = top-L(stored minus changed, candidates)


def incremental(matrix: sp.csr_matrix, changed: np.ndarray, stored: StoredLists,
                measure: Measure) -> IncrementalResult:
    """Exact update after the rows ``changed`` of ``matrix`` changed (DESIGN_NOTES.md).

    A stored list holds a row's top entries, up to ``measure.stored`` (a buffer beyond the k that
    are served); every entry it lacks ranks below its last one, or it is complete (it holds every
    positive neighbour). Changed rows get new lists. Another row j can only see sim(j, i) move for
    changed i; its new list is top-L(its entries not pointing at changed rows + the changed
    entries that now rank above its last entry, or all positive ones for a complete list). That
    is exact for as many entries as it keeps, so the row is recomputed from the matrix only when
    fewer than k would remain.
    """
    sim = RowSimilarity(matrix, measure)
    changed = np.unique(changed[changed < sim.n])
    kth_score = _pad(stored.kth_score, sim.n, -np.inf)
    kth_nb = _pad(stored.kth_nb, sim.n, np.iinfo(np.int64).max)
    count = _pad(stored.count, sim.n, 0)
    lists, cands = [], []
    for block, sims in sim.blocks(changed):
        lists.append(top_k(block, sims, measure.stored))
        # candidates j <- i: sim(j, i) = sim(i, j) ranks above j's last stored entry
        above = (sims > kth_score[None, :]) | (
            (sims == kth_score[None, :]) & (block[:, None] < kth_nb[None, :]))
        above &= sims > 0
        i_idx, j = np.nonzero(above)
        cands.append(Neighbors(j.astype(np.int64), block[i_idx].astype(np.int64),
                               sims[i_idx, j], np.zeros(len(j), np.int64)))
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


def _pad(values: np.ndarray, n: int, fill) -> np.ndarray:
    out = np.full(n, fill, dtype=np.asarray(values).dtype if len(values) else type(fill))
    m = min(n, len(values))
    out[:m] = values[:m]
    return out


def _clip(keys: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(keys, n - 1) if n else keys


def cosine(a, b) -> float:
    """Plain cosine of two dense vectors (0 for a zero vector); the worked-example helper."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else 0.0
