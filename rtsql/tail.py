"""``rtsql tail``: follow a directory of event files and keep recommendations fresh.

The directory is the truth and watchdog events are only hints: every wake-up (a file event, or
the rescan timer, since the kernel queue can overflow and bursts are merged) leads to one scan,
which the same code runs at start-up to catch up. A scan follows each known file by its identity
(device and inode, the hash of its first bytes and of the bytes just before its offset) and
loads new complete lines through ``ingest.load_segment``, which commits events, rejects and the
new offset in one transaction: after ``kill -9`` the restart continues exactly where the last
commit ended. Then it refreshes incrementally and publishes a read-only snapshot for readers.

Rotation (rename away, new file under the old name) drains the renamed file to its end, found by
inode whatever its new name. Truncation in place (copytruncate) starts a new generation at byte
0. Deleted files and reused inodes end their ledger row. Parquet files are read once their size
is stable (or when renamed in from a temporary name).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import queue
import re
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import ingest as ingest_mod
from . import ledger, snapshot
from . import refresh as refresh_mod
from .errors import BadEventFile, InputPathError
from .ingest import ColumnMapping, Segment
from .sqlutil import database_path

ROTATED_GRACE_SECONDS = 5.0  # a renamed-away file still written to is followed this long
REFRESH_DUTY = 3.0  # a background refresh starts no sooner than 3x the last one's duration
# logrotate-style names of older generations: app.csv.1, app.jsonl-20261128
_ROTATED = re.compile(r"^(?P<base>.+)(\.\d{1,4}|-\d{8,14})$")


def rotation_base(name: str) -> str:
    """``app.csv.3`` -> ``app.csv``: an older generation is read like the file it was."""
    m = _ROTATED.match(name)
    return m.group("base") if m else name


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
    # least seconds between two per-batch publishes (0: after every batch); the publish
    # after a refresh is never held back
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


def _head_sha(path: Path, length: int) -> str:
    """Hash of a file's first ``length`` bytes (its identity, with the inode)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(length)).hexdigest()


class Tail:
    """One writer following one directory. ``scan()`` is the whole algorithm; ``run()`` adds
    the observer, the timer, signals and the status line.

    ``rtsql serve`` runs the same loop in a thread: with or without a directory (without one
    it only refreshes and publishes), with the server's ``lock`` around each scan (one writer
    at a time), ``notify()`` after each HTTP ingest, ``on_ingest`` after a scan that loaded
    events and ``on_refresh`` after each refresh (the server reloads its in-memory state)."""

    def __init__(self, con, directory: str | os.PathLike | None,
                 options: TailOptions | None = None,
                 log: Callable[[str], None] = lambda line: None, *, lock=None,
                 on_ingest: Callable[[], None] | None = None,
                 on_refresh: Callable[[], None] | None = None):
        self.con = con
        self.dir = Path(directory).expanduser().resolve() if directory is not None else None
        if self.dir is not None and not self.dir.is_dir():
            raise InputPathError(f"{self.dir} is not a directory")
        self.lock = lock or contextlib.nullcontext()
        self.on_ingest, self.on_refresh = on_ingest, on_refresh
        self._arrived_elsewhere = False
        self._publish_held = False
        self._last_batch_publish = -float("inf")
        self.opt = options or TailOptions()
        ingest_mod.check_event_type(con, self.opt.mapping)
        self.log = log
        self._parquet_sizes: dict[tuple[int, int], int] = {}
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
        self.rotated_grace = ROTATED_GRACE_SECONDS
        self._refresher: threading.Thread | None = None
        self._refresh_finished = threading.Event()
        self._refresh_pending = False
        self._refresh_error: Exception | None = None
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.publisher = (snapshot.Publisher(self.opt.publish, database_path(con))
                          if self.opt.publish else None)
        from . import settings

        self.refresh_interval = settings.get(con, "tail_refresh_seconds")
        self._refresh_started = -float("inf")

    # ------------------------------------------------------------------ which files

    def _matches(self, path: Path) -> bool:
        """A followed name: not temporary, matching a pattern (an older generation such as
        app.csv.1 matches as app.csv does), of a known format."""
        rel = path.relative_to(self.dir)
        if any(ingest_mod.is_temporary_name(part) for part in rel.parts):
            return False
        base = rotation_base(path.name)
        if not any(fnmatch.fnmatch(name, p) for p in self.opt.patterns
                   for name in (path.name, base, str(rel))):
            return False
        try:
            self._format(path)
        except InputPathError:
            return False
        return True

    def _format(self, path: Path):
        return ingest_mod.detect_format(path.with_name(rotation_base(path.name)), self.opt.fmt)

    def _files(self) -> dict[tuple[int, int], Path]:
        """Every regular file below the directory by (device, inode), matching or not: a
        rotated file is found by inode whatever its new name."""
        found = {}
        walker = self.dir.rglob("*") if self.opt.recursive else self.dir.iterdir()
        for path in walker:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if path.is_file():
                found[(st.st_dev, st.st_ino)] = path
        return found

    # ------------------------------------------------------------------ one pass

    def scan(self) -> ScanResult:
        """Bring the database up to date with the directory once."""
        if self.dir is None:
            return ScanResult()
        with self.lock:
            result = self._scan()
            if result.events and self.on_ingest:
                self.on_ingest()
        return result

    def notify(self) -> None:
        """Events arrived by another way (the HTTP server): publish and refresh as after a
        scan that loaded them."""
        self._arrived_elsewhere = True
        self.wake.set()

    def _scan(self) -> ScanResult:
        result = ScanResult()
        files = self._files()
        followed = ledger.followed(self.con)
        claimed = set()
        for row in filter(lambda row: self._owns(row[1]), followed):
            key = (row[4], row[5])
            claimed.add(key)
            self._follow(row, files.get(key), result)
        for key, path in sorted(files.items(), key=lambda kv: str(kv[1])):
            if key not in claimed and self._matches(path):
                self._start(path, key, result)
        self.totals.events += result.events
        self.totals.rejects += result.rejects
        self.totals.files += result.files
        return result

    def _owns(self, path: str) -> bool:
        """A ledger row this tail follows: a file in its folder (or below, when recursive).
        Files that `rtsql ingest` loaded from elsewhere are not this tail's to mark gone."""
        if self.dir is None:
            return False
        p = Path(path)
        return p.is_relative_to(self.dir) if self.opt.recursive else p.parent == self.dir

    def _follow(self, row, path: Path | None, result: ScanResult) -> None:
        file_id, old_path, fmt, compression, dev, ino, head, head_len, offset, line, tail = row
        if path is None:
            self._end(file_id, "gone", f"{old_path} was deleted or moved away at byte {offset}")
            result.warnings.append(f"{old_path}: gone")
            return
        try:
            size = path.stat().st_size
            same = (size >= offset and _head_sha(path, head_len or 0) == head
                    and (tail is None or ingest_mod.sha_before(path, offset) == tail))
        except OSError:
            return  # vanished between listing and reading: the next scan sees it
        if not same:
            reason = ("truncated" if size < offset else "gone")
            self._end(file_id, reason, f"{path}: {'truncated in place (copytruncate), reading it again from byte 0' if reason == 'truncated' else 'its inode now holds another file'}")
            result.warnings.append(f"{path}: {reason}")
            if self._matches(path):
                self._start(path, (dev, ino), result)
            return
        if fmt == "parquet" or compression:
            return  # read once, whole
        renamed_away = not self._matches(path)
        if size > offset:
            seg = Segment(file_id=file_id, start_offset=offset, start_line=line,
                          complete_lines_only=not renamed_away, head_sha256=head,
                          head_len=head_len, identity=(dev, ino))
            self._load(path, fmt, compression, seg, result)
        if renamed_away and time.time() - path.stat().st_mtime > self.rotated_grace:
            self._end(file_id, "drained", f"rotated file {path} read to its end")

    def _start(self, path: Path, key, result: ScanResult) -> None:
        try:
            fmt, compression = self._format(path)
            size = path.stat().st_size
        except (InputPathError, OSError):
            return
        if fmt == "parquet" or compression:
            # whole files: read once the size is stable over two scans
            if self._parquet_sizes.get(key) != size or size == 0:
                self._parquet_sizes[key] = size
                self.wake.set()
                return
            self._parquet_sizes.pop(key, None)
            try:
                res = ingest_mod.ingest_file(self.con, path, fmt=self.opt.fmt,
                                             mapping=self.opt.mapping)
            except BadEventFile as exc:
                result.warnings.append(str(exc))
                return
            if res.file_id:
                ledger.set_status(self.con, res.file_id, "drained")
            result.events += res.ingested
            result.rejects += res.rejected
            result.files += 1
            return
        if size == 0:
            return
        head_len = min(size, ingest_mod.HEAD_BYTES)
        seg = Segment(complete_lines_only=True, head_sha256=_head_sha(path, head_len),
                      head_len=head_len, identity=key)
        copy_of = ledger.repeated_prefix(self.con, seg.head_sha256, size,
                                         lambda offset: ingest_mod.sha_before(path, offset))
        if copy_of:  # e.g. copytruncate's copy: its first part is already in the database
            seg.start_offset, seg.start_line = copy_of
        self._load(path, fmt, compression, seg, result)

    def _load(self, path: Path, fmt: str, compression, seg: Segment, result: ScanResult) -> None:
        try:
            res = ingest_mod.load_segment(self.con, path, fmt, compression, self.opt.mapping, seg)
        except BadEventFile as exc:
            result.warnings.append(str(exc))
            return
        result.events += res.ingested
        result.rejects += res.rejected
        result.files += 1 if (res.ingested or res.rejected) else 0

    def _end(self, file_id: int, status: str, message: str) -> None:
        ledger.set_status(self.con, file_id, status)
        self.log(f"{self.opt.name}: {message}")

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
        return result

    def _refreshed(self) -> None:
        if self.on_refresh:
            self.on_refresh()
        self._publish(full=True)

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
        wait (model freshness p50 25 -> 15 s on ml-latest-small at 1,000 events/s,
        docs/serving.md)."""
        last = self.refresh_seconds["incremental"] if self.refresh_counts["incremental"] \
            else (self.last_refresh[1] if self.last_refresh else 0.0)
        duty = 1.0 if self.opt.refresh_isolated else REFRESH_DUTY
        wait = max(self.refresh_interval, duty * last)
        return time.monotonic() - self._refresh_started >= wait

    def _start_refresh(self) -> None:
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
        observer = self._observer() if self.dir is not None else None
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

    def _observer(self):
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=0.5) if self.opt.poll else Observer()
        observer.schedule(wake_handler(self.wake), str(self.dir), recursive=self.opt.recursive)
        observer.daemon = True
        observer.start()
        return observer


def wake_handler(wake: threading.Event):
    """The watchdog handler: it only wakes the loop (the scan decides what changed)."""
    from watchdog.events import FileSystemEventHandler

    class Wake(FileSystemEventHandler):
        def on_any_event(self, event):
            if event.event_type in ("opened", "closed_no_write") or event.is_directory:
                return
            wake.set()

    return Wake()


def acquire_lock(db_path: str) -> int:
    """One tail or serve per database: a second one gets a clear error (db.py's owner
    lock, which also keeps other processes from opening the file for writing)."""
    from . import db

    return db.acquire_owner_lock(db_path)


def release_lock(db_path: str, fd: int) -> None:
    from . import db

    db.release_owner_lock(db_path, fd)


def follow(db_path: str | os.PathLike, directory: str | os.PathLike, options: TailOptions,
           *, once: bool = False, log: Callable[[str], None] = lambda line: None) -> ScanResult:
    """``rtsql tail``: hold the database (one tail or serve per file), follow ``directory``
    until SIGINT/SIGTERM (or, with ``once``, until caught up); returns the totals."""
    from . import db

    if not Path(directory).expanduser().is_dir():
        raise InputPathError(f"{directory} is not a directory")
    db.validate_db_path(db_path)
    lock = acquire_lock(str(db_path))
    try:
        con = db.connect(db_path)
        try:
            return Tail(con, directory, options, log=log).run(once=once)
        finally:
            con.close()
    finally:
        release_lock(str(db_path), lock)
