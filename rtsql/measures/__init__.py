"""Similarity measures behind the neighbour lists: one contract (base.Model), one module each.

- cosine.py: cosine and tfidf, the symmetric measures the incremental refresh updates exactly;
- rp3beta.py: the random walk with popularity damping (asymmetric: full rebuilds);
- ease.py: Steck's closed-form regression (dense, bounded by ease_max_items; full rebuilds);
- sparse_ease.py: the same regression restricted to each item's top co-occurring items (cost
  linear in the items: large catalogs; full rebuilds);
- engine.py: the blocked sparse engine the sparse measures share (full and incremental top-K);
- base.py: the contract and a build's parameters (Measure).

``MODELS`` is the one list of measure names: the ``similarity`` setting's choices, the tuner's
search space and the docs read it. The Spark job builds cosine lists with the same operations
(rtsql/spark_job.py).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..vocabulary import MEASURE_NAMES
from .base import Measure, Model, Notice, Progress, Weights
from .cosine import Cosine, TfIdf, cosine
from .ease import Ease
from .engine import IncrementalResult, Neighbors, StoredLists, merge_lists, top_k, top_per_row
from .rp3beta import RP3beta
from .sparse_ease import SparseEase

MODELS: dict[str, Model] = {m.name: m for m in (Cosine(), TfIdf(), RP3beta(), Ease(), SparseEase())}
assert tuple(MODELS) == MEASURE_NAMES, "rtsql.vocabulary.MEASURE_NAMES lists every measure"


def model(measure: Measure) -> Model:
    return MODELS[measure.kind]


def rows_matrix(matrix: sp.spmatrix) -> sp.csr_matrix:
    """The matrix every measure reads: CSR, float64, duplicates summed, no stored zeros."""
    m = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def full(matrix: sp.spmatrix, measure: Measure, progress: Progress | None = None,
         notice: Notice | None = None) -> Neighbors:
    """Top-K lists of every non-empty row of ``matrix`` under ``measure``."""
    return model(measure).full(rows_matrix(matrix), measure, progress, notice)


def incremental(matrix: sp.spmatrix, changed: np.ndarray, stored: StoredLists,
                measure: Measure) -> IncrementalResult:
    """The exact update after the rows ``changed`` changed (engine.incremental), for a measure
    whose ``incremental`` is true."""
    return model(measure).update(rows_matrix(matrix), changed, stored, measure)


__all__ = ["MODELS", "Measure", "Model", "Neighbors", "StoredLists", "IncrementalResult",
           "Weights", "cosine", "full", "incremental", "merge_lists", "model", "rows_matrix",
           "top_k", "top_per_row"]
