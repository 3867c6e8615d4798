"""Shared fixtures: a fresh database per test, event-file writers, and a leak check."""

from __future__ import annotations

import gzip
import threading
from pathlib import Path

import pytest
from hypothesis import settings

from rtsql import db

# Property tests run 30 examples each by default; `pytest --hypothesis-profile=thorough` runs 500.
settings.register_profile("default", max_examples=30)
settings.register_profile("thorough", max_examples=500)
settings.load_profile("default")

HEADER = "user_id,item_id,event_type,ts,value\n"


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "test.duckdb"


@pytest.fixture
def con(db_path):
    connection = db.connect(db_path)
    yield connection
    connection.close()


@pytest.fixture
def write(tmp_path):
    """write(name, text_or_bytes) -> path; .gz names are gzipped."""

    def _write(name: str, content) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8") if isinstance(content, str) else content
        if name.endswith(".gz"):
            data = gzip.compress(data)
        path.write_bytes(data)
        return path

    return _write


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """A test must stop every thread it starts (observers, tail loops)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
              and not t.daemon]
    assert not leaked, f"threads leaked by the test: {leaked}"


def count(con, sql, params=None):
    return con.execute(sql, params or []).fetchall()[0][0]
