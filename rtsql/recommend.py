"""Recommendations from Python: thin wrappers over the SQL macros, so the CLI, the library and
a BI tool calling ``SELECT * FROM recommend('user-42', 10)`` get the same rows."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidSetting, UnknownItem, UnknownUser
from .sqlutil import clean_id, scalar
from .vocabulary import DEFAULT_K, DEFAULT_METHOD, DEFAULT_STRATEGY, SIMILAR_METHODS, STRATEGIES


@dataclass
class Rows:
    columns: list[str]
    rows: list[tuple]


def _rows(con, sql: str, params) -> Rows:
    cur = con.execute(sql, params)
    return Rows([d[0] for d in cur.description], cur.fetchall())


def _check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise InvalidSetting(f"k must be a positive whole number, got {k!r}")
    return k


def check_request(k: int, strategy: str = DEFAULT_STRATEGY) -> None:
    """The checks every recommend path makes (the macro's callers and the in-memory scorer)."""
    _check_k(k)
    if strategy not in STRATEGIES:
        raise InvalidSetting(f"strategy must be one of {', '.join(STRATEGIES)}")


def check_method(by: str) -> None:
    """similar_items' ``by``: one of SIMILAR_METHODS."""
    if by not in SIMILAR_METHODS:
        raise InvalidSetting(f"by must be one of {', '.join(SIMILAR_METHODS)}")


def check_variant(known, variant: str | None, allow_auto: bool = True) -> None:
    """An unknown variant is refused (the SQL macro would quietly serve the default settings);
    ``known``: the defined variant names."""
    if variant is None or (allow_auto and variant == "auto"):
        return
    known = sorted(known)
    if variant not in known:
        raise InvalidSetting(f"unknown variant {variant!r}; defined: {', '.join(known) or 'none'}"
                             + (", or auto" if allow_auto else ""))


def recommend(con, user_id: str, k: int = DEFAULT_K, *, strategy: str = DEFAULT_STRATEGY,
              exclude: list[str] | None = None, category: str | None = None,
              variant: str | None = None) -> Rows:
    """Top-k items for a user with a reason each (unknown users get trending/popular items).
    ``strategy`` other than 'hybrid' scores with that strategy alone (popularity still
    backfills). ``variant`` applies an A/B variant's serving settings ('auto': the user's)."""
    check_request(k, strategy)
    check_variant([r[0] for r in con.execute("select name from ab_variants").fetchall()],
                  variant)
    exclude = [clean_id(i) for i in exclude] if exclude else exclude
    return _rows(con, "select * from recommend(?, k := ?, exclude := ?, category := ?, "
                      "strategy := ?, variant := ?)", [clean_id(user_id), k, exclude, category,
                                                       strategy, variant])


def recommend_for_items(con, item_ids: list[str], k: int = DEFAULT_K) -> Rows:
    _check_k(k)
    return _rows(con, "select * from recommend_for_items(?, k := ?)",
                 [[clean_id(i) for i in item_ids], k])


def similar_items(con, item_id: str, k: int = DEFAULT_K, by: str = DEFAULT_METHOD) -> Rows:
    _check_k(k)
    check_method(by)
    item_id = clean_id(item_id)
    if scalar(con, "select count(*) from items where item_id = ?", [item_id]) == 0:
        raise UnknownItem(f"no item {item_id!r} in the events or the catalog")
    return _rows(con, "select * from similar_items(?, k := ?, method := ?)", [item_id, k, by])


def similar_users(con, user_id: str, k: int = DEFAULT_K) -> Rows:
    _check_k(k)
    user_id = clean_id(user_id)
    if scalar(con, "select count(*) from users where user_id = ?", [user_id]) == 0:
        raise UnknownUser(f"no user {user_id!r} in the events")
    return _rows(con, "select * from similar_users(?, k := ?)", [user_id, k])


def trending(con, k: int = DEFAULT_K) -> Rows:
    _check_k(k)
    return _rows(con, "select * from trending(k := ?)", [k])
