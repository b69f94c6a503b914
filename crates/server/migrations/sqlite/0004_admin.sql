-- Operator commands (`chat-server admin ...`), which run in another process
-- while the server runs.
--
-- disabled_at: when an operator disabled the account (NULL: enabled). A
-- disabled account cannot log in.
ALTER TABLE users ADD COLUMN disabled_at INTEGER;

-- What an operator did to an account that live sessions must hear of: every
-- node polls this table (by id, every two seconds) and closes the sessions
-- it holds of the users named. kind is 'disabled', 'deleted' or 'password'.
CREATE TABLE admin_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    userid     INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

-- Counters that outlive the rows they count. Row 'mid' is a floor for the
-- next mid: deleting a user deletes their messages, maybe the newest ones,
-- and a mid must never be handed out twice (clients drop a message whose mid
-- they have seen). MySQL's `counters` table has held the mid all along.
CREATE TABLE counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
