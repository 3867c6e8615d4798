-- rtsql_recommend_core: the hybrid scorer behind recommend() and recommend_for_items().
-- p_hist is the history as a list of {item_key, weight, event_type, ts}. Each strategy's scores
-- are scaled by its best candidate (to at most 1; item-cf lists may hold negative weights, e.g.
-- ease's, and then so may its scores) and blended with the weight_* settings (or one strategy alone, when
-- p_strategy is item, user, content or trending); items no strategy scored are backfilled from
-- the precomputed trending / popularity order, so k rows come back whenever k items pass the
-- filters. p_variant (an ab_variants name, or NULL) overrides serving settings with its own.
-- Every step works on the user's candidates, never on every item: that keeps a call at a few
-- milliseconds on large catalogs (and few joins keep DuckDB's planning short).
create or replace macro rtsql_recommend_core(p_user_key, p_hist, k, p_exclude, p_category,
                                             p_strategy, p_variant) as table
with cfg as (
    -- per strategy (rtsql.vocabulary.BLENDED): its weight setting under the default strategy
    -- (hybrid), else 1 for the strategy asked for and 0 for the others
    select {{blend_weights}}
           coalesce(json_extract_string(o, '$.exclude_seen'), exclude_seen, {{default:exclude_seen}})::BOOLEAN
               as exclude_seen,
           coalesce(json_extract_string(o, '$.recency_half_life_days'), recency, {{default:recency_half_life_days}})::DOUBLE
               as recency,
           coalesce(json_extract_string(o, '$.explore_new_items'), explore, {{default:explore_new_items}})::INTEGER
               as explore,
           coalesce(json_extract_string(o, '$.new_item_days'), new_days, {{default:new_item_days}})::DOUBLE
               as new_days,
           coalesce(served, {{default:neighbors}})::INTEGER as served,  -- user lists store a buffer beyond K
           coalesce(max_history, {{default:max_history}})::INTEGER as max_history
    from (
        -- every setting in one scan; the variant's JSON overrides them
        select {{blend_settings}}
               max(value) filter (where name = 'exclude_seen') as exclude_seen,
               max(value) filter (where name = 'recency_half_life_days') as recency,
               max(value) filter (where name = 'explore_new_items') as explore,
               max(value) filter (where name = 'new_item_days') as new_days,
               max(value) filter (where name = 'neighbors') as served,
               max(value) filter (where name = 'max_history') as max_history,
               coalesce((select settings from ab_variants where name = p_variant), '{}') as o
        from rtsql_settings
    )
),
hist as materialized (select unnest(p_hist, recursive := true)),
-- h: the positive items among the user's max_history most recent (the row the refresh's
-- similarities were computed on: rtsql/refresh.py _CAPPED), optionally weighted by recency
h as (
    select item_key,
           weight * case when cfg.recency > 0
                         then pow(2.0, -(epoch(max(ts) over ()) - epoch(ts)) / (86400 * cfg.recency))
                         else 1 end as w
    from (select *, row_number() over (order by ts desc, item_key desc) as recent from hist) r, cfg
    where weight > 0 and (cfg.max_history = 0 or recent <= cfg.max_history)
),
-- (candidate, strategy, history item behind it, score contribution); item_neighbor_lists
-- holds exactly the served lists
scored as (
    select unnest(l.neighbor_keys) as item_key, 'item-cf' as part,
           l.item_key as because, h.w * unnest(l.scores) as s
    from h join item_neighbor_lists l using (item_key), cfg
    where cfg.w_item > 0
    union all
    -- each neighbour's capped row, as its similarity saw it
    select n.item_key, 'user-cf', NULL, n.s from (
        select i.item_key, i.weight, s.score * i.weight as s,
               row_number() over (partition by i.user_key
                                  order by i.last_ts desc, i.item_key desc) as recent
        from user_neighbors s join interactions i on i.user_key = s.neighbor_key, cfg
        where cfg.w_user > 0 and s.user_key = p_user_key and s.rank <= cfg.served
    ) n, cfg
    where n.weight > 0 and (cfg.max_history = 0 or n.recent <= cfg.max_history)
    union all
    select n.neighbor_key, 'content', n.item_key, h.w * n.score
    from h join content_neighbors n using (item_key), cfg
    where cfg.w_content > 0
),
excluded as (
    select item_key from hist, cfg where cfg.exclude_seen
    union all
    select item_key from items
    where p_exclude is not null and list_contains(p_exclude, item_id)
    union all
    select item_key from rtsql_unavailable()  -- hidden or outside their window
    union all
    -- repeats shown to this user (none for a basket: no user; NULL would mean every user)
    select item_key from rtsql_suppressed(p_variant, coalesce(p_user_key, -1))
),
-- one row per candidate: each strategy's sum, scaled by its best candidate (NULL where the
-- strategy did not score it, or where no candidate's sum is positive), times its blend weight;
-- added in a fixed order (not sum()), so every client gets bit-identical scores
-- (trending is added last, in ranked); the history item behind a strategy's sum is the one that
-- added the most, ties going to the smallest key
per_part as (
    select item_key,
           fsum(s) filter (where part = 'item-cf') as item_s,
           arg_max(because, (s, -because)) filter (where part = 'item-cf') as item_because,
           fsum(s) filter (where part = 'user-cf') as user_s,
           fsum(s) filter (where part = 'content') as content_s,
           arg_max(because, (s, -because)) filter (where part = 'content') as content_because
    from scored group by item_key
),
scaled as (
    select item_key, item_because, content_because,
           nullif(item_s / nullif(greatest(max(item_s) over (), 0), 0) * cfg.w_item, 0) as si,
           nullif(user_s / nullif(greatest(max(user_s) over (), 0), 0) * cfg.w_user, 0) as su,
           nullif(content_s / nullif(greatest(max(content_s) over (), 0), 0) * cfg.w_content, 0)
               as sc
    from per_part, cfg
),
-- every candidate some strategy scored, negative sums included (they rank below the backfill)
blend as (
    select item_key, coalesce(si, 0) + coalesce(su, 0) + coalesce(sc, 0) as score,
           -- the strategy that added the most explains the row
           case when si >= coalesce(su, si) and si >= coalesce(sc, si)
                then struct_pack(part := 'item-cf', because := item_because, s := si)
                when su >= coalesce(sc, su)
                then struct_pack(part := 'user-cf', because := NULL::INTEGER, s := su)
                else struct_pack(part := 'content', because := content_because, s := sc)
           end as win
    from scaled where si is not null or su is not null or sc is not null
),
-- the best items no strategy scored, k of them: the stored backfill order, then items new since
-- the last refresh (keys only grow; not ranked yet, popularity 0), which rank after every
-- ranked item in both orders
backfill as (
    select b.item_key from (
        select t.item_key, case when cfg.w_trend > 0 then t.rank_trending
                                else t.rank_popular end as ord
        from item_trending t, cfg
        union all
        select i.item_key, i.item_key::BIGINT + 4294967296 as ord from items i
        where i.item_key > (select coalesce(max(item_key), -1) from item_trending)
    ) b
    where b.item_key not in (select item_key from blend)
      and b.item_key not in (select item_key from excluded)
      and (p_category is null
           or b.item_key in (select item_key from item_catalog where category = p_category))
    order by b.ord
    limit k
),
pool as (
    select item_key, score, win from blend
    where item_key not in (select item_key from excluded)
      and (p_category is null
           or item_key in (select item_key from item_catalog where category = p_category))
    union all
    select item_key, 0, NULL from backfill
),
ranked as (
    select p.item_key, p.win,
           p.score + coalesce(t.share, 0) * cfg.w_trend as score,
           coalesce(t.share, 0) * cfg.w_trend as trend,
           row_number() over (order by p.score + coalesce(t.share, 0) * cfg.w_trend desc,
                                       coalesce(t.popularity, 0) desc, p.item_key) as rank
    from pool p left join item_trending t using (item_key), cfg
    qualify rank <= k
),
-- new-item slots (explore_new_items): items first seen within new_item_days
is_new as (
    select n.item_key, n.first_seen from items n, cfg
    where cfg.explore > 0
      and n.first_seen > now()::TIMESTAMP - to_microseconds((cfg.new_days * 86400e6)::BIGINT)
),
-- as many new items as the list's own fall short of explore: those most similar in content to
-- the history (the content strategy's sum), then the newest, then the smallest key
slots as (
    select f.item_key,
           row_number() over (order by coalesce(pp.content_s, 0) desc, f.first_seen desc,
                                       f.item_key) as pick
    from is_new f left join per_part pp using (item_key)
    where f.item_key not in (select item_key from ranked)
      and f.item_key not in (select item_key from excluded)
      and (p_category is null
           or f.item_key in (select item_key from item_catalog where category = p_category))
    qualify pick <= (select least(explore, k) from cfg)
                    - (select count(*) from ranked semi join is_new using (item_key))
),
listed as (
    -- the ranked rows, less as many of the lowest-ranked ones that are not new as the slots
    -- need room for, then the slots; the reason is the strategy that added the most
    -- (trending when nothing else did)
    select item_key, rank, score, part, because from (
        select item_key, rank, score,
               case when win is not null and (win.s >= trend or trend <= 0) then win.part
                    when trend > 0 then 'trending' else 'popular' end as part,
               case when win is not null and (win.s >= trend or trend <= 0) then win.because end
                   as because,
               item_key in (select item_key from is_new) as new,
               row_number() over (partition by item_key in (select item_key from is_new)
                                  order by rank desc) as from_end
        from ranked
    )
    where new or from_end > (select count(*) from slots) - (k - (select count(*) from ranked))
    union all
    select item_key, k + pick, 0.0, 'new', NULL from slots
)
select row_number() over (order by r.rank) as rank, i.item_id, r.score,
       rtsql_reason(r.part, hh.event_type, coalesce(bc.title, bi.item_id)) as reason
from listed r
join items i on i.item_key = r.item_key
left join items bi on bi.item_key = r.because
left join item_catalog bc on bc.item_key = r.because
left join hist hh on hh.item_key = r.because
order by r.rank;
