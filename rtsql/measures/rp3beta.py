"""RP3beta (Paudel et al. 2017, as in Dacrema et al.'s baselines, RecSys 2019).

A two-step random walk row -> feature -> row: the score of b in a's list is the sum over shared
features f of (1 / features of a)^alpha * (w(f, b) / total weight of f)^alpha, divided by
(features of b)^beta, which damps popular rows. Same cost as cosine (the same sparse products),
but asymmetric: sim(a, b) != sim(b, a), so the incremental refresh cannot update its lists
exactly, and a refresh with new events rebuilds them in full (rtsql/refresh.py says so).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import Measure, Model, Weights
from .params import SUPPORT_FIELDS


class RP3beta(Model):
    name = "rp3beta"
    incremental = False
    parameters = SUPPORT_FIELDS + ("alpha", "beta")

    def weights(self, m: sp.csr_matrix, measure: Measure) -> Weights:
        """Left: P(row -> feature) = 1 / (features of the row), to the alpha; right:
        P(feature -> row) = w / (the feature's total weight), to the alpha, times
        (rows' popularity: features having it)^-beta. The product is the score itself."""
        present = np.diff(m.indptr)
        left = m.copy()
        left.data = np.repeat(np.where(present > 0, 1.0 / np.maximum(present, 1), 0.0),
                              present) ** measure.alpha
        right = m.T.tocsr()
        totals = np.asarray(right.sum(axis=1)).ravel()
        right.data = (right.data / np.repeat(totals, np.diff(right.indptr))) ** measure.alpha
        popularity = np.maximum(present, 1).astype(np.float64) ** measure.beta
        right.data /= popularity[right.indices]
        return Weights(left, right, np.ones(m.shape[0]))
