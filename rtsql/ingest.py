"""Batch ingest of event files (CSV, JSON-lines, Parquet; CSV and JSON-lines also gzipped).

Every input row ends in ``events`` or in ``rejects`` (with the reason, source file and line), and
each file is loaded in one transaction together with its row in the ``source_files`` ledger, so a
file is either wholly in or not at all.

Text files are line oriented: one event per physical line. They are read in bounded chunks whose
lines become an Arrow binary column (numpy finds the newlines; no per-row Python); DuckDB decodes,
splits and validates them in one set-based statement per chunk. Offsets and content hashes are
over the decompressed bytes, which makes re-ingesting identical content a no-op and lets a file
that grew since its last ingest load only its new lines.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import ledger, settings
from .errors import BadEventFile, InputPathError, InvalidSetting
from .sqlutil import add_new_ids, one, quote_identifier, scalar, trim_id

CANONICAL_COLUMNS = ("user_id", "item_id", "event_type", "ts", "value")
REQUIRED_COLUMNS = ("user_id", "item_id", "ts")  # event_type too, unless --event-type is given
FORMATS = ("csv", "jsonl", "parquet")
HEAD_BYTES = 1024  # identity of a file across growth: the hash of its first bytes

_SUFFIXES = {
    ".csv": ("csv", None), ".csv.gz": ("csv", "gzip"),
    ".jsonl": ("jsonl", None), ".ndjson": ("jsonl", None), ".json": ("jsonl", None),
    ".jsonl.gz": ("jsonl", "gzip"), ".ndjson.gz": ("jsonl", "gzip"), ".json.gz": ("jsonl", "gzip"),
    ".parquet": ("parquet", None), ".pq": ("parquet", None),
}
_TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")

Progress = Callable[[int, int], None]  # (bytes done, bytes total) of the current file


@dataclass
class ColumnMapping:
    """Where the canonical columns are in a file, and the event type for files with none."""

    columns: dict[str, str] = field(default_factory=dict)
    event_type: str | None = None

    @classmethod
    def parse(cls, items: Iterable[str], event_type: str | None = None) -> "ColumnMapping":
        columns = dict(settings.assignments(items, "--map", "CANONICAL=SOURCE (e.g. "
                                            "user_id=userId)", CANONICAL_COLUMNS))
        return cls(columns, event_type.strip().lower() if event_type else None)

    def source(self, canonical: str) -> str:
        return self.columns.get(canonical, canonical)


@dataclass
class FileResult:
    path: str
    format: str
    status: str  # ingested | grown | unchanged | empty | failed
    ingested: int = 0
    rejected: int = 0
    skipped: int = 0
    message: str = ""
    file_id: int | None = None
    end_offset: int = 0


# --------------------------------------------------------------------------- paths and formats

def is_temporary_name(name: str) -> bool:
    """Names that writers use while a file is incomplete (dotfiles, editor and download parts)."""
    return name.startswith((".", "~")) or name.endswith(_TEMPORARY_SUFFIXES)


def detect_format(path: Path, fmt: str | None = None) -> tuple[str, str | None]:
    """(format, compression) from the extension; ``fmt`` overrides the format."""
    name = path.name.lower()
    compression = "gzip" if name.endswith(".gz") else None
    if fmt:
        if fmt not in FORMATS:
            raise InputPathError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if fmt == "parquet":
            compression = None
        return fmt, compression
    for suffix, found in sorted(_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return found
    raise InputPathError(f"cannot tell the format of {path} from its extension; pass --format "
                         f"{'|'.join(FORMATS)}")


def expand_paths(paths: Iterable[str | os.PathLike], fmt: str | None = None) -> list[Path]:
    """Files to ingest: files as given, directories walked for known extensions, sorted.
    Every path is checked before anything is read."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise InputPathError(f"{p} does not exist")
        if p.is_dir():
            found = []
            for child in sorted(p.rglob("*")):
                if child.is_file() and not any(is_temporary_name(part)
                                               for part in child.relative_to(p).parts):
                    try:
                        detect_format(child, fmt)
                    except InputPathError:
                        continue
                    found.append(child)
            files.extend(found)
        elif p.is_file():
            detect_format(p, fmt)
            files.append(p)
        else:
            raise InputPathError(f"{p} is not a regular file or directory")
    if not files:
        raise InputPathError("no event files found in " + ", ".join(str(p) for p in paths))
    return files


# --------------------------------------------------------------------------- bytes and hashes

def _open_bytes(path: Path, compression: str | None) -> BinaryIO:
    return gzip.open(path, "rb") if compression == "gzip" else open(path, "rb")


@dataclass
class _Fingerprint:
    size: int
    head_sha256: str
    content_sha256: str
    prefix_sha256: dict[int, str]  # hash of the first N bytes, for the asked-for N


def _fingerprint(path: Path, compression: str | None, prefixes: Iterable[int] = ()) -> _Fingerprint:
    """Hash the (decompressed) content in one streaming pass, also at the given prefix lengths."""
    wanted = sorted(set(p for p in prefixes if p > 0))
    content, head = hashlib.sha256(), hashlib.sha256()
    prefix_hashes: dict[int, str] = {}
    done = 0
    try:
        with _open_bytes(path, compression) as f:
            while True:
                block = f.read(1 << 22)
                if not block:
                    break
                if done < HEAD_BYTES:
                    head.update(block[: HEAD_BYTES - done])
                start = 0
                while wanted and wanted[0] <= done + len(block):
                    cut = wanted.pop(0) - done
                    content.update(block[start:cut])
                    start = cut
                    prefix_hashes[done + cut] = content.copy().hexdigest()
                content.update(block[start:])
                done += len(block)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BadEventFile(f"cannot read {path}: {exc}") from None
    return _Fingerprint(done, head.hexdigest(), content.hexdigest(), prefix_hashes)


def _line_chunks(f: BinaryIO, chunk_bytes: int, first_line: int, include_partial: bool
                 ) -> Iterator[tuple[pa.Table, int, int]]:
    """Split a byte stream into Arrow tables of (line, raw) with each raw line's bytes including
    its newline; yields (table, bytes consumed so far, last line number). A last line without a
    newline is yielded only when ``include_partial``."""
    pending = b""
    line = first_line
    consumed = 0
    while True:
        data = f.read(chunk_bytes)
        if data:
            pending += data
            cut = pending.rfind(b"\n") + 1
            if cut == 0:
                continue
            block, pending = pending[:cut], pending[cut:]
        elif pending and include_partial:
            block, pending = pending + b"\n", b""
        else:
            return
        buf = np.frombuffer(block, dtype=np.uint8)
        ends = np.flatnonzero(buf == 10) + 1
        offsets = np.concatenate(([0], ends)).astype(np.int64)
        n = len(ends)
        raw = pa.Array.from_buffers(pa.large_binary(), n,
                                    [None, pa.py_buffer(offsets), pa.py_buffer(block)])
        lines = np.arange(line + 1, line + n + 1, dtype=np.int64)
        line += n
        consumed += len(block) if data or not include_partial else len(block) - 1
        yield pa.table({"line": lines, "raw": raw}), consumed, line
        if not data:
            return


# --------------------------------------------------------------------------- SQL building

# Parsing shared by every format. A source query yields: line, raw_text, early_reason (a reason
# found while splitting the line, or NULL), user_id, item_id, event_type (texts), ts (TIMESTAMP,
# NULL when missing or unparseable), ts_text, value (DOUBLE or NULL) and value_text. This adds
# the first failing reason; rows with reason NULL are events.
_TYPED_SELECT = """
select line, raw_text, user_id, item_id, event_type, ts, value,
       case
           when blank then 'blank line'
           when early_reason is not null then early_reason
           when user_id is null or user_id = '' then 'missing user_id'
           when item_id is null or item_id = '' then 'missing item_id'
           when event_type is null or event_type = '' then 'missing event_type'
           when et.event_type is null then 'unknown event type ''' || event_type || ''''
           when ts is null and (ts_text is null or trim(ts_text) = '') then 'missing ts'
           when ts is null then 'unparseable timestamp ''' || ts_text || ''''
           when value_text is not null and trim(value_text) <> ''
                and (value is null or not isfinite(value))
               then 'non-numeric value ''' || value_text || ''''
           when et.uses_value and value is null
               then 'missing value for event type ''' || event_type || ''''
           when ts < b.ts_min or ts > b.ts_max
               then 'timestamp ' || ts || ' outside [' || b.ts_min || ', ' || b.ts_max
                    || '] (settings ingest_min_ts, ingest_max_ahead_hours)'
           when abs(value) > b.max_value
               then 'value ' || value || ' exceeds ' || b.max_value
                    || ' in absolute value (setting ingest_max_abs_value)'
           when value < 0 and not et.negative_values
               then 'negative value ' || value || ' for event type ''' || event_type
                    || ''' (allow: rtsql event-types --set ' || event_type || '=WEIGHT '
                    || '--negative-values)'
       end as reason
from ({source}) s
left join event_types et using (event_type)
cross join _rtsql_bounds b
"""


def _parse_ts(text: str) -> str:
    """ISO-8601 text (offsets honoured, naive means UTC) or integer/decimal epoch seconds."""
    return (f"case when regexp_full_match(trim({text}), '-?[0-9]+(\\.[0-9]*)?') "
            f"then try(make_timestamp(try_cast(try_cast(trim({text}) as DOUBLE) * 1e6 as BIGINT))) "
            f"else timezone('UTC', try_cast(trim({text}) as TIMESTAMPTZ)) end")


def _parse_value(text: str) -> str:
    return f"try_cast(nullif(trim({text}), '') as DOUBLE)"


def _text_source(inner: str) -> str:
    """Wrap a query yielding ts_text/value_text (and the other columns) with their parsing."""
    return (f"select *, {_parse_ts('ts_text')} as ts, {_parse_value('value_text')} as value "
            f"from ({inner})")


def _event_type_expr(text_expr: str | None, mapping: ColumnMapping) -> tuple[str, list]:
    """lower(trim(column)), falling back to --event-type where the file has no type."""
    params: list = []
    if text_expr is None:
        expr = "?"
        params.append(mapping.event_type)
    elif mapping.event_type:
        expr = f"coalesce(nullif(lower(trim({text_expr})), ''), ?)"
        params.append(mapping.event_type)
    else:
        expr = f"lower(trim({text_expr}))"
    return expr, params


def _csv_header(path: Path, compression: str | None, stream: BinaryIO | None = None
                ) -> list[str] | None:
    if stream is not None:
        stream.seek(0)
        first = stream.readline()
    else:
        with _open_bytes(path, compression) as f:
            first = f.readline()
    if not first.strip():
        return None
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadEventFile(f"{path}: the header line is not UTF-8 text") from None
    return [c.strip() for c in next(csv.reader(io.StringIO(text)))]


def _check_columns(path: Path, present: list[str], mapping: ColumnMapping) -> dict[str, int | None]:
    """Position of each canonical column among ``present``; None for absent optional ones."""
    positions: dict[str, int | None] = {}
    required = list(REQUIRED_COLUMNS) + ([] if mapping.event_type else ["event_type"])
    for canonical in CANONICAL_COLUMNS:
        source = mapping.source(canonical)
        if source in present:
            positions[canonical] = present.index(source)
        elif canonical in required:
            hint = ("; give one type for the whole file with --event-type"
                    if canonical == "event_type" else "")
            raise BadEventFile(
                f"{path} has no column {source!r} (columns: {', '.join(present) or 'none'}); "
                f"map it with --map {canonical}=COLUMN{hint}")
        else:
            positions[canonical] = None
    return positions


def _csv_chunk_sql(positions: dict[str, int | None], n_fields: int, mapping: ColumnMapping
                   ) -> tuple[str, list]:
    def field_expr(canonical: str) -> str | None:
        pos = positions[canonical]
        return None if pos is None else f"f[{pos + 1}]"

    et_expr, params = _event_type_expr(field_expr("event_type"), mapping)
    inner = f"""
        select line, raw_text, coalesce(trim(txt) = '', false) as blank,
               case when txt is null then 'invalid UTF-8'
                    when len(f) <> {n_fields}
                        then 'wrong number of fields: expected {n_fields}, found ' || len(f)
                    when quoted and len(list_filter(f_raw, lambda x: contains(x, '"') and not
                             (len(x) >= 2 and starts_with(x, '"') and ends_with(x, '"')))) > 0
                        then 'unbalanced quotes (a record must fit on one line)'
               end as early_reason,
               {trim_id(field_expr('user_id'))} as user_id,
               {trim_id(field_expr('item_id'))} as item_id,
               {et_expr} as event_type,
               {field_expr('ts')} as ts_text,
               {field_expr('value') or 'NULL'} as value_text
        from (
            select *, case when quoted then list_transform(f_raw, lambda x:
                               case when len(x) >= 2 and starts_with(x, '"') and ends_with(x, '"')
                                    then replace(x[2:-2], '""', '"') else x end)
                           else f_raw end as f
            from (
                select line, txt, coalesce(txt, raw_escaped) as raw_text,
                       coalesce(contains(txt, '"'), false) as quoted,
                       case when contains(txt, '"')
                            then regexp_extract_all(txt, '(?:^|,)("(?:[^"]|"")*"|[^,]*)', 1)
                            else string_split(txt, ',')
                       end as f_raw
                from {{lines}}
            )
        )
    """
    return _TYPED_SELECT.format(source=_text_source(inner.format(lines=_DECODED_LINES))), params


def _json_chunk_sql(mapping: ColumnMapping) -> tuple[str, list]:
    """Each line is parsed once: one json_extract_string call takes every field's path."""
    paths = ['$."' + mapping.source(c).replace('"', '\\"') + '"'
             for c in ("user_id", "item_id", "event_type", "ts", "value")]
    et_expr, params = _event_type_expr("f[3]", mapping)
    inner = f"""
        select line, raw_text, coalesce(trim(txt) = '', false) as blank,
               case when txt is null then 'invalid UTF-8'
                    when not ok then 'malformed JSON'
                    when f is null then 'JSON line is not an object'
                    when id_types[1] not in ('VARCHAR', 'BIGINT', 'UBIGINT', 'NULL')
                        then 'user_id is a JSON ' || lower(id_types[1])
                             || ': an id is a string or an integer'
                    when id_types[2] not in ('VARCHAR', 'BIGINT', 'UBIGINT', 'NULL')
                        then 'item_id is a JSON ' || lower(id_types[2])
                             || ': an id is a string or an integer'
               end as early_reason,
               {trim_id('f[1]')} as user_id, {trim_id('f[2]')} as item_id,
               case when f is not null then {et_expr} end as event_type,
               f[4] as ts_text, f[5] as value_text
        from (
            select *,
                   -- an id's JSON type, read again only where its text could be a number
                   -- with a fraction or exponent, a boolean, an object or an array
                   case when regexp_full_match(f[1], '[-+0-9.eE]+|true|false')
                             or regexp_full_match(f[2], '[-+0-9.eE]+|true|false')
                             or left(f[1], 1) in ('[', chr(123)) or left(f[2], 1) in ('[', chr(123))
                        then json_type(txt, ?::VARCHAR[])
                        else ['VARCHAR', 'VARCHAR'] end as id_types
            from (
            select line, txt, raw_text, ok,
                   case when ok and json_type(txt) = 'OBJECT'
                        then json_extract_string(txt, ?::VARCHAR[]) end as f
            from (
                select line, txt, coalesce(txt, raw_escaped) as raw_text,
                       coalesce(json_valid(txt), false) as ok
                from {{lines}}
            )
            )
        )
    """
    return (_TYPED_SELECT.format(source=_text_source(inner.format(lines=_DECODED_LINES))),
            params + [paths[:2], paths])


# Lines as Arrow binary (newline included) -> text without the line break. Invalid UTF-8 leaves
# txt NULL and keeps the bytes, escaped as \xNN, for the rejects table. Inlined as a subquery
# into the parse, so each chunk is one statement.
_DECODED_LINES = """(
    select line, txt,
           case when txt is null then regexp_replace(raw::VARCHAR, '(\\\\x0D)?\\\\x0A$', '') end
               as raw_escaped
    from (select line, raw, rtrim(try(decode(raw)), chr(13) || chr(10)) as txt
          from _rtsql_chunk)
)"""
BLANK = "blank line"  # a pseudo-reason: counted as skipped, written nowhere


def _parquet_sql(path: Path, con, mapping: ColumnMapping) -> tuple[str, list]:
    """Parquet columns are typed: native timestamps and numbers are used as they are."""
    described = con.execute("describe select * from read_parquet(?)", [str(path)]).fetchall()
    names = [row[0] for row in described]
    types = {row[0]: str(row[1]).upper() for row in described}
    positions = _check_columns(path, names, mapping)

    def col(canonical: str) -> str | None:
        pos = positions[canonical]
        return None if pos is None else "p." + quote_identifier(names[pos])

    def as_text(canonical: str) -> str:
        c = col(canonical)
        return "NULL" if c is None else f"cast({c} as VARCHAR)"

    ts_col, ts_type = col("ts"), types[names[positions["ts"]]]
    if ts_type.startswith("TIMESTAMP WITH TIME ZONE"):
        ts, ts_text = f"timezone('UTC', {ts_col})", "NULL"
    elif ts_type.startswith(("TIMESTAMP", "DATE")):
        ts, ts_text = f"cast({ts_col} as TIMESTAMP)", "NULL"
    elif ts_type in ("BIGINT", "INTEGER", "DOUBLE", "FLOAT", "HUGEINT", "UBIGINT", "UINTEGER"):
        ts, ts_text = f"try(make_timestamp(try_cast({ts_col} * 1e6 as BIGINT)))", f"cast({ts_col} as VARCHAR)"
    else:
        ts, ts_text = _parse_ts(ts_col), ts_col
    value_col = col("value")
    if value_col is None:
        value, value_text = "NULL", "NULL"
    else:
        value, value_text = f"try_cast({value_col} as DOUBLE)", as_text("value")
    et_expr, params = _event_type_expr(as_text("event_type") if col("event_type") else None, mapping)
    source = f"""
        select file_row_number + 1 as line, NULL as raw_text, false as blank,
               NULL as early_reason,
               {trim_id(as_text('user_id'))} as user_id,
               {trim_id(as_text('item_id'))} as item_id,
               {et_expr} as event_type,
               {ts} as ts, {ts_text} as ts_text,
               {value} as value, {value_text} as value_text
        from read_parquet(?, file_row_number = true) p
    """
    return _TYPED_SELECT.format(source=source), params + [str(path)]


# The parse above leaves raw_text NULL (serializing every row would cost more than the load);
# the few rejected rows get their raw text here, read again by row number.
_PARQUET_REJECT_TEXT = """
update _rtsql_parsed set raw_text = r.raw
from (select file_row_number + 1 as line, to_json(p)::VARCHAR as raw
      from (select * from read_parquet(?, file_row_number = true)) p) r
where _rtsql_parsed.reason is not null and _rtsql_parsed.line = r.line
"""


# --------------------------------------------------------------------------- the load itself

_COMMIT_PARSED = [
    """insert into events
       select $event_base + p.line, u.user_key, i.item_key, p.event_type, p.value, p.ts,
              $file_id, p.line
       from _rtsql_parsed p join users u using (user_id) join items i using (item_id)
       where p.reason is null""",
    """insert into rejects
       select $file_id, $source, line, raw_text, reason, now()::TIMESTAMP
       from _rtsql_parsed where reason <> $blank""",
]


def _load_text(con, path: Path, fmt: str, compression: str | None, mapping: ColumnMapping,
               start_offset: int, start_line: int, chunk_bytes: int, total: int,
               progress: Progress | None, include_partial: bool = True,
               stream: BinaryIO | None = None) -> tuple[int, int]:
    """Parse the lines after ``start_offset`` into _rtsql_parsed. Returns (end offset, end line)."""
    if fmt == "csv":
        header = _csv_header(path, compression, stream)
        if header is None:
            return start_offset, start_line
        positions = _check_columns(path, header, mapping)
        sql, params = _csv_chunk_sql(positions, len(header), mapping)
    else:
        sql, params = _json_chunk_sql(mapping)
    end_offset, end_line = start_offset, start_line
    with (nullcontext(stream) if stream is not None else _open_bytes(path, compression)) as f:
        _seek(f, start_offset)
        for table, consumed, last_line in _line_chunks(f, chunk_bytes, start_line,
                                                       include_partial):
            if fmt == "csv" and start_line == 0:
                table = table.filter(pc.greater(table["line"], 1))
            con.register("_rtsql_chunk", table)
            con.execute(f"insert into _rtsql_parsed {_keep_raw_of_rejects(sql)}", params)
            con.unregister("_rtsql_chunk")
            end_offset, end_line = start_offset + consumed, last_line
            if progress:
                progress(end_offset, total)
    return end_offset, end_line


def _keep_raw_of_rejects(sql: str) -> str:
    """Only rejected rows keep their raw text in the staging table."""
    return (f"select line, case when reason is not null and reason <> '{BLANK}' then raw_text end, "
            f"user_id, item_id, event_type, ts, value, reason from ({sql})")


def _seek(f: BinaryIO, offset: int) -> None:
    if isinstance(f, gzip.GzipFile):
        f.seek(offset)  # decompresses up to offset; gzip files rarely grow
    else:
        f.seek(offset, os.SEEK_SET)  # also rewinds a stream the header was read from


def _start_parse(con) -> None:
    """The temp tables a parse fills and reads: _rtsql_parsed, and this load's accepted
    ranges (read by _TYPED_SELECT), from the settings and the clock at the load's start."""
    con.execute("""
        create or replace temp table _rtsql_parsed (
            line BIGINT, raw_text VARCHAR, user_id VARCHAR, item_id VARCHAR, event_type VARCHAR,
            ts TIMESTAMP, value DOUBLE, reason VARCHAR)""")
    values = settings.get_all(con)
    con.execute("""create or replace temp table _rtsql_bounds as
                   select ?::TIMESTAMP as ts_min,
                          now()::TIMESTAMP + to_microseconds(?::BIGINT) as ts_max,
                          ?::DOUBLE as max_value""",
                [values["ingest_min_ts"], round(values["ingest_max_ahead_hours"] * 3600e6),
                 values["ingest_max_abs_value"]])


@dataclass
class Segment:
    """Where a load starts in a file and what the ledger should say about it afterwards."""

    file_id: int | None = None  # None: a new ledger row
    start_offset: int = 0
    start_line: int = 0
    complete_lines_only: bool = False  # tail: a last line without newline waits
    head_sha256: str = ""
    head_len: int = 0
    content_sha256: str | None = None  # None: unknown (the tail does not rehash whole files)
    identity: tuple[int, int] | None = None  # (device, inode) the caller expects at the path


def check_event_type(con, mapping: ColumnMapping) -> None:
    if mapping.event_type and not scalar(
            con, "select count(*) from event_types where event_type = ?", [mapping.event_type]):
        raise InputPathError(f"--event-type {mapping.event_type!r} is not a known event type; "
                             "see `rtsql event-types`")


def ingest_file(con, path: str | os.PathLike, *, fmt: str | None = None,
                mapping: ColumnMapping | None = None, force: bool = False,
                progress: Progress | None = None) -> FileResult:
    """Load one event file in one transaction. Raises BadEventFile (nothing written) when the
    file cannot be read at all; bad rows go to ``rejects``."""
    path = Path(path).expanduser().resolve()
    mapping = mapping or ColumnMapping()
    fmt, compression = detect_format(path, fmt)
    check_event_type(con, mapping)
    head = _fingerprint_head(path, compression)
    # Which earlier ingest of this file (same path, or same first bytes) is a prefix of it now?
    known = ledger.earlier_reads(con, fmt, path, head) if fmt != "parquet" else []
    fp = _fingerprint(path, compression, [row[1] for row in known])
    if not force:
        same = ledger.ingested_as(con, fp.content_sha256)
        if same:
            return FileResult(str(path), fmt, "unchanged",
                              message=f"already ingested (as {same})")
    segment = Segment(head_sha256=fp.head_sha256, head_len=min(fp.size, HEAD_BYTES))
    if not force:
        matches = [r for r in known if fp.prefix_sha256.get(r[1]) == r[3] and r[1] < fp.size]
        resume = max(matches, key=lambda r: r[1], default=None)
        if resume:
            segment.file_id, segment.start_offset, segment.start_line = resume[:3]
    segment.content_sha256 = fp.content_sha256  # batch reads to the end: the whole content
    return load_segment(con, path, fmt, compression, mapping, segment, progress)


def load_segment(con, path: Path, fmt: str, compression: str | None, mapping: ColumnMapping,
                 segment: Segment, progress: Progress | None = None) -> FileResult:
    """Parse ``path`` from the segment's offset and commit its events, rejects and ledger row
    in one transaction: after a crash the file is either wholly in up to the new offset, or
    not at all (the exactly-once rule the tail relies on)."""
    chunk_bytes = settings.get(con, "ingest_chunk_mb") << 20
    # One descriptor for identity and data: a rotation between a stat and an open would
    # otherwise pair one file's bytes with another file's inode.
    stream = open(path, "rb") if fmt != "parquet" and compression is None else None
    try:
        stat = os.fstat(stream.fileno()) if stream else path.stat()
        if segment.identity and (stat.st_dev, stat.st_ino) != segment.identity:
            return FileResult(str(path), fmt, "moved", message="replaced while being read")
        return _load_segment(con, path, fmt, compression, mapping, segment, progress, stream,
                             stat, chunk_bytes)
    finally:
        if stream:
            stream.close()


def _load_segment(con, path, fmt, compression, mapping, segment, progress, stream, stat,
                  chunk_bytes) -> FileResult:
    size = stat.st_size
    con.execute("begin transaction")
    try:
        file_id = segment.file_id or ledger.next_file_id(con)
        _start_parse(con)
        if fmt == "parquet":
            sql, params = _parquet_sql(path, con, mapping)
            con.execute(f"insert into _rtsql_parsed {_keep_raw_of_rejects(sql)}", params)
            if scalar(con, "select count(*) from _rtsql_parsed where reason is not null"):
                con.execute(_PARQUET_REJECT_TEXT, [str(path)])
            end_offset = size
            end_line = scalar(con, "select coalesce(max(line), 0) from _rtsql_parsed")
        else:
            end_offset, end_line = _load_text(
                con, path, fmt, compression, mapping, segment.start_offset, segment.start_line,
                chunk_bytes, size, progress, not segment.complete_lines_only, stream)
        event_base = scalar(con, "select coalesce(max(event_id), 0) from events")
        params = {"event_base": event_base, "file_id": file_id, "source": str(path),
                  "blank": BLANK}
        for column in ("user_id", "item_id"):
            add_new_ids(con, "_rtsql_parsed", column, "reason is null", "min(ts)")
        for statement in _COMMIT_PARSED:
            con.execute(statement, {k: v for k, v in params.items() if f"${k}" in statement})
        ingested, rejected, blanks = one(
            con,
            "select count(*) filter (where reason is null), "
            "count(*) filter (where reason <> $blank), count(*) filter (where reason = $blank) "
            "from _rtsql_parsed", {"blank": BLANK})
        content_sha = segment.content_sha256 or f"unhashed:{segment.head_sha256}:{end_offset}"
        end_sha = sha_before(stream, end_offset) if stream else None
        ledger.record(con, file_id, bool(segment.file_id), path=path, fmt=fmt,
                      compression=compression, head_sha256=segment.head_sha256,
                      head_len=segment.head_len, content_sha256=content_sha,
                      end_offset=end_offset, end_line=end_line,
                      counts=(ingested, rejected, blanks), stat=stat, end_sha256=end_sha)
        con.execute("drop table if exists _rtsql_parsed")
        con.execute("commit")
    except BaseException as exc:
        con.execute("rollback")
        if isinstance(exc, (BadEventFile, InputPathError)):
            raise
        if isinstance(exc, (duckdb.IOException, duckdb.InvalidInputException,
                            duckdb.ConversionException, OSError, EOFError)):
            raise BadEventFile(f"cannot ingest {path}: {_first_line(exc)}") from exc
        raise
    if ingested + rejected + blanks == 0:
        status = "empty"
    else:
        status = "grown" if segment.file_id else "ingested"
    result = FileResult(str(path), fmt, status, ingested, rejected, blanks)
    result.file_id, result.end_offset = file_id, end_offset
    return result


TAIL_BYTES = 256  # how many bytes before an offset identify a file when it is resumed


def sha_before(source: Path | BinaryIO, offset: int) -> str:
    """Hash of the TAIL_BYTES before ``offset`` of the raw file (a path or an open stream)."""
    start = max(0, offset - TAIL_BYTES)
    with (open(source, "rb") if isinstance(source, (str, Path)) else nullcontext(source)) as f:
        f.seek(start)
        return hashlib.sha256(f.read(offset - start)).hexdigest()


def _fingerprint_head(path: Path, compression: str | None) -> str:
    try:
        with _open_bytes(path, compression) as f:
            return hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BadEventFile(f"cannot read {path}: {exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def ingest(con, paths: Iterable[str | os.PathLike], *, fmt: str | None = None,
           mapping: ColumnMapping | None = None, force: bool = False,
           progress: Callable[[Path], Progress | None] | None = None) -> list[FileResult]:
    """Ingest files and directories. A file that cannot be read at all is reported as failed
    (nothing of it written) and the others still load; paths are all checked first."""
    files = expand_paths(paths, fmt)
    results = []
    for path in files:
        try:
            results.append(ingest_file(con, path, fmt=fmt, mapping=mapping, force=force,
                                       progress=progress(path) if progress else None))
        except BadEventFile as exc:
            results.append(FileResult(str(path.resolve()), fmt or detect_format(path)[0],
                                      "failed", message=str(exc)))
    return results


# --------------------------------------------------------------------------- request bodies

@dataclass
class BodyResult:
    """What one request body (or other in-memory batch) gave: accepted events, and each
    rejected line with its reason."""

    source: str
    ingested: int = 0
    rejects: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    skipped: int = 0


def _last_event_id(con, hint: int | None) -> int:
    """The largest event id: with a hint, read from the row groups at or above it (zone maps
    skip the rest); a hint above every id falls back to the whole column."""
    if hint is not None:
        found = scalar(con, "select max(event_id) from events where event_id >= ?", [hint])
        if found is not None:
            return found
    return scalar(con, "select coalesce(max(event_id), 0) from events")


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def json_array_as_lines(body: bytes) -> bytes:
    """A JSON array body becomes one JSON line per element (each then validated, and rejected
    with its reason, like a line of a file); any other body is taken as JSON lines.

    Each element keeps its own text (a pretty-printed element's line breaks, which JSON allows
    only between tokens, become spaces): parsed once to find where it ends, never encoded
    again (faster than loads and dumps, and a reject shows what the client sent)."""
    import json

    if not body.lstrip().startswith(b"["):
        return body
    try:
        text = body.decode()
        decoder, space = json.JSONDecoder(), _JSON_SPACE
        at = space.match(text, text.index("[") + 1).end()
        lines = []
        if text[at:at + 1] != "]":
            while True:
                _, end = decoder.raw_decode(text, at)
                lines.append(text[at:end].replace("\n", " ").replace("\r", " "))
                at = space.match(text, end).end()
                if text[at:at + 1] == "]":
                    break
                if text[at:at + 1] != ",":
                    raise ValueError(f"expected ',' or ']' at character {at}")
                at = space.match(text, at + 1).end()
        if text[space.match(text, at + 1).end():]:
            raise ValueError(f"extra data after the array at character {at + 1}")
        return "".join(line + "\n" for line in lines).encode()
    except ValueError as exc:
        error = InvalidSetting(f"the body starts like a JSON array but is not one: {exc}")
    except RecursionError:  # Python's parser recurses per nesting level
        error = InvalidSetting("the body nests arrays or objects thousands of levels deep; an "
                               "event is one flat object")
    error.field = "body"
    raise error from None


def _batch_keys(con, known_keys) -> tuple[str, str] | None:
    """The batch's users and items as two small registered tables (id, key) when
    ``known_keys`` knows every id of the accepted rows; None when it is absent or an id is
    new (then the dictionaries get the new ids and are joined whole)."""
    if known_keys is None:
        return None
    users, items = con.execute("""select coalesce(list(distinct user_id), []),
                                         coalesce(list(distinct item_id), [])
                                  from _rtsql_parsed where reason is null""").fetchall()[0]
    found = []
    for column, key, ids in (("user_id", "user_key", users), ("item_id", "item_key", items)):
        keys = known_keys(column, ids)
        if any(k is None for k in keys):
            return None
        found.append(pa.table({column: pa.array(ids, pa.string()),
                               key: pa.array(keys, pa.int32())}))
    con.register("_rtsql_user_keys", found[0])
    con.register("_rtsql_item_keys", found[1])
    return "_rtsql_user_keys", "_rtsql_item_keys"


def _unregister(con, name: str) -> None:
    try:
        con.unregister(name)
    except Exception:  # not registered
        pass


# what a batch of bodies registers on the connection (the lines, their sources, the key maps)
_BODY_VIEWS = ("_rtsql_chunk", "_rtsql_sources", "_rtsql_user_keys", "_rtsql_item_keys")


def ingest_bodies(con, bodies: list[tuple[str, bytes]], *, fmt: str = "jsonl",
                  mapping: ColumnMapping | None = None,
                  last_event_id: int | None = None,
                  known_keys: Callable[[str, list[str]], list[int | None]] | None = None,
                  before_commit: Callable[[object], None] | None = None
                  ) -> list[BodyResult]:
    """Load several in-memory batches of CSV/JSON-lines text in one transaction (group commit:
    the HTTP server hands over every request that arrived while the last batch committed).

    Each body keeps its own identity: ``source`` names it (e.g. ``http:POST /events#17``) and
    lines count from 1 within it, so every line ends in ``events`` or in ``rejects`` with its
    reason, source and line, exactly as from a file. The same parse, validation and weights as
    ``ingest_file``; no ledger row (a body is not a file that can grow). ``last_event_id``, a
    hint from a caller that tracks it (the server), lets the next event id be found from the
    last row groups instead of a scan of every event id (9 ms at 10M events). ``known_keys``,
    from a caller that holds the id dictionaries in memory (the server's writer, under its
    lock), maps ("user_id" | "item_id", ids) to their keys (None: unknown): when every id of
    the batch is known, the new-id inserts are skipped and the events take their keys from
    a table of the batch's ids instead of joining the whole dictionaries (about 10 ms of a
    POST's 28 at 10M events); otherwise the dictionaries decide, as for a file.
    ``before_commit(con)`` runs in the same transaction, last (serve's journal position)."""
    mapping = mapping or ColumnMapping()
    if fmt not in ("csv", "jsonl"):
        raise InputPathError(f"a request body is csv or jsonl, not {fmt!r}")
    results = [BodyResult(source) for source, _ in bodies]
    lines, part_of, firsts = _body_lines(bodies, fmt)
    if not lines:
        return results
    sql, params = _body_parse_sql(bodies, fmt, mapping)
    numbers = np.arange(1, len(lines) + 1, dtype=np.int64)
    chunk = pa.table({"line": numbers, "raw": pa.array(lines, pa.large_binary())})
    # each batch line's body and its line number within the body
    sources = pa.table({"line": numbers, "part": part_of, "local": numbers - firsts[part_of],
                        "source": pa.array([bodies[i][0] for i in part_of], pa.string())})
    con.execute("begin transaction")
    try:
        counted = _insert_bodies(con, chunk, sources, sql, params, last_event_id, known_keys)
        if before_commit is not None:
            before_commit(con)
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        for name in _BODY_VIEWS:
            _unregister(con, name)
        raise
    for part, line_no, reason in counted:
        if reason == BLANK:
            results[part].skipped += 1
        else:
            results[part].rejects.append((line_no, reason))
    per_part = np.bincount(part_of, minlength=len(bodies))
    for part, result in enumerate(results):
        result.ingested = int(per_part[part]) - len(result.rejects) - result.skipped
    return results


def _body_lines(bodies: list[tuple[str, bytes]], fmt: str
                ) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The batch's lines (each CSV body without its header), each line's body, and where each
    body's lines start in the batch."""
    lines, parts, firsts = [], [], []
    for part, (_, data) in enumerate(bodies):
        if data and not data.endswith(b"\n"):
            data += b"\n"
        body_lines = data.splitlines(keepends=True)
        if fmt == "csv":
            body_lines = body_lines[1:]  # each CSV body has its own header
        firsts.append(len(lines))
        lines.extend(body_lines)
        parts.extend([part] * len(body_lines))
    return lines, np.array(parts, np.int64), np.array(firsts, np.int64)


def _body_parse_sql(bodies: list[tuple[str, bytes]], fmt: str,
                    mapping: ColumnMapping) -> tuple[str, list]:
    """The parse statement over ``_rtsql_chunk`` for the batch's format (CSV: the first body's
    header names the columns)."""
    if fmt != "csv":
        return _json_chunk_sql(mapping)
    header = _csv_header(Path(bodies[0][0]), None, io.BytesIO(bodies[0][1]))
    if header is None:
        raise InputPathError("the CSV body has no header line")
    return _csv_chunk_sql(_check_columns(Path("body"), header, mapping), len(header), mapping)


def _insert_bodies(con, chunk: pa.Table, sources: pa.Table, sql: str, params: list,
                   last_event_id: int | None,
                   known_keys: Callable[[str, list[str]], list[int | None]] | None
                   ) -> list[tuple[int, int, str]]:
    """In the caller's transaction: parse the batch, add new ids, insert its events and its
    rejects (with source and line); returns every line that is not an event as (body, line
    within it, reason), blank lines included."""
    _start_parse(con)
    con.register("_rtsql_chunk", chunk)
    con.register("_rtsql_sources", sources)
    con.execute(f"insert into _rtsql_parsed {_keep_raw_of_rejects(sql)}", params)
    dictionaries = _batch_keys(con, known_keys)
    if dictionaries is None:
        for column in ("user_id", "item_id"):
            add_new_ids(con, "_rtsql_parsed", column, "reason is null", "min(ts)")
        dictionaries = "users", "items"
    event_base = _last_event_id(con, last_event_id)
    con.execute(f"""
        insert into events
        select $event_base + row_number() over (order by p.line), u.user_key, i.item_key,
               p.event_type, p.value, p.ts, NULL, s.local
        from _rtsql_parsed p join _rtsql_sources s using (line)
        join {dictionaries[0]} u using (user_id) join {dictionaries[1]} i using (item_id)
        where p.reason is null""", {"event_base": event_base})
    counted = con.execute("""
        select s.part, s.local, p.reason
        from _rtsql_parsed p join _rtsql_sources s using (line)
        where p.reason is not null order by p.line""").fetchall()
    if any(reason != BLANK for _, _, reason in counted):
        con.execute("""
            insert into rejects
            select NULL, s.source, s.local, p.raw_text, p.reason, now()::TIMESTAMP
            from _rtsql_parsed p join _rtsql_sources s using (line)
            where p.reason <> $blank""", {"blank": BLANK})
    for name in _BODY_VIEWS:
        _unregister(con, name)
    con.execute("drop table if exists _rtsql_parsed")
    return counted
