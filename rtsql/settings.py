"""The one registry of settings: name, type, default, help.

Every value is stored in the ``rtsql_settings`` table of the database (defaults are seeded when a
writer opens it), so the CLI, the refresh and the SQL macros all read the same numbers. Nothing is read at import
time; callers pass a connection.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from .errors import InvalidSetting, UnknownSetting
from .vocabulary import AUTO, DEFAULT_STRATEGY, EASE_SOLVERS, MEASURE_NAMES, STRATEGIES


@dataclass(frozen=True)
class Setting:
    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    check: Callable[[Any], bool] = lambda v: True
    choices: tuple[str, ...] = ()
    # "model": the lists depend on it (a change makes the next refresh a full one);
    # "serving": read at query time, and a variant may override it; None: neither
    kind: str | None = None


def _bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


class Range:
    """A setting's accepted values: from ``low`` (excluded when ``open_low``) to ``high``. Every
    numeric setting has one, with an upper bound the refresh and DuckDB can run with."""

    def __init__(self, low: float, high: float | Callable[[], float], open_low: bool = False):
        self.low, self._high, self.open_low = low, high, open_low

    @property
    def high(self) -> float:
        return self._high() if callable(self._high) else self._high

    def __call__(self, v) -> bool:
        return (v > self.low if self.open_low else v >= self.low) and v <= self.high

    def describe(self) -> str:
        return f"{'above' if self.open_low else 'from'} {self.low:g} to {self.high:g}"


class AutoOr:
    """A setting that takes ``auto`` or a number in ``accepted``."""

    def __init__(self, accepted: Range):
        self.accepted = accepted

    def __call__(self, v) -> bool:
        return v == AUTO or self.accepted(v)

    def describe(self) -> str:
        return f"{AUTO}, or a number {self.accepted.describe()}"


def rate_or_auto(text: str) -> float | str:
    """``auto`` or a number (the type of settings checked by AutoOr)."""
    return AUTO if str(text).strip().lower() == AUTO else float(text)


def physical_mib() -> int:
    """The machine's memory in MiB (the bound of memory settings)."""
    try:
        return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) >> 20
    except (ValueError, OSError, AttributeError):
        return 1 << 20


def _positive(high: float) -> Range:
    return Range(0, high, open_low=True)


def _non_negative(high: float) -> Range:
    return Range(0, high)


MIN_MEMORY_BYTES = 16 << 20  # DuckDB cannot run its own queries below this (16MiB)
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*", re.I)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def size_bytes(text: str) -> int | None:
    """'4GB' -> 4e9 bytes; None when the text is not a size."""
    m = _SIZE.fullmatch(str(text))
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()]) if m else None


def timestamp(text: str) -> str:
    """An ISO date or timestamp, e.g. '1970-01-01' (stored normalized)."""
    return datetime.fromisoformat(str(text).strip()).isoformat(sep=" ")


def _memory(v: str) -> bool:
    """Empty, or a size from 16MiB to the machine's memory (DuckDB refuses sizes past about
    16 EB, and a stored value it refuses would stop every command from opening the file)."""
    return v == "" or MIN_MEMORY_BYTES <= (size_bytes(v) or 0) <= physical_mib() << 20


def usable_cores() -> int:
    """The cores this process may use (its CPU affinity where the platform has one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def max_threads() -> int:
    """A sane bound for thread settings: 8 per core this process may use."""
    return 8 * usable_cores()


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("threads", int, 0,
                "Worker threads of DuckDB and of the refresh's similarity engine (0: every core; "
                "at most 8 per core).", Range(0, max_threads)),
        Setting("memory_limit", str, "",
                "DuckDB memory_limit, a size from 16MiB to the machine's memory such as '4GB' "
                "(empty: DuckDB's default).", _memory),
        Setting("ingest_chunk_mb", int, 64,
                "CSV/JSON-lines are read in chunks of this many MiB, bounding ingest memory.",
                _positive(physical_mib)),
        # --- what ingest accepts (rows outside go to rejects with the reason)
        Setting("ingest_min_ts", timestamp, "1970-01-01 00:00:00",
                "Events before this time (UTC) are rejected."),
        Setting("ingest_max_ahead_hours", float, 24.0,
                "Events more than this many hours after the wall clock are rejected.",
                Range(0, 24 * 366)),
        Setting("ingest_max_abs_value", float, 1e9,
                "Events whose value exceeds this in absolute value are rejected (negative "
                "values only for event types that declare them: event-types --negative-values).",
                _positive(1e12)),
        # --- models (a change makes the next refresh a full one)
        Setting("neighbors", int, 50,
                "Top-K neighbours kept per item and per user (ease: k x items entries in all, "
                "the largest weights, at most 8k per item).", _positive(1000), kind="model"),
        Setting("similarity", str, "auto",
                "Item-item measure: auto (ease while at most ease_max_items items have "
                "interactions, sparse_ease beyond while its lists fit in memory, cosine beyond "
                "that; decided at each full refresh); cosine; tfidf (implicit's TF-IDF "
                "weighting; its user count is frozen at the last full refresh); rp3beta (a "
                "random walk item -> user -> item, damped by popularity: rp3_alpha, rp3_beta); "
                "ease (Steck's closed-form item-item regression, dense, signed weights: "
                "ease_lambda, ease_max_items); or sparse_ease (the same regression on each "
                "item's ease_neighbors top co-occurring items: cost linear in the items). cosine "
                "and tfidf lists are updated exactly by the incremental refresh, ease's from "
                "its stored inverse; sparse_ease and rp3beta have no exact update and are "
                "rebuilt in full as rebuild_fraction says.",
                choices=(AUTO, *MEASURE_NAMES), kind="model"),
        Setting("rp3_alpha", float, 1.0,
                "rp3beta: transition probabilities are raised to this power.", _positive(10),
                kind="model"),
        Setting("rp3_beta", float, 0.5,
                "rp3beta: a neighbour's score is divided by its popularity to this power.",
                _non_negative(10), kind="model"),
        Setting("ease_lambda", float, 300.0,
                "ease: L2 regularization of the closed form, in units of the mean squared "
                "interaction weight, so the same value fits binary events, ratings or decayed "
                "weights (larger: closer to popularity).",
                _positive(1e9), kind="model"),
        Setting("ease_dropout", rate_or_auto, AUTO,
                "ease, sparse_ease: the denoising form of the regression (Steck's DLAE, "
                "dropout rate p): each item is also regularized by p / (1 - p) times its own "
                "squared weights, so popular items lean less on each other (0: plain EASE). "
                "auto: a full refresh tries plain EASE and its denoising form (the candidates "
                "of rtsql/autotune.py) on each user's newest entries and keeps the better.",
                AutoOr(Range(0.0, 0.95)), kind="model"),
        Setting("ease_max_items", int, 15_000,
                "ease: at most this many items (the most popular) enter the dense n x n "
                "inverse: about 16 n^2 bytes of memory and n^3 multiply-adds per refresh; the "
                "others get no item-item list. similarity auto uses sparse_ease beyond it.",
                _positive(lambda: math.isqrt((physical_mib() << 20) // 16)), kind="model"),
        Setting("ease_solver", str, "auto",
                "ease: how the closed form is computed. items: the n x n inverse of the items' "
                "Gram matrix (n^3 multiply-adds, 8 n^2 bytes), kept beside the database so "
                "each refresh updates it (cost grows with the users who changed); users: the "
                "same weights through the users' u x u system (about u^3 + nnz (u + n) "
                "multiply-adds, 8 u (u + n) bytes, nothing kept: each refresh recomputes at "
                "the current lambda); auto: the one with fewer multiply-adds at each full "
                "refresh.", choices=(AUTO, *EASE_SOLVERS), kind="model"),
        Setting("ease_neighbors", int, 192,
                "sparse_ease: each item is regressed on this many items it co-occurs with most "
                "(m): about n x m^3 / 3 multiply-adds and 64 x n x m bytes for n items.",
                _positive(2000), kind="model"),
        Setting("pair_weight", str, "max",
                "How a user's events on one item weigh in the models: max (the strongest single "
                "event: repeat purchases and repeated views add nothing) or sum (every event "
                "counts). Serving's history weights are always the sum.",
                choices=("max", "sum"), kind="model"),
        Setting("shrinkage", float, 0.0,
                "Cosine is multiplied by support / (support + shrinkage): damps neighbours that "
                "share few users.",
                _non_negative(1e6), kind="model"),
        Setting("min_support", int, 1,
                "Minimum number of users two items share (items a user shares) to be neighbours.",
                _positive(1e6), kind="model"),
        Setting("max_history", int, 500,
                "Each user counts with its this many most recent items (0: all): in the "
                "co-occurrence, in the history recommend() scores, and in what it gives "
                "its neighbours' user-cf.",
                _non_negative(1e6), kind="model"),
        Setting("max_item_users", int, 100,
                "Each item counts with its this many most recent users (0: all) in user-user "
                "co-occurrence, so an item costs user-user at most this squared (max_history "
                "does the same for item-item); recommend() still scores every neighbour's "
                "whole capped row.",
                _non_negative(1e6), kind="model"),
        Setting("half_life_days", float, 0.0,
                "Exponential time decay of interaction weights (0: off). Forward decay: exact "
                "under incremental refresh.", _non_negative(36_500), kind="model"),
        Setting("user_cf", bool, True, "Compute user-user neighbours (needed by weight_user_cf).",
                kind="model"),
        Setting("list_buffer", float, 1.2,
                "Neighbour lists store neighbors x this many entries (>= 1); the extra ones "
                "refill a list that loses entries in an incremental refresh instead of "
                "recomputing it, at the price of longer lists to rewrite.",
                Range(1, 10), kind="model"),
        Setting("refresh_block_mb", int, 128,
                "Memory for one block of similarities during refresh, per thread.",
                _positive(physical_mib)),
        Setting("rebuild_fraction", float, 0.01,
                "sparse_ease and rp3beta (no exact update): an incremental refresh keeps their "
                "item lists from the last full refresh until the events since it exceed this "
                "fraction of the events it saw, then rebuilds them in full. Users' histories "
                "are always current; what waits is the item-item weights. 0: rebuild at every "
                "refresh with new events. Not a model setting: a change applies from the next "
                "refresh.", _non_negative(1e6)),
        Setting("tail_refresh_seconds", float, 10.0,
                "rtsql tail starts a background refresh at most this often (new events reach "
                "recommend() at once regardless; this bounds how stale neighbour lists get).",
                _non_negative(86_400)),
        # --- serving (read by the SQL macros at query time; no refresh needed)
        Setting("weight_item_cf", float, 1.0, "Blend weight of item-item CF in recommend().",
                _non_negative(1e6), kind="serving"),
        Setting("weight_user_cf", float, 0.1, "Blend weight of user-user CF in recommend().",
                _non_negative(1e6), kind="serving"),
        Setting("weight_content", float, 0.05, "Blend weight of content similarity in recommend().",
                _non_negative(1e6), kind="serving"),
        Setting("weight_trending", float, 0.05, "Blend weight of trending in recommend().",
                _non_negative(1e6), kind="serving"),
        Setting("exclude_seen", bool, True,
                "recommend() leaves out items the user interacted with.", kind="serving"),
        Setting("recency_half_life_days", float, 0.0,
                "At query time, a history item counts 2^(-age/half-life) relative to the "
                "user's latest event (0: off).", _non_negative(36_500), kind="serving"),
        Setting("suppress_after_impressions", int, 0,
                "No repeats: an item shown to a user this many times within "
                "suppress_window_hours, with no click or better since, is left out of that "
                "user's recommend() and user_recommendations (0: off).", Range(0, 1_000_000),
                kind="serving"),
        Setting("suppress_window_hours", float, 24.0,
                "The window of suppress_after_impressions: only impressions this recent count.",
                _positive(24 * 366), kind="serving"),
        Setting("explore_new_items", int, 0,
                "New items: up to this many rows of each recommend() list go to items first "
                "seen within new_item_days (first event, or catalog row), the ones most similar "
                "in content to the user's history first, then the newest; reason 'new' (0: off).",
                Range(0, 1000), kind="serving"),
        Setting("new_item_days", float, 7.0,
                "How recent an item's first appearance must be for explore_new_items.",
                _positive(36_500), kind="serving"),
        # --- batch output of each refresh
        Setting("materialize_recommendations", bool, False,
                "Each refresh writes user_recommendations: every user's top materialize_k "
                "(rank, item, score, reason; the rows recommend() returns), for dashboards. "
                "Costs about a millisecond per user on each refresh."),
        Setting("materialize_k", int, 10, "Rows per user in user_recommendations.",
                Range(0, 1000, open_low=True)),
        Setting("materialize_strategy", str, DEFAULT_STRATEGY,
                "Strategy of user_recommendations (see recommend --strategy).",
                choices=STRATEGIES),
        Setting("attribution_window_hours", float, 24.0,
                "A click or purchase within this many hours after an impression of the same "
                "item for the same user is credited to it.", _positive(24 * 366)),
        Setting("ab_auto_metric", str, "off",
                "A/B shares follow the outcomes at each refresh (rtsql variants --auto): "
                "clicks or purchases per impression, by Thompson sampling (off: the shares "
                "stay as set).", choices=("off", "clicks", "purchases")),
        Setting("ab_min_share", float, 0.05,
                "rtsql variants --auto: every variant keeps at least this share of users (at "
                "most an equal split), so each keeps gathering evidence.", Range(0, 0.5)),
        Setting("ab_auto_window_hours", float, 168.0,
                "rtsql variants --auto: the evidence is the impressions of this many hours "
                "before the latest one (older outcomes age out, so a variant that becomes "
                "better later is found again).", _positive(24 * 3660)),
        Setting("trending_window_days", float, 7.0,
                "Trending compares this many most recent days with the ones before.",
                _positive(3660)),
    ]
}


def assignments(items, option: str, form: str = "NAME=VALUE",
                names: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """The one parser of repeated ``NAME=VALUE`` options (--set, --map, --setting,
    --spark-conf): (name, value) pairs, both stripped. ``names`` restricts the names. Raises
    InvalidSetting naming the option and the expected form."""
    pairs = []
    for item in items:
        name, sep, value = str(item).partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise InvalidSetting(f"{option} takes {form}, got {item!r}")
        if names is not None and name not in names:
            raise InvalidSetting(f"{option} {item!r}: {name!r} is not one of {', '.join(names)}")
        pairs.append((name, value))
    return pairs


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
        kind = f"number or {AUTO}" if isinstance(s.check, AutoOr) else s.type.__name__
        raise InvalidSetting(f"setting {name} takes a {kind}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidSetting(f"setting {name} must be a finite number, got {text!r}")
    if s.choices and value not in s.choices:
        raise InvalidSetting(f"setting {name} must be one of {', '.join(s.choices)}, got {text!r}")
    if not s.check(value):
        accepted = s.check.describe() if isinstance(s.check, (Range, AutoOr)) else s.help
        raise InvalidSetting(f"setting {name}: {text!r} is out of range ({accepted})")
    return value


SERVING_SETTINGS = tuple(n for n, s in SETTINGS.items() if s.kind == "serving")
MODEL_SETTINGS = tuple(n for n, s in SETTINGS.items() if s.kind == "model")
assert MODEL_SETTINGS and SERVING_SETTINGS


def text_of(value: Any) -> str:
    """The stored text of a value (booleans as true/false so SQL can cast them)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def seed_defaults(con) -> None:
    """Store every setting's default that is not stored yet, so the SQL macros (which cannot
    see this registry) read every value from rtsql_settings."""
    con.executemany(
        "insert or ignore into rtsql_settings values (?, ?, now()::TIMESTAMP)",
        [[s.name, text_of(s.default)] for s in SETTINGS.values()])


def get_all(con) -> dict[str, Any]:
    """Every setting's effective value: the stored one, else the default. A stored value that
    is not valid (written by an older version) counts as the default, so every command still
    runs and `rtsql settings NAME VALUE` or `--reset` can fix it."""
    values = {name: s.default for name, s in SETTINGS.items()}
    for name, text in con.execute("select name, value from rtsql_settings").fetchall():
        if name in SETTINGS:
            try:
                values[name] = parse(name, text)
            except InvalidSetting:
                pass
    return values


def get(con, name: str) -> Any:
    return get_all(con)[setting(name).name]


def set_value(con, name: str, raw: str) -> Any:
    value = parse(name, raw)
    con.execute(
        "insert or replace into rtsql_settings values (?, ?, now()::TIMESTAMP)",
        [name, text_of(value)],
    )
    return value


def reset(con, name: str) -> None:
    s = setting(name)
    con.execute("insert or replace into rtsql_settings values (?, ?, now()::TIMESTAMP)",
                [name, text_of(s.default)])
