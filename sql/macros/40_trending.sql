-- trending: items gaining events: recent-window count times growth over the window before
-- (windows of trending_window_days ending at the latest event), then overall popularity.
create or replace macro trending(k := 10) as table
select t.rank_trending as rank, i.item_id, t.score
from item_trending t join items i using (item_key)
where t.popularity > 0 and t.rank_trending <= k
order by rank;
