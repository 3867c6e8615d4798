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

import fnmatch
import hashlib
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable

from . import ingest as ingest_mod
from . import ledger
from .errors import BadEventFile, InputPathError
from .follower import Follower, ScanResult, TailOptions
from .ingest import Segment
from .refresh import RefreshResult

ROTATED_GRACE_SECONDS = 5.0  # a renamed-away file still written to is followed this long
# logrotate-style names of older generations: app.csv.1, app.jsonl-20261128
_ROTATED = re.compile(r"^(?P<base>.+)(\.\d{1,4}|-\d{8,14})$")


def rotation_base(name: str) -> str:
    """``app.csv.3`` -> ``app.csv``: an older generation is read like the file it was."""
    m = _ROTATED.match(name)
    return m.group("base") if m else name



def _head_sha(path: Path, length: int) -> str:
    """Hash of a file's first ``length`` bytes (its identity, with the inode)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(length)).hexdigest()


class Tail(Follower):
    """One writer following one directory (rtsql.follower.Follower's loop). ``scan()`` is
    the whole algorithm; ``run()`` adds the observer, the timer, signals and the status line.
    ``rtsql serve --tail DIR`` runs it in the serving process."""

    def __init__(self, con, directory: str | os.PathLike,
                 options: TailOptions | None = None,
                 log: Callable[[str], None] = lambda line: None, *, lock=None,
                 on_ingest: Callable[[], None] | None = None,
                 on_refresh: Callable[[RefreshResult | None], None] | None = None):
        super().__init__(con, options, log, lock=lock, on_ingest=on_ingest,
                         on_refresh=on_refresh)
        self.dir = Path(directory).expanduser().resolve()
        if not self.dir.is_dir():
            raise InputPathError(f"{self.dir} is not a directory")
        ingest_mod.check_event_type(con, self.opt.mapping)
        self._parquet_sizes: dict[tuple[int, int], int] = {}
        self.rotated_grace = ROTATED_GRACE_SECONDS

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
        with self.lock:
            result = self._scan()
            if result.events and self.on_ingest:
                self.on_ingest()
        return result

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
