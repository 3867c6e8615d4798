-- 0018_journal_position: how far serve's journal (rtsql/journal.py) is in the database.
--
-- `POST /events?wait=durable` is answered once its body is synced to <database>.journal; the
-- writer loads journaled bodies later and sets `applied` to the last one's sequence in the
-- same transaction as their events, so after a crash serve loads exactly the bodies above it.
create table journal_position (
    applied BIGINT NOT NULL  -- one row: every journaled body up to this sequence is loaded
);
insert into journal_position values (0);
