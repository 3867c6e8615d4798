-- similar_users: a user's nearest neighbours by cosine over their interaction rows.
create or replace macro similar_users(p_user_id, k := {{default_k}}) as table
select n.rank, v.user_id, n.score
from user_neighbors n
join users u on u.user_key = n.user_key
join users v on v.user_key = n.neighbor_key
where u.user_id = p_user_id
  and n.rank <= least(k, coalesce(rtsql_setting('neighbors'), {{default:neighbors}})::INTEGER)
order by n.rank;
