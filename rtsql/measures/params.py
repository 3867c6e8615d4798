"""The parameters of one similarity build and what the sparse engine multiplies: plain data,
shared by the measure contract (base.py) and the engine (engine.py), which import it and not
each other's internals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from ..settings import SETTINGS
from ..vocabulary import MEASURE_NAMES


def _default(setting: str):
    """A measure parameter's default is its setting's (the registry defines it once)."""
    return SETTINGS[setting].default

Progress = Callable[[int, int], None]
Notice = Callable[[str], None]


@dataclass(frozen=True)
class Measure:
    """One build's parameters: the measure's name (``kind``, a key of rtsql.measures.MODELS),
    the engine's (list length, memory and threads) and each measure's own. rtsql/refresh.py
    fills them from the settings registry."""

    k: int = _default("neighbors")
    shrinkage: float = _default("shrinkage")
    min_support: int = _default("min_support")
    block_cells: int = 1 << 24  # similarity entries held at once per thread
    threads: int = 1  # blocks computed in parallel
    kind: str = MEASURE_NAMES[0]
    idf_n: float = 0.0  # tfidf: the user count, frozen at the last full refresh
    alpha: float = _default("rp3_alpha")  # rp3beta: transition probabilities to this power
    beta: float = _default("rp3_beta")  # rp3beta: a neighbour's score / its popularity^beta
    buffer_length: int = 0  # entries kept per row (>= k; 0: k): a buffer that refills lists
    ease_lambda: float = _default("ease_lambda")  # ease: L2 regularization of the closed form
    ease_max_items: int = _default("ease_max_items")  # ease: the most popular rows it inverts
    ease_neighbors: int = _default("ease_neighbors")  # sparse_ease: each item's regressors

    @property
    def list_length(self) -> int:
        """The entries a row's list holds: max(buffer_length, k)."""
        return max(self.buffer_length, self.k)


@dataclass
class Weights:
    """What the sparse engine multiplies: sim(a, b) = (left[a] . right[:, b]) * scale[a] *
    scale[b], then the support factor (engine.RowSimilarity). ``left`` is rows x features CSR,
    ``right`` features x rows CSR, with the same pattern as the matrix (transposed)."""

    left: sp.csr_matrix
    right: sp.csr_matrix
    scale: np.ndarray
