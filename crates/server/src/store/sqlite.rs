//! The embedded backend: one SQLite file in WAL mode.
//!
//! Every write runs on one dedicated thread that owns the only writing
//! connection ([`super::sqlite_writer`]), so writes queue in process instead
//! of fighting over SQLite's lock, and a group commit is one hop to that
//! thread rather than one per statement. Reads use a sqlx pool and run beside
//! the writer, as WAL allows. Migrations run over sqlx when the store opens,
//! before the writer starts.
//!
//! The inbox log. A commit appends its inbox rows (one per recipient per
//! message) to `inbox_log`, a plain rowid table, not to `inbox`, which is
//! clustered by (userid, seq): there a group message of 500 members touched
//! 500 pages, each written to the WAL and flushed before the ACK, while in
//! the log its rows fill a page or two. A merger moves the log into `inbox`
//! in the background, a generation at a time: rows that were already in the
//! log when the previous generation was taken, so a row has normally waited
//! [`MERGE_EVERY`] or [`MERGE_AT`] newer rows. By then an online
//! recipient has usually confirmed it, and a confirmed row is dropped, as
//! pruning would drop it from `inbox` (confirmed rows are never read again);
//! the rest go in sorted by key. Each step is one short transaction on the
//! writer, queued behind the commits. A row is in exactly one of the two
//! tables at any snapshot: the inbox read reads both
//! ([`Dialect::UNDELIVERED`]), retention reads both, account deletion
//! merges everything first, and pruning moves a short log into `inbox`.
//! Durability does not change: the log is a table like any other, flushed
//! before the ACK.
//!
//! HISTORY's (conv, mid) index is built behind the commits the same way, by
//! its own task ([`super::sqlite_history`]), and so is the exactly-once
//! index of (sender, cmid) ([`super::sqlite_cmids`]).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::ToSqlOutput;
use rusqlite::{params, OptionalExtension, Transaction};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool};

use super::batch::{self, Lookups, Step, TokenRow};
use super::sql::{self, role_from, Dialect, SqlReads, ROLE_IN};
use super::sqlite_cmids::{self as cmids, CmidIndex};
use super::sqlite_history::{self as history, HistoryIndex};
use super::sqlite_writer::{self as writer, Held, Writer, WriterOptions};
use super::{
    backfill_name_keys, key_digest, AccountChange, AccountEvent, AdminStore, Conversation,
    DeletedUser, Durable, FriendStore, GroupId, GroupInfo, GroupStore, MessageStore, Person, Role,
    StoreError, StoreOptions, StoreResult, StoredMessage, Target, TokenRequest, UserId, UserRecord,
    UserStore, UserSummary, WriteOp, WriteOutcome,
};

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    read: Arc<SqlReads<Sqlite>>,
    /// The one writer; the history indexer queues its steps here too.
    pub(super) writer: Arc<Writer>,
    counters: Arc<Mutex<Counters>>,
    log: Arc<InboxLog>,
    /// The history indexer's state; its tests drive it.
    pub(super) index: Arc<HistoryIndex>,
    /// The cmids above the `cmids` counter, for the exactly-once lookups.
    pub(super) cmids: Arc<CmidIndex>,
}

/// Rows appended to the inbox log since the last generation was taken that
/// start the next merge at once (module docs). Readers scan the log, up to
/// about twice this, a few milliseconds at worst; at 250,000 deliveries a
/// second this still gives confirmations over 100 ms to arrive.
const MERGE_AT: usize = 32_768;

/// Group commits of at most this many writes may run in place, on the
/// committer's own thread, when the server is quiet (`sqlite_writer`,
/// module docs).
const IN_PLACE_WRITES: usize = 16;

/// How often the merger looks at the log when it is not full: a quiet
/// server's rows wait one to two of these.
const MERGE_EVERY: Duration = Duration::from_secs(1);

/// Log rows one merge step takes at most, so that no step holds the writer
/// for more than a few milliseconds.
const MERGE_STEP: i64 = 8192;

/// The inbox log's bookkeeping, shared by the store and its merger.
#[derive(Default)]
struct InboxLog {
    /// Rows appended since the merger last took a generation. Only the
    /// writer thread changes it, so a merge step can reset it.
    staged: AtomicUsize,
    /// Set when something other than the merger emptied the log: rowids
    /// then start again from 1, below the merger's generation mark, which
    /// must start over.
    emptied: AtomicBool,
    /// Wakes the merger before its timer.
    full: tokio::sync::Notify,
}

impl InboxLog {
    /// Notes that a transaction other than the merger's emptied the log.
    fn emptied_elsewhere(&self) {
        self.staged.store(0, Ordering::Relaxed);
        self.emptied.store(true, Ordering::Relaxed);
    }
}

/// One merge step: moves the log rows with a rowid at or below `due` into
/// `inbox`, at most [`MERGE_STEP`] of them, dropping those their recipient
/// has confirmed; the rest go in key order, so each user's rows land
/// together. Returns the new `due` (the log's highest rowid, and `staged`
/// reset) once no row at or below `due` is left, else `None`.
fn merge_step(tx: &Transaction<'_>, log: &InboxLog, due: i64) -> StoreResult<Option<i64>> {
    let first: Option<i64> = tx
        .prepare_cached("SELECT MIN(rowid) FROM inbox_log")?
        .query_row([], |r| r.get(0))?;
    if let Some(first) = first.filter(|&f| f <= due) {
        let upto = due.min(first.saturating_add(MERGE_STEP - 1));
        tx.prepare_cached(
            "INSERT INTO inbox (userid, seq, mid) \
             SELECT l.userid, l.seq, l.mid FROM inbox_log l \
             LEFT JOIN user_seq s ON s.userid = l.userid \
             WHERE l.rowid <= ? AND l.seq > COALESCE(s.acked_seq, 0) \
             ORDER BY l.userid, l.seq",
        )?
        .execute([upto])?;
        tx.prepare_cached("DELETE FROM inbox_log WHERE rowid <= ?")?
            .execute([upto])?;
        if upto < due {
            return Ok(None);
        }
    }
    let top: Option<i64> = tx
        .prepare_cached("SELECT MAX(rowid) FROM inbox_log")?
        .query_row([], |r| r.get(0))?;
    // Commits run on this thread too: none came in between.
    log.staged.store(0, Ordering::Relaxed);
    Ok(Some(top.unwrap_or(0)))
}

/// Moves the whole log into `inbox` (confirmed rows dropped), for the
/// writer's statements that read `inbox` alone.
fn merge_all(tx: &Transaction<'_>, log: &InboxLog) -> StoreResult<()> {
    while merge_step(tx, log, i64::MAX)?.is_none() {}
    log.emptied_elsewhere();
    Ok(())
}

/// Moves the whole log into `inbox`, confirmed rows too, for pruning, which
/// deletes confirmed rows a bounded number per user and counts them; but
/// only a log of at most [`MERGE_STEP`] rows. A longer one is left to the
/// merger, which drops its confirmed rows anyway (moving it here would hold
/// the writer for as long as a whole generation takes).
fn move_small_log(tx: &Transaction<'_>, log: &InboxLog) -> StoreResult<()> {
    let span: Option<i64> = tx
        .prepare_cached("SELECT MAX(rowid) - MIN(rowid) FROM inbox_log")?
        .query_row([], |r| r.get(0))?;
    if span.is_none_or(|n| n >= MERGE_STEP) {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO inbox (userid, seq, mid) \
         SELECT userid, seq, mid FROM inbox_log ORDER BY userid, seq",
    )?
    .execute([])?;
    tx.prepare_cached("DELETE FROM inbox_log")?.execute([])?;
    log.emptied_elsewhere();
    Ok(())
}

/// The merger task: takes a generation of the log when [`MERGE_AT`] rows
/// have come in or every [`MERGE_EVERY`], and merges the previous one in
/// steps. Ends when the store is closed or dropped.
async fn merger(writer: Weak<Writer>, log: Arc<InboxLog>) {
    // Nothing is due until the first look takes a generation: rows a
    // previous run left are merged at the second.
    let mut due = 0;
    log.staged.store(1, Ordering::Relaxed);
    loop {
        let woken = tokio::time::timeout(MERGE_EVERY, log.full.notified()).await;
        let staged = log.staged.load(Ordering::Relaxed);
        // A wake-up stored while a merge ran may be for a log that merge
        // has since taken: only a log that is full now cuts the wait short.
        if woken.is_ok() && staged < MERGE_AT {
            continue;
        }
        if log.emptied.swap(false, Ordering::Relaxed) {
            due = 0;
        }
        if due == 0 && staged == 0 {
            continue;
        }
        let started = std::time::Instant::now();
        let mut steps = 0u32;
        loop {
            let Some(w) = writer.upgrade() else { return };
            let shared = log.clone();
            let res = w.transact(move |tx| merge_step(tx, &shared, due)).await;
            drop(w);
            steps += 1;
            match res {
                Ok(Some(next)) => {
                    due = next;
                    break;
                }
                Ok(None) => {}
                Err(StoreError::Closed) => return,
                Err(e) => {
                    // The rows stay in the log, where reads find them.
                    tracing::warn!(error = %e, "merging the inbox log failed; retrying");
                    break;
                }
            }
        }
        let ms = started.elapsed().as_millis() as u64;
        if ms > 500 {
            // Each step is short, but a generation this slow means the
            // writer is falling behind (commits come first).
            tracing::info!(steps, ms, "slow merge of the inbox log");
        } else {
            tracing::trace!(steps, ms, "merged a generation of the inbox log");
        }
    }
}

/// Users whose `last_seq` the writer remembers at most; past it the memory
/// starts over (a cache miss is one indexed read).
const MAX_CACHED_COUNTERS: usize = 1 << 18;

/// The counters a group commit reads and advances (each recipient's
/// `last_seq` and the highest mid), remembered by the writer so that a batch
/// need not read them back: for a group message that is a read per member.
/// The writer is the only connection that writes them, and it checks that
/// with `PRAGMA data_version`, which changes when any other connection (or
/// process) commits: then, and after any batch that failed, it forgets
/// everything and reads again. Only the writer (its thread, or a commit in place, under its lock) touches it; the mutex
/// is never contended.
#[derive(Debug, Default)]
struct Counters {
    data_version: Option<i64>,
    max_mid: Option<i64>,
    last_seq: HashMap<UserId, i64>,
}

impl Counters {
    fn forget(&mut self) {
        *self = Counters::default();
    }

    /// Forgets everything if another connection has written since last
    /// time, and then says so.
    fn check(&mut self, tx: &Transaction<'_>) -> StoreResult<bool> {
        let v: i64 = tx
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        let foreign = self.data_version != Some(v);
        if foreign {
            self.forget();
            self.data_version = Some(v);
        }
        if self.last_seq.len() > MAX_CACHED_COUNTERS {
            self.last_seq.clear();
        }
        Ok(foreign)
    }
}

/// A `counters` row, 0 if there is none (the indexers' `history` and
/// `cmids`).
pub(super) fn counter(tx: &Transaction<'_>, name: &str) -> StoreResult<i64> {
    Ok(tx
        .prepare_cached("SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = ?")?
        .query_row([name], |r| r.get(0))?)
}

/// Sets a `counters` row.
pub(super) fn set_counter(tx: &Transaction<'_>, name: &str, value: i64) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?, ?) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![name, value])?;
    Ok(())
}

/// The highest mid in `messages`, if any.
pub(super) fn newest_mid(tx: &Transaction<'_>) -> StoreResult<Option<i64>> {
    Ok(tx
        .prepare_cached("SELECT MAX(mid) FROM messages")?
        .query_row([], |r| r.get(0))?)
}

/// The schema, in order; tests migrate part of the way.
pub(super) const MIGRATIONS: &[(&str, &str)] = &[
    (
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        "token rotation",
        include_str!("../../migrations/sqlite/0002_token_rotation.sql"),
    ),
    (
        "name keys",
        include_str!("../../migrations/sqlite/0003_name_keys.sql"),
    ),
    (
        "admin",
        include_str!("../../migrations/sqlite/0004_admin.sql"),
    ),
    (
        "inbox log",
        include_str!("../../migrations/sqlite/0005_inbox_log.sql"),
    ),
    (
        "history index",
        include_str!("../../migrations/sqlite/0006_history_index.sql"),
    ),
    (
        "cmid index",
        include_str!("../../migrations/sqlite/0007_cmid_index.sql"),
    ),
];

fn migrator() -> Migrator {
    super::migrator(MIGRATIONS)
}

fn now() -> i64 {
    chat_protocol::time::unix_now()
}

/// `Exists` for a UNIQUE or PRIMARY KEY violation (a name or key taken),
/// `Unavailable` for anything else.
fn exists_or_unavailable(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation
                && matches!(
                    f.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                ) =>
        {
            StoreError::Exists
        }
        _ => e.into(),
    }
}

/// Whether a URL names an in-memory database, which the writer thread's
/// connection could not share with the read pool.
fn in_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (db, query) = rest.split_once('?').unwrap_or((rest, ""));
    db == ":memory:" || query.split('&').any(|p| p == "mode=memory")
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str, opts: &StoreOptions) -> StoreResult<Self> {
        if in_memory(url) {
            return Err(StoreError::unavailable(
                "in-memory SQLite is not supported: the writer thread and the read pool open one file",
            ));
        }
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
        // Migrations and the name-key backfill need sqlx; their connection
        // closes before the writer thread starts, so one connection writes.
        let setup = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.clone())
            .await?;
        let migrated = async {
            migrator()
                .run(&setup)
                .await
                .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
            backfill_name_keys(&setup, |r| Ok((r.try_get(0)?, r.try_get(1)?))).await
        }
        .await;
        setup.close().await;
        migrated?;
        let writer = Writer::start(WriterOptions {
            path: base.get_filename().to_owned(),
            synchronous_full: opts.sqlite_synchronous_full,
        })
        .await?;
        let read = SqlitePoolOptions::new()
            .max_connections(opts.pool_size.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base)
            .await;
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                writer.stop().await;
                return Err(e.into());
            }
        };
        let writer = Arc::new(writer);
        let log = Arc::new(InboxLog::default());
        let index = Arc::new(HistoryIndex::default());
        let cmids = Arc::new(CmidIndex::default());
        if opts.background {
            tokio::spawn(checkpointer(read.clone()));
            tokio::spawn(merger(Arc::downgrade(&writer), log.clone()));
            tokio::spawn(history::indexer(Arc::downgrade(&writer), index.clone()));
            tokio::spawn(cmids::indexer(Arc::downgrade(&writer), cmids.clone()));
        }
        Ok(SqliteStore {
            read: Arc::new(SqlReads::new(read)),
            writer,
            counters: Arc::default(),
            log,
            index,
            cmids,
        })
    }
}

// Writes: each runs as one transaction on the writer (its thread, or in
// place for a quiet server's small commits), with single-row
// statements from its cache.

/// What a batch must read, one cached lookup per user, group and cmid.
/// Also returns where the database stood if the cmid lookups had to index
/// the tail first ([`cmids::lookup`]).
fn lookups(
    tx: &Transaction<'_>,
    held: &mut Held<'_>,
    need: &batch::Needs,
    index: &CmidIndex,
) -> StoreResult<(Lookups, Option<cmids::At>)> {
    let mut lk = Lookups::default();
    let mut user = tx.prepare_cached("SELECT 1 FROM users WHERE id = ?")?;
    for &u in &need.users {
        if user.exists([u])? {
            lk.existing_users.insert(u);
        }
    }
    let mut members = tx.prepare_cached(Sqlite::MEMBERS_OF)?;
    for &g in &need.groups {
        let ms = members
            .query_map([g], |r| r.get(0))?
            .collect::<Result<Vec<UserId>, _>>()?;
        // No members means no group, as with one query over all groups.
        if !ms.is_empty() {
            lk.members.insert(g, ms);
        }
    }
    let (hits, caught_up) = cmids::lookup(tx, held, index, &need.cmids)?;
    lk.cmid_hits = hits;
    Ok((lk, caught_up))
}

/// Current `last_seq` of each user that has a counter row, from memory
/// where the writer has it.
fn last_seqs(
    tx: &Transaction<'_>,
    users: &[UserId],
    known: &Counters,
) -> StoreResult<HashMap<UserId, i64>> {
    let mut out = HashMap::with_capacity(users.len());
    let mut st = tx.prepare_cached("SELECT last_seq FROM user_seq WHERE userid = ?")?;
    for &u in users {
        if let Some(&s) = known.last_seq.get(&u) {
            out.insert(u, s);
        } else if let Some(s) = st.query_row([u], |r| r.get(0)).optional()? {
            out.insert(u, s);
        }
    }
    Ok(out)
}

/// Rows per multi-row INSERT, largest first: a batch's rows go in
/// statements of these sizes, so each table has six statement texts, each
/// prepared once and cached, and a big batch pays one statement per 64 rows
/// instead of one per row.
pub(super) const ROWS_PER_INSERT: [usize; 6] = [64, 16, 8, 4, 2, 1];

/// The INSERT texts of one table, one per size in [`ROWS_PER_INSERT`].
pub(super) struct Inserts {
    head: &'static str,
    columns: usize,
    /// The writer's held-statement slot of the first size; the others
    /// follow it.
    slot: usize,
    texts: std::sync::OnceLock<Vec<String>>,
}

impl Inserts {
    pub(super) const fn new(head: &'static str, columns: usize, slot: usize) -> Self {
        Inserts {
            head,
            columns,
            slot,
            texts: std::sync::OnceLock::new(),
        }
    }

    /// The text for `i`, the index of a size in [`ROWS_PER_INSERT`].
    ///
    /// `OR ROLLBACK`: a multi-row statement that may abort halfway needs a
    /// statement journal (a copy of every page it changes, so that it alone
    /// can be undone), which cost more than the statements saved. A batch
    /// is all or nothing anyway, and the planner leaves nothing to conflict:
    /// should a row conflict regardless, the whole transaction rolls back
    /// and every writer in it hears errno 10.
    fn text(&self, i: usize) -> &str {
        &self.texts.get_or_init(|| {
            let head = self
                .head
                .replacen("INSERT INTO", "INSERT OR ROLLBACK INTO", 1);
            let one = format!("({})", vec!["?"; self.columns].join(", "));
            ROWS_PER_INSERT
                .iter()
                .map(|&n| format!("{head}VALUES {}", vec![one.as_str(); n].join(", ")))
                .collect()
        })[i]
    }
}

static MESSAGE_INSERTS: Inserts = Inserts::new(sql::INSERT_MESSAGE_INTO, 9, 0);
static INBOX_INSERTS: Inserts = Inserts::new(
    "INSERT INTO inbox_log (userid, seq, mid) ",
    3,
    ROWS_PER_INSERT.len(),
);

/// Inserts `rows` with multi-row statements, held by the writer (they run in
/// its open transaction); `bind` appends one row's values, in column order.
/// Returns how many rows went in (fewer only with `INSERT OR IGNORE`).
pub(super) fn insert_rows<R>(
    held: &mut Held<'_>,
    table: &Inserts,
    rows: &[R],
    bind: impl for<'a> Fn(&'a R, &mut Vec<ToSqlOutput<'a>>),
) -> StoreResult<usize> {
    let mut args: Vec<ToSqlOutput<'_>> = Vec::with_capacity(ROWS_PER_INSERT[0] * table.columns);
    let mut rest = rows;
    let mut written = 0;
    while !rest.is_empty() {
        let i = ROWS_PER_INSERT
            .iter()
            .position(|&n| n <= rest.len())
            .unwrap_or(ROWS_PER_INSERT.len() - 1);
        let (chunk, tail) = rest.split_at(ROWS_PER_INSERT[i].min(rest.len()));
        args.clear();
        for row in chunk {
            bind(row, &mut args);
        }
        written += held
            .get(table.slot + i, table.text(i))?
            .execute(rusqlite::params_from_iter(args.iter()))?;
        rest = tail;
    }
    Ok(written)
}

/// What a committed batch tells the store's background work.
struct Committed {
    /// Rows that went into the inbox log.
    logged: usize,
    /// (mid, conv) of each message stored, for the history indexer.
    keys: history::StoredKeys,
    /// (sender, cmid) and mid of each message stored with a cmid.
    cmids: Vec<(cmids::CmidKey, i64)>,
    /// Where the database stood, if the batch indexed the tail first.
    caught_up: Option<cmids::At>,
}

/// The group commit: plan with [`batch`], then write the rows it planned.
/// `known` is advanced as rows are written; the caller forgets it if the
/// transaction does not commit.
fn commit_batch(
    tx: &Transaction<'_>,
    held: &mut Held<'_>,
    ops: &[WriteOp],
    known: &mut Counters,
    index: &CmidIndex,
) -> StoreResult<(Vec<WriteOutcome>, Committed)> {
    let need = batch::needs(ops);
    let (lk, caught_up) = lookups(tx, held, &need, index)?;
    let rcpt = batch::recipients(ops, &lk);
    let last = last_seqs(tx, &rcpt, known)?;
    let max_mid: i64 = match known.max_mid {
        Some(m) => m,
        None if ops.iter().any(|o| matches!(o, WriteOp::Append(_))) => {
            tx.prepare_cached(MAX_MID)?.query_row([], |r| r.get(0))?
        }
        None => 0,
    };
    let plan = batch::plan(ops, &lk, max_mid, &last);

    insert_rows(held, &MESSAGE_INSERTS, &plan.messages, |row, args| {
        let m = &row.message;
        args.extend([
            ToSqlOutput::from(m.mid),
            ToSqlOutput::from(m.sender),
            ToSqlOutput::from(&*m.sender_name),
            ToSqlOutput::from(m.target.kind()),
            ToSqlOutput::from(m.target.id()),
            ToSqlOutput::from(row.conv.as_str()),
            ToSqlOutput::from(&*m.body),
            row.cmid.as_deref().map_or(
                ToSqlOutput::Owned(rusqlite::types::Value::Null),
                ToSqlOutput::from,
            ),
            ToSqlOutput::from(m.time),
        ]);
    })?;
    if let Some(last) = plan.messages.last() {
        known.max_mid = Some(last.message.mid);
    }
    // Appended to the inbox log in plan order; the merger sorts them.
    insert_rows(held, &INBOX_INSERTS, &plan.inbox, |&(u, s, m), args| {
        args.extend([
            ToSqlOutput::from(u),
            ToSqlOutput::from(s),
            ToSqlOutput::from(m),
        ]);
    })?;
    // Every user has a counter row from registration, so an UPDATE finds
    // it; the INSERT is for rows that predate that.
    let mut update = tx.prepare_cached("UPDATE user_seq SET last_seq = ? WHERE userid = ?")?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO user_seq (userid, last_seq) VALUES (?, ?) \
         ON CONFLICT (userid) DO UPDATE SET last_seq = excluded.last_seq",
    )?;
    for &(u, s) in &plan.seq_updates {
        if update.execute([s, u])? == 0 {
            insert.execute([u, s])?;
        }
        known.last_seq.insert(u, s);
    }
    let mut update = tx.prepare_cached(
        "UPDATE user_seq SET acked_seq = MAX(acked_seq, MIN(?, last_seq)) WHERE userid = ?",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO user_seq (userid, last_seq, acked_seq) VALUES (?, 0, ?) \
         ON CONFLICT (userid) DO UPDATE SET \
         acked_seq = MAX(user_seq.acked_seq, MIN(excluded.acked_seq, user_seq.last_seq))",
    )?;
    for &(u, s) in &plan.acks {
        if update.execute([s, u])? == 0 {
            insert.execute([u, s])?;
        }
    }
    let mut outcomes = Vec::with_capacity(ops.len());
    for step in plan.steps {
        outcomes.push(match step {
            Step::Done(o) => o,
            Step::Token(t) => token_op(tx, t)?,
            Step::Revoke(user) => {
                tx.prepare_cached(sql::REVOKE_TOKENS)?.execute([user])?;
                WriteOutcome::Revoked
            }
        });
    }
    let mut done = Committed {
        logged: plan.inbox.len(),
        keys: Vec::with_capacity(plan.messages.len()),
        cmids: Vec::new(),
        caught_up,
    };
    for row in plan.messages {
        if let Some(c) = row.cmid {
            done.cmids.push(((row.message.sender, c), row.message.mid));
        }
        done.keys.push((row.message.mid, row.conv));
    }
    Ok((outcomes, done))
}

/// The highest mid handed out: the newest message, or the floor that
/// deleting a user's messages left in `counters` if that is higher.
const MAX_MID: &str = "SELECT MAX(COALESCE((SELECT MAX(mid) FROM messages), 0), \
     COALESCE((SELECT value FROM counters WHERE name = 'mid'), 0))";

/// Raises the mid floor to the highest mid handed out, before messages are
/// deleted.
const KEEP_MID_FLOOR: &str = "INSERT INTO counters (name, value) SELECT 'mid', (SELECT MAX(COALESCE((SELECT MAX(mid) FROM messages), 0), \
     COALESCE((SELECT value FROM counters WHERE name = 'mid'), 0))) WHERE true \
     ON CONFLICT (name) DO UPDATE SET value = excluded.value";

/// A user's `disabled_at`, or `NotFound` without the user.
fn disabled_at(tx: &Transaction<'_>, user: UserId) -> StoreResult<Option<i64>> {
    tx.prepare_cached(Sqlite::USER_FOR_ADMIN)?
        .query_row([user], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NotFound)
}

/// Records an account change for the nodes to act on.
fn record(tx: &Transaction<'_>, user: UserId, change: AccountChange) -> StoreResult<()> {
    tx.prepare_cached(sql::INSERT_ACCOUNT_EVENT)?
        .execute(params![user, change.as_str(), now()])?;
    Ok(())
}

/// The ids a statement binding `arg` returns, in order.
fn ids(tx: &Transaction<'_>, statement: &str, args: &[i64]) -> StoreResult<Vec<i64>> {
    let mut st = tx.prepare_cached(statement)?;
    let rows = st.query_map(rusqlite::params_from_iter(args), |r| r.get(0))?;
    Ok(rows.collect::<Result<Vec<i64>, _>>()?)
}

/// [`AdminStore::delete_user`] in the writer's transaction.
fn delete_user(tx: &Transaction<'_>, log: &InboxLog, user: UserId) -> StoreResult<DeletedUser> {
    disabled_at(tx, user)?;
    merge_all(tx, log)?;
    history::index_all(tx)?;
    let mut out = DeletedUser {
        groups: ids(tx, sql::CREATED_BY, &[user])?,
        ..DeletedUser::default()
    };
    for &g in &out.groups {
        tx.prepare_cached(sql::DELETE_MEMBERS)?.execute([g])?;
        tx.prepare_cached(sql::DELETE_GROUP)?.execute([g])?;
    }
    tx.prepare_cached(sql::DELETE_MEMBERSHIPS)?
        .execute([user])?;
    for f in ids(tx, sql::FRIEND_IDS, &[user])? {
        tx.prepare_cached(sql::DELETE_FRIENDS)?
            .execute([user, f, f, user])?;
    }
    let pending: std::collections::BTreeSet<i64> = ids(tx, sql::PENDING_FROM, &[user, user])?
        .into_iter()
        .collect();
    let mut doomed = ids(tx, Sqlite::SENT_BY, &[user])?;
    doomed.extend(ids(tx, Sqlite::DIRECT_TO, &[user; 7])?);
    tx.prepare_cached(KEEP_MID_FLOOR)?.execute([])?;
    cmids::drop_sender(tx, user)?;
    for mid in doomed {
        if pending.contains(&mid) {
            out.pending += tx.prepare_cached(sql::HIDE_MESSAGE)?.execute([mid])? as u64;
        } else {
            cmids::drop_message(tx, mid)?;
            out.messages += tx.prepare_cached(sql::DELETE_MESSAGE)?.execute([mid])? as u64;
        }
    }
    history::forget_user(tx, user)?;
    for statement in [
        sql::DELETE_INBOX,
        sql::DELETE_USER_SEQ,
        sql::REVOKE_TOKENS,
        sql::DELETE_USER,
    ] {
        tx.prepare_cached(statement)?.execute([user])?;
    }
    record(tx, user, AccountChange::Deleted)?;
    Ok(out)
}

/// Runs a token op (planned by [`batch::plan_token`]) in the batch's transaction.
fn token_op(tx: &Transaction<'_>, op: &TokenRequest) -> StoreResult<WriteOutcome> {
    let rows = tx
        .prepare_cached(Sqlite::TOKENS_OF)?
        .query_map([op.user], |r| {
            Ok(TokenRow {
                hash: r.get(0)?,
                seq: r.get(1)?,
                expires_at: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let plan = batch::plan_token(op, &rows);
    let mut delete = tx.prepare_cached("DELETE FROM tokens WHERE hash = ?")?;
    for h in &plan.delete {
        delete.execute([h])?;
    }
    if let Some((hash, expires_at)) = &plan.shorten {
        tx.prepare_cached(sql::SHORTEN_TOKEN)?
            .execute(params![expires_at, hash])?;
    }
    if let Some(t) = &plan.insert {
        tx.prepare_cached(sql::INSERT_TOKEN)?.execute(params![
            t.hash,
            op.user,
            t.seq,
            t.expires_at
        ])?;
    }
    Ok(plan.outcome)
}

/// The user's role in a group, from the writer's transaction.
fn role_in(tx: &Transaction<'_>, group: GroupId, user: UserId) -> StoreResult<Option<Role>> {
    let row = tx
        .prepare_cached(ROLE_IN)?
        .query_row([group, user, group], |r| r.get(0))
        .optional()?;
    role_from(row)
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, name: &str, key: &str, password_hash: &str) -> StoreResult<UserId> {
        let (name, key, hash) = (name.to_owned(), key_digest(key), password_hash.to_owned());
        self.writer
            .transact(move |tx| {
                let id = tx
                    .prepare_cached(sql::INSERT_USER)?
                    .insert(params![name, key, hash, now()])
                    .map_err(exists_or_unavailable)?;
                tx.prepare_cached(sql::INSERT_USER_SEQ)?.execute([id])?;
                Ok(id)
            })
            .await
    }

    async fn find_user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        self.read.find_user(id).await
    }

    async fn find_user_by_name(&self, name: &str) -> StoreResult<Option<Person>> {
        self.read.find_user_by_name(name).await
    }
}

#[async_trait]
impl FriendStore for SqliteStore {
    async fn add_friend(&self, user: UserId, friend: UserId) -> StoreResult<()> {
        self.writer
            .transact(move |tx| {
                if !tx
                    .prepare_cached("SELECT 1 FROM users WHERE id = ?")?
                    .exists([friend])?
                {
                    return Err(StoreError::NotFound);
                }
                let mut st = tx.prepare_cached(
                    "INSERT INTO friends (userid, friendid) VALUES (?, ?) ON CONFLICT DO NOTHING",
                )?;
                let added = st.execute([user, friend])? + st.execute([friend, user])?;
                if added == 0 {
                    return Err(StoreError::Exists);
                }
                Ok(())
            })
            .await
    }

    async fn remove_friend(&self, user: UserId, friend: UserId) -> StoreResult<()> {
        self.writer
            .transact(move |tx| {
                let removed = tx
                    .prepare_cached(sql::DELETE_FRIENDS)?
                    .execute([user, friend, friend, user])?;
                if removed == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            })
            .await
    }

    async fn friends(&self, user: UserId) -> StoreResult<Vec<Person>> {
        self.read.friends(user).await
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
        let (name, key, desc) = (name.to_owned(), key_digest(key), desc.to_owned());
        self.writer
            .transact(move |tx| {
                let id = tx
                    .prepare_cached(sql::INSERT_GROUP)?
                    .insert(params![name, key, desc, creator, now()])
                    .map_err(exists_or_unavailable)?;
                tx.prepare_cached(sql::INSERT_CREATOR)?
                    .execute([id, creator])?;
                Ok(id)
            })
            .await
    }

    async fn join_group(&self, group: GroupId, user: UserId) -> StoreResult<()> {
        self.writer
            .transact(move |tx| {
                if !tx
                    .prepare_cached("SELECT 1 FROM allgroup WHERE id = ?")?
                    .exists([group])?
                {
                    return Err(StoreError::NotFound);
                }
                let added = tx
                    .prepare_cached(Sqlite::INSERT_MEMBER)?
                    .execute([group, user])?;
                if added == 0 {
                    return Err(StoreError::Exists);
                }
                Ok(())
            })
            .await
    }

    async fn quit_group(&self, group: GroupId, user: UserId) -> StoreResult<()> {
        self.writer
            .transact(move |tx| {
                if role_in(tx, group, user)? != Some(Role::Normal) {
                    return Err(StoreError::Forbidden);
                }
                tx.prepare_cached(sql::DELETE_MEMBER)?
                    .execute([group, user])?;
                Ok(())
            })
            .await
    }

    async fn disband_group(&self, group: GroupId, user: UserId) -> StoreResult<Vec<UserId>> {
        self.writer
            .transact(move |tx| {
                if role_in(tx, group, user)? != Some(Role::Creator) {
                    return Err(StoreError::Forbidden);
                }
                let members = tx
                    .prepare_cached(Sqlite::MEMBERS_OF)?
                    .query_map([group], |r| r.get(0))?
                    .collect::<Result<Vec<UserId>, _>>()?;
                tx.prepare_cached(sql::DELETE_MEMBERS)?.execute([group])?;
                tx.prepare_cached(sql::DELETE_GROUP)?.execute([group])?;
                Ok(members)
            })
            .await
    }

    async fn created_count(&self, user: UserId) -> StoreResult<i64> {
        self.read.created_count(user).await
    }

    async fn member_count(&self, group: GroupId) -> StoreResult<i64> {
        self.read.member_count(group).await
    }

    async fn membership(&self, group: GroupId, user: UserId) -> StoreResult<Option<Role>> {
        self.read.membership(group, user).await
    }

    async fn groups_of(&self, user: UserId) -> StoreResult<Vec<GroupInfo>> {
        self.read.groups_of(user).await
    }
}

#[async_trait]
impl AdminStore for SqliteStore {
    async fn list_users(&self, after: UserId, limit: i64) -> StoreResult<Vec<UserSummary>> {
        self.read.list_users(after, limit).await
    }

    async fn set_password(&self, user: UserId, password_hash: &str) -> StoreResult<()> {
        let hash = password_hash.to_owned();
        self.writer
            .transact(move |tx| {
                disabled_at(tx, user)?;
                tx.prepare_cached(sql::SET_PASSWORD)?
                    .execute(params![hash, user])?;
                tx.prepare_cached(sql::REVOKE_TOKENS)?.execute([user])?;
                record(tx, user, AccountChange::PasswordReset)
            })
            .await
    }

    async fn set_disabled(&self, user: UserId, disabled: bool, now: i64) -> StoreResult<bool> {
        self.writer
            .transact(move |tx| {
                let was = disabled_at(tx, user)?;
                if was.is_some() == disabled {
                    return Ok(false);
                }
                let at = disabled.then_some(now);
                tx.prepare_cached(sql::SET_DISABLED)?
                    .execute(params![at, user])?;
                if disabled {
                    tx.prepare_cached(sql::REVOKE_TOKENS)?.execute([user])?;
                    record(tx, user, AccountChange::Disabled)?;
                }
                Ok(true)
            })
            .await
    }

    async fn delete_user(&self, user: UserId) -> StoreResult<DeletedUser> {
        let log = self.log.clone();
        let index = self.index.clone();
        let cmid_index = self.cmids.clone();
        self.writer
            .run(move |conn| {
                // Messages go or are hidden: the indexer reads them back.
                index.forget();
                let tx = writer::immediate(conn)?;
                let out = delete_user(&tx, &log, user)?;
                tx.commit()?;
                // Every message the account sent is gone or hidden; what
                // others sent it and is gone stays in the map until used.
                cmid_index.deleted(|(sender, _), _| *sender == user);
                Ok(out)
            })
            .await
    }

    async fn account_events(&self, after: i64, limit: i64) -> StoreResult<Vec<AccountEvent>> {
        self.read.account_events(after, limit).await
    }

    async fn last_account_event(&self) -> StoreResult<i64> {
        self.read.last_account_event().await
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
        let started = std::time::Instant::now();
        let res = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await;
        let took = started.elapsed();
        if took > Duration::from_millis(50) {
            tracing::info!(ms = took.as_millis() as u64, "slow background checkpoint");
        }
        if let Err(e) = res {
            if pool.is_closed() {
                return;
            }
            tracing::debug!(error = %e, "background checkpoint failed");
        }
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        // Reads would still work after a failed flush; writes never will.
        if let Some(e) = self.writer.failure() {
            return Err(e);
        }
        self.acked_seq(0).await.map(|_| ())
    }

    async fn commit(&self, ops: Vec<WriteOp>) -> StoreResult<Vec<WriteOutcome>> {
        let (out, durable) = self.commit_staged(ops).await?;
        durable.wait().await?;
        Ok(out)
    }

    async fn commit_staged(&self, ops: Vec<WriteOp>) -> StoreResult<(Vec<WriteOutcome>, Durable)> {
        let counters = self.counters.clone();
        let log = self.log.clone();
        let index = self.index.clone();
        let cmid_index = self.cmids.clone();
        let writes = ops.len();
        // Small: a few dozen µs of SQLite work. Not a group's fan-out (up to
        // a row per member), nor a cmid lookup that may read the whole tail
        // back first.
        let small = writes <= IN_PLACE_WRITES
            && ops.iter().all(|op| match op {
                WriteOp::Append(m) => {
                    matches!(m.target, Target::User(_))
                        && (m.cmid.is_none() || cmid_index.map_trusted())
                }
                _ => true,
            });
        let job = move |held: &mut Held<'_>| {
            let mut known = counters.lock().unwrap_or_else(|poisoned| {
                // A batch panicked halfway: start over from the tables.
                counters.clear_poison();
                let mut known = poisoned.into_inner();
                known.forget();
                known
            });
            let mut batch = || {
                let tx = writer::immediate(held.conn())?;
                if known.check(&tx)? {
                    // Another process may have stored messages the
                    // history list does not name (the cmid map checks
                    // `data_version` itself).
                    index.forget();
                }
                let (out, done) = commit_batch(&tx, held, &ops, &mut known, &cmid_index)?;
                cmid_index.committing();
                tx.commit()?;
                if let Some(now) = done.caught_up {
                    cmid_index.caught_up(now);
                }
                cmid_index.committed(done.cmids);
                log.staged.fetch_add(done.logged, Ordering::Relaxed);
                index.committed(done.keys);
                Ok(out)
            };
            let out = batch();
            if out.is_err() {
                // What it remembered may be from the rolled-back batch.
                known.forget();
            }
            out
        };
        // On a quiet server the batch skips the hops to the writer thread
        // and back (`sqlite_writer`, module docs).
        let out = self
            .writer
            .run_staged_here_if_quiet(writes, small, job)
            .await;
        if self.log.staged.load(Ordering::Relaxed) >= MERGE_AT {
            self.log.full.notify_one();
        }
        out
    }

    async fn acked_seq(&self, user: UserId) -> StoreResult<i64> {
        self.read.acked_seq(user).await
    }

    async fn undelivered(
        &self,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, StoredMessage)>> {
        self.read.undelivered(user, after, limit).await
    }

    async fn history(
        &self,
        conv: Conversation,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<StoredMessage>> {
        history::history(self.read.pool(), conv, before, limit).await
    }

    async fn prune_tokens(&self, now: i64, limit: i64) -> StoreResult<u64> {
        self.writer
            .transact(move |tx| {
                let n = tx
                    .prepare_cached(
                        "DELETE FROM tokens WHERE hash IN \
                         (SELECT hash FROM tokens WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
                    )?
                    .execute([now, limit.max(0)])?;
                Ok(n as u64)
            })
            .await
    }

    async fn prune_delivered(
        &self,
        after_user: UserId,
        users: i64,
        per_user: i64,
    ) -> StoreResult<(u64, Option<UserId>)> {
        let log = self.log.clone();
        self.writer
            .transact(move |tx| {
                move_small_log(tx, &log)?;
                let batch: Vec<(UserId, i64)> = tx
                    .prepare_cached(
                        "SELECT userid, acked_seq FROM user_seq WHERE userid > ? \
                         ORDER BY userid LIMIT ?",
                    )?
                    .query_map([after_user, users.max(1)], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let mut deleted = 0u64;
                for &(user, acked) in &batch {
                    let first: Option<i64> = tx
                        .prepare_cached("SELECT MIN(seq) FROM inbox WHERE userid = ?")?
                        .query_row([user], |r| r.get(0))?;
                    let Some(first) = first.filter(|f| *f <= acked) else {
                        continue;
                    };
                    let upto = acked.min(first.saturating_add(per_user.max(1) - 1));
                    deleted += tx
                        .prepare_cached("DELETE FROM inbox WHERE userid = ? AND seq <= ?")?
                        .execute([user, upto])? as u64;
                }
                Ok((deleted, super::next_user(&batch, users)))
            })
            .await
    }

    async fn prune_messages(&self, before: i64, limit: i64) -> StoreResult<u64> {
        let index = self.index.clone();
        let cmid_index = self.cmids.clone();
        self.writer
            .run(move |conn| {
                let tx = writer::immediate(conn)?;
                let pending: Option<i64> = tx
                    .prepare_cached(
                        "SELECT MIN(m) FROM (SELECT MIN(mid) AS m FROM inbox \
                         UNION ALL SELECT MIN(mid) FROM inbox_log)",
                    )?
                    .query_row([], |r| r.get(0))?;
                let oldest: Vec<(i64, i64)> = tx
                    .prepare_cached("SELECT mid, created_at FROM messages ORDER BY mid LIMIT ?")?
                    .query_map([limit.max(0)], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let Some(upto) = super::retention_cut(&oldest, before, pending) else {
                    return Ok(0);
                };
                // The oldest messages go: the indexer reads the tail back.
                index.forget();
                // They may be all of them: keep the highest mid handed out,
                // so that new ones still grow from it after a restart.
                tx.prepare_cached(KEEP_MID_FLOOR)?.execute([])?;
                history::prune(&tx, upto)?;
                cmids::prune(&tx, upto)?;
                let n = tx
                    .prepare_cached("DELETE FROM messages WHERE mid <= ?")?
                    .execute([upto])? as u64;
                tx.commit()?;
                cmid_index.deleted(|_, mid| mid <= upto);
                Ok(n)
            })
            .await
    }

    async fn close(&self) {
        self.writer.stop().await;
        self.read.pool().close().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn in_memory_urls_are_recognised() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://x.db?mode=memory",
        ] {
            assert!(super::in_memory(url), "{url}");
        }
        for url in [
            "sqlite://chat.db",
            "sqlite:chat.db?mode=rwc",
            "sqlite:///tmp/memory.db",
        ] {
            assert!(!super::in_memory(url), "{url}");
        }
    }

    use super::*;
    use crate::store::{NewMessage, Target};

    fn to(sender: UserId, user: UserId) -> WriteOp {
        WriteOp::Append(NewMessage {
            sender,
            sender_name: "a".into(),
            target: Target::User(user),
            body: "hi".into(),
            cmid: None,
            time: 0,
        })
    }

    fn delivered(o: &WriteOutcome) -> (i64, Vec<(UserId, i64)>) {
        match o {
            WriteOutcome::Append(Ok(crate::store::Appended::New(f))) => {
                (f.message.mid, f.deliveries.clone())
            }
            other => panic!("not stored: {other:?}"),
        }
    }

    /// A store in a new directory (kept while the guard lives), its file,
    /// and two users.
    async fn two_users() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        SqliteStore,
        UserId,
        UserId,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let url = format!("sqlite://{}", path.display());
        let store = SqliteStore::open(&url, &StoreOptions::default())
            .await
            .unwrap();
        let a = store.create_user("a", "a", "x").await.unwrap();
        let b = store.create_user("b", "b", "x").await.unwrap();
        (dir, path, store, a, b)
    }

    /// The writer remembers counters between batches; a write by anyone
    /// else (another process on the same file) must make it read them again.
    #[tokio::test]
    async fn remembered_counters_yield_to_other_writers() {
        let (_dir, path, store, a, b) = two_users().await;
        let out = store.commit(vec![to(a, b), to(a, b)]).await.unwrap();
        assert_eq!(delivered(&out[1]), (2, vec![(b, 2)]));

        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch(&format!(
                "UPDATE user_seq SET last_seq = 7 WHERE userid = {b};
                 INSERT INTO messages (mid, sender, sender_name, kind, target, conv, body, created_at)
                 VALUES (40, {a}, 'a', 6, {b}, 'x', 'elsewhere', 0);"
            ))
            .unwrap();
        drop(other);

        let out = store.commit(vec![to(a, b)]).await.unwrap();
        assert_eq!(delivered(&out[0]), (41, vec![(b, 8)]));
        let out = store.commit(vec![to(a, b)]).await.unwrap();
        assert_eq!(delivered(&out[0]), (42, vec![(b, 9)]));
        store.close().await;
    }
    /// Rows in the inbox log and in `inbox`, read with a connection of the
    /// test's own.
    fn rows(path: &std::path::Path) -> (i64, i64) {
        counts(&rusqlite::Connection::open(path).unwrap()).unwrap()
    }

    /// Rows in the inbox log and in `inbox`, as `conn` sees them.
    fn counts(conn: &rusqlite::Connection) -> rusqlite::Result<(i64, i64)> {
        let n = |t: &str| conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0));
        Ok((n("inbox_log")?, n("inbox")?))
    }

    /// One merge generation as the merger runs it: steps until done.
    async fn merge(store: &SqliteStore, due: i64) -> i64 {
        loop {
            let log = store.log.clone();
            let step = store
                .writer
                .transact(move |tx| merge_step(tx, &log, due))
                .await
                .unwrap();
            if let Some(next) = step {
                return next;
            }
        }
    }

    /// Commits append inbox rows to the log; a merge takes the rows of the
    /// previous generation only, drops the confirmed ones and moves the rest
    /// into `inbox`. Reads see the same rows, in seq order, wherever they
    /// are, also a page that spans both tables.
    #[tokio::test]
    async fn the_inbox_log_merges_by_generation_and_reads_see_both_tables() {
        let (_dir, path, store, a, b) = two_users().await;
        let seqs = |rows: Vec<(i64, StoredMessage)>| -> Vec<(i64, i64)> {
            rows.into_iter().map(|(s, m)| (s, m.mid)).collect()
        };
        store.commit(vec![to(a, b); 10]).await.unwrap();
        assert_eq!(rows(&path), (10, 0));
        // The first generation starts: nothing was due yet.
        let due = merge(&store, 0).await;
        assert_eq!((due, rows(&path)), (10, (10, 0)));
        store.commit(vec![to(a, b); 10]).await.unwrap();
        store
            .commit(vec![WriteOp::Ack { user: b, seq: 4 }])
            .await
            .unwrap();
        // Rows 1-10 were due: 1-4 confirmed and dropped, 5-10 moved; 11-20
        // wait for the next generation.
        let due = merge(&store, due).await;
        assert_eq!((due, rows(&path)), (20, (10, 6)));
        let all = seqs(store.undelivered(b, 0, 100).await.unwrap());
        assert_eq!(all, (5..=20).map(|k| (k, k)).collect::<Vec<_>>());
        let page = seqs(store.undelivered(b, 7, 5).await.unwrap());
        assert_eq!(page, (8..=12).map(|k| (k, k)).collect::<Vec<_>>());
        assert!(store.undelivered(a, 0, 100).await.unwrap().is_empty());
        let due = merge(&store, due).await;
        assert_eq!((due, rows(&path)), (0, (0, 16)));
        assert_eq!(seqs(store.undelivered(b, 0, 100).await.unwrap()), all);
        store.close().await;
    }

    /// The merger runs by itself: rows a previous run left are due at its
    /// first look, and a full log is merged without waiting for the timer.
    #[tokio::test]
    async fn the_merger_empties_the_log_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let url = format!("sqlite://{}", path.display());
        let opts = StoreOptions::default();
        let store = SqliteStore::open(&url, &opts).await.unwrap();
        let a = store.create_user("a", "a", "x").await.unwrap();
        let b = store.create_user("b", "b", "x").await.unwrap();
        store.commit(vec![to(a, b); 7]).await.unwrap();
        store.close().await;
        assert_eq!(rows(&path), (7, 0));

        let store = SqliteStore::open(&url, &opts).await.unwrap();
        let wait_for = |want: (i64, i64)| {
            let path = path.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while rows(&path) != want {
                    assert!(std::time::Instant::now() < deadline, "log never merged");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        wait_for((0, 7)).await;
        // Two logs' worth: the first is confirmed in the commit of the
        // second, before the second fills the log, so it is dropped when it
        // is merged; the second is still owed and moves into `inbox`.
        let n = MERGE_AT + MERGE_STEP as usize;
        store.commit(vec![to(a, b); n]).await.unwrap();
        let mut second = vec![to(a, b); n];
        second.push(WriteOp::Ack {
            user: b,
            seq: 7 + n as i64,
        });
        store.commit(second).await.unwrap();
        wait_for((0, 7 + n as i64)).await;
        let got = store.undelivered(b, 0, 1_000_000).await.unwrap();
        assert_eq!(got.len(), n);
        assert!(got
            .iter()
            .zip(8 + n as i64..)
            .all(|((s, m), k)| *s == k && m.mid == k));
        store.close().await;
    }

    /// [`move_small_log`], then the rows in the log and in `inbox`, in one
    /// transaction.
    async fn move_and_count(store: &SqliteStore) -> (i64, i64) {
        let log = store.log.clone();
        store
            .writer
            .transact(move |tx| {
                move_small_log(tx, &log)?;
                Ok(counts(tx)?)
            })
            .await
            .unwrap()
    }

    /// Pruning moves a short log into `inbox` (so that it can delete and
    /// count the confirmed rows), but leaves a long one to the merger.
    #[tokio::test]
    async fn pruning_moves_only_a_short_log() {
        let (_dir, _path, store, a, b) = two_users().await;
        store.commit(vec![to(a, b); 10]).await.unwrap();
        assert_eq!(move_and_count(&store).await, (0, 10));
        // Wait out the merger's first look (it merges leftovers at once);
        // its next look only takes a generation, so for a second after the
        // commit the long log is the test's alone.
        tokio::time::sleep(MERGE_EVERY + Duration::from_millis(200)).await;
        let n = MERGE_STEP + 10;
        store.commit(vec![to(a, b); n as usize]).await.unwrap();
        assert_eq!(move_and_count(&store).await, (n, 10));
        store.close().await;
    }

    /// A batch's rows go in multi-row statements of several sizes: every
    /// size and every row must land, in order, whatever the batch size.
    #[tokio::test]
    async fn batches_of_every_size_store_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("chat.db").display());
        let store = SqliteStore::open(&url, &StoreOptions::default())
            .await
            .unwrap();
        let a = store.create_user("a", "a", "x").await.unwrap();
        let b = store.create_user("b", "b", "x").await.unwrap();
        let mut sent = 0i64;
        // 64 + 16 + 8 + 4 + 2 + 1 = 95 exercises every statement size.
        for n in [1usize, 2, 3, 64, 95, 130, 7] {
            let out = store.commit(vec![to(a, b); n]).await.unwrap();
            for (i, o) in out.iter().enumerate() {
                let k = sent + i as i64 + 1;
                assert_eq!(delivered(o), (k, vec![(b, k)]), "batch of {n}, row {i}");
            }
            sent += n as i64;
        }
        let rows = store.undelivered(b, 0, 1000).await.unwrap();
        assert_eq!(rows.len() as i64, sent);
        for (i, (seq, m)) in rows.iter().enumerate() {
            assert_eq!((*seq, m.mid, &*m.body), (i as i64 + 1, i as i64 + 1, "hi"));
        }
        store.close().await;
    }
}
