-- 0016_item_first_seen: when rtsql first saw each item, for the new-item slots of recommend()
-- (setting explore_new_items): the time of its first event when an event brought it, the
-- time it got its key when the catalog or an impression did. Items from before this get
-- their first event's time, else their catalog row's time.
alter table items add column first_seen TIMESTAMP;
update items set first_seen = f.ts
from (select item_key, min(ts) as ts from events group by item_key) f
where items.item_key = f.item_key;
update items set first_seen = c.updated_at
from item_catalog c
where items.item_key = c.item_key and items.first_seen is null;
