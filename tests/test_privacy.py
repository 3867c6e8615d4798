"""Finding 3 of the Reliability issue: `rtsql forget` leaves nothing of the user behind, in
any table, in the database file's bytes, or in a published snapshot (and its base copy)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import rtsql
from rtsql import snapshot
from rtsql.cli import main

from conftest import HEADER, count

SECRET = "zq-secret-user-7781"


def cli(db, *args):
    result = CliRunner().invoke(main, ["--db", str(db), *args])
    assert result.exit_code == 0, result.output
    return result


def occurrences(path: Path) -> int:
    return path.read_bytes().count(SECRET.encode())


def everywhere(db: Path) -> dict[str, int]:
    """Rows of every table whose text mentions SECRET (all columns cast to text)."""
    con = rtsql.connect(db)
    try:
        names = [r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()]
        return {name: count(con, f"select count(*) from {name} t where t::VARCHAR like ?",
                            [f"%{SECRET}%"]) for name in names}
    finally:
        con.close()


@pytest.fixture
def shop(tmp_path, write):
    events = HEADER + "".join(f"u{u},i{(u * 7 + j) % 13},view,2026-10-0{1 + j % 9}T00:00:00,\n"
                              for u in range(40) for j in range(5))
    events += "".join(f"{SECRET},i{j},purchase,2026-10-02T00:00:00,\n" for j in range(6))
    events += f"{SECRET},i1,teleport,2026-10-02T00:00:00,\n"  # rejected: unknown event type
    db = tmp_path / "shop.duckdb"
    cli(db, "ingest", str(write("ev.csv", events)))
    cli(db, "impressions", str(write("shown.csv", "user_id,item_id,ts,strategy\n"
                                     f"{SECRET},i3,2026-10-03T00:00:00,hybrid\n"
                                     f"{SECRET},,2026-10-03T00:00:00,hybrid\n"  # rejected
                                     "u1,i3,2026-10-03T00:00:00,hybrid\n")))
    cli(db, "refresh")
    return db


def test_forget_leaves_no_byte_of_the_user(shop, tmp_path):
    target = tmp_path / "shop.snapshot.duckdb"
    con = rtsql.connect(shop)
    snapshot.publish(con, target)
    con.execute("checkpoint")
    con.close()
    base = target.with_name("." + target.name + ".base")
    seen = everywhere(shop)
    # the id is where the test says it is, so its absence afterwards means something
    assert seen["users"] == 1 and seen["impressions"] == 0 and seen["rejects"] == 2
    assert occurrences(shop) > 0 and occurrences(target) > 0 and occurrences(base) > 0

    result = cli(shop, "forget", SECRET, "--yes")
    assert "snapshots republished: " + str(target) in result.output

    assert {name: n for name, n in everywhere(shop).items() if n} == {}
    assert occurrences(shop) == 0 and occurrences(target) == 0 and occurrences(base) == 0
    con = rtsql.connect(shop)
    try:
        # nothing else was lost: every input row is still an event or a reject
        assert count(con, "select count(*) from events") == 40 * 5
        assert count(con, "select count(*) from rejects") == 2
        assert count(con, "select count(*) from rejects where raw like '%<forgotten>%'") == 2
        assert count(con, "select count(*) from impressions") == 1  # u1's
    finally:
        con.close()


def test_forgotten_keys_are_never_given_again(shop, write):
    con = rtsql.connect(shop)
    key = count(con, "select user_key from users where user_id = ?", [SECRET])
    top = count(con, "select max(user_key) from users")
    con.close()
    cli(shop, "forget", SECRET, "--yes")
    # the forgotten key was the highest one handed out: the next users must not get it
    cli(shop, "ingest", str(write("later.csv", HEADER + "newcomer,i1,view,2026-10-05T00:00:00,\n")))
    con = rtsql.connect(shop)
    try:
        assert key == top
        assert count(con, "select user_key from users where user_id = 'newcomer'") == top + 1
        assert count(con, "select count(*) from impressions where user_key = ?", [key]) == 0
    finally:
        con.close()


def test_a_gone_snapshot_is_dropped_not_recreated(shop, tmp_path):
    target = tmp_path / "gone.duckdb"
    con = rtsql.connect(shop)
    snapshot.publish(con, target)
    con.close()
    target.unlink()
    result = cli(shop, "forget", SECRET, "--yes")
    assert "snapshots republished: none" in result.output
    assert not target.exists()
    assert not target.with_name("." + target.name + ".base").exists()
    con = rtsql.connect(shop)
    try:
        assert count(con, "select count(*) from snapshot_targets") == 0
    finally:
        con.close()


def test_rejects_lose_the_id_only_where_it_stands_whole(tmp_path, write):
    db = tmp_path / "shop.duckdb"
    rows = ["u-4,i1,view,2026-10-01T00:00:00,", "u-4,i1,teleport,2026-10-01T00:00:00,",
            "u-42,i1,teleport,2026-10-01T00:00:00,", "xu-4,i1,teleport,2026-10-01T00:00:00,",
            '"u-4",i2,fly,2026-10-01T00:00:00,']
    cli(db, "ingest", str(write("ev.csv", HEADER + "\n".join(rows) + "\n")))
    cli(db, "forget", "u-4", "--yes")
    con = rtsql.connect(db)
    try:
        raw = sorted(r[0] for r in con.execute("select raw from rejects").fetchall())
    finally:
        con.close()
    assert raw == ['"<forgotten>",i2,fly,2026-10-01T00:00:00,',
                   "<forgotten>,i1,teleport,2026-10-01T00:00:00,",
                   "u-42,i1,teleport,2026-10-01T00:00:00,",
                   "xu-4,i1,teleport,2026-10-01T00:00:00,"]


@pytest.mark.parametrize("order", ["unknown first", "unknown last"])
def test_forgets_committed_together_each_have_their_own_outcome(shop, order):
    """(Reliability issue, item 3.) The server commits the forgets queued meanwhile in one
    group: an unknown id among them fails alone, each known user is forgotten, and the file
    is rewritten, in either order."""
    import time

    from rtsql.errors import UnknownUser
    from rtsql.service import Service

    service = Service(shop).start()
    try:
        with service.lock:  # the writer takes the first job and waits: the rest queue up
            first = service.submit_forget("u1")
            time.sleep(0.3)
            ids = ["nobody-xyz", SECRET, "u2"] if order == "unknown first" \
                else [SECRET, "u2", "nobody-xyz"]
            futures = {user: service.submit_forget(user) for user in ids}
        assert first.result(timeout=120).refresh.mode
        for user, future in futures.items():
            if user == "nobody-xyz":
                with pytest.raises(UnknownUser):
                    future.result(timeout=120)
            else:
                assert future.result(timeout=120).compact_seconds > 0, user
    finally:
        service.stop()
    assert occurrences(shop) == 0
    con = rtsql.connect(shop)
    try:
        assert count(con, "select count(*) from users where user_id in ('u1', 'u2', ?)",
                     [SECRET]) == 0
    finally:
        con.close()


def test_a_person_known_only_from_rejected_rows_can_be_forgotten(tmp_path, write):
    """(Reliability issue, item 4.) Every row of this person was rejected: forget said "no
    user; nothing to forget" and the id stayed in rejects and in the file's bytes."""
    db = tmp_path / "shop.duckdb"
    rows = "".join(f"u{u},i{u % 3},view,2026-10-01T00:00:00,\n" for u in range(5))
    rows += f"{SECRET},i1,teleport,2026-10-01T00:00:00,\n{SECRET},i2,fly,2026-10-01T00:00:00,\n"
    cli(db, "ingest", str(write("ev.csv", HEADER + rows)))
    assert occurrences(db) > 0
    result = cli(db, "forget", SECRET, "--yes")
    assert "only in rejected rows" in result.output, result.output
    assert occurrences(db) == 0
    assert CliRunner().invoke(main, ["--db", str(db), "forget", "nobody", "--yes"]).exit_code == 1


def test_a_forget_whose_rewrite_did_not_finish_finishes_on_the_retry(shop):
    """(Reliability issue, item 4.) The rows were deleted, then the file rewrite failed
    (another process had opened the file); the retry said "no user" and the id's bytes
    stayed. The deletion now leaves a flag that the retry (or serve's start) acts on."""
    import duckdb

    from rtsql import refresh

    con = rtsql.connect(shop)
    refresh.forget(con, SECRET)  # the database part only, as when the rewrite failed
    con.execute("checkpoint")
    con.close()
    assert occurrences(shop) > 0  # deleted rows' bytes are still in the file
    result = cli(shop, "forget", SECRET, "--yes")
    assert "is done now" in result.output, result.output
    assert occurrences(shop) == 0
    raw = duckdb.connect(str(shop), read_only=True)
    try:
        assert raw.execute("select count(*) from model_state where name = "
                           "'file_rewrite_pending'").fetchall() == [(0,)]
    finally:
        raw.close()
    assert CliRunner().invoke(main, ["--db", str(shop), "forget", SECRET, "--yes"]).exit_code == 1


def test_ids_of_any_accepted_length_can_be_forgotten(tmp_path, write):
    """(Reliability issue, item 4.) A 1 MB id is accepted by ingest, but no command line or
    URL can carry it: `forget --stdin` reads ids from standard input."""
    long_id = "L" * (1 << 20)
    db = tmp_path / "shop.duckdb"
    rows = "".join(f"u{u},i{u % 3},view,2026-10-01T00:00:00,\n" for u in range(5))
    cli(db, "ingest", str(write("ev.csv", HEADER + rows + f"{long_id},i1,view,2026-10-01T00:00:00,\n")))
    result = CliRunner().invoke(main, ["--db", str(db), "forget", "--stdin", "--yes"],
                                input=f"{long_id}\nu1\n")
    assert result.exit_code == 0, result.output
    assert "1048576 characters" in result.output and "forgot u1" in result.output
    con = rtsql.connect(db)
    try:
        assert count(con, "select count(*) from users where length(user_id) > 100 "
                          "or user_id = 'u1'") == 0
    finally:
        con.close()
    assert CliRunner().invoke(main, ["--db", str(db), "forget", "--stdin"]).exit_code == 2


def test_health_says_when_the_server_cannot_write_or_refresh(shop):
    """(Reliability issue, item 2.) The follower thread died and POSTs failed, while /health
    still said "ok". health() now lists what stopped, and the route answers 503 with it."""
    from rtsql.service import Service

    service = Service(shop).start()
    try:
        assert service.health()["status"] == "ok" and service.health()["problems"] == []
        service.follower.stop.set()  # the follower's loop ends, as when it died
        service.follower.wake.set()
        service._follow.join(timeout=60)
        health = service.health()
        assert health["status"] == "failing"
        assert any("follower thread stopped" in p for p in health["problems"]), health
        service.lost = "another process opened the file"
        assert "another process opened the file" in service.health()["problems"]
    finally:
        service.lost = None
        service.stop()


GRABBER = """
import sys, time, duckdb, rtsql
from rtsql.errors import DatabaseLocked
deadline = time.monotonic() + float(sys.argv[2])
print("trying", flush=True)
while time.monotonic() < deadline:
    try:
        if sys.argv[3] == "rtsql":
            con = rtsql.connect(sys.argv[1])
        else:
            con = duckdb.connect(sys.argv[1])
    except (DatabaseLocked, duckdb.Error):  # locked, or the voided old file after a swap
        continue
    print("GOT", flush=True)
    con.close()
    break
"""


@pytest.mark.parametrize("client", ["rtsql", "duckdb"])
def test_no_other_process_gets_the_file_while_serve_swaps_in_a_rewritten_one(shop, client):
    """(Reliability issue, item 2.) A cron `rtsql ingest`, or any DuckDB client, retrying
    without pause to open the database for writing while serve forgets users (each forget
    swaps in a rewritten file): it never gets the file, and serve keeps writing. rtsql
    processes also see serve's owner lock; a plain DuckDB client sees only DuckDB's lock,
    which serve holds without a gap (db.compact, and the reopen with ``held``: without it,
    DuckDB's own open dropped the lock for a moment, and this failed about once in four
    runs)."""
    import json
    import subprocess
    import sys

    from rtsql.service import Service

    service = Service(shop).start()
    grabber = subprocess.Popen([sys.executable, "-c", GRABBER, str(shop), "60", client],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert grabber.stdout.readline().strip() == "trying"
        for user in ("u1", "u2", "u3", "u4", "u5", SECRET):
            assert service.submit_forget(user).result(timeout=120).compact_seconds > 0
        body = json.dumps([{"user_id": "u7", "item_id": "i1", "event_type": "view",
                            "ts": "2026-10-05T00:00:00"}]).encode()
        assert service.submit_events(body).result(timeout=60).ingested == 1
        assert service.health()["status"] == "ok"
    finally:
        grabber.kill()
        out, _ = grabber.communicate()
        service.stop()
    assert "GOT" not in out
    assert occurrences(shop) == 0


PROBE = """
import sys, duckdb
try:
    duckdb.connect(sys.argv[1]).close()
except duckdb.Error as exc:
    print("refused", str(exc).splitlines()[0][:60])
else:
    print("opened")
"""


def test_compact_never_leaves_the_file_unlocked_between_its_steps(shop):
    """(Reliability issue, item 2.) db.compact's swap, probed by a plain DuckDB client at each
    step: before the old connections close (the rewritten file already holds the name), and
    after they closed, before the caller reopens. Before the change both probes opened the
    database: compact closed every connection first, copied, and reopened. The old file, if
    a process held it across the rename, is voided (headers zeroed)."""
    import subprocess
    import sys

    from rtsql import db

    def probe() -> str:
        return subprocess.run([sys.executable, "-c", PROBE, str(shop)], capture_output=True,
                              text=True, timeout=120).stdout.strip()

    con = rtsql.connect(shop)
    seen = []
    old = open(shop, "rb")  # the file before the swap, as a process that opened it holds it

    def close_all():
        seen.append(probe())
        con.close()
        seen.append(probe())

    try:
        db.compact(con, shop, close_all)
        assert all(s.startswith("refused") for s in seen), seen
        assert old.read(3 * 4096) == bytes(3 * 4096)  # voided: no process can open it
    finally:
        old.close()
    reopened = rtsql.connect(shop)
    try:
        assert count(reopened, "select count(*) from users") > 0
    finally:
        reopened.close()
