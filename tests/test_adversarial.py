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
    ("memory_limit", "lots", "at least 16MB"), ("memory_limit", "1KB", "at least 16MB"),
    ("threads", "100000", "at most 8 per core"), ("weight_item_cf", "inf", "finite"),
    ("weight_user_cf", "nan", "finite"), ("recency_half_life_days", "-inf", "finite"),
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
    assert settings_cmd(shop, "memory_limit", "4GB").exit_code == 0
    assert settings_cmd(shop, "weight_item_cf", "--reset").exit_code == 0
    listing = settings_cmd(shop, "--format", "csv").output
    assert "memory_limit,4GB" in listing.replace(" ", "")


def test_event_type_weights_must_be_finite_and_a_change_rebuilds_the_model(shop):
    """(Findings 4 and 6.) view=inf is refused; after view=50 the next refresh is a full one,
    never 'up to date' on a model built with the old weight."""
    from rtsql import refresh

    result = CliRunner().invoke(main, ["--db", str(shop), "event-types", "--set", "view=inf"])
    assert result.exit_code == 1 and "finite" in result.output
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
