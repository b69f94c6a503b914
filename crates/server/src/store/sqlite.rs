//! The embedded backend: one SQLite file in WAL mode.
//!
//! Writes go through a pool of exactly one connection, so they queue in
//! process instead of fighting over SQLite's lock; reads use a separate pool
//! and run beside them, as WAL allows.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, Transaction};

use super::batch::{self, Earlier, Lookups, TokenRow};
use super::{
    backfill_name_keys, key_digest, Conversation, GroupId, GroupInfo, Member, MessageStore, Person,
    Role, StoreError, StoreOptions, StoreResult, StoredMessage, Target, UserId, UserRecord,
    UserStore, WriteOp, WriteOutcome,
};
use super::{FriendStore, GroupStore};

/// Rows per multi-row statement, well under SQLite's bound-variable limit.
const CHUNK: usize = 500;

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
}

fn migrator() -> Migrator {
    super::migrator([
        include_str!("../../migrations/sqlite/0001_init.sql"),
        include_str!("../../migrations/sqlite/0002_token_rotation.sql"),
        include_str!("../../migrations/sqlite/0003_name_keys.sql"),
    ])
}

fn now() -> i64 {
    chat_protocol::time::unix_now()
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

pub(crate) fn message_from_row(row: &SqliteRow) -> StoredMessage {
    StoredMessage {
        mid: row.get("mid"),
        sender: row.get("sender"),
        sender_name: row.get("sender_name"),
        target: Target::from_parts(row.get("kind"), row.get("target")),
        body: row.get("body"),
        time: row.get("created_at"),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str, opts: &StoreOptions) -> StoreResult<Self> {
        let base = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if opts.sqlite_synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(Duration::from_secs(10))
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-16000")
            // Checkpoints run in the background (below); the writer only
            // checkpoints itself if the WAL grows past ~80 MB regardless.
            .pragma("wal_autocheckpoint", "20000");
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.clone())
            .await?;
        migrator()
            .run(&write)
            .await
            .map_err(|e| StoreError::Unavailable(sqlx::Error::Migrate(Box::new(e))))?;
        backfill_name_keys(&write, |r| Ok((r.try_get(0)?, r.try_get(1)?))).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(opts.pool_size.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base)
            .await?;
        tokio::spawn(checkpointer(read.clone()));
        Ok(SqliteStore { read, write })
    }

    async fn lookups(
        tx: &mut Transaction<'_, Sqlite>,
        need: &batch::Needs,
    ) -> StoreResult<Lookups> {
        let mut lk = Lookups::default();
        for chunk in need.users.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new("SELECT id FROM users WHERE id IN (");
            let mut sep = qb.separated(", ");
            for u in chunk {
                sep.push_bind(*u);
            }
            qb.push(")");
            for row in qb.build().fetch_all(&mut **tx).await? {
                lk.existing_users.insert(row.get::<i64, _>(0));
            }
        }
        for chunk in need.groups.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT groupid, userid FROM groupuser WHERE groupid IN (",
            );
            let mut sep = qb.separated(", ");
            for g in chunk {
                sep.push_bind(*g);
            }
            qb.push(") ORDER BY groupid, userid");
            for row in qb.build().fetch_all(&mut **tx).await? {
                lk.members.entry(row.get(0)).or_default().push(row.get(1));
            }
        }
        for (sender, cmid) in &need.cmids {
            let hit = sqlx::query(
                "SELECT mid, kind, target, body FROM messages WHERE sender = ? AND cmid = ?",
            )
            .bind(sender)
            .bind(cmid)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(r) = hit {
                let e = Earlier {
                    mid: r.try_get(0)?,
                    target: Target::from_parts(r.try_get(1)?, r.try_get(2)?),
                    body: r.try_get(3)?,
                };
                lk.cmid_hits.insert((*sender, cmid.clone()), e);
            }
        }
        Ok(lk)
    }

    async fn last_seqs(
        tx: &mut Transaction<'_, Sqlite>,
        users: &[UserId],
    ) -> StoreResult<HashMap<UserId, i64>> {
        let mut out = HashMap::with_capacity(users.len());
        for chunk in users.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT userid, last_seq FROM user_seq WHERE userid IN (",
            );
            let mut sep = qb.separated(", ");
            for u in chunk {
                sep.push_bind(*u);
            }
            qb.push(")");
            for row in qb.build().fetch_all(&mut **tx).await? {
                out.insert(row.get(0), row.get(1));
            }
        }
        Ok(out)
    }

    async fn token_op(tx: &mut Transaction<'_, Sqlite>, op: &WriteOp) -> StoreResult<WriteOutcome> {
        match op {
            WriteOp::Token { user, .. } => {
                let rows = sqlx::query("SELECT hash, seq, expires_at FROM tokens WHERE userid = ?")
                    .bind(user)
                    .fetch_all(&mut **tx)
                    .await?
                    .iter()
                    .map(|r| TokenRow {
                        hash: r.get(0),
                        seq: r.get(1),
                        expires_at: r.get(2),
                    })
                    .collect::<Vec<_>>();
                let plan = batch::plan_token(op, &rows);
                for chunk in plan.delete.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM tokens WHERE hash IN (");
                    let mut sep = qb.separated(", ");
                    for h in chunk {
                        sep.push_bind(h);
                    }
                    qb.push(")");
                    qb.build().execute(&mut **tx).await?;
                }
                if let Some((hash, expires_at)) = &plan.shorten {
                    sqlx::query("UPDATE tokens SET expires_at = ? WHERE hash = ?")
                        .bind(expires_at)
                        .bind(hash)
                        .execute(&mut **tx)
                        .await?;
                }
                if let Some(t) = &plan.insert {
                    sqlx::query(
                        "INSERT INTO tokens (hash, userid, seq, expires_at) VALUES (?, ?, ?, ?)",
                    )
                    .bind(&t.hash)
                    .bind(user)
                    .bind(t.seq)
                    .bind(t.expires_at)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(plan.outcome)
            }
            WriteOp::RevokeTokens { user } => {
                sqlx::query("DELETE FROM tokens WHERE userid = ?")
                    .bind(user)
                    .execute(&mut **tx)
                    .await?;
                Ok(WriteOutcome::Revoked)
            }
            _ => unreachable!("only token ops reach token_op"),
        }
    }
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, name: &str, key: &str, password_hash: &str) -> StoreResult<UserId> {
        let mut tx = self.write.begin().await?;
        let res = sqlx::query(
            "INSERT INTO users (name, name_key, password, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(name)
        .bind(key_digest(key))
        .bind(password_hash)
        .bind(now())
        .execute(&mut *tx)
        .await;
        let id = match res {
            Ok(r) => r.last_insert_rowid(),
            Err(e) if unique_violation(&e) => return Err(StoreError::Exists),
            Err(e) => return Err(e.into()),
        };
        sqlx::query("INSERT INTO user_seq (userid) VALUES (?)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn find_user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query("SELECT id, name, password FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| UserRecord {
            id: r.get(0),
            name: r.get(1),
            password_hash: r.get(2),
        }))
    }
}

#[async_trait]
impl FriendStore for SqliteStore {
    async fn add_friend(&self, user: UserId, friend: UserId) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = ?")
            .bind(friend)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let added = sqlx::query(
            "INSERT INTO friends (userid, friendid) VALUES (?, ?), (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(user)
        .bind(friend)
        .bind(friend)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if added == 0 {
            return Err(StoreError::Exists);
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remove_friend(&self, user: UserId, friend: UserId) -> StoreResult<()> {
        let removed = sqlx::query(
            "DELETE FROM friends WHERE (userid = ? AND friendid = ?) OR (userid = ? AND friendid = ?)",
        )
        .bind(user)
        .bind(friend)
        .bind(friend)
        .bind(user)
        .execute(&self.write)
        .await?
        .rows_affected();
        if removed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn friends(&self, user: UserId) -> StoreResult<Vec<Person>> {
        let rows = sqlx::query(
            "SELECT u.id, u.name FROM friends f JOIN users u ON u.id = f.friendid WHERE f.userid = ? ORDER BY u.id",
        )
        .bind(user)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Person {
                id: r.get(0),
                name: r.get(1),
            })
            .collect())
    }
}

#[async_trait]
impl GroupStore for SqliteStore {
    async fn create_group(
        &self,
        creator: UserId,
        name: &str,
        key: &str,
        desc: &str,
    ) -> StoreResult<GroupId> {
        let mut tx = self.write.begin().await?;
        let res = sqlx::query(
            "INSERT INTO allgroup (groupname, name_key, groupdesc, creator, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(key_digest(key))
        .bind(desc)
        .bind(creator)
        .bind(now())
        .execute(&mut *tx)
        .await;
        let id = match res {
            Ok(r) => r.last_insert_rowid(),
            Err(e) if unique_violation(&e) => return Err(StoreError::Exists),
            Err(e) => return Err(e.into()),
        };
        sqlx::query("INSERT INTO groupuser (groupid, userid, grouprole) VALUES (?, ?, 'creator')")
            .bind(id)
            .bind(creator)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn join_group(&self, group: GroupId, user: UserId) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM allgroup WHERE id = ?")
            .bind(group)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let added = sqlx::query(
            "INSERT INTO groupuser (groupid, userid, grouprole) VALUES (?, ?, 'normal') ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if added == 0 {
            return Err(StoreError::Exists);
        }
        tx.commit().await?;
        Ok(())
    }

    async fn quit_group(&self, group: GroupId, user: UserId) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        match role_in(&mut tx, group, user).await? {
            Some(Role::Normal) => {}
            _ => return Err(StoreError::Forbidden),
        }
        sqlx::query("DELETE FROM groupuser WHERE groupid = ? AND userid = ?")
            .bind(group)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn disband_group(&self, group: GroupId, user: UserId) -> StoreResult<Vec<UserId>> {
        let mut tx = self.write.begin().await?;
        if role_in(&mut tx, group, user).await? != Some(Role::Creator) {
            return Err(StoreError::Forbidden);
        }
        let members: Vec<i64> =
            sqlx::query_scalar("SELECT userid FROM groupuser WHERE groupid = ? ORDER BY userid")
                .bind(group)
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM groupuser WHERE groupid = ?")
            .bind(group)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM allgroup WHERE id = ?")
            .bind(group)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(members)
    }

    async fn created_count(&self, user: UserId) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM groupuser WHERE userid = ? AND grouprole = 'creator'",
        )
        .bind(user)
        .fetch_one(&self.read)
        .await?)
    }

    async fn member_count(&self, group: GroupId) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM groupuser WHERE groupid = ?")
                .bind(group)
                .fetch_one(&self.read)
                .await?,
        )
    }

    async fn membership(&self, group: GroupId, user: UserId) -> StoreResult<Option<Role>> {
        let mut conn = self.read.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let r = role_in(&mut tx, group, user).await;
        tx.rollback().await?;
        r
    }

    async fn groups_of(&self, user: UserId) -> StoreResult<Vec<GroupInfo>> {
        let mut conn = self.read.acquire().await?;
        let groups = sqlx::query(
            "SELECT g.id, g.groupname, g.groupdesc FROM groupuser gu JOIN allgroup g ON g.id = gu.groupid \
             WHERE gu.userid = ? ORDER BY g.id",
        )
        .bind(user)
        .fetch_all(&mut *conn)
        .await?;
        let mut out: Vec<GroupInfo> = groups
            .iter()
            .map(|r| GroupInfo {
                id: r.get(0),
                name: r.get(1),
                desc: r.get(2),
                members: Vec::new(),
            })
            .collect();
        if out.is_empty() {
            return Ok(out);
        }
        let members = sqlx::query(
            "SELECT gu.groupid, u.id, u.name, gu.grouprole FROM groupuser gu JOIN users u ON u.id = gu.userid \
             WHERE gu.groupid IN (SELECT groupid FROM groupuser WHERE userid = ?) ORDER BY gu.groupid, u.id",
        )
        .bind(user)
        .fetch_all(&mut *conn)
        .await?;
        let index: HashMap<GroupId, usize> =
            out.iter().enumerate().map(|(i, g)| (g.id, i)).collect();
        for r in &members {
            if let Some(&i) = index.get(&r.get::<i64, _>(0)) {
                out[i].members.push(Member {
                    id: r.get(1),
                    name: r.get(2),
                    role: Role::parse(r.get::<&str, _>(3)),
                });
            }
        }
        Ok(out)
    }
}

/// Copies the WAL back into the database from a reader connection every half
/// second (PASSIVE: never blocks the writer), keeping that work off the
/// group-commit path. Ends when the pool is closed.
async fn checkpointer(pool: SqlitePool) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::debug!(error = %e, "background checkpoint failed");
        }
    }
}

/// `NotFound` if the group does not exist; otherwise the user's role, if any.
async fn role_in(
    tx: &mut Transaction<'_, Sqlite>,
    group: GroupId,
    user: UserId,
) -> StoreResult<Option<Role>> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM allgroup WHERE id = ?")
        .bind(group)
        .fetch_optional(&mut **tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound);
    }
    let role: Option<String> =
        sqlx::query_scalar("SELECT grouprole FROM groupuser WHERE groupid = ? AND userid = ?")
            .bind(group)
            .bind(user)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(role.map(|r| Role::parse(&r)))
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn commit(&self, ops: Vec<WriteOp>) -> StoreResult<Vec<WriteOutcome>> {
        let mut tx = self.write.begin().await?;
        let need = batch::needs(&ops);
        let lk = Self::lookups(&mut tx, &need).await?;
        let rcpt = batch::recipients(&ops, &lk);
        let last = Self::last_seqs(&mut tx, &rcpt).await?;
        let max_mid: i64 = if ops.iter().any(|o| matches!(o, WriteOp::Append(_))) {
            sqlx::query_scalar("SELECT COALESCE(MAX(mid), 0) FROM messages")
                .fetch_one(&mut *tx)
                .await?
        } else {
            0
        };
        let plan = batch::plan(&ops, &lk, max_mid, &last);

        for chunk in plan.messages.chunks(CHUNK / 2) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO messages (mid, sender, sender_name, kind, target, conv, body, cmid, created_at) ",
            );
            qb.push_values(chunk, |mut b, row| {
                let m = &row.message;
                b.push_bind(m.mid)
                    .push_bind(m.sender)
                    .push_bind(&m.sender_name)
                    .push_bind(m.target.kind())
                    .push_bind(m.target.id())
                    .push_bind(&row.conv)
                    .push_bind(&m.body)
                    .push_bind(&row.cmid)
                    .push_bind(m.time);
            });
            qb.build().execute(&mut *tx).await?;
        }
        for chunk in plan.inbox.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO inbox (userid, seq, mid) ");
            qb.push_values(chunk, |mut b, (u, s, m)| {
                b.push_bind(u).push_bind(s).push_bind(m);
            });
            qb.build().execute(&mut *tx).await?;
        }
        for chunk in plan.seq_updates.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO user_seq (userid, last_seq) ");
            qb.push_values(chunk, |mut b, (u, s)| {
                b.push_bind(u).push_bind(s);
            });
            qb.push(" ON CONFLICT (userid) DO UPDATE SET last_seq = excluded.last_seq");
            qb.build().execute(&mut *tx).await?;
        }
        for chunk in plan.acks.chunks(CHUNK) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT INTO user_seq (userid, last_seq, acked_seq) ");
            qb.push_values(chunk, |mut b, (u, s)| {
                b.push_bind(u).push_bind(0i64).push_bind(s);
            });
            qb.push(
                " ON CONFLICT (userid) DO UPDATE SET \
                 acked_seq = MAX(user_seq.acked_seq, MIN(excluded.acked_seq, user_seq.last_seq))",
            );
            qb.build().execute(&mut *tx).await?;
        }
        let mut outcomes = Vec::with_capacity(ops.len());
        for (op, planned) in ops.iter().zip(plan.outcomes) {
            outcomes.push(match planned {
                Some(o) => o,
                None => Self::token_op(&mut tx, op).await?,
            });
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn acked_seq(&self, user: UserId) -> StoreResult<i64> {
        let v: Option<i64> = sqlx::query_scalar("SELECT acked_seq FROM user_seq WHERE userid = ?")
            .bind(user)
            .fetch_optional(&self.read)
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn undelivered(
        &self,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, StoredMessage)>> {
        let rows = sqlx::query(
            "SELECT i.seq, m.mid, m.sender, m.sender_name, m.kind, m.target, m.body, m.created_at \
             FROM inbox i JOIN messages m ON m.mid = i.mid \
             WHERE i.userid = ? AND i.seq > MAX(?, (SELECT acked_seq FROM user_seq WHERE userid = ?)) \
             ORDER BY i.seq LIMIT ?",
        )
        .bind(user)
        .bind(after)
        .bind(user)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("seq"), message_from_row(r)))
            .collect())
    }

    async fn history(
        &self,
        conv: Conversation,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<StoredMessage>> {
        let rows = sqlx::query(
            "SELECT mid, sender, sender_name, kind, target, body, created_at FROM messages \
             WHERE conv = ? AND mid < ? ORDER BY mid DESC LIMIT ?",
        )
        .bind(conv.key())
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(message_from_row).collect())
    }

    async fn prune_tokens(&self, now: i64, limit: i64) -> StoreResult<u64> {
        Ok(sqlx::query(
            "DELETE FROM tokens WHERE hash IN \
             (SELECT hash FROM tokens WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
        )
        .bind(now)
        .bind(limit.max(0))
        .execute(&self.write)
        .await?
        .rows_affected())
    }

    async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}
