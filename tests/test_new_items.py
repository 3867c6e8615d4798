"""New items (Shop issue): with explore_new_items on, items first seen within new_item_days
get up to that many rows of each list, the ones most similar in content to the user's history
first, with the reason 'new'; the SQL macro and the in-memory scorer agree."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from test_serving import assert_materialized_equal_per_user, assert_same_rows

import rtsql
from rtsql import catalog, ingest, recommend, refresh, settings
from rtsql.serving import ServingState

from conftest import HEADER

SAMPLE = Path(__file__).resolve().parents[1] / "sample_events"
NEW = "new: recently added"


def now_text(hours_ago: float = 0.0) -> str:
    return (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
            - dt.timedelta(hours=hours_ago)).isoformat()


@pytest.fixture
def shop(tmp_path):
    con = rtsql.connect(tmp_path / "shop.duckdb")
    ingest.ingest(con, sorted((SAMPLE / "events").iterdir()))
    catalog.load_items(con, SAMPLE / "items.csv")
    # an established shop: its catalog-only items (first seen as the catalog loaded, now)
    # are as old as the rest
    con.execute("update items set first_seen = least(first_seen, '2026-01-01'::TIMESTAMP)")
    refresh.refresh(con)
    yield con
    con.close()


def rows(con, user, k=10, **options):
    return recommend.recommend(con, user, k, **options)


def test_new_items_take_their_slots_at_the_end(shop, tmp_path):
    user = "user-1"
    before = rows(shop, user)
    assert all(r[3] != NEW for r in before.rows)
    # the sample's items were first seen long ago: nothing is new
    settings.set_value(shop, "explore_new_items", "2")
    assert rows(shop, user).rows == before.rows
    # two catalog items arrive now, one like the user's history (same category and tags as
    # the user's top history item), one unlike anything; a third comes with an event
    top_item, category, tags = shop.execute("""
        select i.item_id, c.category, array_to_string(c.tags, '|')
        from interactions x join users u using (user_key) join items i using (item_key)
        join item_catalog c using (item_key)
        where u.user_id = ? order by x.weight desc, i.item_id limit 1""", [user]).fetchone()
    (tmp_path / "new.csv").write_text(
        "item_id,title,category,tags\n"
        f"sku-like,Like {top_item},{category},{tags}\n"
        "sku-odd,Odd one,no-such-category,nothing|shared\n")
    catalog.load_items(shop, tmp_path / "new.csv")
    (tmp_path / "e.csv").write_text(HEADER + f"user-2,sku-evented,view,{now_text(1)},\n")
    ingest.ingest(shop, [tmp_path / "e.csv"])
    refresh.refresh(shop)  # content lists for the new catalog rows
    got = rows(shop, user)
    assert [r[3] for r in got.rows[-2:]] == [NEW, NEW] and len(got.rows) == 10
    assert got.rows[-2][1] == "sku-like"  # the one similar in content first
    assert [r[1] for r in got.rows[:8]] == [r[1] for r in before.rows[:8]]  # the rest moved down
    assert_same_rows(ServingState.load(shop).recommend(user, 10), got, user)
    # a user without history: two of the three new items, where trending lists one already
    got = rows(shop, "nobody", 5)
    fresh = {"sku-like", "sku-odd", "sku-evented"}
    assert len(fresh & {r[1] for r in got.rows}) == 2 and len(got.rows) == 5
    assert_same_rows(ServingState.load(shop).recommend("nobody", 5), got, "nobody")
    # a category filter applies to the slots too; a window that ended shows none
    got = rows(shop, user, category="no-such-category")
    assert [r[1] for r in got.rows] == ["sku-odd"]
    settings.set_value(shop, "new_item_days", "0.0001")  # 8.6 s
    shop.execute("update items set first_seen = first_seen - interval 1 hour "
                 "where item_id in ('sku-like', 'sku-odd', 'sku-evented')")
    got = rows(shop, user).rows
    settings.set_value(shop, "explore_new_items", "0")
    assert got == rows(shop, user).rows and all(r[3] != NEW for r in got)


def test_a_new_item_already_listed_counts_as_a_slot(shop, tmp_path):
    """An item the list ranks anyway is not moved: it fills one of the slots where it is."""
    settings.set_value(shop, "explore_new_items", "1")
    user = "user-5"
    listed = rows(shop, user).rows[3][1]
    shop.execute("update items set first_seen = now()::TIMESTAMP where item_id = ?", [listed])
    got = rows(shop, user)
    assert got.rows[3][1] == listed and all(r[3] != NEW for r in got.rows)
    assert_same_rows(ServingState.load(shop).recommend(user, 10), got, user)


def test_materialized_lists_have_the_slots(shop, tmp_path):
    (tmp_path / "new.csv").write_text("item_id,title,category\nsku-n1,N1,a\nsku-n2,N2,b\n")
    catalog.load_items(shop, tmp_path / "new.csv")
    settings.set_value(shop, "explore_new_items", "1")
    assert_materialized_equal_per_user(shop, 5, "hybrid", threads=2)
    assert shop.execute("select count(*) from user_recommendations where reason = ?",
                        [NEW]).fetchone()[0] > 0
