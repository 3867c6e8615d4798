"""`rtsql serve` as a real process on a free loopback port, called over HTTP: every route,
answers equal to the SQL macros, auth on and off, bad input, read-your-writes, durability
after kill -9, and a clean SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import rtsql
from rtsql import catalog, ingest, recommend, refresh, snapshot

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parents[1] / "sample_events"
SAMPLE_EVENTS = 6000  # at least: the sample holds 6,001 valid events, and a test may forget


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_database(path: Path) -> Path:
    """The sample set, half refreshed and half pending, with its catalog."""
    con = rtsql.connect(path)
    files = sorted((SAMPLE / "events").iterdir())
    ingest.ingest(con, files[:2])
    catalog.load_items(con, SAMPLE / "items.csv")
    refresh.refresh(con)
    ingest.ingest(con, files[2:])
    con.close()
    return path


class Server:
    def __init__(self, db_path: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.db_path = db_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtsql.cli", "--db", str(db_path), "serve", "--port",
             str(self.port), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.call("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {self.proc.communicate()}")
            time.sleep(0.1)

    def call(self, method: str, path: str, body: bytes | None = None, headers=None):
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def json(self, method: str, path: str, body=None, headers=None):
        status, data = self.call(method, path, body, headers)
        return status, json.loads(data)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(build_database(tmp_path_factory.mktemp("serve") / "shop.duckdb"))
    yield server
    if server.proc.poll() is None:
        server.stop()


def query(**params) -> str:
    return urllib.parse.urlencode(params, doseq=True)


def test_reads_equal_the_sql_macros_of_the_snapshot(server):
    """The published snapshot holds the same state; its macros give the same rows."""
    con = rtsql.connect(snapshot.default_path(server.db_path), read_only=True)
    users = [r[0] for r in con.execute("select user_id from users order by hash(user_id) "
                                       "limit 8").fetchall()] + ["nobody"]
    for user in users:
        for options in ({}, {"strategy": "user", "k": 4}, {"category": "audio", "k": 5},
                        {"exclude": ["sku-220", "sku-113"], "strategy": "content"}):
            status, got = server.json("GET", f"/recommend/{user}?{query(**options)}")
            assert status == 200, got
            want = recommend.recommend(con, user, options.pop("k", 10), **options)
            assert [(r["rank"], r["item_id"], r["reason"]) for r in got["items"]] == \
                [(r[0], r[1], r[3]) for r in want.rows], (user, options)
            assert all(abs(r["score"] - w[2]) <= 1e-9 for r, w in zip(got["items"], want.rows))
    status, got = server.json("GET", "/recommend-for-items?" + query(item=["sku-1", "sku-7"],
                                                                       k=5))
    assert status == 200
    assert [r["item_id"] for r in got["items"]] == [
        r[1] for r in recommend.recommend_for_items(con, ["sku-1", "sku-7"], 5).rows]
    status, got = server.json("GET", "/similar-items/sku-1?k=4&by=content")
    assert [r["item_id"] for r in got["items"]] == [
        r[1] for r in recommend.similar_items(con, "sku-1", 4, "content").rows]
    status, got = server.json("GET", f"/similar-users/{users[0]}?k=3")
    assert [r["user_id"] for r in got["users"]] == [
        r[1] for r in recommend.similar_users(con, users[0], 3).rows]
    status, got = server.json("GET", "/trending?k=3")
    assert [r["item_id"] for r in got["items"]] == [r[1] for r in recommend.trending(con, 3).rows]
    con.close()


def test_the_fast_path_answers_as_the_route_does(server):
    """GET /recommend/{user_id} is answered before FastAPI when its parameters are plainly
    valid; an unknown parameter (``_``) sends the same request through the FastAPI route. Both
    give the same bytes (bad parameters: test_bad_input_gets_a_4xx_naming_the_field)."""
    for options in ({}, {"k": 3}, {"strategy": "item", "category": "audio"},
                    {"exclude": ["sku-220", "sku-113"], "variant": "auto"}):
        for user in ("user-1", "user-17", "nobody", "a%20b"):
            fast = server.call("GET", f"/recommend/{user}?{query(**options)}")
            routed = server.call("GET", f"/recommend/{user}?{query(**options, _=1)}")
            assert fast == routed and fast[0] == 200, (user, options)
    _, metrics = server.call("GET", "/metrics")
    assert b'route="/recommend/{user_id}",status="200"' in metrics


def test_read_your_writes_and_rejects(server):
    events = [{"user_id": "fresh-user", "item_id": "sku-7", "event_type": "purchase",
               "ts": "2026-11-30T10:00:00"},
              {"user_id": "fresh-user", "item_id": "sku-9", "event_type": "teleport",
               "ts": "2026-11-30T10:00:00"},
              {"user_id": "fresh-user"}]
    status, answer = server.json("POST", "/events", json.dumps(events).encode())
    assert status == 200, answer
    assert answer["accepted"] == 1 and answer["rejected"] == 2
    assert [r["line"] for r in answer["rejects"]] == [2, 3]
    assert "unknown event type 'teleport'" in answer["rejects"][0]["reason"]
    # the very next read reflects the event: history at query time, before any refresh
    status, got = server.json("GET", "/recommend/fresh-user?k=3&strategy=item")
    assert got["items"][0]["reason"].startswith("item-cf: because you bought")
    # JSON lines work too, and a blank line is skipped, not rejected
    body = b'{"user_id":"fresh-user","item_id":"sku-8","event_type":"view","ts":1790000000}\n\n'
    status, answer = server.json("POST", "/events", body,
                                 {"Content-Type": "application/x-ndjson"})
    assert (status, answer["accepted"], answer["rejected"]) == (200, 1, 0)
    status, answer = server.json("POST", "/impressions", json.dumps(
        [{"user_id": "fresh-user", "item_id": "sku-7", "ts": "2026-11-30T10:00:01",
          "strategy": "hybrid"}, {"user_id": "fresh-user"}]).encode())
    assert answer == {"loaded": 1, "rejected": 1}


def test_a_durable_post_is_answered_once_journaled_and_its_outcome_follows(server):
    events = [{"user_id": "journaled-user", "item_id": "sku-7", "event_type": "purchase",
               "ts": "2026-11-30T10:00:00"}, {"user_id": "journaled-user"}]
    status, answer = server.json("POST", "/events?wait=durable", json.dumps(events).encode())
    assert status == 202 and answer["visible"] is False, answer
    sequence = answer["sequence"]
    status, got = server.json("GET", f"/events/{sequence}?timeout=60")
    assert status == 200, got
    assert (got["visible"], got["accepted"], got["rejected"]) == (True, 1, 1)
    assert got["rejects"] == [{"line": 2, "reason": "missing item_id"}]
    # once the outcome says visible, reads see the event
    status, got = server.json("GET", "/recommend/journaled-user?k=3&strategy=item")
    assert got["items"][0]["reason"].startswith("item-cf: because you bought")
    assert server.json("GET", f"/events/{sequence + 1000}")[0] == 404
    status, got = server.json("POST", "/events?wait=later", json.dumps(events).encode())
    assert status == 422 and got["field"] == "wait"
    status, got = server.json("POST", "/events?wait=durable", b'[{"user_id": ')
    assert status == 400, got  # a broken array is refused at once, not journaled
    assert server.json("GET", "/health")[1]["journaled_bodies"] == 0


def test_bad_input_gets_a_4xx_naming_the_field(server):
    for path, status, field in [
            ("/recommend/u?k=0", 422, "k"), ("/recommend/u?k=abc", 422, "k"),
            (f"/recommend/u?k={10 ** 20}", 422, "k"), ("/recommend/u?strategy=magic", 422,
                                                       "strategy"),
            ("/similar-items/sku-1?by=vibes", 422, "by"), ("/recommend-for-items", 422, "item")]:
        got_status, got = server.json("GET", path)
        assert (got_status, got.get("field")) == (status, field), (path, got)
    status, got = server.json("GET", "/recommend/u?variant=nope")
    assert status == 400 and "unknown variant 'nope'" in got["error"]
    assert server.json("GET", "/similar-items/no-such-item")[0] == 404
    assert server.json("GET", "/similar-users/no-such-user")[0] == 404
    status, got = server.json("POST", "/events", b'[{"user_id": "a"')
    assert status == 400 and got["field"] == "body"
    # (Reliability issue, item 7) 100,000 levels of nesting: was a 500 and a traceback
    status, got = server.json("POST", "/events", b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and got["field"] == "body" and "deep" in got["error"], got
    status, got = server.json("POST", "/events", b'[{"user_id": ' + b"[" * 100_000
                              + b"]" * 100_000 + b"}]")
    assert status == 400 and got["field"] == "body", got
    status, got = server.json("POST", "/impressions", b'{"not": "a list"}')
    assert status == 400 and got["field"] == "body"
    # a body over the limit is refused from its Content-Length, before it is read
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest("POST", "/events")
    connection.putheader("Content-Length", str(17 << 20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["field"] == "body"
    connection.close()
    assert b"Traceback" not in server.call("GET", "/recommend/u?k=-1")[1]


def metric(text: bytes, name: str) -> float:
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_say_how_fresh_the_model_is_and_what_refreshes_cost(server):
    """A write makes serve's follower refresh in the background (incremental: the database
    was refreshed before), and /metrics then gives that refresh's kind and duration and the
    model's age (seconds since the refresh began: its lists hold every event committed
    before then)."""
    deadline = time.monotonic() + 120
    while True:  # the catch-up of the database's pending events first (a full refresh: the
        # pending half moves EASE's lambda unit), which would otherwise fold this write in
        text = server.call("GET", "/metrics")[1]
        if metric(text, 'rtsql_refreshes{kind="full"}') + \
                metric(text, 'rtsql_refreshes{kind="incremental"}') >= 1 \
                and metric(text, "rtsql_refresh_lag_seconds") == 0:
            break
        assert time.monotonic() < deadline, text.decode()
        time.sleep(0.2)
    done = metric(text, 'rtsql_refreshes{kind="incremental"}')
    status, _ = server.json("POST", "/events", json.dumps([{
        "user_id": "u-metrics", "item_id": "sku-3", "event_type": "view",
        "ts": "2026-11-30T11:00:00"}]).encode())
    assert status == 200
    deadline = time.monotonic() + 60
    while True:
        text = server.call("GET", "/metrics")[1]
        # folded in, and no write waits for another refresh (which would reset the age)
        if metric(text, 'rtsql_refreshes{kind="incremental"}') > done \
                and metric(text, "rtsql_refresh_lag_seconds") == 0:
            break
        assert time.monotonic() < deadline, text.decode()
        time.sleep(0.2)
    assert metric(text, 'rtsql_last_refresh_seconds{kind="incremental"}') > 0
    age = metric(text, "rtsql_model_age_seconds")
    assert 0 < age < 60
    time.sleep(1.0)
    assert metric(server.call("GET", "/metrics")[1], "rtsql_model_age_seconds") >= age + 0.9


def test_health_metrics_docs_and_forget(server):
    status, health = server.json("GET", "/health")
    assert status == 200 and health["status"] == "ok"
    status, text = server.call("GET", "/metrics")
    assert status == 200
    assert b'rtsql_http_requests_total{route="/recommend/{user_id}"' in text
    assert b"rtsql_events_ingested" in text and b"rtsql_refresh_lag_seconds" in text
    assert server.call("GET", "/docs")[0] == 200
    assert b"/recommend/{user_id}" in server.call("GET", "/openapi.json")[1]
    leaving = "zq-leaving-9931"
    server.json("POST", "/events", json.dumps([{"user_id": leaving, "item_id": "sku-3",
                                                "event_type": "view",
                                                "ts": "2026-11-30T11:00:00"}]).encode())
    server.json("POST", "/events", f'{{"user_id": "{leaving}", "item_id": "sku-3", '
                                   '"event_type": "warp", "ts": "2026-11-30"}'.encode())
    server.json("POST", "/impressions", json.dumps([{"user_id": leaving, "item_id": "sku-4",
                                                     "ts": "2026-11-30", "strategy": "hybrid"}]
                                                   ).encode())
    status, got = server.json("POST", f"/users/{leaving}/forget")
    assert status == 200, got
    snap = snapshot.default_path(server.db_path)
    assert got["snapshots_republished"] == [str(snap.resolve())]
    # no byte of the user in the live file or the snapshot, and the server goes on serving
    wal = Path(str(server.db_path) + ".wal")  # the events were there before any checkpoint
    for path in (server.db_path, wal, snap):
        assert not path.exists() or leaving.encode() not in path.read_bytes(), path
    assert server.json("POST", f"/users/{leaving}/forget")[0] == 404
    status, got = server.json("GET", f"/recommend/{leaving}?k=2")
    assert all(r["reason"].startswith(("trending", "popular")) for r in got["items"])
    status, got = server.json("POST", "/events", b'{"user_id": "after", "item_id": "sku-3", '
                                                 b'"event_type": "view", "ts": "2026-11-30"}')
    assert status == 200 and got["accepted"] == 1


def test_token_guards_every_route_but_health(tmp_path):
    server = Server(build_database(tmp_path / "t.duckdb"), env={"RTSQL_TOKEN": "s3cret"})
    try:
        assert server.call("GET", "/health")[0] == 200
        for path in ("/recommend/u", "/metrics", "/trending"):
            status, body = server.json("GET", path)
            assert status == 401 and body["field"] == "Authorization"
        assert server.call("GET", "/trending", headers={"Authorization": "Bearer nope"})[0] == 401
        assert server.call("GET", "/trending",
                           headers={"Authorization": "Bearer s3cret"})[0] == 200
    finally:
        assert server.stop()[0] == 0


def test_sigterm_exits_0_and_an_answered_post_survives_kill_9(tmp_path):
    db_path = build_database(tmp_path / "k.duckdb")
    server = Server(db_path)
    status, _ = server.json("POST", "/events", json.dumps(
        [{"user_id": "durable", "item_id": "sku-1", "event_type": "cart",
          "ts": "2026-11-30T12:00:00"}]).encode())
    assert status == 200
    status, _ = server.json("POST", "/events?wait=durable", json.dumps(
        [{"user_id": "journaled", "item_id": "sku-1", "event_type": "cart",
          "ts": "2026-11-30T12:00:00"}]).encode())
    assert status == 202
    server.proc.kill()  # kill -9 right after the answers
    server.proc.communicate(timeout=60)  # its worker process must not hold the pipes open

    def count(user_id: str) -> int:
        con = rtsql.connect(db_path)
        found = con.execute("select count(*) from events e join users u using (user_key) "
                            "where u.user_id = ?", [user_id]).fetchall()[0][0]
        con.close()
        return found

    assert count("durable") == 1  # committed before the answer
    server = Server(db_path)  # a journaled body is committed by now or loaded at the start
    code, err = server.stop()
    assert code == 0, err
    assert "rtsql serve: stopped" in err and "Traceback" not in err
    assert count("journaled") == 1


def test_cli_reads_from_the_snapshot_while_serve_runs(server):
    proc = subprocess.run([sys.executable, "-m", "rtsql.cli", "--db", str(server.db_path),
                           "recommend", "user-43", "-k", "2", "--format", "json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "snapshot" in proc.stderr and len(json.loads(proc.stdout)) == 2


def test_sql_never_reaches_python_objects():
    """DuckDB's replacement scans are off on rtsql's connections (the server's too): a name
    that is not a table is an error, not a Python variable of the caller."""
    import duckdb

    from rtsql import db

    con = db.connect_memory()
    secret = {"token": ["s3cret"]}  # noqa: F841 (a local the query must not see)
    with pytest.raises(duckdb.CatalogException):
        con.execute("select * from secret")
    con.close()


def test_an_address_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "rtsql.cli", "--db",
                               str(tmp_path / "x.duckdb"), "serve", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.duckdb").exists()  # nothing opened


def test_serve_warns_off_loopback_without_a_token_and_says_ready_only_when_it_is(tmp_path):
    """(Reliability issue, item 7.) An empty token used to turn authentication off silently;
    a non-loopback address without a token gave no warning; the "listening" banner came
    before the server refused to start (here: the database is another process's)."""
    db = build_database(tmp_path / "w.duckdb")
    empty = subprocess.run([sys.executable, "-m", "rtsql.cli", "--db", str(db), "serve",
                            "--token", ""], capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "token is empty" in empty.stderr, empty.stderr
    holder = rtsql.connect(db)  # this process owns the file for writing
    try:
        refused = subprocess.run(
            [sys.executable, "-m", "rtsql.cli", "--db", str(db), "serve", "--host", "0.0.0.0",
             "--port", str(free_port())], capture_output=True, text=True, timeout=120,
            env={k: v for k, v in os.environ.items() if k != "RTSQL_TOKEN"})
    finally:
        holder.close()
    assert refused.returncode != 0
    assert "without a token" in refused.stderr, refused.stderr
    assert "rtsql serve: http://" not in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_ids_in_paths_and_arguments_lose_surrounding_whitespace_as_ingest_does(server):
    """(Reliability issue, item 7.) Ingest trims ids, but `GET /recommend/%20user-43%20` was
    a cold start (and `rtsql recommend ' user-43 '` too)."""
    plain = server.json("GET", "/recommend/user-43?k=5&strategy=item")[1]["items"]
    assert plain
    assert server.json("GET", "/recommend/%20user-43%09?k=5&strategy=item")[1]["items"] == plain
    assert server.json("GET", "/similar-users/%20user-43%20")[0] == 200
    cli = [sys.executable, "-m", "rtsql.cli", "--db", str(server.db_path)]
    listed = [subprocess.run(cli + ["recommend", user, "-k", "5", "--strategy", "item",
                                    "--format", "json"], capture_output=True, text=True,
                             timeout=120).stdout for user in ("user-43", " user-43\t")]
    assert listed[0] == listed[1] and json.loads(listed[0])


def test_status_answers_from_the_snapshot_while_serve_holds_the_database(server):
    """(Reliability issue, item 8.) `rtsql status` refused while serve ran, although
    `recommend` answered from the snapshot. Its event count: every event of the sample
    (folded in or pending when the snapshot was published), at most the server's."""
    result = subprocess.run([sys.executable, "-m", "rtsql.cli", "--db", str(server.db_path),
                             "status", "--format", "json"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "answered from the snapshot" in result.stderr
    counts = {row["what"]: row["count"] for row in json.loads(result.stdout)}
    health = server.json("GET", "/health")[1]
    assert SAMPLE_EVENTS <= counts["events"] <= health["last_event_id"]
    assert 0 < counts["users"] <= health["users"] and counts["rejects"] is None


def test_serve_answers_503_warming_up_while_its_scorer_compiles(tmp_path):
    """(Reliability issue, item 8.) The first serve after an install compiled the scorer for
    about 25 s before answering anything (connections hung, the terminal said nothing). Now
    it listens at once, says it is loading the scorer, answers 503 "warming up" (with
    Retry-After) meanwhile, then serves. An empty numba cache makes it compile, as after an
    install."""
    db = build_database(tmp_path / "w.duckdb")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtsql.cli", "--db", str(db), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")})
    seen, deadline = [], time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60) as r:
                    seen.append((r.status, json.loads(r.read())["status"]))
                    break
            except urllib.error.HTTPError as error:
                seen.append((error.code, json.loads(error.read())["status"]))
                assert error.headers["Retry-After"]
            except OSError:
                pass
            time.sleep(0.05)
        assert (503, "warming up") in seen and seen[-1] == (200, "ok"), seen
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert "loading the compiled scorer" in err and "rtsql serve: ready" in err, err
    assert proc.returncode == 0


def test_forget_takes_the_id_in_the_body_for_ids_too_long_for_a_url(server):
    """(Reliability issue, item 4.) A 1 MB id is accepted by POST /events, but no URL can
    carry it to /users/{id}/forget: POST /forget takes it in the body."""
    long_id = "L" * (1 << 20)
    status, got = server.json("POST", "/events", json.dumps([{
        "user_id": long_id, "item_id": "sku-3", "event_type": "view",
        "ts": "2026-11-30T11:00:00"}]).encode())
    assert status == 200 and got["accepted"] == 1, got
    status, got = server.json("POST", "/forget", json.dumps({"user_id": long_id}).encode())
    assert status == 200 and got["forgotten"] == long_id
    assert server.json("POST", "/forget", json.dumps({"user_id": long_id}).encode())[0] == 404
    status, got = server.json("POST", "/forget", b'{"user": 1}')
    assert status == 400 and got["field"] == "user_id"


def test_serves_status_line_counts_the_events_it_was_posted(tmp_path):
    """serve's status line (the follower's) counts the events and rejects of HTTP bodies, not
    only a followed folder's: an operator reading the log sees the writes arrive."""
    from rtsql.service import Service

    service = Service(build_database(tmp_path / "shop.duckdb")).start(warm=False)
    try:
        before = service.follower.totals.events
        body = (b'{"user_id": "u-status", "item_id": "sku-1", "event_type": "view", '
                b'"ts": "2026-11-30T12:00:00"}\n{"user_id": "u-status"}\n')
        result = service.submit_events(body).result(timeout=120)
        assert result.ingested == 1 and len(result.rejects) == 1
        assert f"{before + 1} events, 1 rejects" in service.follower.status_line(0.0)
    finally:
        service.stop()
