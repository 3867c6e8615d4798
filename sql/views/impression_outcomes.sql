-- impression_outcomes: each impression with the click and purchase attributed to it: the same
-- user's click (or cart) and purchase of the same item within attribution_window_hours after it,
-- each event credited to the latest impression before it (last touch).
create or replace view impression_outcomes as
with window_hours as (
    select coalesce(max(value) filter (where name = 'attribution_window_hours'), {{default:attribution_window_hours}})::DOUBLE as h
    from rtsql_settings
),
credited as (
    select i.user_key, i.item_key, i.ts as impression_ts, e.event_type, e.ts as event_ts
    from events e
    asof join impressions i
      on e.user_key = i.user_key and e.item_key = i.item_key and e.ts >= i.ts
    , window_hours w
    where rtsql_engaged(e.event_type)
      and epoch(e.ts) - epoch(i.ts) <= w.h * 3600
)
select u.user_id, it.item_id, i.ts, i.strategy, i.variant, i.rec_id, i.rank,
       exists (select 1 from credited c where c.user_key = i.user_key and c.item_key = i.item_key
               and c.impression_ts = i.ts and c.event_type in ('click', 'cart')) as clicked,
       exists (select 1 from credited c where c.user_key = i.user_key and c.item_key = i.item_key
               and c.impression_ts = i.ts and c.event_type = 'purchase') as purchased
from impressions i
join users u using (user_key)
join items it using (item_key);
