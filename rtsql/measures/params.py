"""The parameters of one similarity build and what the sparse engine multiplies: plain data,
shared by the measure contract (base.py) and the engine (engine.py), which import it and not
each other's internals. It ships to Spark's executors with engine.py (spark_job.ship_engine),
so it imports numpy and scipy only: its defaults repeat the settings registry's, and
tests/test_measure_contract.py fails on any difference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

Progress = Callable[[int, int], None]
Notice = Callable[[str], None]


@dataclass(frozen=True)
class Measure:
    """One build's parameters: the measure's name (``kind``, a key of rtsql.measures.MODELS),
    the engine's (ENGINE_FIELDS: list length, memory and threads) and each measure's own,
    which the measure names in its ``parameters`` (base.Model) and reads alone
    (tests/test_measure_contract.py changes every other field and finds the same lists).
    rtsql/refresh.py fills them from the settings registry."""

    k: int = 50  # neighbors
    shrinkage: float = 0.0
    min_support: int = 1
    block_cells: int = 1 << 24  # similarity entries held at once per thread
    threads: int = 1  # blocks computed in parallel
    kind: str = "cosine"  # vocabulary.MEASURE_NAMES[0]
    idf_n: float = 0.0  # tfidf: the user count, frozen at the last full refresh
    alpha: float = 1.0  # rp3_alpha: transition probabilities to this power
    beta: float = 0.5  # rp3_beta: a neighbour's score / its popularity^beta
    buffer_length: int = 0  # entries kept per row (>= k; 0: k): a buffer that refills lists
    ease_lambda: float = 300.0  # ease: L2 regularization of the closed form
    ease_dropout: float = 0.0  # ease, sparse_ease: DLAE's rate p (diagonal p / (1 - p) G)
    ease_max_items: int = 15_000  # ease: the most popular rows it inverts
    ease_solver: str = "auto"  # ease: through the items' inverse or the users' side (ease.solver)
    ease_neighbors: int = 192  # sparse_ease: each item's regressors (its top co-occurring)

    @property
    def ease_kappa(self) -> float:
        """DLAE's diagonal factor: each item is regularized by kappa x its Gram diagonal."""
        return self.ease_dropout / (1.0 - self.ease_dropout)

    @property
    def list_length(self) -> int:
        """The entries a row's list holds: max(buffer_length, k)."""
        return max(self.buffer_length, self.k)


# what every build has, whatever the measure: which measure, how long its lists are, and how
# the engine runs (memory and threads)
ENGINE_FIELDS = ("kind", "k", "buffer_length", "block_cells", "threads")
# the sparse engine's support factor, shared by the measures it computes (engine.RowSimilarity)
SUPPORT_FIELDS = ("shrinkage", "min_support")


@dataclass
class Weights:
    """What the sparse engine multiplies: sim(a, b) = (left[a] . right[:, b]) * scale[a] *
    scale[b], then the support factor (engine.RowSimilarity). ``left`` is rows x features CSR,
    ``right`` features x rows CSR, with the same pattern as the matrix (transposed)."""

    left: sp.csr_matrix
    right: sp.csr_matrix
    scale: np.ndarray
