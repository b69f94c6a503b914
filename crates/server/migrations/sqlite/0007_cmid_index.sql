-- The exactly-once index, (sender, cmid) to mid, filled behind the commits.
--
-- As a unique index of `messages` it put an entry at every sender's place
-- in the index, so a commit of 200 senders' messages wrote and flushed a
-- page per sender: for clients that send a cmid, as ours all do, that was
-- 2.6 times the bytes written per message and 40 % of the throughput
-- (BENCHMARKS.md, issue 9, seventh pass). Now the writer keeps the keys of
-- new messages in memory and writes them here in bulk, and moves the
-- counter 'cmids' to the newest mid it covers: every message at or below it
-- is here, every one above it in the writer's memory
-- (src/store/sqlite_cmids.rs).
CREATE TABLE cmids (
    sender INTEGER NOT NULL,
    cmid   TEXT    NOT NULL,
    mid    INTEGER NOT NULL,
    PRIMARY KEY (sender, cmid)
) WITHOUT ROWID;
INSERT INTO cmids (sender, cmid, mid)
    SELECT sender, cmid, mid FROM messages
    WHERE cmid IS NOT NULL AND conv <> 'deleted' ORDER BY sender, cmid;
INSERT INTO counters (name, value)
    SELECT 'cmids', COALESCE(MAX(mid), 0) FROM messages WHERE true
    ON CONFLICT (name) DO UPDATE SET value = excluded.value;
DROP INDEX messages_by_cmid;
