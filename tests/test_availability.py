"""Item availability (Shop issue): hidden items and availability windows leave every list at
once, in SQL and in the server, and come back; bad values are rejected with their reason."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

import rtsql
from rtsql import availability, catalog, ingest, refresh, settings
from rtsql.errors import UnknownItem
from rtsql.serving import ServingState

SAMPLE = Path(__file__).resolve().parents[1] / "sample_events"


def surfaces(con, users, items):
    """Every list a user sees, by SQL macro: {name: [item ids]}."""
    got = {"trending": [r[1] for r in con.execute("select * from trending(10)").fetchall()]}
    for user in users:
        got[f"recommend {user}"] = [r[1] for r in con.execute(
            "select * from recommend(?, 10)", [user]).fetchall()]
        got[f"user_recommendations {user}"] = [r[0] for r in con.execute(
            "select item_id from user_recommendations where user_id = ? order by rank",
            [user]).fetchall()]
    for item in items:
        for method in ("cf", "content"):
            got[f"similar_items {item} {method}"] = [r[1] for r in con.execute(
                "select * from similar_items(?, 10, method := ?)", [item, method]).fetchall()]
        got[f"recommend_for_items {item}"] = [r[1] for r in con.execute(
            "select * from recommend_for_items([?], 10)", [item]).fetchall()]
    return got


def server_surfaces(con, users, items):
    state = ServingState.load(con)
    got = {"trending": [r[1] for r in state.trending(10).rows]}
    for user in users:
        got[f"recommend {user}"] = [r[1] for r in state.recommend(user, 10).rows]
    for item in items:
        for method in ("cf", "content"):
            got[f"similar_items {item} {method}"] = [r[1] for r in
                                                     state.similar_items(item, 10, method).rows]
        got[f"recommend_for_items {item}"] = [r[1] for r in
                                              state.recommend_for_items([item], 10).rows]
    return got


@pytest.fixture
def shop(tmp_path):
    con = rtsql.connect(tmp_path / "shop.duckdb")
    ingest.ingest(con, sorted((SAMPLE / "events").iterdir()))
    catalog.load_items(con, SAMPLE / "items.csv")
    settings.set_value(con, "materialize_recommendations", "true")
    refresh.refresh(con)
    yield con
    con.close()


def test_a_hidden_item_leaves_every_list_at_once_and_comes_back(shop):
    con = shop
    top = con.execute("select * from trending(1)").fetchall()[0][1]
    users = [r[0] for r in con.execute(
        "select user_id from user_recommendations u, (select ?::VARCHAR as t) "
        "where item_id = t limit 3", [top]).fetchall()]
    items = [r[0] for r in con.execute(
        "select item_id from item_similarity where neighbor_id = ? limit 3", [top]).fetchall()]
    assert users and items
    before, served = surfaces(con, users, items), server_surfaces(con, users, items)
    assert sum(top in v for v in before.values()) >= 3
    history = con.execute("select count(*) from interactions join items using (item_key) "
                          "where item_id = ?", [top]).fetchall()
    assert availability.set_available(con, [f" {top}\t"], False) == 1  # ids are trimmed
    hidden, served_hidden = surfaces(con, users, items), server_surfaces(con, users, items)
    for name, listed in {**hidden, **served_hidden}.items():
        assert top not in listed, name
    for name, listed in hidden.items():  # the rest ranked again: as many rows where there were
        if name.startswith(("trending", "recommend")):
            assert len(listed) == len(before[name]), name
    for name in served:
        assert served_hidden[name] == hidden[name], name  # the server agrees with SQL
    # its events still count: the models did not change, only the lists shown
    assert con.execute("select count(*) from interactions join items using (item_key) "
                       "where item_id = ?", [top]).fetchall() == history
    assert con.execute("select item_id from unavailable_items").fetchall() == [(top,)]
    availability.set_available(con, [top], True)
    assert surfaces(con, users, items) == before
    assert server_surfaces(con, users, items) == served


def test_unknown_ids_change_nothing(shop):
    with pytest.raises(UnknownItem, match="'no-such-sku'"):
        availability.set_available(shop, ["sku-1", "no-such-sku"], False)
    assert shop.execute("select count(*) from item_availability").fetchall() == [(0,)]


def test_windows_open_and_close(shop, write):
    """A window [from, until): before it and after it the item is hidden, inside it shown; in
    SQL by the wall clock, in the server's copy at any given time."""
    con = shop
    top = con.execute("select * from trending(1)").fetchall()[0][1]
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    day = dt.timedelta(days=1)

    def window(start, end):
        catalog.load_items(con, write("w.csv", "item_id,available_from,available_until\n"
                                      f"{top},{start or ''},{end or ''}\n"))
        return top in [r[1] for r in con.execute("select * from trending(5)").fetchall()]

    assert not window(now + day, None)  # not yet on sale
    assert window(now - day, now + day)  # on sale
    assert not window(now - 2 * day, now - day)  # withdrawn
    assert window(None, None)
    # the server's rule at three times around one window
    window(now + day, now + 2 * day)
    rows = availability.Availability.load(con)
    key = con.execute("select item_key from items where item_id = ?", [top]).fetchall()[0][0]
    at = {name: int((now + shift - dt.datetime(1970, 1, 1)).total_seconds() * 1e6)
          for name, shift in (("before", dt.timedelta(0)), ("inside", 1.5 * day),
                              ("after", 2 * day))}
    assert [key in rows.unavailable(at[t]) for t in ("before", "inside", "after")] == \
        [True, False, True]
    assert np.array_equal(rows.unavailable(at["before"]), [key])


def test_bad_availability_values_are_rejected_with_their_line(shop, write):
    path = write("bad.csv", "item_id,title,available,available_from,available_until\n"
                            "sku-1,One,maybe,,\n"
                            "sku-2,Two,,2026-05-02,2026-05-01\n"
                            "sku-3,Three,,next week,\n"
                            "sku-4,Four,no,,\n")
    counts = catalog.load_items(shop, path)
    assert (counts["upserted"], counts["rejected"]) == (1, 3)
    rejects = shop.execute("select line, reason from rejects where source = ? order by line",
                           [str(path)]).fetchall()
    assert [line for line, _ in rejects] == [2, 3, 4]
    assert "available is not a boolean" in rejects[0][1]
    assert "available_until is not after available_from" in rejects[1][1]
    assert "available_from is not a timestamp" in rejects[2][1]
    assert shop.execute("select item_id, available from unavailable_items").fetchall() == \
        [("sku-4", False)]
    # a rejected row changed nothing: sku-1 kept its title
    assert shop.execute("select title from item_catalog join items using (item_key) "
                        "where item_id = 'sku-1'").fetchall() != [("One",)]


def test_catalog_rows_from_a_request_body_meet_the_file_validation(shop):
    """POST /items's loader: a JSON array upserts, sets availability and rejects bad rows with
    the body's name and line, as a file would; CSV bodies too; a body that is no JSON array
    or rows is refused, nothing written."""
    before = shop.execute("select count(*) from item_catalog").fetchone()[0]
    body = (b'[{"item_id": "sku-1", "title": "Renamed", "available": false},\n'
            b' {"item_id": "sku-new", "title": "Brand new", "category": "tools"},\n'
            b' {"item_id": "sku-2", "available": "maybe"},\n'
            b' {"title": "no id"}]')
    counts = catalog.load_items_body(shop, body, "http:POST /items#1")
    assert (counts["upserted"], counts["new_items"], counts["rejected"]) == (2, 1, 2)
    assert [r["line"] for r in counts["rejects"]] == [3, 4]
    assert "available is not a boolean" in counts["rejects"][0]["reason"]
    assert "without item_id" in counts["rejects"][1]["reason"]
    assert shop.execute("select count(*) from item_catalog").fetchone()[0] == before + 1
    assert shop.execute("select item_id from unavailable_items").fetchall() == [("sku-1",)]
    assert "sku-1" not in [r[1] for r in shop.execute("select * from trending(50)").fetchall()]
    # the same name again (a restarted server numbers from 1): only this body's rejects
    counts = catalog.load_items_body(shop, b'{"item_id": "sku-9"}', "http:POST /items#1")
    assert (counts["upserted"], counts["rejects"]) == (1, [])
    csv = b"item_id,available\nsku-1,true\nsku-3,2026-13-45\n"
    counts = catalog.load_items_body(shop, csv, "http:POST /items#2", "csv")
    assert (counts["upserted"], counts["rejected"]) == (1, 1)
    assert counts["rejects"][0]["line"] == 3  # the CSV header is line 1
    assert shop.execute("select count(*) from unavailable_items").fetchone()[0] == 0
    for bad in (b"", b"[1, 2", b"   "):
        with pytest.raises(rtsql.errors.RtsqlError):
            catalog.load_items_body(shop, bad, "http:POST /items#3")
    assert shop.execute("select count(*) from rejects where source = 'http:POST /items#3'"
                        ).fetchone()[0] == 0


@pytest.mark.slow
def test_hide_and_show_over_http_take_effect_at_once(tmp_path):
    from test_server import Server, build_database

    server = Server(build_database(tmp_path / "shop.duckdb"))
    try:
        status, trending = server.json("GET", "/trending?k=5")
        top = trending["items"][0]["item_id"]
        status, answer = server.json("POST", f"/items/{top}/hide")
        assert (status, answer) == (200, {"item_id": top, "available": False})
        _, after = server.json("GET", "/trending?k=5")
        assert top not in [r["item_id"] for r in after["items"]] and len(after["items"]) == 5
        status, answer = server.json("POST", "/items/no-such-sku/hide")
        assert status == 404 and "no-such-sku" in answer["error"]
        server.json("POST", f"/items/{top}/show")
        _, back = server.json("GET", "/trending?k=5")
        assert back == trending
        # the catalog upsert: hides through `available`, adds an item, rejects a bad row
        status, answer = server.json("POST", "/items", json.dumps([
            {"item_id": top, "available": False}, {"item_id": "sku-brand-new", "title": "New"},
            {"item_id": "sku-odd", "available_until": "someday"}]).encode())
        assert status == 200 and (answer["upserted"], answer["new_items"],
                                  answer["rejected"]) == (2, 1, 1)
        assert answer["rejects"][0]["line"] == 3
        _, after = server.json("GET", "/trending?k=5")
        assert top not in [r["item_id"] for r in after["items"]]
        status, answer = server.json("POST", "/items", b"item_id,available\n" +
                                     top.encode() + b",true\n", {"Content-Type": "text/csv"})
        assert status == 200 and answer["upserted"] == 1
        assert server.json("GET", "/trending?k=5")[1] == trending
        status, answer = server.json("POST", "/items", b"[{]")
        assert status == 400 and "error" in answer
    finally:
        code, _ = server.stop()
    assert code == 0
