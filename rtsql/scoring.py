"""The recommend formula as compiled loops: one user's hybrid top-k from in-memory lists.

``sql/macros/30_rtsql_recommend_core.sql`` defines what a recommendation is; this module runs
the same steps (the names in comments are the macro's CTEs) over the arrays of
``rtsql.state.Refreshed`` with numba, so that scoring a user costs what its contributions cost
(tens of microseconds at 10M events), not a SQL plan (20-35 ms) nor numpy's per-call overhead.
Both the HTTP server (one user per request) and ``user_recommendations`` (every user, on
``threads`` threads) call ``score_user``; nothing else in rtsql scores a user.

Exactness. The macro sums each candidate's contributions with ``fsum``; here each sum is
accumulated in double-double (TwoSum), which is exact while its low part adds without
rounding, and otherwise correctly rounded unless the exact sum lies within a tiny error bound
of a rounding boundary; those rare sums are recomputed term by term and rounded exactly
(Shewchuk's partials, as CPython's math.fsum does). Every later step (scaling by the
best candidate, the blend, the trending share) repeats the macro's floating-point operations
in its order, so equal sums stay equal and ties rank the same way: by score, then popularity,
then item key.

numba (``cache=True``) compiles these functions on first use and caches the machine code next
to this file; ``warm_up()`` does that ahead of the first request.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
from numba import njit

from .vocabulary import PART_CONTENT, PART_ITEM, PART_POPULAR, PART_TRENDING, PART_USER

_EPS = 2.0 ** -53
# accumulator columns per candidate: the sum as hi + lo (TwoSum carries each addition's
# rounding error into lo), and for item-cf and content the largest term with its history item
# and the sum of the terms' magnitudes (item-cf terms may be negative: ease's weights)
_HI, _LO, _BEST, _BECAUSE, _ABS = range(5)
# marks per item
_CANDIDATE, _EXCLUDED, _HAS = 1, 4, 16  # _HAS << strategy: it scored the item
_NOTHING = 2.0 ** 62  # "no history item" in the accumulators (above every key)


class Blend(NamedTuple):
    """A request's blend: the strategies' weights (the macro's cfg), exclude_seen, and how
    many entries of a neighbour user's list user-cf reads."""

    w_item: float
    w_user: float
    w_content: float
    w_trend: float
    exclude_seen: bool
    served: int


class Arrays(NamedTuple):
    """The model the scorer reads: each strategy's lists as CSR (indptr, keys, values), the
    neighbour users' capped rows (x_*), trending's shares and popularity, the backfill order,
    the first key newer than that order, and the number of item keys."""

    item_indptr: np.ndarray
    item_keys: np.ndarray
    item_values: np.ndarray
    user_indptr: np.ndarray
    user_keys: np.ndarray
    user_values: np.ndarray
    content_indptr: np.ndarray
    content_keys: np.ndarray
    content_values: np.ndarray
    x_indptr: np.ndarray
    x_keys: np.ndarray
    x_values: np.ndarray
    share: np.ndarray
    popularity: np.ndarray
    order: np.ndarray
    first_new: int
    n_items: int


class Scratch:
    """Per-thread work arrays sized to the catalog: an accumulator table per strategy (kept
    narrow: a call's cost is mostly the cache lines its candidates touch), marks per item
    (_CANDIDATE, _EXCLUDED, _HAS << strategy), the touched candidates, and room for
    one sum's terms. A call resets only what it touched, so it costs its contributions, not
    the catalog, and one Scratch serves a thread's calls in sequence."""

    def __init__(self, n_items: int):
        self.capacity = n_items
        self.item = _table(n_items, 5)
        self.user = _table(n_items, 2)
        self.content = _table(n_items, 5)
        self.mark = np.zeros(n_items, np.uint8)
        self.touched = np.empty(n_items, np.int64)
        self.terms = np.empty(1024)

    def arrays(self) -> tuple:
        return self.item, self.user, self.content, self.mark, self.touched, self.terms

    @classmethod
    def per_thread(cls, local: threading.local, n_items: int) -> "Scratch":
        scratch = getattr(local, "scratch", None)
        if scratch is None or scratch.capacity < n_items:
            scratch = local.scratch = cls(max(n_items, int((scratch.capacity if scratch
                                                            else 0) * 1.5)))
        return scratch


def _table(n: int, width: int) -> np.ndarray:
    table = np.zeros((n, width))
    if width > _BEST:
        table[:, _BEST] = -np.inf
        table[:, _BECAUSE] = _NOTHING
    return table


@njit(nogil=True, cache=True, error_model="numpy")
def _fsum(terms, n):
    """The correctly rounded sum of terms[:n]: CPython's math.fsum (Shewchuk's partials, with
    its round-half-even correction)."""
    partials = np.empty(n + 2)
    count = 0
    for t in range(n):
        x = terms[t]
        i = 0
        for j in range(count):
            y = partials[j]
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo != 0.0:
                partials[i] = lo
                i += 1
            x = hi
        partials[i] = x
        count = i + 1
    if count == 0:
        return 0.0
    m = count - 1
    hi = partials[m]
    lo = 0.0
    while m > 0:
        x = hi
        y = partials[m - 1]
        m -= 1
        hi = x + y
        yr = hi - x
        lo = y - yr
        if lo != 0.0:
            break
    if m > 0 and ((lo < 0.0 and partials[m - 1] < 0.0) or (lo > 0.0 and partials[m - 1] > 0.0)):
        y = lo * 2.0
        x = hi + y
        yr = x - hi
        if y == yr:
            hi = x
    return hi


@njit(nogil=True, cache=True, error_model="numpy")
def _two_sum(a, b):
    """(fl(a + b), its rounding error): a + b == s + e exactly."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@njit(nogil=True, cache=True, error_model="numpy")
def _add(acc, c, t):
    """Adds t to candidate c's hi + lo; returns whether lo's own addition rounded."""
    # two TwoSums written out: measured faster here than a helper returning tuples
    a = acc[c, _HI]
    s = a + t
    bb = s - a
    e = (a - (s - bb)) + (t - bb)
    acc[c, _HI] = s
    lo = acc[c, _LO]
    s2 = lo + e
    bb2 = s2 - lo
    acc[c, _LO] = s2
    return (lo - (s2 - bb2)) + (e - bb2) != 0.0


@njit(nogil=True, cache=True, error_model="numpy")
def _certain(hi, lo, rounded, n, magnitude):
    """(fl(hi + lo), whether it is the correctly rounded exact sum). Unless lo's additions
    rounded (``rounded``: anywhere in this user's strategy), hi + lo is the exact sum and
    rounds half to even as fsum does (sums of values with few significant bits often land
    exactly on a midpoint). Otherwise the exact sum is within gamma(n-2) gamma(n-1)
    sum|terms| of hi + lo (Ogita, Rump and Oishi 2005, Sum2), here 4 n^2 eps^2 ``magnitude``,
    and only a sum that close to a rounding boundary is uncertain."""
    r, e = _two_sum(hi, lo)  # hi + lo == r + e exactly
    if not rounded:
        return r, True
    bound = 8.0 * (n * _EPS) * (n * _EPS) * magnitude  # twice over: e +- bound rounds too
    # every value in [r + e - bound, r + e + bound] rounds to r iff both ends do
    return r, r + (e + bound) == r and r + (e - bound) == r


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _source(walk, p):
    """A walk's p-th source: (weight, row, first entry, end); no entries for a source that
    is not in the walk's h (NaN weight) or has no row."""
    sources, weights, indptr = walk[0], walk[1], walk[2]
    w = weights[p]
    r = sources[p]
    if np.isnan(w) or r >= len(indptr) - 1:
        return w, r, 0, 0
    return w, r, indptr[r], indptr[r + 1]


@njit(nogil=True, cache=True, error_model="numpy")
def _walk(acc, mark, touched, nt, walk, has):
    """One strategy's ``scored``: every entry of each source's row, source weight x entry
    value, added into ``acc``. A walk is (sources, weights, indptr, keys, values): for
    item-cf and content the history items and their weights over the stored lists (the
    served ones, used whole); for user-cf the user's first ``served`` neighbours and their
    similarities over the neighbours' capped rows. A table with the _ABS column (item-cf,
    content) also keeps each candidate's largest term, the source behind it and the sum of
    the magnitudes. Returns (touched count, whether some lo rounded)."""
    keys, values = walk[3], walk[4]
    explains = acc.shape[1] > _ABS
    rounded = False
    for p in range(len(walk[0])):
        w, r, lo, hi = _source(walk, p)
        for q in range(lo, hi):
            c = keys[q]
            t = w * values[q]
            flags = mark[c]  # marks are written only when they change (not per term)
            if flags & has == 0:
                if flags & _CANDIDATE == 0:
                    touched[nt] = c
                    nt += 1
                mark[c] = flags | _CANDIDATE | has
            rounded |= _add(acc, c, t)
            if explains:
                acc[c, _ABS] += abs(t)
                if t > acc[c, _BEST]:  # ties keep the earlier, smaller source key
                    acc[c, _BEST] = t
                    acc[c, _BECAUSE] = r
    return nt, rounded


@njit(nogil=True, cache=True, error_model="numpy")
def _terms(c, terms, walk):
    """Candidate c's terms in one strategy's walk, recomputed one by one: (terms, count)."""
    keys, values = walk[3], walk[4]
    n = 0
    for p in range(len(walk[0])):
        w, _, lo, hi = _source(walk, p)
        for q in range(lo, hi):
            if keys[q] == c:
                if n == len(terms):
                    terms = np.concatenate((terms, np.empty(len(terms))))
                terms[n] = w * values[q]
                n += 1
    return terms, n


@njit(nogil=True, cache=True, error_model="numpy")
def _before(f1, p1, k1, f2, p2, k2):
    """Whether (score f1, popularity p1, key k1) ranks before (f2, p2, k2): score desc,
    popularity desc, key asc."""
    if f1 != f2:
        return f1 > f2
    if p1 != p2:
        return p1 > p2
    return k1 < k2


@njit(nogil=True, cache=True, error_model="numpy")
def _offer(heap, size, k, final, pop, key, part, because):
    """Keeps the k best entries seen in ``heap`` (columns final, popularity, key, part,
    because; the worst at the root). Returns the new size."""
    if size < k:
        at = size
        size += 1
        while at > 0:  # sift up: a parent ranks after its children
            up = (at - 1) // 2
            if not _before(heap[up, 0], heap[up, 1], heap[up, 2], final, pop, key):
                break
            heap[at] = heap[up]
            at = up
    elif _before(final, pop, key, heap[0, 0], heap[0, 1], heap[0, 2]):
        at = 0
        while True:  # sift down from the root
            child = 2 * at + 1
            if child >= size:
                break
            if child + 1 < size and _before(heap[child, 0], heap[child, 1], heap[child, 2],
                                            heap[child + 1, 0], heap[child + 1, 1],
                                            heap[child + 1, 2]):
                child += 1  # the worse child
            if _before(heap[child, 0], heap[child, 1], heap[child, 2], final, pop, key):
                break
            heap[at] = heap[child]
            at = child
    else:
        return size
    heap[at, 0] = final
    heap[at, 1] = pop
    heap[at, 2] = key
    heap[at, 3] = part
    heap[at, 4] = because
    return size


@njit(nogil=True, cache=True, error_model="numpy")
def _sum(acc, c, rounded, terms, walk):
    """Candidate c's sum in one strategy, correctly rounded (stored back, so asking again is
    cheap): hi + lo when _certain vouches for it, else recomputed from its walk's terms.
    sum|terms| is the table's _ABS column where it has one (item-cf, content); user-cf's
    terms are positive (capped rows hold positive weights, user lists positive scores:
    ServingState checks), so |hi| + |lo| bounds it there. A candidate has at most one term
    per source."""
    hi = acc[c, _HI]
    lo = acc[c, _LO]
    magnitude = acc[c, _ABS] if acc.shape[1] > _ABS else abs(hi) + abs(lo)
    total, certain = _certain(hi, lo, rounded, len(walk[0]), 2.0 * magnitude)
    if not certain:
        terms, n = _terms(c, terms, walk)
        total = _fsum(terms, n)
        acc[c, _HI] = total
        acc[c, _LO] = 0.0
    return total


@njit(nogil=True, cache=True, error_model="numpy")
def _bests(acc_item, acc_user, acc_content, mark, touched, nt, r_item, r_user, r_content,
           terms, walks):
    """Each strategy's best candidate sum (the macro's max(...) over ()), exactly: the largest
    hi + lo, then the exact sums of every candidate within a hair of it (-inf: none)."""
    has_item, has_user, has_content = (_HAS << PART_ITEM, _HAS << PART_USER,
                                       _HAS << PART_CONTENT)
    top_item = top_user = top_content = -np.inf
    for j in range(nt):
        c = touched[j]
        flags = mark[c]
        if flags & has_item:
            top_item = max(top_item, acc_item[c, _HI] + acc_item[c, _LO])
        if flags & has_user:
            top_user = max(top_user, acc_user[c, _HI] + acc_user[c, _LO])
        if flags & has_content:
            top_content = max(top_content, acc_content[c, _HI] + acc_content[c, _LO])
    # hi + lo is within an ulp of the exact sum
    near_item = top_item - 1e-12 * (abs(top_item) + 1e-300)
    near_user = top_user - 1e-12 * (abs(top_user) + 1e-300)
    near_content = top_content - 1e-12 * (abs(top_content) + 1e-300)
    best_item = best_user = best_content = -np.inf
    for j in range(nt):
        c = touched[j]
        flags = mark[c]
        if flags & has_item and acc_item[c, _HI] + acc_item[c, _LO] >= near_item:
            best_item = max(best_item, _sum(acc_item, c, r_item, terms, walks[0]))
        if flags & has_user and acc_user[c, _HI] + acc_user[c, _LO] >= near_user:
            best_user = max(best_user, _sum(acc_user, c, r_user, terms, walks[1]))
        if flags & has_content and acc_content[c, _HI] + acc_content[c, _LO] >= near_content:
            best_content = max(best_content, _sum(acc_content, c, r_content, terms, walks[2]))
    return best_item, best_user, best_content


@njit(nogil=True, cache=True, error_model="numpy")
def _scaled(c, flags, acc_item, acc_user, acc_content, has_item, has_user, has_content,
            best_item, best_user, best_content, w_item, w_user, w_content, r_item, r_user,
            r_content, terms, walks):
    """The macro's ``scaled``: each strategy's exact sum / its best * its weight (0 where
    the strategy did not score c, or where its best sum is not positive: the macro's NULL)."""
    si = su = sc = 0.0
    if flags & has_item and best_item > 0.0:
        si = _sum(acc_item, c, r_item, terms, walks[0]) / best_item * w_item
    if flags & has_user and best_user > 0.0:
        su = _sum(acc_user, c, r_user, terms, walks[1]) / best_user * w_user
    if flags & has_content and best_content > 0.0:
        sc = _sum(acc_content, c, r_content, terms, walks[2]) / best_content * w_content
    return si, su, sc


@njit(nogil=True, cache=True, error_model="numpy")
def score_user(user, h_items, h_w, exclude, allowed, k, blend, arrays, scratch,
               out_keys, out_score, out_part, out_because):
    """One user's top-k into out_* (returns how many rows). ``user``: its key, or -1 (a
    basket, or a user with no refreshed row); ``h_items``/``h_w``: the current history sorted
    by item key, weights after query-time recency (NaN: not in the macro's h, weight <= 0,
    seen only); ``exclude``: more item keys to leave out; ``allowed``: the category's items as
    a mask (empty: every item); ``blend``: a Blend; ``arrays``: the model's Arrays (``order``:
    the stored backfill order; ``first_new``: the first key newer than that order, up to
    ``n_items``); ``scratch``: a Scratch's arrays. Item lists are used whole and may hold
    negative scores; every other list score and neighbour-row weight must be positive
    (ServingState checks). The macro's steps in order: scored (_scored), per_part (_bests),
    excluded, scaled + blend + pool + ranked (_blended, _backfill), then the rows out."""
    acc_item, acc_user, acc_content, mark, touched, terms = scratch
    walks, nt, rounded = _scored(user, h_items, h_w, blend, arrays, scratch)
    bests = _bests(acc_item, acc_user, acc_content, mark, touched, nt, rounded[0], rounded[1],
                   rounded[2], terms, walks)
    _mark(mark, h_items, exclude, _EXCLUDED, blend[4])
    heap = np.empty((k, 5))
    size = _blended(heap, k, allowed, blend, arrays, scratch, nt, rounded, bests, walks)
    size = _backfill(heap, size, k, allowed, blend, arrays, scratch, rounded, bests, walks)
    _rows_out(heap, size, out_keys, out_score, out_part, out_because)
    # leave the scratch as it was found
    for j in range(nt):
        c = touched[j]
        flags = mark[c]
        mark[c] = 0
        if flags & _HAS << PART_ITEM:
            _clear(acc_item, c)
        if flags & _HAS << PART_USER:
            acc_user[c, _HI] = 0.0
            acc_user[c, _LO] = 0.0
        if flags & _HAS << PART_CONTENT:
            _clear(acc_content, c)
    _mark(mark, h_items, exclude, 0, True)
    return size


@njit(nogil=True, cache=True, error_model="numpy")
def _scored(user, h_items, h_w, blend, arrays, scratch):
    """The macro's ``scored``: each strategy with a weight walks its lists (_walk) into its
    accumulator table. Returns (the walks, how many candidates they touched, whether each
    strategy's lo rounded)."""
    w_item, w_user, w_content, served = blend[0], blend[1], blend[2], blend[5]
    (item_indptr, item_keys, item_values, user_indptr, user_keys, user_values,
     content_indptr, content_keys, content_values, x_indptr, x_keys, x_values) = arrays[:12]
    acc_item, acc_user, acc_content, mark, touched = scratch[:5]
    lo = hi = 0
    if 0 <= user < len(user_indptr) - 1:
        lo = user_indptr[user]
        hi = min(user_indptr[user + 1], lo + served)
    walks = ((h_items, h_w, item_indptr, item_keys, item_values),
             (user_keys[lo:hi], user_values[lo:hi], x_indptr, x_keys, x_values),
             (h_items, h_w, content_indptr, content_keys, content_values))
    nt = 0
    r_item = r_user = r_content = False
    if w_item > 0.0:
        nt, r_item = _walk(acc_item, mark, touched, nt, walks[0], _HAS << PART_ITEM)
    if w_user > 0.0:
        nt, r_user = _walk(acc_user, mark, touched, nt, walks[1], _HAS << PART_USER)
    if w_content > 0.0:
        nt, r_content = _walk(acc_content, mark, touched, nt, walks[2], _HAS << PART_CONTENT)
    return walks, nt, (r_item, r_user, r_content)


@njit(nogil=True, cache=True, error_model="numpy")
def _mark(mark, h_items, exclude, flag, history):
    """The macro's ``excluded`` (flag _EXCLUDED): ``exclude``'s items, and the history's when
    ``history`` (exclude_seen); flag 0 clears them."""
    if history:
        for p in range(len(h_items)):
            mark[h_items[p]] = mark[h_items[p]] | flag if flag else 0
    for p in range(len(exclude)):
        mark[exclude[p]] = mark[exclude[p]] | flag if flag else 0


@njit(nogil=True, cache=True, error_model="numpy")
def _scaled_of(c, flags, scratch, rounded, bests, blend, walks):
    """_scaled for candidate c with the kernel's tuples."""
    return _scaled(c, flags, scratch[0], scratch[1], scratch[2], _HAS << PART_ITEM,
                   _HAS << PART_USER, _HAS << PART_CONTENT, bests[0], bests[1], bests[2],
                   blend[0], blend[1], blend[2], rounded[0], rounded[1], rounded[2],
                   scratch[5], walks)


@njit(nogil=True, cache=True, error_model="numpy")
def _blended(heap, k, allowed, blend, arrays, scratch, nt, rounded, bests, walks):
    """The macro's scaled + blend + pool + ranked over the candidates the walks touched: the
    k best eligible ones by (score desc, popularity desc, key asc), kept in ``heap``. A
    candidate is first scored with hi + lo and reciprocals (cheap: _approximate, _trend); only
    one that could enter the heap is scored exactly, with the macro's operations (exact sums,
    sum / best * weight). Returns the heap's size."""
    w_trend = blend[3]
    share, popularity = arrays[12], arrays[13]
    mark, touched = scratch[3], scratch[4]
    recs = _reciprocals(blend, bests)
    size = 0
    for j in range(nt):
        c = touched[j]
        flags = mark[c]
        if flags & _EXCLUDED or (len(allowed) and not allowed[c]):
            continue
        trend = _trend(c, share, w_trend, heap[0, 0] if size == k else -np.inf,
                       _approximate(c, flags, scratch, recs))
        if np.isnan(trend):
            continue  # cannot enter the full heap
        si, su, sc = _scaled_of(c, flags, scratch, rounded, bests, blend, walks)
        if si == 0.0 and su == 0.0 and sc == 0.0:
            continue  # not in the blend (the macro's NULLs)
        final = (si + su + sc) + trend
        pop = popularity[c] if c < len(popularity) else 0
        win, because = _winner(c, si, su, sc, trend, scratch)
        size = _offer(heap, size, k, final, pop, c, win, because)
    return size


@njit(nogil=True, cache=True, error_model="numpy")
def _reciprocals(blend, bests):
    """Each strategy's weight / its best sum (0 where the best is not positive)."""
    return (blend[0] / bests[0] if bests[0] > 0.0 else 0.0,
            blend[1] / bests[1] if bests[1] > 0.0 else 0.0,
            blend[2] / bests[2] if bests[2] > 0.0 else 0.0)


@njit(nogil=True, cache=True, error_model="numpy")
def _approximate(c, flags, scratch, recs):
    """Candidate c's scaled parts from hi + lo and the reciprocals: (si, su, sc), within a
    few ulps of the terms' magnitudes of the exact ones."""
    acc_item, acc_user, acc_content = scratch[0], scratch[1], scratch[2]
    si = (acc_item[c, _HI] + acc_item[c, _LO]) * recs[0] if flags & _HAS << PART_ITEM else 0.0
    su = (acc_user[c, _HI] + acc_user[c, _LO]) * recs[1] if flags & _HAS << PART_USER else 0.0
    sc = (acc_content[c, _HI] + acc_content[c, _LO]) * recs[2] \
        if flags & _HAS << PART_CONTENT else 0.0
    return si, su, sc


@njit(nogil=True, cache=True, error_model="numpy")
def _trend(c, share, w_trend, worst, approx):
    """Candidate c's trend term, share x w_trend; NaN when c cannot beat ``worst`` (the full
    heap's worst final score; -inf while the heap fills) by its approximate parts ``approx``.
    A share is at most 1, so w_trend bounds the term and most candidates are dropped before
    their share is read."""
    si, su, sc = approx
    base = si + su + sc
    slack = 1e-12 * (1.0 + abs(si) + abs(su) + abs(sc) + w_trend)
    if base + w_trend + slack < worst:
        return np.nan
    trend = (share[c] if c < len(share) else 0.0) * w_trend
    return np.nan if base + trend + slack < worst else trend


@njit(nogil=True, cache=True, error_model="numpy")
def _winner(c, si, su, sc, trend, scratch):
    """The row's part and reason: the strategy that added the most among those that scored
    c (item-cf, then user-cf, then content on ties), trending when its term is larger; with
    the history item behind it for item-cf and content (-1 otherwise)."""
    if si != 0.0 and si >= (su if su != 0.0 else si) and si >= (sc if sc != 0.0 else si):
        win, win_s, because = PART_ITEM, si, scratch[0][c, _BECAUSE]
    elif su != 0.0 and su >= (sc if sc != 0.0 else su):
        win, win_s, because = PART_USER, su, -1.0
    else:
        win, win_s, because = PART_CONTENT, sc, scratch[2][c, _BECAUSE]
    if win_s < trend and trend > 0.0:
        return PART_TRENDING, -1.0
    return win, because


@njit(nogil=True, cache=True, error_model="numpy")
def _backfill(heap, size, k, allowed, blend, arrays, scratch, rounded, bests, walks):
    """The macro's backfill into ``heap``: the first k eligible items of the stored order
    (none the blend scored), then new items by key. Returns the heap's size.

    A backfill row scores its trend alone, share x w_trend, at most w_trend (a share is at
    most 1). Once the heap is full and its worst row scores more than that, no backfill row
    can rank among the k, and the walk down the order (each step asking whether the blend
    scored the item, an exact sum) stops there."""
    w_trend = blend[3]
    share, popularity, order, first_new, n_items = arrays[12:]
    found = 0
    for source in range(2):
        count = len(order) if source == 0 else n_items - first_new
        for p in range(count):
            if found == k or (size == k and w_trend < heap[0, 0]):
                break
            c = order[p] if source == 0 else first_new + p
            if not _unblended(c, allowed, scratch, rounded, bests, blend, walks):
                continue
            trend = (share[c] if c < len(share) else 0.0) * w_trend
            size = _offer(heap, size, k, 0.0 + trend,
                          popularity[c] if c < len(popularity) else 0, c,
                          PART_TRENDING if trend > 0.0 else PART_POPULAR, -1.0)
            found += 1
    return size


@njit(nogil=True, cache=True, error_model="numpy")
def _unblended(c, allowed, scratch, rounded, bests, blend, walks):
    """Whether item c may take a backfill row: not excluded, not in the blend (scored by no
    strategy, or only with the macro's NULLs), and in ``allowed`` (empty: every item)."""
    mark = scratch[3]
    if c < len(mark):
        flags = mark[c]
        if flags & _EXCLUDED:
            return False
        if flags & _CANDIDATE:
            si, su, sc = _scaled_of(c, flags, scratch, rounded, bests, blend, walks)
            if si != 0.0 or su != 0.0 or sc != 0.0:
                return False
    return not (len(allowed) and (c >= len(allowed) or not allowed[c]))


@njit(nogil=True, cache=True, error_model="numpy")
def _rows_out(heap, size, out_keys, out_score, out_part, out_because):
    """The heap's entries in rank order into out_*."""
    ranked = np.arange(size)
    for a in range(1, size):  # insertion sort: size is k
        i = ranked[a]
        b = a - 1
        while b >= 0 and _before(heap[i, 0], heap[i, 1], heap[i, 2], heap[ranked[b], 0],
                                 heap[ranked[b], 1], heap[ranked[b], 2]):
            ranked[b + 1] = ranked[b]
            b -= 1
        ranked[b + 1] = i
    for r in range(size):
        i = ranked[r]
        out_score[r] = heap[i, 0]
        out_keys[r] = np.int64(heap[i, 2])
        out_part[r] = np.int64(heap[i, 3])
        out_because[r] = np.int64(heap[i, 4])


@njit(nogil=True, cache=True, error_model="numpy")
def _clear(acc, c):
    acc[c, _HI] = 0.0
    acc[c, _LO] = 0.0
    acc[c, _BEST] = -np.inf
    acc[c, _BECAUSE] = _NOTHING
    acc[c, _ABS] = 0.0


@njit(nogil=True, cache=True, error_model="numpy")
def score_users(users, h_indptr, h_keys, h_weights, h_types, excluded, k, blend, arrays,
                scratch, out_keys, out_score, out_part, out_because, out_type, out_rows):
    """``score_user`` for each of ``users`` over its refreshed row of the interaction matrix
    (h_*: every entry, with the weights of the macro's h, NaN elsewhere, and the event type
    codes; x_*: the capped rows user-cf reads; a user past the matrix has an empty row),
    into row i of the out_* tables; out_type: the event type code of each row's because
    item in the user's row (0: none); ``excluded``: item keys left out of every list (the
    items not available)."""
    everything = np.empty(0, np.bool_)
    for i in range(len(users)):
        u = users[i]
        lo = hi = 0
        if u < len(h_indptr) - 1:
            lo = h_indptr[u]
            hi = h_indptr[u + 1]
        rows = score_user(u, h_keys[lo:hi], h_weights[lo:hi], excluded, everything, k, blend,
                          arrays, scratch, out_keys[i], out_score[i], out_part[i],
                          out_because[i])
        out_rows[i] = rows
        for r in range(rows):
            b = out_because[i, r]
            out_type[i, r] = 0
            if b >= 0:
                at = lo + np.searchsorted(h_keys[lo:hi], b)
                if at < hi and h_keys[at] == b:
                    out_type[i, r] = h_types[at]


@njit(nogil=True, cache=True, error_model="numpy")
def merge_history(items, weights, codes, ts, ids):
    """``rtsql_user_history`` for one user: entries (the refreshed row with id -1, then the
    pending events) merged per item, sorted by item: the weights added exactly (fsum), the
    type of the latest entry (ties on ts: the larger id, a later event), the latest ts.
    Returns (items, weights, codes, ts)."""
    n = len(items)
    order = np.argsort(items, kind="mergesort")
    out_items = np.empty(n, np.int64)
    out_weights = np.empty(n)
    out_codes = np.empty(n, np.int64)
    out_ts = np.empty(n, np.int64)
    terms = np.empty(n)
    m = 0
    a = 0
    while a < n:
        item = items[order[a]]
        b = a
        latest = order[a]
        while b < n and items[order[b]] == item:
            i = order[b]
            terms[b - a] = weights[i]
            if ts[i] > ts[latest] or (ts[i] == ts[latest] and ids[i] > ids[latest]):
                latest = i
            b += 1
        count = b - a
        out_items[m] = item
        # one or two terms: a double addition is already correctly rounded
        out_weights[m] = terms[0] if count == 1 else (terms[0] + terms[1] if count == 2
                                                     else _fsum(terms, count))
        out_codes[m] = codes[latest]
        out_ts[m] = ts[latest]
        m += 1
        a = b
    return out_items[:m], out_weights[:m], out_codes[:m], out_ts[:m]


def warm_up() -> None:
    """Load score_user, score_users and merge_history from numba's cache (or compile them)
    ahead of their first real call: each call here has the argument types rtsql.serving
    passes (tests/test_scoring.py checks that no second signature appears), over a catalog
    of one item and a user with no history. Serve does it before its first request, a
    refresh that writes user_recommendations in a thread while it computes the lists."""
    i1, f1 = np.zeros(1, np.int64), np.zeros(1)
    none_i, none_f = np.empty(0, np.int64), np.empty(0)
    ptr = np.zeros(2, np.int64)
    lists = (ptr, none_i, none_f)
    model = Arrays(*lists, *lists, *lists, *lists, f1, i1, i1, 1, 1)
    blend = Blend(0.5, 0.5, 0.5, 0.5, True, 1)
    scratch = Scratch(2).arrays()
    score_user(np.int64(0), none_i, none_f, none_i, np.empty(0, np.bool_), np.int64(1),
               blend, model, scratch, i1, f1, i1.copy(), i1.copy())
    out = (np.zeros((1, 1), np.int64), np.zeros((1, 1)), np.zeros((1, 1), np.int64),
           np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64), np.zeros(1, np.int64))
    score_users(i1, ptr, none_i, none_f, none_i, none_i, np.int64(1), blend, model, scratch,
                *out)
    merge_history(i1, f1, i1, i1, i1)
