import datetime as dt
import json

import pytest
from click.testing import CliRunner

import rtsql
from rtsql import evaluate, ingest, settings
from rtsql.cli import main

from conftest import HEADER, count

T0 = dt.datetime(2026, 10, 1)


def test_ranking_metrics_by_hand():
    truth = {"a": {"x", "y"}, "b": {"z"}}
    recs = {"a": ["x", "q", "y"], "b": ["q", "r", "s"]}
    m = evaluate.ranking_metrics(recs, truth, k=3, n_candidates=10)
    assert m.users == 2
    assert m.precision == pytest.approx((2 / 3 + 0) / 2)
    assert m.recall == pytest.approx((1 + 0) / 2)
    dcg = 1 + 1 / 2  # hits at ranks 1 and 3: 1/log2(2) + 1/log2(4)
    idcg = 1 + 1 / 1.5849625007211563
    assert m.ndcg == pytest.approx(dcg / idcg / 2)
    assert m.map == pytest.approx((1 + 2 / 3) / 2 / 2)
    assert m.coverage == pytest.approx(5 / 10)


@pytest.fixture
def groups(tmp_path, db_path):
    """Two taste groups; every user has all 6 items of their group, the last one (the
    protocol-1 test event) differing per user: it is the one unseen item of their group."""
    rows = []
    for g in "ab":
        for u in range(6):
            order = [i for i in range(6) if i != u] + [u]
            rows += [(f"{g}u{u}", f"{g}i{i}", minute) for minute, i in enumerate(order)]
    (tmp_path / "ev.csv").write_text(HEADER + "".join(
        f"{u},{i},view,{(T0 + dt.timedelta(minutes=m)).isoformat()},\n" for u, i, m in rows))
    con = rtsql.connect(db_path)
    ingest.ingest(con, [tmp_path / "ev.csv"])
    yield con
    con.close()


def test_holdout_finds_the_withheld_items_and_leaves_live_tables_alone(groups):
    [item, trend] = evaluate.holdout(groups, k=10, strategies=("item", "trending"))
    assert item.metrics.users == 12
    assert item.metrics.recall == pytest.approx(1.0)
    assert item.metrics.ndcg == pytest.approx(1.0)
    assert item.metrics.map == pytest.approx(1.0)
    assert item.metrics.precision == pytest.approx(0.1)
    assert trend.metrics.ndcg < item.metrics.ndcg
    assert count(groups, "select count(*) from item_neighbors") == 0  # live: never refreshed


def test_holdout_counts_only_items_new_to_the_user(groups, tmp_path):
    """A test event on an item the user already has in training is not a hit to find: a
    user whose only test event repeats an item has nothing to find and is not scored."""
    (tmp_path / "repeat.csv").write_text(HEADER + (
        f"au0,ai1,view,{(T0 + dt.timedelta(minutes=30)).isoformat()},\n"))
    ingest.ingest(groups, [tmp_path / "repeat.csv"])
    [item] = evaluate.holdout(groups, k=10, strategies=("item",))
    assert item.metrics.users == 11  # au0's test event (its 7th of 7) repeats ai1


def test_holdout_in_memory_equals_the_sql_macro_path():
    """The batched scorer (the default engine) recommends the macro's lists: equal metrics
    on the sample set, every strategy."""
    source = rtsql.connect_memory()
    ingest.ingest(source, sorted((SAMPLE / "events").iterdir()))
    strategies = ("hybrid", "item", "user", "trending")
    got = evaluate.holdout(source, k=10, strategies=strategies)
    want = evaluate.holdout(source, k=10, strategies=strategies, engine="sql")
    for g, w in zip(got, want):
        assert g.metrics == w.metrics, g.strategy
    assert got[0].metrics.users > 50 and got[0].metrics.ndcg > 0


def test_prequential_counts_known_users_on_new_items(groups):
    """Every stream event of a known user is scored, with the hits of the reference (the SQL
    macro asked after each event); in two clean taste groups the one or two unseen items of
    the user's group fill the top 2, so every stream event is a hit."""
    res = evaluate.prequential(groups, k=2, refresh_every=5)
    want = evaluate.prequential(groups, k=2, refresh_every=5, engine="sql")
    stream = 72 - int(72 * 0.8)
    assert len(res.latencies) == stream
    assert res.evaluated == want.evaluated == stream  # every stream user was seen before
    assert res.hits == want.hits == stream


SAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "sample_events"


@pytest.mark.parametrize("strategy,refresh_every", [("hybrid", 50), ("user", 7)])
def test_prequential_in_memory_equals_the_sql_macro_path(db_path, strategy, refresh_every):
    """The fast engine replays blocks into the serving scorer; the reference asks the SQL
    macro after each event's scan. Same events scored, same hits, on the sample set (new
    users and items arrive during the replay, refreshes fall inside it)."""
    con = rtsql.connect(db_path)
    ingest.ingest(con, sorted((SAMPLE / "events").iterdir()))
    runs = [evaluate.prequential(con, k=10, limit=300, refresh_every=refresh_every,
                                 strategy=strategy, engine=engine)
            for engine in ("memory", "sql")]
    assert runs[0].evaluated == runs[1].evaluated > 50
    assert runs[0].recommended == runs[1].recommended  # every list, item by item
    assert runs[0].hits == runs[1].hits > 0
    con.close()


def test_tune_records_trials_and_applies_the_best(groups):
    trials = evaluate.tune(groups, budget=3, space={"weight_user_cf": ["0", "1"],
                                                    "neighbors": ["2", "5"]})
    assert len(trials) == 3 and trials[0].score >= trials[-1].score
    run = evaluate.record_tuning(groups, trials, "holdout", "NDCG@10", applied=True)
    rows = groups.execute("select trial, score, is_best, applied, settings from tuning_runs "
                          "where run_id = ? order by score desc, trial", [run]).fetchall()
    assert len(rows) == 3 and rows[0][2] and rows[0][3]
    for name, value in json.loads(rows[0][4]).items():
        assert str(settings.get(groups, name)) == str(settings.parse(name, value))


def test_tune_searches_event_type_weights_and_applies_them(tmp_path, db_path):
    rows = "".join(f"u{u},i{(u * 3 + j) % 9},{'cart' if j == 2 else 'view'},"
                   f"{(T0 + dt.timedelta(minutes=u * 10 + j)).isoformat()},\n"
                   for u in range(12) for j in range(6))
    (tmp_path / "ev.csv").write_text(HEADER + rows)
    con = rtsql.connect(db_path)
    ingest.ingest(con, [tmp_path / "ev.csv"])
    space = evaluate._event_type_space(con)
    assert space == {"event_type.cart": ["2", "4", "8"], "event_type.view": ["0.5", "1", "2"]}
    trial = evaluate.Trial(1, {"event_type.cart": "8", "neighbors": "5"}, 1.0)
    evaluate.record_tuning(con, [trial], "holdout", "NDCG@10", applied=True)
    assert count(con, "select weight from event_types where event_type = 'cart'") == 8.0
    assert settings.get(con, "neighbors") == 5
    con.close()


def test_evaluate_command_formats_and_events_file(groups, db_path, tmp_path):
    groups.close()
    runner = CliRunner()
    res = runner.invoke(main, ["--db", str(db_path), "evaluate", "--strategy", "item",
                               "--format", "csv"])
    assert res.exit_code == 0, res.output
    header, row = res.stdout.splitlines()
    assert header == "strategy,users,P@10,R@10,NDCG@10,MAP@10,coverage,refresh s,ms/user"
    assert row.startswith("item,12,0.1,1.0,1.0,1.0,")
    res = runner.invoke(main, ["evaluate", "--events", str(tmp_path / "ev.csv"), "--strategy",
                               "item", "--format", "jsonl"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["NDCG@10"] == 1.0
    res = runner.invoke(main, ["--db", str(db_path), "evaluate", "--protocol", "prequential",
                               "--strategy", "item", "--strategy", "trending", "--format", "csv"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == "strategy,evaluated,hits,HR@10,step p50 ms,step p99 ms"
    assert [line.split(",")[0] for line in lines[1:]] == ["item", "trending"]
    bad = runner.invoke(main, ["--db", str(db_path), "evaluate", "--set", "neighbors=lots"])
    assert bad.exit_code == 1 and "takes a int" in bad.stderr
