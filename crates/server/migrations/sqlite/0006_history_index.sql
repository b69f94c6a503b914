-- The HISTORY index as a table of its own, filled behind the commits.
--
-- As an index of `messages`, (conv, mid) put an entry on the newest page of
-- every conversation a commit wrote to, and each such page was written to
-- the WAL and flushed before the ACK. Now an indexer copies (conv, mid) of
-- the messages above counter 'history' into this table in bulk, sorted, and
-- moves the counter in the same transaction; HISTORY reads the table and
-- scans the short tail above the counter (src/store/sqlite_history.rs).
-- Hidden messages (conv 'deleted') are never indexed here.
CREATE TABLE history (
    conv TEXT    NOT NULL,
    mid  INTEGER NOT NULL,
    PRIMARY KEY (conv, mid)
) WITHOUT ROWID;
INSERT INTO history (conv, mid)
    SELECT conv, mid FROM messages WHERE conv <> 'deleted' ORDER BY conv, mid;
INSERT INTO counters (name, value)
    SELECT 'history', COALESCE(MAX(mid), 0) FROM messages WHERE true
    ON CONFLICT (name) DO UPDATE SET value = excluded.value;
DROP INDEX messages_by_conv;
-- Account deletion finds the hidden one-to-one messages sent to a user
-- here; no other message has an entry.
CREATE INDEX messages_hidden ON messages (target) WHERE conv = 'deleted';
