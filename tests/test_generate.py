import numpy as np
import pyarrow.compute as pc

from rtsql import generate


def test_same_seed_same_events():
    spec = generate.SyntheticSpec(events=20_000, seed=3)
    a, _ = generate.synthetic_events(spec)
    b, _ = generate.synthetic_events(spec)
    assert a.equals(b)


def test_benchmark_shape():
    spec = generate.SyntheticSpec(events=200_000, seed=1)
    table, (item_ids, item_category) = generate.synthetic_events(spec)
    assert table.num_rows == 200_000
    assert pc.count_distinct(table["user_id"]).as_py() <= spec.n_users
    assert len(item_ids) == spec.n_items
    types = table["event_type"].to_numpy(zero_copy_only=False)
    for name, share in generate.BENCH_EVENT_TYPES.items():
        assert abs((types == name).mean() - share) < 0.01
    # activity is heavy-tailed: the busiest user has far more than the median user
    vc = pc.value_counts(table["user_id"])
    counts = np.array(vc.field(1).to_pylist())
    assert counts.max() > 50 * np.median(counts)
    # each user's top category holds about 60% of their events (+ a share of the 10% anywhere)
    item_to_cat = dict(zip(item_ids.to_pylist(), item_category.tolist()))
    heavy = vc.field(0)[int(np.argmax(counts))].as_py()
    mine = table.filter(pc.equal(table["user_id"], heavy))["item_id"].to_pylist()
    cats = np.bincount([item_to_cat[i] for i in mine])
    top2 = np.sort(cats)[-2:][::-1] / len(mine)
    assert abs(top2[0] - 0.6) < 0.03 and abs(top2[1] - 0.3) < 0.03


def test_sample_set_is_reproducible(tmp_path):
    a = generate.write_sample(tmp_path / "a")
    b = generate.write_sample(tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
