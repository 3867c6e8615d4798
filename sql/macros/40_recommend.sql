-- recommend: top-k items for a user (string id), with a reason per row. Pure SQL over stored
-- tables, so any DuckDB client can call it: SELECT * FROM recommend('user-42', 10).
-- Unknown users get trending and popular items. exclude: item ids to leave out; category: only
-- items of that catalog category; strategy: hybrid (default), item, user, content or trending;
-- variant: an A/B variant's serving settings ('auto': the user's own, from ab_variant()).
create or replace macro recommend(p_user_id, k := {{default_k}}, exclude := NULL, category := NULL,
                                  strategy := {{default_strategy}}, variant := NULL) as table
select * from rtsql_recommend_core(
    (select user_key from users where user_id = p_user_id),
    (select list(struct_pack(item_key := item_key, weight := weight, event_type := event_type,
                             ts := ts))
     from rtsql_user_history((select user_key from users where user_id = p_user_id))),
    k, exclude, category, strategy, case when variant = 'auto' then ab_variant(p_user_id) else variant end);
