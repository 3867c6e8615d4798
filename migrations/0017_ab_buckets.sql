-- 0017_ab_buckets: A/B assignment through stored hash buckets, and the record of every change
-- of the shares (manual or by the bandit of `rtsql variants --auto`).
--
-- A user's bucket is md5(user_id) mod 10000; each bucket belongs to one variant. When the
-- shares change, only as many buckets as the change requires move, from the variants that lose
-- share to those that gain it (rtsql/allocation.py), so a user changes variant only when the
-- shares make it necessary. The buckets of existing variants are those the cumulative shares
-- gave before: nobody changes variant with this migration.
create table ab_buckets (
    bucket  INTEGER PRIMARY KEY,  -- 0 .. 9999
    name    VARCHAR NOT NULL   -- the variant
);
insert into ab_buckets
select b.bucket, (select name from (
                      select name, sum(share) over (order by name rows unbounded preceding) as upto
                      from ab_variants)
                  where upto > b.bucket / 10000.0 order by upto limit 1) as name
from range(10000) b(bucket)
where exists (select 1 from ab_variants);
delete from ab_buckets where name is null;

-- One row per variant each time the shares changed: what they became and the evidence.
create table ab_allocations (
    changed_at  TIMESTAMP NOT NULL,
    variant     VARCHAR NOT NULL,
    share       DOUBLE NOT NULL,
    reason      VARCHAR NOT NULL,  -- manual | auto:clicks | auto:purchases
    impressions BIGINT,            -- auto: the evidence within ab_auto_window_hours
    successes   BIGINT,
    rate        DOUBLE,            -- successes / impressions
    rate_low    DOUBLE,            -- 95% credible interval of the rate (Beta posterior)
    rate_high   DOUBLE,
    p_best      DOUBLE             -- posterior probability that this variant is the best
);
