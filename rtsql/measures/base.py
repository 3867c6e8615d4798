"""The contract every similarity measure meets (the parameters of one build: params.py).

A measure turns a matrix (rows x features: items x users for item-item, users x items for
user-user, items x catalog terms for content) into top-K lists of each row's most similar rows
(``Neighbors``). It declares whether the incremental refresh can update its lists exactly
(``incremental``: a symmetric measure whose rows' scores move only when a changed row is
involved; docs/design.md, "Exactness of the incremental refresh"). Sparse measures only say how
to weight the matrix (``weights``); the blocked engine (engine.py) multiplies and keeps the
top-K. A dense one (EASE) overrides ``full``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from . import engine
from .engine import IncrementalResult, Neighbors, StoredLists
from .params import SUPPORT_FIELDS, Measure, Notice, Progress, Weights

__all__ = ["Measure", "Model", "Notice", "Progress", "Weights"]


class Model:
    """A similarity measure. Subclasses set ``name``, ``incremental`` and ``parameters`` (the
    sparse engine's support fields by default) and implement ``weights``, or ``full`` for a
    measure the sparse engine does not compute; their module docstring and docs/design.md
    ("Measures and their cost") say what a build costs."""

    name: ClassVar[str]
    incremental: ClassVar[bool] = True
    # the Measure fields of its own that the build reads, beyond params.ENGINE_FIELDS
    parameters: ClassVar[tuple[str, ...]] = SUPPORT_FIELDS

    def weights(self, m: sp.csr_matrix, measure: Measure) -> Weights:
        raise NotImplementedError

    def full(self, m: sp.csr_matrix, measure: Measure, progress: Progress | None = None,
             notice: Notice | None = None) -> "Neighbors":
        return engine.full(m, self.weights(m, measure), measure, progress)

    def served(self, measure: Measure) -> int:
        """How many entries of a row's list recommend() uses: the first k (the engine stores a
        buffer beyond them, which refills lists incrementally)."""
        return measure.k

    def update(self, m: sp.csr_matrix, changed: np.ndarray, stored: "StoredLists",
               measure: Measure) -> "IncrementalResult":
        if not self.incremental:
            raise ValueError(f"{self.name} lists have no exact incremental update")
        return engine.incremental(m, self.weights(m, measure), changed, stored, measure)
