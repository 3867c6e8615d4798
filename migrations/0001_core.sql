-- 0001_core: the event store and everything ingest writes: id dictionaries, item catalog,
-- event-type weights, the rejects table and the ingest ledger. See README "Storage model".

-- String ids live only at the edges; everything inside joins on these integer keys.
create table users (
    user_key   INTEGER PRIMARY KEY,
    user_id    VARCHAR NOT NULL UNIQUE
);

create table items (
    item_key   INTEGER PRIMARY KEY,
    item_id    VARCHAR NOT NULL UNIQUE
);

-- Catalog data is optional and upserted by `rtsql items`; an item may have catalog data and no
-- events yet (cold start, reachable through content similarity).
create table item_catalog (
    item_key    INTEGER PRIMARY KEY,
    title       VARCHAR,
    category    VARCHAR,
    tags        VARCHAR[],
    description VARCHAR,
    attributes  JSON,
    embedding   FLOAT[],
    updated_at  TIMESTAMP NOT NULL
);

-- weight of one event = weight * (value if uses_value else 1)
create table event_types (
    event_type VARCHAR PRIMARY KEY,
    weight     DOUBLE NOT NULL,
    uses_value BOOLEAN NOT NULL DEFAULT false
);
insert into event_types values
    ('view', 1, false), ('click', 2, false), ('search', 1, false),
    ('cart', 4, false), ('purchase', 8, false), ('rating', 1, true);

-- The ingest ledger: one row per file identity. Offsets and hashes are over the decompressed
-- bytes, so a grown CSV/JSON-lines file resumes at end_offset and identical content is skipped.
create table source_files (
    file_id           INTEGER PRIMARY KEY,
    path              VARCHAR NOT NULL,
    format            VARCHAR NOT NULL,
    compression       VARCHAR,
    head_sha256       VARCHAR NOT NULL,
    content_sha256    VARCHAR NOT NULL,
    end_offset        BIGINT NOT NULL,
    end_line          BIGINT NOT NULL,
    rows_ingested     BIGINT NOT NULL,
    rows_rejected     BIGINT NOT NULL,
    rows_skipped      BIGINT NOT NULL,
    device            BIGINT,
    inode             BIGINT,
    first_ingested_at TIMESTAMP NOT NULL,
    last_ingested_at  TIMESTAMP NOT NULL
);

-- No index on purpose: bulk appends stay fast; derived tables carry the lookup structures.
-- event_id is dense and increasing in ingest order: the incremental refresh watermark.
create table events (
    event_id   BIGINT NOT NULL,
    user_key   INTEGER NOT NULL,
    item_key   INTEGER NOT NULL,
    event_type VARCHAR NOT NULL,
    value      DOUBLE,
    ts         TIMESTAMP NOT NULL,
    file_id    INTEGER,
    line       BIGINT
);

-- Every input row that is not an event lands here, with the raw text (non-UTF-8 bytes escaped
-- as \xNN) and why, so rows in = events + rejects always holds.
create table rejects (
    file_id     INTEGER,
    source      VARCHAR NOT NULL,
    line        BIGINT,
    raw         VARCHAR,
    reason      VARCHAR NOT NULL,
    rejected_at TIMESTAMP NOT NULL
);

-- Values of the settings registry (rtsql/settings.py) that differ from their defaults.
create table rtsql_settings (
    name       VARCHAR PRIMARY KEY,
    value      VARCHAR NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
