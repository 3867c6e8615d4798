"""--publish refuses targets that would destroy something: the database itself, a file that is
not an rtsql snapshot, a folder, a folder that does not exist; and leaves nothing behind."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rtsql.cli import main

from conftest import HEADER, count


@pytest.fixture
def shop(tmp_path, write):
    """A database with events, and a followed folder."""
    write("in/a.csv", HEADER + "u1,i1,view,2026-10-01T00:00:00,\nu2,i1,view,2026-10-01T00:01:00,\n")
    db = tmp_path / "shop.duckdb"
    runner = CliRunner()
    result = runner.invoke(main, ["--db", str(db), "tail", str(tmp_path / "in"), "--once"])
    assert result.exit_code == 0, result.output
    return db


def tail_once(db, folder, publish):
    return CliRunner().invoke(main, ["--db", str(db), "tail", str(folder), "--once",
                                     "--publish", str(publish)])


def events_in(db):
    import rtsql

    con = rtsql.connect(db)
    try:
        return count(con, "select count(*) from events"), count(con, "select count(*) from source_files")
    finally:
        con.close()


def test_publish_refuses_the_database_itself(shop, tmp_path):
    before = events_in(shop)
    result = tail_once(shop, tmp_path / "in", shop)
    assert result.exit_code == 1 and "is the database itself" in result.output
    assert events_in(shop) == before == (2, 1)


def test_publish_refuses_a_file_that_is_not_a_snapshot(shop, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    result = tail_once(shop, tmp_path / "in", notes)
    assert result.exit_code == 1 and "not an rtsql snapshot" in result.output
    assert notes.read_text() == "keep me\n"
    other = tmp_path / "other.duckdb"  # another live rtsql database is not a snapshot either
    CliRunner().invoke(main, ["--db", str(other), "migrate"])
    result = tail_once(shop, tmp_path / "in", other)
    assert result.exit_code == 1 and "not an rtsql snapshot" in result.output


def test_publish_refuses_folders_and_leaves_nothing_behind(shop, tmp_path):
    listing = sorted(p.name for p in tmp_path.iterdir())
    result = tail_once(shop, tmp_path / "in", tmp_path / "missing" / "s.duckdb")
    assert result.exit_code == 1 and "does not exist" in result.output
    result = tail_once(shop, tmp_path / "in", tmp_path / "in")
    assert result.exit_code == 1 and "is a folder" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_publish_replaces_an_earlier_snapshot(shop, tmp_path):
    target = tmp_path / "s.duckdb"
    assert tail_once(shop, tmp_path / "in", target).exit_code == 0
    assert tail_once(shop, tmp_path / "in", target).exit_code == 0  # a snapshot: replaced


def test_publish_leaves_a_file_at_its_old_temporary_name_alone(shop, tmp_path):
    """(Reliability issue, item 7.) Publishing wrote through a fixed hidden name beside the
    target and deleted whatever sat there first. Each publish now uses a name of its own and
    leaves no temporary file behind."""
    target = tmp_path / "s.duckdb"
    bystander = tmp_path / ".s.duckdb.tmp"
    bystander.write_text("someone's file\n")
    assert tail_once(shop, tmp_path / "in", target).exit_code == 0
    assert tail_once(shop, tmp_path / "in", target).exit_code == 0
    assert bystander.read_text() == "someone's file\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and p != bystander]


def test_a_batch_publish_carries_hidden_items_and_impressions(tmp_path):
    """(Shop issue.) Between refreshes, serve and tail publish only what was added; hidden
    items and impressions leave lists at once in the database, so the batch publish brings
    them too: a BI tool on the snapshot sees them at the next publish, not the next refresh."""
    import datetime as dt

    import rtsql
    from rtsql import availability, feedback, ingest, refresh, settings
    from rtsql.snapshot import Publisher

    db, target = tmp_path / "shop.duckdb", tmp_path / "shop.snapshot.duckdb"
    (tmp_path / "a.csv").write_text(HEADER + "".join(
        f"u{u},i{i},view,2026-10-01T00:0{i}:00,\n" for u in range(4) for i in range(4)))
    con = rtsql.connect(db)
    ingest.ingest(con, [tmp_path / "a.csv"])
    settings.set_value(con, "suppress_after_impressions", "1")
    settings.set_value(con, "exclude_seen", "false")
    refresh.refresh(con)
    publisher = Publisher(target, db)
    publisher.full(con)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat()
    availability.set_available(con, ["i1"], False)
    feedback.load_impression_rows(con, [{"user_id": "u0", "item_id": "i2", "ts": now,
                                         "strategy": "hybrid"}], "test")
    publisher.events(con)
    con.close()
    snap = rtsql.db.open_file(target, read_only=True)
    try:
        listed = {r[1] for r in snap.execute("select * from recommend('u0', 10)").fetchall()}
        assert "i1" not in listed and "i2" not in listed and {"i0", "i3"} <= listed
        assert snap.execute("select count(*) from impressions").fetchone()[0] == 1
    finally:
        snap.close()


def test_a_full_publish_while_another_cursor_holds_a_transaction(shop, tmp_path, monkeypatch):
    """serve publishes while its refresh runs on another cursor. A transaction that reads the
    catalog while the snapshot file is attached (here: duckdb_tables(), as the refresh's
    statements may) keeps the file attached after detach until it ends, so the publish must not
    need to open the file a second time (it did: serve's follower thread died)."""
    import duckdb

    import rtsql
    from rtsql import snapshot

    con = rtsql.connect(shop)
    refreshing = con.cursor()
    table_ddl, began = snapshot.table_ddl, []

    def refresh_meanwhile(*args):  # while the publish reads the tables' definitions
        if not began:
            refreshing.execute("begin transaction")
            refreshing.execute("select count(*) from duckdb_tables()").fetchall()
            began.append(True)
        return table_ddl(*args)

    monkeypatch.setattr(snapshot, "table_ddl", refresh_meanwhile)
    try:
        snapshot.publish(con, tmp_path / "snap.duckdb")
    finally:
        refreshing.execute("rollback")
        refreshing.close()
        con.close()
    snap = duckdb.connect(str(tmp_path / "snap.duckdb"), read_only=True)
    assert snap.execute("select count(*) from recommend('u1', 5)").fetchall()[0][0] >= 0
    assert snap.execute("select count(*) from events").fetchall() == [(0,)]  # none pending
    snap.close()
