//! The SQLite store's exactly-once index, (sender, cmid) to mid, built
//! behind the commits.
//!
//! A retried send must find the message its cmid stored before. As a
//! unique index of `messages`, (sender, cmid) put an entry at each sender's
//! place in the index, so a commit of 200 senders' messages wrote and
//! flushed a page per sender: with a cmid on every message (as our clients
//! send them) that was 2.6 times the bytes written and 40 % of the
//! throughput (BENCHMARKS.md, issue 9, seventh pass).
//!
//! So `cmids` is a table the writer fills in bulk. The commits hand over
//! each stored message's key ([`CmidIndex::committed`]), the writer keeps
//! them in memory, and every [`INDEX_AT`] keys (or [`INDEX_EVERY`]) one
//! transaction writes them, each page once for many keys, and moves the
//! `counters` row `cmids` to the newest mid. Every message at or below that
//! counter is in the table; every one above it is in the map. A batch looks
//! its cmids up in both ([`lookup`]).
//!
//! The table is keyed by the cmid itself, not a hash of it. A hash made
//! inserts and probes cheaper, but scattered each sender's new keys over
//! all of the sender's pages, where cmids that count up (as clients make
//! them) land side by side: a pass would have written a page per message
//! once the table was large.
//!
//! The map is only trusted while it names everything above the counter:
//! it records the counter and `PRAGMA data_version` it started from, and
//! is dropped when either moved under it (another process wrote), when a
//! batch did not report its keys after committing, when a pass did not
//! commit, when two keys share a hash, and past [`MAP_MAX`] keys. Then the
//! next batch with a cmid, or the next pass, reads the tail back from
//! `messages` into the table first ([`index_tail`]), and the commits start a
//! new map. Retention and account deletion take the rows of the messages
//! they delete out of the table and, once committed, out of the map. Should
//! a row be left behind anyway (by hand-written SQL, say), the lookup that
//! meets it deletes it, so that it cannot hide the key from a newer message.
//!
//! Nearly every key looked up is new, and probing the table for each was a
//! fifth of a commit's work per message. So the writer also keeps a filter
//! of every key in the table ([`TableKeys`]), and only a key it may hold is
//! probed for.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use rusqlite::types::ToSqlOutput;
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};

use super::batch::Earlier;
use super::sqlite::{counter, insert_rows, newest_mid, set_counter, Inserts, ROWS_PER_INSERT};
use super::sqlite_cmid_filter::Filter;
use super::sqlite_writer::{self as writer, Held, Writer};
use super::{StoreResult, Target, UserId};

/// A (sender, cmid).
pub(super) type CmidKey = (UserId, String);

/// A `cmids` row: the key and its mid.
type Row = (CmidKey, i64);

/// Keys in the map that start a pass at once.
const INDEX_AT: usize = 32_768;

/// How often a pass runs when fewer came in, so that an idle server's map
/// empties and a restart reads little back.
const INDEX_EVERY: Duration = Duration::from_secs(10);

/// Keys the map holds at most (some 100 bytes each) before it is dropped,
/// should the passes fall behind.
const MAP_MAX: usize = 4 * INDEX_AT;

/// Mids one read-back transaction of a pass covers at most, so that none
/// holds the writer long.
const READ_BACK_STEP: i64 = 65_536;

/// Keys of the table one step of a filter build reads.
const FILTER_STEP: usize = 65_536;

/// The filter is sized for at least this many keys (20 KiB)...
const FILTER_MIN_KEYS: usize = 1 << 14;

/// ...and at most this many (20 MiB). A table that may hold more (more
/// mids from the oldest message to its counter) gets no filter: its
/// lookups probe the table, as they do while a filter is being built.
const FILTER_MAX_KEYS: usize = 1 << 24;

/// Build steps per turn of the indexer, so that a long build (256 steps at
/// the largest size) does not hold up the passes that empty the map.
const FILTER_STEPS_PER_TURN: usize = 4;

/// How long a table too big for a filter goes before it is sized again.
const FILTER_RETRY: Duration = Duration::from_secs(600);

/// The held statements that write `cmids`; slots after the messages' and
/// the inbox log's. No row is written twice (the counter moves in the same
/// transaction): IGNORE is a safety net that, unlike ROLLBACK, could not
/// wedge the indexer, and unlike REPLACE needs no statement journal.
static CMID_INSERTS: Inserts = Inserts::new(
    "INSERT OR IGNORE INTO cmids (sender, cmid, mid) ",
    3,
    2 * ROWS_PER_INSERT.len(),
);

/// The keys above the counter, shared by the commits and the passes. Both
/// run on the writer, one after the other, so the lock is never
/// contended and a pass never sees half a commit.
#[derive(Default)]
pub(super) struct CmidIndex {
    map: Mutex<Map>,
    /// What is known of the keys in the table.
    table: Mutex<TableKeys>,
    /// Wakes the indexer before its timer.
    wake: tokio::sync::Notify,
}

/// Where the database stood: the `cmids` counter, and `PRAGMA
/// data_version`, which moves when another connection (another process)
/// commits, and not for the writer's own commits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct At {
    counter: i64,
    version: i64,
}

/// Reads [`At`] in the writer's transaction.
fn at(tx: &Transaction<'_>) -> StoreResult<At> {
    Ok(At {
        counter: counter(tx, "cmids")?,
        version: tx
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?,
    })
}

/// A filter of every key in the table, so that a lookup of a new key (the
/// common case) need not probe the table ([`super::sqlite_cmid_filter`]).
///
/// The indexer builds it behind the commits, a step at a time in key
/// order, and every write to the table adds its keys ([`write`]), so a key
/// written behind the scan is in it too. It is trusted only once the scan
/// is complete and while `PRAGMA data_version` stands where it stood when
/// the scan began: another process's writes are in no filter of this one,
/// so then the lookups probe again and the next pass builds anew. Rows
/// deleted from the table stay in it, which costs a probe, never a miss.
///
/// Every insert into the table must go through [`write`], and the filter
/// holds for the writer's one connection only (data_version is per
/// connection). The writer reads and changes it; the indexer only
/// asks whether it needs building.
#[derive(Default)]
struct TableKeys {
    filter: Option<Filter>,
    /// Whether `filter` holds every key of the table, while data_version
    /// is `version`.
    complete: bool,
    version: i64,
    /// A lookup found data_version moved: the next pass builds anew.
    stale: bool,
    /// The table was too big for a filter: not sized again before this.
    too_big_until: Option<std::time::Instant>,
    /// While building: the last key scanned.
    cursor: Option<CmidKey>,
    /// Random per process, as for the map.
    hasher: RandomState,
}

impl TableKeys {
    /// Whether a build is under way.
    fn building(&self) -> bool {
        self.filter.is_some() && !self.complete
    }

    fn drop_filter(&mut self) {
        self.filter = None;
        self.complete = false;
        self.stale = false;
        self.cursor = None;
    }

    /// Whether the indexer has building to do (a writer job); a complete
    /// filter no lookup found stale needs none, nor a table found too big
    /// a while ago.
    fn wanted(&self) -> bool {
        if self
            .too_big_until
            .is_some_and(|t| std::time::Instant::now() < t)
        {
            return false;
        }
        self.filter.is_none() || !self.complete || self.stale
    }
}

/// See [`CmidIndex`].
#[derive(Default)]
struct Map {
    /// Whether `rows` holds every cmid stored above the counter in `from`,
    /// as long as no other connection has written since.
    valid: bool,
    /// Set just before a batch commits and cleared once its keys are in:
    /// a batch that failed (or panicked) in between leaves the map
    /// untrusted rather than short of its keys.
    in_flight: bool,
    /// Where the database stood when the map started.
    from: At,
    /// In mid order: what the next pass writes.
    rows: Vec<Row>,
    /// A 64-bit hash of each key in `rows`, to its mid. A map of the keys
    /// themselves cost three times as much (hashing strings, and again each
    /// time it grew). A candidate is checked against the message's own
    /// sender and cmid; two keys with one hash drop the map.
    by_hash: HashMap<u64, i64>,
    /// Random per process: no client can choose keys that collide.
    hasher: RandomState,
}

impl Map {
    fn forget(&mut self) {
        self.valid = false;
        self.rows = Vec::new();
        self.by_hash = HashMap::new();
    }

    /// Whether the map holds every cmid above the counter at `now`.
    fn covers(&self, now: At) -> bool {
        self.valid && !self.in_flight && self.from == now
    }

    fn hash(&self, key: &CmidKey) -> u64 {
        key_hash(&self.hasher, key)
    }
}

/// [`Map::hash`], for where the map's fields are borrowed apart.
fn key_hash(hasher: &RandomState, (sender, cmid): &CmidKey) -> u64 {
    hasher.hash_one((sender, cmid.as_str()))
}

impl CmidIndex {
    /// Whether a batch's lookups may use the map as it stands rather than
    /// first read the whole tail back (as long as no other process has
    /// written): a commit that could read it back is not small.
    pub(super) fn map_trusted(&self) -> bool {
        let m = self.map();
        m.valid && !m.in_flight
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, TableKeys> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds keys written to the table to the filter, if there is one. A
    /// filter half again past its size (a twentieth of new keys would be
    /// probed) is dropped, for the next pass to build bigger. Keys are
    /// counted as added: one written ahead of the scan, or by a batch that
    /// rolled back, counts twice, which only brings the rebuild forward.
    fn filter_add(&self, rows: &[Row]) {
        let mut t = self.table();
        let TableKeys { filter, hasher, .. } = &mut *t;
        let Some(f) = filter else { return };
        for (key, _) in rows {
            f.insert(key_hash(hasher, key));
        }
        if f.keys() > f.capacity() + f.capacity() / 2 {
            t.drop_filter();
        }
    }

    /// For each key, whether it may be in the table: `false` only where a
    /// complete filter, trusted at `version`, says it is not.
    fn maybe_in_table(&self, version: i64, keys: &[CmidKey]) -> Vec<bool> {
        let mut t = self.table();
        match &t.filter {
            Some(f) if t.complete && t.version == version => keys
                .iter()
                .map(|k| f.may_contain(key_hash(&t.hasher, k)))
                .collect(),
            filter => {
                if filter.is_some() && t.complete {
                    t.stale = true;
                }
                vec![true; keys.len()]
            }
        }
    }

    /// Whether the filter is complete and trusted at `version` (tests).
    #[cfg(test)]
    fn filtered(&self, version: i64) -> bool {
        let t = self.table();
        t.filter.is_some() && t.complete && t.version == version
    }

    /// Call on the writer just before a batch commits; then
    /// [`CmidIndex::committed`] once it has.
    pub(super) fn committing(&self) {
        self.map().in_flight = true;
    }

    /// Notes the cmids of a committed batch, with their mids; call on the
    /// writer, after the commit.
    pub(super) fn committed(&self, stored: Vec<(CmidKey, i64)>) {
        let mut m = self.map();
        m.in_flight = false;
        if !m.valid || stored.is_empty() {
            return;
        }
        if m.rows.len() + stored.len() > MAP_MAX {
            m.forget();
            return;
        }
        for (key, mid) in stored {
            let h = m.hash(&key);
            if m.by_hash.insert(h, mid).is_some() {
                m.forget();
                return;
            }
            m.rows.push((key, mid));
        }
        if m.rows.len() >= INDEX_AT {
            self.wake.notify_one();
        }
    }

    /// Drops the map, so that the next lookup reads the tail back (tests
    /// stand in for what else drops it).
    #[cfg(test)]
    fn forget(&self) {
        self.map().forget();
    }

    /// Drops the map's rows of messages that were just deleted (`gone`
    /// says which); call on the writer thread, after that commit. A row
    /// left behind would do no harm (a candidate is checked against its
    /// message) until its key was used again, which would drop the map.
    pub(super) fn deleted(&self, gone: impl Fn(&CmidKey, i64) -> bool) {
        let mut m = self.map();
        let Map {
            rows,
            by_hash,
            hasher,
            ..
        } = &mut *m;
        rows.retain(|(key, mid)| {
            let keep = !gone(key, *mid);
            if !keep {
                by_hash.remove(&key_hash(hasher, key));
            }
            keep
        });
    }

    /// After a committed transaction that left everything up to the counter
    /// of `now` in the table: the commits start a new map.
    pub(super) fn caught_up(&self, now: At) {
        let mut m = self.map();
        m.valid = true;
        m.in_flight = false;
        m.from = now;
        m.rows.clear();
        m.by_hash.clear();
    }

    /// The map's rows if it holds everything above the counter at `now`;
    /// the map is dropped either way (a pass writes them, then calls
    /// [`CmidIndex::caught_up`]).
    fn take(&self, now: At) -> Option<Vec<Row>> {
        let mut m = self.map();
        let whole = m.covers(now);
        let rows = std::mem::take(&mut m.rows);
        m.forget();
        whole.then_some(rows)
    }

    /// The mid the map holds under each key's hash, if the map covers
    /// everything above the counter at `now`.
    fn candidates(&self, now: At, keys: &[CmidKey]) -> Option<Vec<Option<i64>>> {
        let m = self.map();
        m.covers(now).then(|| {
            keys.iter()
                .map(|k| m.by_hash.get(&m.hash(k)).copied())
                .collect()
        })
    }
}

/// Writes `rows` and moves the counter to `upto`. They go in mid order:
/// sorting them by key cost more than it saved, since a transaction writes
/// each page it changed once, at commit, whatever the order.
fn write(
    tx: &Transaction<'_>,
    held: &mut Held<'_>,
    index: &CmidIndex,
    rows: &[Row],
    upto: i64,
) -> StoreResult<()> {
    // Into the filter first: should the transaction roll back, the filter
    // holds keys the table does not, which costs a probe, never a miss.
    index.filter_add(rows);
    let written = insert_rows(held, &CMID_INSERTS, rows, |((sender, cmid), mid), args| {
        args.extend([
            ToSqlOutput::from(*sender),
            ToSqlOutput::from(cmid.as_str()),
            ToSqlOutput::from(*mid),
        ]);
    })?;
    if written < rows.len() {
        // A key already had a row: its message stored twice, or a row left
        // behind by a message deleted without it (which the new message's
        // lookup should have met and deleted). Neither should happen.
        tracing::warn!(
            ignored = rows.len() - written,
            "cmid rows already in the table were kept"
        );
    }
    set_counter(tx, "cmids", upto)
}

/// The rows of the messages with a cmid in mids `after` < mid <= `upto`,
/// but for those hidden when their sender was deleted: no retry can come
/// for them.
fn rows_of(tx: &Transaction<'_>, after: i64, upto: i64) -> StoreResult<Vec<Row>> {
    Ok(tx
        .prepare_cached(
            "SELECT sender, cmid, mid FROM messages \
             WHERE mid > ? AND mid <= ? AND cmid IS NOT NULL AND conv <> 'deleted'",
        )?
        .query_map([after, upto], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?
        .collect::<Result<_, _>>()?)
}

/// Reads the messages above the counter back into the table, at most
/// `step` mids of them. Returns the counter it left and whether more are
/// left.
fn read_back(
    tx: &Transaction<'_>,
    held: &mut Held<'_>,
    index: &CmidIndex,
    step: i64,
) -> StoreResult<(i64, bool)> {
    let done = counter(tx, "cmids")?;
    let Some(top) = newest_mid(tx)?.filter(|&t| t > done) else {
        return Ok((done, false));
    };
    let upto = top.min(done.saturating_add(step));
    let rows = rows_of(tx, done, upto)?;
    write(tx, held, index, &rows, upto)?;
    Ok((upto, upto < top))
}

/// Reads the whole tail back into the table, so that it alone answers
/// lookups.
fn index_tail(tx: &Transaction<'_>, held: &mut Held<'_>, index: &CmidIndex) -> StoreResult<()> {
    while read_back(tx, held, index, i64::MAX)?.1 {}
    Ok(())
}

/// A stored message as a retry is checked against it.
fn earlier(r: &rusqlite::Row<'_>) -> rusqlite::Result<Earlier> {
    Ok(Earlier {
        mid: r.get(0)?,
        target: Target::from_parts(r.get(1)?, r.get(2)?),
        body: r.get(3)?,
    })
}

/// The messages stored before under `keys`, in the batch's transaction.
/// If the map does not cover the tail, this reads the tail into the table
/// first and also returns where that left the database: the caller hands
/// it to [`CmidIndex::caught_up`] once the transaction has committed.
pub(super) fn lookup(
    tx: &Transaction<'_>,
    held: &mut Held<'_>,
    index: &CmidIndex,
    keys: &[CmidKey],
) -> StoreResult<(HashMap<CmidKey, Earlier>, Option<At>)> {
    let mut hits = HashMap::new();
    if keys.is_empty() {
        return Ok((hits, None));
    }
    let now = at(tx)?;
    let (in_map, caught_up) = match index.candidates(now, keys) {
        Some(in_map) => (in_map, None),
        None => {
            index_tail(tx, held, index)?;
            (vec![None; keys.len()], Some(at(tx)?))
        }
    };
    // Reading the tail back moved the counter, not data_version.
    let in_table = index.maybe_in_table(now.version, keys);
    let mut message = tx.prepare_cached(
        "SELECT mid, kind, target, body FROM messages WHERE mid = ? AND sender = ? AND cmid = ?",
    )?;
    let mut indexed = tx.prepare_cached("SELECT mid FROM cmids WHERE sender = ? AND cmid = ?")?;
    for ((key, in_map), in_table) in keys.iter().zip(in_map).zip(in_table) {
        // A candidate from the map that is another key (one hash, two
        // keys) means this key is not in the tail, whose hashes are unique.
        let mut hit = match in_map {
            Some(mid) => message
                .query_row(params![mid, key.0, key.1], earlier)
                .optional()?,
            None => None,
        };
        if hit.is_none() && in_table {
            let row: Option<i64> = indexed
                .query_row(params![key.0, key.1], |r| r.get(0))
                .optional()?;
            if let Some(mid) = row {
                hit = message
                    .query_row(params![mid, key.0, key.1], earlier)
                    .optional()?;
                if hit.is_none() {
                    // Its message went without it: free the key.
                    tx.prepare_cached("DELETE FROM cmids WHERE sender = ? AND cmid = ?")?
                        .execute(params![key.0, key.1])?;
                    tracing::warn!(sender = key.0, mid, "dropped a cmid whose message is gone");
                }
            }
        }
        if let Some(e) = hit {
            hits.insert(key.clone(), e);
        }
    }
    Ok((hits, caught_up))
}

/// Drops the rows of the messages with mids `after` < mid <= `upto`,
/// before they are deleted.
fn drop_rows(tx: &Transaction<'_>, after: i64, upto: i64) -> StoreResult<()> {
    let rows = rows_of(tx, after, upto)?;
    let mut delete =
        tx.prepare_cached("DELETE FROM cmids WHERE sender = ? AND cmid = ? AND mid = ?")?;
    for ((sender, cmid), mid) in rows {
        delete.execute(params![sender, cmid, mid])?;
    }
    Ok(())
}

/// Drops the rows of messages at or below `upto`, before retention deletes
/// them.
pub(super) fn prune(tx: &Transaction<'_>, upto: i64) -> StoreResult<()> {
    drop_rows(tx, 0, upto)
}

/// Drops the row of message `mid`, before it is deleted.
pub(super) fn drop_message(tx: &Transaction<'_>, mid: i64) -> StoreResult<()> {
    drop_rows(tx, mid - 1, mid)
}

/// Drops every row of a sender, whose messages are being deleted.
pub(super) fn drop_sender(tx: &Transaction<'_>, sender: UserId) -> StoreResult<()> {
    tx.prepare_cached("DELETE FROM cmids WHERE sender = ?")?
        .execute([sender])?;
    Ok(())
}

/// One transaction of a pass: the map if it covers the tail, else up to
/// [`READ_BACK_STEP`] mids read back. Returns whether more is left.
async fn pass(w: &Writer, index: &Arc<CmidIndex>) -> StoreResult<bool> {
    let index = index.clone();
    let (more, durable) = w
        .run_staged(move |held| {
            let tx = writer::immediate(held.conn())?;
            let now = at(&tx)?;
            let more = match (newest_mid(&tx)?, index.take(now)) {
                (Some(top), Some(rows)) if top > now.counter => {
                    write(&tx, held, &index, &rows, top)?;
                    false
                }
                (_, Some(_)) => false,
                (_, None) => read_back(&tx, held, &index, READ_BACK_STEP)?.1,
            };
            let after = at(&tx)?;
            tx.commit()?;
            if !more {
                index.caught_up(after);
            }
            Ok(more)
        })
        .await?;
    durable.wait().await?;
    Ok(more)
}

/// One step of building the filter of the table's keys ([`TableKeys`]):
/// starts a build if there is none to go on with, then reads up to `step`
/// keys after the cursor. Returns whether more are left. A build that
/// finds data_version moved since it began is dropped and the step ends
/// the pass (another process writing between steps could otherwise keep
/// it starting over for ever); a complete filter found stale starts anew.
fn filter_step(tx: &Transaction<'_>, index: &CmidIndex, step: usize) -> StoreResult<bool> {
    debug_assert!(step > 0, "a build needs steps of at least one key");
    let version = at(tx)?.version;
    let mut t = index.table();
    if t.complete && t.version == version {
        return Ok(false);
    }
    if t.filter.is_some() && t.version != version {
        // A stale filter is built anew at once; a build under way stops.
        let stale = t.complete;
        t.drop_filter();
        if !stale {
            return Ok(false);
        }
    }
    if t.filter.is_none() {
        // The table holds at most one key per mid from the oldest message
        // left to its counter.
        let top = counter(tx, "cmids")?;
        let oldest: i64 = tx
            .prepare_cached("SELECT COALESCE(MIN(mid), 1) FROM messages")?
            .query_row([], |r| r.get(0))?;
        let covered = usize::try_from(top.saturating_sub(oldest).saturating_add(1)).unwrap_or(0);
        if covered > FILTER_MAX_KEYS {
            t.too_big_until = Some(std::time::Instant::now() + FILTER_RETRY);
            tracing::debug!(covered, "cmid table too big for a filter; lookups probe it");
            return Ok(false);
        }
        // Room for the table to grow threefold (more, with messages
        // without a cmid) before the filter is built again.
        let size = covered
            .saturating_mul(3)
            .clamp(FILTER_MIN_KEYS, FILTER_MAX_KEYS);
        t.filter = Some(Filter::with_capacity(size));
        t.version = version;
        t.too_big_until = None;
    }
    let limit = i64::try_from(step).unwrap_or(i64::MAX);
    // Before the first step, a cursor below every key (user ids are > 0).
    let (sender, cmid) = match &t.cursor {
        Some((sender, cmid)) => (*sender, cmid.as_str()),
        None => (i64::MIN, ""),
    };
    let mut keys: Vec<CmidKey> = tx
        .prepare_cached(
            "SELECT sender, cmid FROM cmids WHERE (sender, cmid) > (?, ?) \
             ORDER BY sender, cmid LIMIT ?",
        )?
        .query_map(params![sender, cmid, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let TableKeys { filter, hasher, .. } = &mut *t;
    if let Some(f) = filter {
        for k in &keys {
            f.insert(key_hash(hasher, k));
        }
    }
    if keys.len() < step {
        t.complete = true;
        t.cursor = None;
        if let Some(f) = &t.filter {
            tracing::debug!(keys = f.keys(), kib = f.bytes() / 1024, "cmid filter built");
        }
        return Ok(false);
    }
    t.cursor = keys.pop();
    Ok(true)
}

/// One writer job of a filter build: [`filter_step`], in a read
/// transaction (it writes nothing; the writer thread orders it with the
/// writes that feed the filter).
async fn build_filter(w: &Writer, index: &Arc<CmidIndex>, step: usize) -> StoreResult<bool> {
    let index = index.clone();
    w.run(move |conn| {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Deferred)?;
        let more = filter_step(&tx, &index, step)?;
        tx.commit()?;
        Ok(more)
    })
    .await
}

/// The indexer task: a pass at start (for what a previous run left), then
/// whenever [`INDEX_AT`] keys came in or every [`INDEX_EVERY`]; after each,
/// the filter of the table's keys is built if it needs to be. Ends when
/// the store is closed or dropped.
pub(super) async fn indexer(writer: Weak<Writer>, index: Arc<CmidIndex>) {
    // At start, and while a build is under way: no wait.
    let mut busy = true;
    loop {
        if !busy {
            let _ = tokio::time::timeout(INDEX_EVERY, index.wake.notified()).await;
        }
        busy = false;
        let pass = |w: Arc<Writer>| {
            let index = index.clone();
            async move { pass(&w, &index).await }
        };
        if !writer::background_pass(&writer, "indexing cmids", pass).await {
            return;
        }
        if !index.table().wanted() {
            continue;
        }
        // A few steps, then a map pass again if the build goes on.
        let mut left = FILTER_STEPS_PER_TURN;
        let step = |w: Arc<Writer>| {
            let index = index.clone();
            left -= 1;
            let last = left == 0;
            async move {
                let more = build_filter(&w, &index, FILTER_STEP).await?;
                Ok(more && !last)
            }
        };
        if !writer::background_pass(&writer, "filtering cmids", step).await {
            return;
        }
        busy = index.table().building();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{SqliteStore, MIGRATIONS};
    use crate::store::sqlite_history::tests::{open, users};
    use crate::store::{
        AdminStore, Appended, MessageStore, NewMessage, StoreError, StoreOptions, WriteOp,
        WriteOutcome,
    };

    fn to(sender: UserId, user: UserId, body: &str, cmid: &str) -> WriteOp {
        WriteOp::Append(NewMessage {
            sender,
            sender_name: "a".into(),
            target: Target::User(user),
            body: body.into(),
            cmid: Some(cmid.into()),
            time: 0,
        })
    }

    /// The mid stored, or the first one's for a retry; panics on a failure.
    async fn send(s: &SqliteStore, op: WriteOp) -> Appended {
        match s.commit(vec![op]).await.unwrap().pop() {
            Some(WriteOutcome::Append(Ok(a))) => a,
            other => panic!("not stored: {other:?}"),
        }
    }

    fn new_mid(a: &Appended) -> i64 {
        match a {
            Appended::New(f) => f.message.mid,
            Appended::Duplicate { mid } => panic!("a retry of {mid}"),
        }
    }

    fn retry_of(a: &Appended) -> i64 {
        match a {
            Appended::Duplicate { mid } => *mid,
            Appended::New(f) => panic!("stored again as {}", f.message.mid),
        }
    }

    /// `cmids`' rows, in key order, and its counter, read with a connection
    /// of the test's own.
    fn table(path: &std::path::Path) -> (Vec<(UserId, String, i64)>, i64) {
        let c = rusqlite::Connection::open(path).unwrap();
        let rows = c
            .prepare("SELECT sender, cmid, mid FROM cmids ORDER BY sender, cmid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let counter = c
            .query_row(
                "SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'cmids'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (rows, counter)
    }

    /// Keys in the map, if it is trusted.
    fn in_map(s: &SqliteStore) -> Option<usize> {
        let m = s.cmids.map();
        (m.valid && !m.in_flight).then_some(m.rows.len())
    }

    /// A retry is found wherever its key is: in the map above the counter,
    /// in the table once a pass wrote it, and from the table alone when
    /// the map was dropped.
    #[tokio::test]
    async fn retries_are_found_in_the_map_and_in_the_table() {
        let (_dir, path, store, [a, b]) = users::<2>().await;
        // A new store has no map: the first lookup reads the (empty) tail
        // back, and then the commits fill one.
        assert_eq!(in_map(&store), None);
        let m1 = new_mid(&send(&store, to(a, b, "one", "k1")).await);
        assert_eq!(in_map(&store), Some(1));
        let m2 = new_mid(&send(&store, to(a, b, "two", "k2")).await);
        assert_eq!(retry_of(&send(&store, to(a, b, "one", "k1")).await), m1);
        assert_eq!(table(&path), (vec![], 0), "nothing written yet");
        assert!(!pass(&store.writer, &store.cmids).await.unwrap());
        assert_eq!(in_map(&store), Some(0));
        assert_eq!(
            table(&path),
            (vec![(a, "k1".into(), m1), (a, "k2".into(), m2)], m2)
        );
        assert_eq!(retry_of(&send(&store, to(a, b, "two", "k2")).await), m2);
        let reused = store.commit(vec![to(a, b, "other", "k2")]).await.unwrap();
        assert!(
            matches!(
                &reused[0],
                WriteOutcome::Append(Err(StoreError::CmidReused))
            ),
            "{reused:?}"
        );
        // One in the map, two in the table; then the map is dropped, and the
        // lookup reads the tail (k3) back into the table first.
        let m3 = new_mid(&send(&store, to(a, b, "three", "k3")).await);
        store.cmids.forget();
        for (k, m) in [("k1", m1), ("k3", m3)] {
            let body = ["one", "two", "three"][(m - m1) as usize];
            assert_eq!(retry_of(&send(&store, to(a, b, body, k)).await), m);
        }
        assert_eq!(table(&path).1, m3);
        assert_eq!(in_map(&store), Some(0));
        store.close().await;
    }

    /// A pass from the map and a pass reading the tail back write the same
    /// rows; the counter ends at the newest message, cmid or not.
    #[tokio::test]
    async fn map_and_read_back_write_the_same_rows() {
        let (_d1, map_path, by_map, [a, b]) = users::<2>().await;
        let (_d2, back_path, read_back, _) = users::<2>().await;
        for s in [&by_map, &read_back] {
            // The first commit reads the empty tail back and starts a map.
            new_mid(&send(s, to(a, b, "x", "first")).await);
            let mut ops: Vec<WriteOp> =
                (0..300).map(|i| to(b, a, "y", &format!("b-{i}"))).collect();
            ops.push(WriteOp::Append(NewMessage {
                cmid: None,
                ..NewMessage {
                    sender: a,
                    sender_name: "a".into(),
                    target: Target::User(b),
                    body: "no cmid".into(),
                    cmid: None,
                    time: 0,
                }
            }));
            s.commit(ops).await.unwrap();
        }
        assert_eq!(in_map(&by_map), Some(301));
        read_back.cmids.forget();
        assert!(!pass(&by_map.writer, &by_map.cmids).await.unwrap());
        assert!(!pass(&read_back.writer, &read_back.cmids).await.unwrap());
        let (rows, counter) = table(&map_path);
        assert_eq!(rows.len(), 301);
        assert_eq!(counter, 302);
        assert_eq!(table(&back_path), (rows, counter));
        assert_eq!(
            in_map(&read_back),
            Some(0),
            "a pass that caught up starts a map"
        );
        by_map.close().await;
        read_back.close().await;
    }

    /// Two keys under one hash drop the map rather than hide one of them;
    /// the same key twice stands in for two keys that collide.
    #[tokio::test]
    async fn keys_with_one_hash_drop_the_map() {
        let (_dir, _path, store, [a, b]) = users::<2>().await;
        let m1 = new_mid(&send(&store, to(a, b, "one", "k1")).await);
        assert_eq!(in_map(&store), Some(1));
        store.cmids.committed(vec![((a, "k1".into()), m1 + 100)]);
        assert_eq!(in_map(&store), None);
        assert_eq!(retry_of(&send(&store, to(a, b, "one", "k1")).await), m1);
        store.close().await;
    }

    /// A row left behind by a message deleted without it (another process,
    /// say) is dropped by the lookup that meets it: the key stores a new
    /// message, and a retry finds that one.
    #[tokio::test]
    async fn a_row_whose_message_is_gone_frees_its_key() {
        let (_dir, path, store, [a, b]) = users::<2>().await;
        let m1 = new_mid(&send(&store, to(a, b, "one", "k1")).await);
        let later = new_mid(&send(&store, to(a, b, "two", "k2")).await);
        assert!(!pass(&store.writer, &store.cmids).await.unwrap());
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("DELETE FROM messages WHERE mid = ?", [m1])
            .unwrap();
        let m2 = new_mid(&send(&store, to(a, b, "again", "k1")).await);
        assert!(m2 > later);
        assert!(!pass(&store.writer, &store.cmids).await.unwrap());
        assert_eq!(
            table(&path).0,
            vec![(a, "k1".into(), m2), (a, "k2".into(), later)]
        );
        assert_eq!(retry_of(&send(&store, to(a, b, "again", "k1")).await), m2);
        store.close().await;
    }

    /// Deleting an account deletes the rows of what it sent (gone, or
    /// hidden while others still wait for it) and of the one-to-one
    /// messages it received, which go with it; other rows stay.
    #[tokio::test]
    async fn account_deletion_takes_its_rows() {
        let (_dir, path, store, [a, b, c]) = users::<3>().await;
        new_mid(&send(&store, to(a, b, "a to b", "ka")).await);
        let from_b = new_mid(&send(&store, to(b, c, "b to c", "kb")).await);
        new_mid(&send(&store, to(c, a, "c to a", "kc")).await);
        assert!(!pass(&store.writer, &store.cmids).await.unwrap());
        assert_eq!(table(&path).0.len(), 3);
        // b has not confirmed "a to b": it is hidden, not deleted. "c to a"
        // is deleted.
        store.delete_user(a).await.unwrap();
        assert_eq!(table(&path).0, vec![(b, "kb".into(), from_b)]);
        assert_eq!(
            retry_of(&send(&store, to(b, c, "b to c", "kb")).await),
            from_b
        );
        store.close().await;
    }

    /// A database from before `cmids` keeps exactly-once for the messages
    /// it holds: the migration indexes them and moves the counter.
    #[tokio::test]
    async fn the_migration_indexes_stored_cmids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let url = format!("sqlite://{}", path.display());
        {
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            let before: Vec<_> = MIGRATIONS
                .iter()
                .take_while(|(name, _)| *name != "cmid index")
                .copied()
                .collect();
            crate::store::migrator(&before).run(&pool).await.unwrap();
            for (id, name) in [(1, "a"), (2, "b")] {
                sqlx::query(
                    "INSERT INTO users (id, name, password, created_at) VALUES (?, ?, 'x', 0)",
                )
                .bind(id)
                .bind(name)
                .execute(&pool)
                .await
                .unwrap();
            }
            for (mid, cmid) in [(1, Some("old-1")), (2, None), (3, Some("old-3"))] {
                sqlx::query(
                    "INSERT INTO messages (mid, sender, sender_name, kind, target, conv, body, cmid, created_at) \
                     VALUES (?, 1, 'a', 6, 2, 'd:1:2', 'old', ?, 0)",
                )
                .bind(mid)
                .bind(cmid)
                .execute(&pool)
                .await
                .unwrap();
            }
            pool.close().await;
        }
        let store = SqliteStore::open(&url, &StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(
            table(&path),
            (vec![(1, "old-1".into(), 1), (1, "old-3".into(), 3)], 3)
        );
        assert_eq!(retry_of(&send(&store, to(1, 2, "old", "old-3")).await), 3);
        let m = new_mid(&send(&store, to(1, 2, "new", "new-1")).await);
        assert_eq!(m, 4);
        store.close().await;
    }

    /// Another process's messages are in no map of this one: a pass that
    /// finds another connection wrote since its map started reads the tail
    /// back, so that the other process's keys reach the table, rather than
    /// move the counter past them.
    #[tokio::test]
    async fn a_pass_notices_another_process() {
        let (_dir, path, one, [a, b]) = users::<2>().await;
        let m1 = new_mid(&send(&one, to(a, b, "one", "k1")).await);
        assert!(!pass(&one.writer, &one.cmids).await.unwrap());
        assert_eq!(in_map(&one), Some(0));
        // The other store's map starts at the same counter, and its key
        // goes into its own map only.
        let other = open(&path, false).await;
        let m2 = new_mid(&send(&other, to(a, b, "two", "k2")).await);
        assert_eq!(in_map(&other), Some(1));
        assert_eq!(table(&path), (vec![(a, "k1".into(), m1)], m1));
        // This store's (empty) map starts at that counter too, but it
        // does not know of k2.
        assert!(!pass(&one.writer, &one.cmids).await.unwrap());
        assert_eq!(
            table(&path),
            (vec![(a, "k1".into(), m1), (a, "k2".into(), m2)], m2)
        );
        assert_eq!(retry_of(&send(&other, to(a, b, "two", "k2")).await), m2);
        assert_eq!(retry_of(&send(&one, to(a, b, "two", "k2")).await), m2);
        one.close().await;
        other.close().await;
    }

    /// Retention deletes the rows of the messages it deletes, from the table
    /// and from the map; after a restart a key is found in the table or in
    /// the tail the first lookup reads back.
    #[tokio::test]
    async fn retention_and_a_restart() {
        let (_dir, path, store, [a, b]) = users::<2>().await;
        let old = new_mid(&send(&store, to(a, b, "old", "old")).await);
        let kept = new_mid(&send(&store, to(a, b, "kept", "kept")).await);
        assert!(!pass(&store.writer, &store.cmids).await.unwrap());
        let tail = new_mid(&send(&store, to(a, b, "tail", "tail")).await);
        let late = new_mid(&send(&store, to(a, b, "late", "late")).await);
        assert_eq!(in_map(&store), Some(2));
        store
            .commit(vec![WriteOp::Ack { user: b, seq: 4 }])
            .await
            .unwrap();
        store.prune_delivered(0, 10, 10).await.unwrap();
        // Cut below "tail": retention takes the oldest three.
        let later = chat_protocol::time::unix_now() + 10;
        assert_eq!(store.prune_messages(later, 3).await.unwrap(), 3);
        assert_eq!(
            table(&path).0,
            vec![],
            "old and kept went with their messages"
        );
        assert_eq!(in_map(&store), Some(1), "so did tail");
        store.close().await;

        let store = open(&path, false).await;
        assert_eq!(
            retry_of(&send(&store, to(a, b, "late", "late")).await),
            late
        );
        let again = new_mid(&send(&store, to(a, b, "old", "old")).await);
        assert!(again > late && kept < tail && old < kept);
        assert_eq!(table(&path).0, vec![(a, "late".into(), late)]);
        store.close().await;
    }

    /// A candidate the map offers under another key's hash is not taken
    /// for this key: the key is looked up in the table too.
    #[tokio::test]
    async fn a_candidate_of_another_key_is_checked() {
        let (_dir, _path, store, [a, b]) = users::<2>().await;
        let indexed = new_mid(&send(&store, to(a, b, "x", "in-table")).await);
        assert!(!pass(&store.writer, &store.cmids).await.unwrap());
        let tail = new_mid(&send(&store, to(a, b, "y", "in-tail")).await);
        {
            // As if "in-table" had the hash of "in-tail".
            let mut m = store.cmids.map();
            let h = m.hash(&(a, "in-table".into()));
            m.by_hash.insert(h, tail);
        }
        assert_eq!(
            retry_of(&send(&store, to(a, b, "x", "in-table")).await),
            indexed
        );
        assert_eq!(
            retry_of(&send(&store, to(a, b, "y", "in-tail")).await),
            tail
        );
        store.close().await;
    }

    /// A batch that never reported its keys (its commit failed, or it
    /// panicked after committing) leaves the map untrusted: the next lookup
    /// reads the tail back.
    #[tokio::test]
    async fn a_batch_that_did_not_report_leaves_the_map_untrusted() {
        let (_dir, _path, store, [a, b]) = users::<2>().await;
        let m1 = new_mid(&send(&store, to(a, b, "one", "k1")).await);
        store.cmids.committing();
        assert_eq!(in_map(&store), None);
        assert_eq!(retry_of(&send(&store, to(a, b, "one", "k1")).await), m1);
        assert_eq!(in_map(&store), Some(0), "read back, then a new map");
        store.close().await;
    }

    /// `PRAGMA data_version` as the writer sees it.
    async fn version(s: &SqliteStore) -> i64 {
        s.writer
            .run(|c| {
                let tx = writer::immediate(c)?;
                Ok(at(&tx)?.version)
            })
            .await
            .unwrap()
    }

    /// Builds the filter in steps of `step` keys; returns how many it took.
    async fn build(s: &SqliteStore, step: usize) -> usize {
        let mut steps = 1;
        while build_filter(&s.writer, &s.cmids, step).await.unwrap() {
            steps += 1;
        }
        steps
    }

    fn keys(sender: UserId, names: impl IntoIterator<Item = String>) -> Vec<CmidKey> {
        names.into_iter().map(|n| (sender, n)).collect()
    }

    /// Once built, the filter says "maybe" for every key in the table, also
    /// for keys written behind its scan or after it, and "no" for most new
    /// keys, whose lookups then skip the probe; retries are found as before.
    #[tokio::test]
    async fn the_filter_spares_probes_of_new_keys_and_hides_none() {
        let (_dir, _path, store, [a, b]) = users::<2>().await;
        let mut mids = Vec::new();
        for i in 0..5 {
            let op = to(a, b, &format!("m{i}"), &format!("k{i}"));
            mids.push(new_mid(&send(&store, op).await));
        }
        assert!(!pass(&store.writer, &store.cmids).await.unwrap());
        let v = version(&store).await;
        assert!(!store.cmids.filtered(v), "no filter before a build");
        assert_eq!(
            store.cmids.maybe_in_table(v, &keys(a, ["k0".into()])),
            [true]
        );

        // Two keys a step: k0 k1, then k2 k3, then k4; between the first
        // two steps a key is written to the table behind the scan.
        assert!(build_filter(&store.writer, &store.cmids, 2).await.unwrap());
        let late = new_mid(&send(&store, to(a, b, "late", "a-late")).await);
        assert!(!pass(&store.writer, &store.cmids).await.unwrap());
        assert_eq!(build(&store, 2).await, 2);
        assert!(store.cmids.filtered(v));

        let stored = keys(a, (0..5).map(|i| format!("k{i}")).chain(["a-late".into()]));
        assert!(store.cmids.maybe_in_table(v, &stored).iter().all(|&m| m));
        let fresh = keys(a, (0..1000).map(|i| format!("new-{i}")));
        let maybe = store.cmids.maybe_in_table(v, &fresh);
        let probed = maybe.iter().filter(|&&m| m).count();
        assert!(probed < 50, "{probed} of 1000 new keys would be probed");

        // Retries of keys in the table, and of one written after the
        // build, are found; a new key is stored.
        for (i, &m) in mids.iter().enumerate() {
            let op = to(a, b, &format!("m{i}"), &format!("k{i}"));
            assert_eq!(retry_of(&send(&store, op).await), m);
        }
        assert_eq!(
            retry_of(&send(&store, to(a, b, "late", "a-late")).await),
            late
        );
        let after = new_mid(&send(&store, to(a, b, "after", "after")).await);
        assert!(!pass(&store.writer, &store.cmids).await.unwrap());
        assert!(store.cmids.maybe_in_table(v, &keys(a, ["after".into()]))[0]);
        // A key that reaches the table through a lookup's read-back of the
        // tail (the map was dropped) is in the filter too.
        let tail = new_mid(&send(&store, to(a, b, "tail", "tail")).await);
        store.cmids.forget();
        assert_eq!(
            retry_of(&send(&store, to(a, b, "after", "after")).await),
            after
        );
        assert!(store.cmids.filtered(v));
        assert!(store.cmids.maybe_in_table(v, &keys(a, ["tail".into()]))[0]);
        assert_eq!(
            retry_of(&send(&store, to(a, b, "tail", "tail")).await),
            tail
        );
        store.close().await;
    }

    /// A build that finds another process wrote since it began stops
    /// (rather than start over while the other process goes on writing),
    /// and the next pass builds from the start.
    #[tokio::test]
    async fn a_build_stops_when_another_process_writes_mid_way() {
        let (_dir, path, one, [a, b]) = users::<2>().await;
        for k in ["k1", "k2", "k3"] {
            new_mid(&send(&one, to(a, b, k, k)).await);
        }
        assert!(!pass(&one.writer, &one.cmids).await.unwrap());
        assert!(build_filter(&one.writer, &one.cmids, 1).await.unwrap());
        let other = open(&path, false).await;
        let m4 = new_mid(&send(&other, to(a, b, "k4", "k4")).await);
        assert!(!pass(&other.writer, &other.cmids).await.unwrap());
        assert!(!build_filter(&one.writer, &one.cmids, 1).await.unwrap());
        assert!(!one.cmids.table().building(), "the build was dropped");
        assert!(one.cmids.table().wanted());
        let now = version(&one).await;
        assert_eq!(
            build(&one, 1).await,
            5,
            "k1, k2, k3, k4, then an empty step"
        );
        assert!(one.cmids.filtered(now));
        assert_eq!(
            one.cmids.maybe_in_table(now, &keys(a, ["k4".into()])),
            [true]
        );
        assert_eq!(retry_of(&send(&one, to(a, b, "k4", "k4")).await), m4);
        one.close().await;
        other.close().await;
    }

    /// Another process's keys are in no filter of this one: once it has
    /// written, the filter is not trusted, lookups probe the table again,
    /// and the next build starts over.
    #[tokio::test]
    async fn another_process_makes_the_filter_untrusted() {
        let (_dir, path, one, [a, b]) = users::<2>().await;
        new_mid(&send(&one, to(a, b, "one", "k1")).await);
        assert!(!pass(&one.writer, &one.cmids).await.unwrap());
        build(&one, FILTER_STEP).await;
        let before = version(&one).await;
        assert!(one.cmids.filtered(before));

        let other = open(&path, false).await;
        let m2 = new_mid(&send(&other, to(a, b, "two", "k2")).await);
        assert!(!pass(&other.writer, &other.cmids).await.unwrap());
        let now = version(&one).await;
        assert_ne!(now, before);
        assert!(!one.cmids.filtered(now));
        assert!(!one.cmids.table().wanted(), "complete, until a lookup says");
        assert_eq!(
            one.cmids.maybe_in_table(now, &keys(a, ["k2".into()])),
            [true]
        );
        assert!(one.cmids.table().wanted(), "a lookup found it stale");
        // k2 is in the table, and in no map or filter of `one`.
        assert_eq!(retry_of(&send(&one, to(a, b, "two", "k2")).await), m2);
        // A new build covers it.
        build(&one, FILTER_STEP).await;
        assert!(one.cmids.filtered(now));
        assert_eq!(
            one.cmids.maybe_in_table(now, &keys(a, ["k2".into()])),
            [true]
        );
        one.close().await;
        other.close().await;
    }
}
