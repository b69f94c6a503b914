//! The sessions this node holds, and how an event reaches one of them.
//!
//! Each logged-in connection registers a [`SessionHandle`]. Delivery never
//! blocks: it puts a frame on the connection's bounded queue, and a client
//! whose queue is full is disconnected (its messages stay stored and are
//! replayed at its next login).
//!
//! # Ordered delivery: the gate
//!
//! A user's pushes must reach the client strictly in `seq` order, with no
//! gap it can see, whatever the bus does (a lost publish, two nodes
//! publishing to one user out of order, a resync racing live traffic). Every
//! seq is committed before anyone publishes it, so storage always holds
//! whatever a session is missing. The gate of each session therefore:
//!
//! - queues a push whose seq is exactly the next one, and drops one at or
//!   below what it already queued;
//! - on a gap, starts a *catch-up*: one task reads the missing range from
//!   storage in pages and queues it in order. While it runs, live pushes are
//!   not queued: those right after the range are held (a bounded run), and
//!   of the rest only the highest seq is remembered, to be read from storage
//!   next. Nothing grows with the traffic.
//!
//! The login replay is the same catch-up, reading "everything undelivered"
//! after the ack is queued; after a bus outage each session catches up the
//! same way from where it stands.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::frames::{self, EncodedChat};
pub use crate::metrics::Metrics;
use crate::outbox::{Outbox, Outgoing, QueueError};
use crate::store::{Store, StoreResult, StoredMessage, UserId};

/// Something that happened for a user, routed to wherever their session is.
#[derive(Debug, Clone)]
pub enum Event {
    /// A chat message with the recipient's seq.
    Chat {
        /// The encoded message.
        push: Arc<EncodedChat>,
        /// The recipient's seq for it.
        seq: i64,
    },
    /// A friend's presence changed.
    Presence {
        /// The friend.
        id: UserId,
        /// Whether they are now online.
        online: bool,
        /// When the friend's session that this is about logged in (unix
        /// microseconds): orders notices of successive sessions, so a late
        /// "offline" of an old session cannot hide a newer login.
        since: u64,
    },
    /// A newer login replaced session `sid`.
    Kick {
        /// The session to close.
        sid: u64,
    },
    /// Storage may hold messages the session has not been pushed (a retried
    /// send whose first routing was lost): catch up from storage.
    Redeliver,
    /// A ROSTER push (a change to the user's friends or groups), encoded;
    /// level-2 sessions only, not stored.
    Roster(Bytes),
}

/// Where a session catching up reads its messages from.
#[async_trait]
pub trait BacklogSource: Send + Sync {
    /// Messages for `user` with seq above `after` that are not confirmed,
    /// oldest first, at most `limit` (as [`crate::store::MessageStore::undelivered`]).
    async fn undelivered(
        &self,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, StoredMessage)>>;
}

/// The node's store as a backlog source.
pub struct StoreBacklog(pub Arc<dyn Store>);

#[async_trait]
impl BacklogSource for StoreBacklog {
    async fn undelivered(
        &self,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, StoredMessage)>> {
        self.0.undelivered(user, after, limit).await
    }
}

/// Reads for catching-up sessions: the source, the page size, and a bound on
/// concurrent reads, so that thousands of sessions catching up at once after
/// a bus outage queue for the database instead of storming it.
pub struct Backlog {
    /// The node's metrics: pages read, pushes, slow-consumer drops.
    pub metrics: Arc<Metrics>,
    source: Arc<dyn BacklogSource>,
    page: i64,
    reads: Semaphore,
    stall: Duration,
}

impl Backlog {
    /// `page` rows per read, at most `concurrency` reads at once. A session
    /// whose outbound queue stays full for `stall` while catching up is
    /// dropped as a slow consumer.
    pub fn new(
        source: Arc<dyn BacklogSource>,
        page: i64,
        concurrency: usize,
        stall: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Backlog {
            metrics,
            source,
            page: page.max(1),
            reads: Semaphore::new(concurrency.max(1)),
            stall,
        }
    }

    async fn read(
        &self,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, StoredMessage)>> {
        let _permit = self.reads.acquire().await.ok();
        self.metrics.backlog_pages.inc();
        self.source.undelivered(user, after, limit).await
    }
}

/// Friends whose session stamps one session remembers at most (quotas keep
/// friend lists far below; past it the map starts over).
const FRIEND_SESSIONS_MAX: usize = 10_000;

/// "Read storage to its end" as a catch-up target.
const END: i64 = i64::MAX;
/// Pushes held right after the range being read, at most (frames, bytes).
const HELD_MAX: usize = 64;
const HELD_MAX_BYTES: usize = 512 * 1024;
/// ROSTER pushes a session holds while its login replay runs.
const ROSTER_HELD_MAX: usize = 64;

#[derive(Debug)]
struct Gate {
    /// A catch-up task owns the chat stream: live pushes are not queued.
    catching_up: bool,
    /// The login replay is done; until then PRESENCE is held.
    open: bool,
    /// Highest seq queued for the client.
    written: i64,
    /// The catch-up reads storage up to here (END: to the end).
    target: i64,
    /// Pushes directly after `target`, in order, kept so they need not be
    /// read again.
    held: VecDeque<(i64, Arc<EncodedChat>)>,
    held_bytes: usize,
    /// Highest seq known to exist beyond `target` and `held`, to be read
    /// from storage next (0: none).
    seen: i64,
    /// PRESENCE held until the login replay is done: the latest per friend.
    presence: BTreeMap<UserId, bool>,
    /// ROSTER pushes held until the login replay is done, in order (at
    /// most [`ROSTER_HELD_MAX`]; the next login ack has the lists anyway).
    roster: Vec<Bytes>,
    /// The login ack is queued; until then a kick waits (the ack comes first).
    acked: bool,
    /// A newer login claimed the user before the ack was queued.
    kick_pending: Option<Bytes>,
    /// Per friend, the newest session a notice was about and its state.
    friend_sessions: HashMap<UserId, (u64, bool)>,
}

/// What the catch-up does next.
enum Step {
    Read { after: i64, upto: i64 },
    Held(Vec<(i64, Arc<EncodedChat>)>),
    Done,
}

/// A logged-in session as the rest of the node sees it.
pub struct SessionHandle {
    /// Unique per login on this node.
    pub sid: u64,
    /// Whose session.
    pub user: UserId,
    /// Protocol level, 1 or 2.
    pub level: u8,
    /// When this session logged in (unix microseconds): its presence stamp.
    pub since: u64,
    out: Arc<Outbox>,
    close: CancellationToken,
    backlog: Arc<Backlog>,
    gate: Mutex<Gate>,
    /// cmids of messages this login stored, and so routed: a retry of one of
    /// them pushes nothing. Kept as 64-bit hashes ([`cmid_hash`]), a word
    /// each rather than a copy of up to 64 bytes, and cleared past
    /// [`STORED_CMIDS`].
    stored_cmids: Mutex<HashSet<u64>>,
}

/// cmids a login remembers at most (some 8 KiB); a retry from the same
/// login comes within a window of messages, not thousands later.
const STORED_CMIDS: usize = 512;

/// A cmid's hash, keyed at random once per process so that no client can
/// choose cmids that collide.
fn cmid_hash(cmid: &str) -> u64 {
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEYS.get_or_init(Default::default).hash_one(cmid)
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("sid", &self.sid)
            .field("user", &self.user)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl SessionHandle {
    /// A handle whose login replay has not run yet: live pushes only note
    /// their seq until [`SessionHandle::catch_up`] has run once.
    pub fn new(
        sid: u64,
        user: UserId,
        level: u8,
        out: Arc<Outbox>,
        close: CancellationToken,
        backlog: Arc<Backlog>,
    ) -> Self {
        SessionHandle {
            sid,
            user,
            level,
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            out,
            close,
            backlog,
            gate: Mutex::new(Gate {
                catching_up: true,
                open: false,
                written: 0,
                target: END,
                held: VecDeque::new(),
                held_bytes: 0,
                seen: 0,
                presence: BTreeMap::new(),
                roster: Vec::new(),
                acked: false,
                kick_pending: None,
                friend_sessions: HashMap::new(),
            }),
            stored_cmids: Mutex::new(HashSet::new()),
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that this login stored (and routed) the message with `cmid`.
    pub fn note_stored(&self, cmid: &str) {
        let h = cmid_hash(cmid);
        let mut s = self.stored_cmids.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() >= STORED_CMIDS {
            s.clear();
        }
        s.insert(h);
    }

    /// Whether this login stored the message with `cmid`. Two cmids with
    /// one hash (one chance in 2^64 a pair) would only skip a redelivery,
    /// which the recipient's next login or message makes up for.
    pub fn stored_here(&self, cmid: &str) -> bool {
        let h = cmid_hash(cmid);
        self.stored_cmids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&h)
    }

    fn try_out(&self, out: Outgoing) {
        // Once closing, queue nothing more: a frame dropped for a full queue
        // must not be followed by later ones, or the client would see a seq
        // gap (and a level-1 write would confirm the dropped message).
        if self.close.is_cancelled() {
            return;
        }
        match self.out.try_send(out) {
            Ok(()) => {}
            Err(QueueError::Full) => {
                self.backlog.metrics.slow_consumer_drops.inc();
                tracing::warn!(
                    user = self.user,
                    sid = self.sid,
                    "outbound queue full; disconnecting slow client"
                );
                self.close.cancel();
            }
            // The connection is ending already.
            Err(QueueError::Closed) => self.close.cancel(),
        }
    }

    /// The frame for one message at this session's level.
    fn chat_out(&self, seq: i64, push: &EncodedChat) -> Outgoing {
        if self.level >= 2 {
            push.level2_out(seq)
        } else {
            Outgoing {
                bytes: push.level1(),
                tail: None,
                l1_delivered: Some((self.user, seq)),
                flushed: None,
            }
        }
    }

    /// Delivers an event without blocking. A chat push out of order starts a
    /// catch-up task (see the module docs).
    pub fn deliver(self: &Arc<Self>, ev: &Event) {
        // In PUSH_KINDS order.
        let kind = match ev {
            Event::Chat { .. } => 0,
            Event::Presence { .. } => 1,
            Event::Roster(_) => 2,
            Event::Kick { .. } => 3,
            Event::Redeliver => 4,
        };
        self.backlog.metrics.pushed(kind);
        match ev {
            Event::Chat { push, seq } => self.deliver_chat(*seq, push),
            Event::Presence { id, online, since } => {
                if self.level >= 2 {
                    let mut g = self.gate();
                    // Drop a notice about an older session than one already
                    // heard of, and a repeat about the same one. A newer
                    // session's "online" goes out even when the friend
                    // looked online already: it came online again.
                    let before = g.friend_sessions.get(id).copied();
                    if before.is_some_and(|(s, on)| *since < s || (*since == s && on == *online)) {
                        return;
                    }
                    if g.friend_sessions.len() >= FRIEND_SESSIONS_MAX {
                        g.friend_sessions.clear();
                    }
                    g.friend_sessions.insert(*id, (*since, *online));
                    if !g.open {
                        g.presence.insert(*id, *online);
                        return;
                    }
                    self.try_out(Outgoing::frame(frames::presence(*id, *online)));
                }
            }
            Event::Kick { sid } => {
                if *sid == self.sid {
                    self.kick(frames::kicked());
                }
            }
            Event::Redeliver => self.redeliver(),
            Event::Roster(frame) => {
                if self.level >= 2 {
                    let mut g = self.gate();
                    if !g.open {
                        if g.roster.len() < ROSTER_HELD_MAX {
                            g.roster.push(frame.clone());
                        } else {
                            tracing::debug!(
                                user = self.user,
                                "ROSTER dropped during the login replay"
                            );
                        }
                        return;
                    }
                    self.try_out(Outgoing::frame(frame.clone()));
                }
            }
        }
    }

    fn deliver_chat(self: &Arc<Self>, seq: i64, push: &Arc<EncodedChat>) {
        let mut g = self.gate();
        if seq <= g.written {
            return; // queued already
        }
        if !g.catching_up {
            if seq == g.written + 1 {
                self.try_out(self.chat_out(seq, push));
                g.written = seq;
                return;
            }
            // A gap: read what is missing, keep this push for after it.
            tracing::debug!(
                user = self.user,
                sid = self.sid,
                after = g.written,
                got = seq,
                "seq gap; catching up from storage"
            );
            g.catching_up = true;
            g.target = seq - 1;
            g.seen = 0;
            g.held.clear();
            g.held_bytes = push.size();
            g.held.push_back((seq, push.clone()));
            drop(g);
            self.spawn_catch_up();
            return;
        }
        if g.target == END {
            // The read in progress may have missed it: read again after.
            g.seen = g.seen.max(seq);
            return;
        }
        if seq <= g.target {
            return; // the read in progress covers it
        }
        let next = g.target + g.held.len() as i64 + 1;
        if seq < next {
            return; // held already
        }
        if seq == next && g.held.len() < HELD_MAX && g.held_bytes + push.size() <= HELD_MAX_BYTES {
            g.held_bytes += push.size();
            g.held.push_back((seq, push.clone()));
        } else {
            g.seen = g.seen.max(seq);
        }
    }

    /// Redelivers from storage, from where the session stands to the end:
    /// the one way a session recovers what live delivery may have missed,
    /// after a bus outage (the Redis bus's reconnect) or when a retried send
    /// finds its message stored but maybe never routed. Requests that arrive
    /// while one runs fold into it.
    pub fn redeliver(self: &Arc<Self>) {
        let mut g = self.gate();
        if g.catching_up {
            g.seen = END;
            return;
        }
        g.catching_up = true;
        g.target = END;
        g.seen = 0;
        drop(g);
        self.spawn_catch_up();
    }

    fn spawn_catch_up(self: &Arc<Self>) {
        let h = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match h.catch_up().await {
                    Ok(()) => return,
                    Err(e) if !h.is_closed() => {
                        tracing::warn!(user = h.user, sid = h.sid, error = %e, retry_in = ?backoff, "catch-up read failed");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = h.close.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(_) => return,
                }
            }
        });
    }

    /// Sends `frame` (a KICKED) and closes the session; before the login
    /// ack is queued, waits for it (see `ack_queued`).
    pub fn kick(&self, frame: Bytes) {
        let mut g = self.gate();
        if !g.acked {
            g.kick_pending = Some(frame);
            return;
        }
        drop(g);
        self.try_out(Outgoing::frame(frame));
        self.close.cancel();
    }

    /// Records that the login ack is queued. A kick that came before it is
    /// carried out now, so a session's first frame is always its ack.
    /// Returns false when the session was kicked.
    pub fn ack_queued(&self) -> bool {
        let mut g = self.gate();
        g.acked = true;
        if let Some(frame) = g.kick_pending.take() {
            drop(g);
            self.try_out(Outgoing::frame(frame));
            self.close.cancel();
            return false;
        }
        true
    }

    /// Records that the login replay queued everything up to `seq` (inside
    /// or right after the ack); with `at_end` storage held nothing more.
    pub fn replayed_to(&self, seq: i64, at_end: bool) {
        let mut g = self.gate();
        g.written = g.written.max(seq);
        if at_end {
            g.target = g.written;
        }
    }

    /// Runs the catch-up until the session's stream is live again: reads
    /// storage in pages and queues it in order, then what was held. Errors
    /// are storage errors; the session state stays consistent, so calling it
    /// again resumes.
    pub async fn catch_up(&self) -> StoreResult<()> {
        loop {
            if self.is_closed() {
                return Ok(());
            }
            let step = {
                let mut g = self.gate();
                let g = &mut *g;
                if g.written < g.target {
                    Step::Read {
                        after: g.written,
                        upto: g.target,
                    }
                } else if !g.held.is_empty() {
                    g.held_bytes = 0;
                    let run: Vec<_> = g.held.drain(..).collect();
                    g.target = run.last().map_or(g.target, |(s, _)| *s);
                    Step::Held(run)
                } else if g.seen > g.written {
                    g.target = g.seen;
                    g.seen = 0;
                    continue;
                } else {
                    g.catching_up = false;
                    g.target = g.written;
                    if !g.open {
                        g.open = true;
                        // Under the lock, so a newer PRESENCE cannot overtake these.
                        for (id, online) in std::mem::take(&mut g.presence) {
                            self.try_out(Outgoing::frame(frames::presence(id, online)));
                        }
                        for frame in std::mem::take(&mut g.roster) {
                            self.try_out(Outgoing::frame(frame));
                        }
                    }
                    Step::Done
                }
            };
            match step {
                Step::Done => return Ok(()),
                Step::Held(run) => {
                    for (seq, push) in run {
                        if !self.queue(self.chat_out(seq, &push)).await {
                            return Ok(());
                        }
                        self.gate().written = seq;
                    }
                }
                Step::Read { after, upto } => {
                    let page = self.backlog.page;
                    let limit = if upto == END {
                        page
                    } else {
                        (upto - after).min(page)
                    };
                    let rows = self.backlog.read(self.user, after, limit).await?;
                    // Fewer rows than asked for: nothing more is stored.
                    let complete = (rows.len() as i64) < limit;
                    let mut last = after;
                    let mut past = false;
                    for (seq, m) in rows {
                        if seq > upto {
                            past = true;
                            break;
                        }
                        let push = EncodedChat::new(Arc::new(m));
                        if !self.queue(self.chat_out(seq, &push)).await {
                            return Ok(());
                        }
                        last = seq;
                    }
                    let mut g = self.gate();
                    g.written = g.written.max(last);
                    if upto == END {
                        if complete {
                            g.target = g.written;
                        }
                    } else if complete || past {
                        // The range is done; rows missing from it were
                        // confirmed already (the client has them).
                        g.written = g.written.max(upto);
                    }
                }
            }
        }
    }

    /// Queues a frame, waiting for space (bounded by the stall limit).
    /// False once the session is closing.
    async fn queue(&self, out: Outgoing) -> bool {
        let out = match self.out.offer(out) {
            Ok(()) => return true,
            Err((QueueError::Closed, _)) => return false,
            Err((QueueError::Full, out)) => out,
        };
        tokio::select! {
            r = self.out.send(out) => r.is_ok(),
            _ = self.close.cancelled() => false,
            _ = tokio::time::sleep(self.backlog.stall) => {
                self.backlog.metrics.slow_consumer_drops.inc();
                tracing::warn!(user = self.user, sid = self.sid, "outbound queue full while catching up; disconnecting slow client");
                self.close.cancel();
                false
            }
        }
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
    /// The node's metrics (the bus counts its publishes here).
    pub metrics: Arc<Metrics>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(Arc::new(Metrics::new()))
    }
}

impl Sessions {
    /// An empty registry that counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Sessions {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            metrics,
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

#[cfg(test)]
mod tests {
    //! The gate, against a fake store: whatever order pushes arrive in, the
    //! client gets every seq once, in order, and storage is read only for
    //! what is missing.

    use super::*;
    use crate::store::Target;
    use std::collections::VecDeque;

    /// A store holding seqs `1..=n` for user 1, counting its reads.
    struct Fake {
        n: i64,
        /// (after, limit) of each read.
        reads: Mutex<Vec<(i64, i64)>>,
    }

    fn message(seq: i64) -> StoredMessage {
        StoredMessage {
            mid: 100 + seq,
            sender: 2,
            sender_name: "bob".into(),
            target: Target::User(1),
            body: format!("m{seq}").into(),
            time: 0,
        }
    }

    #[async_trait]
    impl BacklogSource for Fake {
        async fn undelivered(
            &self,
            _user: UserId,
            after: i64,
            limit: i64,
        ) -> StoreResult<Vec<(i64, StoredMessage)>> {
            self.reads.lock().unwrap().push((after, limit));
            Ok((after + 1..=self.n)
                .take(limit as usize)
                .map(|s| (s, message(s)))
                .collect())
        }
    }

    fn push(seq: i64) -> Event {
        Event::Chat {
            push: Arc::new(EncodedChat::new(Arc::new(message(seq)))),
            seq,
        }
    }

    /// A live session of user 1 at `level` over a store holding `1..=n`.
    async fn live(level: u8, n: i64, page: i64) -> (Arc<SessionHandle>, Arc<Outbox>, Arc<Fake>) {
        let fake = Arc::new(Fake {
            n,
            reads: Mutex::new(Vec::new()),
        });
        let backlog = Arc::new(Backlog::new(
            fake.clone(),
            page,
            4,
            Duration::from_secs(5),
            Default::default(),
        ));
        let out = Arc::new(Outbox::new(1024, 1 << 20));
        let h = Arc::new(SessionHandle::new(
            1,
            1,
            level,
            out.clone(),
            CancellationToken::new(),
            backlog,
        ));
        // A login that found nothing stored.
        h.replayed_to(0, true);
        h.catch_up().await.unwrap();
        (h, out, fake)
    }

    /// The `mid`s (100 + seq) of the next `n` frames, in order, and the seqs
    /// a level-1 writer would confirm.
    async fn frames(out: &Outbox, n: usize) -> (Vec<i64>, Vec<i64>) {
        let mut got = Vec::new();
        let mut confirms = Vec::new();
        let mut batch = VecDeque::new();
        while got.len() < n {
            let more =
                tokio::time::timeout(Duration::from_secs(5), out.pop_batch(&mut batch, 1 << 20))
                    .await
                    .expect("frames arrive");
            assert!(more);
            for o in batch.drain(..) {
                let mut frame = o.bytes.to_vec();
                frame.extend(o.tail.iter().flatten());
                let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
                let mid = v["mid"].as_i64().unwrap_or_else(|| {
                    // Level 1 carries no mid: the text names the seq.
                    100 + v["msg"].as_str().unwrap()[1..].parse::<i64>().unwrap()
                });
                if let Some(s) = v["seq"].as_i64() {
                    assert_eq!(s, mid - 100, "seq and message match");
                }
                confirms.extend(o.l1_delivered.map(|(_, s)| s));
                got.push(mid);
            }
        }
        (got, confirms)
    }

    async fn settle(h: &SessionHandle) {
        for _ in 0..1000 {
            if !h.gate().catching_up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the catch-up never finished");
    }

    #[tokio::test]
    async fn a_gap_is_filled_from_storage_once_and_in_order() {
        for level in [2, 1] {
            let (h, out, fake) = live(level, 6, 256).await;
            for seq in [1, 2, 5, 3, 4, 6] {
                h.deliver(&push(seq));
            }
            let (mids, confirms) = frames(&out, 6).await;
            assert_eq!(mids, vec![101, 102, 103, 104, 105, 106], "level {level}");
            settle(&h).await;
            assert_eq!(
                *fake.reads.lock().unwrap(),
                vec![(2, 2)],
                "level {level}: one read, of seqs 3 and 4"
            );
            if level == 1 {
                assert_eq!(confirms, vec![1, 2, 3, 4, 5, 6]);
            } else {
                assert!(confirms.is_empty());
            }
            // Late duplicates change nothing.
            for seq in [4, 6, 1] {
                h.deliver(&push(seq));
            }
            h.deliver(&push(7));
            assert!(out.try_send(Outgoing::frame(bytes::Bytes::new())).is_ok());
            let mut batch = VecDeque::new();
            out.pop_batch(&mut batch, 1 << 20).await;
            assert_eq!(batch.len(), 2, "only seq 7 and the marker were queued");
        }
    }

    #[tokio::test]
    async fn resync_reads_from_where_the_session_stands() {
        let (h, out, fake) = live(2, 10, 3).await;
        for seq in 1..=4 {
            h.deliver(&push(seq));
        }
        // Seqs 5..=10 were stored, but their publishes were lost.
        h.redeliver();
        // A live push racing the resync: dropped, the read covers it.
        h.deliver(&push(9));
        let (mids, _) = frames(&out, 10).await;
        assert_eq!(mids, (101..=110).collect::<Vec<_>>());
        settle(&h).await;
        assert_eq!(*fake.reads.lock().unwrap(), vec![(4, 3), (7, 3), (10, 3)]);
    }

    #[tokio::test]
    async fn any_arrival_order_gives_every_seq_once_in_order() {
        // Deterministic pseudo-random orders with duplicates, as two nodes
        // publishing to one user and a resync overlapping them might give.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..50 {
            let n = 40;
            let (h, out, _) = live(2, n, 7).await;
            let mut order: Vec<i64> = (1..=n).collect();
            for i in (1..order.len()).rev() {
                // Local disorder only, as real buses give.
                let j = i.saturating_sub(rnd(6) as usize);
                order.swap(i, j);
            }
            for &seq in &order {
                h.deliver(&push(seq));
                if rnd(4) == 0 {
                    h.deliver(&push(1 + rnd(n as u64) as i64));
                }
                if rnd(10) == 0 {
                    tokio::task::yield_now().await;
                }
                if rnd(30) == 0 {
                    h.redeliver();
                }
            }
            let (mids, _) = frames(&out, n as usize).await;
            assert_eq!(mids, (101..=100 + n).collect::<Vec<_>>(), "round {round}");
            settle(&h).await;
        }
    }

    #[tokio::test]
    async fn a_late_offline_of_an_older_session_is_dropped() {
        let (h, out, _) = live(2, 0, 8).await;
        let p = |online, since| Event::Presence {
            id: 9,
            online,
            since,
        };
        // Session 1 online; session 2 logs in before session 1's "offline"
        // is delivered (another node, a slower path).
        h.deliver(&p(true, 1));
        h.deliver(&p(true, 2));
        h.deliver(&p(false, 1));
        // Session 2 ends for real.
        h.deliver(&p(false, 2));
        let mut batch = VecDeque::new();
        out.pop_batch(&mut batch, 1 << 20).await;
        let states: Vec<String> = batch
            .iter()
            .map(|o| {
                let v: serde_json::Value = serde_json::from_slice(&o.bytes).unwrap();
                v["state"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(states, ["online", "online", "offline"]);
    }

    #[tokio::test]
    async fn presence_held_during_the_login_replay_keeps_one_state_per_friend() {
        let fake = Arc::new(Fake {
            n: 0,
            reads: Mutex::new(Vec::new()),
        });
        let backlog = Arc::new(Backlog::new(
            fake,
            8,
            1,
            Duration::from_secs(5),
            Default::default(),
        ));
        let out = Arc::new(Outbox::new(1024, 1 << 20));
        let h = Arc::new(SessionHandle::new(
            1,
            1,
            2,
            out.clone(),
            CancellationToken::new(),
            backlog,
        ));
        // A flapping friend and two steady ones, while the replay runs.
        for i in 0..10_000u64 {
            for id in [7, 8, 9] {
                h.deliver(&Event::Presence {
                    id,
                    online: i % 2 == 0 || id != 7,
                    since: i,
                });
            }
        }
        assert_eq!(h.gate().presence.len(), 3, "one entry per friend");
        h.replayed_to(0, true);
        h.catch_up().await.unwrap();
        let mut batch = VecDeque::new();
        out.pop_batch(&mut batch, 1 << 20).await;
        let got: Vec<(i64, String)> = batch
            .iter()
            .map(|o| {
                let v: serde_json::Value = serde_json::from_slice(&o.bytes).unwrap();
                (
                    v["id"].as_i64().unwrap(),
                    v["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (7, "offline".into()),
                (8, "online".into()),
                (9, "online".into())
            ]
        );
    }

    #[tokio::test]
    async fn held_pushes_are_bounded() {
        let n = 1000;
        let (h, out, fake) = live(2, n, 256).await;
        h.deliver(&push(1));
        // A gap at 2, then far more pushes than the hold keeps.
        for seq in 3..=n {
            h.deliver(&push(seq));
            assert!(h.gate().held.len() <= HELD_MAX);
        }
        h.deliver(&push(2));
        let (mids, _) = frames(&out, n as usize).await;
        assert_eq!(mids, (101..=100 + n).collect::<Vec<_>>());
        settle(&h).await;
        // seq 2 from storage; 3..=66 held; the rest read in pages.
        let reads = fake.reads.lock().unwrap().clone();
        assert_eq!(reads[0], (1, 1));
        assert_eq!(reads[1], (1 + 1 + HELD_MAX as i64, 256));
    }
}
