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


@dataclass
class ForgetResult:
    refresh: refresh.RefreshResult
    republished: list[Path] = field(default_factory=list)
    compact_seconds: float = 0.0

    def summary(self) -> str:
        copies = ", ".join(str(p) for p in self.republished) or "none"
        return (f"{self.refresh.summary()}; snapshots republished: {copies}; "
                f"database file rewritten in {self.compact_seconds:.1f}s")


def forget_user(db_path: str | os.PathLike, user_id: str) -> ForgetResult:
    """Forget ``user_id`` in the database at ``db_path`` (opened here, for writing)."""
    con = db.connect(db_path)
    try:
        result = ForgetResult(refresh.forget(con, user_id))
        result.republished = snapshot.republish_all(con)
    finally:
        con.close()
    result.compact_seconds = db.compact(db_path)
    return result
