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
//! A block may name a message deleted or hidden since: every read joins
//! `messages` and checks the conversation. Retention drops the blocks
//! wholly below its cut; account deletion indexes the whole tail before it
//! looks one-to-one messages up by conversation, then drops the blocks of
//! the account's one-to-one conversations (their keys name it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::{OptionalExtension, Transaction};
use sqlx::SqlitePool;

use super::sql::SqlReads;
use super::sqlite_writer::Writer;
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

/// What the commits tell the indexer.
#[derive(Default)]
pub(super) struct HistoryIndex {
    /// Messages committed since the indexer's last pass began.
    pub(super) pending: AtomicUsize,
    /// Wakes the indexer before its timer.
    pub(super) wake: tokio::sync::Notify,
}

impl HistoryIndex {
    /// Counts `n` newly committed messages; call after the commit.
    pub(super) fn committed(&self, n: usize) {
        if n > 0 && self.pending.fetch_add(n, Ordering::Relaxed) + n >= INDEX_AT {
            self.wake.notify_one();
        }
    }
}

/// Indexes the messages after the `history` counter, at most
/// [`INDEX_STEP`] mids of them, as blocks, and moves the counter. Returns
/// whether more are left.
pub(super) fn index_step(tx: &Transaction<'_>) -> StoreResult<bool> {
    let done: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'history'")?
        .query_row([], |r| r.get(0))?;
    let top: Option<i64> = tx
        .prepare_cached("SELECT MAX(mid) FROM messages")?
        .query_row([], |r| r.get(0))?;
    let Some(top) = top.filter(|&t| t > done) else {
        return Ok(false);
    };
    let upto = top.min(done.saturating_add(INDEX_STEP));
    let mut blocks: BTreeMap<String, Vec<i64>> = BTreeMap::new();
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
    let mut insert =
        tx.prepare_cached("INSERT INTO history (conv, first, last, mids) VALUES (?, ?, ?, ?)")?;
    for (conv, mids) in &blocks {
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
    tx.prepare_cached(
        "INSERT INTO counters (name, value) VALUES ('history', ?) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute([upto])?;
    Ok(upto < top)
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
        let started = std::time::Instant::now();
        let mut steps = 0u32;
        loop {
            let Some(w) = writer.upgrade() else { return };
            let res = w.transact(index_step).await;
            drop(w);
            steps += 1;
            match res {
                Ok(true) => {}
                Ok(false) => break,
                Err(StoreError::Closed) => return,
                Err(e) => {
                    // HISTORY still finds the messages in the tail.
                    tracing::warn!(error = %e, "indexing history failed; retrying");
                    index.pending.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        let ms = started.elapsed().as_millis() as u64;
        if ms > 500 {
            tracing::info!(steps, ms, "slow pass of the history indexer");
        } else {
            tracing::trace!(steps, ms, "indexed history");
        }
    }
}

#[cfg(test)]
mod tests {
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

    async fn open(path: &std::path::Path, background: bool) -> SqliteStore {
        let url = format!("sqlite://{}", path.display());
        let opts = StoreOptions {
            background,
            ..StoreOptions::default()
        };
        SqliteStore::open(&url, &opts).await.unwrap()
    }

    /// A store without background tasks in a new directory (kept while the
    /// guard lives), its file, and `N` users.
    async fn users<const N: usize>() -> (
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
}
