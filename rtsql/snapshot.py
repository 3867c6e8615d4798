"""Read-only snapshots of what readers need, published atomically next to the database.

DuckDB lets one process write a database file, or several read it, never both; while
``rtsql tail`` holds the database, readers (the CLI, BI tools through SQLAlchemy) open the latest
snapshot instead. A snapshot holds the serving tables, the views and the SQL macros, written into
a temporary file in DuckDB 1.4's storage format (BI drivers often embed an older DuckDB), synced,
and renamed over the previous one: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import duckdb

from . import db, migrate
from .errors import InputPathError, RtsqlError
from .sqlutil import database_path, scalar, table_ddl, transaction

STORAGE_VERSION = "v1.4.0"
SERVING_TABLES = ("users", "items", "item_catalog", "item_availability", "event_types",
                  "interactions", "item_neighbors", "item_neighbor_lists", "user_neighbors",
                  "content_neighbors", "item_trending", "model_state", "rtsql_settings",
                  "ab_variants", "ab_buckets", "impressions", "user_recommendation_rows", "_rtsql_migrations")


def check_target(target: str | os.PathLike, database: str | os.PathLike | None) -> Path:
    """A path a snapshot may be published to, else InputPathError before anything is written:
    not the database itself, not a folder, in a folder that exists, and not an existing file
    other than an rtsql snapshot (publishing replaces the file)."""
    target = Path(target).expanduser()
    if target.is_dir():
        raise InputPathError(f"--publish {target} is a folder; give a file name, e.g. "
                             f"{target / 'shop.snapshot.duckdb'}")
    if not target.parent.is_dir():
        raise InputPathError(f"--publish {target}: the folder {target.parent} does not exist")
    if database is not None and (target.resolve() == Path(database).resolve() or (
            target.exists() and os.path.samefile(target, database))):
        raise InputPathError(f"--publish {target} is the database itself; a snapshot needs a "
                             f"file of its own (default: {default_path(database)})")
    if target.exists() and not is_snapshot(target):
        raise InputPathError(f"--publish {target} exists and is not an rtsql snapshot; it "
                             "would be replaced: remove it or choose another path")
    return target


def is_snapshot(path: Path) -> bool:
    """An rtsql snapshot: a DuckDB file with rtsql's migration ledger and no ingest ledger
    (a live rtsql database has both)."""
    try:
        con = db.open_file(path, read_only=True)
    except (duckdb.Error, RtsqlError):
        return False
    try:
        tables = {r[0] for r in con.execute(
            "select table_name from information_schema.tables").fetchall()}
    finally:
        con.close()
    return "_rtsql_migrations" in tables and "source_files" not in tables


default_path = db.snapshot_path  # shop.duckdb -> shop.snapshot.duckdb


def publish(con, target: str | os.PathLike) -> float:
    """Write a full snapshot of ``con``'s serving state to ``target``; returns seconds."""
    return Publisher(target, database_path(con)).full(con)


class Publisher:
    """Publishes snapshots to one target path.

    ``full`` writes every serving table (after a refresh) and keeps a private copy as the base;
    ``events`` (after an ingest batch, when the models did not change) appends to the base only
    what new events add for readers, new ids and the events themselves (recommend() reads events
    after the models' watermark at query time), then copies the base into place. That keeps the
    publish after each batch to a file copy plus the batch's own rows.
    """

    def __init__(self, target: str | os.PathLike, database: str | os.PathLike | None = None):
        self.target = check_target(target, database)
        self.base = self.target.with_name("." + self.target.name + ".base")

    def _temporary(self) -> Path:
        """A name of this publish's own beside the target: a fixed one would delete whatever
        file happened to sit there (and a publish that dies leaves a hidden file, never
        someone else's file gone)."""
        return self.target.with_name(f".{self.target.name}.{uuid.uuid4().hex[:12]}.tmp")

    def full(self, con) -> float:
        start = time.perf_counter()
        tmp = self._temporary()
        try:
            self._full(con, tmp)
        except BaseException:
            self._discard(tmp)
            raise
        # remembered, so that forget can republish every copy of the data (privacy.forget_user)
        con.execute("insert or ignore into snapshot_targets values (?, now())",
                    [str(self.target.resolve())])
        return time.perf_counter() - start

    def _full(self, con, tmp: Path) -> None:
        # The snapshot is written by a DuckDB instance of its own, fed Arrow batches: attached
        # to ``con``'s instance instead, the file stays attached after DETACH for as long as
        # any transaction that read the catalog meanwhile lasts (serve's refresh, on another
        # cursor), and could be neither checkpointed nor opened again until it ended.
        snap = db.open_file(tmp, storage_version=STORAGE_VERSION)
        try:
            # one transaction: every table from the same committed state, even while a refresh
            # on another cursor commits (serve publishes while its next refresh runs)
            with transaction(con):
                # each table from its own DDL, so keys and indexes (recommend()'s lookups) come
                # along; the indexes after the rows
                ddl = {table: table_ddl(con, table) for table in SERVING_TABLES}
                for table, (create, _) in ddl.items():
                    snap.execute(create)
                    _copy_rows(con, f"select * from {table}", snap, table)
                snap.execute(table_ddl(con, "events")[0])
                _copy_rows(con, _PENDING, snap, "events", [None])
            for _, indexes in ddl.values():
                for index in indexes:
                    snap.execute(index)
            migrate.install_definitions(snap)
            snap.execute("checkpoint")
        finally:
            snap.close()
        shutil.copyfile(tmp, self.base)
        db.replace_atomically(tmp, self.target)

    def events(self, con) -> float:
        if not self.base.exists():
            return self.full(con)
        start = time.perf_counter()
        # the base is private: bring it forward with only the rows added since its last
        # publish (new events, new users and items), then copy it into place
        base = db.open_file(self.base)  # an instance of its own, as in _full
        try:
            for table, key in (("events", "event_id"), ("users", "user_key"),
                               ("items", "item_key")):
                held = scalar(base, f"select coalesce(max({key}), -1) from {table}")
                _copy_rows(con, f"select * from {table} where {key} > ?", base, table, [held])
            # what leaves lists at once in the database: hidden items (a small table, copied
            # whole) and impressions (append-only between forgets, whose republish is full:
            # the rows after those the base has, in insertion order)
            base.execute("delete from item_availability")
            _copy_rows(con, "select * from item_availability", base, "item_availability")
            held = scalar(base, "select count(*) from impressions")
            _copy_rows(con, "select * from impressions offset ?", base, "impressions", [held])
            base.execute("checkpoint")
        finally:
            base.close()
        tmp = self._temporary()
        try:
            shutil.copyfile(self.base, tmp)
            db.replace_atomically(tmp, self.target)
        except BaseException:
            self._discard(tmp)
            raise
        return time.perf_counter() - start

    @staticmethod
    def _discard(tmp: Path) -> None:
        for leftover in (tmp, Path(str(tmp) + ".wal")):
            leftover.unlink(missing_ok=True)


def republish_all(con) -> list[Path]:
    """Publish every snapshot this database was ever published to again, in full, from its
    current state (after a forget: no copy keeps what the database no longer has). A target
    that is gone, or that is no longer an rtsql snapshot, is dropped from the list (and left
    alone). Returns the paths republished."""
    done = []
    for (path,) in con.execute("select path from snapshot_targets order by path").fetchall():
        target = Path(path)
        if target.exists() and is_snapshot(target):
            Publisher(target, database_path(con)).full(con)
            done.append(target)
        else:
            for stale in (target.with_name("." + target.name + ".base"),):
                stale.unlink(missing_ok=True)
            con.execute("delete from snapshot_targets where path = ?", [path])
    return done


COPY_BATCH_ROWS = 1 << 17  # rows per Arrow batch from the database into a snapshot


def _copy_rows(con, query: str, snap, table: str, params: list | None = None) -> None:
    """Insert ``query``'s rows (on ``con``) into ``table`` of another instance, in batches."""
    reader = con.sql(query, params=params).to_arrow_reader(COPY_BATCH_ROWS)
    snap.register("_rtsql_rows", reader)
    try:
        snap.execute(f"insert into {table} select * from _rtsql_rows")
    finally:
        snap.unregister("_rtsql_rows")


# events after the watermark (the given one, else the database's): folded into no model yet;
# and the clicks, carts and purchases of shown items, which impression_outcomes attributes
_PENDING = """select * from events where event_id > coalesce(
    ?, (select value::BIGINT from model_state where name = 'watermark'), -1)
    or (rtsql_engaged(event_type)
        and (user_key, item_key) in (select user_key, item_key from impressions))"""
