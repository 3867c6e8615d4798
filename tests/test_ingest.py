import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtsql import ingest
from rtsql import settings as rtsql_settings
from rtsql.errors import BadEventFile, InputPathError, InvalidSetting
from rtsql.ingest import ColumnMapping

from conftest import HEADER, count


def rows_of(con):
    return con.execute(
        "select u.user_id, i.item_id, e.event_type, e.ts, e.value, e.line from events e "
        "join users u using (user_key) join items i using (item_key) order by e.line").fetchall()


def rejects_of(con):
    return con.execute("select line, reason from rejects order by line").fetchall()


T0 = dt.datetime(2024, 1, 1)


@pytest.mark.parametrize("name", ["e.csv", "e.csv.gz"])
def test_csv_plain_and_gzip(con, write, name):
    path = write(name, HEADER + "u1,i1,view,2024-01-01T00:00:00,\nu2,i1,rating,1704067200,4.5\n")
    [res] = ingest.ingest(con, [path])
    assert (res.status, res.ingested, res.rejected) == ("ingested", 2, 0)
    assert rows_of(con) == [("u1", "i1", "view", T0, None, 2), ("u2", "i1", "rating", T0, 4.5, 3)]


@pytest.mark.parametrize("name", ["e.jsonl", "e.jsonl.gz", "e.ndjson"])
def test_json_lines_plain_and_gzip(con, write, name):
    lines = [{"user_id": "u1", "item_id": 7, "event_type": "CLICK", "ts": "2024-01-01T02:00:00+02:00"},
             {"user_id": "u2", "item_id": "i2", "event_type": "rating", "ts": 1704067200, "value": 3}]
    path = write(name, "\n".join(json.dumps(x) for x in lines) + "\n")
    [res] = ingest.ingest(con, [path])
    assert (res.ingested, res.rejected) == (2, 0)
    assert rows_of(con) == [("u1", "7", "click", T0, None, 1), ("u2", "i2", "rating", T0, 3.0, 2)]


def test_parquet_with_native_types_and_mapping(con, tmp_path):
    table = pa.table({"userId": ["a", "b", None], "movieId": [1, 2, 3],
                      "rating": [4.0, 2.5, 1.0],
                      "timestamp": pa.array([1704067200, 1704067260, 1704067320], pa.int64())})
    path = tmp_path / "r.parquet"
    pq.write_table(table, path)
    mapping = ColumnMapping.parse(["user_id=userId", "item_id=movieId", "value=rating",
                                   "ts=timestamp"], event_type="rating")
    [res] = ingest.ingest(con, [path], mapping=mapping)
    assert (res.ingested, res.rejected) == (2, 1)
    assert rows_of(con)[1] == ("b", "2", "rating", T0 + dt.timedelta(minutes=1), 2.5, 2)
    [(line, reason)] = rejects_of(con)
    assert (line, reason) == (3, "missing user_id")
    assert json.loads(count(con, "select raw from rejects"))["movieId"] == 3


def test_parquet_timestamp_column(con, tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"user_id": ["a"], "item_id": ["x"], "event_type": ["view"],
                             "ts": pa.array([T0], pa.timestamp("us"))}), path)
    ingest.ingest(con, [path])
    assert rows_of(con) == [("a", "x", "view", T0, None, 1)]


BAD_CSV = (HEADER
           + "u1,i1,view,2024-01-01,\n"          # 2 ok
           + ",i1,view,2024-01-01,\n"            # 3 missing user
           + "u1,,view,2024-01-01,\n"            # 4 missing item
           + "u1,i1,teleport,2024-01-01,\n"      # 5 unknown type
           + "u1,i1,view,someday,\n"             # 6 bad ts
           + "u1,i1,view,2024-01-01,abc\n"       # 7 non-numeric value
           + "u1,i1,view\n"                      # 8 too few fields
           + "u1,i1,view,2024-01-01,,extra\n"    # 9 too many fields
           + "\n"                                # 10 blank: skipped
           + "u1,i1,rating,2024-01-01,\n"        # 11 rating without value
           + '"u,2",i1,view,2024-01-01,\n'       # 12 ok, quoted comma
           + "u1,i1,view,,\n")                   # 13 missing ts
BAD_CSV_BYTES = BAD_CSV.encode() + b"u\xff,i1,view,2024-01-01,\n"  # 14 invalid UTF-8


def test_every_bad_row_kind_lands_in_rejects_with_line(con, write):
    path = write("bad.csv", BAD_CSV_BYTES)
    [res] = ingest.ingest(con, [path])
    assert (res.ingested, res.rejected, res.skipped) == (2, 10, 1)
    assert rejects_of(con) == [
        (3, "missing user_id"), (4, "missing item_id"), (5, "unknown event type 'teleport'"),
        (6, "unparseable timestamp 'someday'"), (7, "non-numeric value 'abc'"),
        (8, "wrong number of fields: expected 5, found 3"),
        (9, "wrong number of fields: expected 5, found 6"),
        (11, "missing value for event type 'rating'"), (13, "missing ts"),
        (14, "invalid UTF-8"),
    ]
    assert count(con, "select raw from rejects where line = 14") == "u\\xFF,i1,view,2024-01-01,"
    assert [r[5] for r in rows_of(con)] == [2, 12]
    assert count(con, "select source from rejects limit 1") == str(path.resolve())


def test_bad_json_lines(con, write):
    path = write("bad.jsonl", b'{"user_id":"u","item_id":"i","event_type":"view","ts":"2024-01-01"}\n'
                              b'{not json\n[1,2]\n{"user_id":"u","item_id":"i","event_type":"view",'
                              b'"ts":"2024-01-01","value":"x"}\n{"user_id":"\xff"}\n')
    ingest.ingest(con, [path])
    assert rejects_of(con) == [(2, "malformed JSON"), (3, "JSON line is not an object"),
                               (4, "non-numeric value 'x'"), (5, "invalid UTF-8")]


@pytest.mark.parametrize("content,expected", [("", (0, 0, 0)), (HEADER, (0, 0, 0)),
                                              (HEADER.rstrip("\n"), (0, 0, 0))])
def test_empty_and_header_only_files(con, write, content, expected):
    [res] = ingest.ingest(con, [write("e.csv", content)])
    assert res.status == "empty"
    assert (res.ingested, res.rejected, res.skipped) == expected


def test_last_line_without_newline_is_read(con, write):
    [res] = ingest.ingest(con, [write("e.csv", HEADER + "u1,i1,view,2024-01-01,")])
    assert res.ingested == 1


def test_reingest_same_content_adds_nothing_and_force_overrides(con, write, tmp_path):
    path = write("e.csv", HEADER + "u1,i1,view,2024-01-01,\n")
    ingest.ingest(con, [path])
    [again] = ingest.ingest(con, [path])
    assert again.status == "unchanged"
    copy = write("copy/e2.csv", path.read_bytes())
    assert ingest.ingest(con, [copy])[0].status == "unchanged"
    assert count(con, "select count(*) from events") == 1
    ingest.ingest(con, [path], force=True)
    assert count(con, "select count(*) from events") == 2


@pytest.mark.parametrize("name,line", [
    ("g.csv", "u{n},i1,view,2024-01-01,\n"),
    ("g.jsonl", '{{"user_id":"u{n}","item_id":"i1","event_type":"view","ts":"2024-01-01"}}\n'),
])
def test_grown_file_loads_only_new_lines(con, write, name, line):
    head = HEADER if name.endswith(".csv") else ""
    path = write(name, head + line.format(n=1) + line.format(n=2))
    ingest.ingest(con, [path])
    with open(path, "a") as f:
        f.write(line.format(n=3) + "\n" + line.format(n=4))
    [res] = ingest.ingest(con, [path])
    assert (res.status, res.ingested, res.skipped) == ("grown", 2, 1)
    assert sorted(r[0] for r in rows_of(con)) == ["u1", "u2", "u3", "u4"]
    first = 2 if head else 1
    assert [r[5] for r in rows_of(con)] == [first, first + 1, first + 2, first + 4]
    assert count(con, "select count(*) from source_files") == 1


def test_changed_file_is_not_treated_as_grown(con, write):
    path = write("c.csv", HEADER + "u1,i1,view,2024-01-01,\n")
    ingest.ingest(con, [path])
    path.write_text(HEADER + "u9,i1,view,2024-01-01,\nu8,i1,view,2024-01-01,\n")
    [res] = ingest.ingest(con, [path])
    assert (res.status, res.ingested) == ("ingested", 2)


def test_missing_path_is_refused_before_anything_is_read(con, write, tmp_path):
    good = write("ok.csv", HEADER + "u1,i1,view,2024-01-01,\n")
    with pytest.raises(InputPathError, match="does not exist"):
        ingest.ingest(con, [good, tmp_path / "nope.csv"])
    assert count(con, "select count(*) from events") == 0


def test_unreadable_file_fails_alone_and_writes_nothing(con, write):
    good = write("a_ok.csv", HEADER + "u1,i1,view,2024-01-01,\n")
    broken = write("b_broken.parquet", b"this is not parquet")
    nocol = write("c_nocol.csv", "who,what\nu1,i1\n")
    results = ingest.ingest(con, [good, broken, nocol])
    assert [r.status for r in results] == ["ingested", "failed", "failed"]
    assert "map it with --map user_id=COLUMN" in results[2].message
    assert count(con, "select count(*) from events") == 1
    assert count(con, "select count(*) from source_files") == 1
    assert count(con, "select count(*) from rejects") == 0


def test_missing_event_type_column_suggests_flag(con, write):
    with pytest.raises(BadEventFile, match="--event-type"):
        ingest.ingest_file(con, write("x.csv", "user_id,item_id,ts\nu,i,2024-01-01\n"))


def test_event_type_flag_and_unknown_flag(con, write):
    path = write("x.csv", "user_id,item_id,ts,value\nu,i,2024-01-01,5\n")
    ingest.ingest(con, [path], mapping=ColumnMapping.parse([], event_type="rating"))
    assert rows_of(con)[0][2:5] == ("rating", T0, 5.0)
    with pytest.raises(InputPathError, match="not a known event type"):
        ingest.ingest(con, [path], mapping=ColumnMapping.parse([], event_type="nope"), force=True)


def test_directory_walk_skips_temporary_and_unknown_files(con, write, tmp_path):
    write("d/a.csv", HEADER + "u1,i1,view,2024-01-01,\n")
    write("d/sub/b.jsonl", '{"user_id":"u","item_id":"i","event_type":"view","ts":"2024-01-01"}\n')
    write("d/.hidden.csv", HEADER + "u1,i1,view,2024-01-01,\n")
    write("d/c.csv.part", HEADER + "u1,i1,view,2024-01-01,\n")
    write("d/notes.txt", "hello")
    files = ingest.expand_paths([tmp_path / "d"])
    assert [f.name for f in files] == ["a.csv", "b.jsonl"]


def test_bad_map_option():
    with pytest.raises(InvalidSetting, match="not one of"):
        ColumnMapping.parse(["userid=x"])
    with pytest.raises(InvalidSetting, match="CANONICAL=SOURCE"):
        ColumnMapping.parse(["user_id"])


def test_chunked_reading_keeps_line_numbers(con, write):
    rtsql_settings.set_value(con, "ingest_chunk_mb", "1")
    n = 60_000  # ~2 MB: several 1 MiB chunks, lines cut across chunk borders
    body = "".join(f"user{k % 97},item{k % 1013},view,{1704067200 + k},\n" for k in range(n))
    path = write("big.csv", HEADER + body + "u,i,bad,2024-01-01,\n")
    [res] = ingest.ingest(con, [path])
    assert (res.ingested, res.rejected) == (n, 1)
    assert count(con, "select count(distinct line) from events") == n
    assert count(con, "select max(line) from events") == n + 1
    assert rejects_of(con) == [(n + 2, "unknown event type 'bad'")]


# ----------------------------------------------------------------------------- properties

FIELD = st.text(alphabet=st.sampled_from("ab1,\" x\xe9"), max_size=4)
ROW = st.one_of(
    st.tuples(st.sampled_from(["u1", "u2", "", "u,3"]), st.sampled_from(["i1", "i2", ""]),
              st.sampled_from(["view", "cart", "rating", "nope", ""]),
              st.sampled_from(["2024-01-01", "1704067200", "bad", ""]),
              st.sampled_from(["", "2", "x"])),
    st.tuples(FIELD, FIELD, FIELD),
)


def _csv_line(fields):
    return ",".join('"' + f.replace('"', '""') + '"' if ("," in f or '"' in f) else f
                    for f in fields)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ROW, max_size=30))
def test_rows_in_equal_events_plus_rejects_plus_skipped(tmp_path_factory, rows):
    from rtsql import db

    path = tmp_path_factory.mktemp("p") / "p.csv"
    lines = [_csv_line(r) for r in rows]
    path.write_text(HEADER + "".join(line + "\n" for line in lines), encoding="utf-8")
    con = db.connect_memory()
    [res] = ingest.ingest(con, [path])
    blank = sum(1 for line in lines if not line.strip())
    assert res.ingested + res.rejected + res.skipped == len(rows)
    assert res.skipped == blank
    assert count(con, "select count(*) from events") == res.ingested
    assert count(con, "select count(*) from rejects") == res.rejected
    lines_seen = [r[0] for r in con.execute(
        "select line from events union all select line from rejects").fetchall()]
    assert len(set(lines_seen)) == len(lines_seen)
    # re-ingesting the same content changes nothing
    [again] = ingest.ingest(con, [path])
    assert again.status in ("unchanged", "empty")
    assert count(con, "select count(*) from events") == res.ingested
    con.close()


@settings(deadline=None, max_examples=60)
@given(st.lists(st.one_of(
    st.dictionaries(st.sampled_from(["user_id", "item_id", "event_type", "ts", "value"]),
                    st.one_of(st.text(max_size=8), st.integers(), st.floats(allow_nan=False),
                              st.none(), st.lists(st.integers(), max_size=2))),
    st.integers(), st.text(max_size=5)), max_size=6), st.sampled_from([None, 1, 2]))
def test_a_json_array_body_becomes_one_line_per_element_with_its_own_text(items, indent):
    """Each element of an array body is one JSON line equal to it (pretty-printed elements
    included), in order; the line is the client's text, not an encoding of it again."""
    body = json.dumps(items, indent=indent).encode()
    lines = ingest.json_array_as_lines(body).decode().splitlines()
    assert [json.loads(line) for line in lines] == items
    compact = json.dumps(items, separators=(", ", ": ")).encode()
    assert ingest.json_array_as_lines(compact).decode().splitlines() == [
        json.dumps(item, separators=(", ", ": ")) for item in items]


@pytest.mark.parametrize("body", [b'[{"a": 1}', b'[{"a": 1},]', b'[{"a": 1} {"b": 2}]',
                                  b'[{"a": 1}] trailing', b'[\xff]'])
def test_a_body_that_starts_like_an_array_and_is_not_one_is_refused(body):
    with pytest.raises(InvalidSetting, match="starts like a JSON array"):
        ingest.json_array_as_lines(body)


body_rows = st.lists(st.tuples(st.sampled_from(["u1", "u2", " u3", "", "new-user"]),
                               st.sampled_from(["i1", "i2", "new-item", ""]),
                               st.sampled_from(["view", "purchase", "nope"])),
                     min_size=1, max_size=12)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(body_rows, min_size=1, max_size=3))
def test_bodies_with_the_writers_known_keys_equal_the_dictionary_path(tmp_path_factory, batches):
    """The server's fast path (every id known in memory: no dictionary joins) writes the same
    events, keys and rejects as the dictionary path, and falls back to it for new ids."""
    import rtsql
    from rtsql.serving import ServingState

    results = []
    for fast in (False, True):
        con = rtsql.connect(tmp_path_factory.mktemp("bodies") / "b.duckdb")
        seed = "".join(f"u{n},i{n},view,2026-11-01T10:00:00,\n" for n in (1, 2, 3))
        ingest.ingest_bodies(con, [("seed", (HEADER + seed).encode())], fmt="csv")
        for n, rows in enumerate(batches):
            body = "\n".join(json.dumps({"user_id": u, "item_id": i, "event_type": t,
                                         "ts": f"2026-11-0{2 + n}T10:00:00"})
                             for u, i, t in rows).encode()
            known = ServingState.load(con).keys_of if fast else None
            ingest.ingest_bodies(con, [(f"b{n}", body)], known_keys=known)
        results.append([con.execute(sql).fetchall() for sql in (
            "select event_id, user_key, item_key, event_type, ts, line from events order by 1",
            "select * from users order by 1", "select item_key, item_id from items order by 1",
            "select source, line, reason from rejects order by all")])
        con.close()
    assert results[0] == results[1]
