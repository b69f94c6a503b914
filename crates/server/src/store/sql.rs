//! The SQL both database backends share: the statement texts, a small
//! [`Dialect`] for what really differs, and the read queries, written once
//! over sqlx for SQLite's read pool and for MySQL alike. Rows are read with
//! `try_get`, so a surprising column is an error, never a panic.
//!
//! Writes stay in the backend files: SQLite writes through rusqlite on its
//! writer thread, MySQL through sqlx with its locking reads. Both plan with
//! [`super::batch`] and take their statement texts from here.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use super::{
    AccountChange, AccountEvent, Conversation, GroupId, GroupInfo, Member, Person, Role,
    StoreError, StoreResult, StoredMessage, Target, UserId, UserRecord, UserSummary,
};

/// What differs between SQLite and MySQL in the statements both run. The
/// counter upserts differ too, but each backend runs them its own way
/// (SQLite one row at a time from its statement cache, MySQL many rows a
/// statement), so they stay in the backend files, as does reading the new
/// row's id (rusqlite's `insert`, MySQL's `last_insert_id`).
pub(crate) trait Dialect: Database {
    /// [`undelivered`](SqlReads::undelivered)'s query: the user's inbox
    /// rows after the larger of `after` and their confirmed seq, joined to
    /// their messages, in seq order. Binds user, after, user, limit.
    const UNDELIVERED: &'static str;
    /// A user's token rows; MySQL locks them (`FOR UPDATE`) until the
    /// transaction ends. Binds the user.
    const TOKENS_OF: &'static str;
    /// A group's member ids, ascending; MySQL locks them. Binds the group.
    const MEMBERS_OF: &'static str;
    /// Adds a normal member, or nothing if already a member (insert-ignore:
    /// `ON CONFLICT DO NOTHING` or `INSERT IGNORE`). Binds group, user.
    const INSERT_MEMBER: &'static str;
    /// A user's `disabled_at`; MySQL locks the row. Binds the user.
    const USER_FOR_ADMIN: &'static str;
    /// The mids of every message a user sent; MySQL locks them, and the
    /// index range, so the user's sends wait for the delete. Binds the user.
    const SENT_BY: &'static str;
    /// The one-to-one messages a user received. Binds the user seven times.
    const DIRECT_TO: &'static str;
}

/// A user's token rows, as [`super::batch::plan_token`] reads them, with
/// the dialect's lock hint. Binds the user.
macro_rules! tokens_of_sql {
    ($lock:literal) => {
        concat!(
            "SELECT hash, seq, expires_at FROM tokens WHERE userid = ?",
            $lock
        )
    };
}

/// A group's member ids, ascending, with the dialect's lock hint. Binds the
/// group.
macro_rules! members_of_sql {
    ($lock:literal) => {
        concat!(
            "SELECT userid FROM groupuser WHERE groupid = ? ORDER BY userid",
            $lock
        )
    };
}

/// A user's row for an admin change, with the dialect's lock hint.
macro_rules! user_for_admin_sql {
    ($lock:literal) => {
        concat!("SELECT disabled_at FROM users WHERE id = ?", $lock)
    };
}

/// The mids a user sent, with the dialect's lock hint.
macro_rules! sent_by_sql {
    ($lock:literal) => {
        concat!(
            "SELECT mid FROM messages WHERE sender = ? ORDER BY mid",
            $lock
        )
    };
}

/// [`Dialect::DIRECT_TO`], from the conversation keys (`d:LO:HI`), not from
/// the inbox, whose confirmed rows are pruned: the conversations in which
/// the user is LO are one range of the (conv, mid) index, those in which
/// they are HI one lookup per existing user with a smaller id (about a
/// second per million accounts), and the messages of senders deleted since
/// are either gone with them or, still undelivered then, hidden under the
/// key `deleted`. `$from` gives messages `m` and the indexed key `$conv`;
/// `$key` builds `d:` + a + `:` + b in the dialect.
macro_rules! direct_to_sql {
    ($from:literal, $conv:literal, $lo:literal, $hi:literal, $key:literal) => {
        concat!(
            "SELECT m.mid FROM ",
            $from,
            " WHERE ",
            $conv,
            " >= ",
            $lo,
            " AND ",
            $conv,
            " < ",
            $hi,
            " AND m.target = ? AND m.kind = 6 \
             UNION \
             SELECT mid FROM messages WHERE conv = 'deleted' AND target = ? AND kind = 6 \
             UNION \
             SELECT m.mid FROM users u, ",
            $from,
            " WHERE ",
            $conv,
            " = ",
            $key,
            " AND u.id < ? AND m.target = ? AND m.kind = 6 \
             ORDER BY 1"
        )
    };
}

/// One arm of SQLite's [`Dialect::UNDELIVERED`]: a user's unconfirmed rows
/// in `$table`, at most the limit, in seq order.
macro_rules! owed_in {
    ($table:literal) => {
        concat!(
            "SELECT * FROM (SELECT seq, mid FROM ",
            $table,
            " WHERE userid = ?1 \
               AND seq > MAX(?2, COALESCE((SELECT acked_seq FROM user_seq WHERE userid = ?3), 0)) \
             ORDER BY seq LIMIT ?4)"
        )
    };
}

impl Dialect for sqlx::Sqlite {
    const USER_FOR_ADMIN: &'static str = user_for_admin_sql!("");
    const SENT_BY: &'static str = sent_by_sql!("");
    // The (conv, mid) index is the `history` table of blocks, which the
    // indexer fills behind the commits (sqlite_history.rs); account deletion
    // indexes the whole tail before it runs this.
    const DIRECT_TO: &'static str = direct_to_sql!(
        "history h, json_each(h.mids) j JOIN messages m ON m.mid = j.value",
        "h.conv",
        "'d:' || ? || ':'",
        "'d:' || ? || ';'",
        "'d:' || u.id || ':' || ?"
    );
    // SQLite's inbox is two tables, `inbox` and the inbox log that commits
    // append to (sqlite.rs, "The inbox log"); a row is in one of them. Each
    // arm takes at most the limit in seq order (the first straight from the
    // primary key, the log scanned and sorted), whatever the planner does
    // with the rest; an unconfirmed row always has its message (deletions
    // hide an undelivered message rather than delete it), so limiting
    // before the join loses nothing.
    const UNDELIVERED: &'static str = concat!(
        "SELECT i.seq, m.mid, m.sender, m.sender_name, m.kind, m.target, m.body, m.created_at \
         FROM (",
        owed_in!("inbox"),
        " UNION ALL ",
        owed_in!("inbox_log"),
        ") i JOIN messages m ON m.mid = i.mid ORDER BY i.seq LIMIT ?4"
    );
    // No lock hints: the one writer thread holds SQLite's write lock.
    const TOKENS_OF: &'static str = tokens_of_sql!("");
    const MEMBERS_OF: &'static str = members_of_sql!("");
    const INSERT_MEMBER: &'static str =
        "INSERT INTO groupuser (groupid, userid, grouprole) VALUES (?, ?, 'normal') \
         ON CONFLICT DO NOTHING";
}

impl Dialect for sqlx::MySql {
    const USER_FOR_ADMIN: &'static str = user_for_admin_sql!(" FOR UPDATE");
    const SENT_BY: &'static str = sent_by_sql!(" FOR UPDATE");
    // The collation is utf8mb4_bin: ':' sorts right before ';'.
    const DIRECT_TO: &'static str = direct_to_sql!(
        "messages m",
        "m.conv",
        "CONCAT('d:', ?, ':')",
        "CONCAT('d:', ?, ';')",
        "CONCAT('d:', u.id, ':', ?)"
    );
    const UNDELIVERED: &'static str =
        "SELECT i.seq, m.mid, m.sender, m.sender_name, m.kind, m.target, m.body, m.created_at \
         FROM inbox i JOIN messages m ON m.mid = i.mid \
         WHERE i.userid = ? \
           AND i.seq > GREATEST(?, COALESCE((SELECT acked_seq FROM user_seq WHERE userid = ?), 0)) \
         ORDER BY i.seq LIMIT ?";
    const TOKENS_OF: &'static str = tokens_of_sql!(" FOR UPDATE");
    const MEMBERS_OF: &'static str = members_of_sql!(" FOR UPDATE");
    // IGNORE skips only the duplicate row: two plain BIGINTs and a valid
    // role cannot trip any other error it would hide.
    const INSERT_MEMBER: &'static str =
        "INSERT IGNORE INTO groupuser (groupid, userid, grouprole) VALUES (?, ?, 'normal')";
}

// Statements both backends run as they are.

/// Binds name, name key digest, password hash, now.
pub(crate) const INSERT_USER: &str =
    "INSERT INTO users (name, name_key, password, created_at) VALUES (?, ?, ?, ?)";
/// Every user gets a counter row at registration. Binds the user.
pub(crate) const INSERT_USER_SEQ: &str = "INSERT INTO user_seq (userid) VALUES (?)";
/// Binds name, name key digest, description, creator, now.
pub(crate) const INSERT_GROUP: &str =
    "INSERT INTO allgroup (groupname, name_key, groupdesc, creator, created_at) \
     VALUES (?, ?, ?, ?, ?)";
/// Binds group, creator.
pub(crate) const INSERT_CREATOR: &str =
    "INSERT INTO groupuser (groupid, userid, grouprole) VALUES (?, ?, 'creator')";
/// Binds group, user.
pub(crate) const DELETE_MEMBER: &str = "DELETE FROM groupuser WHERE groupid = ? AND userid = ?";
/// Binds group.
pub(crate) const DELETE_MEMBERS: &str = "DELETE FROM groupuser WHERE groupid = ?";
/// Binds group.
pub(crate) const DELETE_GROUP: &str = "DELETE FROM allgroup WHERE id = ?";
/// Both directions of a friendship. Binds user, friend, friend, user.
pub(crate) const DELETE_FRIENDS: &str =
    "DELETE FROM friends WHERE (userid = ? AND friendid = ?) OR (userid = ? AND friendid = ?)";
/// The start of an insert into `messages`, the columns in the order the
/// backends bind them.
macro_rules! insert_message_into {
    () => {
        "INSERT INTO messages (mid, sender, sender_name, kind, target, conv, body, cmid, created_at) "
    };
}
/// For a multi-row insert: the backend appends the rows.
pub(crate) const INSERT_MESSAGE_INTO: &str = insert_message_into!();
/// Binds expires_at, hash.
pub(crate) const SHORTEN_TOKEN: &str = "UPDATE tokens SET expires_at = ? WHERE hash = ?";
/// Binds hash, user, seq, expires_at.
pub(crate) const INSERT_TOKEN: &str =
    "INSERT INTO tokens (hash, userid, seq, expires_at) VALUES (?, ?, ?, ?)";
/// Binds the user.
pub(crate) const REVOKE_TOKENS: &str = "DELETE FROM tokens WHERE userid = ?";
/// Binds password hash, user.
pub(crate) const SET_PASSWORD: &str = "UPDATE users SET password = ? WHERE id = ?";
/// Binds disabled_at (NULL to enable), user.
pub(crate) const SET_DISABLED: &str = "UPDATE users SET disabled_at = ? WHERE id = ?";
/// Binds user, kind ([`AccountChange::as_str`]), now.
pub(crate) const INSERT_ACCOUNT_EVENT: &str =
    "INSERT INTO admin_events (userid, kind, created_at) VALUES (?, ?, ?)";
/// The groups a user created, ascending. Binds the user.
pub(crate) const CREATED_BY: &str =
    "SELECT groupid FROM groupuser WHERE userid = ? AND grouprole = 'creator' ORDER BY groupid";
/// Every membership of a user. Binds the user.
pub(crate) const DELETE_MEMBERSHIPS: &str = "DELETE FROM groupuser WHERE userid = ?";
/// A user's friends, one direction. Binds the user.
pub(crate) const FRIEND_IDS: &str =
    "SELECT friendid FROM friends WHERE userid = ? ORDER BY friendid";
/// The messages a user sent that another recipient has not confirmed:
/// every user's unconfirmed inbox rows (a range of the primary key each).
/// Binds the user twice.
pub(crate) const PENDING_FROM: &str = "SELECT DISTINCT i.mid FROM user_seq s \
     JOIN inbox i ON i.userid = s.userid AND i.seq > s.acked_seq \
     JOIN messages m ON m.mid = i.mid \
     WHERE m.sender = ? AND i.userid <> ? ORDER BY i.mid";
/// Takes a message out of every history. Binds the mid.
pub(crate) const HIDE_MESSAGE: &str = "UPDATE messages SET conv = 'deleted' WHERE mid = ?";
/// Binds the mid.
pub(crate) const DELETE_MESSAGE: &str = "DELETE FROM messages WHERE mid = ?";
/// Binds the user.
pub(crate) const DELETE_INBOX: &str = "DELETE FROM inbox WHERE userid = ?";
/// Binds the user.
pub(crate) const DELETE_USER_SEQ: &str = "DELETE FROM user_seq WHERE userid = ?";
/// Binds the user.
pub(crate) const DELETE_USER: &str = "DELETE FROM users WHERE id = ?";

/// The group's existence and the user's role in it, in one statement (one
/// snapshot): no row means no group; a NULL role, not a member. Binds group,
/// user, group.
pub(crate) const ROLE_IN: &str =
    "SELECT (SELECT grouprole FROM groupuser WHERE groupid = ? AND userid = ?) \
     FROM allgroup WHERE id = ?";

/// `NotFound` if the group does not exist; otherwise the user's role, if any.
pub(crate) fn role_from(row: Option<Option<String>>) -> StoreResult<Option<Role>> {
    match row {
        None => Err(StoreError::NotFound),
        Some(role) => Ok(role.map(|r| Role::parse(&r))),
    }
}

/// Reads a text column. MySQL columns with a `_bin` collation carry the
/// BINARY flag, which sqlx's type check takes for VARBINARY; the bytes are
/// UTF-8 all the same (the connection and every table are utf8mb4), and
/// decoding still checks that. On SQLite the columns are TEXT.
pub(crate) fn text<R: Row>(row: &R, idx: usize) -> StoreResult<String>
where
    usize: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database>,
{
    Ok(row.try_get_unchecked::<String, _>(idx)?)
}

/// [`text`], shared: decoded in place and copied once, into the `Arc`.
pub(crate) fn shared_text<'r, R: Row>(row: &'r R, idx: usize) -> StoreResult<Arc<str>>
where
    usize: ColumnIndex<R>,
    &'r str: Decode<'r, R::Database>,
{
    Ok(Arc::from(row.try_get_unchecked::<&'r str, _>(idx)?))
}

/// The read queries, over one backend's sqlx pool.
pub(crate) struct SqlReads<DB: Database> {
    pool: Pool<DB>,
}

impl<DB: Database> SqlReads<DB> {
    /// Reads through `pool`.
    pub(crate) fn new(pool: Pool<DB>) -> Self {
        SqlReads { pool }
    }

    /// The pool the reads use.
    pub(crate) fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

impl<DB> SqlReads<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Decode<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Columns `mid, sender, sender_name, kind, target, body, created_at`,
    /// starting at `at`.
    pub(crate) fn message(row: &DB::Row, at: usize) -> StoreResult<StoredMessage> {
        Ok(StoredMessage {
            mid: row.try_get(at)?,
            sender: row.try_get(at + 1)?,
            sender_name: shared_text(row, at + 2)?,
            target: Target::from_parts(row.try_get(at + 3)?, row.try_get(at + 4)?),
            body: shared_text(row, at + 5)?,
            time: row.try_get(at + 6)?,
        })
    }

    /// [`super::UserStore::find_user`].
    pub(crate) async fn find_user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        let row =
            sqlx::query::<DB>("SELECT id, name, password, disabled_at FROM users WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(UserRecord {
                id: r.try_get(0)?,
                name: text(&r, 1)?,
                password_hash: text(&r, 2)?,
                disabled: r.try_get::<Option<i64>, _>(3)?.is_some(),
            })
        })
        .transpose()
    }

    /// A page of rows with an id above `after`, at most `limit`: `sql`
    /// binds the two.
    async fn page<T>(
        &self,
        sql: &'static str,
        after: i64,
        limit: i64,
        row: fn(&DB::Row) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let rows = sqlx::query::<DB>(sql)
            .bind(after)
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row).collect()
    }

    /// [`super::AdminStore::list_users`].
    pub(crate) async fn list_users(
        &self,
        after: UserId,
        limit: i64,
    ) -> StoreResult<Vec<UserSummary>> {
        let sql =
            "SELECT id, name, created_at, disabled_at FROM users WHERE id > ? ORDER BY id LIMIT ?";
        self.page(sql, after, limit, |r| {
            Ok(UserSummary {
                id: r.try_get(0)?,
                name: text(r, 1)?,
                created_at: r.try_get(2)?,
                disabled_at: r.try_get(3)?,
            })
        })
        .await
    }

    /// [`super::AdminStore::account_events`].
    pub(crate) async fn account_events(
        &self,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<AccountEvent>> {
        let sql = "SELECT id, userid, kind FROM admin_events WHERE id > ? ORDER BY id LIMIT ?";
        self.page(sql, after, limit, |r| {
            Ok(AccountEvent {
                id: r.try_get(0)?,
                user: r.try_get(1)?,
                change: AccountChange::parse(&text(r, 2)?),
            })
        })
        .await
    }

    /// [`super::AdminStore::last_account_event`].
    pub(crate) async fn last_account_event(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar::<DB, i64>("SELECT COALESCE(MAX(id), 0) FROM admin_events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// [`super::UserStore::find_user_by_name`]: the unique index on
    /// `name`, whose collation is binary on both backends. MariaDB's binary
    /// collations still ignore trailing spaces (PAD SPACE), so the row's
    /// name is compared again here, byte for byte.
    pub(crate) async fn find_user_by_name(&self, name: &str) -> StoreResult<Option<Person>> {
        let row = sqlx::query::<DB>("SELECT id, name FROM users WHERE name = ?")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        let found = row
            .map(|r| {
                Ok::<_, StoreError>(Person {
                    id: r.try_get(0)?,
                    name: text(&r, 1)?,
                })
            })
            .transpose()?;
        Ok(found.filter(|p| p.name == name))
    }

    /// [`super::FriendStore::friends`].
    pub(crate) async fn friends(&self, user: UserId) -> StoreResult<Vec<Person>> {
        let rows = sqlx::query::<DB>(
            "SELECT u.id, u.name FROM friends f JOIN users u ON u.id = f.friendid WHERE f.userid = ? ORDER BY u.id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Person {
                    id: r.try_get(0)?,
                    name: text(r, 1)?,
                })
            })
            .collect()
    }

    /// [`super::GroupStore::created_count`].
    pub(crate) async fn created_count(&self, user: UserId) -> StoreResult<i64> {
        Ok(sqlx::query_scalar::<DB, i64>(
            "SELECT COUNT(*) FROM groupuser WHERE userid = ? AND grouprole = 'creator'",
        )
        .bind(user)
        .fetch_one(&self.pool)
        .await?)
    }

    /// [`super::GroupStore::member_count`].
    pub(crate) async fn member_count(&self, group: GroupId) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar::<DB, i64>("SELECT COUNT(*) FROM groupuser WHERE groupid = ?")
                .bind(group)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// [`super::GroupStore::membership`].
    pub(crate) async fn membership(
        &self,
        group: GroupId,
        user: UserId,
    ) -> StoreResult<Option<Role>> {
        let row = sqlx::query::<DB>(ROLE_IN)
            .bind(group)
            .bind(user)
            .bind(group)
            .fetch_optional(&self.pool)
            .await?;
        let role = match row {
            Some(r) => Some(r.try_get_unchecked::<Option<String>, _>(0)?),
            None => None,
        };
        role_from(role)
    }

    /// [`super::GroupStore::groups_of`], both reads in one transaction so
    /// they see one snapshot.
    pub(crate) async fn groups_of(&self, user: UserId) -> StoreResult<Vec<GroupInfo>> {
        let mut tx = self.pool.begin().await?;
        let groups = sqlx::query::<DB>(
            "SELECT g.id, g.groupname, g.groupdesc FROM groupuser gu JOIN allgroup g ON g.id = gu.groupid \
             WHERE gu.userid = ? ORDER BY g.id",
        )
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = groups
            .iter()
            .map(|r| {
                Ok(GroupInfo {
                    id: r.try_get(0)?,
                    name: text(r, 1)?,
                    desc: text(r, 2)?,
                    members: Vec::new(),
                })
            })
            .collect::<StoreResult<Vec<GroupInfo>>>()?;
        if out.is_empty() {
            tx.commit().await?;
            return Ok(out);
        }
        let members = sqlx::query::<DB>(
            "SELECT gu.groupid, u.id, u.name, gu.grouprole FROM groupuser gu JOIN users u ON u.id = gu.userid \
             WHERE gu.groupid IN (SELECT groupid FROM groupuser WHERE userid = ?) ORDER BY gu.groupid, u.id",
        )
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let index: HashMap<GroupId, usize> =
            out.iter().enumerate().map(|(i, g)| (g.id, i)).collect();
        for r in &members {
            if let Some(&i) = index.get(&r.try_get::<i64, _>(0)?) {
                out[i].members.push(Member {
                    id: r.try_get(1)?,
                    name: text(r, 2)?,
                    role: Role::parse(&text(r, 3)?),
                });
            }
        }
        Ok(out)
    }

    /// [`super::MessageStore::acked_seq`].
    pub(crate) async fn acked_seq(&self, user: UserId) -> StoreResult<i64> {
        let v = sqlx::query_scalar::<DB, i64>("SELECT acked_seq FROM user_seq WHERE userid = ?")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// [`super::MessageStore::undelivered`].
    pub(crate) async fn undelivered(
        &self,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, StoredMessage)>> {
        let rows = sqlx::query::<DB>(DB::UNDELIVERED)
            .bind(user)
            .bind(after)
            .bind(user)
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, Self::message(r, 1)?)))
            .collect()
    }

    /// [`super::MessageStore::history`].
    pub(crate) async fn history(
        &self,
        conv: Conversation,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<StoredMessage>> {
        let rows = sqlx::query::<DB>(
            "SELECT mid, sender, sender_name, kind, target, body, created_at FROM messages \
             WHERE conv = ? AND mid < ? ORDER BY mid DESC LIMIT ?",
        )
        .bind(conv.key())
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Self::message(r, 0)).collect()
    }
}
