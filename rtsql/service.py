"""The serving process as a library object: one writer that owns the database, serves reads
from memory and takes writes with read-your-writes.

DuckDB allows one read-write process per database file, so an application cannot write events
while ``rtsql tail`` or a refresh holds it, and each ``recommend()`` through SQL spends 15-20 ms
planning. ``Service`` is the process that owns the file:

- reads come from ``ServingState`` (rtsql.serving), numpy arrays in memory;
- writes (events, impressions, forget) go through one writer thread that commits them in
  groups (every request that arrived while the previous group committed joins the next: group
  commit), then brings the in-memory state forward (``catch_up``) before any request is
  answered, so a read that follows an answered write sees it, and the write is durable;
- events may instead be answered once journaled (``submit_durable``, rtsql.journal): durable
  at once, visible after the writer's next group commit (``outcome`` waits for that);
- the follower (``rtsql.follower.Follower``, the loop ``rtsql tail`` runs too; with a folder
  to follow, ``rtsql.tail.Tail``) refreshes in the background, publishes snapshots for BI tools and CLI readers,
  and after each refresh the state takes what the refresh rewrote (a whole load after a full
  one) and is swapped in;
- everything but the answers runs at a lower scheduling priority (BACKGROUND_NICE): the
  writer, the follower, and DuckDB's own threads, so a request does not wait for the cores.

``rtsql.server`` puts HTTP in front of this; tests and other programs can use it directly.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import (
    availability,
    catalog,
    compute_worker,
    db,
    feedback,
    privacy,
    scoring,
    settings,
    snapshot,
)
from . import ingest as ingest_mod
from . import journal as journal_mod
from . import refresh as refresh_mod
from . import tail as tail_mod
from .dashboard import Arrivals
from .errors import DatabaseLocked, InvalidSetting
from .follower import Follower
from .serving import ServingState

# serve publishes a snapshot after a batch of events, and the lists of refreshes that follow
# each other, at most this often: a publish copies the snapshot file (120 MB at 10M events),
# and applications read from memory anyway; the last refresh's lists are published at once
PUBLISH_INTERVAL_SECONDS = 30.0
# Scheduling priority (Linux nice) of everything serve does besides answering requests: the
# writer, the follower and its refresh, and DuckDB's worker threads, which run their SQL (0:
# normal). The requests' thread keeps the normal priority, so the two cores go to it first.
BACKGROUND_NICE = 10
FORGET_WAIT_SECONDS = 120.0  # how long forget waits for a background refresh to finish
RECONNECT_SECONDS = 30.0  # how long serve retries opening its file again after forget's swap
JOURNAL_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)  # waits between tries of a failed load


@dataclass
class ServiceOptions:
    tail_dir: str | os.PathLike | None = None
    tail: tail_mod.TailOptions = field(default_factory=tail_mod.TailOptions)
    publish: Path | None = None  # default: next to the database


@dataclass
class _Job:
    kind: str  # events | journal | impressions | availability | items | forget
    payload: object
    future: Future = field(default_factory=Future)


class Service:
    """Start with ``start()``, stop with ``stop()`` (or use it as a context manager)."""

    def __init__(self, db_path: str | os.PathLike, options: ServiceOptions | None = None,
                 log: Callable[[str], None] = lambda line: None):
        self.db_path = str(db_path)
        self.opt = options or ServiceOptions()
        self.log = log
        self.lock = threading.Lock()  # one writer at a time on the database
        self._jobs: queue.Queue = queue.Queue()
        self._sequence = itertools.count(1)
        self.counters = {"events": 0, "rejects": 0, "impressions": 0}
        self.last_refresh: float | None = None  # wall clock of the last reload after a refresh
        self.model_as_of: float | None = None  # the served lists hold the events before this
        self.pending_since: float | None = None  # first write not yet folded into a refresh
        self.state: ServingState | None = None
        self._generation = 0  # bumped when a write replaces the state (forget)
        self.ready = threading.Event()  # the scorer is compiled: requests can be answered
        self.lost: str | None = None  # why the database cannot be written, if it cannot
        self.arrivals = Arrivals()  # events committed over time, for the dashboard
        self.journal: journal_mod.Journal | None = None
        self._outcomes = journal_mod.Outcomes()  # of journaled bodies, by sequence
        self.journal_trouble: str | None = None  # why journaled bodies wait, if they do
        self._journal_committed = 0  # the last journaled body this process committed

    # ------------------------------------------------------------------ life cycle

    def start(self, warm: bool = True) -> "Service":
        """Own the database, load the state, start the writer and the follower; and, unless
        ``warm`` is false (then call ``warm()``), load the compiled scorer."""
        db.validate_db_path(self.db_path)
        self._lock_fd = tail_mod.acquire_lock(self.db_path)
        try:
            if privacy.finish_pending_rewrite(self.db_path) is not None:
                self.log("serve: finished the file rewrite of an earlier forget")
            # DuckDB's worker threads take the priority of the thread that opens the database
            # (a forget's reconnect opens it on the follower's thread, which has it too)
            self.con = _at_lower_priority(db.connect, self.db_path)
            self._open_journal()
            self._loader = self.con.cursor()
            self.state = ServingState.load(self._loader)
            self.arrivals.note(self.state.seen["event_id"])
            if warm:
                self.warm()
            _freeze()
            options = self.opt.tail
            options.publish = self.opt.publish or snapshot.default_path(self.db_path)
            options.publish_interval = max(options.publish_interval, PUBLISH_INTERVAL_SECONDS)
            # the background refresh's compute runs in the worker at the lowest priority
            # (compute_worker.py), so it may take every core the requests leave idle
            options.refresh_threads = options.refresh_threads or settings.usable_cores()
            options.refresh_nice = options.refresh_nice or BACKGROUND_NICE
            options.refresh_isolated = True  # the similarity compute in a worker process
            compute_worker.warm()  # started and its kernels loaded before the first refresh
            options.name = "serve"
            hooks = {"log": self.log, "lock": self.lock, "on_ingest": self._caught_up,
                     "on_refresh": self._reload}
            # the writer's loop; with --tail DIR also that folder's files
            self.follower = (tail_mod.Tail(self.con.cursor(), self.opt.tail_dir, options, **hooks)
                             if self.opt.tail_dir is not None
                             else Follower(self.con.cursor(), options, **hooks))
            # readers (the CLI, BI tools) find a current snapshot from the first request on
            self.follower.publish(full=True)
        except BaseException:
            tail_mod.release_lock(self.db_path, self._lock_fd)
            raise
        self._writer = threading.Thread(target=self._write_loop, name="rtsql-writer")
        self._writer.start()
        self._follow = threading.Thread(target=self._follow_loop, name="rtsql-follower")
        self._follow.start()
        return self

    def warm(self) -> None:
        """Load numba's machine code for the scorer before the first request: a fraction of a
        second from its cache, up to half a minute the first time after an install (it
        compiles). ``ready`` is set after."""
        scoring.warm_up()
        self.ready.set()

    def stop(self) -> None:
        """Finish queued writes, the refresh under way and the follower; close the database."""
        self._jobs.put(None)
        self._writer.join()
        self.journal.close()
        self.follower.stop.set()
        self.follower.wake.set()
        self._follow.join()
        self._loader.close()
        self.follower.con.close()
        self.con.close()
        compute_worker.shutdown()
        tail_mod.release_lock(self.db_path, self._lock_fd)

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ writes

    def submit_events(self, body: bytes, fmt: str = "jsonl") -> Future:
        """Queue a body of events: a JSON array of objects, JSON lines, or CSV text with a
        header (``fmt`` csv). The future gives its ``ingest.BodyResult`` once the events are
        committed and visible to reads, or raises InvalidSetting for a body that is not
        what it claims to be."""
        if fmt not in ("jsonl", "csv"):
            raise InvalidSetting(f"events come as jsonl or csv, not {fmt!r}")
        return self._submit("events", (fmt, body))

    def submit_durable(self, body: bytes, fmt: str = "jsonl") -> int:
        """Journal a body of events (as ``submit_events`` takes it) and return its sequence
        number once it is on disk. The writer loads it with its next group; ``outcome``
        gives its ``ingest.BodyResult`` then. Raises InvalidSetting for a body that is not
        what it claims to be (nothing is journaled)."""
        if fmt not in journal_mod.FORMATS:
            raise InvalidSetting(f"events come as jsonl or csv, not {fmt!r}")
        lines = ingest_mod.json_array_as_lines(body) if fmt == "jsonl" else body
        return self.journal.append(fmt, lines, self._queue_journaled).sequence

    def outcome(self, sequence: int) -> Future | None:
        """The future of a journaled body's ``ingest.BodyResult`` (done once its events are
        committed and visible to reads). A body committed too long ago for its outcome to be
        kept gives a done future of None; a sequence never journaled gives None."""
        return self._outcomes.get(sequence, self.journal.applied)

    def _open_journal(self) -> None:
        """Open the journal; queue the bodies an earlier run answered but did not commit."""
        self.journal = journal_mod.Journal(journal_mod.path_for(self.db_path),
                                           journal_mod.position(self.con))
        if self.journal.pending:
            self.log(f"serve: loading {len(self.journal.pending)} journaled bodies that an "
                     "earlier run answered and did not commit")
        for record in self.journal.pending:
            self._queue_journaled(record)

    def _queue_journaled(self, record: journal_mod.Record) -> None:
        job = _Job("journal", record)
        self._outcomes.add(record.sequence, job.future)
        self._jobs.put(job)

    def submit_impressions(self, rows: list[dict]) -> Future:
        return self._submit("impressions", rows)

    def submit_forget(self, user_id: str) -> Future:
        return self._submit("forget", user_id)

    def submit_availability(self, item_id: str, available: bool) -> Future:
        """Hide (``available`` false) or show an item; the future gives the item id once every
        list leaves it out (or takes it back), or raises UnknownItem."""
        return self._submit("availability", (item_id, available))

    def submit_items(self, body: bytes, fmt: str = "jsonl") -> Future:
        """Upsert catalog rows (a JSON array of objects, JSON lines, or CSV text with a
        header), with the validation and rejects of ``rtsql items``; the future gives
        catalog.load_items_body's counts and rejects once an availability they set applies
        to every list."""
        return self._submit("items", (fmt, body))

    def _submit(self, kind: str, payload) -> Future:
        job = _Job(kind, payload)
        self._jobs.put(job)
        return job.future

    def _follow_loop(self) -> None:
        _lower_priority()
        self.follower.run()

    def _write_loop(self) -> None:
        _lower_priority()
        stopping = False
        while not stopping:
            jobs = [self._jobs.get()]
            while True:  # group commit: everything that queued up meanwhile
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            if None in jobs:
                stopping = True
                jobs = [j for j in jobs if j is not None]
            for kind, group in itertools.groupby(jobs, key=lambda j: (j.kind, _fmt(j))):
                group = list(group)
                waits = iter(JOURNAL_RETRY_SECONDS)
                # journaled bodies were answered already: a failed load (the database, not the
                # body: bad rows go to rejects) is tried again, in order, until it commits;
                # on the way out they stay journaled for the next start
                while not self._run(kind[0], group) and kind[0] == "journal" and not stopping:
                    time.sleep(next(waits, JOURNAL_RETRY_SECONDS[-1]))

    def _run(self, kind: str, jobs: list[_Job]) -> bool:
        """Commit one group of one kind (``_APPLY``), bring the state forward, answer each
        request; False only for journaled bodies that did not commit (the writer tries them
        again)."""
        try:
            with self.lock:
                jobs, results = _APPLY[kind](self, jobs)
                self.state.catch_up(self.con)
                self.arrivals.note(self.state.seen["event_id"])
                self.pending_since = self.pending_since or time.time()
            self._after_commit(kind, jobs, results)
        except BaseException as exc:  # every waiting request gets the error
            return self._failed(kind, jobs, exc)
        for job, result in zip(jobs, results):
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        self.follower.notify()
        return True

    # each kind's group, committed under the lock: (the jobs answered, one result each)

    def _apply_events(self, jobs: list[_Job]) -> tuple[list[_Job], list]:
        return self._counted(*self._ingest(jobs))

    def _apply_journal(self, jobs: list[_Job]) -> tuple[list[_Job], list]:
        return self._counted(*self._load_journaled(jobs))

    def _counted(self, jobs: list[_Job], results: list) -> tuple[list[_Job], list]:
        events = sum(r.ingested for r in results)
        rejects = sum(len(r.rejects) for r in results)
        self.counters["events"] += events
        self.counters["rejects"] += rejects
        self.follower.arrived(events, rejects)
        return jobs, results

    def _apply_impressions(self, jobs: list[_Job]) -> tuple[list[_Job], list]:
        sources = [f"http:POST /impressions#{next(self._sequence)}" for _ in jobs]
        results = [feedback.load_impression_rows(self.con, j.payload, source)
                   for j, source in zip(jobs, sources)]
        self.state.impressions_added(self.con, sources)  # no repeats, at once
        self.counters["impressions"] += sum(r["loaded"] for r in results)
        self.counters["rejects"] += sum(r["rejected"] for r in results)
        return jobs, results

    def _apply_availability(self, jobs: list[_Job]) -> tuple[list[_Job], list]:
        """Each its own outcome (an unknown id fails alone)."""
        results = [_outcome(availability.set_available, self.con, [j.payload[0]],
                            j.payload[1]) for j in jobs]
        self.state.reload_availability(self.con)
        return jobs, results

    def _apply_items(self, jobs: list[_Job]) -> tuple[list[_Job], list]:
        """Each body its own transaction and outcome."""
        results = [_outcome(catalog.load_items_body, self.con, j.payload[1],
                            f"http:POST /items#{next(self._sequence)}", j.payload[0])
                   for j in jobs]
        self.state.reload_availability(self.con)
        return jobs, results

    def _apply_forget(self, jobs: list[_Job]) -> tuple[list[_Job], list]:
        """Each its own outcome (an unknown id fails alone)."""
        return jobs, [_outcome(self._forget, j.payload) for j in jobs]

    def _after_commit(self, kind: str, jobs: list[_Job], results: list) -> None:
        """Outside the lock: the journal's committed position; after a forget, the scrub of
        every copy (answered once no byte is left anywhere)."""
        if kind == "journal":
            self.journal.committed(jobs[-1].payload.sequence)
            self.journal_trouble = None
        forgotten = [r for r in results if isinstance(r, privacy.ForgetResult)]
        if kind == "forget" and forgotten:
            # journaled bodies queued before the forget are committed: none stays on disk
            self.journal.committed(self.journal.applied, compact=True)
            republished, seconds = self.follower.between_batches(self._scrub).result()
            for result in forgotten:
                result.republished, result.compact_seconds = republished, seconds

    def _failed(self, kind: str, jobs: list[_Job], exc: BaseException) -> bool:
        """A group that raised: journaled bodies not committed wait for another try (False);
        any other group's requests get the error, once."""
        if kind == "journal" and isinstance(exc, Exception) \
                and self._journal_committed < jobs[-1].payload.sequence:  # not committed
            self.journal_trouble = (f"journaled events from #{jobs[0].payload.sequence} "
                                    f"could not be loaded ({exc}); trying again")
            self.log(f"serve: {self.journal_trouble}")
            return False
        for job in jobs:  # committed (or not journaled): answered with the error, once
            job.future.set_exception(exc)
        return True

    def _ingest(self, jobs: list[_Job]) -> tuple[list[_Job], list]:
        """The bodies that parse (JSON arrays become JSON lines here, off the event loop),
        in one transaction; a body that does not parse fails its own request only."""
        bodies, kept = [], []
        for job in jobs:
            fmt, body = job.payload
            try:
                bodies.append((f"http:POST /events#{next(self._sequence)}",
                               ingest_mod.json_array_as_lines(body) if fmt == "jsonl" else body))
                kept.append(job)
            except InvalidSetting as exc:
                job.future.set_exception(exc)
        return kept, self._load(bodies, jobs[0].payload[0]) if bodies else []

    def _load(self, bodies: list[tuple[str, bytes]], fmt: str, before_commit=None) -> list:
        """ingest_bodies with what the writer knows: the last event id, the id maps."""
        return ingest_mod.ingest_bodies(self.con, bodies, fmt=fmt,
                                        last_event_id=self.state.seen["event_id"],
                                        known_keys=self.state.keys_of,
                                        before_commit=before_commit)

    def _load_journaled(self, jobs: list[_Job]) -> tuple[list[_Job], list]:
        """Journaled bodies (one format), in one transaction with the journal's position."""
        last = jobs[-1].payload.sequence
        marked = []

        def mark(con) -> None:
            journal_mod.set_position(con, last)
            marked.append(last)

        records = [j.payload for j in jobs]
        results = self._load([(f"http:POST /events#j{r.sequence}", r.body) for r in records],
                             records[0].fmt, before_commit=mark)
        if not marked:  # no line at all: nothing was loaded, the position still moves on
            mark(self.con)
        self._journal_committed = last
        return jobs, results

    def _forget(self, user_id: str) -> privacy.ForgetResult:
        """privacy.delete under the writer lock, waiting for a background refresh to finish
        first; then the state is reloaded without the user."""
        deadline = time.monotonic() + FORGET_WAIT_SECONDS
        while True:
            try:
                result = privacy.delete(self.con, user_id, unfinished_is_done=False)
                break
            except DatabaseLocked:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.state = ServingState.load(self.con)
        self._generation += 1  # a reload that began before this must not swap its state in
        return result

    def _scrub(self) -> tuple[list, float]:
        """After a forget, in the follower's thread with no refresh running and the writer
        lock held: privacy.scrub, closing every connection of this process and opening them
        again around the file's rewrite."""
        def close_all() -> None:
            for connection in (self._loader, self.follower.con, self.con):
                connection.close()

        def reopen():
            self._reconnect()
            return self.con

        return privacy.scrub(self.follower.con, self.db_path, close_all, reopen)

    def _reconnect(self) -> None:
        """Open the database again after the swap. No other process can have taken it
        (db.compact keeps this process's lock on the new file, and ``held`` opens it without
        dropping that lock); should opening fail all the same, retry for RECONNECT_SECONDS,
        then say so in /health (and every write fails) instead of dying."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            try:
                self.con = db.connect(self.db_path, held=True)  # db.compact's lock
                break
            except DatabaseLocked as exc:
                self.lost = (f"another process opened {self.db_path} for writing while a "
                             f"forget swapped in its rewritten file ({exc}); stop that process "
                             "and restart serve")
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.lost = None
        self._loader = self.con.cursor()
        self.follower.con = self.con.cursor()

    # ------------------------------------------------------------------ follower hooks

    def _caught_up(self) -> None:
        """After the follower loaded files (under the writer lock)."""
        self.state.catch_up(self.con)
        self.arrivals.note(self.state.seen["event_id"])
        self.pending_since = self.pending_since or time.time()

    def _reload(self, result: refresh_mod.RefreshResult | None = None) -> None:
        """After a refresh: bring the state forward without blocking writes or reads (only
        what the refresh rewrote, when it says so and started from the served state; else a
        whole load), then catch it up with what was committed meanwhile and swap it in."""
        rewritten = result.rewritten if result is not None else None
        while True:
            started, generation, current = time.time(), self._generation, self.state
            model = fresh = None
            if rewritten is not None:  # None when it does not start from this state
                model = current.advanced_model(self._loader, rewritten.since,
                                               rewritten.item_lists, rewritten.user_lists,
                                               rewritten.users, rewritten.content)
            if model is None:
                fresh = ServingState.load(self._loader)
            with self.lock:
                if generation != self._generation:
                    continue  # a forget replaced the state meanwhile: load again
                if model is not None:
                    fresh = current.with_model(model, rewritten.users)
                fresh.catch_up(self.con)
                # changes commit under this lock and update the serving state's copy at once
                fresh.availability = self.state.availability
                if (fresh.impressions.enabled, fresh.impressions.hours) == \
                        (self.state.impressions.enabled, self.state.impressions.hours):
                    fresh.impressions = self.state.impressions
                else:  # the settings changed: read them again, with nothing committing
                    fresh.impressions.read(self.con)
                # what /metrics and /health say of the model changes with it (the lag last:
                # a reader that sees it cleared sees the new model's age)
                self.state = fresh
                self.last_refresh = time.time()
                self.model_as_of = self.follower.refreshed_as_of
                self.pending_since = None if not fresh.pending else started
                break
        _freeze()

    # ------------------------------------------------------------------ reads
    # Every read takes the current state once: a refresh swaps in a new one whole.

    def recommend(self, user_id: str, k: int, **options):
        return self.state.recommend(user_id, k, **options)

    def recommend_for_items(self, item_ids: list[str], k: int, **options):
        return self.state.recommend_for_items(item_ids, k, **options)

    def similar_items(self, item_id: str, k: int, by: str):
        return self.state.similar_items(item_id, k, by)

    def similar_users(self, user_id: str, k: int):
        return self.state.similar_users(user_id, k)

    def trending(self, k: int):
        return self.state.trending(k)

    def variants(self) -> list[str]:
        """The A/B variants the served state knows."""
        return list(self.state.model.variants)

    def recent_history(self, user_id: str, limit: int) -> dict:
        return self.state.recent_history(user_id, limit)

    def item_stats(self, item_id: str) -> dict:
        return self.state.item_stats(item_id)

    def most_active_users(self, n: int) -> list[str]:
        return self.state.most_active_users(n)

    def last_event_id(self) -> int:
        return self.state.seen["event_id"]

    def refresh_stats(self) -> dict:
        """The follower's refreshes: count and last duration by kind, the last one (when,
        seconds, kind) and the last snapshot publish's seconds."""
        f = self.follower
        return {"counts": dict(f.refresh_counts), "seconds": dict(f.refresh_seconds),
                "last": f.last_refresh, "publish_seconds": f.last_publish_seconds or 0.0}

    @contextlib.contextmanager
    def reading(self):
        """A cursor of its own for a read in SQL (the dashboard), closed after; DuckDB runs
        it beside the writer's transactions and sees what they committed."""
        if self.lost:
            raise DatabaseLocked(self.lost)
        cursor = self.con.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def problems(self) -> list[str]:
        """Why this server cannot do its job (empty: it can): /health answers 503 with them."""
        found = [self.lost] if self.lost else []
        if self.journal_trouble:
            found.append(self.journal_trouble)
        if not self._writer.is_alive():
            found.append("the writer thread stopped: writes are not committed")
        if not self._follow.is_alive():
            found.append("the follower thread stopped: no refreshes, snapshots or folder")
        return found

    def health(self) -> dict:
        state = self.state
        problems = self.problems()
        return {"status": "failing" if problems else "ok", "problems": problems,
                "users": len(state.user_keys), "items": len(state.item_keys),
                "watermark": state.model.watermark, "last_event_id": state.seen["event_id"],
                "pending_events": state.pending_events,
                "journaled_bodies": self.journal.unapplied(),
                "last_refresh": self.last_refresh}

    def model_age(self) -> float:
        """Seconds since the served lists were current: they hold every event committed more
        than this long ago (0 before the first refresh of this process)."""
        return 0.0 if self.model_as_of is None else time.time() - self.model_as_of

    def refresh_lag(self) -> float:
        """Seconds since the oldest write not yet folded into a refresh (0: none)."""
        return 0.0 if self.pending_since is None else time.time() - self.pending_since


_APPLY: dict[str, Callable[[Service, list[_Job]], tuple[list[_Job], list]]] = {
    "events": Service._apply_events, "journal": Service._apply_journal,
    "impressions": Service._apply_impressions, "availability": Service._apply_availability,
    "items": Service._apply_items, "forget": Service._apply_forget}


def _outcome(function, *args):
    """``function(*args)``, or the exception it raised: one request's answer in a group."""
    try:
        return function(*args)
    except Exception as exc:
        return exc


def _lower_priority() -> None:
    """Run the calling thread, and the threads it starts from now on, at BACKGROUND_NICE."""
    if BACKGROUND_NICE and hasattr(os, "setpriority"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def _at_lower_priority(function, *args):
    """``function(*args)`` on a thread at BACKGROUND_NICE, its result or its exception: what
    the call starts (DuckDB's worker threads, when it opens a database) inherits it."""
    outcome: dict = {}

    def run() -> None:
        _lower_priority()
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:  # raised again in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="rtsql-open")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _freeze() -> None:
    """Move what is alive now (the serving state's id maps: hundreds of thousands of objects
    at 10M events) out of the garbage collector's generations, so collections during
    requests stay short (a full collection over them took milliseconds, a p99 outlier).
    The previous state, once released, is freed by reference counting."""
    import gc

    gc.collect()
    gc.freeze()


def _fmt(job: _Job | None):
    if job is not None and job.kind == "journal":
        return job.payload.fmt
    return job.payload[0] if job is not None and job.kind == "events" else None
