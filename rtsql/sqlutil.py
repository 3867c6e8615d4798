"""Small SQL helpers shared by every module: identifier quoting and whole-result fetches."""

from __future__ import annotations

from contextlib import contextmanager


def quote_identifier(name: str) -> str:
    """Quote an SQL identifier for DuckDB. Identifiers cannot be bound parameters, so every
    identifier that comes from a user (a column name in --map) goes through here."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"not a usable identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def scalar(con, sql: str, params=None):
    """The first column of the first row (or None). Fetches the whole result: DuckDB 2 refuses
    further work on a connection while a result is only partly fetched."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None


def database_path(con) -> str | None:
    """The file behind a connection's current database (None: in memory)."""
    return scalar(con, "select path from duckdb_databases() "
                       "where database_name = current_database()") or None


def one(con, sql: str, params=None):
    """The first row (or None), fetching the whole result."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def arrow_column(values, arrow_type):
    """A numpy column as a pyarrow array, built from its buffer. ``pa.array`` would do, but it
    imports pandas when pandas is installed, once per process, which costs more than a small
    refresh. Fixed-width numbers and booleans only; integers are cast without overflow
    checks (keys fit INTEGER)."""
    import numpy as np
    import pyarrow as pa

    values = np.asarray(values)
    if pa.types.is_boolean(arrow_type):
        buffer = np.packbits(values.astype(bool), bitorder="little")
    else:
        buffer = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[str(arrow_type)])
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(buffer)])


_NUMPY_TYPES = {"int32": "int32", "int64": "int64", "float": "float32", "double": "float64"}


@contextmanager
def registered(con, name: str, columns: dict):
    """``columns`` (name -> pyarrow array) visible to SQL as ``name`` inside the block; the
    registration is dropped on the way out, also on errors."""
    import pyarrow as pa

    con.register(name, pa.table(columns))
    try:
        yield
    finally:
        con.unregister(name)


def keys_column(keys) -> dict:
    """A key set as the single INTEGER column ``k``, for ``registered``."""
    import pyarrow as pa

    return {"k": arrow_column(keys, pa.int32())}


def arrow_table(con, sql: str, params=None):
    """A query's whole result as a pyarrow Table (the method's name differs across DuckDB
    releases: fetch_arrow_table before 2.0, to_arrow_table since)."""
    relation = con.sql(sql, params=params or None)
    if hasattr(relation, "to_arrow_table"):
        return relation.to_arrow_table()
    return relation.fetch_arrow_table()


@contextmanager
def read_snapshot(con):
    """A cursor of its own inside one read transaction (a consistent view while others
    commit), rolled back and closed on the way out."""
    cur = con.cursor()
    try:
        cur.execute("begin transaction")
        try:
            yield cur
        finally:
            cur.execute("rollback")
    finally:
        cur.close()


@contextmanager
def transaction(con):
    """One DuckDB transaction: committed when the block ends, rolled back on any exception."""
    con.execute("begin transaction")
    try:
        yield con
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")


def table_ddl(con, table: str) -> tuple[str, list[str]]:
    """A main-schema table's CREATE TABLE statement (with its keys and constraints) and its
    CREATE INDEX statements, as DuckDB reports them; both name the table unqualified."""
    where = "table_name = ? and database_name = current_database() and schema_name = 'main'"
    create = scalar(con, f"select sql from duckdb_tables() where {where}", [table])
    indexes = [r[0] for r in con.execute(
        f"select sql from duckdb_indexes() where {where}", [table]).fetchall()]
    return create, indexes


def recreate_empty(con, table: str) -> None:
    """Empty one of rtsql's tables by dropping it and creating it again from its own DDL and
    indexes. Deleting every row of a large table costs a commit proportional to its rows;
    this costs nothing, and inside a transaction readers
    still see the old table until the commit."""
    create, indexes = table_ddl(con, table)
    con.execute(f"drop table {table}")
    con.execute(create)
    for index in indexes:
        con.execute(index)


# (table, key, the highest key ever given out besides the table's own: forgotten users' keys
# are never given again)
_DICTIONARIES = {"user_id": ("users", "user_key", "(select max(user_key) from forgotten_users)"),
                 "item_id": ("items", "item_key", "0")}


def add_new_ids(con, source: str, column: str, where: str = "true",
                first_seen: str = "now()::TIMESTAMP") -> None:
    """Give the ids in ``source.column`` that the users/items dictionary lacks the next integer
    keys, in order of first appearance (``source.line``), so a file ingested whole gives the
    same keys as its lines arriving one by one (the tail, a prequential replay); a key once
    given is never given again. A new item's ``first_seen`` is ``first_seen`` over its rows
    (events pass min(ts): the item is as new as its first event). ``source``, ``where`` and
    ``first_seen`` are rtsql's own SQL, never user input."""
    table, key, retired = _DICTIONARIES[column]
    seen = ", first_seen" if table == "items" else ""
    con.execute(f"""insert into {table} ({key}, {column}{seen})
                    select greatest(coalesce((select max({key}) from {table}), 0),
                                    coalesce({retired}, 0))
                           + row_number() over (order by first_line, {column}), {column}{seen}
                    from (select {column}, min(line) as first_line,
                                 {first_seen} as first_seen from {source}
                          where {where} and {column} is not null and {column} <> ''
                          group by {column}) n
                    anti join {table} using ({column})""")


# what surrounds an id and is not part of it: spaces, tabs, line breaks (a CRLF file's \r)
ID_SPACE = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"


def trim_id(expr: str) -> str:
    """SQL for the id in ``expr`` without the whitespace around it (README: surrounding
    whitespace is not part of an id), the one rule of every input: files, bodies, catalog,
    impressions."""
    return f"trim({expr}, {ID_SPACE})"


def clean_id(value: str) -> str:
    """An id given at an edge of Python (an HTTP path, a CLI argument) as ingest stores it:
    without the whitespace around it (trim_id's characters)."""
    return value.strip(" \t\n\v\f\r")
