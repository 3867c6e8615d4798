-- ab_variant: the A/B variant of a user: a stable hash of the id (md5, the same in every DuckDB
-- release) picks a bucket in [0, 1) and the cumulative shares of ab_variants pick the variant.
-- NULL when no variants are defined. Applications record it with their impressions.
create or replace macro ab_variant(p_user_id) as (
    select name from (
        select name, sum(share) over (order by name rows unbounded preceding) as upto
        from ab_variants
    )
    where upto > (('0x' || md5(p_user_id)[1:8])::BIGINT % 10000) / 10000.0
    order by upto limit 1
);
