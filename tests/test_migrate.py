import duckdb
import pytest

from rtsql import db, migrate, resources
from rtsql.errors import MigrationError

from conftest import count


def test_fresh_database_gets_every_migration_with_checksums(con):
    rows = con.execute("select version, name, checksum from _rtsql_migrations order by 1").fetchall()
    expected = [(m.version, m.name, m.checksum) for m in resources.migrations()]
    assert rows == expected
    assert count(con, "select count(*) from event_types") == 6


def test_reopening_applies_nothing(db_path):
    db.connect(db_path).close()
    con = db._open(db_path, read_only=False)
    assert migrate.apply(con) == []
    con.close()


def test_edited_applied_migration_is_refused(db_path):
    db.connect(db_path).close()
    raw = duckdb.connect(str(db_path))
    raw.execute("update _rtsql_migrations set checksum = 'x' where version = 1")
    raw.close()
    with pytest.raises(MigrationError, match="never be edited"):
        db.connect(db_path)


def test_newer_schema_is_refused_without_change(db_path):
    db.connect(db_path).close()
    raw = duckdb.connect(str(db_path))
    raw.execute("insert into _rtsql_migrations values (9999, 'future', 'abc', now()::TIMESTAMP)")
    raw.close()
    before = db_path.read_bytes()
    with pytest.raises(MigrationError, match="newer than this rtsql"):
        db.connect(db_path)
    assert db_path.read_bytes() == before


def test_failed_migration_leaves_no_trace(db_path, monkeypatch):
    good = resources.migrations()
    bad = resources.Migration(len(good) + 1, "broken", "create table ok_part (a int); select nope;")
    monkeypatch.setattr(resources, "migrations", lambda: good + [bad])
    with pytest.raises(MigrationError, match="broken"):
        db.connect(db_path)
    raw = duckdb.connect(str(db_path))
    assert count(raw, "select max(version) from _rtsql_migrations") == len(good)
    assert count(raw, "select count(*) from information_schema.tables where table_name = 'ok_part'") == 0
    raw.close()


def test_every_view_and_macro_file_loads(con):
    """Each file under sql/ creates the object it is named after (drop them all first, so
    finding them afterwards means install_definitions made them)."""
    views = [o.name for o in resources.sql_objects("views")]
    macros = [o.name for o in resources.sql_objects("macros")]
    for name in views:
        con.execute(f"drop view {name}")
    installed = migrate.install_definitions(con)
    assert installed == len(views) + len(macros)
    assert {r[0] for r in con.execute(
        "select view_name from duckdb_views() where not internal").fetchall()} >= set(views)
    functions = {r[0] for r in con.execute(
        "select function_name from duckdb_functions() where not internal").fetchall()}
    assert set(macros) <= functions, set(macros) - functions


def test_read_only_open_of_missing_file_is_an_error(tmp_path):
    from rtsql.errors import InputPathError

    with pytest.raises(InputPathError, match="does not exist"):
        db.connect(tmp_path / "missing.duckdb", read_only=True)
    assert not (tmp_path / "missing.duckdb").exists()
