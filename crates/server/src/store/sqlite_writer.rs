//! The SQLite store's one writer: one `rusqlite::Connection` that runs
//! every write the store makes, one at a time under a lock, on a plain
//! thread of its own (or, for a quiet server's small group commits, on the
//! caller's thread: below), and beside it a flusher thread that makes those
//! writes durable.
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
//! Why a group commit may also run on its caller's thread
//! ([`Writer::run_staged_here_if_quiet`]): on a quiet server each hop into
//! the writer thread and back is a wake-up of a sleeping thread, 35-55 µs
//! each way on the VMs this was measured on; the two together cost more
//! than the write itself (60-100 µs).
//! The connection and its held statements therefore sit behind a mutex
//! ([`Owned`]); the thread takes it for each job, and a small commit runs in
//! place when the thread is idle, nothing is queued for it, and the server
//! is quiet ([`Pace`]). Only then: on a busy server the slower hop is what
//! lets the next batch grow, and commits in place there made batches half
//! as big and window-1 throughput lower. Big writes (and those the caller
//! cannot bound: a group's fan-out, a cmid lookup that may first read the
//! index's tail back) always go to the thread, so an async worker is held
//! only for a small commit, or, while another process holds SQLite's write
//! lock (an operator command, for milliseconds), until the busy timeout.
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
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Statement, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::{Durable, StoreError, StoreResult};

/// Distinct statements the writer runs, with room to spare: each is prepared
/// once and then reused from the cache.
const STATEMENT_CACHE: usize = 128;

/// The span over which [`Pace`] counts writes.
const PACE_WINDOW: Duration = Duration::from_millis(20);

/// Writes a second up to which the server counts as quiet. The open loop
/// of 2,000 messages a second, with their confirmations, makes about 3,500;
/// window 1 with 200 senders makes over 15,000 even on a slow minute.
const QUIET_WRITES_PER_SEC: u64 = 10_000;

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

    /// After a job: a job that panicked mid-transaction was rolled back as
    /// its guard dropped; should one ever leave a transaction open, end it
    /// here so the next job can begin its own.
    fn end_open_transaction(&mut self) {
        if !self.conn.is_autocommit() {
            tracing::error!("SQLite write left a transaction open; rolling back");
            self.clear();
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "SQLite rollback failed");
            }
        }
    }
}

/// The writer's connection with its held statements, as one value that can
/// move between threads: the writer thread runs its jobs on it, and a small
/// write may run on its caller's thread (module docs). Reached only through
/// the writer's mutex, and never handed out: jobs get `&mut Held<'_>`.
///
/// Invariant: every statement in `held` was prepared on `*conn` (only
/// [`Held::get`] fills it, from its own connection).
struct Owned {
    /// Borrows `*conn`: dropped first, by hand, in `Drop`.
    held: ManuallyDrop<Held<'static>>,
    /// From `Box::leak`; freed (and closed) in `Drop`.
    conn: NonNull<Connection>,
}

// SAFETY: `Connection` is `Send`. `Held` is not, for two reasons: it holds
// `&Connection` (and `Connection` is not `Sync`), and each `Statement` holds
// a raw `sqlite3_stmt` pointer. Both point into this value's own connection
// (the invariant above) and move with it, as rusqlite itself moves a
// connection's cached statements with it (its `StatementCache` is `Send`).
// `Owned` is only reached through the writer's `Mutex`, so no two threads
// use the connection or its statements at once; used one thread at a time
// is what SQLite's multi-thread mode (`SQLITE_OPEN_NO_MUTEX`) allows.
#[allow(unsafe_code)]
unsafe impl Send for Owned {}

#[allow(unsafe_code)]
impl Owned {
    fn new(conn: Connection) -> Owned {
        let conn = NonNull::from(Box::leak(Box::new(conn)));
        // SAFETY: the connection stays at this heap address until `Drop`
        // frees it, after dropping `held`. Jobs get `held` only as
        // `&mut Held<'_>` under a higher-ranked lifetime, so nothing they
        // borrow from it can outlive the job.
        let held = Held::new(unsafe { conn.as_ref() });
        Owned {
            held: ManuallyDrop::new(held),
            conn,
        }
    }

    /// Runs one job, then makes sure it left no transaction open.
    fn run(&mut self, job: impl FnOnce(&mut Held<'_>)) {
        job(&mut self.held);
        self.held.end_open_transaction();
    }
}

#[allow(unsafe_code)]
impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: `held` is dropped exactly once, here, before the
        // connection its statements borrow; `conn` came from `Box::leak` in
        // `new` and nothing refers to it once `held` is gone.
        let conn = unsafe {
            ManuallyDrop::drop(&mut self.held);
            Box::from_raw(self.conn.as_ptr())
        };
        if let Err((_, e)) = conn.close() {
            tracing::warn!(error = %e, "closing the SQLite writer connection failed");
        }
    }
}

/// How many writes the group commit has been bringing lately, over the
/// last full [`PACE_WINDOW`] and the current one: the server is quiet while
/// that rate stays at or below [`QUIET_WRITES_PER_SEC`].
#[derive(Debug)]
struct Pace {
    /// When the current window began.
    window: std::time::Instant,
    /// Writes counted in the current window.
    this: usize,
    /// Writes in the window before it (0 if that one is long past).
    last: usize,
}

impl Pace {
    fn new(now: std::time::Instant) -> Pace {
        Pace {
            window: now,
            this: 0,
            last: 0,
        }
    }

    /// Counts `writes` at `now`; whether the server is still quiet.
    fn quiet(&mut self, writes: usize, now: std::time::Instant) -> bool {
        let mut age = now.saturating_duration_since(self.window);
        if age >= PACE_WINDOW {
            // Whole windows on a fixed grid, so that `last` is always one
            // window long and the span counted 20-40 ms.
            let passed = (age.as_nanos() / PACE_WINDOW.as_nanos()) as u32;
            self.last = if passed == 1 { self.this } else { 0 };
            self.this = 0;
            self.window += PACE_WINDOW * passed;
            age -= PACE_WINDOW * passed;
        }
        self.this = self.this.saturating_add(writes);
        let counted = (self.last as u128).saturating_add(self.this as u128);
        let span = (PACE_WINDOW + age).as_micros();
        counted * 1_000_000 <= u128::from(QUIET_WRITES_PER_SEC) * span
    }
}

/// What the writer's handle and its thread share.
struct Shared {
    /// The connection: `None` once the thread has closed it.
    conn: Mutex<Option<Owned>>,
    /// Jobs sent to the thread and not yet finished: a write runs in place
    /// only when this is 0, so it never overtakes a queued one.
    queued: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<Owned>> {
        // Jobs catch their own panics, so a poisoned lock holds a usable
        // connection.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
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
    /// Set by [`Writer::stop`]: no more writes in place either.
    stopping: AtomicBool,
    /// The group commit's recent writes: commits run in place only on a
    /// quiet server.
    pace: Mutex<Pace>,
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared {
            conn: Mutex::new(None),
            queued: AtomicUsize::new(0),
        });
        let served = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || match connect(&opts) {
                Ok(conn) => {
                    *served.lock() = Some(Owned::new(conn));
                    let _ = ready.send(Ok(()));
                    serve(&served, queue);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(StoreError::unavailable)?;
        opened.await.map_err(|_| StoreError::Closed)??;
        Ok(Writer {
            jobs: Mutex::new(Some(jobs)),
            stopping: AtomicBool::new(false),
            pace: Mutex::new(Pace::new(std::time::Instant::now())),
            shared,
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
            let _ = reply.send(execute(held, flusher.as_deref(), f));
        });
        {
            let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            // Counted before it is sent: from here on no write runs in
            // place ahead of it.
            self.shared.queued.fetch_add(1, Ordering::SeqCst);
            let sent = jobs.as_ref().map(|q| q.send(job));
            if !matches!(sent, Some(Ok(()))) {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(StoreError::Closed);
            }
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Writer::run_staged`] for a group commit of `writes` writes, run
    /// right here on the caller's thread if the caller knows it to be
    /// `small` (a few dozen µs of work), the server is quiet, and the
    /// writer is idle with nothing queued (module docs). The caller's
    /// thread (an async worker) is busy until `f` has run.
    pub(crate) async fn run_staged_here_if_quiet<T, F>(
        &self,
        writes: usize,
        small: bool,
        f: F,
    ) -> StoreResult<(T, Durable)>
    where
        T: Send + 'static,
        F: FnOnce(&mut Held<'_>) -> StoreResult<T> + Send + 'static,
    {
        let quiet = self
            .pace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .quiet(writes, std::time::Instant::now());
        if !(quiet && small) {
            return self.run_staged(f).await;
        }
        match self.try_run_here(f) {
            Ok(out) => out,
            Err(f) => self.run_staged(f).await,
        }
    }

    /// Runs `f` here if the writer is idle with nothing queued; otherwise
    /// hands `f` back.
    fn try_run_here<T, F>(&self, f: F) -> Result<StoreResult<(T, Durable)>, F>
    where
        F: FnOnce(&mut Held<'_>) -> StoreResult<T>,
    {
        if self.stopping.load(Ordering::SeqCst) || self.shared.queued.load(Ordering::SeqCst) != 0 {
            return Err(f);
        }
        let mut conn = match self.shared.conn.try_lock() {
            Ok(conn) => conn,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(f),
        };
        let Some(owned) = conn.as_mut() else {
            return Err(f);
        };
        let mut out = None;
        owned.run(|held| out = Some(execute(held, self.flusher.as_deref(), f)));
        Ok(out.expect("the job ran"))
    }

    /// The failed flush that stopped all writing, if one did: readiness
    /// checks report it.
    pub(crate) fn failure(&self) -> Option<StoreError> {
        self.flusher.as_ref().and_then(|fl| fl.failure())
    }

    /// Refuses new writes, lets the queued ones finish (and flush), and
    /// waits for the thread to close its connection.
    pub(crate) async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
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
    // The file exists (migrations created it): no CREATE. NO_MUTEX: one
    // thread at a time uses the connection, under the writer's lock.
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

/// Runs one job on the writer's connection and gives its result, with what
/// its caller must wait for before the result counts as durable.
fn execute<T, F>(held: &mut Held<'_>, flusher: Option<&Flusher>, f: F) -> StoreResult<(T, Durable)>
where
    F: FnOnce(&mut Held<'_>) -> StoreResult<T>,
{
    let conn = held.conn();
    // After a failed flush nothing more is written or read here.
    if let Some(e) = flusher.and_then(|fl| fl.failure()) {
        return Err(e);
    }
    let before = conn.total_changes();
    // A panic answers its caller and leaves the writer serving; the
    // transaction guard rolls back as it unwinds.
    let out = catch_unwind(AssertUnwindSafe(|| f(held))).unwrap_or_else(|_| {
        // A held statement may have been left bound mid-run.
        held.clear();
        Err(StoreError::unavailable("SQLite write panicked"))
    });
    // A job that committed changes needs a flush; one that changed nothing
    // may still have read rows whose flush is under way. The flush is asked
    // for before the caller hears: a sender at window 1 waits for it (its
    // ACK), and answering first lost 5 of 6 balanced pairs there
    // (BENCHMARKS.md, issue 9, ninth pass).
    let durable = match flusher {
        Some(fl) if out.is_ok() => fl.durable_after(conn.total_changes() != before),
        _ => Durable::ready(),
    };
    out.map(|o| (o, durable))
}

/// The thread's loop: one job at a time until every sender is gone, then it
/// closes the connection.
fn serve(shared: &Shared, queue: mpsc::Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        if let Some(owned) = shared.lock().as_mut() {
            owned.run(job);
        }
        shared.queued.fetch_sub(1, Ordering::SeqCst);
    }
    // Taken out under the lock, so no write in place can be running on it.
    let owned = shared.lock().take();
    drop(owned);
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
        // CREATE TABLE changes no rows (SQLite counts none), so it asks for
        // no flush and takes no token: a token sent for it would let the
        // insert's flush below finish before the read looks.
        tokio::time::timeout(Duration::from_secs(10), create_t(&w))
            .await
            .expect("creating the table waited for no flush");
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

    /// The name of the thread a write ran on.
    fn thread_name() -> Option<String> {
        std::thread::current().name().map(str::to_owned)
    }

    /// Waits until the writer thread has finished its jobs and let go of
    /// the connection: it answers a job's caller just before that.
    async fn wait_idle(w: &Writer) {
        for _ in 0..10_000 {
            let free =
                w.shared.queued.load(Ordering::SeqCst) == 0 && w.shared.conn.try_lock().is_ok();
            if free {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the writer thread never went idle");
    }

    /// A job that inserts `x` and says where it ran.
    fn insert(
        x: i64,
    ) -> impl FnOnce(&mut Held<'_>) -> StoreResult<Option<String>> + Send + 'static {
        move |h: &mut Held<'_>| {
            let tx = immediate(h.conn())?;
            tx.execute("INSERT INTO t (x) VALUES (?)", [x])?;
            tx.commit()?;
            Ok(thread_name())
        }
    }

    /// The rows of `t` in the order they were written.
    async fn rows(w: &Writer) -> Vec<i64> {
        w.run(|c| {
            let mut st = c.prepare("SELECT x FROM t ORDER BY rowid")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
        .expect("read back")
    }

    /// A small write runs on its caller's thread while the writer is idle,
    /// and waits for its flush like any other; a write that is not small,
    /// or that finds a job queued or running, goes to the writer thread,
    /// behind what is queued there.
    #[tokio::test]
    async fn a_write_runs_in_place_only_when_the_writer_is_idle() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let w = writer(&dir, true).await;
        create_t(&w).await;
        wait_idle(&w).await;

        let (ran_on, durable) = w
            .run_staged_here_if_quiet(1, true, insert(1))
            .await
            .expect("write in place");
        assert_eq!(
            ran_on,
            thread_name(),
            "an idle writer lets the caller write"
        );
        assert!(durable.0.is_some(), "a write in place waits for its flush");
        durable.wait().await.expect("flushed");

        // Not small: on the thread, idle or not.
        let (ran_on, _) = w
            .run_staged_here_if_quiet(1, false, insert(2))
            .await
            .expect("big write");
        assert_eq!(ran_on.as_deref(), Some("sqlite-writer"));

        // A job queued for the thread: a write goes behind it.
        wait_idle(&w).await;
        w.shared.queued.fetch_add(1, Ordering::SeqCst);
        let (ran_on, _) = w
            .run_staged_here_if_quiet(1, true, insert(3))
            .await
            .expect("write behind a queued job");
        w.shared.queued.fetch_sub(1, Ordering::SeqCst);
        assert_eq!(ran_on.as_deref(), Some("sqlite-writer"));

        // Hold the writer thread with a job of its own.
        let (started, running) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let mut blocker = Box::pin(w.run_staged(move |h| {
            started.send(()).expect("test waits");
            released.recv().expect("test releases");
            insert(4)(h)
        }));
        assert!((&mut blocker).now_or_never().is_none());
        running.recv().expect("the blocker runs");
        let mut queued = Box::pin(w.run_staged_here_if_quiet(1, true, insert(5)));
        assert!(
            (&mut queued).now_or_never().is_none(),
            "a write waits while the writer is busy"
        );
        release.send(()).expect("blocker waits");
        blocker.await.expect("blocker");
        let (ran_on, durable) = queued.await.expect("queued write");
        assert_eq!(ran_on.as_deref(), Some("sqlite-writer"));
        durable.wait().await.expect("flushed");

        assert_eq!(rows(&w).await, [1, 2, 3, 4, 5], "in the order they ran");
        w.stop().await;
        assert!(matches!(
            w.run_staged_here_if_quiet(1, true, insert(6)).await,
            Err(StoreError::Closed)
        ));
    }

    /// A write in place that panics answers its caller, is rolled back,
    /// and leaves the writer writing, in place and on its thread.
    #[tokio::test]
    async fn a_panic_in_place_is_rolled_back_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let w = writer(&dir, true).await;
        create_t(&w).await;
        wait_idle(&w).await;
        let (ran, ran_on) = std::sync::mpsc::channel();
        let r = w
            .run_staged_here_if_quiet(1, true, move |h| -> StoreResult<()> {
                ran.send(thread_name()).expect("test listens");
                let tx = immediate(h.conn())?;
                tx.execute("INSERT INTO t (x) VALUES (1)", [])?;
                panic!("job bug before the commit");
            })
            .await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))));
        assert_eq!(ran_on.recv().expect("it ran"), thread_name(), "in place");
        let (ran_on, durable) = w
            .run_staged_here_if_quiet(1, true, insert(2))
            .await
            .expect("write after the panic");
        assert_eq!(ran_on, thread_name(), "still in place");
        durable.wait().await.expect("flushed");
        w.run_staged(insert(3)).await.expect("write on the thread");
        assert_eq!(
            rows(&w).await,
            [2, 3],
            "the panicked insert was rolled back"
        );
        w.stop().await;
    }

    /// A busy server's small commits go to the thread too.
    #[tokio::test]
    async fn a_busy_server_commits_on_the_thread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let w = writer(&dir, false).await;
        create_t(&w).await;
        wait_idle(&w).await;
        let (ran_on, _) = w
            .run_staged_here_if_quiet(1, true, insert(1))
            .await
            .expect("write");
        assert_eq!(ran_on, thread_name(), "quiet: in place");
        // A window that has not ended (it began in the future, so the test
        // does not depend on timing) and is full.
        *w.pace.lock().unwrap() = Pace {
            window: std::time::Instant::now() + Duration::from_secs(3600),
            this: quiet_in_one_window(),
            last: 0,
        };
        let (ran_on, _) = w
            .run_staged_here_if_quiet(1, true, insert(2))
            .await
            .expect("write");
        assert_eq!(
            ran_on.as_deref(),
            Some("sqlite-writer"),
            "busy: on the thread"
        );
        w.stop().await;
    }

    /// Writes in place and on the thread, from many tasks on two worker
    /// threads, while the thread also runs its own jobs: every write lands
    /// once, nothing deadlocks, and stopping waits for what is running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_in_place_and_on_the_thread_mix_safely() {
        let dir = tempfile::tempdir().expect("temp dir");
        let w = Arc::new(writer(&dir, true).await);
        create_t(&w).await;
        let mut tasks = Vec::new();
        for task in 0..8i64 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                let mut in_place = 0;
                for i in 0..50 {
                    let x = task * 1000 + i;
                    let (ran_on, durable) = if i % 3 == 0 {
                        w.run_staged(insert(x)).await
                    } else {
                        w.run_staged_here_if_quiet(1, true, insert(x)).await
                    }
                    .expect("write");
                    durable.wait().await.expect("flushed");
                    in_place += usize::from(ran_on.as_deref() != Some("sqlite-writer"));
                }
                in_place
            }));
        }
        let mut in_place = 0;
        for t in tasks {
            in_place += t.await.expect("task");
        }
        let mut got = rows(&w).await;
        got.sort_unstable();
        let want: Vec<i64> = (0..8i64)
            .flat_map(|t| (0..50).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(got, want);
        assert!(in_place > 0, "some writes ran in place");
        w.stop().await;
    }

    /// The pace counts the writes of the current window and the one before.
    #[test]
    fn the_pace_counts_two_windows() {
        let full = quiet_in_one_window();
        let t0 = std::time::Instant::now();
        let mut pace = Pace::new(t0);
        assert!(pace.quiet(full, t0));
        assert!(!pace.quiet(1, t0), "past the limit in one window");
        // The next window still counts the last one's writes.
        let next = t0 + PACE_WINDOW;
        assert!(!pace.quiet(0, next));
        assert!(
            pace.quiet(0, next + PACE_WINDOW),
            "the busy window has passed"
        );
        assert!(pace.quiet(full, next + PACE_WINDOW));
        // Half a window later, half a window's writes more fit: a rate over
        // the time counted.
        let later = next + PACE_WINDOW + PACE_WINDOW / 2;
        assert!(pace.quiet(full / 2, later));
        assert!(!pace.quiet(1, later));
        // Windows stay on their grid: 2.5 windows on is the middle of one,
        // and the busy window before it is over two windows back.
        assert!(pace.quiet(full, later + 2 * PACE_WINDOW));
        // After a silence longer than two windows nothing counts.
        assert!(pace.quiet(1, later + 6 * PACE_WINDOW));
    }

    /// The writes a window may hold at the quiet rate.
    fn quiet_in_one_window() -> usize {
        (u128::from(QUIET_WRITES_PER_SEC) * PACE_WINDOW.as_micros() / 1_000_000) as usize
    }
}
