"""Serving from memory: the SQL macros' answers from numpy arrays, with no SQL per request.

``recommend()`` through DuckDB costs 15-20 ms of binding and planning before it reads a row, so
an application server cannot call the macro per request. ``ServingState`` loads what the
macros read (the served neighbour lists, the interaction matrix, the backfill orders, ids and
catalog fields) into arrays once, keeps the events that arrived since the last refresh in a
small per-user overlay, and answers ``recommend``, ``recommend_for_items``, ``similar_items``,
``similar_users`` and ``trending`` with array operations.

The SQL macros stay the definition: every step below mirrors a step of
``sql/macros/30_rtsql_recommend_core.sql`` (the names in comments are its CTEs), and
``tests/test_serving.py`` checks on random databases that both return the same rows: same
items, ranks and reasons, scores within 1e-9. Where the macro sums, the scorer sums exactly as
fsum does (correctly rounded), so exact ties stay ties and rank the same way.

Freshness: ``catch_up(con)`` reads what was committed after the state was loaded (new events
with their weights computed by the database's own ``rtsql_event_weight``, new users and items)
and appends it; the writer calls it after every ingest, so a request that follows a committed
write sees it. After a refresh a new state is loaded and swapped in whole.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import allocation
from . import settings as settings_mod
from .availability import Availability
from .errors import ModelError, UnknownItem, UnknownUser
from .recommend import Rows, check_method, check_request
from .sqlutil import arrow_table, clean_id
from .suppression import Impressions
from .vocabulary import (
    DEFAULT_K,
    DEFAULT_METHOD,
    DEFAULT_STRATEGY,
    PART_CONTENT,
    PART_ITEM,
    PART_NEW,
    PART_TRENDING,
    PART_USER,
    SIMILAR_METHODS,
    blend_weights,
)

COLUMNS = ["rank", "item_id", "score", "reason"]
# the items of recommend_for_items() count as a history with this event type and time
BASKET_TYPE = "basket"
_NEW_ITEM_OFFSET = 1 << 32  # items new since the refresh rank after every ranked one


@dataclass
class Csr:
    """Rows of (key, value) pairs, each row's entries in stored (rank) order."""

    indptr: np.ndarray  # int64, len rows + 1
    keys: np.ndarray  # int64
    values: np.ndarray  # float64

    @classmethod
    def from_sorted(cls, rows: np.ndarray, keys, values, n_rows: int) -> "Csr":
        """From entries already sorted by row (then rank)."""
        counts = np.bincount(rows.astype(np.int64), minlength=n_rows) if len(rows) else \
            np.zeros(n_rows, np.int64)
        indptr = np.zeros(max(n_rows, len(counts)) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:len(counts) + 1])
        indptr[len(counts) + 1:] = indptr[len(counts)]
        return cls(indptr, np.asarray(keys, np.int64), np.asarray(values, np.float64))

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.indptr, self.keys, self.values

    def expand(self, rows: np.ndarray, limit: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``rows`` each entry came from, entry positions) for the first ``limit``
        entries of each row; rows beyond the matrix have none."""
        rows = np.asarray(rows, np.int64)
        inside = rows < self.n_rows
        starts = np.where(inside, self.indptr[np.minimum(rows, self.n_rows)], 0)
        lengths = np.where(inside, self.indptr[np.minimum(rows, self.n_rows - 1) + 1] - starts, 0) \
            if self.n_rows else np.zeros(len(rows), np.int64)
        if limit is not None:
            lengths = np.minimum(lengths, limit)
        total = int(lengths.sum())
        owner = np.repeat(np.arange(len(rows)), lengths)
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return owner, starts[owner] + offsets


@dataclass
class Config:
    """The serving settings one request uses (the macro's ``cfg``)."""

    w_item: float
    w_user: float
    w_content: float
    w_trend: float
    exclude_seen: bool
    recency: float
    served: int
    max_history: int  # a user counts with its max_history most recent items (0: all)
    suppress_after: int = 0  # no repeats (rtsql.suppression): 0 off
    suppress_hours: float = 24.0
    explore: int = 0  # new-item slots: 0 off
    new_days: float = 7.0


@dataclass
class History:
    """A user's current interaction row (``rtsql_user_history``), sorted by item key."""

    items: np.ndarray  # int64
    weights: np.ndarray  # float64
    types: np.ndarray  # event type codes: 1-based positions in Model.event_types
    ts_us: np.ndarray  # int64 epoch microseconds

    @classmethod
    def empty(cls) -> "History":
        return cls(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64),
                   np.empty(0, np.int64))

    def types_of(self, items: np.ndarray) -> np.ndarray:
        """The event type code of each of ``items`` in this history (0: not in it)."""
        if not len(self.items):
            return np.zeros(len(items), np.int64)
        at = np.minimum(np.searchsorted(self.items, items), len(self.items) - 1)
        return np.where(self.items[at] == items, self.types[at], 0)


@dataclass
class Model:
    """What a refresh produced, as arrays; replaced whole after each refresh."""

    watermark: int
    t0: float
    rate: float
    settings: dict
    variants: dict  # name -> (share, overrides)
    buckets: list  # A/B hash bucket -> variant name (ab_buckets; None: no variants)
    verbs: dict  # event type -> past-tense phrase (from rtsql_verb)
    other_verb: str
    event_types: list  # code - 1 -> name; the last one is BASKET_TYPE
    item_lists: Csr  # served item-cf lists (item_neighbor_lists)
    user_lists: Csr  # user_neighbors, every stored rank
    content: Csr  # content_neighbors
    inter: Csr  # interactions by user: item keys, weights
    inter_type: np.ndarray  # event type code of each interactions entry (1-based)
    inter_ts: np.ndarray  # last_ts of each entry, epoch microseconds
    capped: np.ndarray  # entries of inter in their user's capped row (max_history, positive)
    neighbour_rows: Csr  # inter's capped rows: what user-cf takes from each neighbour
    share: np.ndarray  # item_trending.share by item key
    popularity: np.ndarray
    trend_score: np.ndarray
    order_trending: np.ndarray  # item keys by rank_trending
    order_popular: np.ndarray
    max_ranked_item: int  # max(item_key) of item_trending (-1: none)
    titles: dict  # item key -> catalog title
    categories: dict  # category -> sorted item keys
    category_masks: dict = field(default_factory=dict)

    @cached_property
    def type_codes(self) -> dict:
        return {name: code for code, name in enumerate(self.event_types, start=1)}


class ServingState:
    """Every read route's answer, from memory. Build with ``ServingState.load(con)``."""

    def __init__(self, model: Model, user_keys: dict, item_ids: list, item_keys: dict,
                 pending: dict, seen: dict):
        self.model = model
        self.user_keys = user_keys  # user id -> key
        self.user_ids: dict = {k: u for u, k in user_keys.items()}
        self.item_ids = item_ids  # key -> item id (None where no item has the key)
        self.item_keys = item_keys  # item id -> key
        self.pending = pending  # user key -> [(item key, weight, type code, ts_us, event_id)]
        self.pending_events = sum(len(rows) for rows in pending.values())  # /health reads it
        self.seen = seen  # {"event_id", "user_key", "item_key"}: what catch_up has read
        self.impressions = Impressions(0.0, False)  # no repeats: set by load
        self.first_seen_us = np.full(len(item_ids), NO_TIME, np.int64)  # per item key

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, con) -> "ServingState":
        """Read the serving tables in one read transaction (a consistent snapshot)."""
        cur = con.cursor()
        try:
            cur.execute("begin transaction")
            try:
                state = cls._load(cur)
            finally:
                cur.execute("rollback")
        finally:
            cur.close()
        return state

    @classmethod
    def _load(cls, con) -> "ServingState":
        values = settings_mod.get_all(con)
        state = dict(con.execute("select name, value from model_state").fetchall())
        watermark = int(state.get("watermark", -1))
        types = [r[0] for r in con.execute(
            "select event_type from event_types order by event_type").fetchall()]
        types.append(BASKET_TYPE)
        verbs = dict(con.execute(
            "select t, rtsql_verb(t) from unnest(?::VARCHAR[]) u(t)", [types]).fetchall())
        other_verb = con.execute("select rtsql_verb(NULL::VARCHAR)").fetchall()[0][0]
        variants = {name: (share, json.loads(text)) for name, share, text in con.execute(
            "select name, share, settings::VARCHAR from ab_variants order by name").fetchall()}
        buckets = allocation.read_buckets(con)
        n_items = con.execute("select coalesce(max(item_key), -1) + 1 from items").fetchall()[0][0]
        n_users = con.execute("select coalesce(max(user_key), -1) + 1 from users").fetchall()[0][0]

        served = arrow_table(con, "select item_key, neighbor_keys, scores "
                                  "from item_neighbor_lists order by item_key")
        keys_col = served.column("neighbor_keys")
        rows = np.repeat(served.column("item_key").to_numpy().astype(np.int64),
                         _list_lengths(keys_col))
        item_lists = Csr.from_sorted(rows, _flat(keys_col),
                                     _flat(served.column("scores"), np.float64), n_items)

        # Arrow, not fetchnumpy: four times faster at millions of rows
        un = _columns(con, "select user_key, neighbor_key, score from user_neighbors "
                           "order by user_key, rank")
        user_lists = Csr.from_sorted(un["user_key"], un["neighbor_key"], un["score"], n_users)
        cn = _columns(con, "select item_key, neighbor_key, score from content_neighbors "
                           "order by item_key, rank")
        content = Csr.from_sorted(cn["item_key"], cn["neighbor_key"], cn["score"], n_items)
        it = _columns(con, "select user_key, item_key, weight, "
                           "coalesce(list_position(?::VARCHAR[], last_event_type), 0) as t, "
                           "epoch_us(last_ts) as ts from interactions order by user_key, item_key",
                      [types])
        inter = Csr.from_sorted(it["user_key"], it["item_key"], it["weight"], n_users)
        inter_ts = np.asarray(it["ts"], np.int64)
        capped = _capped(inter.indptr, inter.keys, inter.values, inter_ts,
                         int(values["max_history"]))
        neighbour_rows = Csr.from_sorted(it["user_key"][capped], inter.keys[capped],
                                         inter.values[capped], n_users)

        # rtsql.scoring relies on it (item-cf lists may be signed: ease's weights)
        if len(item_lists.values) and not np.all(np.isfinite(item_lists.values)):
            raise ModelError("item_neighbors holds a score that is not finite, which rtsql "
                             "never writes: run `rtsql refresh --full`")
        for name, lists in (("user_neighbors", user_lists), ("content_neighbors", content)):
            if len(lists.values) and not lists.values.min() > 0:
                raise ModelError(f"{name} holds a score <= 0, which rtsql never writes: run "
                                 "`rtsql refresh --full`")
        tr = con.execute("select item_key, share, popularity, score, rank_trending, rank_popular "
                         "from item_trending").fetchnumpy()
        share, popularity, trend_score = (np.zeros(n_items), np.zeros(n_items, np.int64),
                                          np.zeros(n_items))
        keys = tr["item_key"].astype(np.int64)
        share[keys], popularity[keys], trend_score[keys] = tr["share"], tr["popularity"], tr["score"]
        order_trending = keys[np.argsort(tr["rank_trending"], kind="stable")]
        order_popular = keys[np.argsort(tr["rank_popular"], kind="stable")]

        catalog = con.execute("select item_key, title, category from item_catalog").fetchall()
        titles = {k: t for k, t, _ in catalog if t is not None}
        categories: dict = {}
        for k, _, c in catalog:
            if c is not None:
                categories.setdefault(c, []).append(k)
        categories = {c: np.sort(np.array(ks, np.int64)) for c, ks in categories.items()}

        model = Model(
            watermark=watermark, t0=float(state.get("t0", 0)),
            rate=float(state.get("decay_rate", 0)), settings=values, variants=variants,
            buckets=buckets,
            verbs=verbs, other_verb=other_verb, event_types=types, item_lists=item_lists,
            user_lists=user_lists, content=content, inter=inter,
            inter_type=np.asarray(it["t"], np.int64), inter_ts=inter_ts, capped=capped,
            neighbour_rows=neighbour_rows,
            share=share, popularity=popularity, trend_score=trend_score,
            order_trending=order_trending, order_popular=order_popular,
            max_ranked_item=int(keys.max()) if len(keys) else -1, titles=titles,
            categories=categories)
        users = arrow_table(con, "select user_key, user_id from users")
        user_keys = dict(zip(users.column("user_id").to_pylist(),
                             users.column("user_key").to_pylist()))
        items = arrow_table(con, "select item_key, item_id from items")
        item_ids: list = [None] * n_items
        item_keys = dict(zip(items.column("item_id").to_pylist(),
                             items.column("item_key").to_pylist()))
        for i, key in item_keys.items():
            item_ids[key] = i
        result = cls(model, user_keys, item_ids, item_keys, {},
                     {"event_id": watermark, "user_key": n_users - 1, "item_key": n_items - 1})
        result.availability = Availability.load(con)
        result.impressions = Impressions.load(con, values, variants)
        result.read_first_seen(con, 0)
        result.catch_up(con)
        return result

    def catch_up(self, con) -> int:
        """Append what was committed since the last look: new items, new users, and events
        after the refresh watermark, each with the weight the database computes for it.
        Returns the number of new events. Called by the one writer, after each commit."""
        items, users, events = self.read_new(con)
        self.add_ids(items, users)
        if items:
            self.read_first_seen(con, items[0][0])
        pending = self.pending
        code = self.model.type_codes
        for event_id, user, item, event_type, ts, weight in events:  # add_event, inlined
            rows = pending.get(user)
            if rows is None:
                rows = pending[user] = []
            rows.append((item, weight, code.get(event_type, 0), ts, event_id))
        if events:
            self.seen["event_id"] = max(self.seen["event_id"], events[-1][0])
            self.impressions.catch_up(events)  # a click or better answers what was shown
        self.pending_events += len(events)
        return len(events)

    def read_new(self, con) -> tuple[list, list, list]:
        """(new items, new users, new events) since the last look, without applying them:
        a replay reveals them one event at a time (``add_ids``, ``add_event``)."""
        items = con.execute("select item_key, item_id from items where item_key > ? "
                            "order by item_key", [self.seen["item_key"]]).fetchall()
        users = con.execute("select user_key, user_id from users where user_key > ? "
                            "order by user_key", [self.seen["user_key"]]).fetchall()
        m = self.model
        events = con.execute(
            "select e.event_id, e.user_key, e.item_key, e.event_type, epoch_us(e.ts), "
            "rtsql_event_weight(et.weight, et.uses_value, e.value, e.ts, ?, ?) "
            "from events e join event_types et using (event_type) "
            "where e.event_id > ? order by e.event_id",
            [m.rate, m.t0, self.seen["event_id"]]).fetchall()
        return items, users, events

    def read_first_seen(self, con, from_key: int) -> None:
        """Each item's first_seen (epoch microseconds; NO_TIME where unknown) from key
        ``from_key`` on, for the new-item slots."""
        rows = con.execute("select item_key, epoch_us(first_seen) from items "
                           "where item_key >= ? and first_seen is not null", [from_key]
                           ).fetchnumpy()
        size = len(self.item_ids)
        if len(self.first_seen_us) < size:
            grown = np.full(size, NO_TIME, np.int64)
            grown[:len(self.first_seen_us)] = self.first_seen_us
            self.first_seen_us = grown
        self.first_seen_us[rows["item_key"].astype(np.int64)] = rows["epoch_us(first_seen)"]

    def impressions_added(self, con, sources: list[str]) -> None:
        """After impressions from ``sources`` committed (called by the one writer): their
        users' unanswered impressions are read again."""
        if self.impressions.enabled:
            users = [r[0] for r in con.execute(
                "select distinct user_key from impressions where source in "
                "(select unnest(?::VARCHAR[]))", [sources]).fetchall()]
            self.impressions.read(con, users)

    def reload_availability(self, con) -> None:
        """After a change of item_availability committed (called by the one writer)."""
        self.availability = Availability.load(con)

    def add_ids(self, items: list, users: list) -> None:
        """New (key, id) pairs of items and users, in key order."""
        for k, i in items:  # items first: an event never names an item the maps lack
            self.item_ids.extend([None] * (k + 1 - len(self.item_ids)))
            self.item_ids[k] = i
            self.item_keys[i] = k
            self.seen["item_key"] = max(self.seen["item_key"], k)
        for k, u in users:
            self.user_keys[u] = k
            self.user_ids[k] = u
            self.seen["user_key"] = max(self.seen["user_key"], k)

    def add_event(self, event: tuple) -> None:
        """One (event_id, user key, item key, type, ts_us, weight) row into the overlay."""
        event_id, user, item, event_type, ts, weight = event
        self.pending.setdefault(user, []).append(
            (item, weight, self.model.type_codes.get(event_type, 0), ts, event_id))
        self.pending_events += 1
        self.seen["event_id"] = max(self.seen["event_id"], event_id)

    # ------------------------------------------------------------------ lookups

    def user_key(self, user_id: str) -> int | None:
        return self.user_keys.get(clean_id(user_id))

    def keys_of(self, column: str, ids: list[str]) -> list[int | None]:
        """The keys of stored ids in the users ("user_id") or items dictionary, None where
        the id has none (ingest_bodies' known_keys: the writer's batches skip the dictionary
        joins when every id is known)."""
        keys = self.user_keys if column == "user_id" else self.item_keys
        return [keys.get(i) for i in ids]

    def history(self, user_key: int | None) -> History:
        """``rtsql_user_history``: the refreshed row plus the pending events, per item: weights
        added with fsum, the type of the latest event (ties: the later event), latest ts."""
        if user_key is None:
            return History.empty()
        m = self.model
        if user_key < m.inter.n_rows:
            lo, hi = m.inter.indptr[user_key], m.inter.indptr[user_key + 1]
        else:
            lo = hi = 0
        items, weights = m.inter.keys[lo:hi], m.inter.values[lo:hi]
        ts = m.inter_ts[lo:hi]
        types = m.inter_type[lo:hi]
        pending = self.pending.get(user_key)
        if not pending:
            return History(items, weights, types, ts)
        # the refreshed row counts as earlier than every pending event at the same ts
        from .scoring import merge_history

        # (item, weight, type code, ts, event id) per event; every value is below 2^53
        extra = np.array(list(pending), np.float64)  # a snapshot: the writer appends
        return History(*merge_history(
            np.concatenate((items, extra[:, 0].astype(np.int64))),
            np.concatenate((weights, extra[:, 1])),
            np.concatenate((types, extra[:, 2].astype(np.int64))),
            np.concatenate((ts, extra[:, 3].astype(np.int64))),
            np.concatenate((np.full(len(items), -1, np.int64), extra[:, 4].astype(np.int64)))))

    def basket(self, item_ids: list[str]) -> History:
        """``recommend_for_items``: the known items, weight 1, type 'basket', one time."""
        item_ids = [clean_id(i) for i in item_ids]
        keys = sorted({self.item_keys[i] for i in item_ids if i in self.item_keys})
        return History(np.array(keys, np.int64), np.ones(len(keys)),
                       np.full(len(keys), len(self.model.event_types), np.int64),
                       np.zeros(len(keys), np.int64))

    def config(self, strategy: str, variant: str | None) -> Config:
        """The macro's ``cfg``: settings, a variant's overrides, one strategy alone."""
        m = self.model
        overrides = m.variants.get(variant, (0, {}))[1] if variant is not None else {}

        def value(name):
            raw = overrides.get(name)
            return settings_mod.parse(name, str(raw)) if raw is not None else m.settings[name]

        w = blend_weights(strategy, value)
        return Config(w["w_item"], w["w_user"], w["w_content"], w["w_trend"],
                      bool(value("exclude_seen")), float(value("recency_half_life_days")),
                      int(m.settings["neighbors"]), int(m.settings["max_history"]),
                      int(value("suppress_after_impressions")),
                      float(value("suppress_window_hours")), int(value("explore_new_items")),
                      float(value("new_item_days")))

    def ab_variant(self, user_id: str) -> str | None:
        """The ``ab_variant`` macro: the owner of the id's hash bucket."""
        return self.model.buckets[allocation.bucket_of(user_id)]

    # ------------------------------------------------------------------ routes

    def recommend(self, user_id: str, k: int = DEFAULT_K, *, exclude: list[str] | None = None,
                  category: str | None = None, strategy: str = DEFAULT_STRATEGY,
                  variant: str | None = None) -> Rows:
        check_request(k, strategy)
        if variant == "auto":
            variant = self.ab_variant(user_id)
        user_key = self.user_key(user_id)
        return self._recommend(user_key, self.history(user_key), k, exclude, category,
                               self.config(strategy, variant))

    def recommend_for_items(self, item_ids: list[str], k: int = DEFAULT_K, *,
                            exclude: list[str] | None = None, category: str | None = None,
                            strategy: str = DEFAULT_STRATEGY, variant: str | None = None) -> Rows:
        check_request(k, strategy)
        return self._recommend(None, self.basket(item_ids), k, exclude, category,
                               self.config(strategy, variant))

    def similar_items(self, item_id: str, k: int = DEFAULT_K, by: str = DEFAULT_METHOD
                      ) -> Rows:
        check_method(by)
        check_request(k)
        key = self.item_keys.get(clean_id(item_id))
        if key is None:
            raise UnknownItem(f"no item {item_id!r} in the events or the catalog")
        lists = self.model.item_lists if by == SIMILAR_METHODS[0] else self.model.content
        _, pos = lists.expand(np.array([key]))
        pos = pos[~np.isin(lists.keys[pos], self.availability.unavailable())][:k]
        return Rows(["rank", "item_id", "score"],
                    [(r + 1, self.item_ids[n], s) for r, (n, s) in
                     enumerate(zip(lists.keys[pos].tolist(), lists.values[pos].tolist()))])

    def similar_users(self, user_id: str, k: int = DEFAULT_K) -> Rows:
        check_request(k)
        key = self.user_key(user_id)
        if key is None:
            raise UnknownUser(f"no user {user_id!r} in the events")
        _, pos = self.model.user_lists.expand(np.array([key]),
                                              min(k, int(self.model.settings["neighbors"])))
        lists = self.model.user_lists
        return Rows(["rank", "user_id", "score"],
                    [(r + 1, self.user_ids.get(n), s) for r, (n, s) in
                     enumerate(zip(lists.keys[pos].tolist(), lists.values[pos].tolist()))
                     if n in self.user_ids])

    def trending(self, k: int = DEFAULT_K) -> Rows:
        check_request(k)
        m = self.model
        unavailable = self.availability.unavailable()
        top = m.order_trending[:k + len(unavailable)]
        top = top[(m.popularity[top] > 0) & ~np.isin(top, unavailable)][:k]
        return Rows(["rank", "item_id", "score"],
                    [(r + 1, self.item_ids[i], s) for r, (i, s) in
                     enumerate(zip(top.tolist(), m.trend_score[top].tolist()))])

    def recent_history(self, user_id: str, limit: int) -> dict:
        """A user's most recent items (what recommend() scores: the refreshed row and the
        events since), newest first, with the item's title, latest event type and weight; the
        history's length and the id's A/B variant."""
        key = self.user_key(user_id)
        if key is None:
            raise UnknownUser(f"no user {user_id!r} in the events")
        history, m = self.history(key), self.model
        order = np.argsort(-history.ts_us, kind="stable")[:limit]
        rows = [{"item_id": self.item_ids[int(history.items[i])],
                 "title": m.titles.get(int(history.items[i])),
                 "event_type": (m.event_types[int(history.types[i]) - 1]
                                if history.types[i] > 0 else None),
                 "weight": round(float(history.weights[i]), 6),
                 "ts_us": int(history.ts_us[i])} for i in order]
        return {"user_id": clean_id(user_id), "items_in_history": int(len(history.items)),
                "history": rows, "variant": self.ab_variant(clean_id(user_id))}

    def item_stats(self, item_id: str) -> dict:
        """An item's key, whether it is available now, its popularity (users) and its rank
        in trending (None when it has no events in the trending tables)."""
        key = self.item_keys.get(clean_id(item_id))
        if key is None:
            raise UnknownItem(f"no item {item_id!r} in the events or the catalog")
        m = self.model
        ranked = key <= m.max_ranked_item and m.popularity[key] > 0
        return {"item_key": key,
                "available": not bool(np.isin(key, self.availability.unavailable())),
                "popularity": int(m.popularity[key]) if key < len(m.popularity) else 0,
                "trending_rank": (int(np.flatnonzero(m.order_trending == key)[0]) + 1
                                  if ranked else None)}

    def most_active_users(self, n: int) -> list[str]:
        """The ``n`` users with the longest refreshed histories."""
        lengths = np.diff(self.model.inter.indptr)
        top = np.argsort(-lengths, kind="stable")[:n]
        return [self.user_ids[int(k)] for k in top
                if int(k) in self.user_ids and lengths[k] > 0]

    # ------------------------------------------------------------------ the scorer

    def _recommend(self, user_key, hist: History, k: int, exclude, category,
                   cfg: Config) -> Rows:
        """The macro's steps for one user, compiled (rtsql.scoring.score_user)."""
        n_items = len(self.item_ids)
        exclude = [clean_id(i) for i in exclude] if exclude else exclude
        excluded = np.array([self.item_keys[i] for i in exclude if i in self.item_keys]
                            if exclude else [], np.int64)
        excluded = np.concatenate([excluded, self._left_out(
            user_key, cfg, self.availability.unavailable())])
        allowed = _NO_MASK if category is None else self._category_mask(category, n_items)
        keys, scores, parts, sources = self._score(user_key, hist, excluded, allowed, k, cfg)
        codes = hist.types_of(sources).tolist()  # the history item's event type, per row
        return Rows(COLUMNS, [
            (rank, self.item_ids[key], score, self._reason(part, source, code))
            for rank, (key, score, part, source, code) in enumerate(zip(
                keys.tolist(), scores.tolist(), parts.tolist(), sources.tolist(), codes),
                start=1)])

    def _score(self, user_key, hist: History, excluded: np.ndarray, allowed: np.ndarray,
               k: int, cfg: Config) -> tuple:
        """score_user's top k, then the new-item slots: (keys, scores, parts, because)."""
        from . import scoring

        n_items = len(self.item_ids)
        keys, scores, parts, because = (np.empty(k, np.int64), np.empty(k),
                                        np.empty(k, np.int64), np.empty(k, np.int64))
        scratch = scoring.Scratch.per_thread(_LOCAL, n_items + 1)
        weights = _query_weights(hist, cfg)
        blend, arrays = self._kernel_args(cfg)
        rows = scoring.score_user(
            -1 if user_key is None else user_key, hist.items, weights, excluded, allowed, k,
            blend, arrays, scratch.arrays(), keys, scores, parts, because)
        out = keys[:rows], scores[:rows], parts[:rows], because[:rows]
        return self._new_item_slots(hist, weights, cfg, excluded, allowed, k, *out) \
            if cfg.explore > 0 else out

    def _left_out(self, user_key, cfg: Config, unavailable: np.ndarray) -> np.ndarray:
        """The items no list of this user may hold, whatever the request: unavailable ones
        and the user's suppressed repeats."""
        suppressed = self.impressions.suppressed(user_key, cfg.suppress_after,
                                                 cfg.suppress_hours)
        return np.concatenate([unavailable, suppressed]) if len(suppressed) else unavailable

    def _new_item_slots(self, hist: History, weights: np.ndarray, cfg: Config,
                        excluded: np.ndarray, allowed: np.ndarray, k: int, keys, scores, parts,
                        because) -> tuple:
        """The macro's is_new, slots and listed: while fewer than explore_new_items of the
        list's rows are items first seen within new_item_days, the best other new items
        (content sum from the history, then newest, then key) take the last rows that are
        not new, or rows the list did not fill."""
        cutoff = int(time.time() * 1e6) - round(cfg.new_days * 86400e6)
        fresh = np.flatnonzero(self.first_seen_us > cutoff)
        is_new = np.isin(keys, fresh)
        want = min(cfg.explore, k) - int(is_new.sum())
        if not len(fresh) or want <= 0:
            return keys, scores, parts, because
        barred = [keys, excluded] + ([hist.items] if cfg.exclude_seen else [])
        candidates = fresh[~np.isin(fresh, np.concatenate(barred))]
        if len(allowed):
            candidates = candidates[allowed[candidates]]
        if not len(candidates):
            return keys, scores, parts, because
        sums = self._content_sums(hist, weights, cfg, candidates)
        picks = np.array(sorted(candidates.tolist(), key=lambda c: (
            -sums.get(c, 0.0), -int(self.first_seen_us[c]), c))[:want], np.int64)
        keep = np.ones(len(keys), bool)
        room = len(picks) - (k - len(keys))  # the rows the slots take from the list
        if room > 0:
            keep[np.flatnonzero(~is_new)[::-1][:room]] = False
        n = len(picks)
        return (np.concatenate([keys[keep], picks]), np.concatenate([scores[keep], np.zeros(n)]),
                np.concatenate([parts[keep], np.full(n, PART_NEW, np.int64)]),
                np.concatenate([because[keep], np.full(n, -1, np.int64)]))

    def _content_sums(self, hist: History, weights: np.ndarray, cfg: Config,
                      candidates: np.ndarray) -> dict:
        """The content strategy's sum (the macro's content_s) of each of ``candidates`` that
        it scores: fsum of h.w x score over the history's content lists (``weights``: h.w,
        _query_weights of ``hist``)."""
        if cfg.w_content <= 0 or not len(hist.items):
            return {}
        content, wanted, terms = self.model.content, set(candidates.tolist()), {}
        for item, w in zip(hist.items.tolist(), weights.tolist()):
            if not w > 0 or item >= content.n_rows:  # not in h
                continue
            lo, hi = content.indptr[item], content.indptr[item + 1]
            for nb, score in zip(content.keys[lo:hi].tolist(), content.values[lo:hi].tolist()):
                if nb in wanted:
                    terms.setdefault(nb, []).append(w * score)
        return {key: math.fsum(values) for key, values in terms.items()}

    def _kernel_args(self, cfg: Config) -> tuple:
        """The request's Blend and the model's Arrays, as score_user takes them."""
        from .scoring import Arrays, Blend

        m = self.model
        return (Blend(cfg.w_item, cfg.w_user, cfg.w_content, cfg.w_trend, cfg.exclude_seen,
                      cfg.served),
                Arrays(*m.item_lists.arrays(), *m.user_lists.arrays(), *m.content.arrays(),
                       *m.neighbour_rows.arrays(), m.share, m.popularity,
                       m.order_trending if cfg.w_trend > 0 else m.order_popular,
                       m.max_ranked_item + 1, len(self.item_ids)))

    def recommend_all(self, k: int, strategy: str, threads: int = 1,
                      progress=None) -> dict[str, np.ndarray]:
        """Every user's top-k (``recommend(user, k, strategy=strategy)`` for each) as flat
        arrays: user_key, rank, item_key, score, part (rtsql.scoring.PART_*), because (item
        key or -1) and because_type (event type code, 0: none), on ``threads`` threads."""
        from . import scoring

        check_request(k, strategy)
        m = self.model
        cfg = self.config(strategy, None)
        n_items = len(self.item_ids)
        users = np.array(sorted(self.user_ids), np.int64)
        # users with pending events go one by one (their history is not a row of the matrix;
        # a user past the matrix with none has an empty one), and so do users with repeats
        # to leave out (their own excluded items), or everyone when new-item slots are on
        if cfg.explore > 0:
            alone = set(self.user_ids)
        else:
            repeats = {u for u in self.impressions.by_user if len(self.impressions.suppressed(
                u, cfg.suppress_after, cfg.suppress_hours))}
            alone = (set(self.pending) | repeats) & self.user_ids.keys()
        fresh = np.array(sorted(alone), np.int64)
        users = np.setdiff1d(users, fresh)
        weights = _row_weights(m, cfg)
        out = {"keys": np.empty((len(users), k), np.int64), "score": np.empty((len(users), k)),
               "part": np.empty((len(users), k), np.int64),
               "because": np.empty((len(users), k), np.int64),
               "because_type": np.empty((len(users), k), np.int64),
               "rows": np.zeros(len(users), np.int64)}
        blend, arrays = self._kernel_args(cfg)
        unavailable = self.availability.unavailable()
        chunks = [slice(lo, min(lo + 2048, len(users))) for lo in range(0, len(users), 2048)]
        done = [0]

        def run(part: slice) -> None:
            scratch = scoring.Scratch.per_thread(_LOCAL, n_items + 1)
            scoring.score_users(users[part], m.inter.indptr, m.inter.keys, weights,
                                m.inter_type, unavailable, k, blend, arrays, scratch.arrays(),
                                *(out[name][part] for name in ("keys", "score", "part",
                                                               "because", "because_type",
                                                               "rows")))
            done[0] += part.stop - part.start
            if progress:
                progress(done[0], len(users) + len(fresh))

        if threads > 1 and len(chunks) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(run, chunks))
        else:
            for part in chunks:
                run(part)
        used = np.arange(k)[None, :] < out["rows"][:, None]
        result = {"user_key": np.repeat(users, out["rows"]),
                  "rank": np.broadcast_to(np.arange(1, k + 1), used.shape)[used],
                  "item_key": out["keys"][used], "score": out["score"][used],
                  "part": out["part"][used], "because": out["because"][used],
                  "because_type": out["because_type"][used]}
        extra = [self._recommend_codes(int(u), k, cfg, unavailable) for u in fresh.tolist()]
        if extra:
            for name in result:
                result[name] = np.concatenate([result[name]] + [e[name] for e in extra])
        if progress and len(fresh):
            progress(len(users) + len(fresh), len(users) + len(fresh))
        return result

    def _recommend_codes(self, user_key: int, k: int, cfg: Config, unavailable: np.ndarray
                         ) -> dict[str, np.ndarray]:
        """One user's rows as recommend_all gives them (for users with pending events), with
        the same items left out as its other users."""
        hist = self.history(user_key)
        keys, scores, parts, because = self._score(
            user_key, hist, self._left_out(user_key, cfg, unavailable), _NO_MASK, k, cfg)
        rows = len(keys)
        return {"user_key": np.full(rows, user_key, np.int64),
                "rank": np.arange(1, rows + 1), "item_key": keys, "score": scores,
                "part": parts, "because": because, "because_type": hist.types_of(because)}

    def _category_mask(self, category: str, n_items: int) -> np.ndarray:
        masks = self.model.category_masks
        mask = masks.get(category)
        if mask is None or len(mask) < n_items + 1:
            mask = np.zeros(n_items + 1, bool)
            mask[self.model.categories.get(category, np.empty(0, np.int64))] = True
            masks[category] = mask
        return mask

    def _reason(self, part: int, source: int, code: int) -> str:
        """The macro's reason text (``rtsql_reason``): the strategy that added the most, and
        its history item ``source`` with that item's event type ``code``."""
        if part == PART_ITEM:
            return f"item-cf: because you {self._verb(code)} {self._title(source)}"
        if part == PART_CONTENT:
            return f"content: similar to {self._title(source)}, which you {self._verb(code)}"
        if part == PART_USER:
            return "user-cf: people with similar taste liked it"
        if part == PART_NEW:
            return "new: recently added"
        return "trending: popular right now" if part == PART_TRENDING else \
            "popular: most events overall"

    def _verb(self, code: int) -> str:
        m = self.model
        return m.verbs.get(m.event_types[code - 1], m.other_verb) if code > 0 else m.other_verb

    def _title(self, key: int) -> str:
        return self.model.titles.get(key) or self.item_ids[key]


_LOCAL = threading.local()  # each thread's rtsql.scoring.Scratch
_NO_MASK = np.empty(0, bool)  # "every item" for score_user's category mask
NO_TIME = np.iinfo(np.int64).min  # an item's first_seen, unknown


def _query_weights(hist: History, cfg: Config) -> np.ndarray:
    """The macro's ``h``: the positive weights among the user's max_history most recent items
    (by time, then key, descending), times 2^-(age / recency half-life) when query-time
    recency is on (age against the newest of them); NaN marks the entries that are not in h
    (they only count as seen)."""
    keep = _capped(np.array([0, len(hist.items)], np.int64), hist.items, hist.weights,
                   hist.ts_us, cfg.max_history)  # the history as a one-row matrix
    return _recency(np.where(keep, hist.weights, np.nan), keep, hist.ts_us,
                    np.zeros(len(keep), np.int64), 1, cfg)


def _row_weights(m: "Model", cfg: Config) -> np.ndarray:
    """_query_weights for every refreshed row of the interaction matrix at once (a row's h
    is its capped row)."""
    rows = np.repeat(np.arange(m.inter.n_rows), np.diff(m.inter.indptr))
    return _recency(np.where(m.capped, m.inter.values, np.nan), m.capped, m.inter_ts, rows,
                    m.inter.n_rows, cfg)


def _recency(w: np.ndarray, keep: np.ndarray, ts_us: np.ndarray, rows: np.ndarray,
             n_rows: int, cfg: Config) -> np.ndarray:
    """w[keep] times 2^-((newest - ts) / (86400 * half-life)), newest per row among keep."""
    if cfg.recency > 0 and keep.any():
        ts = ts_us / 1e6
        newest = np.full(n_rows, -np.inf)
        np.maximum.at(newest, rows[keep], ts[keep])
        w[keep] = w[keep] * np.power(2.0, -(newest[rows[keep]] - ts[keep])
                                     / (86400 * cfg.recency))
    return w


def _capped(indptr: np.ndarray, keys: np.ndarray, values: np.ndarray, ts_us: np.ndarray,
            cap: int) -> np.ndarray:
    """Which entries form each row's capped row: among the row's ``cap`` most recent entries
    (by time, then key, descending; 0: all), the positive ones: refresh's _CAPPED rule."""
    keep = values > 0
    lengths = np.diff(indptr)
    if cap <= 0 or not len(lengths) or lengths.max() <= cap:
        return keep
    rows = np.repeat(np.arange(len(lengths)), lengths)
    heavy = np.flatnonzero(lengths[rows] > cap)
    ranked = heavy[np.lexsort((-keys[heavy], -ts_us[heavy], rows[heavy]))]
    owner = rows[ranked]
    rank = np.arange(len(ranked)) - np.searchsorted(owner, owner)
    keep[ranked[rank >= cap]] = False
    return keep


def _columns(con, sql: str, params=None) -> dict[str, np.ndarray]:
    """A query's columns as numpy arrays, through Arrow."""
    table = arrow_table(con, sql, params)
    # writable always (a one-chunk column converts read-only, zero-copy): the compiled
    # scorer is specialized per array flags, and one kind keeps it to one specialization
    return {name: np.require(table.column(name).to_numpy(), requirements="W")
            for name in table.column_names}


def _flat(column, dtype=np.int64) -> np.ndarray:
    """The values of a chunked Arrow list column, flattened."""
    chunks = [c.flatten().to_numpy(zero_copy_only=False) for c in column.chunks]
    return np.concatenate(chunks).astype(dtype) if chunks else np.empty(0, dtype)


def _list_lengths(column) -> np.ndarray:
    chunks = [np.diff(c.offsets.to_numpy()) for c in column.chunks]
    return np.concatenate(chunks).astype(np.int64) if chunks else np.empty(0, np.int64)
