"""The fused kernel of the full lists: for each row of a block, its sparse products and its
top-L neighbours in one compiled pass (numba), without materializing the block's products.

Per row a: Gustavson's accumulation (for each feature f of a, in index order, for each row b
having f, in index order: acc[b] += left[a, f] * right[f, b]), which is the order scipy's
sparse product adds in, so the dot products are the same bits; then sim = dot * scale[a] *
scale[b], times support / (support + shrinkage) and zero below min_support, as
engine.RowSimilarity.block computes them; then the ``limit`` best positive entries by (score
desc, neighbour asc), as engine.top_k selects them. tests/test_measures.py checks it against
that path bit for bit. Memory: five arrays of n (accumulators and candidates) per call, plus the output.
"""

from __future__ import annotations

import numpy as np
from numba import njit


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
    cand_s = np.empty(n)
    cand_b = np.empty(n, np.int64)
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
        npos = 0
        for t in range(nt):
            b = touched[t]
            if b != a and acc[b] != 0.0:
                sim = acc[b] * scale[a] * scale[b]
                if need_support:
                    support = float(cnt[b])
                    if shrinkage > 0:
                        sim *= support / (support + shrinkage)
                    if support < min_support:
                        sim = 0.0
                if sim > 0:
                    cand_s[npos] = sim
                    cand_b[npos] = b
                    npos += 1
            acc[b] = 0.0
            cnt[b] = 0
        few[i] = npos < limit
        s = cand_s[:npos]
        bb = cand_b[:npos]
        if npos > limit:
            kth = np.partition(-s, limit - 1)[limit - 1]  # -(limit-th largest)
            keep = -s <= kth
            s = s[keep]
            bb = bb[keep]
        by_b = np.argsort(bb)
        s = s[by_b]
        bb = bb[by_b]
        order = np.argsort(-s, kind="mergesort")
        m = min(limit, len(order))
        for j in range(m):
            out_nb[i, j] = bb[order[j]]
            out_score[i, j] = s[order[j]]
        count[i] = m
    return count, out_nb, out_score, few
