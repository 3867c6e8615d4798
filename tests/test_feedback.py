import datetime as dt

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from scipy.stats import beta

from rtsql import feedback, ingest, recommend, refresh
from rtsql.errors import BadEventFile, InvalidSetting

from conftest import HEADER, count

T = dt.datetime(2026, 11, 1, 12, 0)


def at(hours):
    return (T + dt.timedelta(hours=hours)).isoformat()


@pytest.fixture
def shop(tmp_path, con):
    (tmp_path / "ev.csv").write_text(HEADER + "".join([
        f"u1,i1,click,{at(1)},\n",       # 1h after the impression of i1 at 0h: credited
        f"u1,i1,purchase,{at(2)},\n",    # credited too
        f"u2,i2,click,{at(30)},\n",      # 30h after its impression: outside the 24h window
        f"u3,i3,click,{at(5)},\n",       # after two impressions: credited to the later one
        f"u4,i9,click,{at(1)},\n",       # never shown
    ]))
    ingest.ingest(con, [tmp_path / "ev.csv"])
    (tmp_path / "imp.csv").write_text("user_id,item_id,ts,strategy,variant,rec_id,rank\n" + "".join([
        f"u1,i1,{at(0)},item-cf,A,r1,1\n",
        f"u1,i5,{at(0)},item-cf,A,r1,2\n",
        f"u2,i2,{at(0)},trending,B,r2,1\n",
        f"u3,i3,{at(0)},content,A,r3,1\n",
        f"u3,i3,{at(4)},item-cf,A,r4,1\n",
        f",i3,{at(4)},item-cf,A,r5,1\n",       # no user: rejected
        "u5,i3,not a time,item-cf,A,r6,1\n",    # rejected
    ]))
    counts = feedback.load_impressions(con, tmp_path / "imp.csv")
    assert counts == {"loaded": 5, "rejected": 2}
    return con


def test_attribution_last_touch_within_window(shop):
    rows = shop.execute("select user_id, item_id, strategy, clicked, purchased "
                        "from impression_outcomes order by user_id, ts, item_id").fetchall()
    assert rows == [("u1", "i1", "item-cf", True, True), ("u1", "i5", "item-cf", False, False),
                    ("u2", "i2", "trending", False, False),
                    ("u3", "i3", "content", False, False), ("u3", "i3", "item-cf", True, False)]
    assert count(shop, "select count(*) from rejects where reason like 'impression%'") == 2


def test_report_by_strategy_and_variant_and_plot(shop, tmp_path):
    cols, rows = feedback.report(shop, by=("strategy",))
    assert cols == ["strategy", "impressions", "clicks", "ctr", "purchases", "conversion"]
    assert rows == [("content", 1, 0, 0.0, 0, 0.0), ("item-cf", 3, 2, 0.6667, 1, 0.3333),
                    ("trending", 1, 0, 0.0, 0, 0.0)]
    cols, rows = feedback.report(shop, by=("variant",))
    assert [r[:6] for r in rows] == [("A", 4, 2, 0.5, 1, 0.25), ("B", 1, 0, 0.0, 0, 0.0)]
    assert cols[6:] == ["ctr_low", "ctr_high", "conversion_low", "conversion_high"]
    # 95% equal-tailed interval of Beta(1 + successes, 1 + failures)
    assert rows[0][6:] == tuple(round(float(beta.ppf(q, 1 + s, 1 + 4 - s)), 4)
                                for s in (2, 1) for q in (0.025, 0.975))
    assert rows[1][6:] == (0.0126, 0.8419, 0.0126, 0.8419)
    cols, rows = feedback.report(shop, by=("day", "strategy"))
    svg = feedback.plot_svg(cols, rows, tmp_path / "ctr.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 3
    with pytest.raises(InvalidSetting):
        feedback.report(shop, by=("colour",))
    assert feedback.report(shop, since="2026-12-01", by=("strategy",))[1] == []


def test_impressions_file_without_strategy(con, tmp_path):
    (tmp_path / "x.csv").write_text("user_id,item_id,ts\nu,i,2026-11-01\n")
    with pytest.raises(BadEventFile, match="strategy"):
        feedback.load_impressions(con, tmp_path / "x.csv")


def test_variants_assign_by_stable_hash_and_change_serving(con, tmp_path):
    rows = "".join(f"u{u},i{(u + j) % 6},view,{at(j)},\n" for u in range(30) for j in range(3))
    (tmp_path / "ev.csv").write_text(HEADER + rows)
    ingest.ingest(con, [tmp_path / "ev.csv"])
    refresh.refresh(con)
    feedback.set_variants(con, {"control": 0.5, "trend": 0.5},
                          {"trend": {"weight_item_cf": "0", "weight_user_cf": "0",
                                     "weight_content": "0"}})
    assigned = {u: con.execute("select ab_variant(?)", [f"u{u}"]).fetchall()[0][0]
                for u in range(30)}
    again = {u: con.execute("select ab_variant(?)", [f"u{u}"]).fetchall()[0][0] for u in range(30)}
    assert assigned == again and set(assigned.values()) == {"control", "trend"}
    control = recommend.recommend(con, "u1", 3, variant="control").rows
    trend = recommend.recommend(con, "u1", 3, variant="trend").rows
    assert control[0][3].startswith(("item-cf", "user-cf"))
    assert all(r[3].startswith(("trending", "popular")) for r in trend)
    own = recommend.recommend(con, "u1", 3, variant="auto").rows
    assert own == (trend if assigned[1] == "trend" else control)
    with pytest.raises(InvalidSetting, match="add up to 1"):
        feedback.set_variants(con, {"a": 0.7}, {})
    with pytest.raises(InvalidSetting, match="not a serving setting"):
        feedback.set_variants(con, {"a": 1.0}, {"a": {"neighbors": "5"}})


pair_events = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 40),
                                 st.sampled_from(["view", "click", "cart", "purchase"])),
                       max_size=25)
pair_impressions = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 40)),
                            max_size=15)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair_events, pair_impressions, st.sampled_from([1.0, 5.0, 24.0]))
def test_attribution_equals_a_brute_force_reference(con, events, shown, window):
    """impression_outcomes against last touch done by hand: each click, cart or purchase goes
    to the latest impression of its user and item at or before it, if within the window."""
    for table in ("events", "impressions", "users", "items", "rtsql_settings"):
        con.execute(f"delete from {table}")
    con.execute("insert into users select k, 'u' || k from range(3) t(k)")
    con.execute("insert into items select k, 'i' || k, NULL from range(3) t(k)")
    con.execute("insert into rtsql_settings values ('attribution_window_hours', ?, now())",
                [str(window)])
    hour = dt.timedelta(hours=1)
    for n, (u, i, h, kind) in enumerate(events):
        con.execute("insert into events values (?, ?, ?, ?, NULL, ?, NULL, NULL)",
                    [n, u, i, kind, T + h * hour])
    for u, i, h in shown:
        con.execute("insert into impressions values (?, ?, ?, 'hybrid', NULL, NULL, NULL, "
                    "'test', NULL)", [u, i, T + h * hour])
    expected = {}
    for u, i, h in shown:
        expected[(f"u{u}", f"i{i}", T + h * hour)] = [False, False]
    for u, i, h, kind in events:
        if kind == "view":
            continue
        before = [s for su, si, s in shown if (su, si) == (u, i) and s <= h]
        if before and h - max(before) <= window:
            flags = expected[(f"u{u}", f"i{i}", T + max(before) * hour)]
            flags[kind == "purchase"] = True
    got = con.execute("select user_id, item_id, ts, clicked, purchased "
                      "from impression_outcomes").fetchall()
    assert sorted(got) == sorted((*key, *expected[key]) for u, i, h in shown
                                 for key in [(f"u{u}", f"i{i}", T + h * hour)])


def test_report_refuses_a_since_that_is_not_a_time(shop):
    with pytest.raises(InvalidSetting, match="--since takes an ISO date"):
        feedback.report(shop, since="last tuesday", by=("strategy",))
