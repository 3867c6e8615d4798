"""The one registry of settings: name, type, default, help.

Values that differ from the default are stored in the ``rtsql_settings`` table of the database,
so the CLI, the refresh and the SQL macros all read the same numbers. Nothing is read at import
time; callers pass a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import InvalidSetting, UnknownSetting


@dataclass(frozen=True)
class Setting:
    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    check: Callable[[Any], bool] = lambda v: True
    choices: tuple[str, ...] = ()


def _bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("threads", int, 0, "DuckDB worker threads (0: DuckDB's default, all cores).",
                _non_negative),
        Setting("memory_limit", str, "", "DuckDB memory_limit, e.g. '4GB' (empty: DuckDB's default)."),
        Setting("ingest_chunk_mb", int, 64,
                "CSV/JSON-lines are read in chunks of this many MiB, bounding ingest memory.",
                _positive),
    ]
}


def setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        known = ", ".join(sorted(SETTINGS))
        raise UnknownSetting(f"unknown setting {name!r}; known settings: {known}") from None


def parse(name: str, text: str) -> Any:
    """Convert and validate a textual value; raises InvalidSetting with the reason."""
    s = setting(name)
    try:
        value = _bool(text) if s.type is bool else s.type(text)
    except (TypeError, ValueError):
        raise InvalidSetting(f"setting {name} takes a {s.type.__name__}, got {text!r}") from None
    if s.choices and value not in s.choices:
        raise InvalidSetting(f"setting {name} must be one of {', '.join(s.choices)}, got {text!r}")
    if not s.check(value):
        raise InvalidSetting(f"setting {name}: {text!r} is out of range ({s.help})")
    return value


def get_all(con) -> dict[str, Any]:
    """Every setting's effective value: the stored one, else the default."""
    values = {name: s.default for name, s in SETTINGS.items()}
    for name, text in con.execute("select name, value from rtsql_settings").fetchall():
        if name in SETTINGS:
            values[name] = parse(name, text)
    return values


def get(con, name: str) -> Any:
    return get_all(con)[setting(name).name]


def set_value(con, name: str, text: str) -> Any:
    value = parse(name, text)
    con.execute(
        "insert or replace into rtsql_settings values (?, ?, now()::TIMESTAMP)",
        [name, str(text)],
    )
    return value


def reset(con, name: str) -> None:
    setting(name)
    con.execute("delete from rtsql_settings where name = ?", [name])
