"""Read-only snapshots of what readers need, published atomically next to the database.

DuckDB lets one process write a database file, or several read it, never both; while
``rtsql tail`` holds the database, readers (the CLI, BI tools through SQLAlchemy) open the latest
snapshot instead. A snapshot holds the serving tables, the views and the SQL macros, written into
a temporary file in DuckDB 1.4's storage format (BI drivers often embed an older DuckDB), synced,
and renamed over the previous one: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb

from . import migrate

STORAGE_VERSION = "v1.4.0"
SERVING_TABLES = ("users", "items", "item_catalog", "event_types", "interactions",
                  "item_neighbors", "user_neighbors", "content_neighbors", "item_trending",
                  "model_state", "rtsql_settings", "_rtsql_migrations")


def default_path(db_path: str | os.PathLike) -> Path:
    """``shop.duckdb`` -> ``shop.snapshot.duckdb`` in the same folder."""
    p = Path(db_path)
    return p.with_name(p.stem + ".snapshot" + (p.suffix or ".duckdb"))


def publish(con, target: str | os.PathLike) -> float:
    """Write a snapshot of ``con``'s serving state to ``target`` atomically; returns seconds."""
    start = time.perf_counter()
    target = Path(target)
    tmp = target.with_name("." + target.name + ".tmp")
    for leftover in (tmp, Path(str(tmp) + ".wal")):
        leftover.unlink(missing_ok=True)
    con.execute(f"attach ? as rtsql_snapshot (storage_version '{STORAGE_VERSION}')", [str(tmp)])
    try:
        for table in SERVING_TABLES:
            con.execute(f"create table rtsql_snapshot.{table} as select * from {table}")
        # events after the watermark (normally none right after a refresh) keep recommend()
        # real time in the snapshot too
        con.execute("""create table rtsql_snapshot.events as select * from events
                       where event_id > coalesce((select value::BIGINT from model_state
                                                  where name = 'watermark'), -1)""")
    finally:
        con.execute("detach rtsql_snapshot")
    snap = duckdb.connect(str(tmp))
    try:
        migrate.install_definitions(snap)
        snap.execute("checkpoint")
    finally:
        snap.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return time.perf_counter() - start
