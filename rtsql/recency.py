"""The one rule both caps use to keep an entity's most recent entries: a user's
``max_history`` items (what item-item and the scorer read, refresh's ``_CAPPED`` in SQL) and an
item's ``max_item_users`` users (what user-user reads): by the time of the entry's latest
event, then by the other key, both descending.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def most_recent(group: np.ndarray, ts_us: np.ndarray, key: np.ndarray, cap: int) -> np.ndarray:
    """Flags of the entries among their group's ``cap`` most recent (cap 0: all). One entry
    per (group, key)."""
    n = len(group)
    if cap <= 0 or n <= cap:  # no group can be over the cap
        return np.ones(n, bool)
    group = np.asarray(group, np.int64)
    return _most_recent(group, np.asarray(ts_us, np.int64), np.asarray(key, np.int64),
                        int(group.max()) + 1, cap)


@njit(cache=True)
def _most_recent(group, ts_us, key, n_groups, cap):
    """Every entry of a group with at most ``cap`` entries; of a crowded group, its entries
    gathered (counting sort), ordered by key then stably by time, both descending, and the
    first ``cap`` kept."""
    n = len(group)
    count = np.zeros(n_groups, np.int64)
    for e in range(n):
        count[group[e]] += 1
    keep = np.ones(n, np.bool_)
    start = np.zeros(n_groups + 1, np.int64)
    for g in range(n_groups):
        start[g + 1] = start[g] + (count[g] if count[g] > cap else 0)
    members = np.empty(start[n_groups], np.int64)
    fill = start[:-1].copy()
    for e in range(n):
        g = group[e]
        if count[g] > cap:
            members[fill[g]] = e
            fill[g] += 1
            keep[e] = False
    for g in range(n_groups):
        if start[g + 1] == start[g]:
            continue
        idx = members[start[g]:start[g + 1]]
        by_key = np.argsort(-key[idx], kind="mergesort")
        by_time = np.argsort(-ts_us[idx][by_key], kind="mergesort")
        for j in by_key[by_time][:cap]:
            keep[idx[j]] = True
    return keep
