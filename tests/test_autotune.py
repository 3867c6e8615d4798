"""ease_dropout auto (rtsql/autotune.py): the hold-out split, the ranking metric against a
brute-force reference, the candidates' trials, and how a full refresh makes, records, keeps
and remakes the choice."""

import math
from types import SimpleNamespace
from unittest.mock import patch

import numpy as np
import scipy.sparse as sp
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from test_refresh import assert_ease_lists_are_the_closed_form, configure

import rtsql
from rtsql import autotune, ingest, measures, refresh, settings

from conftest import HEADER


def entries(draw_pairs, times):
    """Columns of distinct (user, item) entries with the given times."""
    pairs = sorted(set(draw_pairs))
    return {"user_key": np.array([u for u, _ in pairs], np.int32),
            "item_key": np.array([i for _, i in pairs], np.int32),
            "weight": np.ones(len(pairs)),
            "last_us": np.array(times[:len(pairs)], np.int64)}


PAIRS = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 11)), min_size=1, max_size=60)
TIMES = st.lists(st.integers(0, 5), min_size=60, max_size=60)  # few values: ties in time


@given(PAIRS, TIMES)
def test_split_holds_out_each_users_newest_fifth_as_protocol_one(pairs, times):
    cols = entries(pairs, times)
    held = autotune.split(cols)
    for user in set(cols["user_key"].tolist()):
        mine = np.flatnonzero(cols["user_key"] == user)
        by_time = sorted(mine, key=lambda e: (cols["last_us"][e], cols["item_key"][e]))
        cut = -(-4 * len(mine) // 5)  # ceil(0.8 n), in integers
        assert [bool(held[e]) for e in by_time] == [p >= cut for p in range(len(mine))]


def reference_ndcg(train: np.ndarray, truth: np.ndarray, w: np.ndarray, users) -> float:
    """Each user's items that the lists score above 0, training items out, by
    score descending then item, the first 10 against the held-out items."""
    total = 0.0
    for u in users:
        scores = {j: sum(train[u, i] * w[i, j] for i in range(w.shape[0]))
                  for j in range(w.shape[1])
                  if train[u, j] == 0 and any(train[u, i] and w[i, j] for i in range(w.shape[0]))}
        ranked = sorted((j for j, s in scores.items() if s > 0), key=lambda j: (-scores[j], j))
        dcg = sum(1 / math.log2(r + 2) for r, j in enumerate(ranked[:10]) if truth[u, j])
        ideal = sum(1 / math.log2(r + 2) for r in range(min(int(truth[u].sum()), 10)))
        total += dcg / ideal
    return total / len(users)


@hsettings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 14))
def test_ndcg_is_the_brute_force_ranking(seed, n_items):
    """Integer weights and scores (sums exact, ties frequent): the metric equals a plain
    Python ranking with the same tie rule."""
    rng = np.random.default_rng(seed)
    n_users = 9
    train = (rng.random((n_users, n_items)) < 0.3) * rng.integers(1, 3, (n_users, n_items))
    truth = (rng.random((n_users, n_items)) < 0.25) & (train == 0)
    w = (rng.random((n_items, n_items)) < 0.4) * rng.integers(-2, 4, (n_items, n_items))
    np.fill_diagonal(w, 0)
    users = np.flatnonzero(truth.any(axis=1) & train.any(axis=1))
    if not len(users):
        return
    row, nb = np.nonzero(w)
    lists = SimpleNamespace(row=row, nb=nb, score=w[row, nb].astype(float))
    got = autotune.ndcg(sp.csr_matrix(train.astype(float)), sp.csr_matrix(truth.astype(float)),
                        lists, users)
    assert abs(got - reference_ndcg(train, truth, w, users)) <= 1e-12


@hsettings(max_examples=15, deadline=None)
@given(PAIRS, TIMES, st.sampled_from(["ease", "sparse_ease"]))
def test_choose_scores_every_candidate_on_its_own_lists_best_first(pairs, times, kind):
    cols = entries(pairs, times)
    shape = (7, 12)
    measure = measures.Measure(kind=kind, k=3)
    trials = autotune.choose(cols, shape, measure)
    held = autotune.split(cols)
    pick = ~held
    train = sp.csr_matrix((cols["weight"][pick], (cols["user_key"][pick], cols["item_key"][pick])),
                          shape=shape)
    truth = sp.csr_matrix((np.ones(held.sum()), (cols["user_key"][held], cols["item_key"][held])),
                          shape=shape)
    users = np.flatnonzero((np.diff(truth.indptr) > 0) & (np.diff(train.indptr) > 0))
    if not len(users):
        assert trials == []
        return
    want = []
    for dropout, factor in autotune.CANDIDATES:
        candidate = measures.Measure(kind=kind, k=3, ease_dropout=dropout,
                                     ease_lambda=measure.ease_lambda * factor)
        lists = measures.full(train.T.tocsr(), candidate)
        want.append(autotune.Trial(dropout, candidate.ease_lambda,
                                   autotune.ndcg(train, truth, lists, users)))
    assert trials == sorted(want, key=lambda t: -t.ndcg)


def test_a_full_refresh_makes_the_choice_records_it_and_remakes_it_only_when_due(tmp_path,
                                                                                  write):
    con = rtsql.connect(tmp_path / "a.duckdb")
    assert settings.get(con, "ease_dropout") == "auto"
    configure(con, similarity="ease", neighbors=3)
    rng = np.random.default_rng(3)

    def batch(name: str, users: range) -> None:
        rows = "".join(f"u{u},i{rng.integers(0, 15)},purchase,2026-10-{1 + j:02d}T00:00:00,\n"
                       for u in users for j in range(6))
        ingest.ingest(con, [write(name, HEADER + rows)])

    batch("a.csv", range(20))
    calls = []
    real = autotune.choose

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    with patch.object(autotune, "choose", spy):
        first = refresh.refresh(con)
        state = refresh._state(con)
        cols = refresh._capped_entries(con, settings.get_all(con))
        [best, *_] = real(cols, refresh._shape(con), refresh._measure(
            {**settings.get_all(con), "ease_dropout": 0.0}, "ease"))
        assert (float(state["ease_dropout_chosen"]), float(state["ease_lambda_chosen"])) == \
            (best.dropout, best.lam)
        assert any(n.startswith(f"ease_dropout auto: p {best.dropout:g}") for n in first.notes)
        assert_ease_lists_are_the_closed_form(con, 3)
        assert len(calls) == 1
        refresh.refresh(con, full=True)  # nothing changed: the choice stands
        assert len(calls) == 1
        batch("b.csv", range(20, 24))  # an update between full refreshes keeps it too
        assert refresh.refresh(con).mode == "incremental"
        assert_ease_lists_are_the_closed_form(con, 3)
        assert len(calls) == 1
        configure(con, ease_lambda=100)  # a model setting: made again
        refresh.refresh(con)
        assert len(calls) == 2
        batch("c.csv", range(24, 80))  # the matrix more than doubled: made again
        refresh.refresh(con, full=True)
        assert len(calls) == 3
        configure(con, ease_dropout=0.5)  # a fixed rate: no choice, the rate as set
        refresh.refresh(con)
        assert len(calls) == 3
        assert_ease_lists_are_the_closed_form(con, 3)
    con.close()


def test_ease_dropout_takes_auto_or_a_rate_and_says_what_it_accepts(con):
    assert settings.set_value(con, "ease_dropout", "AUTO") == "auto"
    assert settings.set_value(con, "ease_dropout", "0.75") == 0.75
    for bad, said in (("1", "auto, or a number from 0 to 0.95"), ("often", "number or auto")):
        try:
            settings.set_value(con, "ease_dropout", bad)
        except rtsql.errors.InvalidSetting as error:
            assert said in str(error)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_choose_puts_the_best_candidate_first():
    """On data where the candidates differ, the trials come best first (the one a refresh
    keeps)."""
    rng = np.random.default_rng(0)
    x = sp.random(300, 80, density=0.1, random_state=1, format="coo")
    cols = {"user_key": x.row.astype(np.int32), "item_key": x.col.astype(np.int32),
            "weight": np.ones(x.nnz), "last_us": rng.integers(0, 10**6, x.nnz)}
    trials = autotune.choose(cols, x.shape, measures.Measure(kind="ease", k=10))
    scores = [t.ndcg for t in trials]
    assert len(set(scores)) == len(autotune.CANDIDATES)
    assert scores == sorted(scores, reverse=True)
