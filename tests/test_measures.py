from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rtsql import measures
from rtsql.measures import ease, engine

from helpers import (
    assert_same_lists,
    brute_force_ease,
    brute_force_ease_lists,
    brute_force_topk,
    lists_from_rows,
)


def test_worked_examples_from_the_article():
    # users A and B over four items; the article prints 23 and 0.857, the right sum is 30
    a, b = [4, 3, 0, 5], [5, 0, 4, 2]
    assert np.dot(a, b) == 30
    assert measures.cosine(a, b) == pytest.approx(30 / (np.sqrt(50) * np.sqrt(45)))
    assert round(measures.cosine(a, b), 4) == 0.6325
    # items P1 and P2 as feature vectors; the article prints 0.735
    p1, p2 = [0.8, 0.3, 0.5], [0.2, 0.7, 0.5]
    assert measures.cosine(p1, p2) == pytest.approx(0.62 / (np.sqrt(0.98) * np.sqrt(0.78)))
    assert round(measures.cosine(p1, p2), 4) == 0.7091
    assert measures.cosine([0, 0], [1, 2]) == 0.0


def _as_dict(lists: measures.Neighbors):
    return lists_from_rows(zip(lists.row.tolist(), lists.nb.tolist(), lists.score.tolist(),
                               lists.rank.tolist()))


matrices = st.integers(0, 2**31 - 1).map(lambda seed: np.random.default_rng(seed))


@settings(deadline=None)
@given(matrices, st.integers(1, 6), st.sampled_from([0.0, 0.5]), st.sampled_from([1, 2]),
       st.sampled_from([1 << 24, 7]), st.sampled_from(["cosine", "tfidf"]), st.sampled_from([1, 2]))
def test_full_equals_brute_force(rng, k, shrinkage, min_support, block_cells, kind, threads):
    n, f = rng.integers(1, 15), rng.integers(1, 12)
    x = rng.integers(0, 3, size=(n, f)) * (rng.random((n, f)) < 0.5)
    x = x.astype(float)
    idf_n = float(f + 3)
    measure = measures.Measure(k=k, shrinkage=shrinkage, min_support=min_support,
                                 block_cells=block_cells, kind=kind, idf_n=idf_n,
                                 threads=threads)
    got = _as_dict(measures.full(sp.csr_matrix(x), measure))
    assert_same_lists(got, brute_force_topk(x, k, shrinkage, min_support, kind, idf_n))


@settings(deadline=None)
@given(matrices, st.integers(1, 8), st.sampled_from([0.0, 2.0]), st.sampled_from([1, 2]),
       st.sampled_from(["cosine", "tfidf", "rp3beta"]), st.booleans())
def test_the_fused_kernel_equals_products_then_top_k(rng, k, shrinkage, min_support, kind,
                                                     signed):
    """Full lists come from kernel.top_lists; the incremental update uses a block's products
    and top_k. Both must give the same bits: weights in halves (exact sums, so every tie is
    a real tie), negative ones too (a dot can cancel to zero), support and shrinkage."""
    n, f = int(rng.integers(1, 30)), int(rng.integers(1, 20))
    x = np.round(rng.random((n, f)) * 8) / 2 * (rng.random((n, f)) < 0.4)
    if signed and kind == "cosine":
        x *= np.where(rng.random((n, f)) < 0.2, -1, 1)
    m = measures.rows_matrix(sp.csr_matrix(x))
    measure = measures.Measure(k=k, shrinkage=shrinkage, min_support=min_support, kind=kind,
                               idf_n=float(n + 2), block_cells=int(rng.integers(1, 200)))
    sim = engine.RowSimilarity(m, measures.model(measure).weights(m, measure), measure)
    rows = np.flatnonzero(sim.present)
    fused = engine._lists_for(sim, rows)
    products = measures.Neighbors.concat(sim.map_blocks(rows, lambda b: engine.top_k(b, k, sim.n)))
    for name in ("row", "nb", "score", "rank"):
        assert np.array_equal(getattr(fused, name), getattr(products, name)), name
    assert np.array_equal(np.sort(fused.complete_rows), np.sort(products.complete_rows))


def test_ties_are_broken_by_neighbour_key():
    x = np.array([[1, 0], [1, 0], [1, 0], [1, 0]], float)
    got = _as_dict(measures.full(sp.csr_matrix(x), measures.Measure(k=2)))
    assert [nb for nb, _ in got[2]] == [0, 1]
    assert [nb for nb, _ in got[0]] == [1, 2]


def test_support_is_read_at_the_products_positions_when_patterns_differ():
    # content vectors can cancel (negative z-scores): the weighted product then drops an entry
    # the support product keeps, and support must still line up with the right pairs
    x = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 0.0, 1.0]]))
    weighted = x @ x.T.tocsr()
    binary = x.copy()
    binary.data[:] = 1.0
    support = binary @ binary.T.tocsr()
    assert weighted.nnz < support.nnz  # rows 0 and 1 cancel: 1 - 1 = 0
    got = engine._values_at(support, weighted)
    rows = np.repeat(np.arange(3), np.diff(weighted.indptr))
    assert np.array_equal(got, support.toarray()[rows, weighted.indices])


def brute_force_rp3beta(x: np.ndarray, k: int, alpha: float, beta: float):
    """RP3beta by its definition (Paudel et al. 2017; Dacrema et al. 2019's baseline): rows a,
    b; sum over features f of both of (1 / features of a)^alpha * (x[b, f] / sum_r x[r, f])^alpha,
    divided by (features of b)^beta; top-k by (score desc, neighbour asc)."""
    present = (x > 0).sum(axis=1)
    totals = x.sum(axis=0)
    out = {}
    for a in range(x.shape[0]):
        cands = []
        for b in range(x.shape[0]):
            if a == b:
                continue
            s = sum((1.0 / present[a]) ** alpha * (x[b, f] / totals[f]) ** alpha
                    for f in range(x.shape[1]) if x[a, f] > 0 and x[b, f] > 0)
            if s > 0:
                cands.append((b, s / present[b] ** beta))
        cands.sort(key=lambda t: (-t[1], t[0]))
        if cands:
            out[a] = cands[:k]
    return out


@settings(deadline=None)
@given(matrices, st.integers(1, 6), st.sampled_from([0.5, 1.0]), st.sampled_from([0.0, 0.5]),
       st.sampled_from([1 << 24, 7]))
def test_rp3beta_equals_its_definition(rng, k, alpha, beta, block_cells):
    n, f = rng.integers(1, 15), rng.integers(1, 12)
    x = (rng.integers(1, 4, size=(n, f)) * (rng.random((n, f)) < 0.5)).astype(float)
    measure = measures.Measure(k=k, kind="rp3beta", alpha=alpha, beta=beta,
                                 block_cells=block_cells)
    assert not measures.model(measure).incremental
    got = _as_dict(measures.full(sp.csr_matrix(x), measure))
    assert_same_lists(got, brute_force_rp3beta(x, k, alpha, beta))


def brute_force_sparse_ease(x: np.ndarray, k: int, lam: float, m: int, tol: float = 1e-9,
                            dropout: float = 0.0):
    """sparse_ease as its docstring defines it, one item at a time: N(b) = b's m largest
    co-occurrences G[b, c] > 0 (ties: lower c); G[a, c] known when c is in N(a) or a in N(c),
    else 0; B[N(b), b] = (G[N, N] + lambda' I + kappa diag(G[N, N]))^-1 G[N, b] (kappa =
    dropout / (1 - dropout)), lambda' doubled until the system is positive definite; then
    EASE's lists of B."""
    present = np.flatnonzero((x != 0).any(axis=1))
    sub = x[present]
    n = len(present)
    scale = float(np.mean(sub[sub != 0] ** 2)) if n else 1.0
    g = sub @ sub.T
    hoods = []
    for b in range(n):
        others = [c for c in range(n) if c != b and g[b, c] > 0]
        hoods.append(sorted(others, key=lambda c: (-g[b, c], c))[:m])
    known = np.eye(n, dtype=bool)
    for b, hood in enumerate(hoods):
        known[b, hood] = known[hood, b] = True
    truncated = np.where(known, g, 0.0)
    weights = np.zeros((n, n))
    for b, hood in enumerate(hoods):
        if not hood:
            continue
        reg = lam * scale
        while True:
            system = (truncated[np.ix_(hood, hood)] + reg * np.eye(len(hood))
                      + dropout / (1 - dropout) * np.diag(np.diag(g)[hood]))
            try:
                np.linalg.cholesky(system)
                break
            except np.linalg.LinAlgError:
                reg *= 2
        weights[hood, b] = np.linalg.solve(system, g[hood, b])
    return brute_force_ease_lists(weights, present, k, tol)


DROPOUTS = [0.0, 0.0, 0.5, 0.75]  # ease_dropout: plain EASE and DLAE's diagonal

# ties are common on purpose (small integer weights), so many examples are ambiguous at a
# cut and skipped: enough remain, and hypothesis must not call that a failed health check
AMBIGUOUS_OFTEN = settings(deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@AMBIGUOUS_OFTEN
@given(matrices, st.integers(1, 6), st.sampled_from([0.05, 0.5, 30.0]),
       st.sampled_from([1 << 24, 7]), st.sampled_from([1.0, 4.5]), st.sampled_from(DROPOUTS),
       st.sampled_from(["auto", "items", "users"]), st.sampled_from([None, 3]),
       st.sampled_from([1, 2]))
def test_ease_equals_its_closed_form(rng, k, lam, block_cells, unit, dropout, solver,
                                     block_rows, threads):
    """EASE's lists equal the brute-force closed form through either solver, in one block of
    P's rows or in blocks of 3 on one or two threads."""
    n, f = rng.integers(1, 15), rng.integers(1, 12)
    x = (rng.integers(1, 4, size=(n, f)) * (rng.random((n, f)) < 0.5)).astype(float) * unit
    measure = measures.Measure(k=k, kind="ease", ease_lambda=lam, block_cells=block_cells,
                               ease_dropout=dropout, ease_solver=solver, threads=threads)
    assert not measures.model(measure).incremental
    want, ambiguous = brute_force_ease(x, k, lam, dropout=dropout)
    assume(not ambiguous)
    with mock.patch.object(ease, "BLOCK_ROWS", block_rows or ease.BLOCK_ROWS):
        got = _as_dict(measures.full(sp.csr_matrix(x), measure))
    assert_same_lists(got, want, tol=1e-9)


def _changed_rows(rng, x: np.ndarray, fresh: list[int]) -> np.ndarray:
    """x (users x items) after a random batch: some users gain, reweigh or lose entries
    (a capped history drops items; forget empties a row), some touch the items ``fresh``."""
    y = x.copy()
    for u in rng.choice(len(x), size=rng.integers(1, len(x) + 1), replace=False):
        kind = rng.integers(0, 4)
        if kind == 0:  # new events
            cols = rng.choice(x.shape[1], size=rng.integers(1, 4))
            y[u, cols] += rng.integers(1, 4, size=len(cols))
        elif kind == 1:  # an entry leaves (the history cap) or changes
            have = np.flatnonzero(y[u])
            if len(have):
                y[u, rng.choice(have)] = rng.integers(0, 3)
        elif kind == 2:  # forget
            y[u] = 0.0
        elif fresh:  # an item nobody had
            y[u, rng.choice(fresh)] = rng.integers(1, 4)
    return y


@AMBIGUOUS_OFTEN
@given(matrices, st.integers(1, 5), st.sampled_from([0.05, 0.5, 30.0]),
       st.integers(1, 4), st.sampled_from([1 << 24, 7]), st.sampled_from(DROPOUTS))
def test_ease_update_equals_a_rebuild_at_the_same_lambda(rng, k, lam, batches, block_cells,
                                                         dropout):
    """EaseFactor.update (Woodbury for changed users, a bordered inverse for items that join)
    after random batches gives the inverse and the lists of a build over the final matrix with
    the same (frozen) lambda', to 1e-9; with DLAE's diagonal (dropout > 0) also at the final
    matrix's diagonal."""
    users, items = rng.integers(2, 12), rng.integers(2, 12)
    x = (rng.integers(1, 4, size=(users, items)) * (rng.random((users, items)) < 0.4)).astype(float)
    x[:, rng.random(items) < 0.3] = 0.0  # items nobody has yet
    measure = measures.Measure(k=k, kind="ease", ease_lambda=lam, block_cells=block_cells,
                               ease_dropout=dropout)
    rows = ease.ease_rows(sp.csr_matrix(x.T), measure)
    reg = lam * ease.mean_square(sp.csr_matrix(x.T)[rows])
    factor = ease.EaseFactor.build(sp.csr_matrix(x.T), rows, reg,
                                   lambda size: np.zeros((size, size)), items,
                                   measure.ease_kappa)
    for _ in range(batches):
        fresh = np.flatnonzero(~x.any(axis=0)).tolist()
        y = _changed_rows(rng, x, fresh)
        moved = np.flatnonzero((x != y).any(axis=1))
        factor.update(sp.csr_matrix(y.T), sp.csr_matrix(x[moved]), sp.csr_matrix(y[moved]))
        x = y
    present = x.any(axis=0)
    rows = factor.rows
    assert set(rows.tolist()) >= set(np.flatnonzero(present).tolist())
    gram = x.T[rows] @ x[:, rows]
    want_p = np.linalg.inv(gram + reg * np.eye(len(rows))
                           + measure.ease_kappa * np.diag(np.diag(gram)))
    np.testing.assert_allclose(factor.p, want_p, rtol=0, atol=1e-9 * np.abs(want_p).max(initial=0.0))
    want, ambiguous = brute_force_ease(x.T, k, lam, absolute=reg, dropout=dropout)
    assume(not ambiguous)
    assert_same_lists(_as_dict(factor.lists(measure, present)), want, tol=1e-9)


@settings(deadline=None)
@given(matrices, st.sampled_from([0.05, 0.5, 30.0]), st.sampled_from(DROPOUTS),
       st.integers(1, 40), st.integers(1, 40), st.integers(1, 3))
def test_ease_through_the_users_side_is_the_items_inverse(rng, lam, dropout, items, users,
                                                          threads):
    """EaseDual's P (D - D X' K^-1 X D, block by block) and diagonal are the items' inverse
    (G + lam I + kappa diag G)^-1 to its rounding bound (ease.dual_rounding), with more users
    than items or fewer."""
    x = (rng.integers(1, 4, size=(items, users)) * (rng.random((items, users)) < 0.3)) * 1.5
    m = sp.csr_matrix(x.astype(float))
    rows = np.flatnonzero(np.diff(m.indptr))
    assume(len(rows))
    kappa = dropout / (1 - dropout)
    g = x[rows] @ x[rows].T
    want = np.linalg.inv(g + lam * np.eye(len(rows)) + kappa * np.diag(np.diag(g)))
    dual = ease.EaseDual.build(m, rows, lam, kappa, threads)
    got = np.vstack([dual.p_rows(np.arange(start, min(start + 3, len(rows))))[0]
                     for start in range(0, len(rows), 3)])
    tol = (1e-14 + 8 * ease.dual_rounding(m[rows], lam, kappa)) * np.abs(want).max()
    assert np.abs(got - want).max() <= tol
    assert np.abs(dual.diagonal - np.diag(want)).max() <= tol


@settings(deadline=None)
@given(matrices, st.integers(1, 30), st.integers(1, 12))
def test_ease_kept_entries_are_sorted_by_weight_then_key(rng, n, cap):
    """The lists' last step (ease._kept) keeps the candidates with |B| >= the cut and orders
    each row by weight desc, then neighbour key asc, ranks from 1: a lexsort of them; weights
    tie often, rows keep nothing now and then."""
    keys = np.sort(rng.choice(1000, size=n + cap, replace=False))
    cols = rng.integers(0, n + cap, size=(n, cap))
    vals = rng.integers(-3, 4, size=(n, cap)) / 2.0
    least = float(rng.choice([0.5, 1.0, 1.5]))
    row, nb, score, rank = ease._kept(cols, vals, keys, least)
    keep = np.abs(vals) >= least
    want_row = np.broadcast_to(np.arange(n)[:, None], keep.shape)[keep]
    want_nb, want_score = keys[cols[keep]], vals[keep]
    order = np.lexsort((want_nb, -want_score, want_row))
    assert np.array_equal(row, want_row[order])
    assert np.array_equal(nb, want_nb[order]) and np.array_equal(score, want_score[order])
    first = np.searchsorted(row, row)  # rows ascend
    assert np.array_equal(rank, np.arange(len(row)) - first + 1)


def _long_tail(rng, items: int, users: int) -> sp.csr_matrix:
    """items x users, item i with about users / (i + 1) users (at least one): a catalog's
    long tail, whose rare items' rows keep no entry."""
    x = np.zeros((items, users))
    for i in range(items):
        x[i, rng.choice(users, size=max(1, users // (i + 1)), replace=False)] = \
            rng.integers(1, 4, size=max(1, users // (i + 1)))
    return sp.csr_matrix(x)


@settings(deadline=None)
@given(matrices, st.integers(1, 4), st.integers(20, 120), st.integers(3, 30),
       st.sampled_from([0.5, 30.0]), st.sampled_from([None, 7]), st.sampled_from([1, 2]))
def test_ease_dual_lists_skip_rows_without_changing_them(rng, k, items, users, lam, block_rows,
                                                         threads):
    """EaseDual's lists with rows left out by their bounds (EaseDual.row_bounds) are bit for
    bit the lists of the full pass over every row; and each bound is at least its row's
    largest |B|."""
    m = _long_tail(rng, items, users)
    rows = np.arange(items)
    measure = measures.Measure(k=k, kind="ease", threads=threads)
    dual = ease.EaseDual.build(m, rows, lam, 0.0, threads)
    with mock.patch.object(ease, "BLOCK_ROWS", block_rows or ease.BLOCK_ROWS):
        got = dual.lists(measure)
        want = ease._select(dual.p_rows, dual.diagonal, rows, rows, measure, None)
    for name in ("row", "nb", "score", "rank"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    scale = -1.0 / dual.diagonal
    b = dual.p_rows(rows)[0] * scale
    np.fill_diagonal(b, 0.0)
    assert (np.abs(b).max(axis=1) <= dual.row_bounds(rows, scale) * (1 + ease.BOUND_SLACK)).all()


def test_ease_dual_lists_leave_out_the_long_tails_rows():
    """On a long tail most rows are never computed, and the lists are those of every row."""
    m = _long_tail(np.random.default_rng(5), 400, 60)
    rows = np.arange(400)
    measure = measures.Measure(k=2, kind="ease", threads=1)
    dual = ease.EaseDual.build(m, rows, 0.5, 0.0, 1)
    passed = []
    real = ease._candidate_pass
    with mock.patch.object(ease, "_candidate_pass",
                           lambda *a: passed.append(len(a[3])) or real(*a)):
        got = dual.lists(measure)
    assert sum(passed) < 300  # of 400 rows
    want = ease._select(dual.p_rows, dual.diagonal, rows, rows, measure, None)
    assert np.array_equal(got.nb, want.nb) and np.array_equal(got.score, want.score)


@settings(deadline=None)
@given(matrices, st.integers(2, 400), st.integers(1, 60),
       st.sampled_from(["contiguous", "gaps", "permuted"]))
def test_ease_row_candidates_are_each_rows_largest_magnitudes(rng, n, cap, columns):
    """The selection of each row's ``cap`` largest |B| (a sampled bound, then quickselect)
    keeps exactly what a full sort by (magnitude desc, column asc) keeps, the diagonal at 0,
    signs kept; rows long enough for the sample and short ones, ties on purpose. P's columns
    in order, with gaps, or a range whose middle is shuffled (the first and last in place:
    P's rows once items have joined the stored inverse, which EaseFactor.update puts last).
    The rows asked for are any of B's, in any order; no other row is written."""
    cap = min(cap, n - 1)
    rows = int(rng.integers(1, min(n, 5) + 1))
    width = n if columns != "gaps" else n + int(rng.integers(1, 50))
    at = (np.arange(n) + int(rng.integers(0, width - n + 1)) if columns == "contiguous"
          else np.r_[0, 1 + rng.permutation(n - 2), n - 1][:n] if columns == "permuted"
          else np.sort(rng.choice(width, size=n, replace=False)))
    p = rng.integers(-4, 5, size=(rows, width)) * (rng.random((rows, width)) < 0.7) * 1.0
    scale = rng.choice([0.5, 1.0, 2.0], size=n)
    row_at = rng.permutation(rows)
    own = rng.choice(n, size=rows, replace=False)  # which rows of B, in any order
    cols = np.full((n, cap), -1, np.int64)
    vals = np.full((n, cap), np.nan)
    largest = np.full(n, np.nan)
    ease._row_candidates(p, row_at, own, at, scale, cols, vals, largest)
    for r, i in enumerate(own):
        b = p[row_at[r], at] * scale
        b[i] = 0.0
        want = np.lexsort((np.arange(n), -np.abs(b)))[:cap]
        assert sorted(cols[i].tolist()) == sorted(want.tolist())
        assert (vals[i] == b[cols[i]]).all()
        assert largest[i] == np.abs(b).max()
    others = np.setdiff1d(np.arange(n), own)  # rows not asked for are not written
    assert (cols[others] == -1).all() and np.isnan(largest[others]).all()


@settings(deadline=None)
@given(matrices, st.integers(1, 8), st.integers(1, 7))
def test_merge_lists_is_a_sort_of_kept_entries_and_candidates(rng, n_rows, stored):
    """The incremental update's merge (engine.merge_lists) equals sorting each row's kept
    entries and candidates by (score desc, neighbour asc) and cutting to ``stored``: ranks,
    which kept entries stay at their stored rank, and which lists are complete. Scores tie
    often on purpose; kept entries come in any order."""
    rows = np.sort(rng.choice(50, n_rows, replace=False))
    kept = {"row": [], "nb": [], "score": [], "rank": []}
    for r in rows:
        m = int(rng.integers(0, stored + 1))
        nb = rng.choice(np.arange(100, 140), m, replace=False)
        score = rng.integers(1, 4, m) / 2.0
        order = np.lexsort((nb, -score))
        survives = rng.random(m) < 0.8  # the others pointed at changed rows
        for name, values in (("row", np.full(m, r)), ("nb", nb[order]), ("score", score[order]),
                             ("rank", np.arange(1, m + 1))):
            kept[name].extend(values[survives])
    perm = rng.permutation(len(kept["row"]))
    kept = {name: np.asarray(values)[perm] for name, values in kept.items()}
    pairs = {(int(r), int(nb)) for r, nb in zip(rng.choice(rows, 10), rng.integers(0, 20, 10))}
    pairs = sorted(pairs)[:int(rng.integers(0, len(pairs) + 1))]
    candidates = measures.Neighbors(
        np.array([r for r, _ in pairs], np.int64), np.array([nb for _, nb in pairs], np.int64),
        rng.integers(1, 4, len(pairs)) / 2.0, np.zeros(len(pairs), np.int64),
        np.empty(0, np.int64))
    truncated = rows[rng.random(n_rows) < 0.3]
    merged, kept_stays, merged_stays = measures.merge_lists(kept, candidates, rows, truncated,
                                                            stored)
    got = _as_dict(merged)
    for r in rows:
        mine = kept["row"] == r
        entries = ([(s, nb, rank) for nb, s, rank in zip(kept["nb"][mine], kept["score"][mine],
                                                         kept["rank"][mine])]
                   + [(s, nb, None) for rr, nb, s in zip(candidates.row, candidates.nb,
                                                         candidates.score) if rr == r])
        entries.sort(key=lambda e: (-e[0], e[1]))
        assert got.get(int(r), []) == [(nb, s) for s, nb, _ in entries[:stored]]
        assert (int(r) in merged.complete_rows) == (len(entries) <= stored
                                                     and r not in truncated)
        for new_rank, (_, nb, old_rank) in enumerate(entries, 1):
            if old_rank is not None:
                at = np.flatnonzero(mine & (kept["nb"] == nb))[0]
                assert kept_stays[at] == (new_rank == old_rank <= stored)
    stays = {(r, nb, rank) for r, nb, rank in zip(merged.row[merged_stays],
                                                  merged.nb[merged_stays],
                                                  merged.rank[merged_stays])}
    assert stays == {(r, nb, rank) for r, nb, rank in zip(kept["row"][kept_stays],
                                                          kept["nb"][kept_stays],
                                                          kept["rank"][kept_stays])}


def test_ease_solver_auto_takes_the_side_with_fewer_multiply_adds():
    """u^3 + nnz (u + n) through the users' side against n^3 through the items' inverse:
    a few users over many items go through the users, many users over few items through the
    items; the setting overrides."""
    rng = np.random.default_rng(3)
    wide = sp.csr_matrix((rng.random((200, 12)) < 0.3).astype(float))  # 200 items, 12 users
    tall = sp.csr_matrix((rng.random((12, 200)) < 0.3).astype(float))  # 12 items, 200 users
    auto = measures.Measure(kind="ease")
    assert ease.solver(wide, np.arange(200), auto) == "users"
    assert ease.solver(tall, np.arange(12), auto) == "items"
    forced = measures.Measure(kind="ease", ease_solver="items")
    assert ease.solver(wide, np.arange(200), forced) == "items"
    # a lambda so small that the users' side would round beyond DUAL_ROUNDING: the items'
    tiny = measures.Measure(kind="ease", ease_lambda=1e-4)
    assert ease.dual_rounding(wide, 1e-4 * ease.mean_square(wide), 0.0) > ease.DUAL_ROUNDING
    assert ease.solver(wide, np.arange(200), tiny) == "items"


def test_ease_lists_are_signed_and_scale_free():
    """Negative weights are kept (they carry much of EASE's accuracy), and multiplying every
    weight by a constant changes nothing: lambda is in units of the mean squared weight."""
    rng = np.random.default_rng(5)
    x = (rng.random((20, 40)) < 0.3).astype(float) * rng.integers(1, 6, size=(20, 40))
    measure = measures.Measure(k=4, kind="ease", ease_lambda=0.5)
    got = _as_dict(measures.full(sp.csr_matrix(x), measure))
    assert any(s < 0 for lst in got.values() for _, s in lst)
    assert sum(len(lst) for lst in got.values()) == 4 * 20  # k x n entries in all
    assert_same_lists(_as_dict(measures.full(sp.csr_matrix(x * 8.0), measure)), got, tol=1e-9)


def test_ease_beyond_its_item_limit_keeps_the_most_popular_and_says_so():
    rng = np.random.default_rng(3)
    x = (rng.random((12, 30)) < np.linspace(0.1, 0.9, 12)[:, None]).astype(float)
    notes = []
    measure = measures.Measure(k=3, kind="ease", ease_lambda=1.0, ease_max_items=5)
    got = _as_dict(measures.full(sp.csr_matrix(x), measure, notice=notes.append))
    popular = set(np.argsort(-(x != 0).sum(axis=1), kind="stable")[:5].tolist())
    assert set(got) == popular and all(nb in popular for lst in got.values() for nb, _ in lst)
    restricted = np.zeros_like(x)
    restricted[sorted(popular)] = x[sorted(popular)]
    assert_same_lists(got, brute_force_ease(restricted, 3, 1.0)[0])
    assert len(notes) == 1 and "12 items" in notes[0] and "ease_max_items" in notes[0]


@AMBIGUOUS_OFTEN
@given(matrices, st.integers(1, 6), st.sampled_from([0.05, 0.5, 30.0]), st.integers(1, 8),
       st.sampled_from([1.0, 4.5]), st.sampled_from([1, 2]), st.sampled_from(DROPOUTS))
def test_sparse_ease_equals_its_definition(rng, k, lam, m, unit, threads, dropout):
    """Random sparse matrices, neighbourhoods smaller and larger than the items' co-occurring
    sets (ties in co-occurrence are common: small integer weights)."""
    n, f = rng.integers(1, 15), rng.integers(1, 12)
    x = (rng.integers(1, 4, size=(n, f)) * (rng.random((n, f)) < 0.5)).astype(float) * unit
    measure = measures.Measure(k=k, kind="sparse_ease", ease_lambda=lam, ease_neighbors=m,
                               threads=threads, ease_dropout=dropout)
    assert not measures.model(measure).incremental
    want, ambiguous = brute_force_sparse_ease(x, k, lam, m, dropout=dropout)
    assume(not ambiguous)
    got = _as_dict(measures.full(sp.csr_matrix(x), measure))
    assert_same_lists(got, want, tol=1e-9)


def test_sparse_ease_reads_a_pair_from_whichever_list_holds_it():
    """Small neighbourhoods over many items make lists one-sided (c among a's strongest, a not
    among c's): the system must still hold G[a, c], whichever of the two regressors comes
    first in N(b). Seeded matrices, so every run covers such cases."""
    checked = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        x = (0.5 + rng.random((14, 12))) * (rng.random((14, 12)) < 0.45)  # no ties
        want, ambiguous = brute_force_sparse_ease(x, 4, 0.5, 3)
        if ambiguous:
            continue
        measure = measures.Measure(k=4, kind="sparse_ease", ease_lambda=0.5, ease_neighbors=3)
        assert_same_lists(_as_dict(measures.full(sp.csr_matrix(x), measure)), want, tol=1e-9)
        checked += 1
    assert checked >= 10


def test_sparse_ease_with_every_item_a_regressor_is_dense_ease():
    """Where every pair of items co-occurs and the neighbourhoods hold every other item, the
    restricted regressions are dense EASE's columns (the block inverse), so the lists agree."""
    rng = np.random.default_rng(11)
    x = rng.integers(1, 5, size=(12, 30)).astype(float)
    x[:, :6] *= rng.random((12, 6)) < 0.5  # some zeros; every pair still shares a user
    dense = measures.Measure(k=3, kind="ease", ease_lambda=2.0)
    local = measures.Measure(k=3, kind="sparse_ease", ease_lambda=2.0, ease_neighbors=11)
    want = _as_dict(measures.full(sp.csr_matrix(x), dense))
    assert_same_lists(_as_dict(measures.full(sp.csr_matrix(x), local)), want, tol=1e-9)
    # the same with DLAE's diagonal (the block inverse holds for any diagonal Lambda)
    dense_dlae = measures.Measure(k=3, kind="ease", ease_lambda=2.0, ease_dropout=0.75)
    local_dlae = measures.Measure(k=3, kind="sparse_ease", ease_lambda=2.0, ease_neighbors=11,
                                  ease_dropout=0.75)
    want_dlae = _as_dict(measures.full(sp.csr_matrix(x), dense_dlae))
    assert want_dlae != want
    assert_same_lists(_as_dict(measures.full(sp.csr_matrix(x), local_dlae)), want_dlae,
                      tol=1e-9)
    fewer = measures.Measure(k=3, kind="sparse_ease", ease_lambda=2.0, ease_neighbors=5)
    assert _as_dict(measures.full(sp.csr_matrix(x), fewer)) != want
