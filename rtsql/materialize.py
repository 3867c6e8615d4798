"""Batch output of a refresh: every user's top-k into ``user_recommendation_rows``, for
dashboards and BI tools that want every list at once (setting materialize_recommendations).

Called by the refresh, inside its transaction, so the rows come from the models it just
wrote. It scores with the same in-memory state and compiled scorer as ``rtsql serve``
(``ServingState.recommend_all``), so a materialized row equals the one the server and the
recommend() macro return; it imports nothing of the serving process (service, server).
"""

from __future__ import annotations

import pyarrow as pa

from .serving import ServingState
from .sqlutil import recreate_empty, registered
from .vocabulary import PART_NAMES


def materialize(con, k: int, strategy: str, progress=None, threads: int = 1) -> int:
    """Write every user's top-k into ``user_recommendation_rows`` (emptied first), from the
    state as ``con`` sees it (inside a refresh's transaction: the new models), scored on
    ``threads`` threads. Returns the rows. The view ``user_recommendations`` joins the ids
    and the reason text (``rtsql_reason``, the macro's own) at read time."""
    state = ServingState._load(con)
    recreate_empty(con, "user_recommendation_rows")
    rows = state.recommend_all(k, strategy, threads, progress)
    with registered(con, "_rtsql_user_recs", {name: pa.array(values)
                                              for name, values in rows.items()}):
        con.execute("""
            insert into user_recommendation_rows
            select user_key, rank, item_key, score, list_extract(?::VARCHAR[], part + 1),
                   nullif(because, -1), list_extract(?::VARCHAR[], because_type)
            from _rtsql_user_recs""", [list(PART_NAMES), state.model.event_types])
    return len(rows["user_key"])
