"""Python UDFs registered on every connection rtsql opens.

They are not stored in the database file: nothing that BI tools query may depend on them.
"""

from __future__ import annotations


def register(con) -> None:
    """Register rtsql's UDFs on ``con`` (idempotent per connection)."""
    return None
