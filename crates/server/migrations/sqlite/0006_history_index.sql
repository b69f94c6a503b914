-- HISTORY's index as blocks, filled behind the commits.
--
-- As an index of `messages`, (conv, mid) put an entry on the newest page of
-- every conversation a commit wrote to, and each such page was written to
-- the WAL and flushed before the ACK. Now an indexer takes the messages
-- above counter 'history' in steps and writes one row per conversation per
-- step, a block: the conversation, its lowest and highest mid in the block,
-- and the mids as a JSON array (at most 256). It moves the counter in the
-- same transaction; HISTORY reads the blocks and scans the short tail above
-- the counter (src/store/sqlite_history.rs). A block may still name a
-- message deleted or hidden since: readers join `messages` on mid and conv.
CREATE TABLE history (
    id    INTEGER PRIMARY KEY,
    conv  TEXT    NOT NULL,
    first INTEGER NOT NULL,
    last  INTEGER NOT NULL,
    mids  TEXT    NOT NULL
);
CREATE INDEX history_by_conv ON history (conv, first);
-- Existing messages: each conversation's in blocks of 256 consecutive ones
-- (the blocks of a conversation never overlap in mids).
INSERT INTO history (conv, first, last, mids)
    SELECT conv, MIN(mid), MAX(mid), json_group_array(mid)
    FROM (SELECT conv, mid,
                 (ROW_NUMBER() OVER (PARTITION BY conv ORDER BY mid) - 1) / 256 AS block
          FROM messages WHERE conv <> 'deleted' ORDER BY conv, mid)
    GROUP BY conv, block ORDER BY MIN(mid);
INSERT INTO counters (name, value)
    SELECT 'history', COALESCE(MAX(mid), 0) FROM messages WHERE true
    ON CONFLICT (name) DO UPDATE SET value = excluded.value;
DROP INDEX messages_by_conv;
-- Account deletion finds the hidden one-to-one messages sent to a user
-- here; no other message has an entry.
CREATE INDEX messages_hidden ON messages (target) WHERE conv = 'deleted';
