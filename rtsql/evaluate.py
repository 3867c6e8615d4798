"""Offline evaluation with the protocols of docs/design.md ("Evaluation"), in a scratch database.

The events come from the live database (or a file); models are built in an in-memory rtsql
database through the product's own path (ingest, refresh, the ``recommend`` macro), so the live
derived tables are never touched and the figures measure what users get.

- ``holdout`` (protocol 1): per-user temporal split (last 20% of each user's events are test),
  P@k, R@k, NDCG@k, MAP@k and item coverage per strategy.
- ``prequential`` (protocol 2): the first 80% of all events warm up; the rest replay one event at
  a time through the tail's path (append to a followed file, ``Tail.scan`` loads it); before each
  event of a known user on an item new to them, their top-k is asked; HR@k and the latency of
  the ingest-then-recommend step.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import db, ingest, ranking, refresh, settings
from .measures import MODELS as MEASURES
from .sqlutil import arrow_table, transaction
from .vocabulary import AUTO, DEFAULT_K, DEFAULT_STRATEGY, TRAIN_FRACTION

# Events with string ids, each user's events ordered by (ts, item id; numerically when the ids
# are numbers) and numbered, with the user's event count: the protocol 1 split. Events of one
# item at one time (a view and a click in the same second) keep their ingest order, and the rows
# come in ingest order (the scratch database gives keys in that order, and keys break ties), so
# every run evaluates the same thing.
_EVENTS = """
select u.user_id, i.item_id, e.event_type, e.ts, e.value,
       row_number() over (partition by e.user_key
                          order by e.ts, try_cast(i.item_id as BIGINT) nulls last, i.item_id,
                                   e.event_id) - 1
           as pos,
       count(*) over (partition by e.user_key) as n
from events e join users u using (user_key) join items i using (item_key)
order by e.event_id
"""


@dataclass
class Metrics:
    users: int
    precision: float
    recall: float
    ndcg: float
    map: float
    coverage: float


@dataclass
class HoldoutResult:
    strategy: str
    metrics: Metrics
    refresh_seconds: float
    query_ms_per_user: float
    serving: dict = field(default_factory=dict)  # the serving overrides it was scored with


@dataclass
class PrequentialResult:
    evaluated: int
    hits: int
    latencies: list[float] = field(default_factory=list)
    recommended: list[list[str]] = field(default_factory=list)  # per evaluated event

    @property
    def hit_rate(self) -> float:
        return self.hits / self.evaluated if self.evaluated else 0.0


def ranking_metrics(recommended: dict[str, list[str]], truth: dict[str, set], k: int,
                    n_candidates: int) -> Metrics:
    """Averages over the users in ``truth`` (EVAL.md protocol 1, step 5), added in user order
    so that equal lists give bit-identical figures."""
    p = r = ndcg = ap = 0.0
    seen: set = set()
    for user, items in sorted(truth.items()):
        recs = recommended.get(user, [])[:k]
        seen.update(recs)
        hits = np.array([1.0 if i in items else 0.0 for i in recs])
        p += float(hits.sum()) / k
        r += float(hits.sum()) / len(items)
        ndcg += float((hits * ranking.discounts(len(recs))).sum()
                      / ranking.ideal_dcg(len(items), k))
        if hits.any():
            precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            ap += float((precision_at * hits).sum() / min(len(items), k))
    n = max(len(truth), 1)
    return Metrics(len(truth), p / n, r / n, ndcg / n, ap / n, len(seen) / max(n_candidates, 1))


EVENT_TYPE_PREFIX = "event_type."  # an override "event_type.cart": "4" sets that weight


def apply_overrides(con, overrides: dict[str, str]) -> None:
    """Settings, and event-type weights given as event_type.NAME."""
    from .events import set_event_type

    for name, value in overrides.items():
        if name.startswith(EVENT_TYPE_PREFIX):
            set_event_type(con, name[len(EVENT_TYPE_PREFIX):], value)
        else:
            settings.set_value(con, name, value)


def _scratch(source, overrides: dict[str, str]):
    """An in-memory rtsql database with the source's event types, settings and catalog."""
    scratch = db.connect_memory()
    scratch.execute("delete from event_types")
    scratch.executemany("insert into event_types values (?, ?, ?, ?)",
                        source.execute("select * from event_types").fetchall())
    for name, value in source.execute("select name, value from rtsql_settings").fetchall():
        if name in settings.SETTINGS:
            settings.set_value(scratch, name, value)
    apply_overrides(scratch, overrides)
    return scratch


def _load(scratch, table: pa.Table, workdir: Path, name: str) -> None:
    """Ingest events through the product's own path (a Parquet file)."""
    path = workdir / f"{name}.parquet"
    pq.write_table(table.select(["user_id", "item_id", "event_type", "ts", "value"]), path)
    ingest.ingest(scratch, [path])


def _copy_catalog(source, scratch, item_ids: list[str]) -> None:
    """Catalog rows of the given items (the candidates), keyed by the scratch item keys."""
    rows = arrow_table(
        source, "select i.item_id, c.title, c.category, c.tags, c.description, "
                "c.attributes::VARCHAR as attributes, c.embedding "
                "from item_catalog c join items i using (item_key) "
                "where list_contains(?, i.item_id)", [item_ids])
    scratch.register("_rtsql_catalog_copy", rows)
    scratch.execute("insert into item_catalog select i.item_key, c.title, c.category, c.tags, "
                    "c.description, c.attributes::JSON, c.embedding, now()::TIMESTAMP "
                    "from _rtsql_catalog_copy c join items i using (item_id)")
    scratch.unregister("_rtsql_catalog_copy")


ENGINES = ("memory", "sql")  # the in-memory scorer, or the SQL macro (the reference)


def recommend_all(con, users: list[str], k: int, strategy: str, engine: str = "memory"
                  ) -> dict[str, list[str]]:
    """Top-k item ids for many users: ``memory``, the batched in-memory scorer (the rows of
    user_recommendations, equal to the macro's); ``sql``, LATERAL over the recommend macro in
    one query (the reference)."""
    if engine == "memory":
        from .serving import ServingState

        state = ServingState.load(con)
        rows = state.recommend_all(k, strategy, settings.usable_cores())
        wanted = {state.user_keys[u] for u in users if u in state.user_keys}
        out: dict[str, list[str]] = {}
        for user_key, item_key in zip(rows["user_key"].tolist(), rows["item_key"].tolist()):
            if user_key in wanted:  # rows come in rank order for each user
                out.setdefault(state.user_ids[user_key], []).append(state.item_ids[item_key])
        return out
    if engine != "sql":
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
    con.execute("create or replace temp table _rtsql_eval_users as select unnest(?) as user_id",
                [users])
    rows = con.execute(
        "select u.user_id, r.item_id from _rtsql_eval_users u, "
        "lateral recommend(u.user_id, ?, strategy := ?) r order by u.user_id, r.rank",
        [k, strategy]).fetchall()
    out = {}
    for user, item in rows:
        out.setdefault(user, []).append(item)
    return out


def holdout(source, *, k: int = DEFAULT_K, strategies=(DEFAULT_STRATEGY,), overrides: dict | None = None,
            engine: str = "memory", serving: list[dict] | None = None) -> list[HoldoutResult]:
    """Protocol 1 on the events of ``source``; one full refresh, every strategy scored on it
    (``engine``: see recommend_all). ``serving``: sets of serving-setting overrides (blend
    weights, recency; no model setting) each scored on that same refresh, in turn."""
    for extra in serving or []:
        model = sorted(set(extra) & set(settings.MODEL_SETTINGS))
        if model or any(name.startswith(EVENT_TYPE_PREFIX) for name in extra):
            raise ValueError(f"serving overrides cannot change the model: {model or extra}")
    train, truth, candidates = _holdout_split(source)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = _scratch(source, {k2: str(v) for k2, v in (overrides or {}).items()})
        _load(scratch, train, Path(tmp), "train")
        _copy_catalog(source, scratch, candidates)
        done = refresh.refresh(scratch, full=True)
        users = sorted(truth)
        base = settings.get_all(scratch)
        touched = {name for extra in serving or [] for name in extra}
        for extra in serving or [{}]:  # each set of overrides on top of the same base
            apply_overrides(scratch, {name: str(extra.get(name, base[name])) for name in touched})
            for strategy in strategies:
                start = time.perf_counter()
                recs = recommend_all(scratch, users, k, strategy, engine)
                per_user = (time.perf_counter() - start) * 1000 / max(len(users), 1)
                results.append(HoldoutResult(strategy, ranking_metrics(recs, truth, k,
                                                                       len(candidates)),
                                             done.seconds, per_user, dict(extra)))
        scratch.close()
    return results


def _holdout_split(source) -> tuple[pa.Table, dict[str, set], list[str]]:
    """Each user's first TRAIN_FRACTION of events by time (an Arrow table), the items of the
    rest that are new to a user with training events (the truth, by user), and the items the
    training events hold (the candidates)."""
    events = arrow_table(source, _EVENTS)
    is_test = pa.compute.greater_equal(events["pos"], pa.compute.ceil(
        pa.compute.multiply(events["n"].cast(pa.float64()), TRAIN_FRACTION)))
    train, test = events.filter(pa.compute.invert(is_test)), events.filter(is_test)
    train_items: dict[str, set] = {}
    for user, item in zip(train["user_id"].to_pylist(), train["item_id"].to_pylist()):
        train_items.setdefault(user, set()).add(item)
    truth: dict[str, set] = {}
    for user, item in zip(test["user_id"].to_pylist(), test["item_id"].to_pylist()):
        if user in train_items and item not in train_items[user]:
            truth.setdefault(user, set()).add(item)
    return train, truth, sorted({i for items in train_items.values() for i in items})


def prequential(source, *, k: int = 10, limit: int | None = None, refresh_every: int = 100,
                overrides: dict | None = None, strategy: str = DEFAULT_STRATEGY,
                engine: str = "memory") -> PrequentialResult:
    """Protocol 2 on the events of ``source``; ``limit`` bounds the replayed events.

    ``engine`` memory (default) answers from the in-memory scorer that ``rtsql serve`` uses:
    each block of ``refresh_every`` events is appended to the followed file and loaded by one
    scan, then replayed into the scorer's overlay one event at a time, so every event is
    scored against exactly the events before it, as ``sql`` does. ``sql`` scans and asks the
    recommend macro per event (the reference; about 85 ms an event on ml-latest-small). Both
    give the same hits (ids get their keys in order of first appearance either way); the
    latency of ``memory`` is its recommend-and-apply step, without the block's ingest."""
    from .serving import ServingState
    from .tail import Tail, TailOptions

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
    warm, rows = _split_for_replay(source, limit)
    result = PrequentialResult(0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scratch = _scratch(source, {k2: str(v) for k2, v in (overrides or {}).items()})
        _load(scratch, warm, tmp, "warm")
        refresh.refresh(scratch, full=True)
        history: dict[str, set] = {}
        for user, item in zip(warm["user_id"].to_pylist(), warm["item_id"].to_pylist()):
            history.setdefault(user, set()).add(item)
        folder = tmp / "stream"
        folder.mkdir()
        live = folder / "live.csv"
        live.write_text("user_id,item_id,event_type,ts,value\n")
        follower = Tail(scratch, folder, TailOptions(refresh=False, publish=None))
        follower.scan()
        block = 1 if engine == "sql" else refresh_every
        state = ServingState.load(scratch) if engine == "memory" else None
        n = 0
        for first in range(0, len(rows), block):
            chunk = rows[first:first + block]
            with open(live, "a") as f:
                f.writelines(_csv_line(*row) for row in chunk)
            if engine == "sql":
                _replay_by_sql(result, history, chunk[0], follower, scratch, k, strategy)
            else:
                _replay_in_memory(result, history, chunk, follower, scratch, state, k, strategy)
            n += len(chunk)
            if n % refresh_every == 0:
                refresh.refresh(scratch)
                if state is not None:
                    state = ServingState.load(scratch)
        scratch.close()
    return result


def _split_for_replay(source, limit: int | None) -> tuple:
    """The events of ``source`` by time: the first TRAIN_FRACTION (an Arrow table) and the
    rest, at most ``limit`` of them, as (user_id, item_id, event_type, ts, value) rows."""
    events = arrow_table(
        source, "select u.user_id, i.item_id, e.event_type, e.ts, e.value from events e "
                "join users u using (user_key) join items i using (item_key) "
                "order by e.ts, u.user_id, i.item_id")
    cut = int(events.num_rows * TRAIN_FRACTION)
    stream = events.slice(cut, limit if limit is not None else events.num_rows - cut)
    return events.slice(0, cut), list(zip(*(stream[c].to_pylist() for c in (
        "user_id", "item_id", "event_type", "ts", "value"))))


def _replay_by_sql(result: PrequentialResult, history: dict, row, follower, scratch, k: int,
                   strategy: str) -> None:
    """One event through the recommend macro, then its file line loaded (the reference)."""
    start = time.perf_counter()
    _score(result, history, row, k, lambda u: [r[0] for r in scratch.execute(
        "select item_id from recommend(?, ?, strategy := ?)", [u, k, strategy]).fetchall()])
    follower.scan()
    result.latencies.append(time.perf_counter() - start)


def _replay_in_memory(result: PrequentialResult, history: dict, chunk: list, follower,
                      scratch, state, k: int, strategy: str) -> None:
    """A block of events loaded by one scan, then replayed into the scorer's overlay one
    event at a time: each scored against exactly the events before it."""
    follower.scan()
    items, users, arrived = state.read_new(scratch)
    if len(arrived) != len(chunk):
        raise RuntimeError(f"replay lost events: {len(chunk)} written, {len(arrived)} loaded")
    item_of, user_of = dict(items), dict(users)
    for row, event in zip(chunk, arrived):
        start = time.perf_counter()
        _score(result, history, row, k,
               lambda u: [r[1] for r in state.recommend(u, k, strategy=strategy).rows])
        _, user_key, item_key = event[:3]
        state.add_ids([(item_key, item_of.pop(item_key))] if item_key in item_of else [],
                      [(user_key, user_of.pop(user_key))] if user_key in user_of else [])
        state.add_event(event)
        result.latencies.append(time.perf_counter() - start)


def _score(result: PrequentialResult, history: dict, row, k: int, recommend) -> None:
    """Score one replayed event (a known user on an item new to them), then remember it."""
    user, item = row[0], row[1]
    if user in history and item not in history[user]:
        recs = recommend(user)
        result.evaluated += 1
        result.hits += item in recs
        result.recommended.append(recs)
    history.setdefault(user, set()).add(item)


def _csv_line(user, item, etype, ts, value) -> str:
    def cell(v):
        text = "" if v is None else str(v)
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"') else text

    stamp = ts.isoformat() if hasattr(ts, "isoformat") else str(ts)
    return ",".join(cell(v) for v in (user, item, etype, stamp, value)) + "\n"


def summarize_latencies(latencies: list[float]) -> tuple[float, float]:
    if not latencies:
        return 0.0, 0.0
    arr = np.array(latencies) * 1000
    return float(np.median(arr)), float(np.percentile(arr, 99))


def metric_names(k: int) -> list[str]:
    return [f"P@{k}", f"R@{k}", f"NDCG@{k}", f"MAP@{k}", "coverage"]


# --------------------------------------------------------------------------- tuning

SEARCH_SPACE = {
    "neighbors": ["20", "50", "100"],
    "similarity": [AUTO, *MEASURES],
    "ease_lambda": ["100", "300", "1000"],
    "ease_dropout": [AUTO, "0", "0.75"],  # DLAE: pays on basket logs, costs on MovieLens
    "rp3_alpha": ["0.6", "1"],
    "rp3_beta": ["0.3", "0.5"],
    "shrinkage": ["0", "5"],
    "max_history": ["0", "500"],
    "half_life_days": ["0", "180"],
    "weight_user_cf": ["0", "0.1", "0.3", "1"],
    "weight_content": ["0", "0.05", "0.1"],
    "weight_trending": ["0", "0.05"],
    "recency_half_life_days": ["0", "30"],
}


def _event_type_space(source) -> dict[str, list[str]]:
    """Half, same and double weight for each event type that occurs and has no value weight
    (a rating's weight is a common factor of all ratings: scaling it changes nothing)."""
    rows = source.execute(
        "select t.event_type, t.weight from event_types t where not t.uses_value and "
        "t.event_type in (select distinct event_type from events) order by 1").fetchall()
    return {f"{EVENT_TYPE_PREFIX}{t}": [f"{w / 2:g}", f"{w:g}", f"{w * 2:g}"] for t, w in rows
            if len(rows) > 1}


@dataclass
class Trial:
    number: int
    overrides: dict[str, str]
    score: float


def tune(source, *, budget: int = 8, protocol: str = "holdout", k: int = 10,
         limit: int | None = 1000, seed: int = 0, space: dict | None = None,
         progress=None) -> list[Trial]:
    """Random search over ``space`` (settings, and event-type weights as event_type.NAME);
    trial 0 is the current settings. Scored by NDCG@k (holdout) or HR@k (prequential).
    Returns the trials, best first."""
    import random

    rng = random.Random(seed)
    if space is None:  # the default: settings and the weights of the event types that occur
        space = {**SEARCH_SPACE, **_event_type_space(source)}
    current = dict(source.execute("select name, value from rtsql_settings").fetchall())
    current.update({f"{EVENT_TYPE_PREFIX}{t}": str(w) for t, w in source.execute(
        "select event_type, weight from event_types").fetchall()})
    candidates = [{}]
    seen = {tuple(sorted({n: current.get(n) for n in space}.items()))}
    attempts = 0
    while len(candidates) < budget and attempts < budget * 50:
        attempts += 1
        pick = {name: rng.choice(values) for name, values in space.items()}
        key = tuple(sorted(pick.items()))
        if key not in seen:
            seen.add(key)
            candidates.append(pick)
    trials = []
    for number, overrides in enumerate(candidates):
        if protocol == "holdout":
            [res] = holdout(source, k=k, overrides=overrides)
            score = res.metrics.ndcg
        else:
            score = prequential(source, k=k, limit=limit, overrides=overrides).hit_rate
        trials.append(Trial(number, overrides, score))
        if progress:
            progress(number + 1, len(candidates), trials[-1])
    return sorted(trials, key=lambda t: (-t.score, t.number))


def record_tuning(con, trials: list[Trial], protocol: str, metric: str, applied: bool) -> int:
    """Store a tuning run; with ``applied``, write the best trial's settings to the database."""
    import json

    run_id = con.execute("select coalesce(max(run_id), 0) + 1 from tuning_runs").fetchall()[0][0]
    best = trials[0]
    with transaction(con):
        con.executemany(
            "insert into tuning_runs values (?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?)",
            [[run_id, protocol, metric, t.number, json.dumps(t.overrides), t.score,
              t is best, applied and t is best] for t in trials])
        if applied:
            apply_overrides(con, best.overrides)
    return run_id
