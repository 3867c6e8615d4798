"""serve's journal (rtsql/journal.py): what a crash leaves is loaded once, a torn record is cut
off, committed records leave the file, and the Service loads journaled bodies exactly once,
with the same rejects as any body, across restarts."""

from __future__ import annotations

import os

import pytest

import rtsql
from rtsql import journal
from rtsql.journal import Journal, JournalError

from helpers import small_database


def body(user: str, n: int) -> bytes:
    return b"".join(b'{"user_id": "%s", "item_id": "sku-%d", "event_type": "view", '
                    b'"ts": "2026-11-30T12:00:00"}\n' % (user.encode(), i) for i in range(n))


def test_records_come_back_above_the_committed_position_and_a_torn_one_is_cut(tmp_path):
    path = tmp_path / "db.journal"
    j = Journal(path, applied=0)
    queued = []
    for n in range(1, 5):
        j.append("jsonl", body("u", n), queued.append)
    assert [r.sequence for r in queued] == [1, 2, 3, 4] and j.unapplied() == 4
    j.close()
    size = path.stat().st_size
    with open(path, "ab") as f:  # a crash in the middle of an append: never answered
        f.write(journal._HEADER.pack(5, 1000, 0, 0) + b"{partial")
    again = Journal(path, applied=2)
    assert [(r.sequence, r.body) for r in again.pending] == [(3, body("u", 3)), (4, body("u", 4))]
    assert path.stat().st_size == size  # the torn record is gone
    assert again.append("csv", b"user_id,item_id\n", lambda r: None).sequence == 5
    again.close()
    assert [r.sequence for r in Journal(path, applied=2).pending] == [3, 4, 5]


def test_a_corrupt_record_ends_what_is_read(tmp_path):
    path = tmp_path / "db.journal"
    j = Journal(path, applied=0)
    for n in range(1, 4):
        j.append("jsonl", body("u", n), lambda r: None)
    j.close()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a flipped byte in the last body: its checksum fails
    path.write_bytes(bytes(data))
    assert [r.sequence for r in Journal(path, applied=0).pending] == [1, 2]


def test_committed_records_leave_the_file(tmp_path):
    path = tmp_path / "db.journal"
    j = Journal(path, applied=0)
    for n in range(1, 4):
        j.append("jsonl", body("u", n), lambda r: None)
    j.committed(1)
    assert j.unapplied() == 2 and path.stat().st_size > len(journal.MAGIC)
    j.committed(2, compact=True)  # a forget: the committed records are rewritten away
    assert [r.sequence for r, _ in journal._records(path.read_bytes())] == [3]
    assert j.append("jsonl", body("v", 1), lambda r: None).sequence == 4
    j.committed(4)  # everything committed: the file is emptied
    assert path.read_bytes() == journal.MAGIC and j.unapplied() == 0
    # the sequence continues from the database's position, not from the empty file
    j.close()
    assert Journal(path, applied=4).append("jsonl", b"", lambda r: None).sequence == 5


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    path = tmp_path / "db.journal"
    path.write_bytes(b"user_id,item_id\nu,i\n")
    with pytest.raises(JournalError, match="not an rtsql journal"):
        Journal(path, applied=0)


def test_serve_loads_what_it_answered_before_a_crash_exactly_once(tmp_path):
    """Bodies journaled but not committed (serve killed after answering) are loaded at the
    next start, once: the position commits with their events; rejects keep body and line."""
    from rtsql.service import Service

    db_path = small_database(tmp_path)
    j = Journal(journal.path_for(db_path), applied=0)
    for user in ("j-1", "j-2"):
        j.append("jsonl", body(user, 3) + b'{"user_id": "j-bad"}\n', lambda r: None)
    j.close()

    def counted() -> tuple[list, list, int]:
        con = rtsql.connect(db_path)
        users = con.execute("select u.user_id, count(*) from events join users u "
                            "using (user_key) where u.user_id like 'j-%' "
                            "group by all order by 1").fetchall()
        rejects = con.execute("select source, line, reason from rejects "
                              "where source like 'http:%' order by 1").fetchall()
        position = con.execute("select applied from journal_position").fetchall()[0][0]
        con.close()
        return users, rejects, position

    for _ in range(2):  # the second start finds nothing left to load
        service = Service(db_path).start(warm=False)
        try:
            for sequence in (1, 2):
                assert service.outcome(sequence).result(timeout=120) is not None \
                    or sequence <= service.journal.applied
            assert service.outcome(3) is None
            assert service.state.keys_of("user_id", ["j-1"]) != [None]  # visible to reads
        finally:
            service.stop()
        users, rejects, position = counted()
        assert users == [("j-1", 3), ("j-2", 3)]
        assert rejects == [("http:POST /events#j1", 4, "missing item_id"),
                           ("http:POST /events#j2", 4, "missing item_id")]
        assert position == 2
        assert journal.path_for(db_path).read_bytes() == journal.MAGIC


def test_a_durable_body_is_answered_before_it_is_loaded_and_then_loaded(tmp_path):
    from rtsql.errors import InvalidSetting
    from rtsql.service import Service

    db_path = small_database(tmp_path)
    service = Service(db_path).start(warm=False)
    try:
        with service.lock:  # the writer cannot commit: the body is journaled all the same
            sequence = service.submit_durable(b'[' + body("d-1", 2).replace(b"}\n", b"},")[:-1]
                                              + b"]")
            assert service.journal.unapplied() == 1
            assert not service.outcome(sequence).done()
            assert service.health()["journaled_bodies"] == 1
        result = service.outcome(sequence).result(timeout=120)
        assert (result.ingested, result.rejects) == (2, [])
        assert service.health()["journaled_bodies"] == 0
        with pytest.raises(InvalidSetting):  # a broken array is refused, not journaled
            service.submit_durable(b'[{"user_id": ')
        assert service.journal.last == sequence
    finally:
        service.stop()
    assert os.path.getsize(journal.path_for(db_path)) == len(journal.MAGIC)


def test_the_cli_forget_refuses_while_the_journal_holds_unloaded_bodies(tmp_path):
    """A body serve answered but did not load may hold the user: forgetting around it would
    let the next serve start bring the user back."""
    from click.testing import CliRunner

    from rtsql.cli import main

    db_path = small_database(tmp_path)
    con = rtsql.connect(db_path)
    user = con.execute("select user_id from users limit 1").fetchall()[0][0]
    con.close()
    j = Journal(journal.path_for(db_path), applied=0)
    j.append("jsonl", body(user, 1), lambda r: None)
    j.close()
    result = CliRunner().invoke(main, ["--db", str(db_path), "forget", user, "--yes"])
    assert result.exit_code == 1 and "start rtsql serve once" in result.output, result.output
    con = rtsql.connect(db_path)
    assert con.execute("select count(*) from users where user_id = ?", [user]).fetchall() \
        == [(1,)]
    con.execute("update journal_position set applied = 1")  # as if serve had loaded it
    con.close()
    result = CliRunner().invoke(main, ["--db", str(db_path), "forget", user, "--yes"])
    assert result.exit_code == 0, result.output


def test_a_forget_through_serve_leaves_no_journaled_byte_of_the_user(tmp_path):
    from rtsql.service import Service

    db_path = small_database(tmp_path)
    service = Service(db_path).start(warm=False)
    seen = []  # the journal's bytes after each commit the writer reports to it
    committed = service.journal.committed

    def spy(sequence, compact=False):
        committed(sequence, compact=compact)
        seen.append(journal.path_for(db_path).read_bytes())

    service.journal.committed = spy
    try:
        with service.lock:  # all three queue up: loaded, forgotten, and one still to load
            service.submit_durable(body("forget-me", 2))
            forgotten = service.submit_forget("forget-me")
            later = service.submit_durable(body("keep-me", 2))
        forgotten.result(timeout=120)
        assert service.outcome(later).result(timeout=120).ingested == 2
    finally:
        service.stop()
    assert b"forget-me" in seen[0] and b"keep-me" in seen[0]  # the first load, committed
    assert b"forget-me" not in seen[1] and b"keep-me" in seen[1]  # the forget's rewrite
    assert seen[-1] == journal.MAGIC


def test_status_warns_of_bodies_a_stopped_serve_did_not_load(tmp_path):
    from click.testing import CliRunner

    from rtsql.cli import main

    db_path = small_database(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["--db", str(db_path), "status"])
    assert result.exit_code == 0 and "journal" not in result.output
    j = Journal(journal.path_for(db_path), applied=0)
    j.append("jsonl", body("u", 1), lambda r: None)
    j.close()
    result = runner.invoke(main, ["--db", str(db_path), "status"])
    assert result.exit_code == 0
    assert "holds 1 event bodies" in result.output and "start rtsql serve" in result.output


def test_an_append_waits_while_the_backlog_is_full(tmp_path):
    """A writer that falls behind slows the journal's answers instead of letting the backlog
    (and what its next group commit takes on) grow without bound."""
    import threading

    j = Journal(tmp_path / "db.journal", applied=0)
    for _ in range(2):
        j.append("jsonl", body("u", 1), lambda r: None, backlog=2)
    done = threading.Event()
    waiting = threading.Thread(target=lambda: (
        j.append("jsonl", body("u", 1), lambda r: None, backlog=2), done.set()))
    waiting.start()
    assert not done.wait(0.3) and j.last == 2  # two not committed: the third waits
    j.committed(1)
    assert done.wait(10) and j.last == 3
    waiting.join()


def test_a_failed_load_is_tried_again_and_a_committed_one_never_twice(tmp_path, monkeypatch):
    """Fault injection around the real writer: a load that fails before its commit (the
    database refused it) is tried again until it commits; one that committed and failed after
    (the state's catch-up) is answered with the error and not loaded a second time."""
    from rtsql import ingest
    from rtsql.service import Service

    db_path = small_database(tmp_path)
    service = Service(db_path).start(warm=False)
    real_ingest, real_catch_up = ingest.ingest_bodies, service.state.catch_up
    failures = {"ingest": 1, "catch_up": 0}

    def flaky_ingest(*args, **kwargs):
        if failures["ingest"]:
            failures["ingest"] -= 1
            raise OSError("disk full (injected)")
        return real_ingest(*args, **kwargs)

    def flaky_catch_up(con):
        real_catch_up(con)
        if failures["catch_up"]:
            failures["catch_up"] -= 1
            raise RuntimeError("catch-up failed (injected)")

    monkeypatch.setattr(ingest, "ingest_bodies", flaky_ingest)
    monkeypatch.setattr(service.state, "catch_up", flaky_catch_up)
    try:
        first = service.submit_durable(body("retried", 2))
        assert service.outcome(first).result(timeout=60).ingested == 2
        assert failures["ingest"] == 0 and service.journal_trouble is None
        failures["catch_up"] = 1
        second = service.submit_durable(body("once", 2))
        with pytest.raises(RuntimeError, match="injected"):
            service.outcome(second).result(timeout=60)
        third = service.submit_durable(body("after", 1))
        assert service.outcome(third).result(timeout=60).ingested == 1
    finally:
        service.stop()
    con = rtsql.connect(db_path)
    counts = dict(con.execute("select u.user_id, count(*) from events join users u "
                              "using (user_key) where u.user_id in ('retried', 'once', 'after') "
                              "group by all").fetchall())
    con.close()
    assert counts == {"retried": 2, "once": 2, "after": 1}
