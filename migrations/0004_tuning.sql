-- 0004_tuning: a record of `rtsql tune` runs: what was tried, what won, what it measured before
-- and after, and whether it was applied to the live settings.
create table tuning_runs (
    run_id      INTEGER NOT NULL,
    started_at  TIMESTAMP NOT NULL,
    protocol    VARCHAR NOT NULL,
    metric      VARCHAR NOT NULL,
    trial       INTEGER NOT NULL,
    settings    JSON NOT NULL,
    score       DOUBLE NOT NULL,
    is_best     BOOLEAN NOT NULL,
    applied     BOOLEAN NOT NULL
);
