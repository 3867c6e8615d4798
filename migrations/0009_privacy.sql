-- 0009_privacy: what `rtsql forget` needs to keep its promises (docs/design.md, "Forget").

-- Keys of forgotten users. A key names one person for good: new users never get one of these
-- (a later user must not inherit anything still keyed by it, e.g. in an old export).
create table forgotten_users (
    user_key     INTEGER PRIMARY KEY,
    forgotten_at TIMESTAMP NOT NULL
);

-- Every file a snapshot was published to, so that forget can republish each of them (or drop
-- the ones that are gone) instead of leaving the forgotten user in a reader's copy.
create table snapshot_targets (
    path          VARCHAR PRIMARY KEY,
    registered_at TIMESTAMP NOT NULL
);
