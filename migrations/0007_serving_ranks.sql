-- 0007_serving_ranks: item_trending holds every item (zeros for items without events) with its
-- trending share (score / max score) and two precomputed orders, so recommend() takes its
-- backfill from the top of a ranking instead of sorting every item per call.
alter table item_trending add column share DOUBLE DEFAULT 0;
-- order of (share desc, popularity desc, item_key): the backfill when trending is blended in
alter table item_trending add column rank_trending INTEGER DEFAULT 0;
-- order of (popularity desc, item_key): the backfill when it is not
alter table item_trending add column rank_popular INTEGER DEFAULT 0;

-- recommend() reads the interactions of a user and of its neighbours: point lookups
create index interactions_user on interactions (user_key);

-- The served part of item_neighbors (rank <= K), one row per item, keyed: recommend() fetches the
-- lists of a user's history items through the index instead of scanning every list entry.
create table item_neighbor_lists (
    item_key      INTEGER PRIMARY KEY,
    neighbor_keys INTEGER[] NOT NULL,  -- by rank
    scores        DOUBLE[] NOT NULL
);
