//! The SQLite store's one writer: a plain thread that owns a
//! `rusqlite::Connection` and runs every write the store makes, and beside
//! it a flusher thread that makes those writes durable.
//!
//! Why not sqlx, as for reads: sqlx runs each connection on a worker thread
//! of its own and every statement is a round trip over a channel to it, so a
//! group commit of a few hundred rows paid dozens of hops (and multi-row
//! INSERTs whose text, and so prepared statement, changed with each batch
//! size). Here the whole transaction runs on the thread that holds the
//! connection: one hop in (the job), one hop out (the result), and in between
//! statements prepared once for the life of the store: the group commit's
//! multi-row INSERTs held by slot ([`Held`]), the rest in the connection's
//! statement cache. SQLite allows one writer at a time anyway;
//! owning it on one thread also queues writes in process instead of on
//! SQLite's lock.
//!
//! Why a flusher: with `synchronous = FULL` SQLite calls `fdatasync` on the
//! WAL inside every COMMIT, so the writer sat idle for the disk between
//! batches. Instead the connection runs with `synchronous = NORMAL` (a
//! COMMIT writes its WAL frames to the OS and returns) and, after every
//! transaction that changed rows, the flusher `fdatasync`s the WAL file. A
//! write counts as durable, and its caller hears of it, only once a flush
//! that *began after its COMMIT returned* has completed: the same guarantee
//! FULL gives (FULL syncs exactly those frames; a WAL restart still syncs
//! its new header at once under NORMAL), while the writer already runs the
//! next batch. Flushes coalesce: one `fdatasync` covers every commit that
//! finished before it began.
//!
//! A failed `fdatasync` is final: Linux may already have dropped the pages
//! it could not write, so a later sync that succeeds proves nothing about
//! them, and WAL recovery would stop at the hole and drop every batch after
//! it. The flusher therefore remembers the first failure, fails every later
//! flush, and the writer refuses every job from then on (errno 10) until the
//! server restarts and SQLite recovers from what is on disk.

use std::fs::File;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Statement, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::{Durable, StoreError, StoreResult};

/// Distinct statements the writer runs, with room to spare: each is prepared
/// once and then reused from the cache.
const STATEMENT_CACHE: usize = 128;

/// Work for the writer thread. It answers through a channel of its own.
type Job = Box<dyn FnOnce(&mut Held<'_>) + Send>;

/// The writer's connection with the statements it keeps prepared for its
/// whole life, outside rusqlite's statement cache.
///
/// Why: taking a statement from that cache and giving it back trims, hashes
/// (twice) and copies its SQL text and clears every binding. For the group
/// commit's multi-row INSERTs, with hundreds of parameters and a text of
/// 1-2 KB, that was ~1.8k instructions a message. A held statement is found
/// by its slot number and is only reset after each run (rusqlite's
/// `execute` does that), its bindings overwritten by the next.
pub(crate) struct Held<'c> {
    conn: &'c Connection,
    stmts: Vec<Option<Statement<'c>>>,
}

impl<'c> Held<'c> {
    fn new(conn: &'c Connection) -> Self {
        Held {
            conn,
            stmts: Vec::new(),
        }
    }

    /// The writer's connection.
    pub(crate) fn conn(&self) -> &'c Connection {
        self.conn
    }

    /// The statement in `slot`, prepared from `sql` on first use. The
    /// caller keeps one SQL text per slot for the life of the writer.
    pub(crate) fn get(&mut self, slot: usize, sql: &str) -> rusqlite::Result<&mut Statement<'c>> {
        if self.stmts.len() <= slot {
            self.stmts.resize_with(slot + 1, || None);
        }
        let held = &mut self.stmts[slot];
        if held.is_none() {
            *held = Some(self.conn.prepare(sql)?);
        }
        Ok(held.as_mut().expect("prepared just above"))
    }

    /// Drops every held statement, after a job went wrong in a way that
    /// may have left one mid-run.
    fn clear(&mut self) {
        self.stmts.clear();
    }
}

/// How the flusher makes the WAL durable: [`sync_wal`], or in tests one that
/// can be told to fail.
type SyncFn = Box<dyn FnMut(&Path, &mut Option<File>) -> StoreResult<()> + Send>;

/// How the writer opens its connection.
pub(crate) struct WriterOptions {
    /// The database file (created and migrated already).
    pub path: PathBuf,
    /// Every commit survives power loss (SQLite's FULL, done by the
    /// flusher), or only a crash of the process (NORMAL, no flushes).
    pub synchronous_full: bool,
}

/// Handle to the writer thread; the store holds one behind an `Arc`.
pub(crate) struct Writer {
    /// `None` once [`Writer::stop`] ran: later writes get `Closed`.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// With FULL durability: the flusher thread.
    flusher: Option<Arc<Flusher>>,
}

impl Writer {
    /// Starts the thread and waits until it has opened its connection.
    pub(crate) async fn start(opts: WriterOptions) -> StoreResult<Writer> {
        Self::start_with(opts, Box::new(sync_wal)).await
    }

    /// [`Writer::start`] with the flusher's sync function given.
    async fn start_with(opts: WriterOptions, sync: SyncFn) -> StoreResult<Writer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, opened) = oneshot::channel();
        let flusher = if opts.synchronous_full {
            Some(Arc::new(Flusher::start(wal_path(&opts.path), sync)?))
        } else {
            None
        };
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || match connect(&opts) {
                Ok(conn) => {
                    let _ = ready.send(Ok(()));
                    serve(conn, queue);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(StoreError::unavailable)?;
        opened.await.map_err(|_| StoreError::Closed)??;
        Ok(Writer {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
            flusher,
        })
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer thread
    /// and returns once it committed (durably, with `synchronous = FULL`).
    /// An error from `f` rolls everything back.
    pub(crate) async fn transact<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.run(move |conn| {
            let tx = immediate(conn)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Runs `f` on the writer thread and returns once what it wrote is
    /// durable. `Closed` if the writer has stopped.
    pub(crate) async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (out, durable) = self.run_staged(move |held| f(held.conn())).await?;
        durable.wait().await?;
        Ok(out)
    }

    /// Runs `f` on the writer thread and returns as soon as it has, with a
    /// [`Durable`] for what it wrote: the writer takes its next job while
    /// the flusher syncs this one. An error from `f` needs no flush.
    pub(crate) async fn run_staged<T, F>(&self, f: F) -> StoreResult<(T, Durable)>
    where
        T: Send + 'static,
        F: FnOnce(&mut Held<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let flusher = self.flusher.clone();
        let job: Job = Box::new(move |held| {
            let conn = held.conn();
            // After a failed flush nothing more is written or read here.
            if let Some(e) = flusher.as_ref().and_then(|fl| fl.failure()) {
                let _ = reply.send(Err(e));
                return;
            }
            let before = conn.total_changes();
            // A panic answers its caller and leaves the thread serving; the
            // transaction guard rolls back as it unwinds.
            let out = catch_unwind(AssertUnwindSafe(|| f(held))).unwrap_or_else(|_| {
                // A held statement may have been left bound mid-run.
                held.clear();
                Err(StoreError::unavailable("SQLite write panicked"))
            });
            // A job that committed changes needs a flush; one that changed
            // nothing may still have read rows whose flush is under way.
            // The flush is asked for before the caller hears: a sender at
            // window 1 waits for it (its ACK), and answering first lost 5 of
            // 6 balanced pairs there (BENCHMARKS.md, issue 9, ninth pass).
            let durable = match flusher {
                Some(fl) if out.is_ok() => fl.durable_after(conn.total_changes() != before),
                _ => Durable::ready(),
            };
            let _ = reply.send(out.map(|o| (o, durable)));
        });
        {
            let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            let sent = jobs.as_ref().map(|q| q.send(job));
            if !matches!(sent, Some(Ok(()))) {
                return Err(StoreError::Closed);
            }
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// The failed flush that stopped all writing, if one did: readiness
    /// checks report it.
    pub(crate) fn failure(&self) -> Option<StoreError> {
        self.flusher.as_ref().and_then(|fl| fl.failure())
    }

    /// Refuses new writes, lets the queued ones finish (and flush), and
    /// waits for the thread to close its connection.
    pub(crate) async fn stop(&self) {
        drop(
            self.jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            // Joining blocks: not on an async worker.
            match tokio::task::spawn_blocking(move || t.join()).await {
                Ok(Ok(())) => {}
                _ => tracing::warn!("SQLite writer thread did not stop cleanly"),
            }
        }
        if let Some(fl) = &self.flusher {
            fl.stop().await;
        }
    }
}

/// The WAL file SQLite keeps beside `db`.
fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Someone waiting for a flush.
type Waiter = oneshot::Sender<StoreResult<()>>;

/// The flusher thread: `fdatasync`s the WAL for whoever asks, as many
/// callers per sync as have asked by the time it starts.
struct Flusher {
    requests: Mutex<Option<mpsc::Sender<Waiter>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    state: Arc<FlushState>,
}

/// What the writer and the flusher share.
#[derive(Default)]
struct FlushState {
    /// Flushes asked for and not yet answered.
    outstanding: AtomicUsize,
    /// The first failed sync: final (module docs).
    failed: OnceLock<StoreError>,
}

impl Flusher {
    fn start(wal: PathBuf, sync: SyncFn) -> StoreResult<Flusher> {
        let (requests, queue) = mpsc::channel::<Waiter>();
        let state = Arc::new(FlushState::default());
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-flusher".into())
            .spawn(move || flush_loop(&wal, queue, &shared, sync))
            .map_err(StoreError::unavailable)?;
        Ok(Flusher {
            requests: Mutex::new(Some(requests)),
            thread: Mutex::new(Some(thread)),
            state,
        })
    }

    /// The failure that ended flushing, if one did.
    fn failure(&self) -> Option<StoreError> {
        self.state.failed.get().cloned()
    }

    /// What a job that just ran must wait for: a flush if it changed rows,
    /// or while earlier flushes are unanswered (it may have read their
    /// rows); otherwise nothing, unless flushing has failed.
    fn durable_after(&self, changed: bool) -> Durable {
        // `outstanding` before `failed`: the flusher records a failure
        // before it counts the failed requests as answered.
        if changed || self.state.outstanding.load(Ordering::SeqCst) > 0 {
            return self.request();
        }
        match self.failure() {
            Some(e) => failed(e),
            None => Durable::ready(),
        }
    }

    /// Asks for a flush that begins after this call; called on the writer
    /// thread right after a COMMIT.
    fn request(&self) -> Durable {
        if let Some(e) = self.failure() {
            return failed(e);
        }
        self.state.outstanding.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        let sent = self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|q| q.send(tx));
        match sent {
            Some(Ok(())) => Durable::pending(rx),
            // Stopped: nothing can be promised durable.
            _ => {
                self.state.outstanding.fetch_sub(1, Ordering::SeqCst);
                failed(StoreError::Closed)
            }
        }
    }

    /// Flushes what was asked for and ends the thread.
    async fn stop(&self) {
        drop(
            self.requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            if tokio::task::spawn_blocking(move || t.join()).await.is_err() {
                tracing::warn!("SQLite flusher thread did not stop cleanly");
            }
        }
    }
}

/// A durability that has already failed.
fn failed(e: StoreError) -> Durable {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Err(e));
    Durable::pending(rx)
}

/// The flusher's loop: take the first request, then every one queued behind
/// it, sync once, answer them all. After a failed sync it syncs no more and
/// answers every request with that failure.
fn flush_loop(wal: &Path, queue: mpsc::Receiver<Waiter>, state: &FlushState, mut sync: SyncFn) {
    let mut file: Option<File> = None;
    let mut waiters = Vec::new();
    while let Ok(first) = queue.recv() {
        waiters.push(first);
        waiters.extend(queue.try_iter());
        let res = match state.failed.get() {
            Some(e) => Err(e.clone()),
            // A sync that panicked counts as one that failed: the thread
            // goes on answering, and the failure is final like any other.
            None => catch_unwind(AssertUnwindSafe(|| sync(wal, &mut file)))
                .unwrap_or_else(|_| Err(StoreError::unavailable("fdatasync panicked")))
                .map_err(|e| {
                    // What the OS held for the WAL may never reach the disk,
                    // and a later sync would not say so: stop here (module docs).
                    tracing::error!(
                        error = %e,
                        wal = %wal.display(),
                        "fdatasync of the SQLite WAL failed: this server now refuses every write \
                         (errno 10) until it is restarted and SQLite recovers from what is on disk"
                    );
                    let e = StoreError::unavailable(format!(
                        "the database's log could not be flushed to disk ({e}); writes are \
                         refused until the server restarts"
                    ));
                    state.failed.get_or_init(|| e).clone()
                }),
        };
        for w in waiters.drain(..) {
            // Counted as answered before the answer goes: whoever hears it
            // and writes next sees no stale flush outstanding.
            state.outstanding.fetch_sub(1, Ordering::SeqCst);
            let _ = w.send(res.clone());
        }
    }
}

/// `fdatasync` of the WAL. The file is opened once and kept; should the
/// path ever name another file (the WAL is only replaced when every
/// connection has closed, which the writer's own prevents), it is reopened.
fn sync_wal(wal: &Path, file: &mut Option<File>) -> StoreResult<()> {
    #[cfg(unix)]
    if let Some(f) = file.as_ref() {
        use std::os::unix::fs::MetadataExt;
        let same = match (f.metadata(), std::fs::metadata(wal)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !same {
            *file = None;
        }
    }
    let f = match file {
        Some(f) => f,
        None => file.insert(File::open(wal).map_err(StoreError::unavailable)?),
    };
    f.sync_data().map_err(StoreError::unavailable)
}

/// Opens the writer's connection with the pragmas the sqlx connections get.
fn connect(opts: &WriterOptions) -> StoreResult<Connection> {
    // The file exists (migrations created it): no CREATE. NO_MUTEX: only
    // this thread uses the connection.
    let conn = Connection::open_with_flags(
        &opts.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // NORMAL either way: with FULL durability the flusher syncs the WAL
    // after each commit instead of SQLite inside it (module docs).
    // foreign_keys is sqlx's default; wal_autocheckpoint is high because a
    // reader checkpoints in the background.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = memory;
         PRAGMA cache_size = -16000;
         PRAGMA wal_autocheckpoint = 20000;",
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Runs one pass of a background task's steps (the indexers'), each its
/// own job on the writer, until `step` says nothing more is left. `false`
/// if the store is gone and the task should end. A failed step ends the
/// pass early, with a warning; what it left is there for the next one.
pub(crate) async fn background_pass<F, Fut>(writer: &Weak<Writer>, what: &str, mut step: F) -> bool
where
    F: FnMut(Arc<Writer>) -> Fut,
    Fut: Future<Output = StoreResult<bool>>,
{
    let started = std::time::Instant::now();
    let mut steps = 0u32;
    loop {
        let Some(w) = writer.upgrade() else {
            return false;
        };
        steps += 1;
        match step(w).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(StoreError::Closed) => return false,
            Err(e) => {
                tracing::warn!(error = %e, what, "a background step failed; the next pass retries");
                break;
            }
        }
    }
    let ms = started.elapsed().as_millis() as u64;
    if ms > 500 {
        tracing::info!(steps, ms, what, "slow background pass");
    } else {
        tracing::trace!(steps, ms, what, "background pass");
    }
    true
}

/// Begins a `BEGIN IMMEDIATE` transaction on the writer's connection.
///
/// IMMEDIATE takes the write lock up front: a transaction that reads first
/// cannot then fail to upgrade (SQLITE_BUSY_SNAPSHOT) when another process
/// wrote in between. Unchecked only because the connection is shared with
/// the held statements; jobs run one at a time, never nested.
pub(crate) fn immediate(conn: &Connection) -> rusqlite::Result<Transaction<'_>> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}

/// The thread's loop: one job at a time until every sender is gone.
fn serve(conn: Connection, queue: mpsc::Receiver<Job>) {
    let mut held = Held::new(&conn);
    while let Ok(job) = queue.recv() {
        job(&mut held);
        // A job that panicked mid-transaction was rolled back as its guard
        // dropped; should one ever leave a transaction open, end it here so
        // the next job can begin its own.
        if !conn.is_autocommit() {
            tracing::error!("SQLite write left a transaction open; rolling back");
            held.clear();
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "SQLite rollback failed");
            }
        }
    }
    drop(held);
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the SQLite writer connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table the tests write to.
    async fn create_t(w: &Writer) {
        w.transact(|tx| Ok(tx.execute_batch("CREATE TABLE t (x INTEGER)")?))
            .await
            .expect("create table");
    }

    /// A FULL writer on a fresh file in `dir` whose flusher syncs with `sync`.
    async fn writer_syncing_with(dir: &tempfile::TempDir, sync: SyncFn) -> Writer {
        let path = dir.path().join("w.db");
        std::fs::File::create(&path).expect("create db file");
        Writer::start_with(
            WriterOptions {
                path,
                synchronous_full: true,
            },
            sync,
        )
        .await
        .expect("start writer")
    }

    async fn writer(dir: &tempfile::TempDir, synchronous_full: bool) -> Writer {
        let path = dir.path().join("w.db");
        std::fs::File::create(&path).expect("create db file");
        Writer::start(WriterOptions {
            path,
            synchronous_full,
        })
        .await
        .expect("start writer")
    }

    #[tokio::test]
    async fn pragmas_match_the_read_pool() {
        let dir = tempfile::tempdir().expect("temp dir");
        for full in [true, false] {
            let w = writer(&dir, full).await;
            let got = w
                .run(|c| {
                    let int = |p: &str| c.query_row(p, [], |r| r.get::<_, i64>(0));
                    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                    Ok((
                        mode,
                        int("PRAGMA synchronous")?,
                        int("PRAGMA wal_autocheckpoint")?,
                        int("PRAGMA busy_timeout")?,
                        int("PRAGMA cache_size")?,
                    ))
                })
                .await
                .expect("read pragmas");
            // NORMAL both ways: with FULL the flusher syncs instead.
            assert_eq!(got, ("wal".to_owned(), 1, 20000, 10_000, -16000));
            w.stop().await;
        }
    }

    #[tokio::test]
    async fn only_writes_wait_for_a_flush_and_only_when_full() {
        let dir = tempfile::tempdir().expect("temp dir");
        for full in [true, false] {
            let w = writer(&dir, full).await;
            w.transact(|tx| Ok(tx.execute_batch("CREATE TABLE IF NOT EXISTS t (x INTEGER)")?))
                .await
                .expect("create table");
            let (_, durable) = w
                .run_staged(|h| Ok(h.conn().execute("INSERT INTO t VALUES (1)", [])?))
                .await
                .expect("insert");
            assert_eq!(
                durable.0.is_some(),
                full,
                "an insert flushes only with FULL"
            );
            durable.wait().await.expect("the flush succeeds");
            let (n, durable) = w
                .run_staged(|h| {
                    Ok(h.conn()
                        .query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))?)
                })
                .await
                .expect("count");
            assert!(n >= 1);
            assert!(durable.0.is_none(), "a read has nothing to flush");
            // A failed job has nothing to flush either.
            let failed = w
                .run_staged(|h| Ok(h.conn().execute("INSERT INTO nowhere VALUES (1)", [])?))
                .await;
            assert!(failed.is_err());
            w.stop().await;
        }
    }

    #[tokio::test]
    async fn every_staged_commit_becomes_durable() {
        // The flusher syncs the WAL file beside the database; many staged
        // commits in a row all become durable, in any order of waiting.
        let dir = tempfile::tempdir().expect("temp dir");
        let w = writer(&dir, true).await;
        create_t(&w).await;
        let mut pending = Vec::new();
        for i in 0..50 {
            let (_, d) = w
                .run_staged(move |h| Ok(h.conn().execute("INSERT INTO t VALUES (?)", [i])?))
                .await
                .expect("insert");
            pending.push(d);
        }
        for d in pending.into_iter().rev() {
            d.wait().await.expect("durable");
        }
        assert!(dir.path().join("w.db-wal").exists());
        w.stop().await;
    }

    #[tokio::test]
    async fn a_failed_flush_is_final() {
        // The disk fails one fdatasync and would succeed afterwards: the
        // batch it covered, every later one, reads through the writer and
        // writes that change nothing all fail, and nothing more is synced.
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().expect("temp dir");
        let fail_next = Arc::new(AtomicBool::new(false));
        let syncs = Arc::new(AtomicUsize::new(0));
        let (fail, count) = (fail_next.clone(), syncs.clone());
        let sync: SyncFn = Box::new(move |wal, file| {
            count.fetch_add(1, Ordering::SeqCst);
            if fail.swap(false, Ordering::SeqCst) {
                return Err(StoreError::unavailable("injected EIO"));
            }
            sync_wal(wal, file)
        });
        let w = writer_syncing_with(&dir, sync).await;
        create_t(&w).await;
        w.transact(|tx| Ok(tx.execute("INSERT INTO t VALUES (1)", [])?))
            .await
            .expect("a flush that works");

        fail_next.store(true, Ordering::SeqCst);
        let (_, durable) = w
            .run_staged(|h| Ok(h.conn().execute("INSERT INTO t VALUES (2)", [])?))
            .await
            .expect("the insert commits");
        let err = durable.wait().await.expect_err("its flush failed");
        assert!(
            err.to_string().contains("until the server restarts"),
            "{err}"
        );
        let synced = syncs.load(Ordering::SeqCst);

        // The next sync would work, but nothing is promised any more.
        let write = w
            .transact(|tx| Ok(tx.execute("INSERT INTO t VALUES (3)", [])?))
            .await;
        assert!(
            matches!(write, Err(StoreError::Unavailable(_))),
            "{write:?}"
        );
        let read = w
            .run(|c| Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))?))
            .await;
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
        assert_eq!(
            syncs.load(Ordering::SeqCst),
            synced,
            "no sync after the failure"
        );
        assert!(w.failure().is_some(), "readiness checks see it");
        w.stop().await;
    }

    #[tokio::test]
    async fn a_panicking_flush_is_a_failed_flush() {
        // The flusher thread lives on and answers: the batch it covered
        // and every later write fail, as after any failed flush.
        let dir = tempfile::tempdir().expect("temp dir");
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trigger = armed.clone();
        let sync: SyncFn = Box::new(move |wal, file| {
            if trigger.load(Ordering::SeqCst) {
                panic!("injected panic in fdatasync");
            }
            sync_wal(wal, file)
        });
        let w = writer_syncing_with(&dir, sync).await;
        create_t(&w).await;
        armed.store(true, Ordering::SeqCst);
        let (_, durable) = w
            .run_staged(|h| Ok(h.conn().execute("INSERT INTO t VALUES (1)", [])?))
            .await
            .expect("the insert commits");
        let err = durable.wait().await.expect_err("its flush panicked");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(w.failure().is_some(), "readiness checks see it");
        let write = w
            .transact(|tx| Ok(tx.execute("INSERT INTO t VALUES (2)", [])?))
            .await;
        assert!(
            matches!(write, Err(StoreError::Unavailable(_))),
            "{write:?}"
        );
        w.stop().await;
    }

    #[tokio::test]
    async fn a_read_waits_for_the_flush_of_what_it_may_have_seen() {
        // A job that changes nothing while an earlier flush is unanswered
        // may have read that batch's rows: it waits for a flush too. Once
        // every flush is answered, a read waits for nothing.
        let dir = tempfile::tempdir().expect("temp dir");
        // Each sync waits for a token from the test: flushes are held open.
        let (tokens, gate) = mpsc::channel::<()>();
        let sync: SyncFn = Box::new(move |wal, file| {
            gate.recv().map_err(StoreError::unavailable)?;
            sync_wal(wal, file)
        });
        let w = writer_syncing_with(&dir, sync).await;
        tokens.send(()).expect("token");
        create_t(&w).await;
        let count = |h: &mut Held<'_>| -> StoreResult<i64> {
            Ok(h.conn()
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?)
        };
        let (_, write) = w
            .run_staged(|h| Ok(h.conn().execute("INSERT INTO t VALUES (1)", [])?))
            .await
            .expect("insert");
        let (n, read) = w.run_staged(count).await.expect("count");
        assert_eq!(n, 1, "the read sees the committed row");
        assert!(read.0.is_some(), "so it waits for that row's flush");
        tokens.send(()).expect("token");
        tokens.send(()).expect("token");
        write.wait().await.expect("the write's flush");
        read.wait().await.expect("the read's flush");
        let (_, idle) = w.run_staged(count).await.expect("count");
        assert!(idle.0.is_none(), "nothing outstanding, nothing to wait for");
        drop(tokens);
        w.stop().await;
    }

    /// A held statement runs inside each job's transaction, survives
    /// between jobs, is dropped after a panic, and follows a schema change.
    #[tokio::test]
    async fn held_statements_live_across_jobs() {
        const INSERT: &str = "INSERT INTO t (x) VALUES (?)";
        let dir = tempfile::tempdir().expect("temp dir");
        let w = writer(&dir, true).await;
        create_t(&w).await;
        let insert = |x: i64, fail: bool| {
            w.run_staged(move |h| {
                let tx = immediate(h.conn())?;
                h.get(0, INSERT)?.execute([x])?;
                if fail {
                    panic!("after the insert");
                }
                tx.commit()?;
                Ok(())
            })
        };
        insert(1, false).await.expect("first insert");
        // Rolled back with its transaction; the writer drops what it held.
        assert!(matches!(
            insert(2, true).await,
            Err(StoreError::Unavailable(_))
        ));
        insert(3, false).await.expect("insert after the panic");
        w.transact(|tx| Ok(tx.execute_batch("ALTER TABLE t ADD COLUMN y INTEGER DEFAULT 7")?))
            .await
            .expect("alter");
        insert(4, false)
            .await
            .expect("insert after the schema changed");
        let rows: Vec<(i64, i64)> = w
            .run(|c| {
                let mut st = c.prepare("SELECT x, y FROM t ORDER BY x")?;
                let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .expect("read back");
        assert_eq!(rows, [(1, 7), (3, 7), (4, 7)]);
        w.stop().await;
    }

    #[tokio::test]
    async fn a_panic_answers_its_caller_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let w = writer(&dir, false).await;
        create_t(&w).await;
        let r: StoreResult<()> = w
            .transact(|tx| {
                tx.execute("INSERT INTO t VALUES (1)", [])?;
                panic!("job bug");
            })
            .await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))));
        // The panicked insert was rolled back; the writer still writes.
        let n: i64 = w
            .transact(|tx| {
                tx.execute("INSERT INTO t VALUES (2)", [])?;
                Ok(tx.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?)
            })
            .await
            .expect("write after panic");
        assert_eq!(n, 1);
        w.stop().await;
        assert!(matches!(
            w.transact(|_| Ok(())).await,
            Err(StoreError::Closed)
        ));
    }
}
