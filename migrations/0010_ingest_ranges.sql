-- 0010_ingest_ranges: event types say whether their values may be negative (a thumbs-down
-- rating of -1, a refund); ingest rejects negative values of every other type. The accepted
-- timestamp window and value bound are settings (ingest_min_ts, ingest_max_ahead_hours,
-- ingest_max_abs_value).
alter table event_types add column negative_values BOOLEAN NOT NULL DEFAULT false;
