"""Cosine and TF-IDF: the symmetric measures, updated exactly by the incremental refresh.

cosine: sim(a, b) = dot(a, b) / (|a| |b|), times support / (support + shrinkage) (engine.py).
tfidf (as implicit's TFIDFRecommender): the dot of the square-rooted weights times idf(a) *
idf(b), idf(r) = ln(idf_n) - ln(1 + features of r), which damps rows present everywhere;
``idf_n`` is frozen at the last full refresh so that the incremental refresh stays exact.
Cost of both: the sparse products' multiply-adds, the sum over features of (rows having the
feature)^2; memory bounded by the engine's blocks.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import Measure, Model, Weights
from .params import SUPPORT_FIELDS


class Cosine(Model):
    name = "cosine"

    def weights(self, m: sp.csr_matrix, measure: Measure) -> Weights:
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        with np.errstate(divide="ignore"):
            scale = np.where(norms > 0, 1.0 / norms, 0.0)
        return Weights(m, m.T.tocsr(), scale)


class TfIdf(Model):
    name = "tfidf"
    parameters = SUPPORT_FIELDS + ("idf_n",)

    def weights(self, m: sp.csr_matrix, measure: Measure) -> Weights:
        rooted = m.copy()
        rooted.data = np.sqrt(rooted.data)
        present = np.diff(m.indptr)
        idf = np.log(max(measure.idf_n, 1.0)) - np.log1p(present)
        scale = np.where(present > 0, np.maximum(idf, 0.0), 0.0)
        return Weights(rooted, rooted.T.tocsr(), scale)


def cosine(a, b) -> float:
    """Plain cosine of two dense vectors (0 for a zero vector); the worked-example helper."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else 0.0
