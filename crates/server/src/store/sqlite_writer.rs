//! The SQLite store's one writer: a plain thread that owns a
//! `rusqlite::Connection` and runs every write the store makes.
//!
//! Why not sqlx, as for reads: sqlx runs each connection on a worker thread
//! of its own and every statement is a round trip over a channel to it, so a
//! group commit of a few hundred rows paid dozens of hops (and multi-row
//! INSERTs whose text, and so prepared statement, changed with each batch
//! size). Here the whole transaction runs on the thread that holds the
//! connection: one hop in (the job), one hop out (the result), and in between
//! single-row statements from the connection's statement cache, prepared once
//! for the life of the store. SQLite allows one writer at a time anyway;
//! owning it on one thread also queues writes in process instead of on
//! SQLite's lock.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{mpsc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::{StoreError, StoreResult};

/// Distinct statements the writer runs, with room to spare: each is prepared
/// once and then reused from the cache.
const STATEMENT_CACHE: usize = 64;

/// Work for the writer thread. It answers through a channel of its own.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// How the writer opens its connection.
pub(crate) struct WriterOptions {
    /// The database file (created and migrated already).
    pub path: PathBuf,
    /// `synchronous = FULL` (every commit survives power loss) or NORMAL.
    pub synchronous_full: bool,
}

/// Handle to the writer thread; the store holds one behind an `Arc`.
pub(crate) struct Writer {
    /// `None` once [`Writer::stop`] ran: later writes get `Closed`.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the thread and waits until it has opened its connection.
    pub(crate) async fn start(opts: WriterOptions) -> StoreResult<Writer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, opened) = oneshot::channel();
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
            // IMMEDIATE takes the write lock up front: a transaction that
            // reads first cannot then fail to upgrade (SQLITE_BUSY_SNAPSHOT)
            // when another process wrote in between.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Runs `f` on the writer thread. `Closed` if the writer has stopped.
    pub(crate) async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // A panic answers its caller and leaves the thread serving; the
            // transaction guard rolls back as it unwinds.
            let out = catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err(StoreError::unavailable("SQLite write panicked")));
            let _ = reply.send(out);
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

    /// Refuses new writes, lets the queued ones finish, and waits for the
    /// thread to close its connection.
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
    }
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
    let synchronous = if opts.synchronous_full {
        "FULL"
    } else {
        "NORMAL"
    };
    // As the sqlx options in `sqlite.rs` set them (foreign_keys is sqlx's
    // default); wal_autocheckpoint is high because a reader checkpoints in
    // the background.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {synchronous};
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = memory;
         PRAGMA cache_size = -16000;
         PRAGMA wal_autocheckpoint = 20000;"
    ))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// The thread's loop: one job at a time until every sender is gone.
fn serve(mut conn: Connection, queue: mpsc::Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        job(&mut conn);
        // A job that panicked mid-transaction was rolled back as its guard
        // dropped; should one ever leave a transaction open, end it here so
        // the next job can begin its own.
        if !conn.is_autocommit() {
            tracing::error!("SQLite write left a transaction open; rolling back");
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "SQLite rollback failed");
            }
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the SQLite writer connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for (full, expect) in [(true, 2), (false, 1)] {
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
            assert_eq!(got, ("wal".to_owned(), expect, 20000, 10_000, -16000));
            w.stop().await;
        }
    }

    #[tokio::test]
    async fn a_panic_answers_its_caller_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let w = writer(&dir, false).await;
        w.transact(|tx| Ok(tx.execute_batch("CREATE TABLE t (x INTEGER)")?))
            .await
            .expect("create table");
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
