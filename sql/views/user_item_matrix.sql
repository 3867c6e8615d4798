-- user_item_matrix: the interaction matrix with string ids, for BI tools and ad-hoc SQL.
-- weight is the sum of event-type weights (forward-decayed against model_state.t0 when
-- half_life_days is set); events is how many events made it; last_ts the latest.
create or replace view user_item_matrix as
select u.user_id, i.item_id, m.weight, m.events, m.last_ts
from interactions m
join users u using (user_key)
join items i using (item_key);
