//! The clustered backend: MySQL or MariaDB (10.11 and later), shared by every
//! server node of a cluster.
//!
//! Group commits plan with [`batch`] exactly as SQLite does. What differs is
//! the locking that keeps several nodes committing at once safe: a commit that
//! stores messages first locks the single `counters` row that holds the highest
//! mid (so mids are unique and grow in commit order across the cluster), then
//! locks the `user_seq` row of every user it touches, in id order, before it
//! reads their counters. A deadlock or lock timeout rolls the whole batch back,
//! and it is retried a few times before the error is reported.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPoolOptions};
use sqlx::{Connection, MySql, MySqlPool, QueryBuilder, Row, Transaction};

use super::batch::{self, Earlier, Lookups, Step, TokenRow};
use super::sql::{self, shared_text, text, Dialect, SqlReads};
use super::{
    backfill_name_keys, key_digest, AccountChange, AccountEvent, AdminStore, Conversation,
    DeletedUser, FriendStore, GroupId, GroupInfo, GroupStore, MessageStore, Person, Role,
    StoreError, StoreOptions, StoreResult, StoredMessage, Target, TokenRequest, UserId, UserRecord,
    UserStore, UserSummary, WriteOp, WriteOutcome,
};

/// Rows per multi-row statement: far below MySQL's 65,535 placeholders and
/// small enough that a chunk of 16 KiB messages stays under `max_allowed_packet`.
const CHUNK: usize = 200;

/// How many times a batch that hit a deadlock or lock timeout is tried.
const COMMIT_ATTEMPTS: u32 = 5;

/// The MySQL / MariaDB store.
#[derive(Clone)]
pub struct MysqlStore {
    reads: Arc<SqlReads<MySql>>,
}

type Tx = Transaction<'static, MySql>;

fn migrator() -> Migrator {
    super::migrator(&[
        ("init", include_str!("../../migrations/mysql/0001_init.sql")),
        (
            "token rotation",
            include_str!("../../migrations/mysql/0002_token_rotation.sql"),
        ),
        (
            "name keys",
            include_str!("../../migrations/mysql/0003_name_keys.sql"),
        ),
        (
            "admin",
            include_str!("../../migrations/mysql/0004_admin.sql"),
        ),
    ])
}

fn now() -> i64 {
    chat_protocol::time::unix_now()
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Deadlock (1213) or lock wait timeout (1205): the transaction was rolled
/// back (or must be) and may simply be run again.
fn retryable(e: &StoreError) -> bool {
    match e.sqlx() {
        Some(sqlx::Error::Database(d)) => d
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|m| matches!(m.number(), 1205 | 1213)),
        _ => false,
    }
}

/// Appends `(?, ?, ...)` for `items` to a query that ends in `IN `.
fn push_in(qb: &mut QueryBuilder<'_, MySql>, items: &[i64]) {
    qb.push("(");
    let mut sep = qb.separated(", ");
    for &x in items {
        sep.push_bind(x);
    }
    qb.push(")");
}

impl MysqlStore {
    /// Connects to `url` (`mysql://` or `mariadb://`) and migrates the schema.
    pub async fn open(url: &str, opts: &StoreOptions) -> StoreResult<Self> {
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => Cow::Owned(format!("mysql://{rest}")),
            None => Cow::Borrowed(url),
        };
        let conn = MySqlConnectOptions::from_str(&url)?
            .charset("utf8mb4")
            .collation("utf8mb4_bin");
        Self::open_with(conn, opts).await
    }

    /// Connects with ready-made options (tests point these at a scratch
    /// database) and migrates the schema.
    pub async fn open_with(conn: MySqlConnectOptions, opts: &StoreOptions) -> StoreResult<Self> {
        // One plain connection first: a wrong address or password then
        // reports itself, where the pool would retry until its timeout.
        MySqlConnection::connect_with(&conn).await?.close().await?;
        let pool = MySqlPoolOptions::new()
            .max_connections(opts.pool_size.max(1))
            // While the database is down, sqlx retries refused connections
            // until this timeout, and every request (and each serial group
            // commit) waits that long for its errno 10: keep it short.
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(conn)
            .await?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
        backfill_name_keys(&pool, |r| Ok((r.try_get(0)?, text(r, 1)?))).await?;
        Ok(MysqlStore {
            reads: Arc::new(SqlReads::new(pool)),
        })
    }

    fn pool(&self) -> &MySqlPool {
        self.reads.pool()
    }

    async fn lookups(tx: &mut Tx, need: &batch::Needs) -> StoreResult<Lookups> {
        let mut lk = Lookups::default();
        for chunk in need.users.chunks(CHUNK) {
            let mut qb = QueryBuilder::<MySql>::new("SELECT id FROM users WHERE id IN ");
            push_in(&mut qb, chunk);
            for row in qb.build().fetch_all(&mut **tx).await? {
                lk.existing_users.insert(row.try_get::<i64, _>(0)?);
            }
        }
        for chunk in need.groups.chunks(CHUNK) {
            let mut qb = QueryBuilder::<MySql>::new(
                "SELECT groupid, userid FROM groupuser WHERE groupid IN ",
            );
            push_in(&mut qb, chunk);
            qb.push(" ORDER BY groupid, userid");
            for row in qb.build().fetch_all(&mut **tx).await? {
                lk.members
                    .entry(row.try_get(0)?)
                    .or_default()
                    .push(row.try_get(1)?);
            }
        }
        // A locking read sees the newest committed rows whatever the
        // transaction's snapshot; the mid counter lock already serialises
        // every writer of `messages`, so this blocks no one.
        for chunk in need.cmids.chunks(CHUNK) {
            let mut qb = QueryBuilder::<MySql>::new(
                "SELECT sender, cmid, mid, kind, target, body FROM messages WHERE ",
            );
            for (i, (sender, cmid)) in chunk.iter().enumerate() {
                if i > 0 {
                    qb.push(" OR ");
                }
                qb.push("(sender = ")
                    .push_bind(*sender)
                    .push(" AND cmid = ")
                    .push_bind(cmid.clone())
                    .push(")");
            }
            qb.push(" FOR UPDATE");
            for row in qb.build().fetch_all(&mut **tx).await? {
                let key = (row.try_get::<i64, _>(0)?, text(&row, 1)?);
                let e = Earlier {
                    mid: row.try_get(2)?,
                    target: Target::from_parts(row.try_get(3)?, row.try_get(4)?),
                    body: shared_text(&row, 5)?,
                };
                lk.cmid_hits.insert(key, e);
            }
        }
        Ok(lk)
    }

    /// Locks the `user_seq` rows of `users` (ascending ids, so two batches
    /// never wait on each other in a cycle) and returns their `last_seq`.
    async fn lock_seqs(tx: &mut Tx, users: &[UserId]) -> StoreResult<HashMap<UserId, i64>> {
        let mut out = HashMap::with_capacity(users.len());
        for chunk in users.chunks(CHUNK) {
            let mut qb = QueryBuilder::<MySql>::new(
                "SELECT userid, last_seq FROM user_seq WHERE userid IN ",
            );
            push_in(&mut qb, chunk);
            qb.push(" ORDER BY userid FOR UPDATE");
            for row in qb.build().fetch_all(&mut **tx).await? {
                out.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        Ok(out)
    }

    async fn token_op(tx: &mut Tx, op: &TokenRequest) -> StoreResult<WriteOutcome> {
        // Locks every token row of the user, and the index gap where a new
        // one would go: token logins of one user on several nodes take
        // turns, so each sees the rows the last one wrote.
        let rows = sqlx::query(MySql::TOKENS_OF)
            .bind(op.user)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| {
                Ok(TokenRow {
                    hash: text(r, 0)?,
                    seq: r.try_get(1)?,
                    expires_at: r.try_get(2)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let plan = batch::plan_token(op, &rows);
        for chunk in plan.delete.chunks(CHUNK) {
            let mut qb = QueryBuilder::<MySql>::new("DELETE FROM tokens WHERE hash IN (");
            let mut sep = qb.separated(", ");
            for h in chunk {
                sep.push_bind(h.clone());
            }
            qb.push(")");
            qb.build().execute(&mut **tx).await?;
        }
        if let Some((hash, expires_at)) = &plan.shorten {
            sqlx::query(sql::SHORTEN_TOKEN)
                .bind(expires_at)
                .bind(hash)
                .execute(&mut **tx)
                .await?;
        }
        if let Some(t) = &plan.insert {
            sqlx::query(sql::INSERT_TOKEN)
                .bind(&t.hash)
                .bind(op.user)
                .bind(t.seq)
                .bind(t.expires_at)
                .execute(&mut **tx)
                .await?;
        }
        Ok(plan.outcome)
    }

    /// One attempt at a group commit, in one transaction.
    async fn commit_once(&self, ops: &[WriteOp]) -> StoreResult<Vec<WriteOutcome>> {
        let mut tx = self.pool().begin().await?;
        let appends = ops.iter().any(|o| matches!(o, WriteOp::Append(_)));
        // First statement of the transaction: every node's message-storing
        // commits queue here, one at a time.
        let max_mid: i64 = if appends {
            sqlx::query_scalar("SELECT value FROM counters WHERE name = 'mid' FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?
        } else {
            0
        };
        let need = batch::needs(ops);
        let lk = Self::lookups(&mut tx, &need).await?;
        let rcpt = batch::recipients(ops, &lk);
        let mut touched: BTreeSet<UserId> = rcpt.iter().copied().collect();
        for op in ops {
            if let WriteOp::Ack { user, .. } = op {
                touched.insert(*user);
            }
        }
        let touched: Vec<UserId> = touched.into_iter().collect();
        let last = Self::lock_seqs(&mut tx, &touched).await?;
        let plan = batch::plan(ops, &lk, max_mid, &last);

        for chunk in plan.messages.chunks(CHUNK) {
            let mut qb = QueryBuilder::<MySql>::new(sql::INSERT_MESSAGE_INTO);
            qb.push_values(chunk, |mut b, row| {
                let m = &row.message;
                b.push_bind(m.mid)
                    .push_bind(m.sender)
                    .push_bind(&*m.sender_name)
                    .push_bind(m.target.kind())
                    .push_bind(m.target.id())
                    .push_bind(&row.conv)
                    .push_bind(&*m.body)
                    .push_bind(&row.cmid)
                    .push_bind(m.time);
            });
            qb.build().execute(&mut *tx).await?;
        }
        if let Some(last_mid) = plan.messages.last().map(|r| r.message.mid) {
            sqlx::query("UPDATE counters SET value = ? WHERE name = 'mid'")
                .bind(last_mid)
                .execute(&mut *tx)
                .await?;
        }
        for chunk in plan.inbox.chunks(CHUNK) {
            let mut qb = QueryBuilder::<MySql>::new("INSERT INTO inbox (userid, seq, mid) ");
            qb.push_values(chunk, |mut b, (u, s, m)| {
                b.push_bind(*u).push_bind(*s).push_bind(*m);
            });
            qb.build().execute(&mut *tx).await?;
        }
        for chunk in plan.seq_updates.chunks(CHUNK) {
            let mut qb = QueryBuilder::<MySql>::new("INSERT INTO user_seq (userid, last_seq) ");
            qb.push_values(chunk, |mut b, (u, s)| {
                b.push_bind(*u).push_bind(*s);
            });
            qb.push(" ON DUPLICATE KEY UPDATE last_seq = VALUES(last_seq)");
            qb.build().execute(&mut *tx).await?;
        }
        for chunk in plan.acks.chunks(CHUNK) {
            let mut qb =
                QueryBuilder::<MySql>::new("INSERT INTO user_seq (userid, last_seq, acked_seq) ");
            qb.push_values(chunk, |mut b, (u, s)| {
                b.push_bind(*u).push_bind(0i64).push_bind(*s);
            });
            qb.push(
                " ON DUPLICATE KEY UPDATE \
                 acked_seq = GREATEST(acked_seq, LEAST(VALUES(acked_seq), last_seq))",
            );
            qb.build().execute(&mut *tx).await?;
        }
        let mut outcomes = Vec::with_capacity(ops.len());
        for step in plan.steps {
            outcomes.push(match step {
                Step::Done(o) => o,
                Step::Token(t) => Self::token_op(&mut tx, t).await?,
                Step::Revoke(user) => {
                    sqlx::query(sql::REVOKE_TOKENS)
                        .bind(user)
                        .execute(&mut *tx)
                        .await?;
                    WriteOutcome::Revoked
                }
            });
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

#[async_trait]
impl UserStore for MysqlStore {
    async fn create_user(&self, name: &str, key: &str, password_hash: &str) -> StoreResult<UserId> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(sql::INSERT_USER)
            .bind(name)
            .bind(key_digest(key))
            .bind(password_hash)
            .bind(now())
            .execute(&mut *tx)
            .await;
        let id = match res {
            Ok(r) => r.last_insert_id() as i64,
            Err(e) if unique_violation(&e) => return Err(StoreError::Exists),
            Err(e) => return Err(e.into()),
        };
        sqlx::query(sql::INSERT_USER_SEQ)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn find_user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        self.reads.find_user(id).await
    }

    async fn find_user_by_name(&self, name: &str) -> StoreResult<Option<Person>> {
        self.reads.find_user_by_name(name).await
    }
}

#[async_trait]
impl FriendStore for MysqlStore {
    async fn add_friend(&self, user: UserId, friend: UserId) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT id FROM users WHERE id = ? LOCK IN SHARE MODE")
                .bind(friend)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        // IGNORE skips only the duplicate rows: two plain BIGINTs cannot
        // trip any other error it would hide.
        let added =
            sqlx::query("INSERT IGNORE INTO friends (userid, friendid) VALUES (?, ?), (?, ?)")
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
        let removed = sqlx::query(sql::DELETE_FRIENDS)
            .bind(user)
            .bind(friend)
            .bind(friend)
            .bind(user)
            .execute(self.pool())
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn friends(&self, user: UserId) -> StoreResult<Vec<Person>> {
        self.reads.friends(user).await
    }
}

#[async_trait]
impl GroupStore for MysqlStore {
    async fn create_group(
        &self,
        creator: UserId,
        name: &str,
        key: &str,
        desc: &str,
    ) -> StoreResult<GroupId> {
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(sql::INSERT_GROUP)
            .bind(name)
            .bind(key_digest(key))
            .bind(desc)
            .bind(creator)
            .bind(now())
            .execute(&mut *tx)
            .await;
        let id = match res {
            Ok(r) => r.last_insert_id() as i64,
            Err(e) if unique_violation(&e) => return Err(StoreError::Exists),
            Err(e) => return Err(e.into()),
        };
        sqlx::query(sql::INSERT_CREATOR)
            .bind(id)
            .bind(creator)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn join_group(&self, group: GroupId, user: UserId) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        // A shared lock on the group row: a disband on another node either
        // finishes first (and this sees no group) or waits for this join.
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT id FROM allgroup WHERE id = ? LOCK IN SHARE MODE")
                .bind(group)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let added = sqlx::query(MySql::INSERT_MEMBER)
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
        let mut tx = self.pool().begin().await?;
        match role_in(&mut tx, group, user, false).await? {
            Some(Role::Normal) => {}
            _ => return Err(StoreError::Forbidden),
        }
        sqlx::query(sql::DELETE_MEMBER)
            .bind(group)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn disband_group(&self, group: GroupId, user: UserId) -> StoreResult<Vec<UserId>> {
        let mut tx = self.pool().begin().await?;
        if role_in(&mut tx, group, user, true).await? != Some(Role::Creator) {
            return Err(StoreError::Forbidden);
        }
        let members: Vec<i64> = sqlx::query_scalar(MySql::MEMBERS_OF)
            .bind(group)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query(sql::DELETE_MEMBERS)
            .bind(group)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql::DELETE_GROUP)
            .bind(group)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(members)
    }

    async fn created_count(&self, user: UserId) -> StoreResult<i64> {
        self.reads.created_count(user).await
    }

    async fn member_count(&self, group: GroupId) -> StoreResult<i64> {
        self.reads.member_count(group).await
    }

    async fn membership(&self, group: GroupId, user: UserId) -> StoreResult<Option<Role>> {
        self.reads.membership(group, user).await
    }

    async fn groups_of(&self, user: UserId) -> StoreResult<Vec<GroupInfo>> {
        self.reads.groups_of(user).await
    }
}

/// `NotFound` if the group does not exist; otherwise the user's role, if any.
/// The group row is locked: exclusively (to delete it) or shared.
async fn role_in(
    tx: &mut Tx,
    group: GroupId,
    user: UserId,
    exclusive: bool,
) -> StoreResult<Option<Role>> {
    let sql = if exclusive {
        "SELECT id FROM allgroup WHERE id = ? FOR UPDATE"
    } else {
        "SELECT id FROM allgroup WHERE id = ? LOCK IN SHARE MODE"
    };
    let exists: Option<i64> = sqlx::query_scalar(sql)
        .bind(group)
        .fetch_optional(&mut **tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound);
    }
    let row = sqlx::query("SELECT grouprole FROM groupuser WHERE groupid = ? AND userid = ?")
        .bind(group)
        .bind(user)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|r| Ok(Role::parse(&text(&r, 0)?))).transpose()
}

/// A user's `disabled_at`, the row locked; `NotFound` without the user.
async fn disabled_at(tx: &mut Tx, user: UserId) -> StoreResult<Option<i64>> {
    let row: Option<Option<i64>> = sqlx::query_scalar(MySql::USER_FOR_ADMIN)
        .bind(user)
        .fetch_optional(&mut **tx)
        .await?;
    row.ok_or(StoreError::NotFound)
}

/// Records an account change for the nodes to act on.
async fn record(tx: &mut Tx, user: UserId, change: AccountChange) -> StoreResult<()> {
    sqlx::query(sql::INSERT_ACCOUNT_EVENT)
        .bind(user)
        .bind(change.as_str())
        .bind(now())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Runs a statement that binds one id (a user's or a group's).
async fn with_id(tx: &mut Tx, statement: &str, id: i64) -> StoreResult<u64> {
    Ok(sqlx::query(statement)
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

/// The ids a statement binding `user` (`times` times) returns.
async fn ids(tx: &mut Tx, statement: &str, user: UserId, times: usize) -> StoreResult<Vec<i64>> {
    let mut q = sqlx::query_scalar(statement);
    for _ in 0..times {
        q = q.bind(user);
    }
    Ok(q.fetch_all(&mut **tx).await?)
}

impl MysqlStore {
    /// One attempt at [`AdminStore::delete_user`]. It locks the mid counter
    /// first, as every message-storing commit does, so it never deadlocks
    /// with one: message commits wait for the delete, cluster-wide.
    async fn delete_user_once(&self, user: UserId) -> StoreResult<DeletedUser> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT value FROM counters WHERE name = 'mid' FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        disabled_at(&mut tx, user).await?;
        let mut out = DeletedUser {
            groups: ids(&mut tx, sql::CREATED_BY, user, 1).await?,
            ..DeletedUser::default()
        };
        for &g in &out.groups {
            with_id(&mut tx, sql::DELETE_MEMBERS, g).await?;
            with_id(&mut tx, sql::DELETE_GROUP, g).await?;
        }
        with_id(&mut tx, sql::DELETE_MEMBERSHIPS, user).await?;
        for f in ids(&mut tx, sql::FRIEND_IDS, user, 1).await? {
            sqlx::query(sql::DELETE_FRIENDS)
                .bind(user)
                .bind(f)
                .bind(f)
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        let pending: BTreeSet<i64> = ids(&mut tx, sql::PENDING_FROM, user, 2)
            .await?
            .into_iter()
            .collect();
        let mut doomed = ids(&mut tx, MySql::SENT_BY, user, 1).await?;
        doomed.extend(ids(&mut tx, MySql::DIRECT_TO, user, 7).await?);
        let (hide, delete): (Vec<i64>, Vec<i64>) =
            doomed.into_iter().partition(|m| pending.contains(m));
        for (mids, statement, count) in [
            (
                &hide,
                "UPDATE messages SET conv = 'deleted' WHERE mid IN ",
                &mut out.pending,
            ),
            (
                &delete,
                "DELETE FROM messages WHERE mid IN ",
                &mut out.messages,
            ),
        ] {
            for chunk in mids.chunks(CHUNK) {
                let mut qb = QueryBuilder::<MySql>::new(statement);
                push_in(&mut qb, chunk);
                *count += qb.build().execute(&mut *tx).await?.rows_affected();
            }
        }
        for statement in [
            sql::DELETE_INBOX,
            sql::DELETE_USER_SEQ,
            sql::REVOKE_TOKENS,
            sql::DELETE_USER,
        ] {
            with_id(&mut tx, statement, user).await?;
        }
        record(&mut tx, user, AccountChange::Deleted).await?;
        tx.commit().await?;
        Ok(out)
    }
}

#[async_trait]
impl AdminStore for MysqlStore {
    async fn list_users(&self, after: UserId, limit: i64) -> StoreResult<Vec<UserSummary>> {
        self.reads.list_users(after, limit).await
    }

    async fn set_password(&self, user: UserId, password_hash: &str) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        disabled_at(&mut tx, user).await?;
        sqlx::query(sql::SET_PASSWORD)
            .bind(password_hash)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        with_id(&mut tx, sql::REVOKE_TOKENS, user).await?;
        record(&mut tx, user, AccountChange::PasswordReset).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_disabled(&self, user: UserId, disabled: bool, now: i64) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        let was = disabled_at(&mut tx, user).await?;
        if was.is_some() == disabled {
            return Ok(false);
        }
        sqlx::query(sql::SET_DISABLED)
            .bind(disabled.then_some(now))
            .bind(user)
            .execute(&mut *tx)
            .await?;
        if disabled {
            with_id(&mut tx, sql::REVOKE_TOKENS, user).await?;
            record(&mut tx, user, AccountChange::Disabled).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_user(&self, user: UserId) -> StoreResult<DeletedUser> {
        let mut attempt = 1;
        loop {
            match self.delete_user_once(user).await {
                Err(e) if attempt < COMMIT_ATTEMPTS && retryable(&e) => {
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn account_events(&self, after: i64, limit: i64) -> StoreResult<Vec<AccountEvent>> {
        self.reads.account_events(after, limit).await
    }

    async fn last_account_event(&self) -> StoreResult<i64> {
        self.reads.last_account_event().await
    }
}

#[async_trait]
impl MessageStore for MysqlStore {
    async fn commit(&self, ops: Vec<WriteOp>) -> StoreResult<Vec<WriteOutcome>> {
        let mut attempt = 1;
        loop {
            match self.commit_once(&ops).await {
                Err(e) if attempt < COMMIT_ATTEMPTS && retryable(&e) => {
                    tracing::debug!(attempt, error = %e, "group commit conflicted; retrying");
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn acked_seq(&self, user: UserId) -> StoreResult<i64> {
        self.reads.acked_seq(user).await
    }

    async fn undelivered(
        &self,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, StoredMessage)>> {
        self.reads.undelivered(user, after, limit).await
    }

    async fn history(
        &self,
        conv: Conversation,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.reads.history(conv, before, limit).await
    }

    async fn prune_tokens(&self, now: i64, limit: i64) -> StoreResult<u64> {
        // One short statement of its own: it locks only the rows it deletes
        // (and their index neighbours), oldest first along tokens_by_expiry.
        Ok(sqlx::query(
            "DELETE FROM tokens WHERE expires_at <= ? ORDER BY expires_at, hash LIMIT ?",
        )
        .bind(now)
        .bind(limit.max(0))
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    async fn prune_delivered(
        &self,
        after_user: UserId,
        users: i64,
        per_user: i64,
    ) -> StoreResult<(u64, Option<UserId>)> {
        let batch: Vec<(UserId, i64)> = sqlx::query_as(
            "SELECT userid, acked_seq FROM user_seq WHERE userid > ? ORDER BY userid LIMIT ?",
        )
        .bind(after_user)
        .bind(users.max(1))
        .fetch_all(self.pool())
        .await?;
        let mut deleted = 0u64;
        for &(user, acked) in &batch {
            // One short statement per user: it locks only that user's
            // confirmed rows, which nothing writes any more.
            deleted +=
                sqlx::query("DELETE FROM inbox WHERE userid = ? AND seq <= ? ORDER BY seq LIMIT ?")
                    .bind(user)
                    .bind(acked)
                    .bind(per_user.max(1))
                    .execute(self.pool())
                    .await?
                    .rows_affected();
        }
        Ok((deleted, super::next_user(&batch, users)))
    }

    async fn prune_messages(&self, before: i64, limit: i64) -> StoreResult<u64> {
        let pending: Option<i64> = sqlx::query_scalar("SELECT MIN(mid) FROM inbox")
            .fetch_one(self.pool())
            .await?;
        let oldest: Vec<(i64, i64)> =
            sqlx::query_as("SELECT mid, created_at FROM messages ORDER BY mid LIMIT ?")
                .bind(limit.max(0))
                .fetch_all(self.pool())
                .await?;
        let Some(upto) = super::retention_cut(&oldest, before, pending) else {
            return Ok(0);
        };
        Ok(
            sqlx::query("DELETE FROM messages WHERE mid <= ? ORDER BY mid LIMIT ?")
                .bind(upto)
                .bind(limit.max(0))
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    async fn close(&self) {
        self.pool().close().await;
    }
}
