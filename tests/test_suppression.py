"""No repeats (Shop issue): an item shown to a user suppress_after_impressions times within
suppress_window_hours, with no click or better since, leaves that user's lists, in SQL and in
the server alike, and a click brings it back."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

import rtsql
from rtsql import feedback, ingest, refresh, settings
from rtsql.serving import ServingState

from conftest import HEADER

SAMPLE = Path(__file__).resolve().parents[1] / "sample_events"


def ago(hours: float) -> str:
    return (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
            - dt.timedelta(hours=hours)).isoformat()


def shown(user: str, item: str, *hours: float) -> list[dict]:
    return [{"user_id": user, "item_id": item, "ts": ago(h), "strategy": "hybrid"}
            for h in hours]


def sql_items(con, user: str, variant: str | None = None) -> list[str]:
    return [r[1] for r in con.execute("select * from recommend(?, 10, variant := ?)",
                                      [user, variant]).fetchall()]


def memory_items(state: ServingState, user: str, variant: str | None = None) -> list[str]:
    return [r[1] for r in state.recommend(user, 10, variant=variant).rows]


@pytest.fixture
def shop(tmp_path):
    con = rtsql.connect(tmp_path / "shop.duckdb")
    ingest.ingest(con, sorted((SAMPLE / "events").iterdir()))
    settings.set_value(con, "materialize_recommendations", "true")
    refresh.refresh(con)
    yield con
    con.close()


def test_repeats_leave_the_list_after_n_impressions_and_a_click_lifts_them(shop, tmp_path):
    user = "user-1"
    top = sql_items(shop, user)[0]
    settings.set_value(shop, "suppress_after_impressions", "3")
    state = ServingState.load(shop)  # the server's copy, brought forward as the writer does
    # two recent impressions and one outside the 24-hour window: not yet
    feedback.load_impression_rows(shop, shown(user, top, 1, 2, 30), "test#1")
    state.impressions_added(shop, ["test#1"])
    assert top in sql_items(shop, user) and top in memory_items(state, user)
    # the third within the window: gone, in SQL, in memory and in user_recommendations
    feedback.load_impression_rows(shop, shown(user, top, 0.5), "test#2")
    state.impressions_added(shop, ["test#2"])
    assert top not in sql_items(shop, user) and len(sql_items(shop, user)) == 10
    assert memory_items(state, user) == sql_items(shop, user)
    assert top not in [r[0] for r in shop.execute(
        "select item_id from user_recommendations where user_id = ?", [user]).fetchall()]
    # a refresh's user_recommendations score this user with the item left out, k rows
    from test_serving import assert_materialized_equal_per_user
    assert_materialized_equal_per_user(shop, 10, "hybrid", threads=1)
    # other users are not affected
    other = shop.execute("select count(*) from rtsql_suppressed(NULL, NULL) s join users u "
                         "using (user_key) where u.user_id <> ?", [user]).fetchone()[0]
    assert other == 0
    # a wider window counts the old one too; a narrower one drops two of them
    settings.set_value(shop, "suppress_window_hours", "0.75")
    assert top in sql_items(shop, user)
    settings.set_value(shop, "suppress_window_hours", "24")
    # a click after the impressions lifts it (the server sees the click in catch-up)
    (tmp_path / "click.csv").write_text(HEADER + f"{user},{top},click,{ago(0.1)},\n")
    ingest.ingest(shop, [tmp_path / "click.csv"])
    state.catch_up(shop)
    assert state.impressions.suppressed(state.user_key(user), 3, 24.0).size == 0
    assert memory_items(state, user) == sql_items(shop, user)
    # ... and an item shown again after the click counts from zero
    feedback.load_impression_rows(shop, shown(user, top, 0.05, 0.04), "test#3")
    state.impressions_added(shop, ["test#3"])
    assert memory_items(state, user) == sql_items(shop, user)
    assert shop.execute("select count(*) from rtsql_suppressed(NULL, NULL)").fetchone()[0] == 0


def test_a_variant_overrides_the_rule(shop):
    user = "user-3"
    top = sql_items(shop, user)[0]
    feedback.set_variants(shop, {"strict": 0.5, "plain": 0.5},
                          {"strict": {"suppress_after_impressions": "1"}})
    feedback.load_impression_rows(shop, shown(user, top, 1), "test#1")
    state = ServingState.load(shop)
    assert top in sql_items(shop, user) and top in memory_items(state, user)  # off globally
    assert top not in sql_items(shop, user, "strict")
    assert memory_items(state, user, "strict") == sql_items(shop, user, "strict")


def test_the_settings_are_checked(shop):
    with pytest.raises(rtsql.errors.InvalidSetting):
        settings.set_value(shop, "suppress_after_impressions", "-1")
    with pytest.raises(rtsql.errors.InvalidSetting):
        settings.set_value(shop, "suppress_window_hours", "0")


@pytest.mark.slow
def test_the_server_suppresses_at_once_and_a_posted_click_lifts_it(tmp_path):
    from test_server import Server, build_database

    db = build_database(tmp_path / "shop.duckdb")
    con = rtsql.connect(db)
    settings.set_value(con, "suppress_after_impressions", "2")
    settings.set_value(con, "exclude_seen", "false")  # so the clicked item may come back
    con.close()
    server = Server(db)
    try:
        _, before = server.json("GET", "/recommend/user-1?k=50")
        top = before["items"][0]["item_id"]
        status, _ = server.json("POST", "/impressions",
                                json.dumps(shown("user-1", top, 0.2)).encode())
        assert status == 200
        _, once = server.json("GET", "/recommend/user-1?k=50")
        assert once == before  # one impression of two
        server.json("POST", "/impressions", json.dumps(shown("user-1", top, 0.1)).encode())
        _, after = server.json("GET", "/recommend/user-1?k=50")
        assert top not in [r["item_id"] for r in after["items"]] and len(after["items"]) == 50
        status, _ = server.json("POST", "/events", json.dumps([
            {"user_id": "user-1", "item_id": top, "event_type": "click", "ts": ago(0.01)}
        ]).encode())
        assert status == 200
        _, back = server.json("GET", "/recommend/user-1?k=50")
        assert top in [r["item_id"] for r in back["items"]]
    finally:
        code, _ = server.stop()
    assert code == 0
