"""Item availability: hidden items and availability windows (table ``item_availability``).

An item a shop cannot sell now (sold out, withdrawn, not yet on sale) leaves every list served
to users from the moment the change commits, with no refresh: the SQL macros read the table
through ``rtsql_unavailable()`` at query time, and the server keeps it in memory
(``Availability``), updated by the same writer that commits the change. The models keep
counting the item's events (a user who bought it still gets "because you bought X").

Changes come from ``rtsql item hide|show`` and ``POST /items/{id}/hide|show`` (``set_available``)
and from the catalog's ``available``, ``available_from`` and ``available_until`` columns
(``rtsql.catalog.load_items``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import UnknownItem
from .sqlutil import clean_id, transaction

# the catalog's columns for availability (mappable with --map like the others)
COLUMNS = ("available", "available_from", "available_until")
NO_START, NO_END = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def set_available(con, item_ids: list[str], available: bool) -> int:
    """Hide (``available`` false) or show items by id, in one transaction; their windows stay.
    Every id must name an item (events or catalog): otherwise nothing changes and UnknownItem
    names the ids that do not. Returns the number of items."""
    ids = list(dict.fromkeys(clean_id(i) for i in item_ids))
    known = dict(con.execute("select item_id, item_key from items where item_id in "
                             "(select unnest(?::VARCHAR[]))", [ids]).fetchall())
    unknown = [i for i in ids if i not in known]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise UnknownItem(f"no item {shown} in the events or the catalog; nothing was changed")
    with transaction(con):
        con.execute("""
            insert into item_availability
            select k, ?, NULL, NULL, now()::TIMESTAMP from unnest(?::INTEGER[]) t(k)
            on conflict (item_key) do update
            set available = excluded.available, updated_at = excluded.updated_at""",
                    [available, [known[i] for i in ids]])
    return len(ids)


@dataclass
class Availability:
    """The rows of item_availability, for the server's lists: which keys are unavailable at a
    given time, by the rule of the rtsql_unavailable macro (hidden, or the time outside
    [available_from, available_until))."""

    keys: np.ndarray  # item keys that have a row
    available: np.ndarray  # bool
    start: np.ndarray  # int64 microseconds since the epoch (UTC); NO_START: none
    end: np.ndarray  # int64 microseconds, exclusive; NO_END: none

    @classmethod
    def empty(cls) -> "Availability":
        return cls(np.empty(0, np.int64), np.empty(0, bool), np.empty(0, np.int64),
                   np.empty(0, np.int64))

    @classmethod
    def load(cls, con) -> "Availability":
        rows = con.execute(f"""
            select item_key, available,
                   coalesce(epoch_us(available_from), {NO_START}) as start_us,
                   coalesce(epoch_us(available_until), {NO_END}) as end_us
            from item_availability order by item_key""").fetchnumpy()
        return cls(rows["item_key"].astype(np.int64), rows["available"].astype(bool),
                   rows["start_us"].astype(np.int64), rows["end_us"].astype(np.int64))

    def unavailable(self, now_us: int | None = None) -> np.ndarray:
        """The keys not available at ``now_us`` (default: the wall clock), sorted."""
        if not len(self.keys):
            return self.keys
        now = int(time.time() * 1e6) if now_us is None else now_us
        return self.keys[~self.available | (now < self.start) | (now >= self.end)]
