-- user_similarity: user-user collaborative-filtering neighbours (top-K per user) with string ids.
create or replace view user_similarity as
select u.user_id, v.user_id as neighbor_id, n.score, n.rank
from user_neighbors n
join users u on u.user_key = n.user_key
join users v on v.user_key = n.neighbor_key
-- lists may store a buffer beyond the served K (setting list_buffer)
where n.rank <= (select value::INTEGER from rtsql_settings where name = 'neighbors');
