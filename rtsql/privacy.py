"""Forgetting a user everywhere: the database rows, the file's bytes, the published snapshots.

``refresh.forget`` deletes the user's rows and everything derived from them in one transaction
(the models equal a rebuild without the user). That alone leaves the id in two places: in the
database file's free blocks (DuckDB does not clear them) and in every snapshot published
before. ``forget_user`` therefore also republishes every snapshot target the database knows
(``snapshot_targets``) and rewrites the file (``db.compact``): ``delete`` then ``scrub``, the
one sequence, which the CLI runs here and the server in its own threads (rtsql.service).
serve's journal (rtsql.journal) is emptied of loaded bodies by the server's forget; the CLI
refuses while it holds bodies serve answered and has not loaded (they could hold the user).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import db, journal, refresh, snapshot
from .errors import DatabaseLocked, UnknownUser
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
    """Forget ``user_id`` in the database at ``db_path`` (opened here, for writing): the one
    sequence, ``delete`` then ``scrub``, that the server runs too (in its own threads)."""
    con = db.connect(db_path)
    try:
        if waiting := journal.waiting(con, db_path):
            raise DatabaseLocked(
                f"{journal.path_for(db_path)} holds {waiting} event bodies that rtsql serve "
                "answered and has not loaded yet (it stopped first); start rtsql serve once "
                "(it loads them at start) and forget through it, or stop it and forget again")
        result = delete(con, user_id)
    except BaseException:
        con.close()
        raise
    result.republished, result.compact_seconds = _scrub_alone(con, db_path)
    return result


def delete(con, user_id: str, *, unfinished_is_done: bool = True) -> ForgetResult:
    """The first step: the user's rows and everything derived from them, in one transaction
    (refresh.forget). With ``unfinished_is_done``, a user already deleted by a forget whose
    file rewrite did not finish is not an error: the scrub that follows finishes it. The
    server passes False: it finishes such a rewrite when it starts, and the flag it sees
    later is its own group's, so an unknown id there is unknown."""
    try:
        return ForgetResult(refresh.forget(con, user_id))
    except UnknownUser:
        if not (unfinished_is_done and rewrite_pending(con)):
            raise
        return ForgetResult(refresh.RefreshResult("forget", notes=[
            f"no user {user_id!r} any more: an earlier forget deleted the rows; its file "
            "rewrite, which had not finished, is done now"]))


def scrub(con, db_path: str | os.PathLike, close_all: Callable[[], None],
          reopen: Callable[[], object]) -> tuple[list[Path], float]:
    """The second and third steps: republish every snapshot target from ``con``, rewrite the
    file (db.compact: no byte of deleted rows left; it calls ``close_all`` once the rewritten
    file holds the name), open it again (``reopen`` returns a connection) and drop the
    pending flag.
    Returns (the snapshots republished, the rewrite's seconds)."""
    republished = snapshot.republish_all(con)
    try:
        seconds = db.compact(con, db_path, close_all)
    finally:
        reopened = reopen()
    clear_pending(reopened)
    return republished, seconds


def rewrite_pending(con) -> bool:
    return scalar(con, "select count(*) from model_state where name = ?", [REWRITE_PENDING]) > 0


def finish_pending_rewrite(db_path: str | os.PathLike) -> float | None:
    """If a forget's file rewrite did not finish, scrub now (the rewrite's seconds, or None
    when nothing was pending)."""
    con = db.connect(db_path)
    try:
        pending = rewrite_pending(con)
    except BaseException:
        con.close()
        raise
    if not pending:
        con.close()
        return None
    return _scrub_alone(con, db_path)[1]


def _scrub_alone(con, db_path: str | os.PathLike) -> tuple[list[Path], float]:
    """``scrub`` for a process whose only connection is ``con`` (the CLI): it is closed for
    the rewrite, and the one opened after it is closed at the end."""
    reopened = []

    def reopen():
        reopened.append(db.connect(db_path, held=True))  # db.compact's lock
        return reopened[-1]

    try:
        return scrub(con, db_path, con.close, reopen)
    finally:
        for connection in reopened:
            connection.close()


def clear_pending(con) -> None:
    con.execute("delete from model_state where name = ?", [REWRITE_PENDING])
