"""The ingest ledger (``source_files``): which files were read, up to which byte and line, with
which fingerprints, and whether a follower still follows them. One row per file identity.

``rtsql ingest`` (rtsql.ingest) and ``rtsql tail`` (rtsql.tail) both read and write it through
these functions; a load's ledger row commits in the same transaction as its events, which is
what makes a crash at any moment lose and duplicate nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from .sqlutil import one, scalar


def next_file_id(con) -> int:
    return scalar(con, "select coalesce(max(file_id), 0) + 1 from source_files")


def earlier_reads(con, fmt: str, path: Path, head_sha256: str) -> list[tuple]:
    """(file_id, end_offset, end_line, content_sha256, path) of earlier reads of this file
    (same path, or same first bytes): candidates to resume from."""
    return con.execute(
        "select file_id, end_offset, end_line, content_sha256, path from source_files "
        "where format = ? and (path = ? or head_sha256 = ?)",
        [fmt, str(path), head_sha256]).fetchall()


def ingested_as(con, content_sha256: str) -> str | None:
    """The path under which these exact bytes were ingested before, if they were."""
    row = one(con, "select path from source_files where content_sha256 = ? limit 1",
              [content_sha256])
    return row[0] if row else None


def record(con, file_id: int, existing: bool, *, path: Path, fmt: str, compression,
           head_sha256: str, head_len: int, content_sha256: str, end_offset: int,
           end_line: int, counts: tuple[int, int, int], stat: os.stat_result,
           end_sha256: str | None) -> None:
    """Write a load's row: a new file, or an earlier read grown to ``end_offset``.
    ``counts``: rows ingested, rejected, skipped by this load."""
    ingested, rejected, skipped = counts
    if existing:
        con.execute(
            "update source_files set end_offset = ?, end_line = ?, content_sha256 = ?, "
            "rows_ingested = rows_ingested + ?, rows_rejected = rows_rejected + ?, "
            "rows_skipped = rows_skipped + ?, path = ?, device = ?, inode = ?, "
            "end_sha256 = ?, last_ingested_at = now()::TIMESTAMP where file_id = ?",
            [end_offset, end_line, content_sha256, ingested, rejected, skipped, str(path),
             stat.st_dev, stat.st_ino, end_sha256, file_id])
    else:
        con.execute(
            "insert into source_files (file_id, path, format, compression, head_sha256, "
            "content_sha256, end_offset, end_line, rows_ingested, rows_rejected, "
            "rows_skipped, device, inode, first_ingested_at, last_ingested_at, head_len, "
            "status, end_sha256) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "now()::TIMESTAMP, now()::TIMESTAMP, ?, 'active', ?)",
            [file_id, str(path), fmt, compression, head_sha256, content_sha256, end_offset,
             end_line, ingested, rejected, skipped, stat.st_dev, stat.st_ino, head_len,
             end_sha256])


def followed(con) -> list[tuple]:
    """Files a follower still follows: (file_id, path, format, compression, device, inode,
    head_sha256, head_len, end_offset, end_line, end_sha256)."""
    return con.execute(
        "select file_id, path, format, compression, device, inode, head_sha256, head_len, "
        "end_offset, end_line, end_sha256 from source_files where status = 'active' "
        "and device is not null order by file_id").fetchall()


def set_status(con, file_id: int, status: str) -> None:
    """active (followed), drained (read to its end after rotation), gone, truncated."""
    con.execute("update source_files set status = ? where file_id = ?", [status, file_id])


def repeated_prefix(con, head_sha256: str, size: int, sha_before) -> tuple[int, int] | None:
    """(offset, line) up to which a new file repeats a file read before (same first bytes and
    the same bytes before that file's offset: e.g. copytruncate's copy). ``sha_before(offset)``
    hashes the new file's first ``offset`` bytes."""
    rows = con.execute(
        "select end_offset, end_line, end_sha256 from source_files where head_sha256 = ? "
        "and end_offset <= ? and end_sha256 is not null order by end_offset desc",
        [head_sha256, size]).fetchall()
    for offset, line, tail in rows:
        if offset and sha_before(offset) == tail:
            return offset, line
    return None
