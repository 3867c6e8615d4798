"""A/B allocation: which variant each user gets, and the bandit that moves the shares.

Users are split through 10,000 stored hash buckets (table ``ab_buckets``): a user's bucket is
md5(user_id) mod 10,000 (the ``ab_variant`` macro), and each bucket belongs to one variant.
When the shares change, ``reassign`` moves only as many buckets as the change requires, from
the variants that lose share to those that gain it: a user changes variant only when the
shares make it necessary, and a user whose variant keeps or grows its share never moves.

``rtsql variants --auto clicks`` (or ``purchases``) lets the shares follow the outcomes: at
each refresh, ``allocate`` reads every variant's impressions and successes within
``ab_auto_window_hours`` (from the ``impression_outcomes`` view), and gives each variant a
share proportional to the posterior probability that it is the best one (Thompson sampling
as randomized probability matching: Beta(1 + successes, 1 + failures) per variant), above a
floor of ``ab_min_share`` so that every variant keeps gathering evidence. The window lets a
variant that becomes better later be found again: old evidence ages out of it. Every change
is recorded in ``ab_allocations`` with its evidence.
"""

from __future__ import annotations

import hashlib

import numpy as np

BUCKETS = 10_000
METRICS = {"clicks": "clicked", "purchases": "purchased"}  # --auto METRIC -> outcome column
AUTO_OFF = "off"
GRID = 2000  # quantiles of each posterior behind p_best (error about 1 / GRID)
CREDIBLE = 0.95  # the interval reported with every rate


def bucket_of(user_id: str) -> int:
    """The ``ab_variant`` macro's bucket: md5 of the id, its first 32 bits, mod BUCKETS."""
    return int(hashlib.md5(user_id.encode()).hexdigest()[:8], 16) % BUCKETS


def bucket_counts(shares: dict[str, float]) -> dict[str, int]:
    """Buckets per variant: shares x BUCKETS rounded by largest remainder (ties by name), so
    the counts add up to BUCKETS exactly when the shares add up to 1."""
    names = sorted(shares)
    exact = np.array([shares[n] * BUCKETS for n in names])
    counts = np.floor(exact + 1e-9).astype(np.int64)
    short = BUCKETS - int(counts.sum()) if names else 0
    order = sorted(range(len(names)), key=lambda i: (-(exact[i] - counts[i]), names[i]))
    for i in order[:max(short, 0)]:
        counts[i] += 1
    return dict(zip(names, counts.tolist()))


def reassign(current: list, counts: dict[str, int]) -> list:
    """The new owner of each bucket, moving as few as possible: a variant over its count
    gives up its highest-numbered buckets, buckets of variants that are gone are free, and
    the free ones go to the variants under their count (by name, lowest bucket first). The
    number of buckets that change owner is the sum of the decreases: the least possible."""
    owners = list(current) if current else [None] * BUCKETS
    held: dict[str, list[int]] = {name: [] for name in counts}
    free: list[int] = []
    for bucket, owner in enumerate(owners):
        (held[owner] if owner in held else free).append(bucket)
    for name, buckets in held.items():
        excess = len(buckets) - counts[name]
        if excess > 0:
            free.extend(buckets[-excess:])
            del buckets[-excess:]
    free.sort()
    for name in sorted(counts):
        need = counts[name] - len(held[name])
        for bucket in free[:need]:
            owners[bucket] = name
        free = free[max(need, 0):]
    for bucket in free:  # only when the counts add up to less than BUCKETS (no variants)
        owners[bucket] = None
    return owners


def read_buckets(con) -> list:
    """Owner of each bucket (None everywhere when no variants are defined)."""
    owners: list = [None] * BUCKETS
    for bucket, variant in con.execute("select bucket, name from ab_buckets").fetchall():
        owners[bucket] = variant
    return owners


def move_buckets(con, owners: list, counts: dict[str, int]) -> None:
    """Give the buckets their new owners (``reassign`` from ``owners``, the current ones), in
    the caller's transaction."""
    owners = reassign(owners, counts)
    kept = [(b, o) for b, o in enumerate(owners) if o is not None]
    con.execute("delete from ab_buckets")
    if kept:
        import pyarrow as pa

        table = pa.table({"bucket": pa.array([b for b, _ in kept], pa.int32()),
                          "name": pa.array([o for _, o in kept], pa.string())})
        con.register("_rtsql_buckets", table)
        try:
            con.execute("insert into ab_buckets select bucket, name from _rtsql_buckets")
        finally:
            con.unregister("_rtsql_buckets")


# --------------------------------------------------------------------------- the bandit

def posterior(impressions: np.ndarray, successes: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each variant's rate and its equal-tailed CREDIBLE interval under a uniform prior:
    Beta(1 + successes, 1 + impressions - successes). The rate is successes / impressions
    (0 without impressions)."""
    from scipy.stats import beta

    n = np.asarray(impressions, np.float64)
    s = np.asarray(successes, np.float64)
    a, b = 1 + s, 1 + n - s
    tail = (1 - CREDIBLE) / 2
    rate = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    return rate, beta.ppf(tail, a, b), beta.ppf(1 - tail, a, b)


def p_best(impressions: np.ndarray, successes: np.ndarray) -> np.ndarray:
    """Posterior probability that each variant has the highest rate:
    P(i best) = E over x ~ posterior_i of prod over j != i of cdf_j(x), by the midpoint rule
    in probability space (x at GRID evenly spaced quantiles of posterior i, however peaked
    it is). Deterministic: equal evidence gives exactly equal probabilities, so the shares do
    not drift on sampling noise."""
    from scipy.stats import beta

    n = np.asarray(impressions, np.float64)
    s = np.asarray(successes, np.float64)
    a, b = 1 + s, 1 + n - s
    quantiles = (np.arange(GRID) + 0.5) / GRID
    p = np.empty(len(n))
    for i in range(len(n)):
        x = beta.ppf(quantiles, a[i], b[i])
        others = [beta.cdf(x, a[j], b[j]) for j in range(len(n)) if j != i]
        p[i] = np.prod(others, axis=0).mean() if others else 1.0
    return p / p.sum()


def shares_from(p: np.ndarray, min_share: float) -> np.ndarray:
    """Probability matching above a floor: min_share each (at most an equal split), the rest
    in proportion to the probability of being the best."""
    floor = min(min_share, 1.0 / len(p))
    return floor + (1 - floor * len(p)) * p


def evidence(con, names: list[str], metric: str, window_hours: float) -> tuple:
    """(impressions, successes) per variant of ``names``: impressions within ``window_hours``
    before the latest impression, successes the ones ``metric`` credits (impression_outcomes)."""
    column = METRICS[metric]
    rows = dict((v, (n, s)) for v, n, s in con.execute(f"""
        select variant, count(*), count(*) filter (where {column})
        from impression_outcomes
        where variant in (select unnest(?::VARCHAR[]))
          and ts >= (select max(ts) from impressions) - to_microseconds(
                        cast(? * 3600e6 as BIGINT))
        group by variant""", [names, window_hours]).fetchall())
    impressions = np.array([rows.get(n, (0, 0))[0] for n in names], np.int64)
    successes = np.array([rows.get(n, (0, 0))[1] for n in names], np.int64)
    return impressions, successes


def allocate(con, values: dict) -> str | None:
    """One step of the bandit (called by each refresh, in its transaction): new shares from
    the evidence, applied and recorded when at least one bucket moves. Returns a note saying
    what changed, or None (off, fewer than two variants, or nothing moved)."""
    metric = values["ab_auto_metric"]
    if metric == AUTO_OFF:
        return None
    current = dict(con.execute("select name, share from ab_variants order by name").fetchall())
    names = sorted(current)
    if len(names) < 2:
        return None
    impressions, successes = evidence(con, names, metric, values["ab_auto_window_hours"])
    probability = p_best(impressions, successes)
    shares = dict(zip(names, shares_from(probability, values["ab_min_share"]).tolist()))
    counts = bucket_counts(shares)
    owners = read_buckets(con)
    if all(owners.count(n) == counts[n] for n in names):
        return None
    move_buckets(con, owners, counts)
    con.executemany("update ab_variants set share = ? where name = ?",
                    [[counts[n] / BUCKETS, n] for n in names])
    rate, low, high = posterior(impressions, successes)
    con.executemany("insert into ab_allocations values (now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?, "
                    "?, ?)",
                    [[n, counts[n] / BUCKETS, f"auto:{metric}", int(impressions[i]),
                      int(successes[i]), float(rate[i]), float(low[i]), float(high[i]),
                      float(probability[i])] for i, n in enumerate(names)])
    return "A/B shares by " + metric + ": " + ", ".join(
        f"{n} {counts[n] / BUCKETS:.2f}" for n in names)


def record_manual(con, shares: dict[str, float]) -> None:
    """A change of the shares by hand, in ab_allocations (no evidence)."""
    con.executemany("insert into ab_allocations (changed_at, variant, share, reason) "
                    "values (now()::TIMESTAMP, ?, ?, 'manual')",
                    [[n, s] for n, s in sorted(shares.items())])


def history(con) -> tuple[list[str], list[tuple]]:
    """Every recorded change of the shares, oldest first."""
    cur = con.execute("""select changed_at, variant, share, reason, impressions, successes,
                                round(rate, 4) as rate, round(rate_low, 4) as rate_low,
                                round(rate_high, 4) as rate_high, round(p_best, 4) as p_best
                         from ab_allocations order by changed_at, variant""")
    return [d[0] for d in cur.description], cur.fetchall()

