-- unavailable_items: the items no list shows now (rtsql_unavailable), with their ids and why.
create or replace view unavailable_items as
select i.item_id, a.available, a.available_from, a.available_until, a.updated_at
from rtsql_unavailable() u
join item_availability a using (item_key)
join items i using (item_key);
