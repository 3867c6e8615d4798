"""Opening the database: one function that every entry point uses.

``connect`` validates the path, opens DuckDB, brings the schema up to date (migrations, then the
views and macros), applies the engine settings and registers rtsql's UDFs on the connection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import duckdb

from . import migrate, settings
from .errors import DatabaseLocked, InputPathError, MigrationError

DEFAULT_DB = "rtsql.duckdb"
ENV_DB = "RTSQL_DB"


def default_path() -> str:
    return os.environ.get(ENV_DB) or DEFAULT_DB


def validate_db_path(path: str | os.PathLike, *, must_exist: bool = False) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputPathError(f"{p} is a directory; give the database file, e.g. {p / DEFAULT_DB}")
    if must_exist and not p.exists():
        raise InputPathError(f"database {p} does not exist; create it with `rtsql ingest` or "
                             "`rtsql migrate`")
    if not p.parent.exists():
        raise InputPathError(f"cannot create database {p}: folder {p.parent} does not exist")
    return p


# The owner lock of `rtsql tail` / `rtsql serve` (a file beside the database, held with
# flock for the process's life). Other processes' opens for writing are refused while it is
# held, also in the moments when the owner's own DuckDB connection is closed (forget's swap
# of the file), which DuckDB's lock alone would let them through. Paths this process owns:
_OWNED: set[str] = set()


def owner_lock_path(db_path: str | os.PathLike) -> str:
    return str(db_path) + ".tail.lock"


def acquire_owner_lock(db_path: str | os.PathLike) -> int:
    """Own the database for this process's life (one tail or serve per file); returns the
    lock's file descriptor for ``release_owner_lock``."""
    import fcntl

    fd = os.open(owner_lock_path(db_path), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseLocked(f"another `rtsql tail` or `rtsql serve` is running on {db_path}; "
                             "stop it first (one writer per database)") from None
    _OWNED.add(os.path.realpath(db_path))
    return fd


def release_owner_lock(db_path: str | os.PathLike, fd: int) -> None:
    _OWNED.discard(os.path.realpath(db_path))
    os.close(fd)


def _check_owner(path: Path) -> None:
    """DatabaseLocked when another process owns the database (``acquire_owner_lock``)."""
    import fcntl

    if os.path.realpath(path) in _OWNED or not os.path.exists(owner_lock_path(path)):
        return
    fd = os.open(owner_lock_path(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while an owner holds it
    except BlockingIOError:
        raise DatabaseLocked(f"database {path} is owned by a running `rtsql serve` or `rtsql "
                             "tail`: send events to it (POST /events, its folder), or stop "
                             "it first") from None
    finally:
        os.close(fd)


def _open(path: Path, read_only: bool, held: bool = False,
          config: dict | None = None) -> duckdb.DuckDBPyConnection:
    if not read_only:
        _check_owner(path)
    try:
        # held: a file this process holds the lock of (compact's swap). Named with DuckDB's
        # type prefix, DuckDB opens it without first reading its magic bytes through a
        # descriptor it closes, a close that would drop this process's lock for a moment.
        return duckdb.connect(("duckdb:" if held else "") + str(path), read_only=read_only,
                              config=config or {})
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise DatabaseLocked(
                f"database {path} is open for writing in another process ({text.splitlines()[0]}); "
                "wait for it to finish, or stop it"
            ) from None
        raise InputPathError(f"cannot open database {path}: {text.splitlines()[0]}") from None
    except duckdb.Error as exc:
        raise InputPathError(f"cannot open {path} as a DuckDB database: {exc}") from None


def open_file(path: str | os.PathLike, *, read_only: bool = False,
              storage_version: str | None = None) -> duckdb.DuckDBPyConnection:
    """A plain DuckDB connection to a file, schema untouched: snapshots, `migrate --list`.
    ``:memory:`` gives an empty in-memory database. ``storage_version``: the format a new
    file is written in (an older DuckDB can read it)."""
    config = {"storage_compatibility_version": storage_version} if storage_version else None
    con = (duckdb.connect(":memory:") if str(path) == ":memory:"
           else _open(validate_db_path(path, must_exist=read_only), read_only, config=config))
    con.execute("set python_enable_replacements = false")  # as in configure: no Python objects
    return con


def migration_status(path: str | os.PathLike) -> list:
    """Applied and pending migrations of the database at ``path``, without changing (or
    creating) the file; a file that does not exist has every migration pending."""
    con = open_file(path if Path(path).exists() else ":memory:", read_only=Path(path).exists())
    try:
        return migrate.status(con)
    finally:
        con.close()


def migrate_file(path: str | os.PathLike) -> list:
    """Bring the database at ``path`` (created if needed) up to date; the migrations applied."""
    con = open_file(path)
    try:
        return upgrade(con)
    finally:
        con.close()


def configure(con: duckdb.DuckDBPyConnection) -> None:
    """Session settings every rtsql connection shares: UTC timestamps, engine limits."""
    # SQL never reaches Python objects by name (DuckDB's replacement scans would let
    # `select * from os` read a module of the calling program); rtsql registers what it uses
    con.execute("set python_enable_replacements = false")
    con.execute("set TimeZone = 'UTC'")
    con.execute("set enable_progress_bar = false")  # rtsql draws its own progress
    values = settings.get_all(con)
    if values["threads"]:
        con.execute(f"set threads = {int(values['threads'])}")
    if values["memory_limit"]:  # a valid size: settings.parse checked it
        try:
            con.execute(f"set memory_limit = '{values['memory_limit'].strip()}'")
        except duckdb.Error:  # a value DuckDB refuses must not stop `settings --reset`
            pass
    from . import (
        udf,  # late import: udf needs numpy/pyarrow, not needed for `migrate --list`
    )

    udf.register(con)


def upgrade(con) -> list:
    """Apply pending migrations, seed setting defaults, reinstall views and macros."""
    applied = migrate.apply(con)
    settings.seed_defaults(con)
    migrate.install_definitions(con)
    return applied


def connect(path: str | os.PathLike | None = None, *, read_only: bool = False,
            held: bool = False
            ) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) an rtsql database with its schema up to date.

    Read-only connections are checked but not migrated: a database that needs migrating must be
    opened for writing once.
    """
    p = validate_db_path(path or default_path(), must_exist=read_only)
    con = _open(p, read_only, held)
    try:
        if read_only:
            states = migrate.status(con)
            migrate.check(states)
            if any(s.state == "pending" for s in states):
                raise MigrationError(f"database {p} needs migrating; run `rtsql migrate` once")
        else:
            upgrade(con)
        configure(con)
    except BaseException:
        con.close()
        raise
    return con


def connect_memory() -> duckdb.DuckDBPyConnection:
    """An in-memory rtsql database (tests, scratch evaluation)."""
    con = open_file(":memory:")
    upgrade(con)
    configure(con)
    return con



def snapshot_path(db_path: str | os.PathLike) -> Path:
    """Where a database's snapshot is published by default: ``shop.duckdb`` ->
    ``shop.snapshot.duckdb`` in the same folder (readers look there while a writer holds the
    database)."""
    p = Path(db_path)
    return p.with_name(p.stem + ".snapshot" + (p.suffix or ".duckdb"))


def connect_for_reading(path: str | os.PathLike | None = None):
    """(connection, snapshot path or None): the database opened read-only, or, while another
    process (``rtsql tail`` or ``rtsql serve``) holds it for writing, its published snapshot.
    A database that needs migrating says so (``rtsql migrate`` once)."""
    path = path or default_path()
    try:
        return connect(path, read_only=True), None
    except DatabaseLocked:
        snap = snapshot_path(path)
        if not snap.exists():
            raise
        return connect(snap, read_only=True), snap


def run_sql(path: str | os.PathLike | None, query: str, *, write: bool = False):
    """``rtsql sql``: exactly one statement, on a read-only connection unless ``write``, with
    DuckDB's external access off (no file-reading functions, COPY TO, ATTACH or extension
    loading): SQL given on a command line reads the database and nothing else, and writes it
    only when asked to. Returns (columns, rows, snapshot path or None); raises InvalidSetting
    with DuckDB's reason when the statement is refused or fails."""
    import duckdb

    from .errors import InvalidSetting

    con, snap = (connect(path), None) if write else connect_for_reading(path)
    try:
        con.execute("set enable_external_access = false")
        try:
            statements = con.extract_statements(query)
        except duckdb.Error as exc:
            raise InvalidSetting(f"query failed: {str(exc).strip()}") from None
        if len(statements) != 1:
            raise InvalidSetting(f"rtsql sql runs exactly one statement; got {len(statements)}")
        try:
            cur = con.execute(query)
            columns = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchall() if columns else []
        except duckdb.Error as exc:
            hint = ("" if write or "read-only" not in str(exc) else
                    " (rtsql sql reads only; pass --write to change the database)")
            raise InvalidSetting(f"query failed: {str(exc).strip()}{hint}") from None
    finally:
        con.close()
    return columns, rows, snap


def compact(con, path: str | os.PathLike, close_all: Callable[[], None]) -> float:
    """Rewrite the database into a fresh file and swap it in atomically; returns seconds.

    DuckDB reuses the blocks that deleted rows freed but never clears them, so a forgotten
    user's id can stay in the file's bytes for a long time; a copy holds only live rows. The
    copy costs about one write of the database (a few seconds at 10M events).

    ``con`` is this process's connection to ``path`` (held for writing, no write in flight:
    ``rtsql forget``, the server's follower under its writer lock); ``close_all`` closes every
    connection of this process to the file, after which the caller opens ``path`` again. The
    file is never free for another process meanwhile: DuckDB's lock on a file is a POSIX
    record lock, owned by the process, so this process locks the copy before it takes the
    database's name (while the old file is still locked by ``con``), and keeps that lock's
    descriptor open while later DuckDB connections use the file (closing any descriptor of a
    file would drop the process's lock on it: ``_HELD``). The caller reopens with
    ``connect(path, held=True)``, which keeps DuckDB's open from closing a descriptor of the
    file before it takes its own lock."""
    import fcntl
    import time

    p = validate_db_path(path, must_exist=True)
    fresh = p.with_name("." + p.name + ".compact")
    for leftover in (fresh, Path(str(fresh) + ".wal")):
        leftover.unlink(missing_ok=True)
    start = time.perf_counter()
    con.execute("checkpoint")  # the old file's close must have nothing left to write
    name = con.execute("select current_database()").fetchall()[0][0]
    guard = None
    try:
        con.execute("attach ? as rtsql_compact", [str(fresh)])
        con.execute(f'copy from database "{name}" to rtsql_compact')
        con.execute("detach rtsql_compact")
        guard = os.open(fresh, os.O_RDWR)
        fcntl.lockf(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as DuckDB's lock: whole file
        os.fsync(guard)
        if Path(str(p) + ".wal").exists():  # a write after the checkpoint: not in the copy
            raise InputPathError(f"{p} was written to during its rewrite; not compacted")
        old = os.open(p, os.O_RDWR)  # the old file, voided once this process lets it go
        try:
            os.replace(fresh, p)  # another process opening the name finds it locked
        except BaseException:
            _HELD_OLD.append(old)  # closing it would drop the live connection's lock
            raise
    except BaseException:
        if guard is not None:
            os.close(guard)
        fresh.unlink(missing_ok=True)
        raise
    # a process that opened the name just before the rename holds the old file and may get
    # its lock once closed: its headers are zeroed, so it fails to open it rather than write
    # to a file nobody reads
    close_all()  # the old file, no longer named: its last checkpoint finds nothing to write
    os.pwrite(old, bytes(_HEADERS_BYTES), 0)
    os.close(old)
    previous = _HELD.pop(str(p.resolve()), None)
    if previous is not None:  # the lock of a file an earlier compaction swapped in, now gone
        os.close(previous)
    _HELD[str(p.resolve())] = guard
    _sync(p.parent)  # the rename, durable (after the swap: its failure must not undo it)
    return time.perf_counter() - start


# The locks compact took on the files it swapped in, by path: open for the process's life
# (or until the next compaction of the same path). They hold nothing once this process's
# DuckDB connections to the file close.
_HELD: dict[str, int] = {}
_HELD_OLD: list[int] = []  # descriptors of a file a failed swap left in use: kept open
_HEADERS_BYTES = 3 * 4096  # DuckDB's main header and its two database headers


def replace_atomically(source: Path, target: Path) -> None:
    """fsync ``source``, rename it over ``target``, fsync the folder: after a crash the target
    is the old file or the new one, whole (compaction, snapshot publishing)."""
    _sync(source)
    os.replace(source, target)
    _sync(target.parent)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
