-- clusterchat schema for SQLite. The classic tables keep their meaning
-- (users, friends, allgroup, groupuser); offline messages become a message
-- log plus a per-recipient inbox with a delivery watermark.

CREATE TABLE users (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL UNIQUE,
    password   TEXT    NOT NULL,          -- argon2id PHC string, never plain text
    created_at INTEGER NOT NULL
);

-- Per-user delivery counters: last_seq is the highest seq handed out,
-- acked_seq the highest the user confirmed (cumulative).
CREATE TABLE user_seq (
    userid    INTEGER PRIMARY KEY,
    last_seq  INTEGER NOT NULL DEFAULT 0,
    acked_seq INTEGER NOT NULL DEFAULT 0
);

-- Friendship is mutual: both directions are stored.
CREATE TABLE friends (
    userid   INTEGER NOT NULL,
    friendid INTEGER NOT NULL,
    PRIMARY KEY (userid, friendid)
) WITHOUT ROWID;

CREATE TABLE allgroup (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    groupname  TEXT    NOT NULL UNIQUE,
    groupdesc  TEXT    NOT NULL DEFAULT '',
    creator    INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE groupuser (
    groupid   INTEGER NOT NULL,
    userid    INTEGER NOT NULL,
    grouprole TEXT    NOT NULL DEFAULT 'normal' CHECK (grouprole IN ('creator', 'normal')),
    PRIMARY KEY (groupid, userid)
) WITHOUT ROWID;
CREATE INDEX groupuser_by_user ON groupuser (userid);

-- Every chat message, once. kind is the msgid (6 one-to-one, 10 group),
-- target the recipient user or group, conv the HISTORY key.
CREATE TABLE messages (
    mid         INTEGER PRIMARY KEY,
    sender      INTEGER NOT NULL,
    sender_name TEXT    NOT NULL,
    kind        INTEGER NOT NULL,
    target      INTEGER NOT NULL,
    conv        TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    cmid        TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX messages_by_conv ON messages (conv, mid);
CREATE UNIQUE INDEX messages_by_cmid ON messages (sender, cmid) WHERE cmid IS NOT NULL;

-- One row per recipient per message: the recipient's seq for it.
CREATE TABLE inbox (
    userid INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    mid    INTEGER NOT NULL,
    PRIMARY KEY (userid, seq)
) WITHOUT ROWID;

-- Level-2 login tokens, stored as SHA-256 hashes; single use.
CREATE TABLE tokens (
    hash       TEXT    PRIMARY KEY,
    userid     INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX tokens_by_user ON tokens (userid);
