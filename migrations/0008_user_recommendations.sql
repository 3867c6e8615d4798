-- 0008_user_recommendations: every user's top-k recommendations, written by each refresh when
-- the setting materialize_recommendations is on (empty otherwise), from the same scorer as
-- `rtsql serve`: the rows recommend(user_id, k) returns, so a dashboard reads every user's
-- list with a plain SELECT. Published with the snapshot.
create table user_recommendations (
    user_key INTEGER NOT NULL,
    user_id  VARCHAR NOT NULL,
    rank     INTEGER NOT NULL,
    item_id  VARCHAR NOT NULL,
    score    DOUBLE NOT NULL,
    reason   VARCHAR NOT NULL
);
