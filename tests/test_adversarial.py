"""The Reliability issue's findings, tried as a hostile or careless user would. Finding 1
(--publish) is in test_snapshot.py; finding 2 (rtsql sql) is here."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import rtsql
from rtsql.cli import main

from conftest import HEADER, count


@pytest.fixture
def shop(tmp_path, write):
    path = write("ev.csv", HEADER + "u1,i1,view,2026-10-01T00:00:00,\n")
    db = tmp_path / "shop.duckdb"
    assert CliRunner().invoke(main, ["--db", str(db), "ingest", str(path)]).exit_code == 0
    return db


def sql(db, *args):
    return CliRunner().invoke(main, ["--db", str(db), "sql", *args])


def tables(db):
    con = rtsql.connect(db)
    try:
        return count(con, "select count(*) from information_schema.tables"), \
            count(con, "select count(*) from users")
    finally:
        con.close()


@pytest.mark.parametrize("query,reason", [
    ("select 1 as one; drop table users", "exactly one statement"),
    ("drop table users", "pass --write"),
    ("delete from events", "pass --write"),
    ("select * from read_csv('/etc/passwd')", "file system operations are disabled"),
    ("attach '{tmp}/other.duckdb' as o", "file system operations are disabled"),
    ("copy users to '{tmp}/leak.csv'", "file system operations are disabled"),
    ("select * from os", "Table with name os does not exist"),  # no Python objects
])
def test_sql_reads_the_database_and_nothing_else(shop, tmp_path, query, reason):
    before = tables(shop)
    result = sql(shop, query.format(tmp=tmp_path))
    assert result.exit_code == 1 and reason in result.output, result.output
    assert "Traceback" not in result.output
    assert tables(shop) == before
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "other.duckdb").exists()


def test_sql_write_changes_the_database_only_when_asked(shop):
    assert sql(shop, "select count(*) as n from users", "--format", "csv").output == "n\n1\n"
    result = sql(shop, "--write", "delete from rejects")
    assert result.exit_code == 0, result.output
    result = sql(shop, "--write", "copy users to '/tmp/rtsql-never.csv'")
    assert result.exit_code == 1 and "file system operations are disabled" in result.output


def settings_cmd(db, *args):
    return CliRunner().invoke(main, ["--db", str(db), "settings", *args])


@pytest.mark.parametrize("name,value,named", [
    ("memory_limit", "lots", "from 16MiB"), ("memory_limit", "1KB", "from 16MiB"),
    ("memory_limit", "99999999TB", "to the machine's memory"),
    ("threads", "100000", "from 0 to"),
    ("weight_item_cf", "inf", "finite"),
    ("weight_user_cf", "nan", "finite"), ("recency_half_life_days", "-inf", "finite"),
    ("neighbors", "1000000000", "above 0 to 1000"), ("ingest_max_abs_value", "1e300", "1e+12"),
    ("ease_max_items", "100000000", "above 0 to"), ("list_buffer", "1e6", "from 1 to 10"),
])
def test_settings_refuse_values_that_break_commands_or_poison_models(shop, name, value, named):
    """(Finding 4.) Refused when set, with the valid range named; every command still runs."""
    result = settings_cmd(shop, "--", name, value)
    assert result.exit_code == 1 and named in result.output, result.output
    assert CliRunner().invoke(main, ["--db", str(shop), "status"]).exit_code == 0


def test_a_bad_stored_value_can_always_be_fixed(shop):
    """A database that already holds a bad value (an older version accepted it) still opens,
    and `settings NAME VALUE` and `settings --reset` fix it."""
    import duckdb

    raw = duckdb.connect(str(shop))
    raw.execute("update rtsql_settings set value = 'lots' where name = 'memory_limit'")
    raw.execute("update rtsql_settings set value = '1e999' where name = 'weight_item_cf'")
    raw.close()
    assert CliRunner().invoke(main, ["--db", str(shop), "status"]).exit_code == 0
    raw = duckdb.connect(str(shop))  # a size DuckDB itself refuses ("Memory value out of range")
    raw.execute("update rtsql_settings set value = '99999999TB' where name = 'memory_limit'")
    raw.close()
    for args in (["status"], ["refresh"], ["recommend", "u1"],
                 ["sql", "--write", "select 1"], ["settings", "memory_limit", "--reset"]):
        result = run(shop, *args)
        assert result.exit_code == 0 and "Traceback" not in result.output, (args, result.output)
    assert settings_cmd(shop, "memory_limit", "4GB").exit_code == 0
    assert settings_cmd(shop, "weight_item_cf", "--reset").exit_code == 0
    listing = settings_cmd(shop, "--format", "csv").output
    assert "memory_limit,4GB" in listing.replace(" ", "")


def test_event_type_weights_must_be_finite_and_a_change_rebuilds_the_model(shop):
    """(Findings 4 and 6.) view=inf is refused; after view=50 the next refresh is a full one,
    never 'up to date' on a model built with the old weight."""
    from rtsql import refresh

    for weight in ("inf", "1e308"):  # 1e308: finite, but its square is not
        result = CliRunner().invoke(main, ["--db", str(shop), "event-types", "--set",
                                           f"view={weight}"])
        assert result.exit_code == 1 and "from 0 to 1e+06" in result.output, result.output
    con = rtsql.connect(shop)
    assert refresh.refresh(con).mode == "full"
    assert refresh.refresh(con).mode == "none"
    con.close()
    assert CliRunner().invoke(main, ["--db", str(shop), "event-types", "--set",
                                     "view=50"]).exit_code == 0
    con = rtsql.connect(shop)
    assert refresh.refresh(con).mode == "full"
    assert count(con, "select max(weight) from interactions") == 50
    con.close()


def run(db, *args):
    return CliRunner().invoke(main, ["--db", str(db), *args])


def test_out_of_range_numbers_are_usage_errors_not_tracebacks(shop):
    """(Finding 6.)"""
    for args in (["recommend", "u1", "-k", "99999999999999999999"], ["recommend", "u1", "-k", "0"],
                 ["rejects", "--limit", "-1"], ["similar", "i1", "-k", "-3"]):
        result = run(shop, *args)
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)


def test_a_huge_limit_shows_everything_and_a_setting_without_its_variant_is_refused(shop):
    """(Reliability issue, item 7.) `rejects --limit 99999999999999999999` printed DuckDB's
    error; `variants --setting A.x=nan` without --set was silently ignored (exit 0)."""
    result = run(shop, "rejects", "--limit", "99999999999999999999")
    assert result.exit_code == 0 and "Error" not in result.output, result.output
    result = run(shop, "variants", "--setting", "A.weight_item_cf=nan")
    assert result.exit_code == 1 and "--set" in result.output, result.output


def test_every_numeric_setting_at_its_upper_bound_still_refreshes(shop):
    """Each bound is one the refresh can run with: every numeric setting at its highest
    accepted value at once, then a full refresh and a recommendation."""
    from rtsql import refresh, settings

    con = rtsql.connect(shop)
    for name, s in settings.SETTINGS.items():
        if isinstance(s.check, settings.Range):
            high = s.check.high
            settings.set_value(con, name, str(int(high) if s.type is int else high))
    settings.set_value(con, "memory_limit", f"{settings.physical_mib()}MiB")
    assert refresh.refresh(con, full=True).mode == "full"
    assert con.execute("select count(*) from recommend('u1', 5)").fetchall()
    con.close()


def test_unknown_variants_and_bad_shares_are_refused(shop):
    """(Finding 6.) An unknown --variant used to serve the default settings silently; a share
    of nan was stored."""
    result = run(shop, "recommend", "u1", "--variant", "nope")
    assert result.exit_code == 1 and "unknown variant 'nope'" in result.output
    assert run(shop, "recommend", "u1", "--variant", "auto").exit_code == 0
    for share in ("nan", "inf", "0", "-0.5"):
        result = run(shop, "variants", "--set", f"x={share}")
        assert result.exit_code == 1 and "share" in result.output, (share, result.output)


def test_rejects_source_matches_a_relative_path(tmp_path, write, monkeypatch):
    """(Finding 6.) Sources are stored as absolute paths; the path as typed finds them."""
    path = write("in/a.csv", HEADER + "u1,i1,teleport,2026-10-01T00:00:00,\n")
    db = tmp_path / "r.duckdb"
    assert run(db, "ingest", str(path)).exit_code == 0
    monkeypatch.chdir(tmp_path)
    result = run(db, "rejects", "--source", "in/a.csv", "--format", "csv")
    assert result.exit_code == 0 and "unknown event type" in result.output


def reasons(db) -> list[str]:
    con = rtsql.connect(db)
    try:
        return [r[0] for r in con.execute("select reason from rejects order by line").fetchall()]
    finally:
        con.close()


def test_ingest_rejects_times_and_values_outside_the_ranges(tmp_path, write):
    """(Finding 5.) Year 9999, year 1, epoch -1, a value of 1e308 and a negative rating used to
    be stored; each poisons decay, trending or the neighbour lists."""
    rows = ["u1,i1,view,2026-10-01T00:00:00,", "u1,i2,view,9999-12-31T00:00:00,",
            "u1,i3,view,0001-01-01T00:00:00,", "u1,i4,view,-1,",
            "u1,i5,rating,2026-10-01T00:00:00,1e308", "u1,i6,rating,2026-10-01T00:00:00,-2"]
    db = tmp_path / "r.duckdb"
    assert run(db, "ingest", str(write("ev.csv", HEADER + "\n".join(rows) + "\n"))).exit_code == 0
    got = reasons(db)
    assert len(got) == 5, got
    assert all("outside [1970-01-01 00:00:00, " in r for r in got[:3]), got
    assert "exceeds 1000000000.0 in absolute value" in got[3]
    assert "negative value -2.0 for event type 'rating'" in got[4] and "--negative-values" in got[4]


def test_the_ranges_are_settings_and_negative_values_a_property_of_the_type(tmp_path, write):
    db = tmp_path / "r.duckdb"
    assert run(db, "settings", "ingest_min_ts", "1900-01-01").exit_code == 0
    assert run(db, "settings", "ingest_max_abs_value", "1e400").exit_code == 1  # not finite
    result = run(db, "event-types", "--set", "rating=1", "--negative-values")
    assert result.exit_code == 0 and "rating,1.0,True,True" in run(
        db, "event-types", "--format", "csv").output
    rows = ["u1,i1,view,1950-06-01T00:00:00,", "u1,i2,rating,2026-10-01T00:00:00,-2",
            "u1,i3,view,1899-12-31T00:00:00,"]
    assert run(db, "ingest", str(write("ev.csv", HEADER + "\n".join(rows) + "\n"))).exit_code == 0
    assert len(reasons(db)) == 1 and "1899-12-31" in reasons(db)[0]


def test_decay_never_zeroes_weights_of_in_range_events(tmp_path, write):
    """(Finding 5.) With a one-day half-life, an event a day ahead (inside the window) and one
    from 1971 used to leave the others, or itself, at weight 0."""
    import datetime as dt

    from rtsql import refresh

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    ahead = (now + dt.timedelta(hours=23)).isoformat(timespec="seconds")
    rows = [f"u{u},i{(u + j) % 6},view,{(now - dt.timedelta(days=j)).isoformat()}," for u in range(8)
            for j in range(4)]
    rows += [f"u1,i9,view,{ahead},", "u2,i7,view,1971-01-01T00:00:00,",
             "u3,i7,view,1971-01-02T00:00:00,"]
    db = tmp_path / "d.duckdb"
    assert run(db, "settings", "half_life_days", "1").exit_code == 0
    # cosine ignores the weights' scale, so any weight above zero keeps its neighbours
    assert run(db, "settings", "similarity", "cosine").exit_code == 0
    assert run(db, "ingest", str(write("ev.csv", HEADER + "\n".join(rows) + "\n"))).exit_code == 0
    con = rtsql.connect(db)
    try:
        refresh.refresh(con)
        assert count(con, "select count(*) from rejects") == 0
        low, high = con.execute("select min(weight), max(weight) from interactions").fetchone()
        assert 0 < low and high < float("inf")
        # the 1971 item still has neighbours (its weights did not vanish)
        assert count(con, "select count(*) from item_neighbors n join items i using (item_key) "
                          "where i.item_id = 'i7'") > 0
    finally:
        con.close()


def test_a_landmark_too_far_behind_moves_with_a_full_refresh(tmp_path, write):
    """Forward decay grows e^(rate * (ts - t0)) for events after the landmark: past e^100 the
    refresh is a full one (new landmark), equal to a refresh from scratch."""
    import datetime as dt

    from rtsql import refresh

    old = dt.datetime(2025, 1, 1)
    rows = [f"u{u},i{(u + j) % 5},view,{(old + dt.timedelta(hours=j)).isoformat()},"
            for u in range(6) for j in range(3)]
    db = tmp_path / "l.duckdb"
    assert run(db, "settings", "half_life_days", "1").exit_code == 0
    assert run(db, "ingest", str(write("a.csv", HEADER + "\n".join(rows) + "\n"))).exit_code == 0
    con = rtsql.connect(db)
    try:
        assert refresh.refresh(con).mode == "full"
        later = (old + dt.timedelta(days=300)).isoformat()
        con.close()
        assert run(db, "ingest", str(write("b.csv", HEADER + f"u1,i2,view,{later},\n"))).exit_code == 0
        con = rtsql.connect(db)
        assert refresh.refresh(con).mode == "full"
        assert count(con, "select count(*) from interactions where not isfinite(weight)") == 0
        got = con.execute("select user_key, item_key, weight from interactions order by all").fetchall()
        refresh.refresh(con, full=True)
        want = con.execute("select user_key, item_key, weight from interactions order by all").fetchall()
        assert got == want
    finally:
        con.close()


def test_ids_lose_surrounding_whitespace_in_every_format(tmp_path, write):
    """(Finding 6.) One rule: an id's surrounding whitespace is not part of it, in CSV (quoted
    or not), JSON lines and Parquet alike, so the same person is one user whatever the file."""
    import duckdb

    parquet = tmp_path / "c.parquet"
    duckdb.sql(f"copy (select '  lead' as user_id, 'i1' as item_id, 'view' as event_type, "
               f"timestamp '2026-10-01' as ts) to '{parquet}'")
    files = [write("a.csv", HEADER + '"  lead",i1,view,2026-10-01T00:00:00,\n'
                   + " lead ,i2,view,2026-10-01T00:00:00,\n"
                   + "\tlead\r,i4,view,2026-10-01T00:00:00,\n"),  # TAB and CR too
             write("b.jsonl", '{"user_id": "  lead\\t", "item_id": "i3", "event_type": "view", '
                              '"ts": "2026-10-01T00:00:00"}\n'), parquet]
    db = tmp_path / "w.duckdb"
    assert run(db, "ingest", *map(str, files)).exit_code == 0
    con = rtsql.connect(db)
    try:
        assert con.execute("select user_id from users").fetchall() == [("lead",)]
        assert count(con, "select count(*) from events") == 5
    finally:
        con.close()


def test_a_short_catalog_row_is_rejected_alone(tmp_path, write):
    """(Finding 6.) One row with a missing field used to fail the whole file with "has no
    column 'item_id' (columns: item_id,...)"."""
    path = write("items.csv", "item_id,title,category\ni1,Shoe,run\ni2,Sock\ni3,Hat,wear\n")
    db = tmp_path / "c.duckdb"
    result = run(db, "items", str(path))
    assert result.exit_code == 0 and "2 catalog rows upserted (2 new items), 1 rejected" \
        in result.output, result.output
    con = rtsql.connect(db)
    try:
        assert con.execute("select line, raw, reason from rejects").fetchall() == [
            (3, "i2,Sock", "catalog row: Expected Number of Columns: 3 Found: 2")]
        assert count(con, "select count(*) from item_catalog") == 2
    finally:
        con.close()


def test_tail_leaves_files_outside_its_folder_alone(tmp_path, write):
    """(Finding 6.) A file `rtsql ingest` loaded from elsewhere was marked gone by the first
    scan of a tail on another folder."""
    from rtsql import follower, tail

    elsewhere = write("elsewhere/a.csv", HEADER + "u1,i1,view,2026-10-01T00:00:00,\n")
    nested = write("watched/sub/b.csv", HEADER + "u2,i1,view,2026-10-01T00:00:00,\n")
    (tmp_path / "watched").mkdir(exist_ok=True)
    db = tmp_path / "t.duckdb"
    assert run(db, "ingest", str(elsewhere), str(nested)).exit_code == 0
    con = rtsql.connect(db)
    try:
        options = tail.TailOptions(refresh=False, publish=None)
        # tail on a folder; serve without one (the follower alone)
        for loop in (tail.Tail(con, tmp_path / "watched", options),
                     follower.Follower(con, options)):
            loop.batch()
            assert con.execute("select distinct status from source_files").fetchall() == [
                ("active",)]
    finally:
        con.close()


def test_json_ids_are_strings_or_integers(tmp_path, write):
    """(Reliability issue, item 7.) A JSON number with a fraction or an exponent, a boolean,
    an object or an array as an id became a string ("1e3" -> "1000.0"): now each such line
    is rejected with the reason; integers stay ids, as in CSV."""
    lines = [('42', '"i1"'), ('1e3', '"i1"'), ('true', '"i1"'), ('"u1"', '{"a": 1}'),
             ('"1.5"', '"[x]"'), ('-7', '[1]')]
    path = write("ids.jsonl", "".join(
        f'{{"user_id": {u}, "item_id": {i}, "event_type": "view", '
        f'"ts": "2026-10-01T00:00:00"}}\n' for u, i in lines))
    db = tmp_path / "j.duckdb"
    assert run(db, "ingest", str(path)).exit_code == 0
    con = rtsql.connect(db)
    try:
        assert sorted(r[0] for r in con.execute("select user_id from users").fetchall()) \
            == ["1.5", "42"]
        assert con.execute("select line, reason from rejects order by line").fetchall() == [
            (2, "user_id is a JSON double: an id is a string or an integer"),
            (3, "user_id is a JSON boolean: an id is a string or an integer"),
            (4, "item_id is a JSON object: an id is a string or an integer"),
            (6, "item_id is a JSON array: an id is a string or an integer")]
    finally:
        con.close()


def test_catalog_rejects_are_one_per_bad_row_at_its_own_line(tmp_path, write):
    """(Reliability issue, item 6.) Under a 6-column header a short row gave 4 reject rows
    (one per missing column), a row without an id was reported at the line of the row before
    it (the reader's rejected rows were not counted), and an unclosed quote was accepted."""
    path = write("items.csv", "item_id,title,category,tags,price,brand\n"
                              "sku-1,Shoe,run,a|b,10,x\n"
                              "sku-2,Short row\n"
                              ",No id,run,a,1,y\n"
                              'sku-4,"Unbalanced,run,a,1,y\n'
                              "sku-5,Fine,run,a,2,z\n")
    db = tmp_path / "c.duckdb"
    result = run(db, "items", str(path))
    assert "2 catalog rows upserted (2 new items), 3 rejected" in result.output, result.output
    con = rtsql.connect(db)
    try:
        assert con.execute("select line, reason from rejects order by line").fetchall() == [
            (3, "catalog row: Expected Number of Columns: 6 Found: 2"),
            (4, "catalog row without item_id"),
            (5, "catalog row: unbalanced quotes (a record must fit on one line)")]
        assert con.execute("select item_id from item_catalog join items using (item_key) "
                           "order by 1").fetchall() == [("sku-1",), ("sku-5",)]
    finally:
        con.close()
