"""The writer's loop that ``rtsql tail`` and ``rtsql serve`` both run: take new input,
publish a snapshot for readers, refresh (inline, or in a background thread paced by
``tail_refresh_seconds`` and the last refresh's duration), run tasks that need the database to
itself between batches, and log a status line.

``Follower`` has no input of its own: serve's writer commits HTTP bodies and calls ``notify``.
``rtsql.tail.Tail`` adds a folder's files (its ``scan`` and a watchdog observer).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import refresh as refresh_mod
from . import snapshot
from .ingest import ColumnMapping
from .sqlutil import database_path

REFRESH_DUTY = 3.0  # a background refresh starts no sooner than 3x the last one's duration


@dataclass
class TailOptions:
    patterns: tuple[str, ...] = ("*",)
    recursive: bool = False
    poll: bool = False
    fmt: str | None = None
    mapping: ColumnMapping = field(default_factory=ColumnMapping)
    publish: Path | None = None
    refresh: bool = True
    rescan_seconds: float = 2.0
    debounce_ms: int = 50
    status_seconds: float = 5.0
    # least seconds between two per-batch publishes (0: after every batch), and between two
    # publishes of refreshed lists while refreshes follow each other (the last refresh's
    # lists are published as soon as no other one follows)
    publish_interval: float = 0.0
    # the background refresh: similarity threads (None: the `threads` setting) and a lower
    # scheduling priority (nice, Linux: per thread, inherited by the threads it starts)
    refresh_threads: int | None = None
    refresh_nice: int = 0
    refresh_isolated: bool = False  # the refresh's compute in a worker process (serve)
    name: str = "tail"  # the process the status lines speak for (serve runs this loop too)


@dataclass
class ScanResult:
    events: int = 0
    rejects: int = 0
    files: int = 0
    warnings: list[str] = field(default_factory=list)



class Follower:
    """The loop of the one writer. ``batch()`` is one pass; ``run()`` adds the wake-ups (the
    rescan timer, ``notify``, the subclass's observer), signals and the status line.

    ``rtsql serve`` runs it in a thread, with the server's ``lock`` around each scan (one
    writer at a time), ``notify()`` after each HTTP ingest, ``on_ingest`` after a scan that
    loaded events and ``on_refresh(result)`` after each refresh (its RefreshResult, None if
    it failed: the server brings its in-memory state forward)."""

    def __init__(self, con, options: TailOptions | None = None,
                 log: Callable[[str], None] = lambda line: None, *, lock=None,
                 on_ingest: Callable[[], None] | None = None,
                 on_refresh: Callable[[refresh_mod.RefreshResult | None], None] | None = None):
        self.con = con
        self.lock = lock or contextlib.nullcontext()
        self.on_ingest, self.on_refresh = on_ingest, on_refresh
        self._arrived_elsewhere = False
        self._publish_held = False
        self._last_batch_publish = -float("inf")
        self._lists_unpublished = False  # a refresh finished since the last full publish
        self._last_full_publish = -float("inf")
        self.opt = options or TailOptions()
        self.log = log
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.totals = ScanResult()
        self.last_refresh: tuple[float, float, str] | None = None  # (when, seconds, kind)
        # per kind of refresh (full, incremental, none): how many, and the last one's seconds
        self.refresh_counts = {"full": 0, "incremental": 0, "none": 0}
        self.refresh_seconds = {"full": 0.0, "incremental": 0.0, "none": 0.0}
        # wall clock at which the last finished refresh began: its lists hold every event
        # committed before then
        self.refreshed_as_of: float | None = None
        self.last_publish_seconds: float | None = None
        self.pending_since: float | None = None
        self._refresher: threading.Thread | None = None
        self._refresh_finished = threading.Event()
        self._refresh_pending = False
        self._refresh_error: Exception | None = None
        self._last_result: refresh_mod.RefreshResult | None = None  # of the last refresh
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.publisher = (snapshot.Publisher(self.opt.publish, database_path(con))
                          if self.opt.publish else None)
        from . import settings

        self.refresh_interval = settings.get(con, "tail_refresh_seconds")
        self._refresh_started = -float("inf")

    # ------------------------------------------------------------------ input

    def scan(self) -> ScanResult:
        """New input since the last pass (rtsql.tail.Tail: its folder's files). The
        follower alone has none of its own: events arrive by ``notify``."""
        return ScanResult()

    def notify(self) -> None:
        """Events arrived by another way (the HTTP server): publish and refresh as after a
        scan that loaded them."""
        self._arrived_elsewhere = True
        self.wake.set()

    def _observer(self):
        """What wakes the loop besides the timer and ``notify`` (Tail: watchdog)."""
        return None

    # ------------------------------------------------------------------ batch and loop

    def batch(self, background_refresh: bool = False) -> ScanResult:
        """One scan; when anything arrived, publish at once (recommend() reads events newer
        than the last refresh, so readers see them before any neighbour list changes), then
        refresh: inline, or on its own cursor in a background thread that publishes again when
        it is done (DuckDB's MVCC gives it a consistent view; it writes only derived tables)."""
        result = self.scan()
        for warning in result.warnings:
            self.log(f"{self.opt.name}: warning: {warning}")
        arrived = bool(result.events or result.rejects or self._arrived_elsewhere)
        self._arrived_elsewhere = False
        if arrived or self._publish_held:
            self._publish_batch()
        if self._refresh_finished.is_set():
            self._refresh_finished.clear()
            self._join_refresh()
            self._refreshed()
        if self.opt.refresh and (arrived or self._refresh_pending):
            if not background_refresh:
                began = time.time()
                self._record_refresh(refresh_mod.refresh(self.con), began)
                self._refreshed()
            elif self._refresher is None and self._refresh_due():
                self._start_refresh()
            else:
                self._refresh_pending = True  # later: when due, or when the running one ends
        self._publish_lists(force=False)
        return result

    def _refreshed(self) -> None:
        if self.on_refresh:
            self.on_refresh(self._last_result)
        self._lists_unpublished = True

    def _publish_lists(self, force: bool) -> None:
        """Publish the refreshed lists (a full snapshot): at once when no other refresh runs
        or waits, else at most every ``publish_interval`` seconds, so that under a steady
        stream, where serve refreshes back to back, the publish does not stand between one
        refresh and the next. The publish is one transaction, so a refresh that commits
        meanwhile (on its own cursor) does not mix into it."""
        if not self._lists_unpublished:
            return
        at_rest = self._refresher is None and not self._refresh_pending
        now = time.monotonic()
        if force or at_rest or now - self._last_full_publish >= self.opt.publish_interval:
            self._lists_unpublished = False
            self._last_full_publish = now
            self._publish(full=True)

    def arrived(self, events: int, rejects: int) -> None:
        """Events (and rejects) another writer of this process committed, serve's HTTP bodies:
        the status line counts them with the folder's."""
        self.totals.events += events
        self.totals.rejects += rejects

    def between_batches(self, task: Callable[[], object]) -> Future:
        """Run ``task()`` in the loop's thread, after the refresh under way has finished, under
        the lock: nothing else uses the database meanwhile (serve's forget rewrites the file).
        The future gives its result."""
        future: Future = Future()
        self._tasks.put((task, future))
        self.wake.set()
        return future

    def _run_tasks(self) -> None:
        while not self._tasks.empty():
            task, future = self._tasks.get()
            self._join_refresh()
            if self._refresh_finished.is_set():
                self._refresh_finished.clear()
                self._refreshed()
            self._publish_lists(force=True)
            try:
                with self.lock:
                    future.set_result(task())
            except BaseException as exc:  # the caller gets it; the loop goes on
                future.set_exception(exc)

    def _publish_batch(self) -> None:
        """The per-batch publish, at most every ``publish_interval`` seconds (held back, it
        happens on a later pass of the loop)."""
        now = time.monotonic()
        self._publish_held = now - self._last_batch_publish < self.opt.publish_interval
        if not self._publish_held:
            self._last_batch_publish = now
            self._publish(full=False)

    def publish(self, full: bool = True) -> None:
        """Publish a snapshot now (``full``: every serving table; else the new events)."""
        self._publish(full)

    def _publish(self, full: bool) -> None:
        if self.publisher is not None:
            self.last_publish_seconds = (self.publisher.full(self.con) if full
                                         else self.publisher.events(self.con))

    def _record_refresh(self, done, began: float) -> None:
        self._last_result = done
        self.last_refresh = (time.time(), done.seconds, done.mode)
        self.refresh_counts[done.mode] = self.refresh_counts.get(done.mode, 0) + 1
        self.refresh_seconds[done.mode] = done.seconds
        self.refreshed_as_of = began

    def _refresh_due(self) -> bool:
        """tail_refresh_seconds after the last start, and at least REFRESH_DUTY times the last
        refresh's duration: under a heavy write load (each refresh folds in more events and
        takes longer) background refreshes take at most 1/REFRESH_DUTY of the time instead
        of running back to back and starving ingest and requests. The duration is the last
        incremental refresh's when there was one: a full rebuild (EASE's lambda drifted, a
        setting changed) is rare, and waiting three times its duration would hold every
        later event out of the lists for that long. When the refresh's heavy part runs in the
        worker process at the lowest priority (serve: ``refresh_isolated``), it yields the
        cores to requests by itself, and refreshes follow each other without the extra
        wait (docs/serving.md)."""
        last = self.refresh_seconds["incremental"] if self.refresh_counts["incremental"] \
            else (self.last_refresh[1] if self.last_refresh else 0.0)
        duty = 1.0 if self.opt.refresh_isolated else REFRESH_DUTY
        wait = max(self.refresh_interval, duty * last)
        return time.monotonic() - self._refresh_started >= wait

    def _start_refresh(self) -> None:
        self._last_result = None  # until it succeeds
        self._refresh_pending = False
        self._refresh_started = time.monotonic()
        cursor = self.con.cursor()

        def work():
            try:
                if self.opt.refresh_nice and hasattr(os, "setpriority"):
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                                   self.opt.refresh_nice)
                began = time.time()
                self._record_refresh(refresh_mod.refresh(cursor,
                                                         threads=self.opt.refresh_threads,
                                                         isolate=self.opt.refresh_isolated),
                                     began)
            except Exception as exc:  # reported by the loop; the next batch tries again
                self._refresh_error = exc
            finally:
                cursor.close()
                self._refresh_finished.set()
                self.wake.set()

        self._refresher = threading.Thread(target=work, name="rtsql-refresh")
        self._refresher.start()

    def _join_refresh(self) -> None:
        if self._refresher is not None:
            self._refresher.join()
            self._refresher = None
        if self._refresh_error is not None:
            error, self._refresh_error = self._refresh_error, None
            self.log(f"{self.opt.name}: warning: refresh failed: {error}")
            self._refresh_pending = True

    def run(self, once: bool = False) -> ScanResult:
        """Catch up, then follow until SIGINT/SIGTERM (or return after catching up)."""
        first = self.batch()
        if self.publisher and not self.publisher.target.exists():
            self._publish(full=True)
        if once:
            return first
        observer = self._observer()
        previous = {}
        if threading.current_thread() is threading.main_thread():  # else: the caller stops us
            previous = {sig: signal.signal(sig, lambda *_: (self.stop.set(), self.wake.set()))
                        for sig in (signal.SIGINT, signal.SIGTERM)}
        last_status, events_at_status = time.monotonic(), self.totals.events
        try:
            while not self.stop.is_set():
                self.wake.wait(self.opt.rescan_seconds)
                if self.wake.is_set() and not self.stop.is_set():
                    time.sleep(self.opt.debounce_ms / 1000)  # let a burst settle
                self.wake.clear()
                self.pending_since = self.pending_since or time.monotonic()
                self.batch(background_refresh=True)
                self.pending_since = None
                self._run_tasks()
                now = time.monotonic()
                if now - last_status >= self.opt.status_seconds:
                    rate = (self.totals.events - events_at_status) / (now - last_status)
                    self.log(self.status_line(rate))
                    last_status, events_at_status = now, self.totals.events
        finally:
            self._join_refresh()  # finish the refresh under way, as a clean stop should
            if self._refresh_finished.is_set():
                self._refresh_finished.clear()
                self._refreshed()
            self._publish_lists(force=True)
            self._run_tasks()
            if observer is not None:
                observer.stop()
                observer.join()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.totals

    def status_line(self, rate: float) -> str:
        lag = 0.0 if self.pending_since is None else time.monotonic() - self.pending_since
        refreshed = (time.strftime("%H:%M:%S", time.localtime(self.last_refresh[0]))
                     + f" ({self.last_refresh[1] * 1000:.0f} ms)") if self.last_refresh else "never"
        published = (f", publish {self.last_publish_seconds * 1000:.0f} ms"
                     if self.last_publish_seconds is not None else "")
        return (f"{self.opt.name}: {rate:.0f} events/s, lag {lag:.1f}s, {self.totals.events} events, "
                f"{self.totals.rejects} rejects, last refresh {refreshed}{published}")
