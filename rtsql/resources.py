"""The one place that reads the .sql files shipped with the package.

In the source tree they live in the top-level ``sql/`` and ``migrations/`` folders; pyproject.toml
maps them to the ``rtsql.sql`` and ``rtsql.migrations`` packages so an installed wheel carries
them. Everything goes through ``importlib.resources``; only when rtsql is imported straight from a
source checkout (``python -m rtsql.cli`` in the repository root), where those packages do not
exist, are the top-level folders read instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SqlObject:
    """A view or macro definition: one object per file, named after the file."""

    kind: str  # "views" or "macros"
    name: str
    sql: str


_SOURCE_FOLDERS = {"rtsql.migrations": "migrations", "rtsql.sql": "sql",
                   "rtsql.sql.views": "sql/views", "rtsql.sql.macros": "sql/macros"}


def _files(package: str):
    """The resource folder of ``package``: installed, or the source checkout's folder."""
    try:
        return resources.files(package)
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parent.parent / _SOURCE_FOLDERS[package]
        if not folder.is_dir():
            raise
        return folder


def migrations() -> list[Migration]:
    """All migrations in version order; a gap or a duplicate version is a packaging bug."""
    found = []
    for entry in _files("rtsql.migrations").iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 0001.. without gaps, found {versions}")
    return found


def sql_objects(kind: str) -> list[SqlObject]:
    """View or macro definitions, sorted by file name (a numeric prefix orders dependencies)."""
    objs = []
    for entry in sorted(_files(f"rtsql.sql.{kind}").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            name = re.sub(r"^\d+_", "", entry.name[: -len(".sql")])
            objs.append(SqlObject(kind, name, entry.read_text("utf-8")))
    return objs
