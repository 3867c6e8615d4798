"""Reference implementations and comparisons shared by the model tests, and the small
databases several test modules start from."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[1] / "sample_events"


def small_database(tmp_path: Path) -> Path:
    """A database holding the first sample file's events."""
    import rtsql
    from rtsql import ingest

    db_path = tmp_path / "shop.duckdb"
    con = rtsql.connect(db_path)
    ingest.ingest(con, sorted((SAMPLE / "events").iterdir())[:1])
    con.close()
    return db_path


def brute_force_topk(x: np.ndarray, k: int, shrinkage: float = 0.0, min_support: int = 1,
                     kind: str = "cosine", idf_n: float = 0.0):
    """Top-k cosine neighbours of the rows of a dense matrix, by the documented rule:
    sim = dot / (|a||b|) * support / (support + shrinkage), kept when > 0 and support >= min_support, ordered by
    (score desc, neighbour asc). Returns {row: [(nb, score), ...]}."""
    if kind == "tfidf":
        x = np.sqrt(x)
        present = (x > 0).sum(axis=1)
        scale = np.maximum(np.log(max(idf_n, 1.0)) - np.log1p(present), 0.0)
    else:
        norms = np.sqrt((x * x).sum(axis=1))
        scale = np.where(norms > 0, 1 / np.where(norms > 0, norms, 1), 0.0)
    dots = x @ x.T
    support = (x > 0).astype(float) @ (x > 0).astype(float).T
    out = {}
    for a in range(x.shape[0]):
        cands = []
        for b in range(x.shape[0]):
            if a == b or dots[a, b] <= 0 or support[a, b] < min_support:
                continue
            shrink = support[a, b] / (support[a, b] + shrinkage)
            sim = dots[a, b] * scale[a] * scale[b] * shrink
            if sim > 0:
                cands.append((b, sim))
        cands.sort(key=lambda t: (-t[1], t[0]))
        if cands:
            out[a] = cands[:k]
    return out


def lists_from_rows(rows):
    """{key: [(nb, score), ...]} from (key, nb, score, rank) rows."""
    out = defaultdict(list)
    for key, nb, score, _rank in sorted(rows, key=lambda r: (r[0], r[3])):
        out[key].append((nb, score))
    return dict(out)


def assert_same_lists(got: dict, want: dict, tol: float = 1e-9):
    """Equal lists: same keys, same scores (within tol) rank by rank, same neighbours except
    where scores tie within tol (then either order is right)."""
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))
    for key in want:
        g, w = got[key], want[key]
        assert len(g) == len(w), (key, g, w)
        for (_, gs), (_, ws) in zip(g, w):
            assert abs(gs - ws) <= tol, (key, g, w)
        gset = {n for n, s in g if abs(s - w[-1][1]) > tol}
        wset = {n for n, s in w if abs(s - w[-1][1]) > tol}
        assert gset == wset, (key, g, w)


def brute_force_ease(x: np.ndarray, k: int, lam: float, tol: float = 1e-9,
                     absolute: float | None = None, dropout: float = 0.0):
    """Steck's closed form as written: B = I - P / diag(P), P = (X^T X + Lambda)^-1 over
    the rows of x (rows are items), Lambda = lambda' I + p / (1 - p) diag(X^T X) (DLAE,
    Steck 2020; p = ``dropout``, 0: EASE), lambda' = lam x the mean squared nonzero weight (or
    ``absolute``); the lists as brute_force_ease_lists selects them. Returns (lists,
    ambiguous)."""
    present = np.flatnonzero((x != 0).any(axis=1))
    sub = x[present]
    n = len(present)
    scale = float(np.mean(sub[sub != 0] ** 2)) if n else 1.0
    reg = lam * scale if absolute is None else absolute
    g = sub @ sub.T
    p = np.linalg.inv(g + reg * np.eye(n) + dropout / (1 - dropout) * np.diag(np.diag(g)))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return brute_force_ease_lists(b, present, k, tol)


def brute_force_ease_lists(b: np.ndarray, present: np.ndarray, k: int, tol: float = 1e-9):
    """EASE's lists of B (n x n over the items ``present``): the k x n entries of largest |B|
    off the diagonal, at most 8k per row, each list by (weight desc, key asc); numerical zeros
    (1e-9 of the largest) left out. Returns (lists, ambiguous): ambiguous when a magnitude ties
    another within ``tol`` at a cut (either side is then right)."""
    n = len(present)
    zero = 1e-9 * np.abs(b).max(initial=0.0)  # numerical zeros
    cap = min(8 * k, n - 1)
    ambiguous = False
    candidates = []
    for a in range(n):
        by_size = sorted(range(n), key=lambda j: (-abs(b[a, j]), j))
        if 0 < cap < n and abs(b[a, by_size[cap - 1]]) > zero:  # zeros are left out anyway
            ambiguous |= abs(abs(b[a, by_size[cap - 1]]) - abs(b[a, by_size[cap]])) <= tol
        candidates += [(a, j) for j in by_size[:cap]]
    sizes = sorted((abs(b[a, j]) for a, j in candidates), reverse=True)
    budget = min(k * n, len(sizes))
    threshold = sizes[budget - 1] if budget else np.inf
    if budget < len(sizes) and threshold > zero:
        ambiguous |= abs(threshold - sizes[budget]) <= tol
    out = {}
    for a in range(n):
        kept = sorted(((int(present[j]), b[a, j]) for r, j in candidates
                       if r == a and abs(b[a, j]) >= threshold and abs(b[a, j]) > zero),
                      key=lambda t: (-t[1], t[0]))
        if kept:
            out[int(present[a])] = kept
    return out, ambiguous


def assert_same_state(got, want):
    """Two serving states hold the same model arrays, ids and overlay."""
    import dataclasses

    for f in dataclasses.fields(want.model):
        a, b = getattr(got.model, f.name), getattr(want.model, f.name)
        if f.name == "category_masks":  # a cache filled by requests
            continue
        if hasattr(b, "indptr"):
            for part in ("indptr", "keys", "values"):
                assert np.array_equal(getattr(a, part), getattr(b, part)), (f.name, part)
        elif isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        elif isinstance(b, dict) and b and isinstance(next(iter(b.values())), np.ndarray):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in b), f.name
        else:
            assert a == b, f.name
    assert (got.user_keys, got.user_ids, got.item_ids, got.item_keys) == \
        (want.user_keys, want.user_ids, want.item_ids, want.item_keys)
    assert {u: sorted(r) for u, r in got.pending.items() if r} == \
        {u: sorted(r) for u, r in want.pending.items() if r}
    assert got.pending_events == want.pending_events and got.seen == want.seen
    assert np.array_equal(got.first_seen_us, want.first_seen_us)
