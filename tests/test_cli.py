import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from rtsql.cli import main

from conftest import HEADER

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def run(db_path):
    runner = CliRunner()

    def _run(*args, env=None):
        return runner.invoke(main, ["--db", str(db_path), *args], env=env)

    return _run


@pytest.fixture
def small(write):
    return write("e.csv", HEADER + "u1,i1,view,2024-01-01,\nu2,i1,cart,2024-01-02,\nbad,row\n")


def test_ingest_summary_and_status_formats(run, small):
    res = run("ingest", str(small), "--format", "csv")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[1].endswith(",csv,ingested,2,1,0,")
    assert "1 file(s): 2 events ingested, 1 rejected, 0 skipped" in res.stderr
    assert run("status").stdout == (
        "what           count\n"
        "-------------  -----\n"
        "events             2\n"
        "users              2\n"
        "items              1\n"
        "catalog items      0\n"
        "rejects            1\n"
        "source files       1\n")
    assert run("status", "--format", "csv").stdout.splitlines()[:2] == ["what,count", "events,2"]
    assert run("status", "--format", "jsonl").stdout.splitlines()[0] == '{"what": "events", "count": 2}'
    assert run("status", "--format", "json").stdout.startswith('[\n  {\n    "what": "events",')


def test_rejects_command(run, small):
    run("ingest", str(small))
    res = run("rejects", "--format", "csv")
    assert res.stdout.splitlines()[1].endswith(',4,"wrong number of fields: expected 5, found 2","bad,row"')


def test_db_from_environment(tmp_path, small):
    target = tmp_path / "env.duckdb"
    res = CliRunner().invoke(main, ["ingest", str(small)], env={"RTSQL_DB": str(target)})
    assert res.exit_code == 0 and target.exists()


def test_user_errors_exit_1_without_traceback(run, tmp_path):
    for args, message in [
        (["ingest", str(tmp_path / "missing.csv")], "does not exist"),
        (["settings", "ingest_chunk_mb", "many"], "takes a int"),
        (["settings", "nope"], "unknown setting"),
        (["sql", "select * from nowhere"], "query failed"),
        (["event-types", "--set", "view=heavy"], "must be a number"),
    ]:
        res = run(*args)
        assert res.exit_code == 1, (args, res.output)
        assert res.stderr.startswith("Error: ") and message in res.stderr, res.stderr
        assert "Traceback" not in res.output


def test_unreadable_file_exit_1_but_others_load(run, write, small):
    broken = write("z.parquet", b"garbage")
    res = run("ingest", str(small), str(broken))
    assert res.exit_code == 1
    assert "1 file(s) could not be read" in res.stderr
    assert run("sql", "select count(*) as n from events", "--format", "csv").stdout == "n\n2\n"


def test_usage_error_exit_2(run):
    assert run("ingest").exit_code == 2
    assert run("status", "--format", "xml").exit_code == 2


def test_migrate_list_is_read_only(run, db_path):
    res = run("migrate", "--list", "--format", "csv")
    assert res.exit_code == 0
    assert res.stdout.splitlines()[1].startswith("1,core,pending")
    assert not db_path.exists()
    assert run("migrate").exit_code == 0
    assert run("migrate", "--list", "--format", "csv").stdout.splitlines()[1].startswith("1,core,applied")


def test_settings_and_event_types(run):
    assert run("settings", "ingest_chunk_mb", "16", "--format", "csv").stdout.splitlines()[1].startswith(
        "ingest_chunk_mb,16,64,")
    res = run("event-types", "--set", "wishlist=3", "--set", "purchase=10", "--format", "csv")
    assert "purchase,10.0,False" in res.stdout and "wishlist,3.0,False" in res.stdout


def test_demo_prints_summary(run, tmp_path):
    res = run("demo", "--dir", str(tmp_path / "sample"))
    assert res.exit_code == 0, res.output
    assert "writing the sample set there" in res.stdout
    assert "unknown event type 'teleport'" in res.stdout
    again = run("demo", "--dir", str(tmp_path / "sample"))
    assert "unchanged" in again.stdout


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, prefix + (name,))


def test_every_command_has_an_example_and_is_in_the_readme():
    readme = README.read_text()
    for path, cmd in _commands(main):
        assert "Example:" in (cmd.help or ""), f"rtsql {' '.join(path)} --help has no example"
        assert re.search(rf"`rtsql {' '.join(path)}\b", readme), \
            f"rtsql {' '.join(path)} is not documented in README.md"


@pytest.fixture
def refreshed(run, write):
    rows = "".join(f"{g}u{u},{g}i{i},view,2026-10-01T00:{u}{i}:00,\n"
                   for g in "ab" for u in range(4) for i in range(4) if i != u)
    assert run("ingest", str(write("ev.csv", HEADER + rows))).exit_code == 0
    res = run("refresh")
    assert res.exit_code == 0 and res.stdout.startswith("refresh full: 24 events")
    return run


def test_recommend_similar_trending_commands(refreshed):
    run = refreshed
    res = run("recommend", "au0", "-k", "2", "--format", "csv")
    lines = res.stdout.splitlines()
    assert lines[0] == "rank,item_id,score,reason" and len(lines) == 3
    assert lines[1].startswith("1,ai0,") and lines[2].startswith("2,")
    assert "item-cf: because you viewed ai" in res.stdout
    assert run("recommend", "au0", "--strategy", "user", "-k", "1", "--format", "csv"
               ).stdout.splitlines()[1].startswith("1,ai0,")
    assert run("similar", "ai0", "-k", "3", "--format", "csv").stdout.splitlines()[0] == "rank,item_id,score"
    assert run("similar-users", "au0", "-k", "3", "--format", "jsonl").stdout.count("\n") == 3
    assert run("trending", "-k", "2", "--format", "csv").stdout.splitlines()[0] == "rank,item_id,score"
    assert run("refresh").stdout.startswith("refresh: up to date")
    assert run("refresh", "--full").stdout.startswith("refresh full:")
    res = run("similar", "zz")
    assert res.exit_code == 1 and "no item 'zz'" in res.stderr
    assert run("recommend", "au0", "-k", "0").exit_code == 2  # out of the option's range: usage


def test_forget_command(refreshed):
    run = refreshed
    assert run("forget", "au1").exit_code == 1  # asks for confirmation; no input aborts
    res = run("forget", "au1", "--yes")
    assert res.exit_code == 0 and res.stdout.startswith("forgot au1:")
    assert run("sql", "select count(*) as n from users where user_id = 'au1'",
               "--format", "csv").stdout == "n\n0\n"
    assert run("forget", "au1", "--yes").exit_code == 1


def test_feedback_commands(refreshed, write, tmp_path):
    run = refreshed
    imp = write("imp.csv", "user_id,item_id,ts,strategy,variant\n"
                "au0,ai0,2026-10-01T00:00:00,item-cf,A\nau1,ai1,2026-10-01T00:00:00,trending,B\n")
    assert run("impressions", str(imp)).stdout == "2 impressions loaded, 0 rejected\n"
    res = run("report", "--by", "strategy", "--format", "csv")
    assert res.stdout == ("strategy,impressions,clicks,ctr,purchases,conversion\n"
                          "item-cf,1,0,0.0,0,0.0\ntrending,1,0,0.0,0,0.0\n")
    res = run("report", "--plot", str(tmp_path / "p.svg"))
    assert res.exit_code == 0 and (tmp_path / "p.svg").read_text().startswith("<svg")
    res = run("variants", "--set", "A=0.5", "--set", "B=0.5", "--setting",
              "B.weight_trending=1", "--format", "csv")
    assert res.stdout.splitlines() == ["variant,share,settings", "A,0.5,{}",
                                       'B,0.5,"{""weight_trending"": ""1""}"']
    assert run("recommend", "au0", "--variant", "auto", "-k", "2").exit_code == 0
    bad = run("variants", "--set", "A=0.7")
    assert bad.exit_code == 1 and "add up to 1" in bad.stderr
    assert run("variants", "--clear", "--format", "csv").stdout == "variant,share,settings\n"


def test_format_is_output_everywhere_input_format_names_the_input(run, write):
    """--format is the output format on every command; files' format is --input-format. The
    old spellings (ingest --output-format, items/tail --format, evaluate --events-format) still
    work, hidden from the help."""
    data = write("e.txt", HEADER + "u1,i1,view,2024-01-01,\n")  # no extension to detect from
    res = run("ingest", str(data), "--input-format", "csv", "--format", "json")
    assert res.exit_code == 0 and '"status": "ingested"' in res.stdout, res.output
    again = write("f.txt", HEADER + "u2,i1,view,2024-01-01,\n")
    res = run("ingest", str(again), "--input-format", "csv", "--output-format", "csv")
    assert res.exit_code == 0 and res.stdout.startswith("file,format,status"), res.output
    catalog = write("items.txt", "item_id,title\ni1,Shoe\n")
    assert run("items", str(catalog), "--format", "csv").exit_code == 0
    helps = run("ingest", "--help").stdout
    assert "--input-format" in helps and "--output-format" not in helps
    assert "--input-format" in run("items", "--help").stdout
