-- rtsql_user_history: a user's current interaction row, so recommendations are real time:
-- the refreshed interactions plus the events ingested since the last refresh (same weights,
-- same forward decay), before any neighbour list is refreshed. Deterministic, so every client
-- (and the HTTP server's in-memory scorer) gets the same row: the weights are added with fsum,
-- and the latest event names the type, ties on ts going to the later event (the refresh's
-- rule: the stored row counts as earlier than every pending event).
create or replace macro rtsql_user_history(p_user_key) as table
with st as (
    select coalesce(max(value) filter (where name = 'watermark'), '-1')::BIGINT as watermark,
           coalesce(max(value) filter (where name = 't0'), '0')::DOUBLE as t0,
           coalesce(max(value) filter (where name = 'decay_rate'), '0')::DOUBLE as rate
    from model_state
),
parts as (
    select item_key, weight, last_event_type as event_type, last_ts as ts, -1::BIGINT as ord
    from interactions where user_key = p_user_key
    union all
    select e.item_key, rtsql_event_weight(et.weight, et.uses_value, e.value, e.ts, st.rate, st.t0),
           e.event_type, e.ts, e.event_id
    from events e join event_types et using (event_type), st
    where e.user_key = p_user_key and e.event_id > st.watermark
)
select item_key, fsum(weight) as weight, arg_max(event_type, (ts, ord)) as event_type,
       max(ts) as ts
from parts group by item_key;
