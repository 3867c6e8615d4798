"""Forgetting a user everywhere: the database rows, the file's bytes, the published snapshots.

``refresh.forget`` deletes the user's rows and everything derived from them in one transaction
(the models equal a rebuild without the user). That alone leaves the id in two places: in the
database file's free blocks (DuckDB does not clear them) and in every snapshot published
before. ``forget_user`` therefore also republishes every snapshot target the database knows
(``snapshot_targets``) and rewrites the file (``db.compact``). The server does the same steps
in its own threads (rtsql.service).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import db, refresh, snapshot
from .errors import UnknownUser
from .sqlutil import scalar


@dataclass
class ForgetResult:
    refresh: refresh.RefreshResult
    republished: list[Path] = field(default_factory=list)
    compact_seconds: float = 0.0

    def summary(self) -> str:
        copies = ", ".join(str(p) for p in self.republished) or "none"
        return (f"{self.refresh.summary()}; snapshots republished: {copies}; "
                f"database file rewritten in {self.compact_seconds:.1f}s")


# refresh.REWRITE_PENDING, set by a forget that deleted rows: the next forget, or serve's
# start, finishes the file rewrite (another process opened the file, a crash)
REWRITE_PENDING = refresh.REWRITE_PENDING


def forget_user(db_path: str | os.PathLike, user_id: str) -> ForgetResult:
    """Forget ``user_id`` in the database at ``db_path`` (opened here, for writing). A user
    already deleted by a forget whose file rewrite did not finish gets that rewrite now."""
    con = db.connect(db_path)
    try:
        try:
            result = ForgetResult(refresh.forget(con, user_id))
        except UnknownUser:
            if not rewrite_pending(con):
                raise
            result = ForgetResult(refresh.RefreshResult("forget", notes=[
                f"no user {user_id!r} any more: an earlier forget deleted the rows; its file "
                "rewrite, which had not finished, is done now"]))
        result.republished = snapshot.republish_all(con)
    finally:
        con.close()
    result.compact_seconds = _compact(db_path)
    return result


def rewrite_pending(con) -> bool:
    return scalar(con, "select count(*) from model_state where name = ?", [REWRITE_PENDING]) > 0


def finish_pending_rewrite(db_path: str | os.PathLike) -> float | None:
    """If a forget's file rewrite did not finish, republish and rewrite now (seconds, or
    None when nothing was pending)."""
    con = db.connect(db_path)
    try:
        if not rewrite_pending(con):
            return None
        snapshot.republish_all(con)
    finally:
        con.close()
    return _compact(db_path)


def clear_pending(con) -> None:
    con.execute("delete from model_state where name = ?", [REWRITE_PENDING])


def _compact(db_path: str | os.PathLike) -> float:
    """Rewrite the file (no byte of deleted rows left), then drop the pending flag."""
    seconds = db.compact(db_path)
    con = db.connect(db_path)
    try:
        clear_pending(con)
    finally:
        con.close()
    return seconds
