"""The contract every registered similarity measure meets, run against each one (as implicit's
TestRecommenderBaseMixin runs every recommender through the same checks): well-formed lists,
determinism, rows without interactions get none, the served prefix, and an honest
``incremental`` flag. Each measure's own math is checked against its definition in
test_measures.py; this file catches a measure that breaks what the refresh and the scorer
assume of all of them."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from rtsql import measures
from rtsql.measures import params
from rtsql.vocabulary import MEASURE_NAMES

seeds = st.integers(0, 2**31 - 1)


def random_matrix(seed: int, rows: int = 14, columns: int = 20) -> sp.csr_matrix:
    """Rows x features with a few empty rows and repeated weights (ties)."""
    rng = np.random.default_rng(seed)
    dense = rng.choice([0.0, 0.0, 0.0, 1.0, 2.0, 0.5], size=(rows, columns))
    dense[rng.integers(rows)] = 0.0  # a row without interactions
    return sp.csr_matrix(dense)


def build(name: str, matrix: sp.csr_matrix, k: int = 4) -> tuple:
    measure = measures.Measure(k=k, kind=name, buffer_length=k + 2, ease_neighbors=6,
                               ease_lambda=5.0, block_cells=64, idf_n=float(matrix.shape[1]))
    return measure, measures.full(matrix, measure)


def test_the_registry_is_the_vocabulary():
    assert tuple(measures.MODELS) == MEASURE_NAMES
    for name, model in measures.MODELS.items():
        assert model.name == name and isinstance(model.incremental, bool)


@pytest.mark.parametrize("name", MEASURE_NAMES)
@settings(max_examples=15, deadline=None)
@given(seeds, st.integers(1, 6))
def test_lists_are_well_formed(name, seed, k):
    matrix = random_matrix(seed)
    measure, lists = build(name, matrix, k)
    n = matrix.shape[0]
    served = measures.model(measure).served(measure)
    longest = max(measure.list_length, served)  # ease serves a longer, signed list
    assert len(lists.row) == len(lists.nb) == len(lists.score) == len(lists.rank)
    assert np.all(np.isfinite(lists.score))
    assert np.all((lists.nb >= 0) & (lists.nb < n)) and np.all(lists.row != lists.nb)
    empty = np.flatnonzero(np.diff(matrix.indptr) == 0)
    assert not np.isin(lists.row, empty).any()  # no interactions, no list
    for row in np.unique(lists.row):
        mine = lists.row == row
        ranks, nbs, scores = lists.rank[mine], lists.nb[mine], lists.score[mine]
        order = np.argsort(ranks)
        ranks, nbs, scores = ranks[order], nbs[order], scores[order]
        assert list(ranks) == list(range(1, len(ranks) + 1))
        assert len(ranks) <= longest and len(set(nbs.tolist())) == len(nbs)
        # by score descending, ties by neighbour key ascending (the one tie rule)
        keys = list(zip((-scores).tolist(), nbs.tolist()))
        assert keys == sorted(keys)
    assert served >= measure.k


@pytest.mark.parametrize("name", MEASURE_NAMES)
def test_a_build_is_deterministic(name):
    matrix = random_matrix(11)
    _, first = build(name, matrix)
    _, again = build(name, matrix)
    for field in ("row", "nb", "score", "rank"):
        assert np.array_equal(getattr(first, field), getattr(again, field)), field


@pytest.mark.parametrize("name", MEASURE_NAMES)
def test_a_measure_without_an_update_refuses_one(name):
    """A measure without an exact update refuses one (the refresh rebuilds it); one with an
    update recomputes every changed row that has interactions (that the update equals a full
    rebuild is test_refresh's property test, through the database)."""
    model = measures.MODELS[name]
    matrix = random_matrix(5)
    measure, lists = build(name, matrix)
    n = matrix.shape[0]
    count = np.bincount(lists.row, minlength=n)
    last = np.full(n, -np.inf)
    last_nb = np.full(n, -1)
    for row in np.unique(lists.row):
        mine = np.flatnonzero(lists.row == row)
        at = mine[np.argmax(lists.rank[mine])]
        last[row], last_nb[row] = lists.score[at], lists.nb[at]
    changed = np.array([0, 3])
    stored = measures.StoredLists(last, last_nb, count,
                                  np.unique(lists.row[np.isin(lists.nb, changed)]))
    if model.incremental:
        result = measures.incremental(matrix, changed, stored, measure)
        assert np.isin(changed[np.diff(matrix.indptr)[changed] > 0], result.replace_rows).all()
    else:
        with pytest.raises(ValueError, match="no exact incremental update"):
            measures.incremental(matrix, changed, stored, measure)


def test_build_parameters_default_to_the_settings():
    """measures/params.py ships to Spark alone, so Measure's defaults are written out; they
    must be the settings registry's."""
    from rtsql.settings import SETTINGS

    m = measures.Measure()
    for field, setting in (("k", "neighbors"), ("shrinkage", "shrinkage"),
                           ("min_support", "min_support"), ("alpha", "rp3_alpha"),
                           ("beta", "rp3_beta"), ("ease_lambda", "ease_lambda"),
                           ("ease_max_items", "ease_max_items"), ("ease_solver", "ease_solver"),
                           ("ease_neighbors", "ease_neighbors")):
        assert getattr(m, field) == SETTINGS[setting].default, field
    assert m.kind == MEASURE_NAMES[0]
    # ease_dropout's default is auto, chosen per refresh; the build's default is the rate auto
    # keeps while it has made no choice: plain EASE
    assert SETTINGS["ease_dropout"].default == "auto" and m.ease_dropout == 0.0


# a second valid value for each measure's own field: a measure's lists must not move with a
# field it does not declare
OTHER_VALUES = {"shrinkage": 7.5, "min_support": 2, "idf_n": 3.0, "alpha": 0.5, "beta": 0.2,
                "ease_lambda": 50.0, "ease_dropout": 0.3, "ease_max_items": 3,
                "ease_solver": "items", "ease_neighbors": 3}


def test_every_build_field_belongs_to_the_engine_or_a_measure():
    from dataclasses import fields

    owned = set(params.ENGINE_FIELDS).union(*(m.parameters for m in measures.MODELS.values()))
    assert {f.name for f in fields(measures.Measure)} == owned
    assert set(OTHER_VALUES) == owned - set(params.ENGINE_FIELDS)


@pytest.mark.parametrize("name", MEASURE_NAMES)
def test_a_measure_reads_only_its_own_parameters(name):
    """Changing any field that is neither the engine's nor in the measure's ``parameters``
    leaves its lists as they were, bit for bit (as implicit's models hold their own)."""
    from dataclasses import replace

    matrix = random_matrix(7)
    measure, lists = build(name, matrix)
    foreign = set(OTHER_VALUES) - set(measures.MODELS[name].parameters)
    assert foreign  # every measure has fields it does not read
    for field in sorted(foreign):
        again = measures.full(matrix, replace(measure, **{field: OTHER_VALUES[field]}))
        for part in ("row", "nb", "score", "rank"):
            assert np.array_equal(getattr(lists, part), getattr(again, part)), (field, part)
