"""Seeded synthetic event data: the committed sample_events/ set and large benchmark sets.

Shape (the benchmark contract): users with Zipf(1.3)-distributed activity; ``categories``
categories; each user prefers two categories (60% and 30% of their events, 10% anywhere); items
Zipf(1.2)-popular within their category; event types 70% view, 15% click, 10% cart, 5% purchase
over ``days`` days; by default one user per 100 events and one item per 200 events. Everything is
vectorized numpy, so 10M events take seconds; the same seed gives the same bytes.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

DEFAULT_END = datetime(2026, 11, 1, tzinfo=timezone.utc)  # fixed, so output never depends on today
BENCH_EVENT_TYPES = {"view": 0.70, "click": 0.15, "cart": 0.10, "purchase": 0.05}


@dataclass
class SyntheticSpec:
    events: int
    users: int | None = None  # default: events // 100
    items: int | None = None  # default: events // 200
    categories: int = 100
    days: int = 30
    seed: int = 42
    end: datetime = DEFAULT_END
    event_types: dict[str, float] = field(default_factory=lambda: dict(BENCH_EVENT_TYPES))
    user_prefix: str = "u"
    item_prefix: str = "i"

    @property
    def n_users(self) -> int:
        return max(1, self.users or self.events // 100)

    @property
    def n_items(self) -> int:
        return max(self.categories, self.items or self.events // 200)


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _ids(prefix: str, n: int, rng: np.random.Generator) -> pa.Array:
    """n distinct string ids, shuffled so that key order says nothing about popularity."""
    numbers = rng.permutation(n) + 1
    return pa.array([f"{prefix}{k}" for k in numbers.tolist()], pa.string())


def synthetic_events(spec: SyntheticSpec) -> tuple[pa.Table, np.ndarray]:
    """Events as an Arrow table (user_id, item_id, event_type, ts, value), sorted by time, and
    the item -> category index array (for catalogs)."""
    rng = np.random.default_rng(spec.seed)
    n, n_users, n_cat = spec.events, spec.n_users, spec.categories
    per_cat = spec.n_items // n_cat
    n_items = per_cat * n_cat

    # who: Zipf(1.3) over a random ranking of the users
    user_rank = np.searchsorted(_zipf_cdf(n_users, 1.3), rng.random(n))
    user = rng.permutation(n_users)[user_rank].astype(np.int32)

    # what: a preferred category 60%, the second 30%, any 10%; Zipf(1.2) within the category
    pref1 = rng.integers(0, n_cat, n_users)
    pref2 = (pref1 + rng.integers(1, n_cat, n_users)) % n_cat if n_cat > 1 else pref1
    draw = rng.random(n)
    category = np.where(draw < 0.6, pref1[user],
                        np.where(draw < 0.9, pref2[user], rng.integers(0, n_cat, n)))
    rank = np.searchsorted(_zipf_cdf(per_cat, 1.2), rng.random(n))
    item = (category * per_cat + rank).astype(np.int32)

    names = list(spec.event_types)
    probs = np.array([spec.event_types[k] for k in names], dtype=np.float64)
    etype = rng.choice(len(names), size=n, p=probs / probs.sum()).astype(np.int32)
    start = spec.end - timedelta(days=spec.days)
    seconds = np.sort(rng.integers(0, spec.days * 86400, n))
    ts = (np.datetime64(start.replace(tzinfo=None), "s") + seconds.astype("timedelta64[s]"))

    value = np.full(n, np.nan)
    if "rating" in names:
        is_rating = etype == names.index("rating")
        value[is_rating] = rng.integers(1, 6, int(is_rating.sum()))

    user_ids = _ids(spec.user_prefix, n_users, rng)
    item_ids = _ids(spec.item_prefix, n_items, rng)
    table = pa.table({
        "user_id": pa.DictionaryArray.from_arrays(pa.array(user), user_ids).cast(pa.string()),
        "item_id": pa.DictionaryArray.from_arrays(pa.array(item), item_ids).cast(pa.string()),
        "event_type": pa.DictionaryArray.from_arrays(pa.array(etype), pa.array(names)
                                                     ).cast(pa.string()),
        "ts": pa.array(ts, pa.timestamp("s")),
        "value": pa.array(value, from_pandas=True),
    })
    item_category = np.repeat(np.arange(n_cat), per_cat)
    return table, (item_ids, item_category)


def write_events(table: pa.Table, path: str | Path, fmt: str = "parquet") -> Path:
    """Write events as Parquet, CSV (ISO timestamps) or JSON-lines; .gz paths are gzipped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=1 << 20)
    elif fmt == "csv":
        text = table.set_column(3, "ts", pa.compute.strftime(table["ts"], "%Y-%m-%dT%H:%M:%S"))
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "wb") as f:
            # ids never hold commas or quotes: unquoted, like most exported event logs
            pacsv.write_csv(text, f, pacsv.WriteOptions(quoting_style="none"))
    elif fmt == "jsonl":
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "wt", encoding="utf-8") as f:
            for row in table.to_pylist():
                row["ts"] = row["ts"].strftime("%Y-%m-%dT%H:%M:%SZ")
                if row["value"] is None:
                    del row["value"]
                f.write(json.dumps(row) + "\n")
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return path


# --------------------------------------------------------------------------- the sample set

_CATEGORIES = {
    "running": (["Trail", "Road", "Carbon", "Tempo", "Racing"], ["Shoe", "Sock", "Vest", "Cap"]),
    "audio": (["Wireless", "Studio", "Noise-Cancelling", "Bass", "Travel"],
              ["Headphones", "Earbuds", "Speaker", "DAC"]),
    "coffee": (["Ethiopian", "Colombian", "Espresso", "Decaf", "Single-Origin"],
               ["Beans", "Grinder", "Kettle", "Dripper"]),
    "books": (["Sci-Fi", "Mystery", "Cookbook", "History", "Poetry"],
              ["Novel", "Anthology", "Guide", "Box Set"]),
    "gaming": (["Mechanical", "Wireless", "RGB", "Retro", "Pro"],
               ["Keyboard", "Mouse", "Controller", "Headset"]),
    "kitchen": (["Cast-Iron", "Nonstick", "Bamboo", "Steel", "Ceramic"],
                ["Pan", "Knife", "Board", "Pot"]),
    "outdoor": (["Ultralight", "Waterproof", "Alpine", "Family", "Solo"],
                ["Tent", "Backpack", "Lantern", "Stove"]),
    "fitness": (["Adjustable", "Foam", "Smart", "Compact", "Heavy"],
                ["Dumbbell", "Mat", "Band", "Scale"]),
}
SAMPLE_EVENT_TYPES = {"view": 0.55, "click": 0.15, "search": 0.08, "cart": 0.10,
                      "purchase": 0.05, "rating": 0.07}


def sample_spec() -> SyntheticSpec:
    return SyntheticSpec(events=6000, users=300, items=240, categories=len(_CATEGORIES), days=21,
                         seed=7, event_types=dict(SAMPLE_EVENT_TYPES), user_prefix="user-",
                         item_prefix="sku-")


def write_sample(directory: str | Path) -> list[Path]:
    """Write the sample_events/ set: three weeks of events over CSV and JSON-lines files, an item
    catalog, and one file with malformed rows. Returns the files written."""
    directory = Path(directory)
    spec = sample_spec()
    table, (item_ids, item_category) = synthetic_events(spec)
    events_dir = directory / "events"
    week = (pa.compute.cast(table["ts"], pa.int64()).to_numpy()
            - int(spec.end.timestamp()) + spec.days * 86400) // (7 * 86400)
    written = []
    for w, fmt in enumerate(["csv", "jsonl", "csv"]):
        part = table.filter(pa.array(week == w))
        name = f"week{w + 1}.{'csv' if fmt == 'csv' else 'jsonl'}"
        written.append(write_events(part, events_dir / name, fmt))
    bad = events_dir / "malformed.csv"
    bad.write_bytes(
        b"user_id,item_id,event_type,ts,value\n"
        b"user-1,sku-1,view,2026-10-30T10:00:00,\n"
        b",sku-2,view,2026-10-30T10:01:00,\n"
        b"user-2,sku-3,teleport,2026-10-30T10:02:00,\n"
        b"user-3,sku-4,view,next tuesday,\n"
        b"user-4,sku-5,rating,2026-10-30T10:03:00,five\n"
        b"user-5,sku-6,view\n"
        b"user-6,sku-\xff7,view,2026-10-30T10:04:00,\n")
    written.append(bad)

    rng = np.random.default_rng(spec.seed + 1)
    cat_names = list(_CATEGORIES)
    rows = []
    for k, item_id in enumerate(item_ids.to_pylist()):
        cat = cat_names[int(item_category[k])]
        adjectives, nouns = _CATEGORIES[cat]
        adj, noun = adjectives[k % len(adjectives)], nouns[(k // len(adjectives)) % len(nouns)]
        tags = sorted({adj.lower(), noun.lower(), cat,
                       ["budget", "premium", "bestseller", "eco"][int(rng.integers(0, 4))]})
        rows.append({
            "item_id": item_id, "title": f"{adj} {noun} {k + 1}", "category": cat,
            "tags": "|".join(tags),
            "description": f"A {adj.lower()} {noun.lower()} for {cat} fans.",
            "price": round(float(rng.uniform(5, 300)), 2),
        })
    catalog = directory / "items.csv"
    pacsv.write_csv(pa.Table.from_pylist(rows), catalog,
                    pacsv.WriteOptions(quoting_style="needed"))
    written.append(catalog)
    return written


def write_catalog(item_ids: pa.Array, item_category: np.ndarray, path: str | Path) -> Path:
    """A plain catalog for a synthetic set: item_id, title, category."""
    path = Path(path)
    table = pa.table({
        "item_id": item_ids,
        "title": pa.array([f"Item {k}" for k in range(1, len(item_ids) + 1)]),
        "category": pa.array([f"c{c}" for c in item_category.tolist()]),
    })
    pacsv.write_csv(table, path)
    return path
