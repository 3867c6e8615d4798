-- Reference for tests: the straightforward formulation of recommend(), which
-- scores every item in one pool. The served macro works on candidates only; tests check that
-- both give the same rows. Installed as temp macros, so it never reaches a database file.
-- rtsql_recommend_core: the hybrid scorer behind recommend() and recommend_for_items().
-- p_hist is the history as a list of {item_key, weight, event_type, ts}. Each strategy's scores
-- are scaled to [0, 1] and blended with the weight_* settings (or one strategy alone, when
-- p_strategy is item, user, content or trending); every item stays in the pool with its
-- popularity, so k rows come back whenever k items pass the filters.
-- p_variant (an ab_variants name, or NULL) overrides serving settings with its own.
create or replace temp macro rtsql_recommend_core_old(p_user_key, p_hist, k, p_exclude, p_category,
                                             p_strategy, p_variant) as table
with vs as (
    select coalesce((select settings from ab_variants where name = p_variant), '{}') as o
),
cfg as (
    select case when p_strategy = 'hybrid'
                then coalesce(json_extract_string(vs.o, '$.weight_item_cf'),
                              rtsql_setting('weight_item_cf'), '1')::DOUBLE
                else (p_strategy = 'item')::DOUBLE end as w_item,
           case when p_strategy = 'hybrid'
                then coalesce(json_extract_string(vs.o, '$.weight_user_cf'),
                              rtsql_setting('weight_user_cf'), '0.3')::DOUBLE
                else (p_strategy = 'user')::DOUBLE end as w_user,
           case when p_strategy = 'hybrid'
                then coalesce(json_extract_string(vs.o, '$.weight_content'),
                              rtsql_setting('weight_content'), '0.1')::DOUBLE
                else (p_strategy = 'content')::DOUBLE end as w_content,
           case when p_strategy = 'hybrid'
                then coalesce(json_extract_string(vs.o, '$.weight_trending'),
                              rtsql_setting('weight_trending'), '0.05')::DOUBLE
                else (p_strategy = 'trending')::DOUBLE end as w_trend,
           coalesce(json_extract_string(vs.o, '$.exclude_seen'),
                    rtsql_setting('exclude_seen'), 'true')::BOOLEAN as exclude_seen,
           coalesce(json_extract_string(vs.o, '$.recency_half_life_days'),
                    rtsql_setting('recency_half_life_days'), '0')::DOUBLE as recency,
           -- lists store a buffer beyond the K that is served
           coalesce(rtsql_setting('neighbors'), '50')::INTEGER as served,
           coalesce(rtsql_setting('max_history'), '500')::INTEGER as max_history
    from vs
),
hist as (
    select h.item_key, h.weight, h.event_type, h.ts
    from (select unnest(p_hist) as h)
),
latest as (select max(ts) as t from hist),
h as (
    select item_key, event_type,
           weight * case when cfg.recency > 0
                         then pow(2.0, -(epoch(latest.t) - epoch(ts)) / (86400 * cfg.recency))
                         else 1 end as w
    from (select *, row_number() over (order by ts desc, item_key desc) as recent from hist),
         latest, cfg
    where weight > 0 and (cfg.max_history = 0 or recent <= cfg.max_history)
),
item_cf as (
    select n.neighbor_key as item_key, fsum(h.w * n.score) as score,
           arg_max(h.item_key, (h.w * n.score, -h.item_key)) as because
    from h join (select item_key, unnest(neighbor_keys) as neighbor_key,
                        unnest(scores) as score from item_neighbor_lists) n
         on n.item_key = h.item_key group by all
),
user_cf as (
    select i.item_key, fsum(s.score * i.weight) as score, NULL::INTEGER as because
    from user_neighbors s, cfg,
         (select *, row_number() over (partition by user_key
                                       order by last_ts desc, item_key desc) as recent
          from interactions) i
    where i.user_key = s.neighbor_key and s.user_key = p_user_key and s.rank <= cfg.served
      and i.weight > 0 and (cfg.max_history = 0 or i.recent <= cfg.max_history)
    group by all
),
content as (
    select n.neighbor_key as item_key, fsum(h.w * n.score) as score,
           arg_max(h.item_key, (h.w * n.score, -h.item_key)) as because
    from h join content_neighbors n on n.item_key = h.item_key group by all
),
parts as (
    select item_key, 'item-cf' as part, because,
           score / nullif(greatest(max(score) over (), 0), 0) * cfg.w_item as s
    from item_cf, cfg where cfg.w_item > 0
    union all
    select item_key, 'user-cf', because,
           score / nullif(greatest(max(score) over (), 0), 0) * cfg.w_user
    from user_cf, cfg where cfg.w_user > 0
    union all
    select item_key, 'content', because,
           score / nullif(greatest(max(score) over (), 0), 0) * cfg.w_content
    from content, cfg where cfg.w_content > 0
    union all
    select item_key, 'trending', NULL,
           score / max(score) over () * cfg.w_trend from item_trending, cfg
    where cfg.w_trend > 0 and score > 0
),
-- added in a fixed order (not sum()), so every client gets bit-identical scores
blend as (
    select item_key,
           coalesce(max(s) filter (where part = 'item-cf'), 0)
           + coalesce(max(s) filter (where part = 'user-cf'), 0)
           + coalesce(max(s) filter (where part = 'content'), 0)
           + coalesce(max(s) filter (where part = 'trending'), 0) as score,
           -- ties go to item-cf, then user-cf, content, trending (the served macro's order)
           arg_max(struct_pack(part := part, because := because),
                   (s, case part when 'item-cf' then 4 when 'user-cf' then 3
                                 when 'content' then 2 else 1 end)) as win
    from parts where s <> 0 group by item_key
),
pool as (
    select i.item_key, i.item_id, coalesce(b.score, 0) as score,
           coalesce(b.win.part, 'popular') as part, b.win.because as because,
           coalesce(t.popularity, 0) as popularity
    from items i
    left join blend b using (item_key)
    left join item_trending t using (item_key)
    left join item_catalog c using (item_key)
    , cfg
    where (not cfg.exclude_seen or i.item_key not in (select item_key from hist))
      and not list_contains(coalesce(p_exclude, []::VARCHAR[]), i.item_id)
      and (p_category is null or c.category = p_category)
),
ranked as (
    select *, row_number() over (order by score desc, popularity desc, item_key) as rank
    from pool qualify rank <= k
)
select r.rank, r.item_id, r.score,
       case r.part
           when 'item-cf' then 'item-cf: because you ' || rtsql_verb(hh.event_type) || ' '
                               || coalesce(bc.title, bi.item_id)
           when 'content' then 'content: similar to ' || coalesce(bc.title, bi.item_id)
                               || ', which you ' || rtsql_verb(hh.event_type)
           when 'user-cf' then 'user-cf: people with similar taste liked it'
           when 'trending' then 'trending: popular right now'
           else 'popular: most events overall'
       end as reason
from ranked r
left join items bi on bi.item_key = r.because
left join item_catalog bc on bc.item_key = r.because
left join hist hh on hh.item_key = r.because
order by r.rank;

-- recommend: top-k items for a user (string id), with a reason per row. Pure SQL over stored
-- tables, so any DuckDB client can call it: SELECT * FROM recommend('user-42', 10).
-- Unknown users get trending and popular items. exclude: item ids to leave out; category: only
-- items of that catalog category; strategy: hybrid (default), item, user, content or trending;
-- variant: an A/B variant's serving settings ('auto': the user's own, from ab_variant()).
create or replace temp macro recommend_old(p_user_id, k := 10, exclude := NULL, category := NULL,
                                  strategy := 'hybrid', variant := NULL) as table
select * from rtsql_recommend_core_old(
    (select user_key from users where user_id = p_user_id),
    (select list(struct_pack(item_key := item_key, weight := weight, event_type := event_type,
                             ts := ts))
     from rtsql_user_history((select user_key from users where user_id = p_user_id))),
    k, exclude, category, strategy, case when variant = 'auto' then ab_variant(p_user_id) else variant end);
