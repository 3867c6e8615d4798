"""rtsql: real-time personalized recommendations inside DuckDB.

The library is the product; the ``rtsql`` command line is a thin client over it::

    import rtsql
    from rtsql import ingest

    con = rtsql.connect("shop.duckdb")
    ingest.ingest(con, ["events/"])
"""

from .db import connect, connect_memory
from .errors import RtsqlError

__all__ = ["connect", "connect_memory", "RtsqlError"]
__version__ = "0.1.0"
