"""Reading and configuring the event store: event-type weights, rejects, counts."""

from __future__ import annotations

from .errors import InvalidSetting
from .sqlutil import scalar

COLUMNS = ["event_type", "weight", "uses_value", "negative_values"]


def event_types(con) -> list[tuple]:
    return con.execute(
        f"select {', '.join(COLUMNS)} from event_types order by event_type").fetchall()


# An event's weight times its value (at most ingest_max_abs_value, 1e12) times forward decay
# (at most e^100) stays far below float64's range when squared and summed over many events, so
# norms and similarities stay finite.
MAX_WEIGHT = 1e6


def set_event_type(con, name: str, weight, uses_value: bool | None = None,
                   negative_values: bool | None = None) -> None:
    """Add or change an event type. Its weight applies to every event of that type from the
    next refresh on (the interaction matrix is derived, never stored per event);
    ``negative_values`` lets ingest accept its events' negative values (refunds, thumbs-down)
    from now on."""
    name = (name or "").strip().lower()
    if not name:
        raise InvalidSetting("an event type needs a name, e.g. --set wishlist=3")
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise InvalidSetting(f"weight of {name!r} must be a number, got {weight!r}") from None
    if not (0 <= weight <= MAX_WEIGHT):
        raise InvalidSetting(f"weight of {name!r} must be a number from 0 to {MAX_WEIGHT:g}, "
                             f"got {weight:g}")
    con.execute(
        "insert into event_types values ($1, $2, coalesce($3, false), coalesce($4, false)) "
        "on conflict (event_type) do update set weight = excluded.weight, "
        "uses_value = coalesce($3, event_types.uses_value), "
        "negative_values = coalesce($4, event_types.negative_values)",
        [name, weight, uses_value, negative_values])


def rejects(con, limit: int = 20, source: str | None = None) -> list[tuple]:
    return con.execute(
        "select source, line, reason, raw from rejects where ? is null or source = ? "
        "order by rejected_at, source, line limit ?", [source, source, int(limit)]).fetchall()


def summary(con) -> dict[str, int | None]:
    """Counts of what the database holds. On a snapshot (what readers get while tail or serve
    holds the database), events are those folded into the interaction matrix plus those after
    its watermark, and the ingest ledger's counts (rejects, source files) are not there."""
    tables = {r[0] for r in con.execute(
        "select table_name from information_schema.tables").fetchall()}
    if "source_files" not in tables:
        return {
            "events": scalar(con, "select coalesce(sum(events), 0) from interactions")
            + scalar(con, "select count(*) from events where event_id > coalesce((select "
                          "value::BIGINT from model_state where name = 'watermark'), -1)"),
            "users": scalar(con, "select count(*) from users"),
            "items": scalar(con, "select count(*) from items"),
            "catalog items": scalar(con, "select count(*) from item_catalog"),
            "rejects": None,
            "source files": None,
        }
    return {
        "events": scalar(con, "select count(*) from events"),
        "users": scalar(con, "select count(*) from users"),
        "items": scalar(con, "select count(*) from items"),
        "catalog items": scalar(con, "select count(*) from item_catalog"),
        "rejects": scalar(con, "select count(*) from rejects"),
        "source files": scalar(con, "select count(*) from source_files"),
    }
