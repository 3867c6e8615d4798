"""A/B allocation: stored hash buckets that move as little as the shares require, and the
Thompson-sampling bandit of `rtsql variants --auto`, on a simulated stream with known rates."""

import datetime as dt
import itertools

import duckdb
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rtsql import allocation, feedback, ingest, refresh, resources, settings
from rtsql.allocation import BUCKETS
from rtsql.serving import ServingState

from conftest import HEADER

NAMES = ("a", "b", "c", "d")


def shares_of(weights):
    total = sum(weights)
    return {n: w / total for n, w in zip(NAMES, weights) if w}


weights = st.lists(st.integers(0, 50), min_size=1, max_size=4).filter(any)


@hsettings(max_examples=200, deadline=None)
@given(weights, weights)
def test_reassign_moves_the_fewest_buckets(before, after):
    old_counts = allocation.bucket_counts(shares_of(before))
    new_counts = allocation.bucket_counts(shares_of(after))
    assert sum(old_counts.values()) == sum(new_counts.values()) == BUCKETS
    old = allocation.reassign([], old_counts)
    new = allocation.reassign(old, new_counts)
    for name, n in new_counts.items():
        assert new.count(name) == n
    moved = sum(o != n for o, n in zip(old, new))
    # every bucket a variant loses must move, and nothing else does
    assert moved == sum(max(0, c - new_counts.get(name, 0)) for name, c in old_counts.items())
    # a variant that keeps or grows its share keeps every bucket it had
    for name, c in old_counts.items():
        if new_counts.get(name, 0) >= c:
            assert all(n == name for o, n in zip(old, new) if o == name)


def test_fresh_assignment_is_the_cumulative_shares_by_name():
    owners = allocation.reassign([], allocation.bucket_counts({"b": 0.25, "a": 0.5, "c": 0.25}))
    assert owners[:5000] == ["a"] * 5000
    assert owners[5000:7500] == ["b"] * 2500 and owners[7500:] == ["c"] * 2500


def test_migration_keeps_every_users_variant():
    """0017 fills ab_buckets from the shares with the rule ab_variant used before it."""
    raw = duckdb.connect()
    raw.execute("create table ab_variants (name VARCHAR PRIMARY KEY, share DOUBLE NOT NULL, "
                "settings JSON NOT NULL)")
    raw.execute("insert into ab_variants values ('x', 0.3, '{}'), ('y', 0.45, '{}'), "
                "('z', 0.25, '{}')")
    sql = next(m.sql for m in resources.migrations() if m.name == "ab_buckets")
    raw.execute(sql)
    owners = [None] * BUCKETS
    for bucket, name in raw.execute("select bucket, name from ab_buckets").fetchall():
        owners[bucket] = name
    for n in range(3000):
        user = f"user-{n}"
        old_bucket = allocation.bucket_of(user) / 10000.0
        old = next(v for v, upto in (("x", 0.3), ("y", 0.75), ("z", 1.01)) if upto > old_bucket)
        assert owners[allocation.bucket_of(user)] == old


def test_sql_and_serving_agree_and_users_stay_put(con, tmp_path):
    (tmp_path / "ev.csv").write_text(HEADER + "".join(
        f"u{u},i{u % 7},view,2026-11-01T10:00:00,\n" for u in range(200)))
    ingest.ingest(con, [tmp_path / "ev.csv"])
    refresh.refresh(con)
    users = [f"u{u}" for u in range(200)] + [f"someone-{u}" for u in range(300)]

    def assigned():
        sql = dict(con.execute("select u, ab_variant(u) from unnest(?::VARCHAR[]) t(u)",
                               [users]).fetchall())
        state = ServingState.load(con)
        assert sql == {u: state.ab_variant(u) for u in users}  # the Python mirror agrees
        return sql

    feedback.set_variants(con, {"control": 0.5, "new": 0.5}, {})
    before = assigned()
    assert set(before.values()) == {"control", "new"}
    feedback.set_variants(con, {"control": 0.4, "new": 0.6}, {})
    after = assigned()
    moved = [u for u in users if before[u] != after[u]]
    # only control -> new, about a fifth of control's users
    assert all(before[u] == "control" and after[u] == "new" for u in moved)
    assert 0.1 < len(moved) / sum(v == "control" for v in before.values()) < 0.3
    assert con.execute("select share from ab_variants order by name").fetchall() == \
        [(0.4,), (0.6,)]
    assert con.execute("select count(*) from ab_allocations where reason = 'manual'"
                       ).fetchall()[0][0] == 4
    feedback.set_variants(con, {}, {})
    assert set(assigned().values()) == {None}


def test_posterior_and_probability_of_the_best():
    rate, low, high = allocation.posterior(np.array([1000, 0]), np.array([100, 0]))
    assert rate[0] == 0.1 and low[0] < 0.1 < high[0] and high[0] - low[0] < 0.04
    assert rate[1] == 0 and low[1] == pytest.approx(0.025) and high[1] == pytest.approx(0.975)
    p = allocation.p_best(np.array([1000, 1000]), np.array([100, 50]))
    assert p[0] > 0.999 and p.sum() == pytest.approx(1)
    even = allocation.p_best(np.array([500, 500, 500]), np.array([50, 50, 50]))
    assert np.allclose(even, 1 / 3, atol=0.02)
    assert list(allocation.p_best(np.array([0, 0]), np.array([0, 0]))) == [0.5, 0.5]
    rng = np.random.default_rng(1)
    for n, s in (([100000, 100000], [5000, 5100]), ([10, 10**6], [1, 50000]),
                 ([200, 300, 400], [20, 33, 41])):
        n, s = np.array(n), np.array(s)
        draws = rng.beta(1 + s[:, None], 1 + n[:, None] - s[:, None], size=(len(n), 200_000))
        sampled = np.bincount(draws.argmax(axis=0), minlength=len(n)) / draws.shape[1]
        assert np.allclose(allocation.p_best(n, s), sampled, atol=0.005)
    shares = allocation.shares_from(np.array([1.0, 0.0, 0.0]), 0.1)
    assert np.allclose(shares, [0.8, 0.1, 0.1])
    assert np.allclose(allocation.shares_from(np.array([1.0, 0.0, 0.0]), 0.5), 1 / 3)


T0 = dt.datetime(2026, 10, 1)


class Stream:
    """Impressions and clicks with known click rates per variant, through the real path:
    users get their variant from ab_variant's buckets, impressions and click events are
    loaded from files, and the refresh runs the bandit."""

    def __init__(self, con, tmp_path, per_round=400):
        self.con, self.tmp, self.per_round = con, tmp_path, per_round
        self.round = 0
        self.rng = np.random.default_rng(7)

    def step(self, rates: dict[str, float]) -> dict[str, float]:
        owners = allocation.read_buckets(self.con)
        at = T0 + dt.timedelta(hours=self.round)
        shown, clicks = [], []
        for n in range(self.per_round):
            user, item = f"s{self.round}-{n}", f"i{n % 20}"
            variant = owners[allocation.bucket_of(user)]
            shown.append(f"{user},{item},{at.isoformat()},hybrid,{variant}\n")
            if self.rng.random() < rates[variant]:
                clicks.append(f"{user},{item},click,{(at + dt.timedelta(minutes=5)).isoformat()},\n")
        events = self.tmp / f"ev{self.round}.csv"
        events.write_text(HEADER + "".join(clicks) + f"s{self.round}-0,i0,view,{at.isoformat()},\n")
        ingest.ingest(self.con, [events])
        impressions = self.tmp / f"imp{self.round}.csv"
        impressions.write_text("user_id,item_id,ts,strategy,variant\n" + "".join(shown))
        feedback.load_impressions(self.con, impressions)
        refresh.refresh(self.con)
        self.round += 1
        return dict(self.con.execute("select name, share from ab_variants").fetchall())


@pytest.mark.slow
def test_bandit_moves_traffic_to_the_better_variant_and_back(con, tmp_path):
    feedback.set_variants(con, {"a": 0.5, "b": 0.5}, {})
    for name, value in (("ab_auto_metric", "clicks"), ("ab_min_share", "0.05"),
                        ("ab_auto_window_hours", "8")):
        settings.set_value(con, name, value)
    stream = Stream(con, tmp_path)
    history = []
    for _ in range(12):  # a clicks twice as often as b
        history.append(stream.step({"a": 0.12, "b": 0.06}))
    first = next(i for i, s in enumerate(history) if s["a"] >= 0.8)
    assert (first + 1) * stream.per_round <= 2400  # within 2,400 impressions
    assert history[-1]["a"] >= 0.8
    for _ in range(20):  # then b becomes the better one
        history.append(stream.step({"a": 0.06, "b": 0.15}))
    later = history[12:]
    assert later[-1]["b"] >= 0.8
    assert next(i for i, s in enumerate(later) if s["b"] >= 0.8) <= 14  # found within 14 rounds
    assert min(s[n] for s in history for n in s) >= 0.05  # the floor held throughout
    recorded = con.execute("select count(*), count(distinct changed_at) from ab_allocations "
                           "where reason = 'auto:clicks'").fetchall()[0]
    assert recorded[0] == 2 * recorded[1] and recorded[1] >= 2
    rows = con.execute("select variant, impressions, successes, rate, rate_low, rate_high, "
                       "p_best from ab_allocations where reason = 'auto:clicks' "
                       "order by changed_at desc, variant limit 2").fetchall()
    for _, n, s, rate, low, high, p in rows:
        assert rate == pytest.approx(s / n) and low < rate < high and 0 <= p <= 1
    assert sum(r[6] for r in rows) == pytest.approx(1)


def test_bandit_is_off_until_asked(con, tmp_path):
    feedback.set_variants(con, {"a": 0.5, "b": 0.5}, {})
    stream = Stream(con, tmp_path, per_round=200)
    for _ in range(2):
        assert stream.step({"a": 0.5, "b": 0.0}) == {"a": 0.5, "b": 0.5}
    settings.set_value(con, "ab_auto_metric", "clicks")
    shares = stream.step({"a": 0.5, "b": 0.0})
    assert shares["a"] > 0.9 and shares["b"] == pytest.approx(0.05)
    assert list(itertools.chain(*con.execute(
        "select distinct reason from ab_allocations order by 1").fetchall())) == \
        ["auto:clicks", "manual"]


def test_no_evidence_moves_nothing(con):
    feedback.set_variants(con, {"a": 0.3, "b": 0.7}, {})
    settings.set_value(con, "ab_auto_metric", "purchases")
    refresh.refresh(con)  # no impressions: both posteriors uniform, equal shares
    assert dict(con.execute("select name, share from ab_variants").fetchall()) == \
        {"a": 0.5, "b": 0.5}
    before = allocation.read_buckets(con)
    refresh.refresh(con)  # the same evidence again: no bucket moves, nothing recorded
    assert allocation.read_buckets(con) == before
    assert con.execute("select count(*) from ab_allocations where reason like 'auto%'"
                       ).fetchall()[0][0] == 2
