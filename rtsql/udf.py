"""Python UDFs registered on every connection rtsql opens.

They are not stored in the database file: nothing that BI tools query depends on them (the
refresh uses them to fill stored tables).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _flat(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values, offsets and a null mask of a list array (list or large_list)."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    values = pc.cast(arr.flatten(), pa.float64()).to_numpy(zero_copy_only=False)
    # flatten() drops the values of null slots: rebuild offsets relative to the flat values
    lengths = np.diff(offsets)
    lengths[nulls] = 0
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    return values, offsets, nulls


def cosine_arrow(a: pa.Array, b: pa.Array) -> pa.Array:
    """Row-wise cosine of two list columns. NULL when either side is NULL, 0 for a zero
    vector; vectors of different lengths are an error."""
    va, oa, na = _flat(a)
    vb, ob, nb = _flat(b)
    la, lb = np.diff(oa), np.diff(ob)
    both = ~(na | nb)
    bad = both & (la != lb)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"rtsql_cosine: vectors of different lengths ({la[row]} and {lb[row]}) "
                         f"in row {row + 1}; both arguments must have the same dimension")
    n = len(la)
    out = np.zeros(n)
    use = both & (la > 0)
    if use.any():
        ia = _gather(oa, use)
        ib = _gather(ob, use)
        seg = np.repeat(np.arange(use.sum()), la[use])
        dot = np.bincount(seg, va[ia] * vb[ib], minlength=use.sum())
        na2 = np.bincount(seg, va[ia] ** 2, minlength=use.sum())
        nb2 = np.bincount(seg, vb[ib] ** 2, minlength=use.sum())
        denom = np.sqrt(na2 * nb2)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[use] = np.where(denom > 0, dot / denom, 0.0)
    return pa.array(out, pa.float64(), mask=~both)


def _gather(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Flat positions of the values of the selected rows, vectorized."""
    starts, lengths = offsets[:-1][rows], np.diff(offsets)[rows]
    total = int(lengths.sum())
    row_start = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return np.arange(total) + row_start


def register(con) -> None:
    """Register rtsql's UDFs on ``con``."""
    import duckdb

    try:
        con.remove_function("rtsql_cosine")
    except Exception:  # not registered yet on this connection
        pass
    con.create_function("rtsql_cosine", cosine_arrow,
                        [duckdb.list_type("DOUBLE"), duckdb.list_type("DOUBLE")], "DOUBLE",
                        type="arrow", null_handling="special")
