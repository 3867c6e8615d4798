-- similar_items: an item's neighbours; method := 'cf' (co-occurrence, default) or 'content'.
create or replace macro similar_items(p_item_id, k := 10, method := 'cf') as table
select n.rank, j.item_id, n.score
from (select item_key, neighbor_key, score, rank, 'cf' as kind from item_neighbors
      union all
      select item_key, neighbor_key, score, rank, 'content' from content_neighbors) n
join items i on i.item_key = n.item_key
join items j on j.item_key = n.neighbor_key
where i.item_id = p_item_id and n.kind = method
  and n.rank <= least(k, coalesce(rtsql_setting('neighbors'), '50')::INTEGER)
order by n.rank;
