-- Token rotation with a grace period (PROTOCOL.md, "Tokens, more precisely").
-- seq orders a user's tokens by issue, larger is newer: presenting a token
-- deletes every token of its user with a smaller seq. expires_at also carries
-- the grace period: the first use of a token cuts it to two minutes later at
-- most. Tokens issued before this migration were given one configured
-- lifetime, so their expiry order is their issue order.
ALTER TABLE tokens ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE tokens SET seq = expires_at;
-- For the sweep of dead tokens.
CREATE INDEX tokens_by_expiry ON tokens (expires_at);
