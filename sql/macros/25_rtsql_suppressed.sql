-- rtsql_suppressed: the (user, item) pairs left out of that user's lists for now ("no
-- repeats"): the item was shown to the user at least N times within the last H hours with no
-- click or better since (rtsql_repeat_impressions), so a click lifts it. N and H are the
-- settings suppress_after_impressions (0: off) and suppress_window_hours, which the A/B
-- variant p_variant may override; for the user p_user_key, or everyone when NULL.
-- recommend() and user_recommendations leave these out; the server applies the same rule in
-- memory (rtsql.suppression).
create or replace macro rtsql_suppressed(p_variant, p_user_key) as table
with cfg as (
    select coalesce(json_extract_string(o, '$.suppress_after_impressions'), n,
                    {{default:suppress_after_impressions}})::INTEGER as n,
           coalesce(json_extract_string(o, '$.suppress_window_hours'), h,
                    {{default:suppress_window_hours}})::DOUBLE as h
    from (
        select max(value) filter (where name = 'suppress_after_impressions') as n,
               max(value) filter (where name = 'suppress_window_hours') as h,
               coalesce((select settings from ab_variants where name = p_variant), '{}') as o
        from rtsql_settings
    )
)
select r.user_key, r.item_key
from rtsql_repeat_impressions(
         -- no window at all when off (NULL: no impression is after it)
         (select case when n > 0 then now()::TIMESTAMP - to_microseconds((h * 3600e6)::BIGINT)
                 end from cfg),
         p_user_key) r
group by r.user_key, r.item_key
having count(*) >= (select n from cfg);
