"""The contract every similarity measure meets, and the parameters of one build.

A measure turns a matrix (rows x features: items x users for item-item, users x items for
user-user, items x catalog terms for content) into top-K lists of each row's most similar rows
(``Neighbors``). It declares whether the incremental refresh can update its lists exactly
(``incremental``: a symmetric measure whose rows' scores move only when a changed row is
involved; docs/design.md, "Exactness of the incremental refresh"). Sparse measures only say how
to weight the matrix (``weights``); the blocked engine (engine.py) multiplies and keeps the
top-K. A dense one (EASE) overrides ``full``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from .engine import IncrementalResult, Neighbors, StoredLists

Progress = Callable[[int, int], None]
Notice = Callable[[str], None]


@dataclass(frozen=True)
class Measure:
    """One build's parameters: the measure's name (``kind``, a key of rtsql.measures.MODELS),
    the engine's (list length, memory and threads) and each measure's own. rtsql/refresh.py
    fills them from the settings registry."""

    k: int = 50
    shrinkage: float = 0.0
    min_support: int = 1
    block_cells: int = 1 << 24  # similarity entries held at once per thread
    threads: int = 1  # blocks computed in parallel
    kind: str = "cosine"
    idf_n: float = 0.0  # tfidf: the user count, frozen at the last full refresh
    alpha: float = 1.0  # rp3beta: transition probabilities raised to alpha
    beta: float = 0.5  # rp3beta: a neighbour's score divided by its popularity^beta
    buffer_length: int = 0  # entries kept per row (>= k; 0: k): a buffer that refills lists
    ease_lambda: float = 300.0  # ease: L2 regularization of the closed form
    ease_max_items: int = 15_000  # ease: the most popular rows that enter the dense inverse
    ease_neighbors: int = 192  # sparse_ease: the regressors of each item (its top co-occurring)

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


class Model:
    """A similarity measure. Subclasses set ``name`` and ``incremental`` and implement
    ``weights``, or ``full`` for a measure the sparse engine does not compute; their module
    docstring and docs/design.md ("Measures and their cost") say what a build costs."""

    name: ClassVar[str]
    incremental: ClassVar[bool] = True

    def weights(self, m: sp.csr_matrix, measure: Measure) -> Weights:
        raise NotImplementedError

    def full(self, m: sp.csr_matrix, measure: Measure, progress: Progress | None = None,
             notice: Notice | None = None) -> "Neighbors":
        from . import engine

        return engine.full(m, self.weights(m, measure), measure, progress)

    def served(self, measure: Measure) -> int:
        """How many entries of a row's list recommend() uses: the first k (the engine stores a
        buffer beyond them, which refills lists incrementally)."""
        return measure.k

    def update(self, m: sp.csr_matrix, changed: np.ndarray, stored: "StoredLists",
               measure: Measure) -> "IncrementalResult":
        from . import engine

        if not self.incremental:
            raise ValueError(f"{self.name} lists have no exact incremental update")
        return engine.incremental(m, self.weights(m, measure), changed, stored, measure)
