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
