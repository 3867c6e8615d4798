-- 0015_item_availability: items a shop cannot sell now (sold out, withdrawn, not yet on sale)
-- must leave every list at once, without a refresh. One row per item that was ever hidden or
-- given a window (`rtsql item hide`, POST /items/{id}/hide, the catalog's available,
-- available_from and available_until columns); an item without a row is available. The models
-- keep counting the item's events: only the lists served to users leave it out.
create table item_availability (
    item_key INTEGER PRIMARY KEY,
    available BOOLEAN NOT NULL,
    available_from TIMESTAMP,   -- UTC; NULL: no start
    available_until TIMESTAMP,  -- UTC, exclusive; NULL: no end
    updated_at TIMESTAMP NOT NULL
);
