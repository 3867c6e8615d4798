-- 0011_external_events: what a Spark build with --events (event files the database does not
-- hold) leaves for the local refreshes that follow it, so that trending and popularity keep
-- counting those events exactly: per item, how many there were, and the ones recent enough to
-- fall into a trending window (later events only push the windows forward). Both are empty
-- after a build from the database's own events.
create table external_item_counts (
    item_key INTEGER PRIMARY KEY,
    events   BIGINT NOT NULL
);

create table external_recent_events (
    item_key INTEGER NOT NULL,
    ts       TIMESTAMP NOT NULL
);
