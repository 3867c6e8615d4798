"""No repeats: an item shown to a user suppress_after_impressions (N) times within the last
suppress_window_hours (H), with no click or better since, is left out of that user's lists.

The rule is the SQL macro ``rtsql_suppressed`` (sql/macros), over the impressions that no
engaged event answered (``rtsql_repeat_impressions``). The server keeps those impressions in
memory (``Impressions``) and applies the same count at request time, so the in-memory scorer
and the macro agree (tests/test_serving.py compares them); the writer brings them forward
after each commit: new impressions are read again for their users, and a click or better
(rtsql.vocabulary.ENGAGED) in catch-up drops the impressions it answers.
"""

from __future__ import annotations

import time

import numpy as np

from .vocabulary import ENGAGED

HOUR_US = 3_600_000_000


def window_hours(settings: dict, variants: dict) -> float:
    """The longest window any serving configuration uses (the global setting, or a variant's
    override): impressions older than that never count, so the server need not hold them."""
    longest = float(settings["suppress_window_hours"])
    for _, overrides in variants.values():
        if "suppress_window_hours" in overrides:
            longest = max(longest, float(overrides["suppress_window_hours"]))
    return longest


def active(settings: dict, variants: dict) -> bool:
    """Whether any serving configuration suppresses repeats (N > 0)."""
    return int(settings["suppress_after_impressions"]) > 0 or any(
        float(overrides.get("suppress_after_impressions", 0) or 0) > 0
        for _, overrides in variants.values())


class Impressions:
    """Per user, per item: the epoch-microsecond times of the impressions that no click or
    better answered, within the longest window (rtsql_repeat_impressions, in memory)."""

    def __init__(self, hours: float, enabled: bool):
        self.hours = hours
        self.enabled = enabled
        self.by_user: dict[int, dict[int, list[int]]] = {}

    @classmethod
    def load(cls, con, settings: dict, variants: dict) -> "Impressions":
        result = cls(window_hours(settings, variants), active(settings, variants))
        result.read(con)
        return result

    def read(self, con, users: list[int] | None = None) -> None:
        """(Re)read the unanswered impressions of ``users`` (default: everyone) from the
        database, replacing what was held for them."""
        if not self.enabled:
            return
        since = "now()::TIMESTAMP - to_microseconds(?::BIGINT)"
        params: list = [round(self.hours * HOUR_US)]
        where = ""
        if users is not None:
            if not users:
                return
            where = "where user_key in (select unnest(?::INTEGER[]))"
            params.append(users)
            for user in users:
                self.by_user.pop(user, None)
        else:
            self.by_user = {}
        rows = con.execute(f"""
            select user_key, item_key, epoch_us(ts) from rtsql_repeat_impressions({since}, NULL)
            {where} order by user_key, item_key, ts""", params).fetchall()
        for user, item, ts in rows:
            self.by_user.setdefault(user, {}).setdefault(item, []).append(ts)

    def engaged(self, user: int, item: int, ts_us: int) -> None:
        """A click or better at ``ts_us`` answers the impressions of the item before it."""
        items = self.by_user.get(user)
        shown = items.get(item) if items else None
        if shown:
            kept = [t for t in shown if t > ts_us]
            if kept:
                items[item] = kept
            else:
                del items[item]

    def catch_up(self, events: list[tuple]) -> None:
        """Events read by ServingState.catch_up: (event_id, user, item, type, ts_us, weight)."""
        if not self.by_user:
            return
        for _, user, item, event_type, ts, _ in events:
            if event_type in ENGAGED:
                self.engaged(user, item, ts)

    def suppressed(self, user: int | None, after: int, hours: float,
                   now_us: int | None = None) -> np.ndarray:
        """The item keys ``user`` may not be shown now: at least ``after`` unanswered
        impressions within the last ``hours`` (rtsql_suppressed)."""
        items = self.by_user.get(user) if after > 0 and user is not None else None
        if not items:
            return np.empty(0, np.int64)
        now = int(time.time() * 1e6) if now_us is None else now_us
        since = now - round(hours * HOUR_US)  # the macro's (h * 3600e6)::BIGINT rounds
        return np.array(sorted(item for item, shown in items.items()
                               if sum(1 for t in shown if t > since) >= after), np.int64)
