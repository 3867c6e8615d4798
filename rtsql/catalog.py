"""The item catalog: titles, categories, tags, descriptions, free attributes, embeddings and
availability (rtsql.availability).

``load_items`` upserts a CSV, JSON-lines or Parquet file into ``item_catalog`` (new item ids get
keys in ``items``). Columns other than the known ones are kept as a JSON object in
``attributes``, where the content model finds numeric attributes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from . import availability
from .errors import BadEventFile, InputPathError, InvalidSetting
from .ingest import ColumnMapping, detect_format
from .sqlutil import add_new_ids, quote_identifier, scalar, transaction, trim_id

CATALOG_COLUMNS = ("item_id", "title", "category", "tags", "description", "embedding",
                   *availability.COLUMNS)


_CSV_ERRORS, _CSV_SCANS = "_rtsql_csv_errors", "_rtsql_csv_scans"


def _reader(path: Path, fmt: str) -> tuple[str, list]:
    if fmt == "csv":
        # rows with too few or too many fields are set aside (DuckDB's reject tables), not
        # allowed to make the sniffer give up on the whole file
        return ("read_csv(?, header = true, all_varchar = true, store_rejects = true, "
                f"rejects_table = '{_CSV_ERRORS}', rejects_scan = '{_CSV_SCANS}')"), [str(path)]
    if fmt == "jsonl":
        return "read_json(?, format = 'newline_delimited')", [str(path)]
    return "read_parquet(?)", [str(path)]


def load_items(con, path: str | os.PathLike, *, fmt: str | None = None,
               mapping: ColumnMapping | None = None, source: str | None = None
               ) -> dict[str, int]:
    """Upsert one catalog file. Returns counts: {'upserted': n, 'new_items': n, 'rejected': n}.
    ``source`` names the input in rejects and errors (default: the file's path).
    Rows without an item id, and rows whose ``available`` / ``available_from`` /
    ``available_until`` do not parse or make an empty window, go to ``rejects`` with the
    reason. When the file has any of those columns, each of its items' availability is set
    from its row (``available`` empty: true; an empty bound: none)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputPathError(f"{path} does not exist or is not a file")
    source_name = source or str(path)
    mapping = mapping or ColumnMapping()
    fmt, _ = detect_format(path, fmt)
    reader, params = _reader(path, fmt)
    try:
        described = con.execute(f"describe select * from {reader}", params).fetchall()
    except Exception as exc:  # duckdb raises many kinds for unreadable input
        raise BadEventFile(f"cannot read catalog {source_name}: "
                           f"{str(exc).splitlines()[0]}") from None
    names = [r[0] for r in described]
    types = {r[0]: str(r[1]).upper() for r in described}
    source = {c: mapping.columns.get(c, c) for c in CATALOG_COLUMNS}
    if source["item_id"] not in names:
        raise BadEventFile(f"catalog {source_name} has no column {source['item_id']!r} (columns: "
                           f"{', '.join(names)}); map it with --map item_id=COLUMN")
    with transaction(con):
        _stage(con, reader, params, fmt, _row_select(names, types, source, fmt))
        rejected = _reject(con, fmt, source_name)
        new_items, upserted = _upsert(con, any(source[c] in names
                                               for c in availability.COLUMNS))
    return {"upserted": upserted, "new_items": new_items, "rejected": rejected}


def _row_select(names: list[str], types: dict[str, str], source: dict[str, str],
                fmt: str) -> str:
    """The select list of a staged catalog row (``r``, the file's row; ``l``, its line):
    the catalog's columns from the file's (``source``: catalog column -> file column; a
    column the file lacks is NULL), the availability flags a rejection reads, and the raw
    row for rejects."""
    def col(name: str) -> str:
        return "r." + quote_identifier(source[name]) if source[name] in names else "NULL"

    tags_col = col("tags")
    if tags_col != "NULL" and types[source["tags"]].endswith("[]"):
        tags = f"list_transform({tags_col}, lambda t: trim(cast(t as VARCHAR)))"
    elif tags_col != "NULL":
        tags = (f"list_filter(list_transform(string_split(cast({tags_col} as VARCHAR), '|'), "
                f"lambda t: trim(t)), lambda t: t <> '')")
    else:
        tags = "NULL"
    emb_col = col("embedding")
    embedding = "NULL" if emb_col == "NULL" else f"try_cast({emb_col} as FLOAT[])"
    used = {source[c] for c in CATALOG_COLUMNS}
    extras = [n for n in names if n not in used]
    attributes = ("json_object(" + ", ".join(
        f"'{n.replace(chr(39), chr(39) * 2)}', r.{quote_identifier(n)}" for n in extras) + ")"
                  if extras else "NULL")
    item_id = trim_id(f"cast({col('item_id')} as VARCHAR)")
    # availability (rtsql.availability): a value given that does not parse rejects the row
    given = {c: f"nullif(trim(cast({col(c)} as VARCHAR)), '')" for c in availability.COLUMNS}
    when = {c: f"try_cast({given[c]} as TIMESTAMPTZ)::TIMESTAMP"
            for c in ("available_from", "available_until")}
    # a field that opens a quote it never closes (the reader keeps the quote in the value):
    # the row is malformed, as in the events reader
    unbalanced = " or ".join(
        f"(starts_with(r.{quote_identifier(n)}, '\"') and (length(r.{quote_identifier(n)}) - "
        f"length(replace(r.{quote_identifier(n)}, '\"', ''))) % 2 = 1)" for n in names) \
        if fmt == "csv" else "false"
    return f"""
        l.line, case when {unbalanced} then NULL else {item_id} end as item_id,
        {unbalanced} as unbalanced,
        {given['available']} is not null
            and try_cast({given['available']} as BOOLEAN) is null as bad_available,
        {given['available_from']} is not null
            and {when['available_from']} is null as bad_from,
        {given['available_until']} is not null
            and {when['available_until']} is null as bad_until,
        coalesce(try_cast({given['available']} as BOOLEAN), true) as available,
        {when['available_from']} as available_from,
        {when['available_until']} as available_until,
        cast({col('title')} as VARCHAR) as title,
        trim(cast({col('category')} as VARCHAR)) as category,
        {tags} as tags, cast({col('description')} as VARCHAR) as description,
        {attributes} as attributes, {embedding} as embedding,
        to_json(r)::VARCHAR as raw"""


def _stage(con, reader: str, params: list, fmt: str, row_select: str) -> None:
    """_rtsql_catalog_raw (the file's rows) and _rtsql_catalog (``row_select`` of each, with
    its file line and its reject reason, NULL for a row that loads)."""
    # a scan of the staged rows keeps the file order: row_number() is the data row
    con.execute(f"create or replace temp table _rtsql_catalog_raw as select * from {reader}",
                params)
    # the file line of each data row: CSV lines after the header, less the lines the
    # reader set aside (a row the reader rejects is not among the data rows)
    first_line = 2 if fmt == "csv" else 1  # after the header
    set_aside = f"select distinct line from {_CSV_ERRORS}" if fmt == "csv" else \
        "select NULL::BIGINT as line where false"
    con.execute(f"""
        create or replace temp table _rtsql_catalog_lines as
        select row_number() over (order by l) as row, l as line
        from range({first_line}, {first_line} + (select count(*) from _rtsql_catalog_raw)
                                 + (select count(*) from ({set_aside}))) t(l)
        where l not in ({set_aside}) order by l""")
    con.execute(f"""
        create or replace temp table _rtsql_catalog as
        select {row_select}
        from _rtsql_catalog_raw r positional join _rtsql_catalog_lines l""")
    con.execute("drop table _rtsql_catalog_lines")
    con.execute("""
        create or replace temp table _rtsql_catalog as
        select *, case
            when unbalanced then 'catalog row: unbalanced quotes (a record must fit on '
                                 || 'one line)'
            when item_id is null or item_id = '' then 'catalog row without item_id'
            when bad_available then 'catalog row: available is not a boolean (true/false, '
                                    || 'yes/no, 1/0)'
            when bad_from or bad_until then 'catalog row: available_'
                || case when bad_from then 'from' else 'until' end || ' is not a timestamp'
            when available_until <= available_from then 'catalog row: available_until is '
                                                        || 'not after available_from'
        end as reason
        from _rtsql_catalog""")


def _reject(con, fmt: str, source_name: str) -> int:
    """The staged rows with a reason, and the rows the CSV reader set aside (one each, with
    its first reason), into ``rejects``; the first leave _rtsql_catalog. Returns how many."""
    rejected = scalar(con, "select count(*) from _rtsql_catalog where reason is not null")
    if fmt == "csv":
        rejected += scalar(con, f"select count(distinct line) from {_CSV_ERRORS}")
        con.execute(f"""
            insert into rejects select NULL, ?, line, first(csv_line order by error_message),
                   'catalog row: ' || first(error_message order by error_message),
                   now()::TIMESTAMP
            from {_CSV_ERRORS} group by line order by line""", [source_name])
        con.execute(f"drop table {_CSV_ERRORS}")
        con.execute(f"drop table {_CSV_SCANS}")
    con.execute("""
        insert into rejects
        select NULL, ?, line, raw, reason, now()::TIMESTAMP
        from _rtsql_catalog where reason is not null order by line""", [source_name])
    con.execute("delete from _rtsql_catalog where reason is not null")
    return rejected


def _upsert(con, availability_given: bool) -> tuple[int, int]:
    """The staged rows into items (new ids), item_catalog and, when the file has an
    availability column, item_availability: an item's last row wins. Returns (new items,
    items upserted)."""
    new_items = scalar(con, """
        select count(*) from (select distinct item_id from _rtsql_catalog)
        anti join items using (item_id)""")
    add_new_ids(con, "_rtsql_catalog", "item_id")
    upserted = scalar(con, "select count(distinct item_id) from _rtsql_catalog")
    con.execute("""
        create or replace temp table _rtsql_catalog as
        select c.*, i.item_key from _rtsql_catalog c join items i using (item_id)
        qualify row_number() over (partition by item_id order by line desc) = 1""")
    con.execute("""
        insert or replace into item_catalog
        select item_key, title, category, tags, description, attributes, embedding,
               now()::TIMESTAMP
        from _rtsql_catalog""")
    if availability_given:  # the file says, per row
        con.execute("""
            insert or replace into item_availability
            select item_key, available, available_from, available_until, now()::TIMESTAMP
            from _rtsql_catalog""")
    con.execute("drop table _rtsql_catalog")
    con.execute("drop table _rtsql_catalog_raw")
    return new_items, upserted


def load_items_body(con, body: bytes, source: str, fmt: str = "jsonl") -> dict:
    """Upsert catalog rows sent in a request (``POST /items``): a JSON array of objects, JSON
    lines, or CSV text with a header. The body goes through ``load_items`` itself (staged in a
    private temporary file), so it meets the same validation and rejects as a file; rejects
    carry ``source`` and the line within the body. Returns load_items's counts and the
    rejected lines with their reasons."""
    from .ingest import json_array_as_lines

    if fmt not in ("jsonl", "csv"):
        raise InvalidSetting(f"catalog rows come as jsonl or csv, not {fmt!r}")
    if fmt == "jsonl":
        body = json_array_as_lines(body)
    if not body.strip():
        raise InvalidSetting("the body holds no catalog rows")
    # this load's rejects only: a server numbers its requests from 1 again after a restart
    before = scalar(con, "select coalesce(max(rowid), -1) from rejects")
    with tempfile.TemporaryDirectory(prefix="rtsql-items-") as folder:
        staged = Path(folder) / f"items.{fmt}"
        staged.write_bytes(body)
        counts = load_items(con, staged, fmt=fmt, source=source)
    counts["rejects"] = [{"line": line, "reason": reason} for line, reason in con.execute(
        "select line, reason from rejects where source = ? and rowid > ? order by line",
        [source, before]).fetchall()]
    return counts
