"""The example in docs/python-api.md runs as written (the documented API stays true)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "python-api.md").read_text()
    [example] = re.findall(r"```python\n(.*?)```", text, re.S)
    (tmp_path / "sample_events").symlink_to(ROOT / "sample_events")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/python-api.md", "exec"), {"__name__": "example"})
    out = capsys.readouterr().out
    assert "events," in out and "refresh full" in out
    assert not list(tmp_path.glob(".*.compact"))  # forget's rewrite left nothing behind
