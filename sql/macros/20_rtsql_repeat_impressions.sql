-- rtsql_repeat_impressions: the impressions after p_since that no click or better has
-- answered: each (user, item, ts) shown later than the user's latest engaged event
-- (rtsql_engaged) on that item, if any; of the user p_user_key, or of everyone when NULL (the
-- filter is repeated on events: a recommend() call must not join every user's clicks).
-- rtsql_suppressed counts them; the server loads them (rtsql.suppression) to apply the same
-- rule in memory.
create or replace macro rtsql_repeat_impressions(p_since, p_user_key) as table
with shown as (
    select user_key, item_key, ts from impressions
    where ts > p_since and (p_user_key is null or user_key = p_user_key)
),
engaged as (
    select e.user_key, e.item_key, max(e.ts) as ts
    from events e semi join shown s using (user_key, item_key)
    where rtsql_engaged(e.event_type) and (p_user_key is null or e.user_key = p_user_key)
    group by e.user_key, e.item_key
)
select s.user_key, s.item_key, s.ts
from shown s left join engaged g using (user_key, item_key)
where g.ts is null or s.ts > g.ts;
