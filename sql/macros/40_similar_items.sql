-- similar_items: an item's neighbours; method := 'cf' (co-occurrence, default) or 'content'.
-- The cf lists are read by key from item_neighbor_lists (an index lookup, not a scan).
create or replace macro similar_items(p_item_id, k := {{default_k}}, method := {{default_method}}) as table
with i as (select item_key from items where item_id = p_item_id),
n as (
    select unnest(generate_series(1, len(l.neighbor_keys))) as rank,
           unnest(l.neighbor_keys) as neighbor_key, unnest(l.scores) as score
    from item_neighbor_lists l
    where method = 'cf' and l.item_key = (select item_key from i)
    union all
    select rank, neighbor_key, score from content_neighbors
    where method = 'content' and item_key = (select item_key from i)
)
-- items not available now (rtsql_unavailable) are left out and the rest ranked again
select row_number() over (order by n.rank) as rank, j.item_id, n.score
from n join items j on j.item_key = n.neighbor_key
where n.neighbor_key not in (select item_key from rtsql_unavailable())
qualify row_number() over (order by n.rank) <= k  -- both tables hold the served K only
order by 1;
