-- trending: items gaining events: recent-window count times growth over the window before
-- (windows of trending_window_days ending at the latest event), then overall popularity.
create or replace macro trending(k := 10) as table
select row_number() over (order by t.score desc, t.popularity desc, t.item_key) as rank,
       i.item_id, t.score
from item_trending t join items i using (item_key)
order by rank
limit k;
