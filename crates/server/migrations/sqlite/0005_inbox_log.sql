-- Inbox rows as commits write them, before they are merged into `inbox`.
--
-- `inbox` is clustered by (userid, seq), so a group message puts a row on a
-- different page for every member and one commit wrote, and flushed, a page
-- per member. Here the rows of a commit are appended in rowid order, a few
-- pages for a whole fan-out. The server moves them into `inbox` in bulk, one
-- transaction per few thousand rows, so each member's page is written once
-- for many of their rows (src/store/sqlite.rs, "The inbox log"). Every read
-- of the inbox reads both tables; rows are in exactly one of them.
CREATE TABLE inbox_log (
    userid INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    mid    INTEGER NOT NULL
);
