"""The fused kernel of the full lists: for each row of a block, its sparse products and its
top-L neighbours in one compiled pass (numba), without materializing the block's products.

Per row a: Gustavson's accumulation (for each feature f of a, in index order, for each row b
having f, in index order: acc[b] += left[a, f] * right[f, b]), which is the order scipy's
sparse product adds in, so the dot products are the same bits; then sim = dot * scale[a] *
scale[b], times support / (support + shrinkage) and zero below min_support, as
engine.RowSimilarity.block computes them; then the ``limit`` best positive entries by (score
desc, neighbour asc), as engine.top_k selects them. tests/test_measures.py checks it against
that path bit for bit. Memory: three arrays of n (the accumulators) per call, plus the output. The best entries are
kept by insertion into the row's output (most candidates rank below its last entry and cost one
comparison), which also keeps the compiled code small.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True, inline="always")
def _before(score, nb, other_score, other_nb) -> bool:
    """The list order: score descending, then neighbour key ascending."""
    return score > other_score or (score == other_score and nb < other_nb)


@njit(nogil=True, cache=True, error_model="numpy")
def top_lists(rows, l_indptr, l_indices, l_data, r_indptr, r_indices, r_data, scale, n,
              limit, shrinkage, min_support, need_support):
    """Top-``limit`` lists of ``rows`` (left: rows x features CSR, right: features x rows CSR,
    scale per row): per row the count, neighbours and scores (rows x limit), and whether it
    has fewer than ``limit`` positive neighbours."""
    n_rows = len(rows)
    out_nb = np.full((n_rows, limit), -1, np.int64)
    out_score = np.zeros((n_rows, limit))
    count = np.zeros(n_rows, np.int64)
    few = np.zeros(n_rows, np.bool_)
    acc = np.zeros(n)
    cnt = np.zeros(n, np.int64)
    touched = np.empty(n, np.int64)
    for i in range(n_rows):
        a = rows[i]
        nt = 0
        for p in range(l_indptr[a], l_indptr[a + 1]):
            w = l_data[p]
            f = l_indices[p]
            for q in range(r_indptr[f], r_indptr[f + 1]):
                b = r_indices[q]
                if cnt[b] == 0:
                    touched[nt] = b
                    nt += 1
                acc[b] += w * r_data[q]
                cnt[b] += 1
        kept = 0  # out_* row i holds the best ``kept`` entries so far, in list order
        positive = 0
        for t in range(nt):
            b = touched[t]
            dot = acc[b]
            acc[b] = 0.0
            support = float(cnt[b])
            cnt[b] = 0
            if b == a or dot == 0.0:
                continue
            sim = dot * scale[a] * scale[b]
            if need_support:
                if shrinkage > 0:
                    sim *= support / (support + shrinkage)
                if support < min_support:
                    sim = 0.0
            if not sim > 0:
                continue
            positive += 1
            if kept == limit and not _before(sim, b, out_score[i, kept - 1], out_nb[i, kept - 1]):
                continue
            j = min(kept, limit - 1)  # insertion: shift the entries it ranks before
            while j > 0 and _before(sim, b, out_score[i, j - 1], out_nb[i, j - 1]):
                out_score[i, j] = out_score[i, j - 1]
                out_nb[i, j] = out_nb[i, j - 1]
                j -= 1
            out_score[i, j] = sim
            out_nb[i, j] = b
            kept = min(kept + 1, limit)
        count[i] = kept
        few[i] = positive < limit
    return count, out_nb, out_score, few


@njit(nogil=True, cache=True)
def merge_rows(k_grid, k_nb, k_score, k_rank, c_start, c_nb, c_score, stored,
               out_nb, out_score, out_stays, k_stays, count):
    """The incremental update's merge, row by row: each row's kept entries (``k_grid[r]``: the
    index of the entry at each stored rank, -1 where none is kept) and its candidates (sorted
    by score desc, then neighbour asc; ``c_start`` delimits the rows) merged in that order and
    cut to ``stored`` entries into the row's slots of ``out_*``. A kept entry ranks above a
    candidate of the same score when its neighbour key is smaller. ``k_stays``: the kept
    entries whose new rank is their stored ``k_rank``; ``out_stays``: the slots they fill;
    ``count``: the entries each row keeps."""
    width = k_grid.shape[1]
    for r in range(len(count)):
        g = 0
        while g < width and k_grid[r, g] < 0:
            g += 1
        c, c_end = c_start[r], c_start[r + 1]
        base = r * stored
        slot = 0
        while slot < stored and (g < width or c < c_end):
            k = k_grid[r, g] if g < width else -1
            kept_first = c == c_end or (g < width and (
                k_score[k] > c_score[c] or (k_score[k] == c_score[c] and k_nb[k] < c_nb[c])))
            if kept_first:
                out_nb[base + slot], out_score[base + slot] = k_nb[k], k_score[k]
                if slot + 1 == k_rank[k]:
                    k_stays[k] = True
                    out_stays[base + slot] = True
                g += 1
                while g < width and k_grid[r, g] < 0:
                    g += 1
            else:
                out_nb[base + slot], out_score[base + slot] = c_nb[c], c_score[c]
                c += 1
            slot += 1
        count[r] = slot
