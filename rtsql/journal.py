"""serve's write-ahead journal: ``POST /events?wait=durable`` is answered once its body is on
disk, before DuckDB has parsed it.

A body's way into the events table costs a group commit: a dozen DuckDB statements whose
planning (the parse statement alone binds for about 9 ms) does not shrink with the batch. A
client that only needs its events kept can be answered sooner: the body is appended here,
synced (``fdatasync``, under a millisecond on a local disk), and the client gets the body's
sequence number. The writer thread then loads journaled bodies exactly as it loads the others
(same parse, validation, rejects) and records, in the same transaction as their events, the
sequence of the last one it committed (``journal_position``). So:

- an answered body survives a crash: at start, serve loads every journaled body above the
  committed position, once (a body is either in a committed transaction with its position or
  it is loaded again);
- a record the crash tore (written, not synced, never answered) is cut off at the next open;
- once every journaled body is committed, the file is emptied; while bodies keep arriving it
  is rewritten without the committed ones when it grows past ``COMPACT_BYTES``, and a forget
  rewrites it at once, so a forgotten user's events do not stay in it.

File layout: ``MAGIC``, then records of a header (sequence, body length, format, CRC-32 of
the body) and the body. One writer (this process, which holds the database's lock).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .errors import RtsqlError

MAGIC = b"rtsql-journal 1\n"
_HEADER = struct.Struct("<QIBI")  # sequence, body bytes, format code, crc32(body)
FORMATS = ("jsonl", "csv")
COMPACT_BYTES = 64 << 20  # a journal that never drains is rewritten past this size
# an append waits while this many journaled bodies are not committed yet: a writer that falls
# behind slows the answers down (as it does those of wait=visible) instead of letting the
# queue, and the work each group commit takes on, grow without bound
BACKLOG_BODIES = 256


class JournalError(RtsqlError):
    """The journal file cannot be used (not a journal, unreadable)."""


@dataclass(frozen=True)
class Record:
    sequence: int
    fmt: str
    body: bytes


def path_for(db_path: str | os.PathLike) -> Path:
    return Path(str(db_path) + ".journal")


def _records(data: bytes) -> Iterator[tuple[Record, int]]:
    """Each whole record and the offset just past it; stops at the first torn one."""
    at = len(MAGIC)
    while at + _HEADER.size <= len(data):
        sequence, size, code, crc = _HEADER.unpack_from(data, at)
        start = at + _HEADER.size
        body = data[start:start + size]
        if len(body) < size or zlib.crc32(body) != crc or code >= len(FORMATS):
            return
        at = start + size
        yield Record(sequence, FORMATS[code], body), at


def _encode(record: Record) -> bytes:
    return _HEADER.pack(record.sequence, len(record.body), FORMATS.index(record.fmt),
                        zlib.crc32(record.body)) + record.body


class Journal:
    """Open (or create) the journal of a database whose committed position is ``applied``;
    ``pending`` then holds the records above it, to be loaded again."""

    def __init__(self, path: str | os.PathLike, applied: int):
        self.path = Path(path)
        self.lock = threading.Lock()
        self._drained = threading.Condition(self.lock)  # notified as records are committed
        data = self.path.read_bytes() if self.path.exists() else b""
        if data and not data.startswith(MAGIC[:len(data)]):
            raise JournalError(f"{self.path} is not an rtsql journal; move it away and start "
                               "serve again")
        whole = list(_records(data))
        records = [record for record, _ in whole]
        end = whole[-1][1] if whole else len(MAGIC)
        self.pending = [r for r in records if r.sequence > applied]
        self.last = max([applied] + [r.sequence for r in records])
        self.applied = applied
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if len(data) < len(MAGIC):  # new, or its creation was cut short
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, MAGIC, 0)
            os.fsync(self._fd)
        elif end < len(data):  # a record torn by a crash: never synced, never answered
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        self._size = os.fstat(self._fd).st_size
        _sync_dir(self.path)

    def append(self, fmt: str, body: bytes, then: Callable[[Record], None],
               backlog: int = BACKLOG_BODIES) -> Record:
        """Write and sync one body, once fewer than ``backlog`` are not committed; ``then(record)``
        runs under the journal's lock, so the records reach the writer's queue in their sequence
        order."""
        with self.lock:
            while self.last - self.applied >= backlog:
                self._drained.wait()
            record = Record(self.last + 1, fmt, body)
            data = _encode(record)
            os.pwrite(self._fd, data, self._size)
            os.fdatasync(self._fd)
            self._size += len(data)
            self.last = record.sequence
            then(record)
            return record

    def committed(self, sequence: int, *, compact: bool = False) -> None:
        """Every record up to ``sequence`` is in the database: empty the file when nothing is
        left to load, rewrite it without them when it has grown (or ``compact``: a forget)."""
        with self.lock:
            self.applied = max(self.applied, sequence)
            self._drained.notify_all()
            if self.applied >= self.last:
                if self._size > len(MAGIC):
                    os.ftruncate(self._fd, len(MAGIC))
                    os.fsync(self._fd)
                    self._size = len(MAGIC)
            elif compact or self._size > COMPACT_BYTES:
                self._rewrite()

    def unapplied(self) -> int:
        """Journaled bodies not yet committed."""
        return self.last - self.applied

    def _rewrite(self) -> None:
        data = os.pread(self._fd, self._size, 0)
        kept = b"".join(_encode(r) for r, _ in _records(data) if r.sequence > self.applied)
        fresh = self.path.with_name(self.path.name + ".new")
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, MAGIC + kept)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        os.replace(fresh, self.path)
        _sync_dir(self.path)
        os.close(self._fd)
        self._fd, self._size = fd, len(MAGIC) + len(kept)

    def close(self) -> None:
        with self.lock:
            os.close(self._fd)


class Outcomes:
    """The futures of journaled bodies' outcomes (their ``ingest.BodyResult``, done once the
    writer commits them), by sequence, the latest ``kept`` of them."""

    def __init__(self, kept: int = 10_000):
        self.kept = kept
        self._futures: OrderedDict[int, Future] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, sequence: int, future: Future) -> None:
        with self._lock:
            self._futures[sequence] = future
            while len(self._futures) > self.kept:
                self._futures.popitem(last=False)

    def get(self, sequence: int, applied: int) -> Future | None:
        """The body's future; a done future of None for a body committed too long ago for
        its outcome to be kept (``applied``: the journal's last committed sequence); None for
        a sequence never journaled."""
        with self._lock:
            future = self._futures.get(sequence)
        if future is None and 0 < sequence <= applied:
            future = Future()
            future.set_result(None)
        return future


def position(con) -> int:
    """The sequence of the last journaled body whose events the database holds."""
    return con.execute("select max(applied) from journal_position").fetchall()[0][0] or 0


def set_position(con, sequence: int) -> None:
    """In the transaction that commits the events of the bodies up to ``sequence``."""
    con.execute("update journal_position set applied = ?", [sequence])


def waiting(con, db_path: str | os.PathLike) -> int:
    """How many bodies the journal of the database at ``db_path`` (``con``) holds that are
    not loaded (read only: for processes other than serve)."""
    path = path_for(db_path)
    if not path.exists():
        return 0
    applied = position(con)
    return sum(1 for record, _ in _records(path.read_bytes()) if record.sequence > applied)


def _sync_dir(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
