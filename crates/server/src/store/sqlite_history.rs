//! The SQLite store's HISTORY index, built behind the commits, in blocks.
//!
//! HISTORY pages a conversation by mid, so it needs (conv, mid) in key
//! order. As an index of `messages` that put an entry on the newest page of
//! every conversation a commit wrote to, and each of those pages went to
//! the WAL and was flushed before the ACK: with 200 busy conversations that
//! was most of a commit's pages. An index table filled behind the commits
//! in sorted steps fixed the pages but not the CPU: a B-tree entry per
//! message cost about a microsecond, a third of window 32's throughput
//! (BENCHMARKS.md, issue 9, fourth pass).
//!
//! So an indexer task takes the messages above the `counters` row `history`
//! in steps of at most [`INDEX_STEP`] mids, one short transaction each on
//! the writer, and writes one `history` row per conversation per step: a
//! block, with the conversation's lowest and highest mid in the step and the
//! mids themselves as a JSON array. A step of 4,096 messages in 200
//! conversations is 200 small rows. It moves the counter in the same
//! transaction, so every snapshot sees each message exactly once: in a
//! block (mid at or below the counter) or in the tail above it, which
//! HISTORY scans by mid, a rowid range of a few thousand rows at most. A
//! conversation's blocks never overlap in mids, so newest-first by `first`
//! is newest-first by mid.
//!
//! Reading those messages back cost more than writing their blocks, so
//! once a pass has caught up the commits hand the indexer each new
//! message's (mid, conv) ([`HistoryIndex::committed`]), and the next pass
//! builds its blocks from that list if it is exactly the tail; else it reads
//! back as before.
//!
//! A block may name a message deleted or hidden since: every read joins
//! `messages` and checks the conversation. Retention drops the blocks
//! wholly below its cut; account deletion indexes the whole tail before it
//! looks one-to-one messages up by conversation, then drops the blocks of
//! the account's one-to-one conversations (their keys name it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use rusqlite::{OptionalExtension, Transaction};
use sqlx::SqlitePool;

use super::sql::SqlReads;
use super::sqlite::{counter, newest_mid, set_counter};
use super::sqlite_writer::{self as writer, Writer};
use super::{Conversation, StoreError, StoreResult, StoredMessage, UserId};

/// Messages committed since the last pass that start the next one at once;
/// with [`INDEX_EVERY`] this bounds the tail HISTORY scans.
pub(super) const INDEX_AT: usize = 4096;

/// How often the indexer looks when fewer than [`INDEX_AT`] came in.
const INDEX_EVERY: Duration = Duration::from_secs(1);

/// Mids one indexing transaction covers at most, so that none holds the
/// writer for more than a millisecond or two.
const INDEX_STEP: i64 = 4096;

/// Mids per block at most, so that a block stays a small row.
const BLOCK_MAX: usize = 256;

/// The columns HISTORY returns, as [`SqlReads::message`] reads them.
macro_rules! message_columns {
    ($m:literal) => {
        concat!(
            $m,
            "mid, ",
            $m,
            "sender, ",
            $m,
            "sender_name, ",
            $m,
            "kind, ",
            $m,
            "target, ",
            $m,
            "body, ",
            $m,
            "created_at"
        )
    };
}

/// The newest messages of a conversation in the unindexed tail. Binds
/// conv, before, limit.
const TAIL: &str = concat!(
    "SELECT ",
    message_columns!(""),
    " FROM messages \
     WHERE mid > (SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'history') \
       AND mid < ?2 AND conv = ?1 ORDER BY mid DESC LIMIT ?3"
);

/// The mids of the newest blocks of a conversation that start below
/// `before`. Binds conv, before, how many.
const BLOCKS: &str = "SELECT mids FROM history \
     WHERE conv = ?1 AND first < ?2 ORDER BY first DESC LIMIT ?3";

/// The messages of a JSON array of mids still in the conversation, newest
/// first. Binds the array, conv.
const LISTED: &str = concat!(
    "SELECT ",
    message_columns!("m."),
    " FROM json_each(?1) j JOIN messages m ON m.mid = j.value \
     WHERE m.conv = ?2 ORDER BY m.mid DESC"
);

/// [`super::MessageStore::history`] on SQLite: the tail, then blocks
/// newest first until the page is full, all in one read transaction (one
/// snapshot, so the indexer cannot move a message between the two).
pub(super) async fn history(
    pool: &SqlitePool,
    conv: Conversation,
    before: Option<i64>,
    limit: i64,
) -> StoreResult<Vec<StoredMessage>> {
    let key = conv.key();
    let limit = limit.max(0);
    let mut before = before.unwrap_or(i64::MAX);
    let mut tx = pool.begin().await?;
    let message = |r: &sqlx::sqlite::SqliteRow| SqlReads::<sqlx::Sqlite>::message(r, 0);
    let mut out = sqlx::query(TAIL)
        .bind(&key)
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(message)
        .collect::<StoreResult<Vec<_>>>()?;
    while (out.len() as i64) < limit {
        let blocks: Vec<String> = sqlx::query_scalar(BLOCKS)
            .bind(&key)
            .bind(before)
            .bind(limit - out.len() as i64)
            .fetch_all(&mut *tx)
            .await?;
        let mut mids = Vec::new();
        for list in &blocks {
            let list: Vec<i64> = serde_json::from_str(list)
                .map_err(|e| StoreError::unavailable(format!("a history block is damaged: {e}")))?;
            mids.extend(list.into_iter().filter(|&m| m < before));
        }
        // Each block names at least one mid below `before`, and the blocks
        // not read are older than all of these: the newest `want` mids
        // here are the newest `want` of the conversation. Some may be gone.
        let want = limit as usize - out.len();
        mids.sort_unstable_by(|a, b| b.cmp(a));
        mids.truncate(want);
        let Some(&oldest) = mids.last() else {
            break;
        };
        let listed = sqlx::query(LISTED)
            .bind(serde_json::to_string(&mids).unwrap_or_default())
            .bind(&key)
            .fetch_all(&mut *tx)
            .await?;
        for r in &listed {
            out.push(message(r)?);
        }
        before = oldest;
    }
    tx.commit().await?;
    Ok(out)
}

/// Most rows the fresh list holds. Past it the list is dropped and the next
/// pass reads the messages back: this bounds its memory when the indexer
/// falls behind (some 50 bytes a row).
const FRESH_MAX: usize = 4 * INDEX_STEP as usize;

/// (mid, conv) of messages a commit stored, in mid order.
pub(super) type StoredKeys = Vec<(i64, String)>;

/// What the commits tell the indexer.
#[derive(Default)]
pub(super) struct HistoryIndex {
    /// Messages committed since the indexer's last pass began.
    pub(super) pending: AtomicUsize,
    /// Wakes the indexer before its timer.
    pub(super) wake: tokio::sync::Notify,
    /// The (mid, conv) of each message committed since the index last
    /// caught up, so that the next pass need not read them back from
    /// `messages` (that read, a row and a `String` per message, was ~3.9k
    /// instructions a message). Commits and index steps both run on the
    /// writer, one after the other under its lock, so this is never contended
    /// and a step never sees half a commit.
    fresh: Mutex<Fresh>,
}

/// See [`HistoryIndex::fresh`].
#[derive(Default)]
struct Fresh {
    /// Whether `rows` lists every message stored after `from`. Set when a
    /// pass has indexed the whole tail and committed; cleared when a step
    /// takes the rows, when they pass [`FRESH_MAX`], and when anything other
    /// than a commit changes `messages`. Until it is set again, steps read
    /// the messages back as before.
    valid: bool,
    /// The `history` counter the rows continue from.
    from: i64,
    /// In mid order.
    rows: StoredKeys,
}

impl HistoryIndex {
    /// Notes newly committed messages, (mid, conv) in mid order; call on the
    /// writer thread, after the commit.
    pub(super) fn committed(&self, stored: StoredKeys) {
        let n = stored.len();
        if n == 0 {
            return;
        }
        {
            let mut f = self.fresh.lock().unwrap_or_else(PoisonError::into_inner);
            if f.valid && f.rows.len() + n <= FRESH_MAX {
                f.rows.extend(stored);
            } else {
                f.forget();
            }
        }
        if self.pending.fetch_add(n, Ordering::Relaxed) + n >= INDEX_AT {
            self.wake.notify_one();
        }
    }

    /// Drops the fresh list: something other than a commit changed
    /// `messages` (deletion, retention), so it may name what is gone.
    pub(super) fn forget(&self) {
        self.fresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget();
    }

    /// The fresh rows, if they are exactly the messages after `done` up to
    /// `top`; the list is dropped either way (see [`Fresh::valid`]).
    fn take(&self, done: i64, top: i64) -> Option<StoredKeys> {
        let mut f = self.fresh.lock().unwrap_or_else(PoisonError::into_inner);
        let whole = f.valid && f.from == done && f.rows.last().map(|r| r.0) == Some(top);
        let rows = std::mem::take(&mut f.rows);
        f.forget();
        whole.then_some(rows)
    }

    /// After a committed pass that indexed everything up to `upto`: later
    /// commits go to a new list.
    fn caught_up(&self, upto: i64) {
        let mut f = self.fresh.lock().unwrap_or_else(PoisonError::into_inner);
        f.valid = true;
        f.from = upto;
        f.rows.clear();
    }
}

impl Fresh {
    fn forget(&mut self) {
        self.valid = false;
        self.rows = Vec::new();
    }
}

/// Indexes the messages after the `history` counter, at most
/// [`INDEX_STEP`] mids of them, as blocks, and moves the counter. Returns
/// whether more are left.
fn index_step(tx: &Transaction<'_>) -> StoreResult<bool> {
    Ok(step(tx, None)?.0)
}

/// [`index_step`], from `index`'s fresh list when that holds the whole
/// tail (then in one step, however long: the list is bounded). Also returns
/// the counter it left.
fn step(tx: &Transaction<'_>, index: Option<&HistoryIndex>) -> StoreResult<(bool, i64)> {
    let done = counter(tx, "history")?;
    let Some(top) = newest_mid(tx)?.filter(|&t| t > done) else {
        return Ok((false, done));
    };
    let mut blocks: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    if let Some(rows) = index.and_then(|i| i.take(done, top)) {
        for (mid, conv) in rows {
            if conv != "deleted" {
                blocks.entry(conv).or_default().push(mid);
            }
        }
        write_blocks(tx, &blocks, top)?;
        return Ok((false, top));
    }
    let upto = top.min(done.saturating_add(INDEX_STEP));
    {
        let mut st = tx.prepare_cached(
            "SELECT conv, mid FROM messages WHERE mid > ? AND mid <= ? AND conv <> 'deleted'",
        )?;
        let mut rows = st.query([done, upto])?;
        while let Some(r) = rows.next()? {
            let conv: String = r.get(0)?;
            blocks.entry(conv).or_default().push(r.get(1)?);
        }
    }
    write_blocks(tx, &blocks, upto)?;
    Ok((upto < top, upto))
}

/// Writes `blocks` (each conversation's mids, ascending) and moves the
/// counter to `upto`.
fn write_blocks(
    tx: &Transaction<'_>,
    blocks: &BTreeMap<String, Vec<i64>>,
    upto: i64,
) -> StoreResult<()> {
    let mut insert =
        tx.prepare_cached("INSERT INTO history (conv, first, last, mids) VALUES (?, ?, ?, ?)")?;
    for (conv, mids) in blocks {
        // Rows come in mid order, so each list is ascending.
        for block in mids.chunks(BLOCK_MAX) {
            let list = serde_json::to_string(block).unwrap_or_default();
            insert.execute(rusqlite::params![
                conv,
                block[0],
                block[block.len() - 1],
                list
            ])?;
        }
    }
    set_counter(tx, "history", upto)
}

/// Indexes the whole tail, for the writer's statements that look messages
/// up by conversation.
pub(super) fn index_all(tx: &Transaction<'_>) -> StoreResult<()> {
    while index_step(tx)? {}
    Ok(())
}

/// Drops the blocks of a deleted account's one-to-one conversations (every
/// message in them was the account's, to or from it, and is gone or hidden).
pub(super) fn forget_user(tx: &Transaction<'_>, user: UserId) -> StoreResult<()> {
    tx.prepare_cached(
        "DELETE FROM history WHERE conv >= 'd:' || ?1 || ':' AND conv < 'd:' || ?1 || ';'",
    )?
    .execute([user])?;
    tx.prepare_cached(
        "DELETE FROM history WHERE conv IN \
         (SELECT 'd:' || id || ':' || ?1 FROM users WHERE id < ?1)",
    )?
    .execute([user])?;
    Ok(())
}

/// Drops the blocks retention emptied: those before the first (in the
/// order they were written) that names a mid above `upto`. Blocks of the
/// same step may be left; they only name deleted messages, and go next time.
pub(super) fn prune(tx: &Transaction<'_>, upto: i64) -> StoreResult<()> {
    let keep: Option<i64> = tx
        .prepare_cached("SELECT id FROM history WHERE last > ? ORDER BY id LIMIT 1")?
        .query_row([upto], |r| r.get(0))
        .optional()?;
    tx.prepare_cached("DELETE FROM history WHERE id < ?")?
        .execute([keep.unwrap_or(i64::MAX)])?;
    Ok(())
}

/// One step of the indexer, in a transaction of its own: from the fresh list
/// if it holds the whole tail, else reading the messages back; once the
/// tail is indexed and committed, later commits start a new list. Returns
/// whether more is left.
async fn indexer_step(w: &Writer, index: &Arc<HistoryIndex>) -> StoreResult<bool> {
    let fresh = index.clone();
    w.run(move |conn| {
        let tx = writer::immediate(conn)?;
        let (more, upto) = step(&tx, Some(&fresh))?;
        tx.commit()?;
        if !more {
            fresh.caught_up(upto);
        }
        Ok(more)
    })
    .await
}

/// The indexer task: a pass when [`INDEX_AT`] messages came in or every
/// [`INDEX_EVERY`], in steps until the tail is indexed. Ends when the store
/// is closed or dropped.
pub(super) async fn indexer(writer: Weak<Writer>, index: Arc<HistoryIndex>) {
    // A previous run may have left a tail: the first look indexes it.
    index.pending.store(1, Ordering::Relaxed);
    loop {
        let woken = tokio::time::timeout(INDEX_EVERY, index.wake.notified()).await;
        // A wake-up stored during a pass may be for messages it indexed.
        if woken.is_ok() && index.pending.load(Ordering::Relaxed) < INDEX_AT {
            continue;
        }
        if index.pending.swap(0, Ordering::Relaxed) == 0 {
            continue;
        }
        let step = |w: Arc<Writer>| {
            let index = index.clone();
            async move {
                let res = indexer_step(&w, &index).await;
                if res.is_err() {
                    // HISTORY still finds the messages in the tail; the
                    // next look retries.
                    index.pending.fetch_add(1, Ordering::Relaxed);
                }
                res
            }
        };
        if !writer::background_pass(&writer, "indexing history", step).await {
            return;
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{
        AdminStore, Appended, Conversation, MessageStore, NewMessage, StoreOptions, Target, UserId,
        UserStore, WriteOp, WriteOutcome,
    };

    fn to(sender: UserId, user: UserId, body: &str) -> WriteOp {
        WriteOp::Append(NewMessage {
            sender,
            sender_name: "a".into(),
            target: Target::User(user),
            body: body.into(),
            cmid: None,
            time: 0,
        })
    }

    fn mid(o: &WriteOutcome) -> i64 {
        match o {
            WriteOutcome::Append(Ok(Appended::New(f))) => f.message.mid,
            other => panic!("not stored: {other:?}"),
        }
    }

    /// Mids in `history`'s blocks, and the `history` counter, read with a
    /// connection of the test's own.
    fn indexed(path: &std::path::Path) -> (i64, i64) {
        let c = rusqlite::Connection::open(path).unwrap();
        c.query_row(
            "SELECT (SELECT COALESCE(SUM(json_array_length(mids)), 0) FROM history), \
             (SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'history')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    pub(in crate::store) async fn open(path: &std::path::Path, background: bool) -> SqliteStore {
        let url = format!("sqlite://{}", path.display());
        let opts = StoreOptions {
            background,
            ..StoreOptions::default()
        };
        SqliteStore::open(&url, &opts).await.unwrap()
    }

    /// A store without background tasks in a new directory (kept while the
    /// guard lives), its file, and `N` users.
    pub(in crate::store) async fn users<const N: usize>() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        SqliteStore,
        [UserId; N],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let store = open(&path, false).await;
        let mut ids = [0; N];
        for (i, id) in ids.iter_mut().enumerate() {
            let name = format!("u{i}");
            *id = store.create_user(&name, &name, "x").await.unwrap();
        }
        (dir, path, store, ids)
    }

    async fn history(s: &SqliteStore, conv: Conversation, before: Option<i64>, n: i64) -> Vec<i64> {
        let rows = s.history(conv, before, n).await.unwrap();
        rows.iter().map(|m| m.mid).collect()
    }

    /// HISTORY pages read the index and the tail as one list, newest
    /// first, also a page that spans both; other conversations stay out.
    #[tokio::test]
    async fn history_reads_the_index_and_the_tail_as_one() {
        let (_dir, path, store, [a, b, c]) = users::<3>().await;
        let ab = Conversation::Direct(a, b);
        let ops: Vec<_> = (0..10)
            .flat_map(|_| [to(a, b, "ab"), to(a, c, "ac")])
            .collect();
        store.commit(ops).await.unwrap();
        // Nothing indexed yet: all of it is the tail.
        assert_eq!(indexed(&path), (0, 0));
        let odd: Vec<i64> = (1..=19).rev().step_by(2).collect();
        assert_eq!(history(&store, ab, None, 100).await, odd);
        store.writer.transact(index_all).await.unwrap();
        assert_eq!(indexed(&path), (20, 20));
        assert_eq!(history(&store, ab, None, 100).await, odd);
        store
            .commit((0..5).map(|_| to(b, a, "ba")).collect())
            .await
            .unwrap();
        // 21-25 in the tail, 1-19 indexed.
        assert_eq!(
            history(&store, ab, None, 8).await,
            [25, 24, 23, 22, 21, 19, 17, 15]
        );
        assert_eq!(history(&store, ab, Some(23), 4).await, [22, 21, 19, 17]);
        assert_eq!(
            history(&store, ab, Some(15), 100).await,
            [13, 11, 9, 7, 5, 3, 1]
        );
        let ac = Conversation::Direct(a, c);
        assert_eq!(history(&store, ac, Some(21), 3).await, [20, 18, 16]);
        store.close().await;
    }

    /// Steps stop at [`INDEX_STEP`] mids; the indexer runs by itself, on a
    /// tail a previous run left and on a full one.
    #[tokio::test]
    async fn the_indexer_indexes_by_itself() {
        let (_dir, path, store, [a, b]) = users::<2>().await;
        let n = INDEX_STEP as usize + 10;
        store.commit(vec![to(a, b, "x"); n]).await.unwrap();
        assert!(store.writer.transact(index_step).await.unwrap());
        assert_eq!(indexed(&path), (INDEX_STEP, INDEX_STEP));
        store.close().await;

        let store = open(&path, true).await;
        let wait_for = |want: i64| {
            let path = path.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while indexed(&path) != (want, want) {
                    assert!(std::time::Instant::now() < deadline, "never indexed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        wait_for(n as i64).await;
        store.commit(vec![to(a, b, "x"); INDEX_AT]).await.unwrap();
        wait_for((n + INDEX_AT) as i64).await;
        store.close().await;
    }

    /// Deleting an account takes its messages out of the index as well as
    /// the table, also those still in the tail; a hidden message leaves
    /// every history.
    #[tokio::test]
    async fn deleted_and_hidden_messages_leave_the_index() {
        let (_dir, path, store, [a, b, c]) = users::<3>().await;
        // 1-2 confirmed by b, so deleted with a; 3 still owed to c, so hidden.
        let out = store
            .commit(vec![to(a, b, "1"), to(a, b, "2"), to(a, c, "3")])
            .await
            .unwrap();
        assert_eq!(out.iter().map(mid).collect::<Vec<_>>(), [1, 2, 3]);
        store.writer.transact(index_all).await.unwrap();
        store
            .commit(vec![
                to(a, b, "4"),
                to(b, c, "5"),
                WriteOp::Ack { user: b, seq: 3 },
            ])
            .await
            .unwrap();
        assert_eq!(indexed(&path), (3, 3));
        let gone = store.delete_user(a).await.unwrap();
        assert_eq!((gone.messages, gone.pending), (3, 1));
        // Only b -> c is left, indexed by the deletion.
        assert_eq!(indexed(&path), (1, 5));
        assert!(history(&store, Conversation::Direct(a, b), None, 10)
            .await
            .is_empty());
        assert!(history(&store, Conversation::Direct(a, c), None, 10)
            .await
            .is_empty());
        assert_eq!(
            history(&store, Conversation::Direct(b, c), None, 10).await,
            [5]
        );
        store.close().await;
    }

    /// Retention drops the blocks wholly below its cut.
    #[tokio::test]
    async fn pruned_messages_leave_the_index() {
        let (_dir, path, store, [a, b]) = users::<2>().await;
        store.commit(vec![to(a, b, "x"); 4]).await.unwrap();
        store.writer.transact(index_all).await.unwrap();
        store.commit(vec![to(a, b, "x"); 2]).await.unwrap();
        store.writer.transact(index_all).await.unwrap();
        store
            .commit(vec![WriteOp::Ack { user: b, seq: 6 }])
            .await
            .unwrap();
        // Confirmed rows go first: retention keeps what someone is owed.
        store.prune_delivered(0, 100, 100).await.unwrap();
        // Messages are stamped time 0: all of them are old enough.
        assert_eq!(store.prune_messages(1, 5).await.unwrap(), 5);
        // Block 1-4 is gone; block 5-6 stays for 6, naming the deleted 5.
        assert_eq!(indexed(&path), (2, 6));
        let ab = Conversation::Direct(a, b);
        assert_eq!(history(&store, ab, None, 10).await, [6]);
        store.close().await;
    }

    /// A conversation's messages of one step go in blocks of at most
    /// [`BLOCK_MAX`]; pages cross blocks and the tail, and a block naming
    /// messages that are gone (deleted by another process here) still
    /// gives full pages.
    #[tokio::test]
    async fn pages_cross_blocks_and_skip_what_is_gone() {
        let (_dir, path, store, [a, b]) = users::<2>().await;
        let n = 2 * BLOCK_MAX + 10;
        store.commit(vec![to(a, b, "x"); n]).await.unwrap();
        store.writer.transact(index_all).await.unwrap();
        store.commit(vec![to(b, a, "y"); 5]).await.unwrap();
        let c = rusqlite::Connection::open(&path).unwrap();
        let blocks: i64 = c
            .query_row("SELECT COUNT(*) FROM history", [], |r| r.get(0))
            .unwrap();
        assert_eq!(blocks, 3);
        // Every other message of the second block goes.
        let second = BLOCK_MAX as i64 + 1..=2 * BLOCK_MAX as i64;
        c.execute(
            "DELETE FROM messages WHERE mid BETWEEN ?1 AND ?2 AND mid % 2 = 0",
            [*second.start(), *second.end()],
        )
        .unwrap();
        drop(c);
        let left: Vec<i64> = (1..=(n as i64 + 5))
            .rev()
            .filter(|m| !(second.contains(m) && m % 2 == 0))
            .collect();
        let ab = Conversation::Direct(a, b);
        assert_eq!(history(&store, ab, None, 10_000).await, left);
        // Pages of 100 from the top: the same list, in order, each full.
        let mut paged = Vec::new();
        let mut before = None;
        loop {
            let page = history(&store, ab, before, 100).await;
            assert!(page.len() == 100 || paged.len() + page.len() == left.len());
            let Some(&last) = page.last() else { break };
            paged.extend(page);
            before = Some(last);
        }
        assert_eq!(paged, left);
        store.close().await;
    }

    /// The `history` rows, in the order they were written.
    fn blocks(path: &std::path::Path) -> Vec<(String, i64, i64, String)> {
        let c = rusqlite::Connection::open(path).unwrap();
        let mut st = c
            .prepare("SELECT conv, first, last, mids FROM history ORDER BY id")
            .unwrap();
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    fn fresh_rows(store: &SqliteStore) -> Option<usize> {
        let f = store.index.fresh.lock().unwrap();
        f.valid.then_some(f.rows.len())
    }

    /// Blocks made from what the commits reported are the blocks made by
    /// reading the messages back; the list is only used once a pass caught
    /// up, and is dropped when messages change in any other way.
    #[tokio::test]
    async fn fresh_blocks_match_blocks_read_back() {
        let (_d1, fast_path, fast, [a, b, c]) = users::<3>().await;
        let (_d2, slow_path, slow, [a2, b2, c2]) = users::<3>().await;
        assert_eq!((a, b, c), (a2, b2, c2));
        let round = |i: usize| -> Vec<WriteOp> {
            (0..40)
                .map(|j| match (i + j) % 3 {
                    0 => to(a, b, "ab"),
                    1 => to(c, a, "ca"),
                    _ => to(b, c, "bc"),
                })
                .collect()
        };
        // The first pass has no list (a store starts without one) and reads
        // the messages back; then each round's commits fill a list.
        for i in 0..4 {
            for s in [&fast, &slow] {
                s.commit(round(i)).await.unwrap();
                s.commit(round(i + 1)).await.unwrap();
            }
            if i == 0 {
                assert_eq!(fresh_rows(&fast), None);
            } else {
                assert_eq!(fresh_rows(&fast), Some(80), "round {i}");
            }
            assert!(!indexer_step(&fast.writer, &fast.index).await.unwrap());
            assert_eq!(fresh_rows(&fast), Some(0));
            slow.writer.transact(index_all).await.unwrap();
        }
        assert_eq!(indexed(&fast_path), (320, 320));
        assert_eq!(blocks(&fast_path), blocks(&slow_path));
        let ab = Conversation::Direct(a, b);
        assert_eq!(
            history(&fast, ab, None, 1000).await,
            history(&slow, ab, None, 1000).await
        );
        // Deleting an account drops the list; the next pass reads back.
        fast.commit(round(9)).await.unwrap();
        fast.delete_user(c).await.unwrap();
        assert_eq!(fresh_rows(&fast), None);
        fast.commit(round(10)).await.unwrap();
        assert_eq!(fresh_rows(&fast), None, "no list until a pass caught up");
        assert!(!indexer_step(&fast.writer, &fast.index).await.unwrap());
        assert_eq!(fresh_rows(&fast), Some(0));
        // Round 10 stored only what did not involve c, all of it indexed.
        let (total, counter) = indexed(&fast_path);
        let (live, top): (i64, i64) = rusqlite::Connection::open(&fast_path)
            .unwrap()
            .query_row(
                "SELECT COUNT(*), MAX(mid) FROM messages WHERE conv <> 'deleted'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(top > 360 && top < 400, "{top}");
        assert_eq!(counter, top);
        assert!(total >= live, "every live message is in a block");
        fast.close().await;
        slow.close().await;
    }

    /// A message another process stored is not in the list: the next pass
    /// reads back and indexes it.
    #[tokio::test]
    async fn a_foreign_writer_drops_the_list() {
        let (_dir, path, store, [a, b]) = users::<2>().await;
        store.commit(vec![to(a, b, "x"); 3]).await.unwrap();
        assert!(!indexer_step(&store.writer, &store.index).await.unwrap());
        assert_eq!(fresh_rows(&store), Some(0));
        let conv = Conversation::Direct(a, b).key();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO messages (mid, sender, sender_name, kind, target, conv, body, created_at) \
                 VALUES (4, ?1, 'a', 6, ?2, ?3, 'elsewhere', 0)",
                rusqlite::params![a, b, conv],
            )
            .unwrap();
        store.commit(vec![to(a, b, "y"); 2]).await.unwrap();
        assert_eq!(fresh_rows(&store), None, "the commit saw the other writer");
        assert!(!indexer_step(&store.writer, &store.index).await.unwrap());
        assert_eq!(indexed(&path), (6, 6));
        let ab = Conversation::Direct(a, b);
        assert_eq!(history(&store, ab, None, 10).await, [6, 5, 4, 3, 2, 1]);
        store.close().await;
    }
}
