-- 0003_tail: what `rtsql tail` needs to follow files across rotation, truncation and inode
-- reuse: how many leading bytes head_sha256 covers, and whether a file is still followed.
alter table source_files add column head_len INTEGER;
alter table source_files add column status VARCHAR DEFAULT 'active';
-- active: followed; drained: renamed away and read to its end; truncated: a new generation of
-- the file was started; gone: deleted or its inode reused before it was read to the end.
-- hash of the TAIL_BYTES before end_offset, committed with the offset: resuming needs both ends
alter table source_files add column tail_sha256 VARCHAR;
