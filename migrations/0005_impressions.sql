-- 0005_impressions: what applications showed to whom (the feedback loop), and A/B variants.
create table impressions (
    user_key  INTEGER NOT NULL,
    item_key  INTEGER NOT NULL,
    ts        TIMESTAMP NOT NULL,
    strategy  VARCHAR NOT NULL,
    variant   VARCHAR,
    rec_id    VARCHAR,
    rank      INTEGER,
    source    VARCHAR,
    line      BIGINT
);

-- A/B variants: users are assigned by a stable hash of their id to the cumulative shares;
-- a variant's serving settings override the global ones in recommend(variant := ...).
create table ab_variants (
    name    VARCHAR PRIMARY KEY,
    share   DOUBLE NOT NULL,
    settings JSON NOT NULL
);
