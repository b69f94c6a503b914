//! A connection's bounded outbound queue and the frames on it.
//!
//! Senders never block on a slow client: the live path uses
//! [`Outbox::offer`] and treats a full queue as a slow consumer; only the
//! connection itself and a session catching up from storage wait for space.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::store::UserId;

/// A frame for a connection's writer. `l1_delivered` marks a level-1 push: once
/// written to the socket, the writer confirms that seq for the user.
#[derive(Debug)]
pub struct Outgoing {
    /// The frame (LF included), or its first part when `tail` is set.
    pub bytes: Bytes,
    /// The rest of the frame. A level-2 push shares its body (`bytes`) with
    /// every other recipient and owns only this tail with its own `seq`.
    pub tail: Option<Bytes>,
    /// (user, seq) to confirm after the write, for level-1 sessions.
    pub l1_delivered: Option<(UserId, i64)>,
    /// Fired once this frame and all before it are written and their
    /// level-1 confirmations are durable (a flush barrier).
    pub flushed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Outgoing {
    /// A frame that confirms nothing.
    pub fn frame(bytes: Bytes) -> Self {
        Outgoing {
            bytes,
            tail: None,
            l1_delivered: None,
            flushed: None,
        }
    }

    /// No bytes: just tells when everything queued before it is done.
    pub fn barrier(done: tokio::sync::oneshot::Sender<()>) -> Self {
        Outgoing {
            bytes: Bytes::new(),
            tail: None,
            l1_delivered: None,
            flushed: Some(done),
        }
    }

    /// Bytes this frame puts on the wire (and holds in the queue, counting a
    /// shared body as if it were this frame's own).
    pub fn len(&self) -> usize {
        self.bytes.len() + self.tail.as_ref().map_or(0, Bytes::len)
    }

    /// Whether the frame has no bytes (a barrier).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Told what a connection's writer has put on the wire. The service
/// implements it: a level-1 push counts as delivered once written, so the
/// transport reports the write and never builds a store operation itself.
#[async_trait::async_trait]
pub trait Written: Send + Sync {
    /// Everything up to `seq` was written to `user`'s socket. With `wait`,
    /// returns once that is recorded durably (a flush barrier waits on it).
    async fn written(&self, user: UserId, seq: i64, wait: bool);
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue holds its maximum number of frames or bytes.
    Full,
    /// The connection is ending; nothing more is queued.
    Closed,
}

#[derive(Debug, Default)]
struct OutboxState {
    q: VecDeque<Outgoing>,
    /// Bytes of the frames in `q`.
    bytes: usize,
    closed: bool,
    /// The writer, waiting for a frame or the close. A waker and not a
    /// `Notify`: the writer then waits by polling, and its idle task holds
    /// no `Notified` future.
    writer: Option<Waker>,
}

/// A connection's bounded outbound queue. Unlike a channel it allocates
/// nothing until a frame is queued and gives its memory back once drained,
/// so an idle connection costs only this struct.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    cap: usize,
    max_bytes: usize,
    /// Wakes senders waiting for space (or for the close).
    space: Notify,
}

impl Outbox {
    /// An empty outbox holding at most `cap` frames (at least one) and at
    /// most `max_bytes` (a frame larger than that fits only an empty queue).
    pub fn new(cap: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            cap: cap.max(1),
            max_bytes,
            space: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame without waiting; fails when full or closed.
    pub fn try_send(&self, out: Outgoing) -> Result<(), QueueError> {
        self.offer(out).map_err(|(e, _)| e)
    }

    /// Like [`Outbox::try_send`], but hands the frame back on failure.
    pub fn offer(&self, out: Outgoing) -> Result<(), (QueueError, Outgoing)> {
        let mut st = self.lock();
        if st.closed {
            return Err((QueueError::Closed, out));
        }
        let len = out.len();
        if st.q.len() >= self.cap || (!st.q.is_empty() && st.bytes + len > self.max_bytes) {
            return Err((QueueError::Full, out));
        }
        let was_empty = st.q.is_empty();
        st.bytes += len;
        st.q.push_back(out);
        let writer = if was_empty { st.writer.take() } else { None };
        drop(st);
        if let Some(w) = writer {
            w.wake();
        }
        Ok(())
    }

    /// Queues a frame, waiting for space; fails once the outbox is closed.
    pub async fn send(&self, mut out: Outgoing) -> Result<(), QueueError> {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            // Registered before the check, so a pop in between still wakes us.
            notified.as_mut().enable();
            match self.offer(out) {
                Ok(()) => return Ok(()),
                Err((QueueError::Closed, _)) => return Err(QueueError::Closed),
                Err((QueueError::Full, o)) => out = o,
            }
            notified.await;
        }
    }

    /// Stops queueing; the writer sends what is left and then stops.
    pub fn close(&self) {
        let writer = {
            let mut st = self.lock();
            st.closed = true;
            st.writer.take()
        };
        if let Some(w) = writer {
            w.wake();
        }
        self.space.notify_waiters();
    }

    /// Waits for frames and moves up to about `max_bytes` of them into
    /// `batch` (which must be empty); false once closed and drained.
    pub async fn pop_batch(&self, batch: &mut VecDeque<Outgoing>, max_bytes: usize) -> bool {
        std::future::poll_fn(|cx| self.poll_batch(cx, batch, max_bytes)).await
    }

    /// [`Outbox::pop_batch`] as a poll, for the one writer: while it waits,
    /// only its waker is kept.
    pub fn poll_batch(
        &self,
        cx: &mut Context<'_>,
        batch: &mut VecDeque<Outgoing>,
        max_bytes: usize,
    ) -> Poll<bool> {
        debug_assert!(batch.is_empty());
        {
            let mut st = self.lock();
            if !st.q.is_empty() {
                // Up to about `max_bytes`, at least one frame.
                let (mut n, mut taken) = (0, 0);
                for o in &st.q {
                    if n > 0 && taken >= max_bytes {
                        break;
                    }
                    taken += o.len();
                    n += 1;
                }
                st.bytes -= taken;
                if n == st.q.len() {
                    // Hand the whole queue over and keep the spare
                    // buffer: no copying, no allocation under load.
                    std::mem::swap(&mut st.q, batch);
                } else {
                    batch.extend(st.q.drain(..n));
                }
                drop(st);
                self.space.notify_waiters();
                return Poll::Ready(true);
            }
            if st.closed {
                return Poll::Ready(false);
            }
            // Idle: give the memory back.
            if st.q.capacity() > 0 {
                st.q = VecDeque::new();
            }
            // Registered under the lock, so a frame queued right after
            // still wakes the writer.
            match &mut st.writer {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
        }
        if batch.capacity() > 0 {
            *batch = VecDeque::new();
        }
        Poll::Pending
    }
}
