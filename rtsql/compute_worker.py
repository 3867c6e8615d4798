"""A process of its own for the refresh's heaviest compute, so a server's requests neither
wait for the GIL behind it nor compete with it for the cores on equal terms.

Today it runs EASE's update (measures/ease.py ``EaseFactor.update`` and the list selection):
the inverse is a file (inverse_store.py), so the worker maps it itself; it receives the
changed rows (small) and returns the lists (k x n entries). The process is started once
(spawn: no copy of the server's threads or DuckDB state), at the lowest scheduling priority
(nice 19, for its BLAS and numba threads too), and kept for the life of the caller. The
database stays the caller's: the worker never opens it.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import scipy.sparse as sp

from .measures import Measure, Neighbors

_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
NICE = 19


def _lower_priority() -> None:
    if hasattr(os, "nice"):
        os.nice(NICE)


def pool() -> ProcessPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            import multiprocessing

            _POOL = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_lower_priority)
        return _POOL


def shutdown() -> None:
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.shutdown()
            _POOL = None


def ease_update(db_path: str, version: str, m: sp.csr_matrix, old: sp.csr_matrix,
                new: sp.csr_matrix, present: np.ndarray, measure: Measure
                ) -> tuple[Neighbors, str]:
    """The stored inverse of ``db_path`` at ``version``, updated (and its new version), and
    the EASE lists from it; in the worker process."""
    return pool().submit(_ease_update, db_path, version, m, old, new, present, measure).result()


def _ease_update(db_path, version, m, old, new, present, measure):
    from .inverse_store import InverseStore, update_stored

    store = InverseStore.for_path(db_path)
    factor = store.load(version)
    if factor is None:
        raise RuntimeError(f"the stored EASE inverse of {db_path} is not version {version}")
    return update_stored(store, factor, version, m, old, new, present, measure)
