"""The README's transcripts are real: replay them against the committed sample."""

import re
from pathlib import Path

from click.testing import CliRunner

from rtsql.cli import main

ROOT = Path(__file__).resolve().parent.parent


def transcript_blocks(text: str):
    """(command, expected output) for every '$ rtsql ...' line followed by output lines."""
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        lines = block.splitlines()
        for n, line in enumerate(lines):
            if line.startswith("$ rtsql "):
                out = []
                for follow in lines[n + 1:]:
                    if follow.startswith("$ "):
                        break
                    out.append(follow)
                yield line[2:], out


def test_readme_transcripts_match_the_cli(tmp_path):
    db = str(tmp_path / "readme.duckdb")
    runner = CliRunner()
    demo = runner.invoke(main, ["--db", db, "demo", "--dir", str(ROOT / "sample_events")])
    assert demo.exit_code == 0, demo.output
    checked = 0
    for command, expected in transcript_blocks((ROOT / "README.md").read_text()):
        if not expected or command.startswith("rtsql refresh"):
            continue  # commands shown without output, and timings, are not compared
        args = command.split()[1:]
        res = runner.invoke(main, ["--db", db, *args])
        assert res.exit_code == 0, (command, res.output)
        assert res.stdout.rstrip("\n").splitlines() == expected, command
        checked += 1
    assert checked >= 1
