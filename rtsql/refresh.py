"""Refresh: bring every derived table up to date, fully or incrementally, with equal results.

Derived tables (migrations/0002_models.sql): ``interactions`` (the user-item matrix),
``item_neighbors``, ``user_neighbors``, ``content_neighbors``, ``item_trending``, and the
bookkeeping in ``model_state``.

The incremental path follows docs/design.md ("Exactness of the incremental refresh"): the events after the watermark change
some users' rows of the interaction matrix; the items (and users) whose capped weights changed are
the change set; measures.incremental updates exactly the lists that can move. Forward decay
(weight * exp(lambda * (t - t0)) with the landmark t0 fixed at the last full refresh) means old
weights never need rewriting. A refresh commits in one transaction, so readers see the old or
the new state, never a mix.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from . import allocation, autotune, compute_worker, content, measures, settings, vocabulary
from .errors import DatabaseLocked, ExternalModel, InputPathError, UnknownUser
from .inverse_store import InverseStore, update_stored
from .measures.ease import USERS, dual_lists, ease_rows, mean_square, solver
from .recency import most_recent
from .sqlutil import (
    arrow_column,
    clean_id,
    database_path,
    keys_column,
    recreate_empty,
    registered,
    scalar,
    transaction,
)

Progress = Callable[[str, int, int], None]  # (stage, done, total)

# weight of one event, forward-decayed against the landmark $t0 (seconds) with rate $lambda
_EVENT_WEIGHT = "rtsql_event_weight(et.weight, et.uses_value, e.value, e.ts, $lambda, $t0)"

# fsum: correctly rounded, so the weights do not depend on the order DuckDB's threads add
# decayed (inexact) terms in, and a full refresh gives the same bits every time
_AGGREGATE_EVENTS = f"""
select e.user_key, e.item_key, fsum({_EVENT_WEIGHT}) as weight, count(*)::INTEGER as events,
       max(e.ts) as last_ts,
       -- the latest event's type, ties on ts broken by event_id (one HUGEINT key: it compares
       -- faster than a struct of the two)
       arg_max(e.event_type, epoch_us(e.ts)::HUGEINT * 18446744073709551616 + e.event_id)
           as last_event_type,
       max({_EVENT_WEIGHT}) as peak
from events e join event_types et using (event_type)
where e.event_id > $after
group by all
"""

# The history used for co-occurrence: each user's most recent max_history items ($cap 0: all),
# with the time of each entry's latest event (for the per-item cap, most_recent_per_item), and
# the pair's model weight ({column}: PAIR_WEIGHT_COLUMNS). Only users over the cap go through
# the window function: the others keep every entry without being sorted.
_CAPPED = """
with heavy as (
    select user_key from interactions {where}
    group by user_key having $cap > 0 and count(*) > $cap
)
select user_key, item_key, {column} as weight, epoch_us(last_ts) as last_us from interactions
{where} where {column} > 0 and user_key not in (select user_key from heavy)
union all
select user_key, item_key, weight, epoch_us(last_ts) from (
    select user_key, item_key, {column} as weight, last_ts,
           row_number() over (partition by user_key order by last_ts desc, item_key desc) as rn
    from interactions semi join heavy using (user_key)
) where rn <= $cap and weight > 0
"""


@dataclass
class Rewritten:
    """What an incremental refresh (or one that found nothing new) changed of what serving
    loads, so a server swaps in only that (rtsql.state.State.advanced_model): the rows of the
    served item lists (None: every row), of user_neighbors, the users whose interaction rows
    changed, and whether the content lists were rebuilt. ``since``: the watermark it started
    from."""

    since: int
    item_lists: np.ndarray | None
    user_lists: np.ndarray
    users: np.ndarray
    content: bool


@dataclass
class RefreshResult:
    mode: str  # full | incremental | none
    new_events: int = 0
    changed_users: int = 0
    changed_items: int = 0
    recomputed_rows: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the user should know of this refresh
    rewritten: Rewritten | None = None  # None after a full refresh: everything changed

    def summary(self) -> str:
        if self.mode == "none":
            return f"refresh: up to date (no new events), {self.seconds:.2f}s"
        return (f"refresh {self.mode}: {self.new_events} events, {self.changed_users} users and "
                f"{self.changed_items} items changed, {self.recomputed_rows} lists recomputed, "
                f"{self.seconds:.2f}s" + "".join(f"\n  note: {n}" for n in self.notes))


# --------------------------------------------------------------------------- state

def _state(con) -> dict[str, str]:
    return dict(con.execute("select name, value from model_state").fetchall())


def _set_state(con, **values) -> None:
    con.executemany("insert or replace into model_state values (?, ?)",
                    [[k, str(v)] for k, v in values.items()])


def _model_config(con, values: dict) -> str:
    """What the stored models depend on: the model settings and the event-type weights (a
    change of either makes the next refresh a full one)."""
    types = con.execute("select event_type, weight, uses_value from event_types "
                        "order by event_type").fetchall()
    return json.dumps({**{k: values[k] for k in settings.MODEL_SETTINGS},
                       "event_types": [list(t) for t in types]}, sort_keys=True)


def _catalog_version(con) -> str:
    return str(con.execute(
        "select count(*), max(updated_at) from item_catalog").fetchall()[0])


@contextmanager
def _refresh_lock(con):
    """One refresh at a time per database file (cron and timers may overlap)."""
    path = database_path(con)
    if not path:
        yield
        return
    lock_path = Path(path + ".refresh.lock")
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseLocked(f"another refresh of {path} is running; this one exits "
                                 "without doing anything") from None
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- matrices

def _shape(con) -> tuple[int, int]:
    return (scalar(con, "select coalesce(max(user_key), 0) + 1 from users"),
            scalar(con, "select coalesce(max(item_key), 0) + 1 from items"))


# The pair_weight setting: which interactions column the models read. sum: every event counts
# (repeats add up); max: the pair's strongest single event (a repeat purchase or a tenth view
# adds nothing)
PAIR_WEIGHT_COLUMNS = {"sum": "weight", "max": "peak"}


def _capped_entries(con, values: dict) -> dict[str, np.ndarray]:
    """The entries of the capped interaction matrix X: user_key, item_key, weight (the
    pair_weight setting's), last_us."""
    return con.execute(_CAPPED.format(where="", column=PAIR_WEIGHT_COLUMNS[values["pair_weight"]]),
                       {"cap": values["max_history"]}).fetchnumpy()


# The capped matrix X of the last refresh this process made, under the token that refresh wrote
# into model_state (capped_token): the next incremental refresh of the same database starts from
# it and replaces the rows of the users with new events (a user's capped row depends on their
# own entries alone), instead of reading X again (95 ms at 10M events). One database at a time
# (the serve or tail process refreshing its own). Every write of the interactions writes a new
# token or none (_load_full), and a rolled-back refresh leaves the old one, which no longer
# names what is kept: both read X.
_kept_capped: dict[str, dict[str, np.ndarray]] = {}


def _keep_capped(con, cols: dict[str, np.ndarray]) -> None:
    token = uuid.uuid4().hex
    _set_state(con, capped_token=token)
    _kept_capped.clear()
    _kept_capped[token] = cols


def _of_users(kept: dict[str, np.ndarray], users: np.ndarray) -> np.ndarray:
    """Flags of the kept X's entries that are rows of ``users``."""
    n = max(int(kept["user_key"].max(initial=-1)), int(users.max(initial=-1))) + 1
    return _flags(users, n)[kept["user_key"]]


def _capped_before(con, values: dict, kept: dict | None, users: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """The capped rows of ``users`` before the new events: from the kept X, or read."""
    if kept is None:
        return _capped_of(con, users, values)
    mine = _of_users(kept, users)
    return {name: column[mine] for name, column in kept.items()}


def _capped_now(con, values: dict, kept: dict | None, users: np.ndarray,
                rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """X's entries after the rows of ``users`` became ``rows`` (_capped_of): the kept X with
    those rows replaced, or X read again."""
    if kept is None:
        return _capped_entries(con, values)
    others = ~_of_users(kept, users)
    return {name: np.concatenate([kept[name][others], rows[name].astype(kept[name].dtype)])
            for name in kept}


def _matrix(con, cols: dict[str, np.ndarray], keep: np.ndarray | None = None) -> sp.csr_matrix:
    """Entries (all, or those ``keep`` flags) as a users x items CSR matrix."""
    pick = slice(None) if keep is None else keep
    return sp.csr_matrix((cols["weight"][pick].astype(np.float64),
                          (cols["user_key"][pick].astype(np.int64),
                           cols["item_key"][pick].astype(np.int64))), shape=_shape(con))


def most_recent_per_item(cols: dict[str, np.ndarray], cap: int) -> np.ndarray:
    """Which entries are among their item's ``cap`` most recent users (by the time of the
    entry's latest event, then user key, descending; cap 0: all): the rows user-user
    co-occurrence counts (``max_item_users``), so an item costs it at most cap^2 multiply-adds,
    the way ``max_history`` bounds what a user costs item-item. Deterministic, and a function
    of the item's column alone, so the incremental refresh finds the users it moves from the
    columns that changed."""
    return most_recent(cols["item_key"], cols["last_us"], cols["user_key"], cap)


def engine_options(values: dict) -> dict:
    """Memory and threads of the similarity engine, from the settings: ``refresh_block_mb`` per
    thread (a product entry costs about 24 bytes with its temporaries) and ``threads`` (0: every
    core this process may use)."""
    threads = values["threads"] or settings.usable_cores()
    return {"block_cells": max((values["refresh_block_mb"] << 20) // 24, 1), "threads": threads}


def _measure(values: dict, kind: str = "cosine", idf_n: float = 0.0) -> measures.Measure:
    if values["ease_dropout"] == vocabulary.AUTO:  # resolved by _ease_choice for the EASE kinds
        if kind in EASE_KINDS:
            raise ValueError("ease_dropout auto reaches an EASE build unresolved")
        values = {**values, "ease_dropout": 0.0}
    return measures.Measure(k=values["neighbors"], shrinkage=values["shrinkage"],
                              min_support=values["min_support"], kind=kind, idf_n=idf_n,
                              alpha=values["rp3_alpha"], beta=values["rp3_beta"],
                              ease_lambda=values["ease_lambda"],
                              ease_dropout=values["ease_dropout"],
                              ease_max_items=values["ease_max_items"],
                              ease_solver=values["ease_solver"],
                              ease_neighbors=values["ease_neighbors"],
                              buffer_length=math.ceil(values["list_buffer"] * values["neighbors"]),
                              **engine_options(values))


EASE_KINDS = ("ease", "sparse_ease")  # the measures ease_dropout and ease_lambda shape


def _with_ease_choice(values: dict, state: dict) -> dict:
    """``values`` with ``ease_dropout auto`` replaced by what the last full refresh chose (and
    built the stored lists and inverse with): its rate and lambda; plain EASE when none was
    made."""
    if values["ease_dropout"] != vocabulary.AUTO:
        return values
    return {**values, "ease_dropout": float(state.get("ease_dropout_chosen", 0.0)),
            "ease_lambda": float(state.get("ease_lambda_chosen", values["ease_lambda"]))}


def _ease_choice(con, values: dict, kind: str, cols: dict, shape: tuple[int, int],
                 progress: Progress | None, isolate: bool) -> tuple[dict, list[str]]:
    """The values a full refresh builds with, and its notes: with ``ease_dropout auto`` and an
    EASE measure, the choice of autotune.choose, made again when the model settings or the
    measure changed or the matrix grew or shrank enough since (autotune.due), else kept."""
    if values["ease_dropout"] != vocabulary.AUTO or kind not in EASE_KINDS:
        return values, []
    state = _state(con)
    basis = f"{kind} {_model_config(con, values)}"
    entries = len(cols["user_key"])
    if state.get("ease_tuned_for") == basis and \
            not autotune.due(float(state.get("ease_tuned_entries", 0)), entries):
        return _with_ease_choice(values, state), []
    trials = compute_worker.run(isolate, autotune.choose, cols, shape,
                                _measure({**values, "ease_dropout": 0.0}, kind),
                                None if isolate else _stage(progress, "tuning"))
    best = trials[0] if trials else autotune.Trial(0.0, values["ease_lambda"], float("nan"))
    _set_state(con, ease_dropout_chosen=best.dropout, ease_lambda_chosen=best.lam,
               ease_tuned_for=basis, ease_tuned_entries=entries)
    tried = "; ".join(f"p {t.dropout:g} at lambda {t.lam:g}: {t.ndcg:.4f}" for t in trials)
    note = (f"ease_dropout auto: p {best.dropout:g} at ease_lambda {best.lam:g} "
            + (f"(NDCG@{autotune.K} on each user's newest entries, {tried})" if trials
               else "(no user has entries to hold out: plain EASE)"))
    return {**values, "ease_dropout": best.dropout, "ease_lambda": best.lam}, [note]


def resolve_similarity(values: dict, items: int, memory_bytes: int | None = None) -> str:
    """The item-item measure a full refresh builds: the ``similarity`` setting, where ``auto``
    means the most accurate measure that fits (benchmarks/README.md): ease while at most
    ``ease_max_items`` items have interactions (its cost grows with n^3), sparse_ease beyond
    while its working memory fits in half of ``memory_bytes`` (the machine's memory), cosine
    beyond that (sparse, with an exact incremental refresh)."""
    if values["similarity"] != vocabulary.AUTO:
        return values["similarity"]
    if items <= values["ease_max_items"]:
        return "ease"
    if memory_bytes is None:
        memory_bytes = settings.physical_mib() << 20
    if sparse_ease_bytes(items, values["ease_neighbors"]) <= memory_bytes // 2:
        return "sparse_ease"
    return "cosine"


def sparse_ease_bytes(items: int, neighbors: int) -> int:
    """What a sparse_ease build holds at its peak, about: 64 bytes per (item, regressor)."""
    return 64 * items * neighbors


def _similarity_in_effect(values: dict, state: dict) -> str:
    """The measure of the stored item lists: ``auto`` is decided at each full refresh."""
    if values["similarity"] != vocabulary.AUTO:
        return values["similarity"]
    return state.get("item_measure", "cosine")


# neighbour tables whose served part is also kept one row per key, for recommend()'s lookups
SERVED_LISTS = {"item_neighbors": "item_neighbor_lists"}


def _write_lists(con, table: str, key: str, lists: measures.Neighbors, served: int) -> None:
    """Append lists (and their served ranks, <= K, to the table's keyed copy if it has one)."""
    _insert_entries(con, table, key, lists)
    if table in SERVED_LISTS:
        _write_served_lists(con, SERVED_LISTS[table], lists.where(lists.rank <= served))


def _insert_entries(con, table: str, key: str, lists: measures.Neighbors) -> None:
    """Append entries; each carries its row's ``complete`` flag."""
    is_complete = np.zeros(int(max(lists.row.max(initial=-1), lists.complete_rows.max(initial=-1)))
                           + 1, bool)
    is_complete[lists.complete_rows] = True
    with registered(con, "_rtsql_lists", {
            key: arrow_column(lists.row, pa.int32()),
            "neighbor_key": arrow_column(lists.nb, pa.int32()),
            "score": arrow_column(lists.score, pa.float64()),
            "rank": arrow_column(lists.rank, pa.int32()),
            "complete": arrow_column(is_complete[lists.row], pa.bool_())}):
        con.execute(f"insert into {table} select * from _rtsql_lists")


def _write_served_lists(con, table: str, lists: measures.Neighbors) -> None:
    """Each row's served entries as arrays (the entries of a row are contiguous and in rank
    order); the keyed table's columns are (key, neighbor_keys, scores)."""
    starts = np.flatnonzero(np.r_[True, lists.row[1:] != lists.row[:-1]]) if len(lists.row) \
        else np.empty(0, np.int64)
    offsets = arrow_column(np.r_[starts, len(lists.row)], pa.int32())
    with registered(con, "_rtsql_served", {
            "item_key": arrow_column(lists.row[starts], pa.int32()),
            "neighbor_keys": pa.ListArray.from_arrays(offsets, arrow_column(lists.nb, pa.int32())),
            "scores": pa.ListArray.from_arrays(offsets, arrow_column(lists.score, pa.float64()))}):
        con.execute(f"insert into {table} select * from _rtsql_served")


# --------------------------------------------------------------------------- full

def _full(con, values: dict, progress: Progress | None, isolate: bool = False
          ) -> RefreshResult:
    # the decay landmark: the latest event, or the wall clock while there are no events (a
    # landmark of 0 would overflow the forward-decayed weight of every event that follows)
    t0 = scalar(con, "select coalesce(epoch(max(ts)), epoch(now())) from events")
    lam = _decay_rate(values["half_life_days"])
    recreate_empty(con, "interactions")
    con.execute(f"insert into interactions select * from ({_AGGREGATE_EVENTS}) "
                "order by user_key, item_key", {"lambda": lam, "t0": t0, "after": -1})
    cols = _capped_entries(con, values)
    _keep_capped(con, cols)
    x = _matrix(con, cols)
    idf_n = float(np.count_nonzero(np.diff(x.indptr)))  # users with history, frozen until next full
    n_items = int(np.count_nonzero(np.bincount(x.indices, minlength=x.shape[1])))
    kind = resolve_similarity(values, n_items)
    notes: list[str] = []
    if values["similarity"] == vocabulary.AUTO and _state(con).get("item_measure") != kind:
        notes.append(f"similarity auto: {kind} item lists ({n_items} items have interactions; "
                     f"ease up to ease_max_items {values['ease_max_items']}, sparse_ease beyond while "
                     f"it fits in memory, cosine beyond that)")
    built, said = _ease_choice(con, values, kind, cols, x.shape, progress, isolate)
    notes += said
    item_measure = _measure(built, kind, idf_n)  # user-user is always cosine
    store = InverseStore(con)
    isolate = isolate and store.db_path is not None  # the worker maps the inverse's file
    if isolate:
        progress = None  # a callback stays in this process
    if kind == "ease":  # the inverse kept, so the next refreshes update it (_update_ease)
        items, ease_version, ease_solver, said = compute_worker.run(
            isolate, _build_ease, store.db_path, x.T.tocsr(), item_measure,
            _stage(progress, "items"))
    else:
        store.discard()
        ease_version = ease_solver = ""
        items, said = compute_worker.run(isolate, _full_lists, x.T.tocsr(), item_measure,
                                         _stage(progress, "items"))
    notes += said
    # user-user is computed beside the writes of the item lists (a thread, or the worker)
    users = compute_worker.submit(
        isolate, _full_lists,
        _matrix(con, cols, most_recent_per_item(cols, values["max_item_users"])),
        _measure(values), _stage(progress, "users")) if values["user_cf"] else None
    recreate_empty(con, "item_neighbors")
    recreate_empty(con, "item_neighbor_lists")
    _write_lists(con, "item_neighbors", "item_key", items,
                 measures.model(item_measure).served(item_measure))
    recomputed = items.row_count()
    recreate_empty(con, "user_neighbors")
    if users is not None:
        users = users.result()[0]
        _write_lists(con, "user_neighbors", "user_key", users, values["neighbors"])
        recomputed += users.row_count()
    _refresh_content(con, values, progress)
    _refresh_trending_counts(con, values)
    watermark, events = con.execute(
        "select coalesce(max(event_id), 0), count(*) from events").fetchall()[0]
    _set_state(con, watermark=watermark, t0=t0, decay_rate=lam, idf_n=idf_n,
               model_config=_model_config(con, values), item_measure=kind,
               ease_version=ease_version, ease_solver=ease_solver,
               catalog_version=_catalog_version(con),
               full_refresh_at=time.time(), full_watermark=watermark, full_events=events)
    return RefreshResult("full", events,
                         scalar(con, "select count(*) from users"), x.shape[1], recomputed,
                         notes=notes)


def _load_full(con, values: dict, folder: Path, progress: Progress | None) -> RefreshResult:
    """A full refresh whose heavy part was built elsewhere (the Spark job, rtsql/spark.py):
    its interactions, neighbour lists and trending counts replace the derived tables; content
    lists are built here from the catalog. Runs inside the caller's transaction."""
    def parquet(name: str) -> str:
        return f"read_parquet('{(folder / name).as_posix()}/*.parquet')"

    model = json.loads(next((folder / "model").glob("*.json")).read_text().splitlines()[0])
    for table, key, column in (("users", "user_key", "user_id"), ("items", "item_key", "item_id")):
        if not (folder / f"new_{table}").is_dir():
            continue
        # ids first seen in the job's --events files; loading the same model twice adds
        # nothing, and keys given meanwhile to other ids mean the model is out of date
        new = parquet("new_" + table)
        if scalar(con, f"select count(*) from {new} n join {table} t using ({key}) "
                       f"where t.{column} <> n.{column}"):
            raise InputPathError(f"{folder}: the database gave some of the job's new "
                                 f"{table[:-1]} keys to other ids since the job's config was "
                                 "written; write the config and run the job again")
        con.execute(f"insert into {table} ({key}, {column}) select {key}, {column} from {new} "
                    f"where {column} not in (select {column} from {table}) order by 1")
    con.execute("""update items set first_seen = f.ts
                   from (select item_key, min(ts) as ts from events group by item_key) f
                   where items.item_key = f.item_key and items.first_seen is null""")
    recreate_empty(con, "interactions")
    con.execute("delete from model_state where name = 'capped_token'")  # X not kept
    con.execute(f"""insert into interactions select user_key, item_key, weight, events, last_ts,
                           last_event_type, peak from {parquet('interactions')}
                    order by user_key, item_key""")
    recomputed = 0
    for table, key in (("item_neighbors", "item_key"), ("user_neighbors", "user_key")):
        recreate_empty(con, table)
        con.execute(f"""insert into {table} select {key}, neighbor_key, score, rank, complete
                        from {parquet(table)} order by {key}, rank""")
        recomputed += scalar(con, f"select count(distinct {key}) from {table}")
    recreate_empty(con, "item_neighbor_lists")
    con.execute("""insert into item_neighbor_lists
                   select item_key, list(neighbor_key order by rank), list(score order by rank)
                   from item_neighbors where rank <= $k group by item_key order by item_key""",
                {"k": values["neighbors"]})
    _refresh_content(con, values, progress)
    _refresh_trending(con, f"select item_key, recent, previous, popularity "
                           f"from {parquet('item_counts')}")
    # the windows the counts are against (a job from before they were recorded: none, and
    # the next refresh counts afresh)
    _set_trending_state(con, *(model.get("trending") or (None, 0)))
    for table, source in (("external_item_counts", "external_counts"),
                          ("external_recent_events", "external_recent")):
        con.execute(f"delete from {table}")
        if (folder / source).is_dir():
            con.execute(f"insert into {table} select * from {parquet(source)}")
    if model.get("external"):
        _set_state(con, external_events="true")
    else:
        con.execute("delete from model_state where name = 'external_events'")
    _set_state(con, watermark=model["watermark"], t0=model["t0"],
               decay_rate=model["decay_rate"], idf_n=model["idf_n"],
               model_config=_model_config(con, values), catalog_version=_catalog_version(con),
               full_refresh_at=time.time(), item_measure="cosine",  # Spark builds cosine
               full_watermark=model["watermark"], full_events=model["events"])
    return RefreshResult("full", model["events"], scalar(con, "select count(*) from users"),
                         _shape(con)[1], recomputed)


def load_model(con, folder: str | os.PathLike, progress: Progress | None = None) -> RefreshResult:
    """Install a model built by the Spark job (``rtsql load-model``): one transaction, so
    readers see the old model or the new one, never a mix; the watermark is the job's, so the
    next incremental refresh (and tail) folds in exactly the events after it."""
    start = time.perf_counter()
    folder = Path(folder).expanduser()
    missing = [name for name in ("interactions", "item_neighbors", "user_neighbors",
                                 "item_counts", "model") if not (folder / name).is_dir()]
    if missing:
        raise InputPathError(f"{folder} is not a model built by the Spark job (no "
                             f"{', '.join(missing)}); see docs/spark.md for the layout")
    with _refresh_lock(con):
        values = settings.get_all(con)
        with transaction(con):
            result = _load_full(con, values, folder, progress)
            _materialize_if_on(con, values, result, progress)
    result.seconds = time.perf_counter() - start
    return result


# forward decay multiplies an event after the landmark t0 by e^(rate * (ts - t0)); past this
# exponent (e^100 ~ 1e43, whose square still leaves a wide margin in the norms) the refresh is
# a full one, which moves the landmark to the newest event
MAX_DECAY_EXPONENT = 100.0


def _updatable(con, measure: str, state: dict) -> bool:
    """Whether the stored item lists can take new events without a full refresh: the sparse
    measures with the engine's exact update, ease through the users' side (recomputed) or
    while its inverse is stored."""
    if measure == "ease":
        return state.get("ease_solver") == USERS or \
            InverseStore(con).load(state.get("ease_version")) is not None
    return measures.MODELS[measure].incremental


def _deferred_rebuild(con, values: dict, state: dict, measure: str) -> str | None:
    """For item lists with no exact update (sparse_ease, rp3beta): whether they may wait for a
    later full refresh (setting rebuild_fraction), as the note that says so; None: rebuild
    now. They wait while the events since the last full refresh are at most rebuild_fraction
    of the events it saw."""
    fraction = values["rebuild_fraction"]
    if measure == "ease" or measures.MODELS[measure].incremental or fraction <= 0 \
            or "full_events" not in state:
        return None
    since = scalar(con, "select count(*) from events where event_id > ?",
                   [int(state["full_watermark"])])
    allowed = math.floor(fraction * int(state["full_events"]))
    if since > allowed:
        return None
    return (f"{measure} item lists kept from the last full refresh ({since} events since it; "
            f"rebuilt beyond {allowed}, rebuild_fraction {fraction:g})")


def _has_new_events(con, state: dict) -> bool:
    return bool(scalar(con, "select count(*) from events where event_id > ?",
                       [int(state.get("watermark", 0))]))


def _landmark_too_old(con, state: dict) -> bool:
    rate = float(state.get("decay_rate", 0))
    if not rate:
        return False
    newest = scalar(con, "select epoch(max(ts)) from events where event_id > ?",
                    [int(state.get("watermark", 0))])
    return newest is not None and rate * (newest - float(state["t0"])) > MAX_DECAY_EXPONENT


def _decay_rate(half_life_days: float) -> float:
    return math.log(2) / (half_life_days * 86400) if half_life_days > 0 else 0.0


def _stage(progress: Progress | None, name: str):
    return (lambda done, total: progress(name, done, total)) if progress else None


# --------------------------------------------------------------------------- incremental

def _capped_of(con, users: np.ndarray, values: dict) -> dict[str, np.ndarray]:
    with registered(con, "_rtsql_users", keys_column(users)):
        return con.execute(_CAPPED.format(where="semi join _rtsql_users u on user_key = u.k",
                                          column=PAIR_WEIGHT_COLUMNS[values["pair_weight"]]),
                           {"cap": values["max_history"]}).fetchnumpy()


def _changes(old: dict, new: dict, n_items: int, columns: tuple[str, ...] = ("weight",)
             ) -> tuple[np.ndarray, np.ndarray]:
    """Users and items whose capped entries differ in ``columns`` (the weight; with last_us,
    also the entries' recency) between two snapshots of the same users."""
    def keyed(cols):
        keys = cols["user_key"].astype(np.int64) * n_items + cols["item_key"].astype(np.int64)
        # float64 holds an epoch in microseconds exactly (below 2^53)
        return keys, np.column_stack([cols[c].astype(np.float64) for c in columns])

    (ka, wa), (kb, wb) = keyed(old), keyed(new)
    keys = np.union1d(ka, kb)
    before, after = np.zeros((len(keys), len(columns))), np.zeros((len(keys), len(columns)))
    before[np.searchsorted(keys, ka)] = wa
    after[np.searchsorted(keys, kb)] = wb
    diff = keys[(before != after).any(axis=1)]
    return np.unique(diff // n_items), np.unique(diff % n_items)


def _moved_by_item_cap(cols: dict, old: dict, new: dict, users: np.ndarray, cap: int,
                       n_items: int) -> np.ndarray:
    """Users whose row of the item-capped matrix (most_recent_per_item) changed. An item's
    column of it depends on that item's column of X alone (weights and recency), so only the
    columns where a user with new events changed an entry's weight or recency (``old`` /
    ``new``: the capped rows of ``users`` before and after the new events) can differ: they are
    rebuilt as they were and as they are (``cols``: X now), capped, and compared. A user with a
    new event can enter an item's most recent users and push another user out, whose row
    changes too, and so can a new event that leaves the weight as it was (pair_weight max)."""
    def capped(c: dict) -> dict:
        keep = most_recent_per_item(c, cap)
        return {name: values[keep] for name, values in c.items()}

    changed_items = _changes(old, new, n_items, ("weight", "last_us"))[1]
    in_changed = np.isin(cols["item_key"], changed_items)
    others = in_changed & ~np.isin(cols["user_key"], users)
    was = np.isin(old["item_key"], changed_items)
    before = {name: np.r_[cols[name][others], old[name][was]] for name in cols}
    after = {name: values[in_changed] for name, values in cols.items()}
    return _changes(capped(before), capped(after), n_items)[0]


def _stored(con, table: str, key: str, changed: np.ndarray, k: int
            ) -> tuple[measures.StoredLists, dict[str, np.ndarray]]:
    """The per-row summary the incremental update needs, and the stored entries pointing at
    changed rows (row, rank and rowid, which stays valid until this transaction deletes).
    Only truncated lists have a summary (complete ones hold every positive neighbour): their
    last entry and length, read from their entries at rank k and beyond (a truncated list
    keeps at least k, engine.incremental)."""
    last = con.execute(f"""
        select {key}, max(rank) as count, arg_max(score, rank) as score,
               arg_max(neighbor_key, rank) as nb
        from {table} where not complete and rank >= $k group by {key}""", {"k": k}).fetchnumpy()
    n = int(last[key].max()) + 1 if len(last[key]) else 0
    kth_score = np.full(n, -np.inf)
    kth_nb = np.full(n, np.iinfo(np.int64).max, np.int64)
    count = np.zeros(n, np.int64)
    kth_score[last[key]] = last["score"]
    kth_nb[last[key]] = last["nb"]
    count[last[key]] = last["count"]
    with registered(con, "_rtsql_changed", keys_column(changed)):
        pointing = con.execute(f"select {key} as row, rank, rowid as id from {table} t "
                               "semi join _rtsql_changed c on t.neighbor_key = c.k").fetchnumpy()
    pointing = {name: values.astype(np.int64) for name, values in pointing.items()}
    return measures.StoredLists(kth_score, kth_nb, count, pointing["row"]), pointing


def _apply_incremental(con, table: str, key: str, matrix: sp.csr_matrix, changed: np.ndarray,
                       measure: measures.Measure, isolate: bool = False
                       ) -> tuple[int, np.ndarray]:
    """Update one neighbour table after ``changed`` rows of ``matrix`` changed; the rows
    recomputed, and the rows whose entries changed (of a table with a served copy: whose
    served entries changed).

    Replaced rows (changed or recomputed) are rewritten whole. A merged row keeps the stored
    entries that stay at their rank: only its entries pointing at changed rows and the entries
    that move are deleted, and only new or moved entries are inserted. A 1,000-event batch at
    10M events touches most lists, but moves few entries in each, so this writes a small
    fraction of what rewriting the lists would (and the commit shrinks with it).
    """
    if not len(changed):
        return 0, np.empty(0, np.int64)
    stored, pointing = _stored(con, table, key, changed, measure.k)
    result = compute_worker.run(isolate, measures.incremental, matrix, changed, stored, measure)
    with registered(con, "_rtsql_merge", keys_column(result.merge_rows)), \
            registered(con, "_rtsql_changed", keys_column(changed)):
        kept = con.execute(f"""select t.{key} as row, t.neighbor_key as nb, t.score, t.rank,
                                      t.rowid as id
                               from {table} t semi join _rtsql_merge m on t.{key} = m.k
                               anti join _rtsql_changed c on t.neighbor_key = c.k
                            """).fetchnumpy()  # any order: the merge places them by rank
    truncated = np.flatnonzero(np.isfinite(stored.kth_score))
    merged, kept_stays, merged_stays = measures.merge_lists(
        kept, result.candidates, result.merge_rows, truncated, measure.list_length)
    # a row whose `complete` flag flips is rewritten whole (every entry carries the flag)
    rows = result.merge_rows
    flipped = rows[np.isin(rows, truncated, invert=True)
                   != np.isin(rows, merged.complete_rows)]
    rewrite = np.union1d(result.replace_rows, flipped)
    n = matrix.shape[0]
    keep_pointing = ~_flags(rewrite, n)[pointing["row"]]
    is_flipped = _flags(flipped, n)
    moved = ~kept_stays & ~is_flipped[kept["row"]]
    gone_row = np.r_[kept["row"][moved], pointing["row"][keep_pointing]].astype(np.int64)
    gone_id = np.r_[kept["id"][moved], pointing["id"][keep_pointing]].astype(np.int64)
    gone_rank = np.r_[kept["rank"][moved], pointing["rank"][keep_pointing]]
    new = measures.Neighbors.concat([merged.where(~merged_stays | is_flipped[merged.row]),
                                       result.lists])

    with registered(con, "_rtsql_gone", {"id": arrow_column(gone_id, pa.int64())}):
        con.execute(f"delete from {table} where rowid in (select id from _rtsql_gone)")
    _delete_rows(con, table, key, rewrite)
    _insert_entries(con, table, key, new)
    if table in SERVED_LISTS:
        # rows whose first K entries changed get their served arrays rewritten (each row's
        # entries are contiguous and in rank order in both parts, and no row is in both)
        served = np.unique(np.r_[rewrite, new.row[new.rank <= measure.k],
                                 gone_row[gone_rank <= measure.k]]).astype(np.int64)
        _delete_rows(con, SERVED_LISTS[table], key, served)
        _write_served_lists(con, SERVED_LISTS[table], measures.Neighbors.concat([
            merged.where(_flags(served, n)[merged.row] & (merged.rank <= measure.k)),
            result.lists.where(result.lists.rank <= measure.k)]))
        return len(result.replace_rows), served
    return len(result.replace_rows), np.unique(np.r_[rewrite, gone_row, new.row]).astype(np.int64)


def _flags(keys: np.ndarray, n: int) -> np.ndarray:
    """A lookup of membership: flags[key] is True for the given keys (all < n)."""
    flags = np.zeros(n, bool)
    flags[keys] = True
    return flags


def _delete_rows(con, table: str, key: str, rows: np.ndarray) -> None:
    if len(rows):
        with registered(con, "_rtsql_rows", keys_column(rows)):
            con.execute(f"delete from {table} where {key} in (select k from _rtsql_rows)")


def _incremental(con, values: dict, state: dict, forget_users: np.ndarray | None = None,
                 progress: Progress | None = None, isolate: bool = False) -> RefreshResult:
    watermark = int(state["watermark"])
    new_events = scalar(con, "select count(*) from events where event_id > ?", [watermark])
    users = con.execute("select distinct user_key from events where event_id > ? "
                        "order by 1", [watermark]).fetchnumpy()["user_key"].astype(np.int64)
    if forget_users is not None:
        users = np.union1d(users, forget_users)
    if not len(users):
        _update_trending_counts(con, values, state, watermark, None)
        nothing = np.empty(0, np.int64)
        return RefreshResult("none", rewritten=Rewritten(
            watermark, nothing, nothing, nothing,
            _refresh_content_if_changed(con, values, state)))
    kept = _kept_capped.get(state.get("capped_token", ""))
    old = _capped_before(con, values, kept, users)
    if forget_users is not None:
        _delete_rows(con, "interactions", "user_key", forget_users)
    con.execute(f"create or replace temp table _rtsql_delta as {_AGGREGATE_EVENTS}",
                {"lambda": float(state["decay_rate"]), "t0": float(state["t0"]), "after": watermark})
    con.execute("""
        update interactions i set weight = i.weight + d.weight, events = i.events + d.events,
               last_ts = greatest(i.last_ts, d.last_ts),
               last_event_type = case when d.last_ts >= i.last_ts then d.last_event_type
                                      else i.last_event_type end,
               peak = greatest(i.peak, d.peak)
        from _rtsql_delta d where i.user_key = d.user_key and i.item_key = d.item_key""")
    con.execute("insert into interactions select d.* from _rtsql_delta d "
                "anti join interactions i using (user_key, item_key)")
    if forget_users is None:
        _update_trending_counts(con, values, state, watermark, "select * from _rtsql_delta")
    else:  # the forgotten events leave the counts
        _refresh_trending_counts(con, values)
    con.execute("drop table _rtsql_delta")
    new = _capped_of(con, users, values)
    n_items = _shape(con)[1]
    changed_users, changed_items = _changes(old, new, n_items)
    cols = _capped_now(con, values, kept, users, new)
    _keep_capped(con, cols)
    notes: list[str] = []
    kind = _similarity_in_effect(values, state)
    item_rows: np.ndarray | None = np.empty(0, np.int64)
    user_rows = np.empty(0, np.int64)
    if kind == "ease":
        recomputed = _update_ease(con, _with_ease_choice(values, state), state, cols, users,
                                  old, new, notes, isolate)
        if recomputed is None:  # the inverse cannot take this change: rebuild everything
            result = _full(con, values, progress, isolate)
            result.notes[:0] = notes
            return result
        item_rows = None  # every list is rewritten
    elif not measures.MODELS[kind].incremental:  # no update: kept (refresh's rebuild_fraction)
        recomputed = 0
    else:
        recomputed, item_rows = _apply_incremental(
            con, "item_neighbors", "item_key", _matrix(con, cols).T.tocsr(), changed_items,
            _measure(values, kind, float(state.get("idf_n", 0))), isolate)
    if values["user_cf"]:
        item_cap = values["max_item_users"]
        more, user_rows = _apply_incremental(
            con, "user_neighbors", "user_key",
            _matrix(con, cols, most_recent_per_item(cols, item_cap)),
            _moved_by_item_cap(cols, old, new, users, item_cap, n_items)
            if item_cap > 0 else changed_users, _measure(values), isolate)
        recomputed += more
    content_rebuilt = _refresh_content_if_changed(con, values, state)
    _set_state(con, watermark=max(watermark, scalar(
        con, "select coalesce(max(event_id), 0) from events")))
    return RefreshResult("incremental", new_events, len(changed_users), len(changed_items),
                         recomputed, notes=notes,
                         rewritten=Rewritten(watermark, item_rows, user_rows, users,
                                             content_rebuilt))


# EASE's lambda' (ease_lambda x the mean squared weight) stays frozen between full refreshes;
# once the mean squared weight has moved this far from the frozen one (new users, decay), the
# refresh rebuilds, so incremental lists are a full rebuild's at an ease_lambda within 20%
EASE_LAMBDA_DRIFT = 0.2
EASE_NOT_STORED = ("ease: no stored inverse matches the lists (the first refresh since an "
                   "upgrade, an interrupted refresh, or a copied database file): rebuilt in full")


def _full_lists(m: sp.csr_matrix, measure: measures.Measure, progress: Progress | None
                ) -> tuple[measures.Neighbors, list[str]]:
    """measures.full and its notices, as values (for compute_worker.run)."""
    notes: list[str] = []
    return measures.full(m, measure, progress, notes.append), notes


def _build_ease(db_path: str | None, m: sp.csr_matrix, measure: measures.Measure,
                progress: Progress | None) -> tuple[measures.Neighbors, str, str, list[str]]:
    """Full EASE lists (lists, the inverse's version or "", the solver, notices). Through the
    users' side (ease.solver) nothing is kept; through the items' inverse, it is kept for
    updates when every item with interactions is in it. Its buffer has room for an eighth more items
    than today's (at least 1,024 more, at most ease_max_items): rows of the file are capacity
    wide, and file systems allocate the unused tail of each row too, so room grows in steps
    rather than doubling. ``db_path`` is the database's file (None: this
    process keeps the inverse); this may run in the worker process (compute_worker.run)."""
    store = InverseStore.for_path(db_path)
    notes: list[str] = []
    rows = ease_rows(m, measure, notes.append)
    how = solver(m, rows, measure)
    if how == USERS:
        store.discard()
        return dual_lists(m, rows, measure, progress), "", how, notes
    factor = store.build(m, rows, measure.ease_lambda * mean_square(m[rows]),
                         min(measure.ease_max_items, len(rows) + max(1024, len(rows) // 8)),
                         measure.ease_kappa)
    lists = factor.lists(measure, progress=progress)
    items = int(np.count_nonzero(np.diff(m.indptr)))
    if items > len(rows):  # the most popular only: which ones may change, rebuild each time
        store.discard()
        return lists, "", how, notes
    return lists, store.publish(factor), how, notes


def _update_ease(con, values: dict, state: dict, cols: dict, users: np.ndarray, old: dict,
                 new: dict, notes: list[str], isolate: bool = False) -> int | None:
    """Fold the changed users' rows (``old`` -> ``new``, capped entries of ``users``) into the
    stored EASE inverse and rewrite the item lists from it, or recompute them through the
    users' side when the last full refresh chose it; None when it cannot (no stored inverse,
    more items than it has room for, lambda's unit drifted, the users' side no longer the
    cheaper): rebuild."""
    store = InverseStore(con)
    if state.get("ease_solver") == USERS:
        return _recompute_dual(con, values, cols, notes, isolate)
    factor = store.load(state.get("ease_version"))
    if factor is None:
        notes.append(EASE_NOT_STORED)
        return None
    m = _matrix(con, cols).T.tocsr()
    present = np.diff(m.indptr) > 0
    items = len(np.union1d(factor.rows, np.flatnonzero(present)))
    if items > factor.buffer.shape[0]:
        notes.append(f"ease: {items} items, more than the stored inverse has room for "
                     f"({factor.buffer.shape[0]}): rebuilt in full")
        return None
    measure = _measure(values, "ease")
    if factor.kappa != measure.ease_kappa:  # a model setting: the refresh is a full one anyway
        notes.append("ease: the stored inverse has another ease_dropout: rebuilt in full")
        return None
    unit, frozen = mean_square(m), factor.lam / measure.ease_lambda
    if abs(unit / frozen - 1) > EASE_LAMBDA_DRIFT:
        notes.append(f"ease: the mean squared weight moved from {frozen:.4g} to {unit:.4g} "
                     "since the last full refresh (lambda is in its units): rebuilt in full")
        return None

    def rows_of(entries: dict) -> sp.csr_matrix:
        at = np.searchsorted(users, entries["user_key"].astype(np.int64))
        return sp.csr_matrix((entries["weight"].astype(np.float64),
                              (at, entries["item_key"].astype(np.int64))),
                             shape=(len(users), m.shape[0]))

    if isolate and store.db_path is not None:  # the worker maps the file itself
        lists, version = compute_worker.run(
            True, compute_worker.ease_update, store.db_path, state["ease_version"], m,
            rows_of(old), rows_of(new), present, measure)
    else:
        lists, version = update_stored(store, factor, state["ease_version"], m, rows_of(old),
                                       rows_of(new), present, measure)
    _set_state(con, ease_version=version)
    _write_ease_lists(con, lists, measure)
    return lists.row_count()


def _recompute_dual(con, values: dict, cols: dict, notes: list[str], isolate: bool) -> int | None:
    """EASE lists through the users' side again, over the current matrix: the full build's
    result (nothing frozen); None once the items' inverse would be the cheaper (more users)."""
    m = _matrix(con, cols).T.tocsr()
    measure = _measure(values, "ease")
    rows = ease_rows(m, measure)
    if solver(m, rows, measure) != USERS:
        notes.append("ease: the users now outnumber what the users' side pays for, or its "
                     "rounding would exceed 1e-10 (ease_solver auto): rebuilt in full through "
                     "the items' inverse, which the next refreshes update")
        return None
    lists = compute_worker.run(isolate, dual_lists, m, rows, measure)
    _write_ease_lists(con, lists, measure)
    return lists.row_count()


def _write_ease_lists(con, lists: measures.Neighbors, measure: measures.Measure) -> None:
    con.execute("delete from item_neighbors")
    con.execute("delete from item_neighbor_lists")
    _write_lists(con, "item_neighbors", "item_key", lists, measures.model(measure).served(measure))


# --------------------------------------------------------------------------- trending, content

# Per item: events in the latest trending window and the one before it, against the newest
# event, and all events (the Spark job computes the same counts: rtsql/spark_job.py). The
# windows read only the events recent enough for them ($since, two windows before the newest:
# a filter DuckDB answers from the ts column's zone maps); the all-time count is the sum of the
# interaction matrix's per-pair event counts, which every refresh keeps (forget included).
# Events a Spark build read from files outside the database (--events) count too: they are in
# its interaction matrix, and those recent enough for a window in external_recent_events
# (migration 0011).
_TRENDING_COUNTS = """
    with recent_events as (
        select item_key, ts from events where ts > make_timestamp($newest - 2 * $w)
        union all
        select item_key, ts from external_recent_events
        where ts > make_timestamp($newest - 2 * $w)),
    windowed as (
        select item_key,
               count(*) filter (where ts > make_timestamp($newest - $w)) as recent,
               count(*) filter (where ts <= make_timestamp($newest - $w)) as previous
        from recent_events group by item_key),
    popular as (select item_key, sum(events) as popularity from interactions group by item_key)
    select i.item_key, coalesce(w.recent, 0) as recent, coalesce(w.previous, 0) as previous,
           coalesce(p.popularity, 0) as popularity
    from items i left join windowed w using (item_key) left join popular p using (item_key)"""

# The counts above after the newest event moved from $n0 to $n1 (epoch microseconds; windows
# of $w): an event read before counts as recent while its ts > newest - w and as previous
# while newest - 2w < ts <= newest - w, so only those with ts in (n0 - w, n1 - w] (recent ->
# previous) or (n0 - 2w, n1 - 2w] (previous -> none) change window (two ts ranges, read
# from zone maps; the second stops where the first starts), and new events (event_id >
# $after) are added.
_TRENDING_DELTA = """
    with read_before as not materialized (
        select item_key, ts from events where event_id <= $after
        union all
        select item_key, ts from external_recent_events),
    moved as (
        select item_key, epoch_us(ts) as t, false as new from read_before
        where ts > make_timestamp($n0 - $w) and ts <= make_timestamp($n1 - $w)
        union all
        select item_key, epoch_us(ts), false from read_before
        where ts > make_timestamp($n0 - 2 * $w)
          and ts <= make_timestamp(least($n1 - 2 * $w, $n0 - $w))  -- not read twice
        union all
        select item_key, epoch_us(ts), true from events where event_id > $after),
    delta as (
        select item_key,
               sum((t > $n1 - $w)::INTEGER - (not new and t > $n0 - $w)::INTEGER) as recent,
               sum((t > $n1 - 2 * $w and t <= $n1 - $w)::INTEGER
                   - (not new and t > $n0 - 2 * $w and t <= $n0 - $w)::INTEGER) as previous
        from moved group by item_key),
    popular as (select item_key, sum(events) as events from ({popularity}) group by item_key)
    select i.item_key, coalesce(t.recent, 0) + coalesce(d.recent, 0) as recent,
           coalesce(t.previous, 0) + coalesce(d.previous, 0) as previous,
           coalesce(t.popularity, 0) + coalesce(p.events, 0) as popularity
    from items i left join item_trending t using (item_key) left join delta d using (item_key)
         left join popular p using (item_key)"""


def _newest_us(con) -> int | None:
    return scalar(con, "select epoch_us(max(t)) from (select max(ts) as t from events union all "
                       "select max(ts) from external_recent_events)")


def _refresh_trending_counts(con, values: dict) -> None:
    """Trending of the local events (_TRENDING_COUNTS), after the interaction matrix is; the
    windows it used are recorded for _update_trending_counts."""
    newest = _newest_us(con)
    window = _window_us(values)
    _refresh_trending(con, _TRENDING_COUNTS, {"newest": newest, "w": window})
    _set_trending_state(con, newest, window)


def _window_us(values: dict) -> int:
    return round(values["trending_window_days"] * 86400e6)


def _set_trending_state(con, newest: int | None, window: int) -> None:
    if newest is None:
        con.execute("delete from model_state where name = 'trending_windows'")
    else:
        _set_state(con, trending_windows=json.dumps([newest, window]))


def _update_trending_counts(con, values: dict, state: dict, after: int,
                            popularity: str | None) -> None:
    """Trending after new events (event_id > ``after``), from the counts the last refresh
    stored: each item's windows gain its new events and lose or pass on the events its
    windows moved past (_TRENDING_DELTA: only those and the new events are read), and its
    popularity gains ``popularity`` (a query with item_key, events: the new events folded
    into the interaction matrix). The same counts as _refresh_trending_counts, which runs
    instead when there are no stored windows (no events yet, a Spark job from before they
    were recorded) or they do not apply (the window setting changed). Events are only
    appended here (a forget counts afresh): the newest is the stored one or a new event."""
    window = _window_us(values)
    stored = json.loads(state.get("trending_windows", "null"))
    if stored is None or stored[1] != window:
        _refresh_trending_counts(con, values)
        return
    newest = max(stored[0], scalar(con, "select coalesce(epoch_us(max(ts)), 0) from events "
                                        "where event_id > ?", [after]))
    counts = _TRENDING_DELTA.format(popularity=popularity or "select 0 as item_key, 0 as events "
                                                          "where false")
    _refresh_trending(con, counts, {"n0": stored[0], "n1": newest, "w": window, "after": after})
    _set_trending_state(con, newest, window)


def _refresh_trending(con, counts: str, params: dict | None = None) -> None:
    """Trending from the counts (every item, zeros without events), with the share of the top
    score and the two backfill orders recommend() reads; stored in backfill order so its first
    rows are the ones read. ``counts`` is a query with item_key, recent, previous,
    popularity (it may read item_trending: the counts are taken before it is emptied)."""
    con.execute(f"create or replace temp table _rtsql_counts as {counts}", params or {})
    con.execute("delete from item_trending")
    con.execute("""
        insert into item_trending
        with counts as (from _rtsql_counts),
        scored as (
            select i.item_key, coalesce(c.recent, 0) as recent,
                   coalesce(c.previous, 0) as previous, coalesce(c.popularity, 0) as popularity,
                   coalesce(c.recent * (c.recent + 1.0) / (c.previous + 1.0), 0) as score
            from items i left join counts c using (item_key)
        ),
        shared as (
            select *, case when score > 0 then score / max(score) over () else 0 end as share
            from scored
        )
        select item_key, recent, previous, popularity, score, share,
               row_number() over (order by share desc, popularity desc, item_key) as rank_trending,
               row_number() over (order by popularity desc, item_key) as rank_popular
        from shared order by rank_trending""")
    con.execute("drop table _rtsql_counts")


def _refresh_content_if_changed(con, values: dict, state: dict) -> bool:
    """Rebuild the content lists if the catalog changed since they were built; whether it
    did."""
    if state.get("catalog_version") == _catalog_version(con):
        return False
    _refresh_content(con, values, None)
    _set_state(con, catalog_version=_catalog_version(con))
    return True


def _refresh_content(con, values: dict, progress: Progress | None) -> None:
    content.refresh(con, measures.Measure(k=values["neighbors"], **engine_options(values)),
                    _stage(progress, "content"))


# --------------------------------------------------------------------------- entry points

def refresh(con, *, full: bool = False, progress: Progress | None = None,
            threads: int | None = None, drop_external: bool = False,
            isolate: bool = False) -> RefreshResult:
    """Bring the derived tables up to date. Incremental unless ``full``, the database was never
    refreshed, or a model setting changed since the last full refresh. ``threads`` overrides
    the setting for the similarity engine (the server keeps a core for requests); ``isolate``
    runs the similarity compute (full lists, incremental products, EASE's build and update)
    in a worker process at the lowest priority (rtsql/compute_worker.py: the server's
    requests do not share the interpreter or the cores with it on equal terms); this process
    keeps the database reads and writes.

    A model built by Spark from files outside the database (``--events``) holds events this
    process cannot read: a full refresh here would drop them, so it is refused (ExternalModel)
    unless ``drop_external``."""
    start = time.perf_counter()
    with _refresh_lock(con):
        values = settings.get_all(con)
        if threads is not None:
            values["threads"] = threads
        state = _state(con)
        plan = _plan(con, values, state, full)
        external = plan.full and state.get("external_events") == "true"
        if external and not drop_external:
            raise ExternalModel(
                "the model includes events from files outside the database (built by "
                "`rtsql refresh --full --engine spark --events ...`); a full refresh here "
                "would drop them" + ("" if full else " (a model setting or the decay "
                                     "landmark needs one)") + ": run the Spark build "
                "again, or `rtsql refresh --full --drop-external` to rebuild from the "
                "database's own events")
        if values["materialize_recommendations"]:
            _warm_scorer()
        with transaction(con):
            if external:  # drop_external
                con.execute("delete from external_item_counts")
                con.execute("delete from external_recent_events")
                con.execute("delete from model_state where name = 'external_events'")
            result = _full(con, values, progress, isolate) if plan.full \
                else _incremental(con, values, state, progress=progress, isolate=isolate)
            result.notes.extend(plan.notes(result, full))
            moved = allocation.allocate(con, values)  # the A/B bandit, when --auto is on
            if moved:
                result.notes.append(moved)
            _materialize_if_on(con, values, result, progress)
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class _Plan:
    """Whether a refresh is full, and why its lists are rebuilt or left waiting."""

    full: bool
    rebuild: bool  # new events and a measure without an update: rebuilt in full
    deferred: str | None  # the rebuild that rebuild_fraction lets wait, as a note
    measure: str  # the item-item measure in effect

    def notes(self, result: RefreshResult, asked_full: bool) -> list[str]:
        notes = []
        if self.rebuild and not asked_full:
            notes.append(EASE_NOT_STORED if self.measure == "ease" else (
                f"similarity {self.measure} has no incremental update: the new events made "
                "this a full refresh (cosine, tfidf and ease update incrementally; "
                "rebuild_fraction lets the others wait)"))
        if self.deferred and result.mode == "incremental":
            notes.append(self.deferred)
        return notes


def _plan(con, values: dict, state: dict, full: bool) -> _Plan:
    """Full when asked, on the first refresh with events, when a measure without an update
    has new events (unless rebuild_fraction defers it), when a model setting changed since
    the last full refresh, or when the decay landmark is too old."""
    # a full refresh that saw no events fixed no decay landmark worth keeping (t0 = 0
    # would overflow every later event's forward-decayed weight): the next one is full too
    never = state.get("watermark", "0") == "0" and state.get("external_events") != "true"
    # a measure without an update (rp3beta, sparse_ease, ease without its stored
    # inverse): new events mean a full refresh, and the result says so (a note)
    in_effect = _similarity_in_effect(values, state)
    rebuild = not _updatable(con, in_effect, state) and _has_new_events(con, state)
    deferred = _deferred_rebuild(con, values, state, in_effect) if rebuild else None
    rebuild = rebuild and deferred is None
    needs_full = (full or never or rebuild
                  or state.get("model_config") != _model_config(con, values)
                  or _landmark_too_old(con, state))
    return _Plan(needs_full, rebuild, deferred, in_effect)


def _warm_scorer() -> None:
    """Import and load the compiled scorer (a noticeable part of a small refresh in a new
    process) in a thread while the refresh computes the lists, instead of after them."""
    def warm() -> None:
        from . import scoring

        scoring.warm_up()

    threading.Thread(target=warm, name="rtsql-warm-scorer", daemon=True).start()


def _materialize_if_on(con, values: dict, result: RefreshResult,
                       progress: Progress | None = None) -> None:
    """user_recommendations from the new models, in the refresh's transaction (readers see
    lists and models of the same refresh); skipped when nothing changed since the last one."""
    from . import materialize

    if not values["materialize_recommendations"]:
        return
    config = json.dumps([values["materialize_k"], values["materialize_strategy"],
                         {name: values[name] for name in settings.SERVING_SETTINGS},
                         _state(con).get("watermark")])
    if result.mode == "none" and _state(con).get("materialized") == config:
        return
    materialize.materialize(con, values["materialize_k"], values["materialize_strategy"],
                            _stage(progress, "recommendations"), engine_options(values)["threads"])
    _set_state(con, materialized=config)


def forget(con, user_id: str) -> RefreshResult:
    """Delete a user's rows and everything derived from them (right to be forgotten), in one
    transaction: events, interaction rows, neighbour lists, materialized recommendations,
    impressions, the user's id in rejected rows' text, and the id itself. The key is retired
    (``forgotten_users``), never given to a later user.

    Pending events are folded in first, then the user's rows leave the interaction matrix as an
    incremental change set (new weights 0), so the result equals a full rebuild without them.
    This is the database's part; ``rtsql.privacy.forget_user`` also rewrites the file and
    republishes snapshots, so no byte of the id is left behind.
    """
    user_id = clean_id(user_id)
    user_key = scalar(con, "select user_key from users where user_id = ?", [user_id])
    if user_key is None:
        if not _rejects_mentioning(con, user_id):
            raise UnknownUser(f"no user {user_id!r}; nothing to forget")
        # every row of this person was rejected: their id is in rejects only
        with transaction(con):
            _redact_rejects(con, user_id)
            _set_state(con, **{REWRITE_PENDING: "true"})
        return RefreshResult("forget", notes=[
            f"{user_id!r} was only in rejected rows; the id is replaced there"])
    refresh(con)
    start = time.perf_counter()
    with _refresh_lock(con):
        values, state = settings.get_all(con), _state(con)
        with transaction(con):
            con.execute("delete from events where user_key = ?", [user_key])
            if _updatable(con, _similarity_in_effect(values, state), state):
                result = _incremental(con, values, state, np.array([user_key], np.int64))
            else:  # lists with no update (rp3beta, ease beyond its limit): rebuilt without them
                result = _full(con, values, None)
            con.execute("delete from user_neighbors where neighbor_key = ? or user_key = ?",
                        [user_key, user_key])
            for table in ("users", "user_recommendation_rows", "impressions"):
                con.execute(f"delete from {table} where user_key = ?", [user_key])
            _redact_rejects(con, user_id)
            con.execute("insert into forgotten_users values (?, now())", [user_key])
            # the file still holds the id's bytes until privacy rewrites it: until then, the
            # next forget (or serve's start) finishes that first
            _set_state(con, **{REWRITE_PENDING: "true"})
            _materialize_if_on(con, values, result)
    result.mode = "forget"
    result.seconds = time.perf_counter() - start
    return result


REDACTED = "<forgotten>"
# model_state's flag: a forget deleted rows and the file rewrite that removes their bytes
# (rtsql.privacy) has not finished yet
REWRITE_PENDING = "file_rewrite_pending"


_ID_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.@")


def _without_id(text: str | None, user_id: str) -> str | None:
    """``text`` with each occurrence of the id that stands as a whole token (between
    characters that cannot be part of an id: quotes, commas, spaces, brackets, or the ends)
    replaced by REDACTED, so ``u-4`` leaves ``u-42`` alone. A scan, not a regular expression:
    an id may be a megabyte long."""
    if not text or user_id not in text:
        return text
    out, at = [], 0
    while (found := text.find(user_id, at)) >= 0:
        end = found + len(user_id)
        whole = ((found == 0 or text[found - 1] not in _ID_CHARACTERS)
                 and (end == len(text) or text[end] not in _ID_CHARACTERS))
        out.append(text[at:found] + (REDACTED if whole else user_id))
        at = end
    return "".join(out) + text[at:]


def _rejects_with_id(con, user_id: str) -> list[tuple]:
    """(rowid, raw, reason) of the rejected rows where the id stands as a whole token, with
    the id replaced."""
    rows = con.execute("select rowid, raw, reason from rejects "
                       "where contains(raw, $1) or contains(reason, $1)", [user_id]).fetchall()
    changed = []
    for rowid, raw, reason in rows:
        new_raw, new_reason = _without_id(raw, user_id), _without_id(reason, user_id)
        if (new_raw, new_reason) != (raw, reason):
            changed.append((rowid, new_raw, new_reason))
    return changed


def _rejects_mentioning(con, user_id: str) -> int:
    return len(_rejects_with_id(con, user_id))


def _redact_rejects(con, user_id: str) -> None:
    """Replace the id in rejected rows' raw text and reason where it stands as a whole token
    (``_without_id``). The rows stay (rows in = events + rejects)."""
    rows = _rejects_with_id(con, user_id)
    if rows:
        con.executemany("update rejects set raw = ?, reason = ? where rowid = ?",
                        [[raw, reason, rowid] for rowid, raw, reason in rows])
