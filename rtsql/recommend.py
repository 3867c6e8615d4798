"""Recommendations from Python: thin wrappers over the SQL macros, so the CLI, the library and
a BI tool calling ``SELECT * FROM recommend('user-42', 10)`` get the same rows."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidSetting, UnknownItem, UnknownUser
from .sqlutil import clean_id, scalar

# The strategies recommend() blends: name -> (the setting holding its blend weight, its column
# in the macro's cfg). 'hybrid' blends them all with those weights; any other strategy scores
# alone (weight 1, the others 0). The one definition: the settings' choices, the macro's cfg
# (generated from this at install: migrate.render), the in-memory scorer, evaluate, tune and
# the CLI's --strategy all read it.
BLENDED = {"item": ("weight_item_cf", "w_item"), "user": ("weight_user_cf", "w_user"),
           "content": ("weight_content", "w_content"), "trending": ("weight_trending", "w_trend")}
DEFAULT_STRATEGY = "hybrid"  # the blend of every strategy
STRATEGIES = (DEFAULT_STRATEGY, *BLENDED)


def blend_weights(strategy: str, weight_of) -> dict[str, float]:
    """The blend weight of each strategy (by its cfg column) when ``strategy`` is asked for;
    ``weight_of(setting)`` gives a weight setting's value."""
    return {column: float(weight_of(setting)) if strategy == "hybrid" else float(strategy == name)
            for name, (setting, column) in BLENDED.items()}
# A click or better: the event types impression_outcomes credits to an impression, and that
# lift a suppressed repeat (rtsql_engaged, rtsql_suppressed).
ENGAGED = ("click", "cart", "purchase")
DEFAULT_K = 10  # list length when a caller gives none (CLI, HTTP API, Python API)
MAX_K = 1000  # the longest list the CLI and the HTTP API return
# What explains a recommended row (its reason): the strategy that added the most, or the
# backfill; the names are the macro's (rtsql_reason), the codes the compiled scorer's.
PART_NAMES = ("item-cf", "user-cf", "content", "trending", "popular", "new")
PART_ITEM, PART_USER, PART_CONTENT, PART_TRENDING, PART_POPULAR, PART_NEW = range(len(PART_NAMES))


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


def similar_items(con, item_id: str, k: int = DEFAULT_K, by: str = "cf") -> Rows:
    _check_k(k)
    if by not in ("cf", "content"):
        raise InvalidSetting("by must be 'cf' or 'content'")
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
