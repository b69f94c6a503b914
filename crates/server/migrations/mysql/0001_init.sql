-- clusterchat schema for MySQL / MariaDB (10.11 and later, MySQL 8). The same
-- tables as the SQLite schema, plus `counters`, whose one locked row hands out
-- mids so that several server nodes can commit against one database.
-- Every table is utf8mb4 with a binary collation: names compare exactly and
-- Chinese or emoji text round-trips.

CREATE TABLE users (
    id         BIGINT       NOT NULL AUTO_INCREMENT,
    name       VARCHAR(255) NOT NULL,
    password   VARCHAR(255) NOT NULL,   -- argon2id PHC string, never plain text
    created_at BIGINT       NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY users_by_name (name)
) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- Per-user delivery counters: last_seq is the highest seq handed out,
-- acked_seq the highest the user confirmed (cumulative).
CREATE TABLE user_seq (
    userid    BIGINT NOT NULL,
    last_seq  BIGINT NOT NULL DEFAULT 0,
    acked_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (userid)
) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- Friendship is mutual: both directions are stored.
CREATE TABLE friends (
    userid   BIGINT NOT NULL,
    friendid BIGINT NOT NULL,
    PRIMARY KEY (userid, friendid)
) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE allgroup (
    id         BIGINT        NOT NULL AUTO_INCREMENT,
    groupname  VARCHAR(255)  NOT NULL,
    groupdesc  VARCHAR(1000) NOT NULL DEFAULT '',
    creator    BIGINT        NOT NULL,
    created_at BIGINT        NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY allgroup_by_name (groupname)
) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE groupuser (
    groupid   BIGINT      NOT NULL,
    userid    BIGINT      NOT NULL,
    grouprole VARCHAR(16) NOT NULL DEFAULT 'normal',
    PRIMARY KEY (groupid, userid),
    CONSTRAINT grouprole_known CHECK (grouprole IN ('creator', 'normal')),
    KEY groupuser_by_user (userid)
) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- Every chat message, once. kind is the msgid (6 one-to-one, 10 group),
-- target the recipient user or group, conv the HISTORY key. A NULL cmid never
-- collides in the unique key.
CREATE TABLE messages (
    mid         BIGINT       NOT NULL,
    sender      BIGINT       NOT NULL,
    sender_name VARCHAR(255) NOT NULL,
    kind        BIGINT       NOT NULL,
    target      BIGINT       NOT NULL,
    conv        VARCHAR(64)  NOT NULL,
    body        MEDIUMTEXT   NOT NULL,
    cmid        VARCHAR(255) NULL,
    created_at  BIGINT       NOT NULL,
    PRIMARY KEY (mid),
    KEY messages_by_conv (conv, mid),
    UNIQUE KEY messages_by_cmid (sender, cmid)
) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- One row per recipient per message: the recipient's seq for it.
CREATE TABLE inbox (
    userid BIGINT NOT NULL,
    seq    BIGINT NOT NULL,
    mid    BIGINT NOT NULL,
    PRIMARY KEY (userid, seq)
) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- Level-2 login tokens, stored as SHA-256 hashes; single use.
CREATE TABLE tokens (
    hash       VARCHAR(128) NOT NULL,
    userid     BIGINT       NOT NULL,
    expires_at BIGINT       NOT NULL,
    PRIMARY KEY (hash),
    KEY tokens_by_user (userid)
) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- Cluster-wide counters. Row 'mid' holds the highest mid handed out; a commit
-- that stores messages locks it (SELECT ... FOR UPDATE) first, so mids are
-- unique and grow in commit order across every node.
CREATE TABLE counters (
    name  VARCHAR(32) NOT NULL,
    value BIGINT      NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

INSERT INTO counters (name, value) VALUES ('mid', 0);
