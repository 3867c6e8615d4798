-- user_recommendations: every user's top-k (rank, item, score, reason), the rows
-- recommend(user_id, k) returns, written by each refresh when the setting
-- materialize_recommendations is on (empty otherwise). Ids and the reason text (rtsql_reason,
-- the macro's) are joined here from the scorer's integer rows. Items not available now
-- (rtsql_unavailable), and repeats the user has been shown too often (rtsql_suppressed), are
-- left out, and the rest of a user's rows ranked again.
create or replace view user_recommendations as
select r.user_key, u.user_id,
       row_number() over (partition by r.user_key order by r.rank) as rank, i.item_id, r.score,
       rtsql_reason(r.part, r.because_type, coalesce(c.title, b.item_id)) as reason
from user_recommendation_rows r
join users u using (user_key)
join items i on i.item_key = r.item_key
left join items b on b.item_key = r.because_key
left join item_catalog c on c.item_key = r.because_key
where r.item_key not in (select item_key from rtsql_unavailable())
  and (r.user_key, r.item_key) not in (select (user_key, item_key) from rtsql_suppressed(NULL, NULL));
