"""rtsql: real-time personalized recommendations inside DuckDB.

The library is the product; the ``rtsql`` command line and ``rtsql serve`` are thin shells over
it. Entry points (docs/python-api.md has a worked example that runs as a test)::

    import rtsql
    from rtsql import ingest, recommend, refresh

    con = rtsql.connect("shop.duckdb")
    ingest.ingest(con, ["events/"])
    refresh.refresh(con)
    print(recommend.recommend(con, "user-42", 10).rows)
"""

from .db import connect, connect_for_reading, connect_memory
from .errors import RtsqlError
from .privacy import forget_user
from .service import Service

__all__ = ["connect", "connect_for_reading", "connect_memory", "forget_user", "Service",
           "RtsqlError"]
__version__ = "0.1.0"
