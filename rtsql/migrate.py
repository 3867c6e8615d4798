"""Schema migrations: numbered, checksummed, each applied in one transaction with its ledger row.

Tables (state) change only through migrations/NNNN_name.sql. Views and macros (definitions) are
``create or replace`` files under sql/ and are reinstalled after every migrate, so changing a view
never needs a migration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from . import resources
from .errors import MigrationError
from .sqlutil import scalar

LEDGER = "_rtsql_migrations"


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    state: str  # "applied", "pending", "edited", "unknown" (newer than this code)
    applied_at: datetime | None


def _ledger_exists(con) -> bool:
    return bool(
        scalar(con,
            "select count(*) from information_schema.tables "
            "where table_name = ? and table_schema = 'main' and table_catalog = current_database()",
            [LEDGER],
        )
    )


def _applied(con) -> dict[int, tuple[str, str, datetime]]:
    if not _ledger_exists(con):
        return {}
    rows = con.execute(f"select version, name, checksum, applied_at from {LEDGER}").fetchall()
    return {v: (n, c, t) for v, n, c, t in rows}


def status(con) -> list[MigrationStatus]:
    """Every migration known to the code or recorded in the database, with its state."""
    applied = _applied(con)
    out = []
    for mig in resources.migrations():
        if mig.version in applied:
            _, checksum, at = applied[mig.version]
            out.append(MigrationStatus(mig.version, mig.name,
                                       "applied" if checksum == mig.checksum else "edited", at))
        else:
            out.append(MigrationStatus(mig.version, mig.name, "pending", None))
    known = {m.version for m in resources.migrations()}
    for version, (name, _, at) in sorted(applied.items()):
        if version not in known:
            out.append(MigrationStatus(version, name, "unknown", at))
    return out


def check(states: list[MigrationStatus]) -> None:
    """Refuse a database that was migrated by newer code or whose applied migrations changed."""
    newer = [s for s in states if s.state == "unknown"]
    if newer:
        raise MigrationError(
            f"the database schema is at version {max(s.version for s in newer)}, newer than this "
            f"rtsql knows ({max((s.version for s in states if s.state != 'unknown'), default=0)}); "
            "upgrade rtsql to open it"
        )
    edited = [s for s in states if s.state == "edited"]
    if edited:
        names = ", ".join(f"{s.version:04d}_{s.name}" for s in edited)
        raise MigrationError(
            f"applied migration(s) {names} differ from the ones in this rtsql (checksum mismatch); "
            "migrations must never be edited after release: restore the original file and add a "
            "new migration instead"
        )


def apply(con) -> list[MigrationStatus]:
    """Apply pending migrations in order; returns the ones applied. Raises before changing
    anything when the database is newer than the code or an applied migration was edited."""
    states = status(con)
    check(states)
    con.execute(
        f"create table if not exists {LEDGER} (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " checksum VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    done = []
    pending = {s.version for s in states if s.state == "pending"}
    for mig in resources.migrations():
        if mig.version not in pending:
            continue
        con.execute("begin transaction")
        try:
            con.execute(mig.sql)
            con.execute(
                f"insert into {LEDGER} values (?, ?, ?, now()::TIMESTAMP)",
                [mig.version, mig.name, mig.checksum],
            )
            con.execute("commit")
        except Exception as exc:
            con.execute("rollback")
            raise MigrationError(f"migration {mig.version:04d}_{mig.name} failed: {exc}") from exc
        done.append(MigrationStatus(mig.version, mig.name, "applied", None))
    return done


def install_definitions(con) -> int:
    """(Re)create every macro and view under sql/, in file order (macros first: a view may
    call one). Returns how many."""
    objs = resources.sql_objects("macros") + resources.sql_objects("views")
    for obj in objs:
        con.execute(render(obj.sql))
    return len(objs)


_DEFAULT = re.compile(r"\{\{default:(\w+)\}\}")


def render(sql: str) -> str:
    """Fill in what a view or macro takes from the Python definitions, so SQL never keeps a
    second copy: ``{{default:NAME}}``, the setting's default from the registry (a quoted
    literal, as stored in rtsql_settings); ``{{blend_settings}}`` and ``{{blend_weights}}``,
    the recommend macro's per-strategy columns from vocabulary.BLENDED; and the vocabulary's
    words: ``{{default_k}}``, ``{{default_strategy}}``, ``{{default_method}}``,
    ``{{engaged}}``, ``{{click_types}}``, ``{{purchase_types}}``."""
    from . import vocabulary as v
    from .settings import SETTINGS, text_of

    def literal(name: str) -> str:
        return "'" + text_of(SETTINGS[name].default).replace("'", "''") + "'"

    settings_scan = "".join(f"max(value) filter (where name = '{setting}') as {column},\n"
                            "               " for setting, column in v.BLENDED.values())
    weights = "".join(
        f"case when p_strategy = '{v.DEFAULT_STRATEGY}'\n"
        f"                then coalesce(json_extract_string(o, '$.{setting}'), {column}, "
        f"{literal(setting)})::DOUBLE\n"
        f"                else (p_strategy = '{name}')::DOUBLE end as {column},\n           "
        for name, (setting, column) in v.BLENDED.items())
    sql = sql.replace("{{blend_settings}}", settings_scan).replace("{{blend_weights}}", weights)
    for name, value in (("default_k", str(v.DEFAULT_K)),
                        ("default_strategy", v.sql_list([v.DEFAULT_STRATEGY])),
                        ("default_method", v.sql_list([v.DEFAULT_METHOD])),
                        ("engaged", v.sql_list(v.ENGAGED)),
                        ("click_types", v.sql_list(v.CLICK_TYPES)),
                        ("purchase_types", v.sql_list(v.PURCHASE_TYPES))):
        sql = sql.replace("{{" + name + "}}", value)
    return _DEFAULT.sub(lambda m: literal(m.group(1)), sql)
