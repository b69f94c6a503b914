-- Names compare by key, not byte for byte: the key folds case, width,
-- normalisation forms and confusable look-alikes (see src/names.rs), so
-- "Alice", "alice" and a Cyrillic "Аlice" cannot all exist. name_key holds
-- the SHA-256 (hex) of that key: a key can be many times longer than its
-- name, and a digest fits any index.
--
-- Rows stored before this migration start with NULL (a unique index allows
-- any number of NULLs); the server computes their keys when it opens the
-- database, oldest row first, since SQL cannot. A row whose key an older
-- row already holds keeps its name but leaves the key to the older row.
ALTER TABLE users ADD COLUMN name_key TEXT;
CREATE UNIQUE INDEX users_by_name_key ON users (name_key);

ALTER TABLE allgroup ADD COLUMN name_key TEXT;
CREATE UNIQUE INDEX allgroup_by_name_key ON allgroup (name_key);
