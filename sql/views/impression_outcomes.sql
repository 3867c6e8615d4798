-- impression_outcomes: each impression with the click and purchase attributed to it: the same
-- user's click (or cart) and purchase of the same item within attribution_window_hours after it,
-- each event credited to the latest impression before it (last touch).
-- Only events on a (user, item) pair that was ever shown, after the first impression, can be
-- credited, so they are picked first (a semi join on the shown pairs) and the ASOF join sorts
-- those, not every event.
create or replace view impression_outcomes as
with window_hours as (
    select coalesce(max(value) filter (where name = 'attribution_window_hours'), {{default:attribution_window_hours}})::DOUBLE as h
    from rtsql_settings
),
shown as (
    select distinct user_key, item_key from impressions
),
engaged as (
    select e.user_key, e.item_key, e.event_type, e.ts
    from events e
    semi join shown s on e.user_key = s.user_key and e.item_key = s.item_key
    where rtsql_engaged(e.event_type)
      and e.ts >= (select min(ts) from impressions)  -- skips whole row groups by their ts range
),
credited as (
    select i.user_key, i.item_key, i.ts as impression_ts,
           bool_or(e.event_type in ({{click_types}})) as clicked,
           bool_or(e.event_type in ({{purchase_types}})) as purchased
    from engaged e
    asof join impressions i
      on e.user_key = i.user_key and e.item_key = i.item_key and e.ts >= i.ts
    , window_hours w
    where epoch(e.ts) - epoch(i.ts) <= w.h * 3600
    group by all
)
select u.user_id, it.item_id, i.ts, i.strategy, i.variant, i.rec_id, i.rank,
       coalesce(c.clicked, false) as clicked, coalesce(c.purchased, false) as purchased
from impressions i
left join credited c
  on c.user_key = i.user_key and c.item_key = i.item_key and c.impression_ts = i.ts
join users u on u.user_key = i.user_key
join items it on it.item_key = i.item_key;
