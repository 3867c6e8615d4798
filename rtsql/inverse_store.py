"""Where EASE's inverse lives between refreshes, so a refresh with new events updates it
(measures/ease.py ``EaseFactor``) instead of rebuilding it.

A database file keeps it beside itself: ``<db>.ease`` holds the capacity x capacity float64
buffer, memory-mapped and updated in place (pages outside the used n x n block are never
written, so the file is sparse and the spare capacity costs no disk or memory), and
``<db>.ease.json`` its rows, lambda' and version. An in-memory database keeps it in this
process.

The database's ``model_state`` row ``ease_version`` names the inverse its lists came from: a
new random token at each full build, a counter bumped at each update. The buffer is flushed
before the metadata names its new version, and the metadata says "dirty" while an update
writes, so a crash or a rolled-back refresh leaves versions that differ and the next refresh
rebuilds in full: a stale inverse is never updated.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .measures.ease import EaseFactor
from .sqlutil import database_path

DIRTY = "dirty"
# in-memory databases: token -> (factor, version), the few most recent builds of this process
_MEMORY: OrderedDict[str, tuple[EaseFactor, str]] = OrderedDict()
_MEMORY_KEPT = 4
# database files: path -> (mapped buffer, version), kept mapped between the refreshes of a
# long-running process (serve, tail), whose pages then stay faulted in (a new mapping would
# fault every page of the inverse in again)
_MAPPED: dict[str, tuple[np.ndarray, str]] = {}


class InverseStore:
    """The inverse of one database (``con``'s file, or this process for an in-memory one)."""

    def __init__(self, con):
        self._at(database_path(con))

    @classmethod
    def for_path(cls, path: str) -> "InverseStore":
        """The store of the database file at ``path`` (without a connection to it)."""
        store = cls.__new__(cls)
        store._at(path)
        return store

    def _at(self, path: str | None) -> None:
        self.db_path = path  # None: an in-memory database
        self.data = Path(path + ".ease") if path else None
        self.meta = Path(path + ".ease.json") if path else None

    # ------------------------------------------------------------------ full builds

    def build(self, m: sp.csr_matrix, rows: np.ndarray, lam: float, capacity: int,
              kappa: float = 0.0) -> EaseFactor:
        """A new inverse in a new buffer (a temporary file beside the database), not yet the
        stored one: ``publish`` makes it so."""
        return EaseFactor.build(m, rows, lam, self._new_buffer, capacity, kappa)

    def _new_buffer(self, capacity: int) -> np.ndarray:
        if self.data is None:
            return np.zeros((capacity, capacity))
        temporary = self._temporary()
        temporary.unlink(missing_ok=True)
        with open(temporary, "wb") as f:
            f.truncate(capacity * capacity * 8)  # sparse: only written pages take space
        return np.memmap(temporary, np.float64, "r+", shape=(capacity, capacity))

    def _temporary(self) -> Path:
        return self.data.with_name(self.data.name + ".building")

    def publish(self, factor: EaseFactor) -> str:
        """Make a full build the stored inverse; returns its version for model_state."""
        version = f"{uuid.uuid4().hex}:0"
        if self.data is None:
            _MEMORY[version.split(":")[0]] = (factor, version)
            while len(_MEMORY) > _MEMORY_KEPT:
                _MEMORY.popitem(last=False)
            return version
        self._write_meta(DIRTY, factor)
        _flush(self._temporary())
        os.replace(self._temporary(), self.data)
        self._write_meta(version, factor)
        _MAPPED[str(self.data)] = (factor.buffer, version)
        return version

    def discard(self) -> None:
        """No inverse any more (the item lists come from another measure)."""
        if self.data is not None:
            _MAPPED.pop(str(self.data), None)
            for path in (self.meta, self.data, self._temporary()):
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ updates

    def load(self, version: str | None) -> EaseFactor | None:
        """The stored inverse if it is the one ``version`` names (else None: rebuild)."""
        if not version:
            return None
        if self.data is None:
            entry = _MEMORY.get(version.split(":")[0])
            return entry[0] if entry and entry[1] == version else None
        try:
            meta = json.loads(self.meta.read_text())
            if meta["version"] != version:
                return None
            capacity = int(meta["capacity"])
            if self.data.stat().st_size != capacity * capacity * 8:
                return None
            mapped = _MAPPED.get(str(self.data))
            buffer = mapped[0] if mapped and mapped[1] == version else \
                np.memmap(self.data, np.float64, "r+", shape=(capacity, capacity))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return EaseFactor(np.asarray(meta["rows"], np.int64), float(meta["lam"]), buffer,
                          float(meta.get("kappa", 0.0)))

    def begin_update(self, factor: EaseFactor) -> None:
        """Say the buffer is being written: until ``end_update``, no version matches it."""
        if self.data is None:
            token = next(t for t, (f, _) in _MEMORY.items() if f is factor)
            _MEMORY[token] = (factor, DIRTY)
        else:
            _MAPPED.pop(str(self.data), None)
            self._write_meta(DIRTY, factor)

    def end_update(self, factor: EaseFactor, version: str) -> str:
        """The updated inverse's version (the counter of ``version`` plus one), once written."""
        token, count = version.split(":")
        new = f"{token}:{int(count) + 1}"
        if self.data is None:
            _MEMORY[token] = (factor, new)
        else:
            _flush(self.data)
            self._write_meta(new, factor)
            _MAPPED[str(self.data)] = (factor.buffer, new)
        return new

    def _write_meta(self, version: str, factor: EaseFactor) -> None:
        temporary = self.meta.with_name(self.meta.name + ".tmp")
        temporary.write_text(json.dumps({
            "version": version, "capacity": factor.buffer.shape[0], "lam": factor.lam,
            "kappa": factor.kappa,
            "rows": factor.rows.tolist()}))
        os.replace(temporary, self.meta)


def _flush(path: Path) -> None:
    """Write the mapped buffer's dirty pages to disk. fsync on the file covers pages dirtied
    through a shared mapping (Linux), and os.fsync releases the GIL, where numpy's
    memmap.flush (msync) holds it: 0.3-0.5 s of a 9,700-item inverse during which the
    server's requests waited."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def update_stored(store: InverseStore, factor: EaseFactor, version: str, m, old, new,
                  present, measure):
    """Fold changed rows into the stored inverse (EaseFactor.update), bracketed by the
    version protocol, and select the lists from it: (lists, the new version). The one
    sequence of the refresh, in its process or in the worker (compute_worker.py)."""
    store.begin_update(factor)
    factor.update(m, old, new, measure.threads)
    lists = factor.lists(measure, present)
    return lists, store.end_update(factor, version)
