-- item_similarity: item-item collaborative-filtering neighbours with string ids: the served
-- lists (top-K per item; ease: its largest weights, which may be negative).
create or replace view item_similarity as
select i.item_id, j.item_id as neighbor_id, n.score, n.rank
from (
    select item_key, unnest(neighbor_keys) as neighbor_key, unnest(scores) as score,
           unnest(generate_series(1, len(neighbor_keys))) as rank
    from item_neighbor_lists
) n
join items i on i.item_key = n.item_key
join items j on j.item_key = n.neighbor_key;
