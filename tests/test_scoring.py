"""rtsql.scoring's exact sums: the compiled fsum equals math.fsum, and the double-double
accumulator either proves its rounding correct or hands the sum to the exact path."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from rtsql import scoring

SAMPLE = Path(__file__).resolve().parents[1] / "sample_events"
finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
# sums of these cancel and straddle rounding boundaries far more often than random data does
tricky = st.lists(st.one_of(finite, st.sampled_from([1.0, -1.0, 2.0 ** -53, 2.0 ** -80,
                                                    -2.0 ** -80, 1e16, -1e16, 3.0])),
                  min_size=0, max_size=40)


def accumulate(terms):
    """A sum as score_user accumulates and rounds it: (result, certain)."""
    acc = np.zeros((1, 2))
    rounded = False
    for t in terms:
        rounded |= scoring._add(acc, 0, float(t))
    return scoring._certain(acc[0, 0], acc[0, 1], rounded, len(terms),
                            float(np.sum(np.abs(terms))))


@hyp_settings(max_examples=400, deadline=None)
@given(tricky)
def test_compiled_fsum_equals_math_fsum(terms):
    assert scoring._fsum(np.array(terms, dtype=np.float64), len(terms)) == math.fsum(terms)


@hyp_settings(max_examples=400, deadline=None)
@given(tricky)
def test_a_certain_double_double_sum_is_the_correctly_rounded_one(terms):
    total, certain = accumulate(terms)
    if certain:
        assert total == math.fsum(terms)


def test_midpoints_round_half_even_and_near_misses_go_to_the_exact_path():
    # exactly 1 + 2^-53, a midpoint, held exactly: rounds to even as fsum does
    assert accumulate([1.0, 2.0 ** -53, 2.0 ** -80, -2.0 ** -80]) == (1.0, True)
    # 1 + 2^-53 + 2^-300: just above the midpoint, so fsum rounds up; the low part cannot
    # hold 2^-53 + 2^-300 exactly, so the sum is not certain
    terms = [1.0, 2.0 ** -53, 2.0 ** -300]
    total, certain = accumulate(terms)
    assert not certain
    assert scoring._fsum(np.array(terms), len(terms)) == math.fsum(terms) == 1.0 + 2.0 ** -52


@hyp_settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.integers(0, 3)),
                max_size=60), st.integers(1, 12))
def test_the_heap_keeps_the_k_best_by_score_popularity_and_key(entries, k):
    heap = np.empty((k, 5))
    size = 0
    for key, (score, popularity) in enumerate(entries):
        size = scoring._offer(heap, size, k, score, popularity, key, 0, -1.0)
    got = sorted(((-heap[i, 0], -heap[i, 1], heap[i, 2]) for i in range(size)))
    want = sorted((-score, -popularity, key) for key, (score, popularity) in
                  enumerate(entries))[:k]
    assert got == want


@hyp_settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.sampled_from([1.0, 0.1, 0.2, 0.3, 8.0, -1.0]),
                          st.integers(1, 4), st.integers(0, 3)), max_size=30),
       st.integers(0, 5))
def test_merge_history_is_the_history_macro(entries, refreshed):
    """Per item: weights added as fsum, the latest entry's type (ties on time: the larger id,
    the refreshed row (id -1) first), the latest time; items in key order."""
    rows = [(item, w, code, ts, -1 if n < refreshed else n) for n, (item, w, code, ts) in
            enumerate(entries)]
    want = {}
    for item, w, code, ts, ident in rows:
        weights, latest = want.get(item, ([], None))
        weights.append(w)
        if latest is None or (ts, ident) > latest[:2]:
            latest = (ts, ident, code)
        want[item] = (weights, latest)
    cols = [np.array([r[i] for r in rows], dtype) for i, dtype in
            enumerate((np.int64, np.float64, np.int64, np.int64, np.int64))]
    items, weights, codes, ts = scoring.merge_history(*cols)
    assert items.tolist() == sorted(want)
    assert weights.tolist() == [math.fsum(want[i][0]) for i in sorted(want)]
    assert codes.tolist() == [want[i][1][2] for i in sorted(want)]
    assert ts.tolist() == [want[i][1][0] for i in sorted(want)]


def test_warm_up_compiles_the_signatures_serving_calls(tmp_path):
    """warm_up must load exactly the specializations rtsql.serving uses, else the first
    request (or a refresh's user_recommendations) compiles another one. In a fresh process:
    after warm_up, real calls add no signature."""
    script = f"""
import rtsql
from pathlib import Path
from rtsql import catalog, ingest, refresh, scoring
from rtsql.serving import ServingState
scoring.warm_up()
before = [len(f.signatures) for f in (scoring.score_user, scoring.score_users,
                                      scoring.merge_history)]
con = rtsql.connect({str(tmp_path / 'w.duckdb')!r})
files = sorted(Path({str(SAMPLE)!r}).joinpath('events').iterdir())
ingest.ingest(con, files[:2])
catalog.load_items(con, Path({str(SAMPLE)!r}) / 'items.csv')
refresh.refresh(con)
ingest.ingest(con, files[2:])
state = ServingState.load(con)
state.recommend_all(5, 'hybrid', 2)
state.recommend_all(5, 'trending', 1)
for user in list(state.user_keys)[:20] + ['nobody']:
    state.recommend(user, 5)
state.recommend_for_items(['sku-1', 'sku-2'], 3)
after = [len(f.signatures) for f in (scoring.score_user, scoring.score_users,
                                     scoring.merge_history)]
print(before, after)
assert before == after == [1, 1, 1], (before, after)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
