"""The serving state: what the read routes answer from, loaded into memory and kept current.

``State.load(con)`` reads what the SQL macros read (the served neighbour lists, the
interaction matrix, the backfill orders, ids and catalog fields) into arrays once, in one read
transaction. ``catch_up(con)`` reads what was committed after that (new events with their
weights computed by the database's own ``rtsql_event_weight``, new users and items) and
appends it to a small per-user overlay; the writer calls it after every ingest, so a request
that follows a committed write sees it. After an incremental refresh the service takes only
what it rewrote (``advanced_model``: the rows of the lists and of the interaction matrix it
changed, spliced into the arrays, and the small tables read again; ``with_model``: the overlay
without what the refresh folded in); after a full one it loads a new state
(rtsql.service). The answers themselves are rtsql.serving's.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numba import njit

from . import allocation
from . import settings as settings_mod
from .availability import Availability
from .errors import ModelError
from .recency import most_recent
from .sqlutil import arrow_table, clean_id, keys_column, read_snapshot, registered
from .suppression import Impressions
from .vocabulary import blend_weights

# the items of recommend_for_items() count as a history with this event type and time
BASKET_TYPE = "basket"
NO_TIME = np.iinfo(np.int64).min  # an item's first_seen, unknown


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

    def grown(self, n_rows: int) -> "Csr":
        """The same entries over at least ``n_rows`` rows (the new ones empty)."""
        if n_rows <= self.n_rows:
            return self
        return Csr(np.r_[self.indptr, np.full(n_rows - self.n_rows, self.indptr[-1])],
                   self.keys, self.values)

    def with_rows(self, rows: np.ndarray, new: "Csr", n_rows: int, extra: tuple = ()
                  ) -> tuple["Csr", list]:
        """This matrix with each of ``rows`` replaced whole by its row of ``new`` (which
        holds no other row; empty where it has none), over at least ``n_rows`` rows; and
        each (old, new) pair of arrays of ``extra``, aligned with the entries of this matrix
        and of ``new``, spliced alike. Linear in the entries: no sort."""
        n = max(n_rows, self.n_rows, new.n_rows)
        replaced = np.zeros(n, bool)
        replaced[np.asarray(rows, np.int64)] = True
        counts = np.zeros(n, np.int64)
        counts[:self.n_rows] = np.diff(self.indptr)
        counts[replaced] = 0
        counts[:new.n_rows] += np.diff(new.indptr)
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])

        def spliced(before: np.ndarray, after: np.ndarray) -> np.ndarray:
            out = np.empty(indptr[-1], before.dtype)
            _splice(self.indptr, before, new.indptr, after, replaced, indptr, out)
            return out

        return (Csr(indptr, spliced(self.keys, new.keys), spliced(self.values, new.values)),
                [spliced(before, after) for before, after in extra])

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
    types: np.ndarray  # event type codes: 1-based positions in Refreshed.event_types
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
class Refreshed:
    """What the last refresh produced, loaded as arrays; a new one after each refresh (arrays
    it did not change are shared with the previous one, never written)."""

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


class State:
    """The loaded model, the id dictionaries and the overlay of events since the refresh.
    Build with ``load(con)`` (rtsql.serving.ServingState adds the answers)."""

    def __init__(self, model: Refreshed, user_keys: dict, item_ids: list, item_keys: dict,
                 pending: dict, seen: dict, user_ids: dict | None = None):
        self.model = model
        self.user_keys = user_keys  # user id -> key
        self.user_ids: dict = user_ids if user_ids is not None else \
            {k: u for u, k in user_keys.items()}
        self.item_ids = item_ids  # key -> item id (None where no item has the key)
        self.item_keys = item_keys  # item id -> key
        self.pending = pending  # user key -> [(item key, weight, type code, ts_us, event_id)]
        self.pending_events = sum(len(rows) for rows in pending.values())  # /health reads it
        self.seen = seen  # {"event_id", "user_key", "item_key"}: what catch_up has read
        self.impressions = Impressions(0.0, False)  # no repeats: set by load
        self.first_seen_us = np.full(len(item_ids), NO_TIME, np.int64)  # per item key

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, con) -> "State":
        """Read the serving tables in one read transaction (a consistent snapshot)."""
        with read_snapshot(con) as cur:
            return cls._load(cur)

    @classmethod
    def _load(cls, con) -> "State":
        small = _small_tables(con)
        n_items, n_users, types = small["n_items"], small["n_users"], small["event_types"]
        item_lists = _item_lists(con, n_items)
        user_lists = _user_lists(con, n_users)
        content = _content_lists(con, n_items)
        inter = _interactions(con, types, n_users,
                              int(small["model"]["settings"]["max_history"]))
        model = Refreshed(
            **small["model"], item_lists=item_lists, user_lists=user_lists, content=content,
            **inter, **_trending(con, n_items), **_catalog(con))
        _check(model)
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
                     {"event_id": model.watermark, "user_key": n_users - 1,
                      "item_key": n_items - 1})
        result.availability = Availability.load(con)
        result.impressions = Impressions.load(con, model.settings, model.variants)
        result.read_first_seen(con, 0)
        result.catch_up(con)
        return result

    def advanced_model(self, con, since: int, item_rows: np.ndarray | None,
                       user_rows: np.ndarray, users: np.ndarray, content: bool
                       ) -> "Refreshed | None":
        """The model after an incremental refresh that started from this state's watermark
        (``since``) and rewrote only ``item_rows`` of the served item lists (None: all),
        ``user_rows`` of user_neighbors, the interaction rows of ``users`` and, if
        ``content``, the content lists: those read in one read transaction and spliced into
        this state's arrays, the small tables (trending, settings, variants) read whole.
        None when that would not equal a load (another refresh came between, the decay
        landmark or the event types changed): then load it whole. Needs no lock: the
        arrays it starts from are never written."""
        with read_snapshot(con) as cur:
            return self._advanced(cur, since, item_rows, user_rows, users, content)

    def _advanced(self, con, since, item_rows, user_rows, users, content):
        m = self.model
        small = _small_tables(con)
        model = small["model"]
        overrides = {name: settings for name, (_, settings) in model["variants"].items()}
        if (since != m.watermark or small["event_types"] != m.event_types
                or (model["t0"], model["rate"]) != (m.t0, m.rate)
                or model["settings"] != m.settings  # (what the impressions were read with)
                or overrides != {name: settings for name, (_, settings) in m.variants.items()}):
            return None
        n_items, n_users = small["n_items"], small["n_users"]
        if item_rows is None:
            item_lists = _item_lists(con, n_items)
        elif not len(item_rows):
            item_lists = m.item_lists.grown(n_items)
        else:
            item_lists = m.item_lists.with_rows(
                item_rows, _item_lists(con, n_items, item_rows), n_items)[0]
        user_lists = m.user_lists.with_rows(user_rows, _user_lists(con, n_users, user_rows),
                                            n_users)[0]
        changed = _interactions(con, m.event_types, n_users,
                                int(model["settings"]["max_history"]), users)
        inter, (inter_type, inter_ts, capped) = m.inter.with_rows(
            users, changed["inter"], n_users,
            ((m.inter_type, changed["inter_type"]), (m.inter_ts, changed["inter_ts"]),
             (m.capped, changed["capped"])))
        kept = dict(item_lists=item_lists, user_lists=user_lists,
                    content=_content_lists(con, n_items) if content else m.content.grown(n_items),
                    inter=inter, inter_type=inter_type, inter_ts=inter_ts, capped=capped,
                    neighbour_rows=_neighbour_rows(inter, capped, n_users),
                    **_trending(con, n_items))
        if content:
            kept.update(_catalog(con))
        else:
            kept.update(titles=m.titles, categories=m.categories,
                        category_masks=m.category_masks)
        advanced = Refreshed(**model, **kept)
        _check(advanced)
        return advanced

    def with_model(self, model: "Refreshed", users: np.ndarray) -> "State":
        """This state over ``model`` (advanced_model's), its id dictionaries shared, its
        overlay without the events the model now holds (those of ``users`` up to its
        watermark). Call it where catch_up runs (the writer lock): it reads the overlay."""
        pending = dict(self.pending)
        for user in users.tolist():
            rows = pending.get(user)
            if rows is not None:
                later = [row for row in rows if row[4] > model.watermark]
                if later:
                    pending[user] = later
                else:
                    del pending[user]
        fresh = type(self)(model, self.user_keys, self.item_ids, self.item_keys, pending,
                           dict(self.seen), self.user_ids)
        fresh.first_seen_us = self.first_seen_us
        fresh.availability = self.availability
        fresh.impressions = self.impressions
        return fresh

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


@njit(nogil=True, cache=True)
def _splice(old_indptr, old, new_indptr, new, replaced, indptr, out):
    """Csr.with_rows' copy: row r of ``out`` (from ``indptr``) is row r of ``new`` where
    ``replaced``, else of ``old`` (empty past either's rows)."""
    for r in range(len(indptr) - 1):
        source, source_indptr = (new, new_indptr) if replaced[r] else (old, old_indptr)
        if r < len(source_indptr) - 1:
            lo, hi = source_indptr[r], source_indptr[r + 1]
            out[indptr[r]:indptr[r] + hi - lo] = source[lo:hi]


def _small_tables(con) -> dict:
    """What a load reads whole however little changed: settings, model_state, event types
    and their verbs, A/B variants and buckets, the key ranges."""
    values = settings_mod.get_all(con)
    state = dict(con.execute("select name, value from model_state").fetchall())
    types = [r[0] for r in con.execute(
        "select event_type from event_types order by event_type").fetchall()]
    types.append(BASKET_TYPE)
    verbs = dict(con.execute(
        "select t, rtsql_verb(t) from unnest(?::VARCHAR[]) u(t)", [types]).fetchall())
    other_verb = con.execute("select rtsql_verb(NULL::VARCHAR)").fetchall()[0][0]
    variants = {name: (share, json.loads(text)) for name, share, text in con.execute(
        "select name, share, settings::VARCHAR from ab_variants order by name").fetchall()}
    return {
        "n_items": con.execute("select coalesce(max(item_key), -1) + 1 from items"
                               ).fetchall()[0][0],
        "n_users": con.execute("select coalesce(max(user_key), -1) + 1 from users"
                               ).fetchall()[0][0],
        "event_types": types,
        "model": dict(watermark=int(state.get("watermark", -1)), t0=float(state.get("t0", 0)),
                      rate=float(state.get("decay_rate", 0)), settings=values,
                      variants=variants, buckets=allocation.read_buckets(con), verbs=verbs,
                      other_verb=other_verb, event_types=types)}


def _only(key: str, rows: np.ndarray | None) -> tuple[str, dict]:
    """A semi join to ``rows`` of ``key`` (none: every row), and its registered keys."""
    if rows is None:
        return "", {}
    return f"semi join _rtsql_rows r on {key} = r.k", keys_column(rows)


def _item_lists(con, n_items: int, rows: np.ndarray | None = None) -> "Csr":
    """The served item-cf lists (item_neighbor_lists), of ``rows`` or all."""
    join, keys = _only("item_key", rows)
    with registered(con, "_rtsql_rows", keys) if keys else contextlib.nullcontext():
        served = arrow_table(con, "select item_key, neighbor_keys, scores "
                                  f"from item_neighbor_lists {join} order by item_key")
    keys_col = served.column("neighbor_keys")
    owner = np.repeat(served.column("item_key").to_numpy().astype(np.int64),
                      _list_lengths(keys_col))
    return Csr.from_sorted(owner, _flat(keys_col), _flat(served.column("scores"), np.float64),
                           n_items)


def _user_lists(con, n_users: int, rows: np.ndarray | None = None) -> "Csr":
    """user_neighbors, every stored rank, of ``rows`` or all."""
    join, keys = _only("user_key", rows)
    # Arrow, not fetchnumpy: four times faster at millions of rows
    with registered(con, "_rtsql_rows", keys) if keys else contextlib.nullcontext():
        un = _columns(con, "select user_key, neighbor_key, score from user_neighbors "
                           f"{join} order by user_key, rank")
    return Csr.from_sorted(un["user_key"], un["neighbor_key"], un["score"], n_users)


def _content_lists(con, n_items: int) -> "Csr":
    cn = _columns(con, "select item_key, neighbor_key, score from content_neighbors "
                       "order by item_key, rank")
    return Csr.from_sorted(cn["item_key"], cn["neighbor_key"], cn["score"], n_items)


def _interactions(con, types: list, n_users: int, max_history: int,
                  users: np.ndarray | None = None) -> dict:
    """The interaction matrix by user (of ``users`` or all): Refreshed's inter, inter_type,
    inter_ts and capped (neighbour_rows too when whole)."""
    join, keys = _only("user_key", users)
    with registered(con, "_rtsql_rows", keys) if keys else contextlib.nullcontext():
        it = _columns(con, "select user_key, item_key, weight, "
                           "coalesce(list_position(?::VARCHAR[], last_event_type), 0) as t, "
                           f"epoch_us(last_ts) as ts from interactions {join} "
                           "order by user_key, item_key", [types])
    inter = Csr.from_sorted(it["user_key"], it["item_key"], it["weight"], n_users)
    inter_ts = np.asarray(it["ts"], np.int64)
    capped = capped_entries(inter.indptr, inter.keys, inter.values, inter_ts, max_history)
    found = dict(inter=inter, inter_type=np.asarray(it["t"], np.int64), inter_ts=inter_ts,
                 capped=capped)
    if users is None:
        found["neighbour_rows"] = _neighbour_rows(inter, capped, n_users)
    return found


def _neighbour_rows(inter: "Csr", capped: np.ndarray, n_users: int) -> "Csr":
    """inter's capped rows: what user-cf takes from each neighbour."""
    rows = np.repeat(np.arange(inter.n_rows), np.diff(inter.indptr))
    return Csr.from_sorted(rows[capped], inter.keys[capped], inter.values[capped], n_users)


def _trending(con, n_items: int) -> dict:
    """item_trending as arrays by item key, and the backfill orders."""
    tr = con.execute("select item_key, share, popularity, score, rank_trending, rank_popular "
                     "from item_trending").fetchnumpy()
    share, popularity, trend_score = (np.zeros(n_items), np.zeros(n_items, np.int64),
                                      np.zeros(n_items))
    keys = tr["item_key"].astype(np.int64)
    share[keys], popularity[keys], trend_score[keys] = tr["share"], tr["popularity"], tr["score"]
    return dict(share=share, popularity=popularity, trend_score=trend_score,
                order_trending=keys[np.argsort(tr["rank_trending"], kind="stable")],
                order_popular=keys[np.argsort(tr["rank_popular"], kind="stable")],
                max_ranked_item=int(keys.max()) if len(keys) else -1)


def _catalog(con) -> dict:
    """Catalog titles by item key and each category's sorted item keys."""
    catalog = con.execute("select item_key, title, category from item_catalog").fetchall()
    titles = {k: t for k, t, _ in catalog if t is not None}
    categories: dict = {}
    for k, _, c in catalog:
        if c is not None:
            categories.setdefault(c, []).append(k)
    return dict(titles=titles, categories={c: np.sort(np.array(ks, np.int64))
                                           for c, ks in categories.items()})


def _check(model: "Refreshed") -> None:
    """What rtsql.scoring relies on (item-cf lists may be signed: ease's weights)."""
    if len(model.item_lists.values) and not np.all(np.isfinite(model.item_lists.values)):
        raise ModelError("item_neighbors holds a score that is not finite, which rtsql "
                         "never writes: run `rtsql refresh --full`")
    for name, lists in (("user_neighbors", model.user_lists),
                        ("content_neighbors", model.content)):
        if len(lists.values) and not lists.values.min() > 0:
            raise ModelError(f"{name} holds a score <= 0, which rtsql never writes: run "
                             "`rtsql refresh --full`")


def capped_entries(indptr: np.ndarray, keys: np.ndarray, values: np.ndarray, ts_us: np.ndarray,
                   cap: int) -> np.ndarray:
    """Which entries form each row's capped row: among the row's ``cap`` most recent entries
    (rtsql.recency; 0: all), the positive ones: refresh's _CAPPED rule."""
    if cap <= 0 or len(values) <= cap:  # no row over the cap: the scorer's usual request
        return values > 0
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return (values > 0) & most_recent(rows, ts_us, keys, cap)


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
