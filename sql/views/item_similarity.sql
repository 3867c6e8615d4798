-- item_similarity: item-item collaborative-filtering neighbours (top-K per item) with string ids.
create or replace view item_similarity as
select i.item_id, j.item_id as neighbor_id, n.score, n.rank
from item_neighbors n
join items i on i.item_key = n.item_key
join items j on j.item_key = n.neighbor_key
-- lists may store a buffer beyond the served K (setting list_buffer)
where n.rank <= (select value::INTEGER from rtsql_settings where name = 'neighbors');
