//! The sessions this node holds, and how an event reaches one of them.
//!
//! Each logged-in connection registers a [`SessionHandle`]. Delivery never
//! blocks: it puts a frame on the connection's bounded queue, and a client
//! whose queue is full is disconnected (its messages stay stored and are
//! replayed at its next login).
//!
//! While a session is replaying its backlog from storage, live pushes are
//! not queued; the gate only records the highest seq it saw, and the replay
//! reads storage again until it has caught up with that. So a message is
//! never queued twice and never overtaken by the login ack.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::frames::{self, PushBody};
use crate::store::UserId;

/// A frame for a connection's writer. `l1_delivered` marks a level-1 push: once
/// written to the socket, the writer confirms that seq for the user.
#[derive(Debug)]
pub struct Out {
    /// The frame, LF included.
    pub bytes: Bytes,
    /// (user, seq) to confirm after the write, for level-1 sessions.
    pub l1_delivered: Option<(UserId, i64)>,
    /// Fired once this frame and all before it are written and their
    /// level-1 confirmations are durable (a flush barrier).
    pub flushed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Out {
    /// A frame that confirms nothing.
    pub fn frame(bytes: Bytes) -> Self {
        Out {
            bytes,
            l1_delivered: None,
            flushed: None,
        }
    }

    /// No bytes: just tells when everything queued before it is done.
    pub fn barrier(done: tokio::sync::oneshot::Sender<()>) -> Self {
        Out {
            bytes: Bytes::new(),
            l1_delivered: None,
            flushed: Some(done),
        }
    }
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its maximum number of frames.
    Full,
    /// The connection is ending; nothing more is queued.
    Closed,
}

#[derive(Debug, Default)]
struct OutboxState {
    q: VecDeque<Out>,
    closed: bool,
}

/// A connection's bounded outbound queue. Unlike a channel it allocates
/// nothing until a frame is queued and gives its memory back once drained,
/// so an idle connection costs only this struct.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    cap: usize,
    /// Wakes the writer when a frame arrives or the outbox closes.
    readable: Notify,
    /// Wakes senders waiting for space (or for the close).
    space: Notify,
}

impl Outbox {
    /// An empty outbox holding at most `cap` frames (at least one).
    pub fn new(cap: usize) -> Self {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            cap: cap.max(1),
            readable: Notify::new(),
            space: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame without waiting; fails when full or closed.
    pub fn try_push(&self, out: Out) -> Result<(), PushError> {
        self.offer(out).map_err(|(e, _)| e)
    }

    /// Like [`Outbox::try_push`], but hands the frame back on failure.
    pub fn offer(&self, out: Out) -> Result<(), (PushError, Out)> {
        let mut st = self.lock();
        if st.closed {
            return Err((PushError::Closed, out));
        }
        if st.q.len() >= self.cap {
            return Err((PushError::Full, out));
        }
        let was_empty = st.q.is_empty();
        st.q.push_back(out);
        drop(st);
        if was_empty {
            self.readable.notify_one();
        }
        Ok(())
    }

    /// Queues a frame, waiting for space; fails once the outbox is closed.
    pub async fn push(&self, mut out: Out) -> Result<(), PushError> {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            // Registered before the check, so a pop in between still wakes us.
            notified.as_mut().enable();
            match self.offer(out) {
                Ok(()) => return Ok(()),
                Err((PushError::Closed, _)) => return Err(PushError::Closed),
                Err((PushError::Full, o)) => out = o,
            }
            notified.await;
        }
    }

    /// Stops queueing; the writer sends what is left and then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_one();
        self.space.notify_waiters();
    }

    /// Waits for frames and moves up to about `max_bytes` of them into
    /// `batch` (which must be empty); false once closed and drained.
    pub async fn pop_batch(&self, batch: &mut VecDeque<Out>, max_bytes: usize) -> bool {
        debug_assert!(batch.is_empty());
        loop {
            {
                let mut st = self.lock();
                if !st.q.is_empty() {
                    let mut bytes = 0;
                    let n =
                        st.q.iter()
                            .take_while(|o| {
                                let fits = bytes < max_bytes;
                                bytes += o.bytes.len();
                                fits
                            })
                            .count();
                    if n == st.q.len() {
                        // Hand the whole queue over and keep the spare
                        // buffer: no copying, no allocation under load.
                        std::mem::swap(&mut st.q, batch);
                    } else {
                        batch.extend(st.q.drain(..n));
                    }
                    drop(st);
                    self.space.notify_waiters();
                    return true;
                }
                if st.closed {
                    return false;
                }
                // Idle: give the memory back.
                if st.q.capacity() > 0 {
                    st.q = VecDeque::new();
                }
            }
            if batch.capacity() > 0 {
                *batch = VecDeque::new();
            }
            self.readable.notified().await;
        }
    }
}

/// Something that happened for a user, routed to wherever their session is.
#[derive(Debug, Clone)]
pub enum Event {
    /// A chat message with the recipient's seq.
    Chat {
        /// The encoded message.
        push: Arc<PushBody>,
        /// The recipient's seq for it.
        seq: i64,
    },
    /// A friend's presence changed.
    Presence {
        /// The friend.
        id: UserId,
        /// Whether they are now online.
        online: bool,
    },
    /// A newer login replaced session `sid`.
    Kick {
        /// The session to close.
        sid: u64,
    },
}

#[derive(Debug)]
struct Gate {
    replaying: bool,
    /// Highest seq pushed while replaying.
    seen: i64,
    /// Highest seq the replay queued; pushes at or below it are duplicates.
    floor: i64,
    /// PRESENCE held back while replaying, so nothing precedes the login ack.
    presence: Vec<(UserId, bool)>,
}

/// A logged-in session as the rest of the node sees it.
#[derive(Debug)]
pub struct SessionHandle {
    /// Unique per login on this node.
    pub sid: u64,
    /// Whose session.
    pub user: UserId,
    /// Protocol level, 1 or 2.
    pub level: u8,
    out: Arc<Outbox>,
    close: CancellationToken,
    gate: Mutex<Gate>,
    /// cmids of messages this login stored, and so routed: a retry of one of
    /// them pushes nothing. Cleared when it grows large.
    stored_cmids: Mutex<HashSet<String>>,
}

impl SessionHandle {
    /// A handle that starts in replay mode.
    pub fn new(
        sid: u64,
        user: UserId,
        level: u8,
        out: Arc<Outbox>,
        close: CancellationToken,
    ) -> Self {
        SessionHandle {
            sid,
            user,
            level,
            out,
            close,
            gate: Mutex::new(Gate {
                replaying: true,
                seen: 0,
                floor: 0,
                presence: Vec::new(),
            }),
            stored_cmids: Mutex::new(HashSet::new()),
        }
    }

    /// Notes that this login stored (and routed) the message with `cmid`.
    pub fn note_stored(&self, cmid: &str) {
        let mut s = self.stored_cmids.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() >= 4096 {
            s.clear();
        }
        s.insert(cmid.to_owned());
    }

    /// Whether this login stored the message with `cmid`.
    pub fn stored_here(&self, cmid: &str) -> bool {
        self.stored_cmids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(cmid)
    }

    fn try_out(&self, out: Out) {
        // Once closing, queue nothing more: a frame dropped for a full queue
        // must not be followed by later ones, or the client would see a seq
        // gap (and a level-1 write would confirm the dropped message).
        if self.close.is_cancelled() {
            return;
        }
        match self.out.try_push(out) {
            Ok(()) => {}
            Err(PushError::Full) => {
                tracing::warn!(
                    user = self.user,
                    sid = self.sid,
                    "outbound queue full; disconnecting slow client"
                );
                self.close.cancel();
            }
            // The connection is ending already.
            Err(PushError::Closed) => self.close.cancel(),
        }
    }

    /// Delivers an event without blocking.
    pub fn deliver(&self, ev: &Event) {
        match ev {
            Event::Chat { push, seq } => {
                let mut g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
                if g.replaying {
                    g.seen = g.seen.max(*seq);
                    return;
                }
                if *seq <= g.floor {
                    return;
                }
                let out = if self.level >= 2 {
                    Out::frame(push.level2(*seq))
                } else {
                    Out {
                        bytes: push.level1(),
                        l1_delivered: Some((self.user, *seq)),
                        flushed: None,
                    }
                };
                self.try_out(out);
            }
            Event::Presence { id, online } => {
                if self.level >= 2 {
                    let mut g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
                    if g.replaying {
                        g.presence.push((*id, *online));
                        return;
                    }
                    self.try_out(Out::frame(frames::presence(*id, *online)));
                }
            }
            Event::Kick { sid } => {
                if *sid == self.sid {
                    self.try_out(Out::frame(frames::kicked()));
                    self.close.cancel();
                }
            }
        }
    }

    /// Called by the replay once it has queued everything up to `floor`.
    /// Returns false when pushes arrived beyond it: read storage again.
    pub fn finish_replay(&self, floor: i64) -> bool {
        let mut g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        g.floor = g.floor.max(floor);
        if g.seen > g.floor {
            return false;
        }
        g.replaying = false;
        // Under the lock, so a newer PRESENCE cannot overtake these.
        for (id, online) in std::mem::take(&mut g.presence) {
            self.try_out(Out::frame(frames::presence(id, online)));
        }
        true
    }

    /// Whether the session was closed (kicked, too slow, shutting down).
    pub fn is_closed(&self) -> bool {
        self.close.is_cancelled()
    }
}

const SHARDS: usize = 64;

/// The sessions on this node, by user, sharded to keep lock hold times short.
#[derive(Debug)]
pub struct Sessions {
    shards: Vec<Mutex<HashMap<UserId, Arc<SessionHandle>>>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Sessions {
    fn shard(
        &self,
        user: UserId,
    ) -> std::sync::MutexGuard<'_, HashMap<UserId, Arc<SessionHandle>>> {
        self.shards[user.rem_euclid(SHARDS as i64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The user's session here, if any.
    pub fn get(&self, user: UserId) -> Option<Arc<SessionHandle>> {
        self.shard(user).get(&user).cloned()
    }

    /// Registers a session and returns the one it replaces.
    pub fn insert(&self, h: Arc<SessionHandle>) -> Option<Arc<SessionHandle>> {
        self.shard(h.user).insert(h.user, h)
    }

    /// Removes the user's session if it is still `sid`; false if a newer
    /// login replaced it.
    pub fn remove_if(&self, user: UserId, sid: u64) -> bool {
        let mut s = self.shard(user);
        if s.get(&user).is_some_and(|h| h.sid == sid) {
            s.remove(&user);
            true
        } else {
            false
        }
    }

    /// Delivers an event to the user's session here, if there is one.
    pub fn deliver(&self, user: UserId, ev: &Event) -> bool {
        match self.get(user) {
            Some(h) => {
                h.deliver(ev);
                true
            }
            None => false,
        }
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every user with a session here.
    pub fn users(&self) -> Vec<UserId> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .map(|m| m.keys().copied().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect()
    }
}
