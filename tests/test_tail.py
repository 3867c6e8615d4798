"""rtsql tail: the scan logic on real file operations (no sleeping), one real observer, the
crash test with SIGKILL, and readers of the published snapshot."""

import random
import signal
import subprocess
import sys
import threading
import time

import duckdb
import pytest

import rtsql
from rtsql import settings, snapshot, tail
from rtsql.errors import DatabaseLocked

from conftest import HEADER, count


def line(n, user="u", item=None, etype="view"):
    return f"{user}{n % 7},{item or f'i{n % 11}'},{etype},2026-10-01T00:00:{n % 60:02d},\n"


@pytest.fixture
def follow(tmp_path, con):
    folder = tmp_path / "in"
    folder.mkdir()
    t = tail.Tail(con, folder, tail.TailOptions(refresh=False, publish=None))
    t.rotated_grace = 0.0
    return folder, t


def events(con):
    return count(con, "select count(*) from events")


def test_partial_last_line_waits_for_its_newline(follow, con):
    folder, t = follow
    f = folder / "a.csv"
    f.write_text(HEADER + line(1) + "u9,i9,vi")
    t.scan()
    assert events(con) == 1
    with open(f, "a") as out:
        out.write("ew,2026-10-01T00:00:00,\n" + line(2))
    t.scan()
    assert events(con) == 3
    assert count(con, "select count(*) from events e join users u using (user_key) "
                      "where u.user_id = 'u9'") == 1
    t.scan()
    assert events(con) == 3  # nothing twice


def test_rotation_drains_the_renamed_file_and_follows_the_new_one(follow, con):
    folder, t = follow
    f = folder / "app.csv"
    f.write_text(HEADER + line(1) + line(2))
    t.scan()
    with open(f, "a") as out:
        out.write(line(3))  # written just before the rotation, not yet scanned
    f.rename(folder / "app.csv.bak")  # no longer matches the formats
    f.write_text(HEADER + line(4))
    t.scan()
    assert events(con) == 4
    assert sorted(r[0] for r in con.execute("select status from source_files").fetchall()) == [
        "active", "drained"]


def test_rotation_while_down_is_drained_by_inode(tmp_path, db_path):
    folder = tmp_path / "in"
    folder.mkdir()
    f = folder / "app.jsonl"
    f.write_text('{"user_id":"a","item_id":"x","event_type":"view","ts":"2026-10-01"}\n')
    con = rtsql.connect(db_path)
    tail.Tail(con, folder, tail.TailOptions(refresh=False)).scan()
    con.close()
    with open(f, "a") as out:
        out.write('{"user_id":"b","item_id":"x","event_type":"view","ts":"2026-10-01"}\n')
    f.rename(folder / "old.log")
    f.write_text('{"user_id":"c","item_id":"x","event_type":"view","ts":"2026-10-01"}\n')
    con = rtsql.connect(db_path)
    t = tail.Tail(con, folder, tail.TailOptions(refresh=False))
    t.rotated_grace = 0.0
    t.scan()
    assert sorted(r[0] for r in con.execute("select user_id from users").fetchall()) == ["a", "b", "c"]
    con.close()


def test_copytruncate_starts_again_at_zero(follow, con):
    folder, t = follow
    f = folder / "app.csv"
    f.write_text(HEADER + line(1) + line(2) + line(3))
    t.scan()
    (folder / "app.1.csv").write_bytes(f.read_bytes())  # the copy matches the pattern too
    with open(f, "r+") as out:
        out.truncate(0)
    t.scan()
    with open(f, "a") as out:
        out.write(HEADER + line(4))
    t.scan()
    assert events(con) == 4  # the copy added nothing, the new generation its one line
    statuses = sorted(r[0] for r in con.execute("select status from source_files").fetchall())
    assert "truncated" in statuses


def test_deleted_and_inode_reused_files(follow, con):
    """A followed file's inode holding another file (deleted, then its inode given to a new
    file) must not be read on from the old offset. The reuse is forced: the same inode gets
    new content under a new name, as a filesystem that reuses inodes would do."""
    folder, t = follow
    a = folder / "a.csv"
    a.write_text(HEADER + line(1) + line(2))
    t.scan()
    inode = a.stat().st_ino
    a.write_text(HEADER + line(5, user="w") + line(6, user="w") + line(7, user="w"))
    b = folder / "b.csv"
    a.rename(b)
    assert b.stat().st_ino == inode
    t.scan()
    # the new file is read from its start (3 events), not from a's old offset (1 event)
    assert events(con) == 5
    assert count(con, "select count(*) from events e join users u using (user_key) "
                      "where u.user_id like 'w%'") == 3
    statuses = con.execute("select path, status from source_files order by file_id").fetchall()
    assert [s for _, s in statuses] == ["gone", "active"] and statuses[1][0].endswith("b.csv")

    b.unlink()
    t.scan()
    assert con.execute("select status from source_files order by file_id").fetchall() == [
        ("gone",), ("gone",)]


def test_moved_in_files_many_small_files_and_rejects(follow, con, tmp_path):
    folder, t = follow
    outside = tmp_path / "outside.csv"
    outside.write_text(HEADER + line(1) + "broken line\n")
    outside.rename(folder / "moved.csv")
    for n in range(50):
        (folder / f"small{n:02d}.csv").write_text(HEADER + line(n))
    (folder / ".hidden.csv").write_text(HEADER + line(1))
    (folder / "upload.csv.part").write_text(HEADER + line(1))
    t.scan()
    assert events(con) == 51
    assert count(con, "select count(*) from rejects") == 1


def test_burst_of_appends(follow, con):
    folder, t = follow
    f = folder / "burst.csv"
    f.write_text(HEADER)
    written = 0
    for _ in range(5):
        with open(f, "a") as out:
            for _ in range(200):
                out.write(line(written))
                written += 1
        t.scan()
    assert events(con) == written


def test_parquet_read_once_complete(follow, con):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, t = follow
    tmp = folder / "batch.parquet.tmp"
    pq.write_table(pa.table({"user_id": ["a"], "item_id": ["x"], "event_type": ["view"],
                             "ts": ["2026-10-01"]}), tmp)
    t.scan()
    assert events(con) == 0  # temporary name
    tmp.rename(folder / "batch.parquet")
    t.scan()  # first sight: size noted
    t.scan()  # stable: read
    t.scan()
    assert events(con) == 1


def test_second_tail_is_refused(db_path):
    fd = tail.acquire_lock(str(db_path))
    try:
        with pytest.raises(DatabaseLocked, match="another `rtsql tail`"):
            tail.acquire_lock(str(db_path))
    finally:
        tail.release_lock(str(db_path), fd)


def test_an_owned_database_refuses_other_writers_even_between_its_owners_connections(db_path):
    """(Reliability issue, item 2.) serve closes its DuckDB connections while forget swaps
    in the rewritten file; DuckDB's lock alone let another process (a cron `rtsql ingest`)
    open the file for writing in that moment and keep it. The owner lock (serve's, tail's)
    refuses other processes' writers for as long as the owner runs; readers still open."""
    rtsql.connect(db_path).close()
    owner = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rtsql import tail; tail.acquire_lock(sys.argv[1]); "
        "print('owned', flush=True); time.sleep(60)"), str(db_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "owned"  # and no DuckDB connection open
        with pytest.raises(DatabaseLocked, match="owned by a running `rtsql serve`"):
            rtsql.connect(db_path)
        rtsql.connect(db_path, read_only=True).close()
    finally:
        owner.kill()
        owner.wait()
    rtsql.connect(db_path).close()  # the owner gone, writers open again


@pytest.mark.slow
def test_real_observer_picks_up_an_append(tmp_path, db_path):
    folder = tmp_path / "in"
    folder.mkdir()
    con = rtsql.connect(db_path)
    publish = tmp_path / "snap.duckdb"
    t = tail.Tail(con, folder, tail.TailOptions(publish=publish, rescan_seconds=30,
                                                status_seconds=999))
    runner = threading.Thread(target=t.run)
    runner.start()
    try:
        time.sleep(0.5)
        (folder / "live.csv").write_text(HEADER + line(1) + line(2))
        deadline = time.time() + 10
        while time.time() < deadline and t.totals.events < 2:
            time.sleep(0.05)
        assert t.totals.events == 2  # found by the observer, long before the 30 s rescan
    finally:
        t.stop.set()
        t.wake.set()
        runner.join()
        con.close()
    reader = duckdb.connect(str(publish), read_only=True)
    assert reader.execute("select count(*) from recommend('u1', 5)").fetchall()[0][0] > 0
    reader.close()


WRITER = r"""
import os, random, sys, time
folder, n_lines, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
header = "user_id,item_id,event_type,ts,value\n"
path = os.path.join(folder, "app.csv")
with open(path, "a") as f:
    f.write(header)
generation = 0
for n in range(n_lines):
    text = f"u{n % 13},i{rng.randrange(40)},view,2026-10-01T00:00:00,{n}\n"
    if rng.random() < 0.03:
        text = f"bad line {n}\n"
    with open(path, "a") as f:
        cut = rng.randrange(len(text))
        f.write(text[:cut]); f.flush()
        f.write(text[cut:])
    r = rng.random()
    if r < 0.01:  # rotate: rename away, new file under the old name
        generation += 1
        os.rename(path, os.path.join(folder, f"app.csv.{generation}"))
        with open(path, "w") as f:
            f.write(header)
    time.sleep(0.0005)
"""


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    """A writer appends (with partial writes), rotates; tail is killed with SIGKILL 20+
    times at random moments and restarted; finally events + rejects = lines written."""
    folder = tmp_path / "in"
    folder.mkdir()
    db = tmp_path / "crash.duckdb"
    n_lines = 3000
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(n_lines), "7"])
    rng = random.Random(3)
    kills = 0
    cmd = [sys.executable, "-m", "rtsql.cli", "--db", str(db), "tail", str(folder),
           "--no-refresh", "--publish", str(tmp_path / "snap.duckdb")]
    try:
        while writer.poll() is None or kills < 20:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    cwd=tmp_path)
            time.sleep(rng.uniform(0.5, 2.0))  # start-up takes about a second
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            if kills > 60:
                break
    finally:
        writer.wait()
    final = subprocess.run(cmd + ["--once"], capture_output=True, text=True, cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-2000:]
    # rotated files were drained by inode; files renamed away are read to their end
    con = duckdb.connect(str(db), read_only=True)
    dups = con.execute("select value, list(file_id), list(line) from events group by value "
                       "having count(*) > 1 limit 5").fetchall()
    files = con.execute("select file_id, path, status, end_offset, head_len from source_files "
                        "order by file_id").fetchall()
    ingested = con.execute("select count(*) from events").fetchall()[0][0]
    rejected = con.execute("select count(*) from rejects").fetchall()[0][0]
    distinct = con.execute("select count(distinct value) from events").fetchall()[0][0]
    con.close()
    assert kills >= 20
    if ingested != distinct:
        (tmp_path / "crash_diag.txt").write_text("\n".join(map(str, dups + files)))
    assert ingested == distinct  # every line at most once (value = its number)
    assert ingested + rejected == n_lines


@pytest.mark.slow
def test_snapshot_readers_never_see_a_half_written_state(tmp_path, db_path, write):
    con = rtsql.connect(db_path)
    publish = tmp_path / "snap.duckdb"
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text(HEADER + "".join(line(n) for n in range(100)))
    t = tail.Tail(con, folder, tail.TailOptions(publish=publish))
    t.batch()
    errors, reads = [], [0]
    stop = threading.Event()

    def reader():
        code = ("import duckdb, sys\n"
                f"c = duckdb.connect({str(publish)!r}, read_only=True)\n"
                "n = c.execute(\"select count(*) from recommend('visitor', 5)\").fetchall()[0][0]\n"
                "assert n == 5, n\n")
        while not stop.is_set():
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  cwd=tmp_path)
            if proc.returncode:
                errors.append(proc.stderr[-500:])
            reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        for n in range(15):
            with open(folder / "a.csv", "a") as out:
                out.write("".join(line(1000 + n * 10 + k) for k in range(10)))
            t.batch()
    finally:
        stop.set()
        for th in threads:
            th.join()
        con.close()
    assert reads[0] > 0 and not errors, errors[:2]


def test_handler_wakes_on_changes_only():
    from watchdog.events import (
        DirCreatedEvent,
        FileClosedNoWriteEvent,
        FileCreatedEvent,
        FileModifiedEvent,
        FileMovedEvent,
        FileOpenedEvent,
    )

    wake = threading.Event()
    handler = tail.wake_handler(wake)
    for quiet in (FileOpenedEvent("/d/a.csv"), FileClosedNoWriteEvent("/d/a.csv"),
                  DirCreatedEvent("/d/sub")):
        handler.dispatch(quiet)
        assert not wake.is_set()
    for change in (FileCreatedEvent("/d/a.csv"), FileModifiedEvent("/d/a.csv"),
                   FileMovedEvent("/d/a.csv", "/d/a.csv.1")):
        handler.dispatch(change)
        assert wake.is_set()
        wake.clear()


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_readers_use_the_snapshot(tmp_path):
    from click.testing import CliRunner

    from rtsql.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text(HEADER + "".join(line(n) for n in range(50)))
    db = tmp_path / "live.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "rtsql.cli", "--db", str(db), "tail",
                             str(folder), "--poll"], stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    snap = snapshot.default_path(db)
    deadline = time.time() + 30
    while not snap.exists() and time.time() < deadline:
        time.sleep(0.1)
    with open(folder / "a.csv", "a") as out:
        out.write(line(1, user="late"))
    res = CliRunner().invoke(main, ["--db", str(db), "recommend", "visitor", "-k", "3",
                                    "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert "answered from the snapshot" in res.stderr
    assert len(res.stdout.splitlines()) == 4
    time.sleep(1.5)  # the polling observer notices the append
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select count(*) from events").fetchall()[0][0] == 51
    con.close()


def test_background_refreshes_are_paced_by_the_last_incremental_one(tmp_path):
    """A background refresh waits tail_refresh_seconds and REFRESH_DUTY times the last
    incremental refresh's duration; a rare full rebuild (minutes of EASE, say) does not hold
    the following events out of the lists for three times as long."""
    con = rtsql.connect(tmp_path / "d.duckdb")
    t = tail.Tail(con, tmp_path, tail.TailOptions(publish=None))
    t.refresh_interval = 1.0

    class Done:
        def __init__(self, mode, seconds):
            self.mode, self.seconds = mode, seconds

    t._record_refresh(Done("full", 30.0), time.time())  # no incremental one yet: 3 x 30 s
    t._refresh_started = time.monotonic() - 10.0
    assert not t._refresh_due()
    t._record_refresh(Done("incremental", 2.0), time.time())
    t._record_refresh(Done("full", 30.0), time.time())
    assert t._refresh_due()  # 10 s since the start >= 3 x 2 s
    t._refresh_started = time.monotonic() - 5.0
    assert not t._refresh_due()
    t.opt.refresh_isolated = True  # serve: the heavy part in the niced worker process
    assert t._refresh_due()  # 5 s since the start >= 1 x 2 s
    t._refresh_started = time.monotonic() - 1.5
    assert not t._refresh_due()  # tail_refresh_seconds (1 s) passed, the last one's 2 s not
    con.close()


def test_refreshes_that_follow_each_other_publish_their_lists_at_most_every_interval(
        tmp_path, con):
    """Under a steady stream (events arrive while each refresh runs, so another one follows),
    a refresh's lists wait for ``publish_interval``; once no refresh follows, the last one's
    lists are published at once."""
    folder = tmp_path / "in"
    folder.mkdir()
    snap = tmp_path / "snap.duckdb"
    settings.set_value(con, "tail_refresh_seconds", "0")
    t = tail.Tail(con, folder, tail.TailOptions(publish=snap, publish_interval=3600))

    files = iter(range(1, 10**6))

    def arrive():
        n = next(files)
        (folder / f"f{n}.csv").write_text(HEADER + "".join(line(n * 10 + i) for i in range(5)))

    def loop_until(done, stream):  # passes of the loop, as run() makes them
        deadline = time.time() + 60
        while not done() and time.time() < deadline:
            if stream:
                arrive()
            t.batch(background_refresh=True)
            time.sleep(0.02)
        assert done()

    def watermark(database):
        return count(database, "select coalesce(max(value::BIGINT), 0) from model_state "
                               "where name = 'watermark'")

    def published():
        reader = duckdb.connect(str(snap), read_only=True)
        try:
            return watermark(reader)
        finally:
            reader.close()

    # a steady stream: events arrive while each refresh runs, so another one follows
    loop_until(lambda: snap.exists() and published() > 0, stream=True)
    first = published()  # the first refresh's lists: the first publish of lists goes out
    loop_until(lambda: sum(t.refresh_counts.values()) >= 3, stream=True)
    assert published() == first < watermark(con)  # the later ones wait for the interval
    # the stream stops: once no refresh follows, the last one's lists go out at once
    loop_until(lambda: published() == watermark(con) == count(
        con, "select max(event_id) from events"), stream=False)
