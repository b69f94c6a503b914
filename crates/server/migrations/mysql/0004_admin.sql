-- Operator commands (`chat-server admin ...`), which run in another process
-- while the server runs.
--
-- disabled_at: when an operator disabled the account (NULL: enabled). A
-- disabled account cannot log in.
ALTER TABLE users ADD COLUMN disabled_at BIGINT NULL;

-- What an operator did to an account that live sessions must hear of: every
-- node polls this table (by id, every two seconds) and closes the sessions
-- it holds of the users named. kind is 'disabled', 'deleted' or 'password'.
CREATE TABLE admin_events (
    id         BIGINT      NOT NULL AUTO_INCREMENT,
    userid     BIGINT      NOT NULL,
    kind       VARCHAR(16) NOT NULL,
    created_at BIGINT      NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
