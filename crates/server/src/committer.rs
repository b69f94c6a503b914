//! Group commit: one task takes every write that is waiting, applies them in
//! one transaction, then routes the new messages and answers the writers.
//!
//! While a batch commits, the next one gathers, so the busier the server the
//! bigger the batches and the cheaper each message's durability. A store may
//! commit in two steps ([`crate::store::MessageStore::commit_staged`]): the
//! next batch then commits while this one is flushed to disk. Messages are
//! pushed in commit order as soon as they are committed (by a pusher task,
//! so that neither the next commit nor the previous batch's flush holds them
//! up); the writers (the sender's ACK, every other reply) hear of a batch
//! only once it is durable (the router task).
//!
//! Why a push may go before the flush: what a COMMIT wrote is in the OS's
//! hands, so no crash of this process can lose it, and after a restart the
//! store hands out mids and seqs after it (it reads its counters back from
//! the tables): a client can never have been pushed a seq or mid that
//! storage later gives another message. Only a power cut or a failed flush
//! before the flush (usually a fraction of a millisecond; under load up to
//! [`ROUTE_AHEAD`] committed batches may wait for the disk) could, the same
//! window in which a HISTORY read or a login's backlog could already see the
//! batch (docs/reliability.md, "Nothing lost"); the sender, not yet ACKed,
//! retries by cmid. It saves a recipient the flush: a third of the
//! latency at 2,000 msg/s.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{
    Appended, Durable, Fanout, NewMessage, Store, StoreError, StoreResult, TokenIssued,
    TokenRequest, UserId, WriteOp, WriteOutcome,
};

/// Told about every newly stored message, in commit order.
pub trait Dispatch: Send + Sync {
    /// Called once per stored message after its batch committed.
    fn committed(&self, fanout: &Fanout);
}

/// Where a write's outcome goes: typed by the op that was submitted, so each
/// caller gets its own kind of answer.
enum Reply {
    /// An append's writer.
    Append(oneshot::Sender<StoreResult<Appended>>),
    /// A token op's writer.
    Token(oneshot::Sender<StoreResult<TokenIssued>>),
    /// A writer that only waits for durability (acks, revocations).
    Done(oneshot::Sender<StoreResult<()>>),
    /// Nobody waits.
    Detached,
}

impl Reply {
    /// Hands the op's outcome to its writer.
    fn answer(self, outcome: WriteOutcome) {
        match (self, outcome) {
            (Reply::Append(r), WriteOutcome::Append(o)) => drop(r.send(o)),
            (Reply::Token(r), WriteOutcome::Token(o)) => drop(r.send(o)),
            (Reply::Done(r), WriteOutcome::Acked | WriteOutcome::Revoked) => drop(r.send(Ok(()))),
            (Reply::Detached, _) => {}
            // A store answers each op with the op's own kind (the
            // conformance suite checks it); should one not, the writer hears
            // a storage failure rather than the server panicking.
            (reply, other) => {
                tracing::error!(outcome = ?other, "store answered with another op's kind of outcome");
                reply.fail(StoreError::unavailable(
                    "store answered with the wrong kind of outcome",
                ));
            }
        }
    }

    /// Tells the writer its batch failed.
    fn fail(self, e: StoreError) {
        match self {
            Reply::Append(r) => drop(r.send(Err(e))),
            Reply::Token(r) => drop(r.send(Err(e))),
            Reply::Done(r) => drop(r.send(Err(e))),
            Reply::Detached => {}
        }
    }
}

struct Job {
    op: WriteOp,
    reply: Reply,
}

/// Handle for submitting writes.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

/// The running committer task.
pub struct CommitTask {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl CommitTask {
    /// Refuses new writes, commits those already queued, and waits.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

impl Committer {
    /// Starts the committer task.
    pub fn spawn(
        store: Arc<dyn Store>,
        dispatch: Arc<dyn Dispatch>,
        max_batch: usize,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> (Committer, CommitTask) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run(
            store,
            dispatch,
            rx,
            max_batch.max(1),
            stop.clone(),
            metrics,
        ));
        (Committer { tx }, CommitTask { stop, handle })
    }

    /// Writes waiting to be committed.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Queues a chat message right away (so writes join the batch in request
    /// order, and a burst read in one go lands in one batch) and returns a
    /// future that resolves once it is durable. If the queue is full, the
    /// future waits for room first.
    pub fn append(
        &self,
        message: NewMessage,
    ) -> impl std::future::Future<Output = StoreResult<Appended>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.enqueue(WriteOp::Append(message), Reply::Append(reply), rx)
    }

    /// Issues a login token and waits until it is durable.
    pub async fn issue_token(&self, req: TokenRequest) -> StoreResult<TokenIssued> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(WriteOp::Token(req), Reply::Token(reply), rx)
            .await
    }

    /// Revokes every token of `user` and waits until that is durable.
    pub async fn revoke_tokens(&self, user: UserId) -> StoreResult<()> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(WriteOp::RevokeTokens { user }, Reply::Done(reply), rx)
            .await
    }

    /// Records that `user` holds every message up to `seq`, and waits until
    /// that is durable.
    pub async fn ack(&self, user: UserId, seq: i64) -> StoreResult<()> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(WriteOp::Ack { user, seq }, Reply::Done(reply), rx)
            .await
    }

    /// Records a delivery confirmation without waiting for it.
    pub async fn ack_detached(&self, user: UserId, seq: i64) -> StoreResult<()> {
        self.tx
            .send(Job {
                op: WriteOp::Ack { user, seq },
                reply: Reply::Detached,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Queues `op` now; the future waits for room if the queue is full, then
    /// for the answer on `rx`.
    fn enqueue<T: Send + 'static>(
        &self,
        op: WriteOp,
        reply: Reply,
        rx: oneshot::Receiver<StoreResult<T>>,
    ) -> impl std::future::Future<Output = StoreResult<T>> + Send + 'static {
        let mut late = None;
        let mut closed = false;
        match self.tx.try_send(Job { op, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => late = Some((self.tx.clone(), job)),
            Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
        }
        async move {
            if closed {
                return Err(StoreError::Closed);
            }
            if let Some((tx, job)) = late {
                tx.send(job).await.map_err(|_| StoreError::Closed)?;
            }
            rx.await.map_err(|_| StoreError::Closed)?
        }
    }
}

/// A group commit slower than this is logged: its writers all waited.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Committed batches that may wait for the disk at once.
const ROUTE_AHEAD: usize = 8;

/// Messages one sender may put in one batch; the rest wait for the next.
const SENDER_SHARE: usize = 32;

async fn run(
    store: Arc<dyn Store>,
    dispatch: Arc<dyn Dispatch>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    // Batches committed but maybe not yet durable: the router waits for each
    // in turn, so the committer may run this far ahead of the disk.
    let (routed, mut to_route) =
        mpsc::channel::<(Vec<WriteOutcome>, Vec<Reply>, Durable)>(ROUTE_AHEAD);
    // Committed messages, in commit order, for the pusher: it pushes each
    // batch at once (module docs), not behind the flush of the one before,
    // and not on this task, which should be committing the next batch.
    let (to_push, mut pushes) = mpsc::channel::<Vec<Fanout>>(ROUTE_AHEAD);
    let counted = metrics.clone();
    let pusher = tokio::spawn(async move {
        while let Some(batch) = pushes.recv().await {
            for fanout in &batch {
                let group = matches!(fanout.message.target, crate::store::Target::Group(_));
                counted.stored(group);
                dispatch.committed(fanout);
            }
        }
    });
    let stored = metrics.clone();
    let router = tokio::spawn(async move {
        while let Some((outcomes, replies, durable)) = to_route.recv().await {
            let waited = std::time::Instant::now();
            let on_disk = durable.wait().await;
            stored
                .commit_flush_seconds
                .observe(waited.elapsed().as_secs_f64());
            if let Err(e) = on_disk {
                // Committed, but perhaps not on disk: no writer hears it was
                // stored (the store refuses every write from now on). A
                // writer's retry with its cmid after the restart finds the
                // message if the disk kept it.
                tracing::error!(error = %e, batch = replies.len(), "group commit not durable; writers get errno 10");
                for r in replies {
                    r.fail(e.clone());
                }
                continue;
            }
            for (reply, o) in replies.into_iter().zip(outcomes) {
                reply.answer(o);
            }
        }
    });
    // Messages of senders who had their share of the last batch, oldest
    // first: they go into the next one, before anything newer of theirs.
    let mut carry: VecDeque<Job> = VecDeque::new();
    let mut per_sender: HashMap<UserId, usize> = HashMap::new();
    loop {
        if carry.is_empty() {
            let first = tokio::select! {
                biased;
                j = rx.recv() => j,
                _ = stop.cancelled() => {
                    // Stop taking new writes; what is queued still commits.
                    rx.close();
                    rx.recv().await
                }
            };
            let Some(first) = first else { break };
            carry.push_back(first);
        }
        // Fair shares: at most SENDER_SHARE messages of one sender per
        // batch, so a sender's burst (a big group at full fan-out) cannot
        // hold everyone else's messages behind one long transaction.
        per_sender.clear();
        let mut deferred: VecDeque<Job> = VecDeque::new();
        let mut take = |j: Job, jobs: &mut Vec<Job>| {
            if let WriteOp::Append(m) = &j.op {
                let n = per_sender.entry(m.sender).or_insert(0);
                *n += 1;
                if *n > SENDER_SHARE {
                    deferred.push_back(j);
                    return;
                }
            }
            jobs.push(j);
        };
        while jobs.len() < max_batch {
            match carry.pop_front() {
                Some(j) => take(j, &mut jobs),
                None => break,
            }
        }
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => take(j, &mut jobs),
                Err(_) => break,
            }
        }
        deferred.extend(carry.drain(..));
        carry = deferred;
        if jobs.is_empty() {
            continue;
        }
        let (ops, replies): (Vec<WriteOp>, Vec<_>) =
            jobs.drain(..).map(|j| (j.op, j.reply)).unzip();
        let n = ops.len();
        let started = std::time::Instant::now();
        let committed = store.commit_staged(ops).await;
        let took = started.elapsed();
        metrics.commit_batch.observe(n as f64);
        metrics.commit_seconds.observe(took.as_secs_f64());
        if took > SLOW_COMMIT {
            // Every writer in the batch waited this long for its ACK.
            tracing::info!(ms = took.as_millis() as u64, batch = n, "slow group commit");
        }
        match committed {
            // Pushes and replies run in tasks of their own, in commit order,
            // so the next batch starts committing while this one is routed.
            Ok((outcomes, durable)) => {
                let fresh: Vec<Fanout> = outcomes
                    .iter()
                    .filter_map(|o| match o {
                        WriteOutcome::Append(Ok(Appended::New(f))) => Some(f.clone()),
                        _ => None,
                    })
                    .collect();
                if !fresh.is_empty() && to_push.send(fresh).await.is_err() {
                    break;
                }
                if routed.send((outcomes, replies, durable)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = n, "group commit failed; writers get errno 10");
                for r in replies {
                    r.fail(e.clone());
                }
            }
        }
    }
    drop(to_push);
    drop(routed);
    let _ = pusher.await;
    let _ = router.await;
    tracing::debug!("committer stopped");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{Target, UserStore};

    /// Hands every dispatched message to the test.
    struct Pushed(mpsc::UnboundedSender<Fanout>);

    impl Dispatch for Pushed {
        fn committed(&self, fanout: &Fanout) {
            let _ = self.0.send(fanout.clone());
        }
    }

    fn message(sender: UserId, to: UserId, body: &str) -> NewMessage {
        NewMessage {
            sender,
            sender_name: "a".into(),
            target: Target::User(to),
            body: body.into(),
            cmid: None,
            time: 0,
        }
    }

    /// A committed message is pushed before its flush; its sender hears
    /// only after it, and hears errno 10 if the flush fails.
    #[tokio::test]
    async fn pushes_go_at_commit_and_acks_wait_for_the_flush() {
        let store = Arc::new(MemoryStore::new());
        let mut flushes = store.hold_flushes();
        let a = store.create_user("a", "a", "x").await.unwrap();
        let b = store.create_user("b", "b", "x").await.unwrap();
        let (tx, mut pushed) = mpsc::unbounded_channel();
        let (committer, task) = Committer::spawn(
            store.clone(),
            Arc::new(Pushed(tx)),
            64,
            64,
            Arc::new(Metrics::new()),
        );
        let wait = Duration::from_secs(10);

        for (body, flushed) in [
            ("kept", Ok(())),
            ("flush failed", Err(StoreError::unavailable("disk"))),
        ] {
            let mut ack = Box::pin(committer.append(message(a, b, body)));
            let flush = tokio::time::timeout(wait, flushes.recv())
                .await
                .unwrap()
                .unwrap();
            let push = tokio::time::timeout(wait, pushed.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&*push.message.body, body);
            assert_eq!(push.deliveries.len(), 1);
            // Pushed, and still not answered: the flush has not finished.
            tokio::task::yield_now().await;
            assert!(
                (&mut ack).now_or_never().is_none(),
                "{body}: answered before its flush"
            );
            let failed = flushed.is_err();
            flush.send(flushed).unwrap();
            let answer = tokio::time::timeout(wait, ack).await.unwrap();
            match answer {
                Ok(Appended::New(f)) if !failed => assert_eq!(f.message.mid, push.message.mid),
                Err(StoreError::Unavailable(_)) if failed => {}
                other => panic!("{body}: {other:?}"),
            }
        }
        drop(committer);
        task.shutdown().await;
    }
}
