"""Serving from memory: the SQL macros' answers from the loaded state, with no SQL per request.

``recommend()`` through DuckDB costs 15-20 ms of binding and planning before it reads a row, so
an application server cannot call the macro per request. ``ServingState`` answers
``recommend``, ``recommend_for_items``, ``similar_items``, ``similar_users`` and ``trending``
(and the dashboard's lookups) with array operations over a ``rtsql.state.State``: what the
last refresh produced plus the events since.

The SQL macros stay the definition: every step below mirrors a step of
``sql/macros/30_rtsql_recommend_core.sql`` (the names in comments are its CTEs), and
``tests/test_serving.py`` checks on random databases that both return the same rows: same
items, ranks and reasons, scores within 1e-9. Where the macro sums, the scorer sums exactly as
fsum does (correctly rounded), so exact ties stay ties and rank the same way.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from .errors import UnknownItem, UnknownUser
from .recommend import Rows, check_method, check_request
from .sqlutil import clean_id
from .state import Config, History, Refreshed, State, capped_entries
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
)

COLUMNS = ["rank", "item_id", "score", "reason"]
_NEW_ITEM_OFFSET = 1 << 32  # items new since the refresh rank after every ranked one


class ServingState(State):
    """Every read route's answer, from memory. Build with ``ServingState.load(con)``."""

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


def _query_weights(hist: History, cfg: Config) -> np.ndarray:
    """The macro's ``h``: the positive weights among the user's max_history most recent items
    (by time, then key, descending), times 2^-(age / recency half-life) when query-time
    recency is on (age against the newest of them); NaN marks the entries that are not in h
    (they only count as seen)."""
    keep = capped_entries(np.array([0, len(hist.items)], np.int64), hist.items, hist.weights,
                   hist.ts_us, cfg.max_history)  # the history as a one-row matrix
    return _recency(np.where(keep, hist.weights, np.nan), keep, hist.ts_us,
                    np.zeros(len(keep), np.int64), 1, cfg)


def _row_weights(m: Refreshed, cfg: Config) -> np.ndarray:
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
