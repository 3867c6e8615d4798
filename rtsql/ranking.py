"""NDCG's position discount, defined once for the two places that rank lists against held-out
items: the offline protocols (rtsql/evaluate.py, over id lists) and ``ease_dropout auto``'s
choice (rtsql/autotune.py, vectorized over a refresh's matrix)."""

from __future__ import annotations

import numpy as np


def discounts(n: int) -> np.ndarray:
    """The gain of a hit at ranks 1..n: 1 / log2(rank + 1)."""
    return 1.0 / np.log2(np.arange(2, n + 2))


def ideal_dcg(relevant: int, k: int) -> float:
    """DCG@k of a perfect list for a user with ``relevant`` held-out items."""
    return float(discounts(min(relevant, k)).sum())
