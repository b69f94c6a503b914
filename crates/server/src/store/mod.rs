//! Storage behind traits, one per aggregate (users, friends, groups,
//! messages), so the service never names a database. Each backend lives in a
//! file of its own; one conformance suite (`tests/store_conformance.rs`) pins
//! the behaviour every backend must share.
//!
//! Chat messages and delivery confirmations are written in batches through
//! [`MessageStore::commit`]: one transaction for many requests (group commit),
//! so durability costs a transaction per batch rather than per message.

pub mod batch;
pub mod memory;
pub mod mysql;
mod sql;
pub mod sqlite;
mod sqlite_cmid_filter;
mod sqlite_cmids;
mod sqlite_history;
mod sqlite_writer;

use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::names;

/// A user's id, as the protocol carries it.
pub type UserId = i64;
/// A group's id.
pub type GroupId = i64;

/// Why a storage call, or one op of a group commit, failed: the one error
/// vocabulary of storage, which the service maps to errno in one place
/// (`error.rs`). Cloneable, so one failed group commit can answer every
/// writer in it. Names no database driver.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No such user or group (also: a message's recipient).
    #[error("not found")]
    NotFound,
    /// The thing being created exists already (name, friendship, membership).
    #[error("already exists")]
    Exists,
    /// The caller may not do this (not a member, not the creator, creator quitting).
    #[error("not allowed")]
    Forbidden,
    /// A message's sender is not a member of the group it was sent to.
    #[error("sender is not a member of the group")]
    NotMember,
    /// A login token that is unknown, someone else's, superseded or expired.
    #[error("invalid token")]
    BadToken,
    /// The (sender, cmid) names a stored message with another target or
    /// text: the client reused a cmid, and this message is not stored.
    #[error("cmid reused for another message")]
    CmidReused,
    /// The database failed or could not be reached. Holds the driver's
    /// error (sqlx or rusqlite) without naming it.
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The store is shutting down.
    #[error("storage is shutting down")]
    Closed,
}

/// Equal when the same kind; two `Unavailable` only when they hold the very
/// same failure (one failed commit answering several writers).
impl PartialEq for StoreError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (StoreError::Unavailable(a), StoreError::Unavailable(b)) => Arc::ptr_eq(a, b),
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl StoreError {
    /// `Unavailable` for any other failure (a thread that would not start,
    /// a write that panicked).
    pub fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Unavailable(Arc::from(e.into()))
    }

    /// The sqlx error behind an `Unavailable`, if sqlx reported it.
    pub(crate) fn sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            StoreError::Unavailable(e) => e.downcast_ref::<sqlx::Error>(),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(Arc::new(e))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(Arc::new(e))
    }
}

/// How long a presented token keeps working after its first use, unless a
/// newer token of its user is presented first (PROTOCOL.md: 2 minutes).
pub const TOKEN_GRACE_SECS: i64 = 120;

/// Live tokens one user may hold at most. Only a client that presents the same
/// token again and again (each login ack lost) gets near it; past it the
/// oldest of the tokens it was given and never used are dropped.
pub const MAX_LIVE_TOKENS: usize = 16;

/// Shorthand for storage results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A registered account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Account id.
    pub id: UserId,
    /// Display name, unique.
    pub name: String,
    /// The argon2id PHC string.
    pub password_hash: String,
    /// An operator disabled the account (`chat-server admin disable`): it
    /// cannot log in.
    pub disabled: bool,
}

/// An account as `chat-server admin users` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    /// Account id.
    pub id: UserId,
    /// Name as registered.
    pub name: String,
    /// Unix seconds when it registered.
    pub created_at: i64,
    /// Unix seconds when an operator disabled it; `None` while enabled.
    pub disabled_at: Option<i64>,
}

/// What an operator did to an account that its live sessions must hear of:
/// each ends them (see [`AdminStore::account_events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChange {
    /// `chat-server admin disable`.
    Disabled,
    /// `chat-server admin delete-user`.
    Deleted,
    /// `chat-server admin reset-password`.
    PasswordReset,
}

impl AccountChange {
    /// The stored `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountChange::Disabled => "disabled",
            AccountChange::Deleted => "deleted",
            AccountChange::PasswordReset => "password",
        }
    }

    /// Parses a stored `kind`; `None` for one this version does not know.
    pub fn parse(s: &str) -> Option<AccountChange> {
        match s {
            "disabled" => Some(AccountChange::Disabled),
            "deleted" => Some(AccountChange::Deleted),
            "password" => Some(AccountChange::PasswordReset),
            _ => None,
        }
    }
}

/// One recorded [`AccountChange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEvent {
    /// Growing id: nodes poll for ids above the last they saw.
    pub id: i64,
    /// The account.
    pub user: UserId,
    /// What happened to it (`None`: a kind this version does not know).
    pub change: Option<AccountChange>,
}

/// What [`AdminStore::delete_user`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletedUser {
    /// Messages deleted: every message the user sent, and every one-to-one
    /// message sent to them.
    pub messages: u64,
    /// Messages the user sent that another recipient has not confirmed yet:
    /// they leave every conversation's history at once, but stay stored
    /// until delivered, so that no recipient's seqs get a gap.
    pub pending: u64,
    /// The groups the user created, disbanded with them, ascending.
    pub groups: Vec<GroupId>,
}

/// The conversation key that a deleted user's undelivered messages move to:
/// no HISTORY request can name it.
pub const DELETED_CONV: &str = "deleted";

/// A friend or group member as listed to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Account id.
    pub id: UserId,
    /// Display name.
    pub name: String,
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Created the group; may disband it, may not quit it.
    Creator,
    /// Joined the group.
    Normal,
}

impl Role {
    /// The classic `grouprole` column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Creator => "creator",
            Role::Normal => "normal",
        }
    }

    /// Parses a `grouprole` value; anything unknown reads as normal.
    pub fn parse(s: &str) -> Role {
        if s == "creator" {
            Role::Creator
        } else {
            Role::Normal
        }
    }
}

/// A group member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Account id.
    pub id: UserId,
    /// Display name.
    pub name: String,
    /// Creator or normal member.
    pub role: Role,
}

/// A group with its members, as the login ack lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Group id.
    pub id: GroupId,
    /// Unique group name.
    pub name: String,
    /// Free-text description.
    pub desc: String,
    /// Members, ordered by id.
    pub members: Vec<Member>,
}

/// Where a chat message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// One-to-one, to this user.
    User(UserId),
    /// To every member of this group except the sender.
    Group(GroupId),
}

impl Target {
    /// The conversation key that HISTORY pages by: both directions of a
    /// one-to-one chat share one key.
    pub fn conv_key(self, sender: UserId) -> String {
        match self {
            Target::User(to) => Conversation::Direct(sender, to).key(),
            Target::Group(g) => Conversation::Group(g).key(),
        }
    }

    /// The protocol's msgid for this kind of chat.
    pub fn kind(self) -> i64 {
        match self {
            Target::User(_) => 6,
            Target::Group(_) => 10,
        }
    }

    /// The id of the user or group.
    pub fn id(self) -> i64 {
        match self {
            Target::User(id) | Target::Group(id) => id,
        }
    }

    /// Rebuilds a target from the stored kind and id.
    pub fn from_parts(kind: i64, id: i64) -> Target {
        if kind == 10 {
            Target::Group(id)
        } else {
            Target::User(id)
        }
    }
}

/// A conversation, for HISTORY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversation {
    /// Both directions between two users.
    Direct(UserId, UserId),
    /// A group's messages.
    Group(GroupId),
}

impl Conversation {
    /// Stored key: `d:LO:HI` or `g:ID`.
    ///
    /// Built with `itoa`, not `format!`: every stored message needs one, and
    /// `format!` cost ~1.9k instructions a message on the writer thread.
    pub fn key(self) -> String {
        let mut lo = itoa::Buffer::new();
        let mut hi = itoa::Buffer::new();
        let (tag, lo, hi) = match self {
            Conversation::Direct(a, b) => ("d:", lo.format(a.min(b)), Some(hi.format(a.max(b)))),
            Conversation::Group(g) => ("g:", lo.format(g), None),
        };
        let mut key = String::with_capacity(2 + lo.len() + 1 + hi.map_or(0, str::len));
        key.push_str(tag);
        key.push_str(lo);
        if let Some(hi) = hi {
            key.push(':');
            key.push_str(hi);
        }
        key
    }
}

/// A chat message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Unique, growing message id.
    pub mid: i64,
    /// Sender's id.
    pub sender: UserId,
    /// Sender's name when sent (names never change).
    pub sender_name: Arc<str>,
    /// Recipient user or group.
    pub target: Target,
    /// The text. Shared, as `sender_name`: copied once out of the request
    /// (or the row it is read from), then shared by the group commit's
    /// plan, the row it binds and the push encoder.
    pub body: Arc<str>,
    /// Unix seconds when stored.
    pub time: i64,
}

/// A message to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Sender's id (from the session, never from the frame).
    pub sender: UserId,
    /// Sender's name, denormalised into the row (the session's, shared).
    pub sender_name: Arc<str>,
    /// Recipient user or group.
    pub target: Target,
    /// The text.
    pub body: Arc<str>,
    /// Optional client message id for idempotent retries.
    pub cmid: Option<String>,
    /// Unix seconds.
    pub time: i64,
}

/// One write in a group-commit batch.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Store a chat message and give each recipient a seq.
    Append(NewMessage),
    /// Cumulative delivery confirmation: `user` holds every message up to `seq`.
    Ack {
        /// Recipient confirming.
        user: UserId,
        /// Highest confirmed seq; clamped to the user's last seq.
        seq: i64,
    },
    /// Issue a login token.
    Token(TokenRequest),
    /// Revoke every token a user holds (LOGINOUT).
    RevokeTokens {
        /// Whose tokens.
        user: UserId,
    },
}

/// Issue a login token to `user`, after a password login or in exchange for
/// one of `user`'s tokens. The rules (PROTOCOL.md, "Tokens, more precisely";
/// planned in [`batch::plan_token`]):
///
/// - Presenting a token kills every token `user` was given before it. The
///   presented token itself keeps working until a newer one is presented,
///   or for [`TOKEN_GRACE_SECS`] after its first use, whichever is first,
///   so a client whose login ack was lost can log in with it again.
/// - A token that is not `user`'s fails with [`StoreError::BadToken`] and is
///   left as it was: it still works for its owner.
/// - A password login (`consume: None`) kills every earlier token of `user`.
/// - Dead rows of `user` (expired, or past their grace) are deleted.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// SHA-256 (hex) of the token presented; `None` after a password login.
    pub consume: Option<String>,
    /// The user logging in: the presented token must be theirs.
    pub user: UserId,
    /// SHA-256 (hex) of the new token.
    pub issue: String,
    /// Unix seconds from which the new token is refused.
    pub expires_at: i64,
    /// Now, in Unix seconds: for expiry and the grace period.
    pub now: i64,
}

/// The result of one [`WriteOp`], of the op's own kind. An op that fails on
/// its own carries its error; the rest of the batch stands.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// For [`WriteOp::Append`].
    Append(StoreResult<Appended>),
    /// For [`WriteOp::Ack`]: confirmation recorded.
    Acked,
    /// For [`WriteOp::Token`].
    Token(StoreResult<TokenIssued>),
    /// For [`WriteOp::RevokeTokens`]: tokens revoked.
    Revoked,
}

/// What an append did.
#[derive(Debug, Clone)]
pub enum Appended {
    /// The message is durable and has these recipients.
    New(Fanout),
    /// A retry of a (sender, cmid) that was stored before: nothing new stored.
    Duplicate {
        /// The first attempt's mid.
        mid: i64,
    },
}

/// A newly stored message and the seq each recipient got for it: what
/// routing needs.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// The stored message.
    pub message: Arc<StoredMessage>,
    /// (recipient, seq) pairs, in ascending recipient id.
    pub deliveries: Vec<(UserId, i64)>,
}

/// A login token was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenIssued {
    /// The user the token belongs to.
    pub user: UserId,
}

/// Where the next [`MessageStore::prune_delivered`] step goes on: after the
/// last user of a full page of `users`, or nowhere (the page was the last).
pub(crate) fn next_user(batch: &[(UserId, i64)], users: i64) -> Option<UserId> {
    if batch.len() as i64 == users.max(1) {
        batch.last().map(|b| b.0)
    } else {
        None
    }
}

/// The last mid retention may delete among `oldest` (the oldest messages,
/// `(mid, stored at)` in mid order): the run stored before `before`, and
/// below `pending`, the oldest mid someone has not confirmed. None: nothing.
pub(crate) fn retention_cut(
    oldest: &[(i64, i64)],
    before: i64,
    pending: Option<i64>,
) -> Option<i64> {
    oldest
        .iter()
        .take_while(|(mid, at)| *at < before && pending.is_none_or(|p| *mid < p))
        .last()
        .map(|(mid, _)| *mid)
}

/// A backend's migrator over its migrations, in order: what each does and
/// its SQL (one file each under `migrations/BACKEND/`, numbered from 1).
/// The backends share their first four; later ones may be one backend's.
fn migrator(list: &[(&'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let migrations = list
        .iter()
        .zip(1..)
        .map(|(&(what, sql), version)| {
            Migration::new(
                version,
                std::borrow::Cow::Borrowed(what),
                MigrationType::Simple,
                std::borrow::Cow::Borrowed(sql),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: std::borrow::Cow::Owned(migrations),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

/// How the `name_key` columns hold a name's key ([`names::key`]): its
/// SHA-256, hex. A key can be many times longer than its name (NFKC alone
/// turns one character into up to 18), longer than a MySQL index can hold;
/// a digest fits any index and compares just as well.
pub fn key_digest(key: &str) -> String {
    crate::password::hex(&Sha256::digest(key.as_bytes()))
}

/// The tables whose rows have a keyed name, each with its name column.
const KEYED_TABLES: [(&str, &str); 2] = [("users", "name"), ("allgroup", "groupname")];

/// Keys the names of rows stored before migration 3 added `name_key` (SQL
/// cannot compute a key), in one transaction, oldest row first; a backend
/// calls it when it opens, after migrating. `id_and_name` reads a row of
/// `SELECT id, name`. A row whose key an older row already holds keeps NULL
/// and its name: its look is reserved by the older row. So do rows that look
/// blank. A duplicate key fails only its own statement, on either backend,
/// so the rest of the transaction stands. Rows keyed on an earlier open are
/// not read again; rows left NULL are tried again (a disbanded group may have
/// freed the key). Nodes opening one MySQL database at once walk the rows in
/// the same order: the later waits on the first's row locks, then finds
/// those rows keyed.
pub(crate) async fn backfill_name_keys<DB>(
    pool: &sqlx::Pool<DB>,
    id_and_name: fn(&DB::Row) -> StoreResult<(i64, String)>,
) -> StoreResult<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut tx = pool.begin().await?;
    for (table, column) in KEYED_TABLES {
        // Table and column names come from the constant list, never from input.
        let select = format!("SELECT id, {column} FROM {table} WHERE name_key IS NULL ORDER BY id");
        let rows = sqlx::query::<DB>(&select).fetch_all(&mut *tx).await?;
        let update = format!("UPDATE {table} SET name_key = ? WHERE id = ? AND name_key IS NULL");
        for row in &rows {
            let (id, name) = id_and_name(row)?;
            let Some(key) = names::legacy_key(&name) else {
                continue;
            };
            let res = sqlx::query::<DB>(&update)
                .bind(key_digest(&key))
                .bind(id)
                .execute(&mut *tx)
                .await;
            match res {
                Ok(_) => {}
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                    tracing::info!(
                        table,
                        id,
                        "name looks like an older one; it reserves nothing"
                    )
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Accounts.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates an account named `name`, unique by `key` (the name's
    /// [`names::key`]); `Exists` when another account has that key (or name).
    async fn create_user(&self, name: &str, key: &str, password_hash: &str) -> StoreResult<UserId>;
    /// Looks an account up by id.
    async fn find_user(&self, id: UserId) -> StoreResult<Option<UserRecord>>;
    /// Looks an account up by its name exactly as registered (byte for
    /// byte, so case-sensitive; FIND_USER). Not by key: a look-alike of a
    /// name finds nobody.
    async fn find_user_by_name(&self, name: &str) -> StoreResult<Option<Person>>;
}

/// Mutual friendships.
#[async_trait]
pub trait FriendStore: Send + Sync {
    /// Befriends both ways. `NotFound` if `friend` does not exist, `Exists` if
    /// they are friends already.
    async fn add_friend(&self, user: UserId, friend: UserId) -> StoreResult<()>;
    /// Removes both directions. `NotFound` if they were not friends.
    async fn remove_friend(&self, user: UserId, friend: UserId) -> StoreResult<()>;
    /// A user's friends, ordered by id.
    async fn friends(&self, user: UserId) -> StoreResult<Vec<Person>>;
}

/// Groups and memberships.
#[async_trait]
pub trait GroupStore: Send + Sync {
    /// Creates a group with `creator` as its first member, unique by `key`
    /// (the name's [`names::key`]); `Exists` if another group has that key (or name).
    async fn create_group(
        &self,
        creator: UserId,
        name: &str,
        key: &str,
        desc: &str,
    ) -> StoreResult<GroupId>;
    /// Joins a group: `NotFound` (no group), `Exists` (already a member).
    async fn join_group(&self, group: GroupId, user: UserId) -> StoreResult<()>;
    /// Leaves a group: `NotFound` (no group), `Forbidden` (not a member, or the creator).
    async fn quit_group(&self, group: GroupId, user: UserId) -> StoreResult<()>;
    /// Deletes a group: `NotFound` (no group), `Forbidden` (not the creator).
    /// Returns the members it had.
    async fn disband_group(&self, group: GroupId, user: UserId) -> StoreResult<Vec<UserId>>;
    /// `user`'s role in `group`: `NotFound` if the group does not exist, `None` if not a member.
    async fn membership(&self, group: GroupId, user: UserId) -> StoreResult<Option<Role>>;
    /// The groups a user belongs to, with all members, ordered by id.
    async fn groups_of(&self, user: UserId) -> StoreResult<Vec<GroupInfo>>;
    /// How many existing groups `user` created (for the quota).
    async fn created_count(&self, user: UserId) -> StoreResult<i64>;
    /// How many members `group` has; 0 when it does not exist.
    async fn member_count(&self, group: GroupId) -> StoreResult<i64>;
}

/// Messages, delivery state and login tokens.
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Applies a batch in one transaction. The outer error means nothing was
    /// written; otherwise there is one outcome per op, in order.
    async fn commit(&self, ops: Vec<WriteOp>) -> StoreResult<Vec<WriteOutcome>>;
    /// [`MessageStore::commit`] in two steps: returns once the batch is
    /// committed, with a [`Durable`] that resolves once it is on disk. The
    /// committer starts the next batch meanwhile, pushes this one's
    /// messages at once and answers its writers only after the `Durable`:
    /// so what a commit returned must survive a crash of the process (in
    /// the OS's hands, as SQLite's WAL after COMMIT), and only a flush may
    /// be left (crate::committer explains why). By default the commit is
    /// durable when it returns.
    async fn commit_staged(&self, ops: Vec<WriteOp>) -> StoreResult<(Vec<WriteOutcome>, Durable)> {
        Ok((self.commit(ops).await?, Durable::ready()))
    }
    /// The highest seq a user has confirmed.
    async fn acked_seq(&self, user: UserId) -> StoreResult<i64>;
    /// Messages for `user` with seq above `after`, oldest first, at most `limit`.
    async fn undelivered(
        &self,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, StoredMessage)>>;
    /// A conversation's messages older than `before` (if given), newest first.
    async fn history(
        &self,
        conv: Conversation,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<StoredMessage>>;
    /// Deletes at most `limit` dead login tokens (expired, or past their
    /// grace at `now`), of any user, oldest first; returns how many. Token
    /// writes prune their own user's dead rows; this catches users who never
    /// log in again.
    async fn prune_tokens(&self, now: i64, limit: i64) -> StoreResult<u64>;
    /// Deletes confirmed inbox rows (seq at or below the user's confirmed
    /// seq) of the users after `after_user`, in user order: at most `users`
    /// users and `per_user` rows each. Returns the rows deleted and the last
    /// user looked at (None once past the last user). Confirmed rows are
    /// never read again: replays start after the confirmed seq.
    async fn prune_delivered(
        &self,
        after_user: UserId,
        users: i64,
        per_user: i64,
    ) -> StoreResult<(u64, Option<UserId>)>;
    /// Deletes at most `limit` of the oldest messages stored before `before`
    /// (unix seconds), only up to the oldest message someone has not
    /// confirmed yet: an undelivered message is never lost to retention.
    /// Returns how many were deleted.
    async fn prune_messages(&self, before: i64, limit: i64) -> StoreResult<u64>;
    /// Closes connections; called once at shutdown.
    async fn close(&self) {}
    /// Answers when storage answers a read (readiness checks).
    async fn ping(&self) -> StoreResult<()> {
        self.acked_seq(0).await.map(|_| ())
    }
}

/// What operators do to accounts (`chat-server admin`), from another
/// process while servers run. Every change that live sessions must hear of
/// is recorded as an [`AccountEvent`] in the same transaction; each node
/// polls for them.
#[async_trait]
pub trait AdminStore: Send + Sync {
    /// Accounts with an id above `after`, ascending, at most `limit`.
    async fn list_users(&self, after: UserId, limit: i64) -> StoreResult<Vec<UserSummary>>;
    /// Replaces the password hash, revokes every login token of the user and
    /// records [`AccountChange::PasswordReset`]. `NotFound` without the user.
    async fn set_password(&self, user: UserId, password_hash: &str) -> StoreResult<()>;
    /// Disables the account at `now` (revoking its tokens and recording
    /// [`AccountChange::Disabled`]) or enables it. Returns whether that
    /// changed anything: disabling a disabled account keeps its first time.
    /// `NotFound` without the user.
    async fn set_disabled(&self, user: UserId, disabled: bool, now: i64) -> StoreResult<bool>;
    /// Deletes the account: its row, tokens, friendships (both ways), group
    /// memberships, the groups it created (disbanded, as DISBAND_GROUP
    /// would), its inbox and counters, every message it sent and every
    /// one-to-one message sent to it (see [`DeletedUser::pending`] for the
    /// exception), then records [`AccountChange::Deleted`]. Mids of deleted
    /// messages are never handed out again. `NotFound` without the user.
    async fn delete_user(&self, user: UserId) -> StoreResult<DeletedUser>;
    /// Recorded account changes with an id above `after`, ascending, at
    /// most `limit`.
    async fn account_events(&self, after: i64, limit: i64) -> StoreResult<Vec<AccountEvent>>;
    /// The highest account event id recorded, 0 when none.
    async fn last_account_event(&self) -> StoreResult<i64>;
}

/// Resolves once a staged commit is on disk (see
/// [`MessageStore::commit_staged`]).
#[derive(Debug)]
pub struct Durable(Option<tokio::sync::oneshot::Receiver<StoreResult<()>>>);

impl Durable {
    /// Already durable.
    pub fn ready() -> Self {
        Durable(None)
    }

    /// Durable once `rx` answers `Ok`.
    pub(crate) fn pending(rx: tokio::sync::oneshot::Receiver<StoreResult<()>>) -> Self {
        Durable(Some(rx))
    }

    /// Waits until the commit is on disk; an error means it may not be.
    pub async fn wait(self) -> StoreResult<()> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.map_err(|_| StoreError::Closed)?,
        }
    }
}

/// Everything the service needs from storage.
pub trait Store: UserStore + FriendStore + GroupStore + MessageStore + AdminStore {}

impl<T: UserStore + FriendStore + GroupStore + MessageStore + AdminStore> Store for T {}

/// Opens the store that a database URL names, migrated and ready.
pub async fn open(url: &str, opts: &StoreOptions) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url, opts).await?))
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Ok(Arc::new(mysql::MysqlStore::open(url, opts).await?))
    } else {
        anyhow::bail!(
            "unsupported database URL {url:?}: expected sqlite://PATH or mysql://USER:PASS@HOST:PORT/DB"
        )
    }
}

/// Tuning shared by the backends.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections for reads (and for MySQL, writes too).
    pub pool_size: u32,
    /// SQLite `synchronous`: FULL makes every commit survive power loss.
    pub sqlite_synchronous_full: bool,
    /// Runs the store's background upkeep (SQLite: checkpoints and the
    /// inbox log's merges): a server does, a short-lived operator command
    /// beside it need not.
    pub background: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pool_size: 4,
            sqlite_synchronous_full: true,
            background: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The keys stored rows already hold: the text `format!` made.
        #[test]
        fn conversation_keys_are_written_as_before(a: i64, b: i64) {
            proptest::prop_assert_eq!(
                Conversation::Direct(a, b).key(),
                format!("d:{}:{}", a.min(b), a.max(b))
            );
            proptest::prop_assert_eq!(Conversation::Group(a).key(), format!("g:{a}"));
        }
    }
}
