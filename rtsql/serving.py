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

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate

import numpy as np

from . import settings as settings_mod
from .errors import InvalidSetting, UnknownItem, UnknownUser
from .recommend import Rows, blend_weights, check_request
from .sqlutil import arrow_table

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

    def type_of(self, item: int) -> int:
        at = int(np.searchsorted(self.items, item))
        return int(self.types[at]) if at < len(self.items) and self.items[at] == item else 0


@dataclass
class Model:
    """What a refresh produced, as arrays; replaced whole after each refresh."""

    watermark: int
    t0: float
    rate: float
    settings: dict
    variants: dict  # name -> (share, overrides)
    verbs: dict  # event type -> past-tense phrase (from rtsql_verb)
    other_verb: str
    event_types: list  # code - 1 -> name; the last one is BASKET_TYPE
    item_lists: Csr  # served item-cf lists (item_neighbor_lists)
    user_lists: Csr  # user_neighbors, every stored rank
    content: Csr  # content_neighbors
    inter: Csr  # interactions by user: item keys, weights
    inter_type: np.ndarray  # event type code of each interactions entry (1-based)
    inter_ts: np.ndarray  # last_ts of each entry, epoch microseconds
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
        self.pending = pending  # user key -> [(item key, weight, type, ts_us, event_id)]
        self.seen = seen  # {"event_id", "user_key", "item_key"}: what catch_up has read

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
        n_items = con.execute("select coalesce(max(item_key), -1) + 1 from items").fetchall()[0][0]
        n_users = con.execute("select coalesce(max(user_key), -1) + 1 from users").fetchall()[0][0]

        served = arrow_table(con, "select item_key, neighbor_keys, scores "
                                  "from item_neighbor_lists order by item_key")
        keys_col = served.column("neighbor_keys")
        rows = np.repeat(served.column("item_key").to_numpy().astype(np.int64),
                         _list_lengths(keys_col))
        item_lists = Csr.from_sorted(rows, _flat(keys_col),
                                     _flat(served.column("scores"), np.float64), n_items)

        un = con.execute("select user_key, neighbor_key, score from user_neighbors "
                         "order by user_key, rank").fetchnumpy()
        user_lists = Csr.from_sorted(un["user_key"], un["neighbor_key"], un["score"], n_users)
        cn = con.execute("select item_key, neighbor_key, score from content_neighbors "
                         "order by item_key, rank").fetchnumpy()
        content = Csr.from_sorted(cn["item_key"], cn["neighbor_key"], cn["score"], n_items)
        it = con.execute("select user_key, item_key, weight, "
                         "list_position(?::VARCHAR[], last_event_type) as t, "
                         "epoch_us(last_ts) as ts from interactions order by user_key, item_key",
                         [types]).fetchnumpy()
        inter = Csr.from_sorted(it["user_key"], it["item_key"], it["weight"], n_users)

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
            verbs=verbs, other_verb=other_verb, event_types=types, item_lists=item_lists,
            user_lists=user_lists, content=content, inter=inter,
            inter_type=np.asarray(it["t"], np.int64), inter_ts=np.asarray(it["ts"], np.int64),
            share=share, popularity=popularity, trend_score=trend_score,
            order_trending=order_trending, order_popular=order_popular,
            max_ranked_item=int(keys.max()) if len(keys) else -1, titles=titles,
            categories=categories)
        user_keys = dict((u, k) for k, u in con.execute("select user_key, user_id from users"
                                                        ).fetchall())
        item_ids: list = [None] * n_items
        item_keys = {}
        for k, i in con.execute("select item_key, item_id from items").fetchall():
            item_ids[k] = i
            item_keys[i] = k
        result = cls(model, user_keys, item_ids, item_keys, {},
                     {"event_id": watermark, "user_key": n_users - 1, "item_key": n_items - 1})
        result.catch_up(con)
        return result

    def catch_up(self, con) -> int:
        """Append what was committed since the last look: new items, new users, and events
        after the refresh watermark, each with the weight the database computes for it.
        Returns the number of new events. Called by the one writer, after each commit."""
        items, users, events = self.read_new(con)
        self.add_ids(items, users)
        pending = self.pending
        for event_id, user, item, event_type, ts, weight in events:  # add_event, inlined
            rows = pending.get(user)
            if rows is None:
                rows = pending[user] = []
            rows.append((item, weight, event_type, ts, event_id))
        if events:
            self.seen["event_id"] = max(self.seen["event_id"], events[-1][0])
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
        self.pending.setdefault(user, []).append((item, weight, event_type, ts, event_id))
        self.seen["event_id"] = max(self.seen["event_id"], event_id)

    # ------------------------------------------------------------------ lookups

    def user_key(self, user_id: str) -> int | None:
        return self.user_keys.get(user_id)

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
        merged = {item: [[w], (when, -1), t] for item, w, t, when in
                  zip(items.tolist(), weights.tolist(), types.tolist(), ts.tolist())}
        code = m.type_codes
        for item, w, name, when, event_id in list(pending):
            row = merged.get(item)
            if row is None:
                merged[item] = [[w], (when, event_id), code.get(name, 0)]
            else:
                row[0].append(w)
                if (when, event_id) > row[1]:
                    row[1], row[2] = (when, event_id), code.get(name, 0)
        keys = sorted(merged)
        return History(np.array(keys, np.int64),
                       np.array([math.fsum(merged[k][0]) for k in keys]),
                       np.array([merged[k][2] for k in keys], np.int64),
                       np.array([merged[k][1][0] for k in keys], np.int64))

    def basket(self, item_ids: list[str]) -> History:
        """``recommend_for_items``: the known items, weight 1, type 'basket', one time."""
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
                      int(m.settings["neighbors"]))

    def ab_variant(self, user_id: str) -> str | None:
        """The ``ab_variant`` macro: md5 bucket of the id against cumulative shares by name."""
        bucket = (int(hashlib.md5(user_id.encode()).hexdigest()[:8], 16) % 10000) / 10000.0
        names = list(self.model.variants)
        for name, upto in zip(names, accumulate(self.model.variants[n][0] for n in names)):
            if upto > bucket:
                return name
        return None

    # ------------------------------------------------------------------ routes

    def recommend(self, user_id: str, k: int = 10, *, exclude: list[str] | None = None,
                  category: str | None = None, strategy: str = "hybrid",
                  variant: str | None = None) -> Rows:
        check_request(k, strategy)
        if variant == "auto":
            variant = self.ab_variant(user_id)
        user_key = self.user_key(user_id)
        return self._recommend(user_key, self.history(user_key), k, exclude, category,
                               self.config(strategy, variant))

    def recommend_for_items(self, item_ids: list[str], k: int = 10, *,
                            exclude: list[str] | None = None, category: str | None = None,
                            strategy: str = "hybrid", variant: str | None = None) -> Rows:
        check_request(k, strategy)
        return self._recommend(None, self.basket(item_ids), k, exclude, category,
                               self.config(strategy, variant))

    def similar_items(self, item_id: str, k: int = 10, by: str = "cf") -> Rows:
        if by not in ("cf", "content"):
            raise InvalidSetting("by must be 'cf' or 'content'")
        check_request(k)
        key = self.item_keys.get(item_id)
        if key is None:
            raise UnknownItem(f"no item {item_id!r} in the events or the catalog")
        lists = self.model.item_lists if by == "cf" else self.model.content
        _, pos = lists.expand(np.array([key]), k)
        return Rows(["rank", "item_id", "score"],
                    [(r + 1, self.item_ids[n], s) for r, (n, s) in
                     enumerate(zip(lists.keys[pos].tolist(), lists.values[pos].tolist()))])

    def similar_users(self, user_id: str, k: int = 10) -> Rows:
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

    def trending(self, k: int = 10) -> Rows:
        check_request(k)
        m = self.model
        top = m.order_trending[:k]
        top = top[m.popularity[top] > 0]
        return Rows(["rank", "item_id", "score"],
                    [(r + 1, self.item_ids[i], s) for r, (i, s) in
                     enumerate(zip(top.tolist(), m.trend_score[top].tolist()))])

    # ------------------------------------------------------------------ the scorer

    def _recommend(self, user_key, hist: History, k: int, exclude, category,
                   cfg: Config) -> Rows:
        m = self.model
        n_items = len(self.item_ids)
        # h: positive history weights, optionally weighted by recency at query time
        positive = hist.weights > 0
        h_items, w = hist.items[positive], hist.weights[positive]
        if cfg.recency > 0 and len(w):
            ts = hist.ts_us[positive] / 1e6
            w = w * np.power(2.0, -(ts.max() - ts) / (86400 * cfg.recency))
        # scored: (candidate, history item behind it, contribution) per strategy
        item_part = user_part = content_part = None
        if cfg.w_item > 0:
            item_part = _contributions(m.item_lists, h_items, w, cfg.served)
        if cfg.w_user > 0 and user_key is not None:
            _, pos = m.user_lists.expand(np.array([user_key]), cfg.served)
            owner, entries = m.inter.expand(m.user_lists.keys[pos])
            user_part = (m.inter.keys[entries], None,
                         m.user_lists.values[pos][owner] * m.inter.values[entries])
        if cfg.w_content > 0:
            content_part = _contributions(m.content, h_items, w, None)
        parts = (item_part, user_part, content_part)
        # per_part + scaled: each strategy's sum per candidate, scaled by its best candidate
        sums = [_group(p) if p is not None else None for p in parts]
        candidates = _union([s[0] for s in sums if s is not None])
        scaled, because = [], []
        for s, weight in zip(sums, (cfg.w_item, cfg.w_user, cfg.w_content)):
            col = np.zeros(len(candidates))
            src = np.full(len(candidates), -1, np.int64)
            if s is not None and len(s[0]):
                at = np.searchsorted(candidates, s[0])
                col[at] = s[1] / s[1].max() * weight
                if s[2] is not None:
                    src[at] = s[2]
            scaled.append(col)
            because.append(src)
        si, su, sc = scaled
        # blend: candidates some strategy scored, and the strategy that added the most
        in_blend = (si > 0) | (su > 0) | (sc > 0)
        blend = candidates[in_blend]
        score = (si + su + sc)[in_blend]
        win_part = np.where((si >= su) & (si >= sc), 0, np.where(su >= sc, 1, 2))[in_blend]
        win_s = np.choose(win_part, [si[in_blend], su[in_blend], sc[in_blend]])
        win_because = np.choose(win_part, [because[0][in_blend], because[1][in_blend],
                                           because[2][in_blend]])
        # excluded, category
        blocked = np.zeros(n_items + 1, bool)
        if cfg.exclude_seen:
            blocked[hist.items] = True
        if exclude:
            blocked[[self.item_keys[i] for i in exclude if i in self.item_keys]] = True
        allowed = None if category is None else self._category_mask(category, n_items)
        # pool: the blend's eligible items, then k backfill items no strategy scored
        keep = ~blocked[blend] & (True if allowed is None else allowed[blend])
        blocked[blend] = True
        backfill = self._backfill(cfg, blocked, allowed, k, n_items)
        pool = np.concatenate((blend[keep], backfill))
        base = np.concatenate((score[keep], np.zeros(len(backfill))))
        trend = _at(m.share, pool, 0.0) * cfg.w_trend
        popularity = _at(m.popularity, pool, 0)
        final = base + trend
        # the k best by (score desc, popularity desc, key): only candidates scoring at least
        # the k-th best score (ties included) need the three-key sort
        top = np.arange(len(pool))
        if len(pool) > k:
            top = np.flatnonzero(final >= np.partition(final, len(final) - k)[len(final) - k])
        order = top[np.lexsort((pool[top], -popularity[top], -final[top]))][:k]
        kept = np.flatnonzero(keep)
        rows = []
        for rank, at in enumerate(order.tolist(), start=1):
            part = source = None
            if at < len(kept) and win_s[kept[at]] >= trend[at]:
                part, source = int(win_part[kept[at]]), int(win_because[kept[at]])
            rows.append((rank, self.item_ids[int(pool[at])], float(final[at]),
                         self._reason(part, source, trend[at], hist)))
        return Rows(COLUMNS, rows)

    def _backfill(self, cfg: Config, blocked: np.ndarray, allowed, k: int, n_items: int
                  ) -> np.ndarray:
        """The first k eligible items of the stored order (trending when trending is blended
        in, else popularity), then items new since the refresh by key."""
        m = self.model
        ranked = m.order_trending if cfg.w_trend > 0 else m.order_popular
        new_items = np.arange(m.max_ranked_item + 1, n_items, dtype=np.int64)
        found, count = [], 0
        for source in (ranked, new_items):
            start, step = 0, max(4 * k, 64)
            while count < k and start < len(source):
                chunk = source[start:start + step]
                ok = ~blocked[chunk]
                if allowed is not None:
                    ok &= allowed[chunk]
                found.append(chunk[ok])
                count += len(found[-1])
                start, step = start + step, step * 2
        return np.concatenate(found)[:k] if found else np.empty(0, np.int64)

    def _category_mask(self, category: str, n_items: int) -> np.ndarray:
        masks = self.model.category_masks
        mask = masks.get(category)
        if mask is None or len(mask) < n_items + 1:
            mask = np.zeros(n_items + 1, bool)
            mask[self.model.categories.get(category, np.empty(0, np.int64))] = True
            masks[category] = mask
        return mask

    def _reason(self, part, source, trend, hist: History) -> str:
        """The macro's reason text: the strategy that added the most, and its history item."""
        if part == 0:
            return (f"item-cf: because you {self._verb(hist.type_of(source))} "
                    f"{self._title(source)}")
        if part == 2:
            return (f"content: similar to {self._title(source)}, which you "
                    f"{self._verb(hist.type_of(source))}")
        if part == 1:
            return "user-cf: people with similar taste liked it"
        return "trending: popular right now" if trend > 0 else "popular: most events overall"

    def _verb(self, code: int) -> str:
        m = self.model
        return m.verbs.get(m.event_types[code - 1], m.other_verb) if code > 0 else m.other_verb

    def _title(self, key: int) -> str:
        return self.model.titles.get(key) or self.item_ids[key]


def _union(parts: list) -> np.ndarray:
    """Sorted distinct keys of several sorted key arrays (np.unique's hashing costs more at
    this size)."""
    if not parts:
        return np.empty(0, np.int64)
    keys = np.sort(np.concatenate(parts)) if len(parts) > 1 else parts[0]
    return keys[np.diff(keys, prepend=-1) != 0]


def _at(values: np.ndarray, keys: np.ndarray, default) -> np.ndarray:
    """values[keys], with ``default`` for keys past the end (items new since the refresh)."""
    out = np.full(len(keys), default, values.dtype)
    inside = keys < len(values)
    out[inside] = values[keys[inside]]
    return out


def _contributions(lists: Csr, items: np.ndarray, w: np.ndarray, limit):
    """Each history item's list entries: (candidate, history item, weight x score)."""
    owner, pos = lists.expand(items, limit)
    return lists.keys[pos], items[owner], w[owner] * lists.values[pos]


def _group(part):
    """Per candidate: the correctly rounded sum (as fsum) of its contributions, and the
    history item of the largest contribution (ties: the smallest key)."""
    cand, src, s = part
    if not len(cand):
        return np.empty(0, np.int64), np.empty(0), None if src is None else np.empty(0, np.int64)
    order = np.argsort(cand)  # within a candidate the order is irrelevant: sums are exact
    cand, s = cand[order], s[order]
    starts = np.flatnonzero(np.diff(cand, prepend=-1))
    sums = _exact_sums(s, starts)
    if src is None:
        return cand[starts], sums, None
    src = src[order]
    best = np.maximum.reduceat(s, starts)
    lengths = np.diff(starts, append=len(s))
    at_best = s == np.repeat(best, lengths)
    because = np.minimum.reduceat(np.where(at_best, src, np.iinfo(np.int64).max), starts)
    return cand[starts], sums, because


def _exact_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Segment sums, correctly rounded like fsum. One or two terms: a double addition is
    already correctly rounded. Longer segments: an extended-precision sum, and math.fsum for
    the few whose error bound straddles a double rounding boundary."""
    out = np.add.reduceat(values, starts)
    lengths = np.diff(starts, append=len(values))
    long = np.flatnonzero(lengths > 2)
    if not len(long):
        return out
    # the entries of the long segments only, and where each segment starts among them
    inside = np.repeat(lengths > 2, lengths)
    part, n = values[inside], lengths[long]
    part_starts = np.concatenate(([0], np.cumsum(n)[:-1]))
    sums = np.add.reduceat(part.astype(np.longdouble), part_starts)
    if np.finfo(np.longdouble).nmant >= 100:  # a quad-precision long double: exact enough
        out[long] = sums.astype(np.float64)
        return out
    # an extended sum of n terms is within n * eps * sum(|x|) of the exact one (sum(|x|)
    # taken in double, with a margin for its own rounding)
    err = np.add.reduceat(np.abs(part), part_starts) * (n * 1.01) \
        * float(np.finfo(np.longdouble).eps)
    lo, hi = (sums - err).astype(np.float64), (sums + err).astype(np.float64)
    out[long] = lo
    for j in np.flatnonzero(lo != hi).tolist():
        start = starts[long[j]]
        out[long[j]] = math.fsum(values[start:start + n[j]].tolist())
    return out


def _flat(column, dtype=np.int64) -> np.ndarray:
    """The values of a chunked Arrow list column, flattened."""
    chunks = [c.flatten().to_numpy(zero_copy_only=False) for c in column.chunks]
    return np.concatenate(chunks).astype(dtype) if chunks else np.empty(0, dtype)


def _list_lengths(column) -> np.ndarray:
    chunks = [np.diff(c.offsets.to_numpy()) for c in column.chunks]
    return np.concatenate(chunks).astype(np.int64) if chunks else np.empty(0, np.int64)


def materialize(con, k: int, strategy: str, progress=None) -> int:
    """Write every user's top-k into ``user_recommendations`` (emptied first), from the state
    as ``con`` sees it (inside a refresh's transaction: the new models). Returns the rows."""
    import pyarrow as pa

    from .sqlutil import recreate_empty, registered

    state = ServingState._load(con)
    recreate_empty(con, "user_recommendations")
    users = sorted(state.user_keys.items(), key=lambda kv: kv[1])
    keys, ids, ranks, items, scores, reasons = [], [], [], [], [], []
    for done, (user_id, user_key) in enumerate(users, start=1):
        for rank, item_id, score, reason in state.recommend(user_id, k, strategy=strategy).rows:
            keys.append(user_key)
            ids.append(user_id)
            ranks.append(rank)
            items.append(item_id)
            scores.append(score)
            reasons.append(reason)
        if progress and (done % 1000 == 0 or done == len(users)):
            progress(done, len(users))
    with registered(con, "_rtsql_user_recs", {
            "user_key": pa.array(keys, pa.int32()), "user_id": pa.array(ids, pa.string()),
            "rank": pa.array(ranks, pa.int32()), "item_id": pa.array(items, pa.string()),
            "score": pa.array(scores, pa.float64()), "reason": pa.array(reasons, pa.string())}):
        con.execute("insert into user_recommendations select * from _rtsql_user_recs")
    return len(keys)
