"""The shared evaluation datasets, read from ../shared/datasets/ (never copied into the project).

- ``ml``: MovieLens ml-latest-small, F. Maxwell Harper and Joseph A. Konstan. 2015. The
  MovieLens Datasets: History and Context. ACM TiiS 5, 4: 19. GroupLens, University of
  Minnesota; used for research, non-commercially, as its README asks. Ratings become rating
  events weighted by their value; movies.csv genres and tags.csv user tags the catalog.
- ``tafeng``: half of the Ta Feng grocery purchase log (customers with even ids; its README):
  purchase events, value = units bought, no catalog.

Each has two halves (``half`` 0 / 1), disjoint sets of users: MovieLens by the parity of the
user id, Ta Feng (whose ids are all even) by the parity of id / 2. Events are tuples
(user, ts, item, value) with ts sortable and item an integer, so EVAL.md protocol 1's sort
(time, then item id) is a plain sort.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: Path
    events_file: str
    event_type: str  # what each row becomes in rtsql

    def available(self) -> bool:
        return (self.folder / self.events_file).exists()

    def require(self) -> None:
        import sys

        if not self.available():
            sys.exit(f"{self.name}: {self.folder / self.events_file} not found: this benchmark "
                     "needs ../shared/datasets/")

    def in_half(self, user: str, half: int | None) -> bool:
        if half is None:
            return True
        key = int(user) if self.name == "ml" else int(user) // 2
        return key % 2 == half

    def events(self, half: int | None = None) -> list[tuple]:
        """(user, ts, item, value) of every row, in file order."""
        with open(self.folder / self.events_file, newline="") as f:
            if self.name == "ml":
                rows = ((r["userId"], int(r["timestamp"]), int(r["movieId"]), float(r["rating"]))
                        for r in csv.DictReader(f))
            else:
                rows = ((r["user_id"], r["ts"], int(r["item_id"]), float(r["value"] or 1))
                        for r in csv.DictReader(f))
            return [r for r in rows if self.in_half(r[0], half)]

    def split(self, half: int | None = None, events: list[tuple] | None = None):
        """Protocol 1: each user's events sorted by (timestamp, item); the last 20% are test.
        Returns the train events, each user's train items, and each evaluated user's test
        items not in their train items."""
        by_user: dict[str, list] = {}
        for user, ts, item, value in (events if events is not None else self.events(half)):
            by_user.setdefault(user, []).append((ts, item, value))
        train, test = [], {}
        for user, rows in by_user.items():
            rows.sort(key=lambda e: (e[0], e[1]))
            cut = math.ceil(0.8 * len(rows))
            train += [(user, *e) for e in rows[:cut]]
            test[user] = {str(e[1]) for e in rows[cut:]}
        train_items: dict[str, set] = {}
        for user, _ts, item, _value in train:
            train_items.setdefault(user, set()).add(str(item))
        truth = {u: t - train_items.get(u, set()) for u, t in test.items()}
        truth = {u: t for u, t in truth.items() if t and u in train_items}
        return train, train_items, truth

    def build_database(self, path: Path, events, binary: bool = False):
        """An rtsql database holding ``events`` (as the dataset's event type with its value, or
        as valueless views), with the dataset's catalog if it has one."""
        import rtsql
        from rtsql import catalog, ingest

        events_csv = path.parent / (path.stem + ".csv")
        with open(events_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["user_id", "item_id", "event_type", "ts", "value"])
            for user, ts, item, value in events:
                w.writerow([user, item, "view" if binary else self.event_type, ts,
                            "" if binary else value])
        con = rtsql.connect(path)
        ingest.ingest(con, [events_csv])
        if self.name == "ml":
            catalog.load_items(con, self._movie_catalog(path.parent))
        return con

    def _movie_catalog(self, workdir: Path) -> Path:
        """movies.csv as an rtsql catalog: genres and user tags as tags, first genre as
        category."""
        tags: dict[str, set] = {}
        with open(self.folder / "tags.csv", newline="") as f:
            for row in csv.DictReader(f):
                tags.setdefault(row["movieId"], set()).add(
                    row["tag"].strip().lower().replace("|", " "))
        items = workdir / "items.csv"
        with open(self.folder / "movies.csv", newline="") as f, open(items, "w", newline="") as out:
            w = csv.writer(out)
            w.writerow(["item_id", "title", "category", "tags"])
            for row in csv.DictReader(f):
                genres = row["genres"].split("|")
                w.writerow([row["movieId"], row["title"], genres[0], "|".join(sorted(
                    {g.lower() for g in genres} | tags.get(row["movieId"], set())))])
        return items


DATASETS = {
    "ml": Dataset("ml", SHARED / "ml-latest-small", "ratings.csv", "rating"),
    "tafeng": Dataset("tafeng", SHARED / "tafeng-even", "events.csv", "purchase"),
}
