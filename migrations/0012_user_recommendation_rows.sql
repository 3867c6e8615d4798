-- 0012_user_recommendation_rows: user_recommendations becomes a view (sql/views/) over the
-- scorer's rows in integer keys: writing 840k rows of ids and reason texts took longer than
-- scoring them at 10M events. The view joins the ids and the reason text (rtsql_reason, the
-- macro's own) at read time; a plain SELECT sees the same columns as before.
drop table user_recommendations;

create table user_recommendation_rows (
    user_key     INTEGER NOT NULL,
    rank         INTEGER NOT NULL,
    item_key     INTEGER NOT NULL,
    score        DOUBLE NOT NULL,
    part         VARCHAR NOT NULL,  -- the strategy behind the row: item-cf, user-cf, ...
    because_key  INTEGER,           -- the history item behind it, if any
    because_type VARCHAR            -- that item's event type in the user's history
);

-- the rows are written again by the next refresh that has the setting on
delete from model_state where name = 'materialized';
