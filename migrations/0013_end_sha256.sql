-- 0013_end_sha256: source_files.tail_sha256 said "tail" (of what?) for the hash of the bytes
-- just before end_offset, which identifies the file when the tail resumes it. The name now
-- pairs with end_offset and end_line.
alter table source_files rename column tail_sha256 to end_sha256;
