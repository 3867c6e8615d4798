-- rtsql_unavailable: the keys of the items that may not be shown now: hidden (available false)
-- or outside their window [available_from, available_until), by the wall clock in UTC. Every
-- list served to a user (recommend, recommend_for_items, similar_items, trending,
-- user_recommendations) leaves them out; their events still count in the models.
create or replace macro rtsql_unavailable() as table
select item_key from item_availability
where not available
   or now()::TIMESTAMP < coalesce(available_from, '-infinity'::TIMESTAMP)
   or now()::TIMESTAMP >= coalesce(available_until, 'infinity'::TIMESTAMP);
