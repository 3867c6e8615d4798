-- 0006_neighbor_buffer: neighbour lists store up to twice the served K, so an incremental refresh
-- can refill a list from its own buffer instead of recomputing it; complete marks a list that
-- holds every positive neighbour of its row (nothing ranks below its last entry unseen).
alter table item_neighbors add column complete BOOLEAN DEFAULT true;
alter table user_neighbors add column complete BOOLEAN DEFAULT true;
