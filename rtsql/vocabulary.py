"""The words every layer shares, defined once: strategies, similar-item methods, list lengths,
the event types feedback counts, the measure names, and what explains a recommended row.

Python imports them from here; the SQL macros and views get them rendered in at install
(``migrate.render``: ``{{default_k}}``, ``{{default_strategy}}``, ``{{default_method}}``,
``{{click_types}}``, ``{{purchase_types}}``, ``{{engaged}}``, the blend columns), so no SQL file
keeps a second copy. This module imports nothing of rtsql's: anything may import it.
"""

from __future__ import annotations

DEFAULT_K = 10  # list length when a caller gives none (SQL macros, CLI, HTTP API, Python API)
MAX_K = 1000  # the longest list the CLI and the HTTP API return
# The offline split (protocol 1): a user's entries at position >= ceil(TRAIN_FRACTION n) in
# time order are held out; evaluate.py's hold-out and prequential warm-up and the refresh's
# choice of the EASE form (autotune.py) all cut there
TRAIN_FRACTION = 0.8

# The strategies recommend() blends: name -> (the setting holding its blend weight, its column
# in the macro's cfg). The default strategy blends them all with those weights; any other
# strategy scores alone (weight 1, the others 0).
BLENDED = {"item": ("weight_item_cf", "w_item"), "user": ("weight_user_cf", "w_user"),
           "content": ("weight_content", "w_content"), "trending": ("weight_trending", "w_trend")}
DEFAULT_STRATEGY = "hybrid"  # the blend of every strategy
STRATEGIES = (DEFAULT_STRATEGY, *BLENDED)

# similar_items(): by behaviour (the served item-item lists) or by catalog content
SIMILAR_METHODS = ("cf", "content")
DEFAULT_METHOD = SIMILAR_METHODS[0]

# Feedback: the event types that count as a click on an impression, as a purchase, and
# together as "a click or better" (credited to impressions; lifting a suppressed repeat).
CLICK_TYPES = ("click", "cart")
PURCHASE_TYPES = ("purchase",)
ENGAGED = CLICK_TYPES + PURCHASE_TYPES

# Item-item measures (rtsql.measures.MODELS holds one class per name) and the similarity
# setting's default, a choice among them made at each full refresh.
MEASURE_NAMES = ("cosine", "tfidf", "rp3beta", "ease", "sparse_ease")
AUTO = "auto"
# the similarity values the Spark engine builds (auto means cosine there; rtsql/engines.py)
SPARK_MEASURES = (AUTO, "cosine")
# How ease computes its closed form (rtsql.measures.ease.solver): the items' inverse, kept and
# updated, or the users' side, recomputed at each refresh.
EASE_SOLVERS = ("items", "users")

# What explains a recommended row (its reason): the strategy that added the most, or the
# backfill; the names are the macro's (rtsql_reason), the codes the compiled scorer's.
PART_NAMES = ("item-cf", "user-cf", "content", "trending", "popular", "new")
PART_ITEM, PART_USER, PART_CONTENT, PART_TRENDING, PART_POPULAR, PART_NEW = range(len(PART_NAMES))


def blend_weights(strategy: str, weight_of) -> dict[str, float]:
    """The blend weight of each strategy (by its cfg column) when ``strategy`` is asked for;
    ``weight_of(setting)`` gives a weight setting's value."""
    return {column: float(weight_of(setting)) if strategy == DEFAULT_STRATEGY
            else float(strategy == name) for name, (setting, column) in BLENDED.items()}


def sql_list(values) -> str:
    """Values as a SQL list of string literals (rtsql's own words, never user input)."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)
