-- 0002_models: the derived tables that `rtsql refresh` maintains and the SQL macros read.
-- They are pure data (no Python needed to query them), so BI tools can serve from them.

-- The interaction matrix: one weight per (user, item) = sum of event-type weights, forward-decayed
-- against the landmark in model_state when half_life_days is set.
create table interactions (
    user_key        INTEGER NOT NULL,
    item_key        INTEGER NOT NULL,
    weight          DOUBLE NOT NULL,
    events          INTEGER NOT NULL,
    last_ts         TIMESTAMP NOT NULL,
    last_event_type VARCHAR NOT NULL
);

-- Top-K lists, ordered by (score desc, neighbour key asc); rank starts at 1.
create table item_neighbors (
    item_key     INTEGER NOT NULL,
    neighbor_key INTEGER NOT NULL,
    score        DOUBLE NOT NULL,
    rank         INTEGER NOT NULL
);

create table user_neighbors (
    user_key     INTEGER NOT NULL,
    neighbor_key INTEGER NOT NULL,
    score        DOUBLE NOT NULL,
    rank         INTEGER NOT NULL
);

-- embedding_cosine: the dense part of the score, from the rtsql_cosine UDF (NULL without embeddings)
create table content_neighbors (
    item_key         INTEGER NOT NULL,
    neighbor_key     INTEGER NOT NULL,
    score            DOUBLE NOT NULL,
    rank             INTEGER NOT NULL,
    embedding_cosine DOUBLE
);

-- Popularity and trending per item, against the latest event time (the data's clock).
create table item_trending (
    item_key   INTEGER NOT NULL,
    recent     BIGINT NOT NULL,
    previous   BIGINT NOT NULL,
    popularity BIGINT NOT NULL,
    score      DOUBLE NOT NULL
);

-- Refresh bookkeeping: watermark (last event_id folded in), decay landmark, settings of the
-- last full refresh, catalog version.
create table model_state (
    name  VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
