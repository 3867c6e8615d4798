"""A process of its own for the refresh's compute, so a server's requests neither wait for the
GIL behind it nor compete with it for the cores on equal terms.

The refresh (refresh.py) reads and writes the database; every similarity computation between
those steps goes through ``run``, which calls it here or, for a refresh with ``isolate`` (the
server's background refreshes), in the worker: full lists of every measure (the EASE build
writes its inverse file there), the incremental lists' products, EASE's update (the inverse is
a file, inverse_store.py, so the worker maps it itself). Arguments and results are arrays,
pickled across (the changed rows and candidate lists of a refresh; a full build's lists). The
process is started once (spawn: no copy of the server's threads or DuckDB state), at the
lowest scheduling priority (nice 19, for its BLAS and numba threads too), and kept for the
life of the caller. The database stays the caller's: the worker never opens it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

import numpy as np
import scipy.sparse as sp

from .measures import Measure, Neighbors

T = TypeVar("T")
_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
NICE = 19


def _init_worker() -> None:
    """In the worker: the lowest priority, and an exit as soon as the caller is gone. A caller
    killed with SIGKILL never shuts its pool down, and the orphan would live on holding the
    caller's stdout and stderr open (a supervisor reading them would wait forever)."""
    if hasattr(os, "nice"):
        os.nice(NICE)
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="rtsql-parent-watch",
                         daemon=True).start()


def _exit_with(sentinel: int) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])  # readable once the parent process has exited
    os._exit(0)


def pool() -> ProcessPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            import multiprocessing

            _POOL = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker)
        return _POOL


def shutdown() -> None:
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.shutdown()
            _POOL = None


def warm() -> Future:
    """Start the worker and have it load the compiled kernels a refresh calls (numba's cache)
    now, in the background: the first background refresh after serve starts would otherwise
    pay for both, several seconds with every event meanwhile waiting for it."""
    return pool().submit(_load_kernels)


def _load_kernels() -> list[str]:
    """Every measure's full build (EASE through both sides) on a small random matrix; the
    measures built."""
    from . import measures, vocabulary

    rng = np.random.default_rng(0)
    m = sp.csr_matrix((rng.random((60, 40)) < 0.3) * rng.integers(1, 4, (60, 40)), dtype=float)
    built = []
    for kind in measures.MODELS:
        for solver in vocabulary.EASE_SOLVERS if kind == "ease" else (vocabulary.AUTO,):
            measure = Measure(kind=kind, ease_solver=solver, idf_n=float(m.shape[1]))
            if len(measures.full(m, measure).row):
                built.append(kind)
    return built


def run(isolate: bool, function: Callable[..., T], *args) -> T:
    """``function(*args)``: in the worker process when ``isolate`` (a module-level function,
    picklable arguments), else here."""
    return pool().submit(function, *args).result() if isolate else function(*args)


def submit(isolate: bool, function: Callable[..., T], *args) -> Future:
    """``run`` without waiting (here: on a thread of its own), a future of the result."""
    if isolate:
        return pool().submit(function, *args)
    future: Future = Future()

    def work() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # the caller's result() raises it
            future.set_exception(exc)

    threading.Thread(target=work, name="rtsql-compute", daemon=True).start()
    return future


def ease_update(db_path: str, version: str, m: sp.csr_matrix, old: sp.csr_matrix,
                new: sp.csr_matrix, present: np.ndarray, measure: Measure
                ) -> tuple[Neighbors, str]:
    """The stored inverse of ``db_path`` at ``version``, updated (and its new version), and
    the EASE lists from it (``run`` it)."""
    from .inverse_store import InverseStore, update_stored

    store = InverseStore.for_path(db_path)
    factor = store.load(version)
    if factor is None:
        raise RuntimeError(f"the stored EASE inverse of {db_path} is not version {version}")
    return update_stored(store, factor, version, m, old, new, present, measure)
