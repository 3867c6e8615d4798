-- ab_variant: the A/B variant of a user: a stable hash of the id (md5, the same in every DuckDB
-- release) picks one of 10000 buckets, and ab_buckets says which variant owns it (rtsql moves
-- as few buckets as a change of the shares requires: rtsql/allocation.py). NULL when no
-- variants are defined. Applications record it with their impressions.
create or replace macro ab_variant(p_user_id) as (
    select name from ab_buckets
    where bucket = ('0x' || md5(p_user_id)[1:8])::BIGINT % 10000
);
