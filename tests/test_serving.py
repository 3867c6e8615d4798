"""The in-memory scorer (rtsql.serving) returns the SQL macros' rows: same items, ranks and
reasons, scores within 1e-9, on the sample set and on random databases, for every strategy,
with filters, variants, pending (unrefreshed) events, unknown users and items."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

import rtsql
from rtsql import catalog, feedback, ingest, recommend, refresh, settings
from rtsql.serving import ServingState

from conftest import HEADER
from helpers import assert_same_state

SAMPLE = Path(__file__).resolve().parents[1] / "sample_events"
STRATEGIES = ("hybrid", "item", "user", "content", "trending")


def assert_same_rows(got, want, context):
    assert [r[:2] for r in got.rows] == [tuple(r[:2]) for r in want.rows], (context, got.rows,
                                                                             want.rows)
    for g, w in zip(got.rows, want.rows):
        assert abs(g[2] - w[2]) <= 1e-9, (context, g, w)
        assert g[3:] == tuple(w[3:]), (context, g, w)


def compare_everything(con, users, items, rng, calls=60):
    """Compare the scorer with the macros on ``calls`` random requests of every kind."""
    state = ServingState.load(con)
    categories = [r[0] for r in con.execute(
        "select distinct category from item_catalog where category is not null").fetchall()]
    variants = [r[0] for r in con.execute("select name from ab_variants").fetchall()]
    compared = 0
    for _ in range(calls):
        user = rng.choice(users + ["nobody"])
        k = rng.choice([1, 3, 10, 40])
        options = dict(strategy=rng.choice(STRATEGIES),
                       exclude=rng.sample(items, min(len(items), rng.choice([0, 1, 3])))
                       + (["no-such-item"] if rng.random() < 0.2 else []) or None,
                       category=rng.choice([None, None] + categories + ["no-such-category"]),
                       variant=rng.choice([None, "auto"] + variants))
        want = recommend.recommend(con, user, k, **options)
        assert_same_rows(state.recommend(user, k, **options), want, (user, k, options))
        basket = rng.sample(items, min(len(items), rng.choice([1, 2, 4]))) + ["no-such-item"]
        options["variant"] = rng.choice([None] + variants)
        want = rtsql_recommend_for_items(con, basket, k, options)
        assert_same_rows(state.recommend_for_items(basket, k, **options), want, (basket, options))
        compared += bool(want.rows)
    for item in items[:10]:
        for by in ("cf", "content"):
            assert_same_rows(state.similar_items(item, 7, by), recommend.similar_items(
                con, item, 7, by), (item, by))
    for user in users[:10]:
        assert_same_rows(state.similar_users(user, 7), recommend.similar_users(con, user, 7),
                         user)
    assert_same_rows(state.trending(9), recommend.trending(con, 9), "trending")
    return compared


def rtsql_recommend_for_items(con, basket, k, options):
    cur = con.execute("select * from recommend_for_items(?, k := ?, exclude := ?, "
                      "category := ?, strategy := ?, variant := ?)",
                      [basket, k, options["exclude"], options["category"],
                       options["strategy"], options["variant"]])
    return recommend.Rows([d[0] for d in cur.description], cur.fetchall())


@pytest.mark.parametrize("similarity", ["auto", "cosine"])
def test_sample_set_with_pending_events_equals_the_macros(db_path, similarity):
    """auto is ease here: item lists with negative scores (checked), summed with the rest."""
    con = rtsql.connect(db_path)
    settings.set_value(con, "similarity", similarity)
    files = sorted((SAMPLE / "events").iterdir())
    ingest.ingest(con, files[:2])
    catalog.load_items(con, SAMPLE / "items.csv")
    refresh.refresh(con)
    negative = con.execute("select count(*) from item_neighbors where score < 0").fetchone()[0]
    assert (negative > 0) == (similarity == "auto")
    ingest.ingest(con, files[2:])  # pending: real-time history, new users and items
    feedback.set_variants(con, {"a": 0.5, "b": 0.5},
                          {"b": {"weight_user_cf": "2", "recency_half_life_days": "3",
                                 "exclude_seen": "false"}})
    users = [r[0] for r in con.execute("select user_id from users order by user_id").fetchall()]
    items = [r[0] for r in con.execute("select item_id from items order by item_id").fetchall()]
    assert compare_everything(con, users, items, random.Random(4), calls=80) > 60
    for strategy in STRATEGIES:  # users with and without pending events, new users
        assert_materialized_equal_per_user(con, 6, strategy, threads=2)
    con.close()


def test_capped_histories_equal_the_macros(db_path):
    """max_history 3: most users count with their 3 latest items, as the refresh sees them
    (the macro's h, and each neighbour's row in user-cf)."""
    con = rtsql.connect(db_path)
    settings.set_value(con, "max_history", "3")
    files = sorted((SAMPLE / "events").iterdir())
    ingest.ingest(con, files[:2])
    catalog.load_items(con, SAMPLE / "items.csv")
    refresh.refresh(con)
    ingest.ingest(con, files[2:])
    users = [r[0] for r in con.execute("select user_id from users order by user_id").fetchall()]
    items = [r[0] for r in con.execute("select item_id from items order by item_id").fetchall()]
    assert compare_everything(con, users, items, random.Random(5), calls=20) > 15
    state = ServingState.load(con)
    for user in users:  # user-cf alone shows each neighbour's capped row
        assert_same_rows(state.recommend(user, 10, strategy="user"),
                         recommend.recommend(con, user, 10, strategy="user"), user)
    assert_materialized_equal_per_user(con, 8, "hybrid", threads=2)
    con.close()


def test_catch_up_reads_what_was_committed_after_loading(db_path, tmp_path):
    con = rtsql.connect(db_path)
    files = sorted((SAMPLE / "events").iterdir())
    ingest.ingest(con, files[:2])
    catalog.load_items(con, SAMPLE / "items.csv")
    refresh.refresh(con)
    state = ServingState.load(con)
    live = tmp_path / "live.csv"
    live.write_text(HEADER + "newcomer,sku-7,purchase,2026-11-01T00:00:00,\n"
                             "user-43,sku-new,cart,2026-11-01T00:00:01,\n")
    ingest.ingest(con, [live])
    before = state.recommend("newcomer", 5)
    assert all(r[3].startswith(("trending", "popular")) for r in before.rows)
    assert state.pending_events == 0
    assert state.catch_up(con) == 2
    assert state.pending_events == 2 == sum(len(rows) for rows in state.pending.values())
    after = state.recommend("newcomer", 5)
    assert_same_rows(after, recommend.recommend(con, "newcomer", 5), "newcomer")
    assert after.rows[0][3].startswith("item-cf: because you bought")
    assert_same_rows(state.recommend("user-43", 20), recommend.recommend(con, "user-43", 20),
                     "user-43")
    con.close()


# 75 days before today, so the events' first times fall on both sides of new_item_days 60
T0 = (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, hour=0, minute=0, second=0,
                                               microsecond=0) - dt.timedelta(days=75))

events_strategy = st.lists(
    st.tuples(st.integers(0, 11), st.integers(0, 14),
              st.sampled_from(["view", "click", "cart", "purchase", "rating"]),
              st.integers(0, 30 * 24), st.sampled_from([1, 2, 3, 4, 5])),
    min_size=5, max_size=120)


@pytest.mark.slow
@hyp_settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                     HealthCheck.too_slow])
@given(events=events_strategy, refreshed=st.floats(0, 1), decay=st.sampled_from([0, 3]),
       recency=st.sampled_from(["0", "2"]), exclude_seen=st.booleans(),
       neighbors=st.sampled_from(["2", "5", "50"]), max_history=st.sampled_from(["0", "3", "500"]),
       seed=st.integers(0, 1000), similarity=st.sampled_from(["auto", "cosine", "sparse_ease"]),
       suppress=st.sampled_from(["0", "1", "2"]), explore=st.sampled_from(["0", "1", "3"]),
       new_days=st.sampled_from(["7", "60"]))
def test_random_databases_equal_the_macros(tmp_path_factory, events, refreshed, decay,
                                           recency, exclude_seen, neighbors, max_history, seed,
                                           similarity, suppress, explore, new_days):
    """Random events (ties in time and score are common at this size), a random share of them
    refreshed, the rest pending; random serving settings, a catalog with categories, variants,
    hidden items and windows, impressions (some answered by a later click) with repeats
    suppressed after 1 or 2 of them, or not at all; new-item slots (items first seen within 7
    or 60 days: the events' first times fall on both sides of 60 days ago, catalog-only items
    are new)."""
    folder = tmp_path_factory.mktemp("db")
    con = rtsql.connect(folder / "r.duckdb")
    settings.set_value(con, "half_life_days", str(decay))
    settings.set_value(con, "neighbors", neighbors)
    settings.set_value(con, "max_history", max_history)  # 3: most users' rows are capped
    settings.set_value(con, "recency_half_life_days", recency)
    settings.set_value(con, "exclude_seen", str(exclude_seen))
    settings.set_value(con, "similarity", similarity)  # auto: ease; both signed lists
    lines = [f"u{u},i{i},{t},{(T0 + dt.timedelta(hours=h)).isoformat()},{v}\n"
             for u, i, t, h, v in events]
    cut = int(len(lines) * refreshed)
    (folder / "a.csv").write_text(HEADER + "".join(lines[:cut]))
    (folder / "b.csv").write_text(HEADER + "".join(lines[cut:]))
    (folder / "items.csv").write_text("item_id,title,category\n" + "".join(
        f"i{i},Item {i},{'even' if i % 2 == 0 else 'odd'}\n" for i in range(0, 15, 3)))
    # availability: hidden, a window not yet open, one closed, one open now
    windows = random.Random(seed).sample(["false,,", "true,2099-01-01,", ",,2000-01-01",
                                          ",2000-01-01,2099-01-01"] + [None] * 8, 12)
    (folder / "available.csv").write_text("item_id,available,available_from,available_until\n"
                                          + "".join(f"i{i},{w}\n" for i, w in enumerate(windows)
                                                    if w is not None))
    ingest.ingest(con, [folder / "a.csv"])
    catalog.load_items(con, folder / "available.csv")  # the next file keeps availability
    catalog.load_items(con, folder / "items.csv")
    refresh.refresh(con)
    ingest.ingest(con, [folder / "b.csv"])
    feedback.set_variants(con, {"x": 0.3, "y": 0.7}, {"y": {"weight_content": "1",
                                                            "weight_trending": "0"},
                                                      "x": {"suppress_after_impressions": "1"}})
    # impressions of the last two days (the window is 24 hours), then clicks on some of them
    settings.set_value(con, "suppress_after_impressions", suppress)
    settings.set_value(con, "explore_new_items", explore)
    settings.set_value(con, "new_item_days", new_days)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    shown = random.Random(seed + 1)
    impressions = [{"user_id": f"u{shown.randrange(12)}", "item_id": f"i{shown.randrange(15)}",
                    "ts": (now - dt.timedelta(hours=shown.choice([1, 2, 5, 30, 40]))).isoformat(),
                    "strategy": "hybrid"} for _ in range(shown.randrange(0, 60))]
    feedback.load_impression_rows(con, impressions, "test")
    answered = [r for r in impressions[: len(impressions) // 4]]
    (folder / "c.csv").write_text(HEADER + "".join(
        f"{r['user_id']},{r['item_id']},click,{(now - dt.timedelta(hours=3)).isoformat()},\n"
        for r in answered))
    ingest.ingest(con, [folder / "c.csv"])
    users = [r[0] for r in con.execute("select user_id from users order by 1").fetchall()]
    items = [r[0] for r in con.execute("select item_id from items order by 1").fetchall()]
    rng = random.Random(seed)
    compare_everything(con, users, items, rng, calls=12)
    assert_materialized_equal_per_user(con, rng.choice([1, 4, 12]), rng.choice(STRATEGIES),
                                       threads=rng.choice([1, 2]))
    con.close()


def assert_materialized_equal_per_user(con, k, strategy, threads):
    """user_recommendations (the batched scorer, ids and reasons joined in SQL) holds, for
    every user, exactly the rows of the per-request scorer."""
    from rtsql import materialize

    materialize.materialize(con, k, strategy, threads=threads)
    state = ServingState.load(con)
    got = {}
    for user, rank, item, score, reason in con.execute(
            "select user_id, rank, item_id, score, reason from user_recommendations "
            "order by user_id, rank").fetchall():
        got.setdefault(user, []).append((rank, item, score, reason))
    users = [r[0] for r in con.execute("select user_id from users").fetchall()]
    assert sorted(got) == sorted(u for u in users if got.get(u))
    for user in users:
        want = state.recommend(user, k, strategy=strategy).rows
        assert got.get(user, []) == want, (user, strategy)


def test_materialized_recommendations_equal_the_macro_for_every_user(db_path):
    con = rtsql.connect(db_path)
    ingest.ingest(con, sorted((SAMPLE / "events").iterdir()))
    catalog.load_items(con, SAMPLE / "items.csv")
    settings.set_value(con, "materialize_recommendations", "true")
    settings.set_value(con, "materialize_k", "7")
    settings.set_value(con, "materialize_strategy", "hybrid")
    refresh.refresh(con)
    users = [r[0] for r in con.execute("select user_id from users order by 1").fetchall()]
    got = con.execute("select user_id, rank, item_id, score, reason from user_recommendations "
                      "order by user_id, rank").fetchall()
    assert len({r[0] for r in got}) == len(users) > 200
    want = con.execute("select u.user_id, r.rank, r.item_id, r.score, r.reason from users u, "
                       "lateral recommend(u.user_id, 7) r order by u.user_id, r.rank").fetchall()
    assert [(r[0], r[1], r[2], r[4]) for r in got] == [(r[0], r[1], r[2], r[4]) for r in want]
    assert all(abs(g[3] - w[3]) <= 1e-9 for g, w in zip(got, want))
    # forget removes the user's rows; an unchanged refresh keeps the table as it is
    refresh.forget(con, users[0])
    assert con.execute("select count(*) from user_recommendations where user_id = ?",
                       [users[0]]).fetchall() == [(0,)]
    before = con.execute("select count(*) from user_recommendations").fetchall()
    assert refresh.refresh(con).mode == "none"
    assert con.execute("select count(*) from user_recommendations").fetchall() == before
    con.close()


def test_a_list_score_that_is_not_positive_is_refused(db_path):
    """The scorer's exact sums rely on positive terms; a score rtsql never writes (edited in
    by hand) stops the load with a message instead of rounding sums wrongly."""
    from rtsql.errors import ModelError

    con = rtsql.connect(db_path)
    ingest.ingest(con, sorted((SAMPLE / "events").iterdir()))
    refresh.refresh(con)
    ServingState.load(con)
    con.execute("update user_neighbors set score = -score where rank = 1")
    with pytest.raises(ModelError, match="refresh --full"):
        ServingState.load(con)
    con.close()


def advance(state, con, result):
    """What serve does after a background refresh (Service._reload), without the server."""
    rewritten = result.rewritten
    model = state.advanced_model(con, rewritten.since, rewritten.item_lists,
                                 rewritten.user_lists, rewritten.users, rewritten.content)
    assert model is not None
    fresh = state.with_model(model, rewritten.users)
    fresh.catch_up(con)
    return fresh


@pytest.mark.slow
@hyp_settings(deadline=None, max_examples=40,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=events_strategy, cuts=st.tuples(st.floats(0.1, 1), st.floats(0, 1),
                                                st.floats(0, 1)),
       similarity=st.sampled_from(["auto", "cosine", "sparse_ease"]),
       max_history=st.sampled_from(["0", "3", "500"]), item_users=st.sampled_from(["0", "2"]),
       catalog_change=st.booleans())
def test_a_state_advanced_by_what_a_refresh_rewrote_equals_a_load(
        tmp_path_factory, events, cuts, similarity, max_history, item_users, catalog_change):
    """Random events in four parts: refreshed in full; then loaded and pending; then caught
    up; then an incremental refresh, after which the state takes only the rows the refresh
    rewrote (and the events committed meanwhile, the fourth part): every array, id and
    pending event as a fresh load's, and the same recommendations."""
    folder = tmp_path_factory.mktemp("db")
    con = rtsql.connect(folder / "r.duckdb")
    settings.set_value(con, "similarity", similarity)  # auto: dense ease, every list rewritten
    settings.set_value(con, "max_history", max_history)
    settings.set_value(con, "max_item_users", item_users)
    settings.set_value(con, "rebuild_fraction", "1")  # sparse_ease keeps its lists
    lines = [f"u{u},i{i},{t},{(T0 + dt.timedelta(hours=h)).isoformat()},{v}\n"
             for u, i, t, h, v in events]
    first = max(1, int(len(lines) * cuts[0]))
    second, third = sorted(first + int((len(lines) - first) * c) for c in cuts[1:])
    parts = [lines[:first], lines[first:second], lines[second:third], lines[third:]]
    for n, part in enumerate(parts):
        (folder / f"{n}.csv").write_text(HEADER + "".join(part))
    (folder / "items.csv").write_text("item_id,title,category\n" + "".join(
        f"i{i},Item {i},{'even' if i % 2 == 0 else 'odd'}\n" for i in range(0, 15, 3)))
    ingest.ingest(con, [folder / "0.csv"])
    catalog.load_items(con, folder / "items.csv")
    refresh.refresh(con, full=True)
    ingest.ingest(con, [folder / "1.csv"])
    state = ServingState.load(con)
    ingest.ingest(con, [folder / "2.csv"])
    state.catch_up(con)
    if catalog_change:  # a new category: the content lists are rebuilt, titles read again
        (folder / "more.csv").write_text("item_id,title,category\ni1,One,new\ni4,Four,new\n")
        catalog.load_items(con, folder / "more.csv")
    result = refresh.refresh(con)
    assume(result.rewritten is not None)  # a full refresh (ease's lambda drifted): a load
    ingest.ingest(con, [folder / "3.csv"])  # committed before the swap
    got, want = advance(state, con, result), ServingState.load(con)
    assert_same_state(got, want)
    users = [r[0] for r in con.execute("select user_id from users order by 1").fetchall()]
    for user in users:
        assert_same_rows(got.recommend(user, 5), want.recommend(user, 5), user)
    con.close()
