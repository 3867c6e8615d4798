-- trending: items gaining events: recent-window count times growth over the window before
-- (windows of trending_window_days ending at the latest event), then overall popularity.
create or replace macro trending(k := {{default_k}}) as table
-- Items not available now (rtsql_unavailable) are left out and the rest ranked again.
select row_number() over (order by t.rank_trending) as rank, i.item_id, t.score
from item_trending t join items i using (item_key)
where t.popularity > 0
  and t.rank_trending <= k + (select count(*) from rtsql_unavailable())
  and t.item_key not in (select item_key from rtsql_unavailable())
qualify row_number() over (order by t.rank_trending) <= k
order by 1;
