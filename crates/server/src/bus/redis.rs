//! The cluster bus: Redis publish/subscribe between nodes, and presence leases.
//!
//! - Every user with a session on this node has its channel `cc:u:{id}`
//!   subscribed on the node's single pub/sub connection. An event for a user
//!   who is not here is published to that channel; whichever node holds the
//!   user receives it. Publishing goes through one task, in order, pipelined
//!   over a cloneable multiplexed connection.
//! - `cc:on:{id}` holds `node:sid` with a lease (30 s by default) that the
//!   node renews. A crashed node's users read as offline once it lapses.
//! - A login publishes a claim on the user's channel; any other session of
//!   theirs, on any node, is kicked.
//! - When the pub/sub connection drops, the node reconnects with backoff,
//!   subscribes again, and each of its sessions catches up from storage, in
//!   seq order, from where it stands: anything published while it was away
//!   is not lost, and nothing overtakes it.
//! - An event that could not be published (Redis failing, the publish queue
//!   full) is not retried as such: its recipient is sent a resync instead,
//!   once publishing works again, and catches up from storage.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, OnceCell};
use tokio_util::sync::CancellationToken;

use super::Bus;
use crate::frames::EncodedChat;
use crate::sessions::{Event, Sessions};
use crate::store::{StoredMessage, Target, UserId};

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// How long a presence lease lasts without renewal.
    pub lease: Duration,
}

enum SubCmd {
    Subscribe(UserId, oneshot::Sender<()>),
    Unsubscribe(UserId),
}

/// The Redis-backed bus.
pub struct RedisBus {
    cfg: RedisBusConfig,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    sessions: Arc<Sessions>,
    publish: mpsc::Sender<(UserId, Event)>,
    sub: mpsc::UnboundedSender<SubCmd>,
    stop: CancellationToken,
    /// Recipients of events that were dropped, owed a resync.
    owed: std::sync::Mutex<std::collections::HashSet<UserId>>,
    /// Whether the pub/sub connection is up and every session subscribed.
    subscribed: std::sync::atomic::AtomicBool,
}

/// Recipients remembered for a resync at most; beyond, the next bus
/// reconnect (or their next message, or login) catches them up.
const OWED_MAX: usize = 100_000;

const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not v then return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

fn chan(user: UserId) -> String {
    format!("cc:u:{user}")
}

fn lease_key(user: UserId) -> String {
    format!("cc:on:{user}")
}

impl RedisBus {
    /// Starts the bus's tasks (publisher, subscriber, lease renewal). They
    /// connect in the background and keep retrying, so a node starts even
    /// while Redis is down.
    pub fn start(cfg: RedisBusConfig, sessions: Arc<Sessions>) -> anyhow::Result<Arc<RedisBus>> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let (publish, prx) = mpsc::channel(65_536);
        let (sub, srx) = mpsc::unbounded_channel();
        let bus = Arc::new(RedisBus {
            cfg,
            client,
            conn: OnceCell::new(),
            sessions,
            publish,
            sub,
            stop: CancellationToken::new(),
            owed: Default::default(),
            subscribed: Default::default(),
        });
        tokio::spawn(publisher(bus.clone(), prx));
        tokio::spawn(subscriber(bus.clone(), srx));
        tokio::spawn(renewer(bus.clone()));
        Ok(bus)
    }

    /// Remembers that `to` missed `ev`: a chat message is stored, so a
    /// resync once publishing works again recovers it.
    fn owe(&self, to: UserId, ev: &Event) {
        if matches!(ev, Event::Chat { .. } | Event::Redeliver) {
            let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
            if owed.len() < OWED_MAX {
                owed.insert(to);
            }
        }
    }

    async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        self.conn
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
            .await
            .cloned()
    }

    fn lease_value(&self, sid: u64) -> String {
        format!("{}:{sid}", self.cfg.node)
    }

    /// Handles one message from a user's channel.
    fn on_message(&self, channel: &str, payload: &[u8]) {
        let Some(user) = channel
            .strip_prefix("cc:u:")
            .and_then(|s| s.parse::<UserId>().ok())
        else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            tracing::warn!(channel, "undecodable bus message");
            return;
        };
        match v["t"].as_str() {
            Some("c") => {
                if let (Some(seq), Some(m)) = (v["seq"].as_i64(), decode_message(&v["m"])) {
                    let push = Arc::new(EncodedChat::new(Arc::new(m)));
                    self.sessions.deliver(user, &Event::Chat { push, seq });
                }
            }
            Some("r") => {
                self.sessions.deliver(user, &Event::Redeliver);
            }
            Some("o") => {
                if let Some(f) = v["f"].as_str() {
                    let frame = bytes::Bytes::copy_from_slice(f.as_bytes());
                    self.sessions.deliver(user, &Event::Roster(frame));
                }
            }
            Some("p") => {
                if let (Some(id), Some(online)) = (v["id"].as_i64(), v["on"].as_bool()) {
                    let since = v["s"].as_u64().unwrap_or(0);
                    self.sessions
                        .deliver(user, &Event::Presence { id, online, since });
                }
            }
            Some("k") => {
                let (node, sid) = (
                    v["node"].as_str().unwrap_or(""),
                    v["sid"].as_u64().unwrap_or(0),
                );
                if let Some(h) = self.sessions.get(user) {
                    if !(node == self.cfg.node && h.sid == sid) {
                        tracing::info!(
                            user,
                            by = node,
                            "session claimed by a newer login elsewhere"
                        );
                        h.deliver(&Event::Kick { sid: h.sid });
                    }
                }
            }
            _ => tracing::warn!(channel, "unknown bus message"),
        }
    }
}

fn encode_message(m: &StoredMessage) -> Value {
    json!({"mid": m.mid, "from": m.sender, "name": &*m.sender_name, "kind": m.target.kind(),
           "to": m.target.id(), "body": &*m.body, "time": m.time})
}

fn decode_message(v: &Value) -> Option<StoredMessage> {
    Some(StoredMessage {
        mid: v["mid"].as_i64()?,
        sender: v["from"].as_i64()?,
        sender_name: v["name"].as_str()?.into(),
        target: Target::from_parts(v["kind"].as_i64()?, v["to"].as_i64()?),
        body: v["body"].as_str()?.into(),
        time: v["time"].as_i64()?,
    })
}

fn encode_event(ev: &Event, node: &str) -> Value {
    match ev {
        Event::Chat { push, seq } => {
            json!({"t": "c", "seq": seq, "m": encode_message(&push.message)})
        }
        Event::Presence { id, online, since } => {
            json!({"t": "p", "id": id, "on": online, "s": since})
        }
        Event::Kick { sid } => json!({"t": "k", "node": node, "sid": sid}),
        Event::Redeliver => json!({"t": "r"}),
        // The frame is JSON text: carried as a string.
        Event::Roster(frame) => json!({"t": "o", "f": String::from_utf8_lossy(frame)}),
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn send(&self, to: UserId, ev: Event) {
        if self.sessions.deliver(to, &ev) {
            return;
        }
        if let Err(e) = self.publish.try_send((to, ev)) {
            let (to, ev) = e.into_inner();
            tracing::warn!(user = to, "bus publish queue full; event dropped");
            self.owe(to, &ev);
        }
    }

    async fn ready(&self) -> Result<(), String> {
        if !self.subscribed.load(Ordering::Relaxed) {
            return Err("Redis pub/sub is not connected".into());
        }
        let ping = async {
            let mut c = self.conn().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("Redis: {e}")),
            Err(_) => Err("Redis did not answer PING within 2 s".into()),
        }
    }

    async fn online(&self, users: &[UserId]) -> Vec<bool> {
        let mut out: Vec<bool> = users
            .iter()
            .map(|u| self.sessions.get(*u).is_some())
            .collect();
        let remote: Vec<(usize, String)> = users
            .iter()
            .enumerate()
            .filter(|(i, _)| !out[*i])
            .map(|(i, u)| (i, lease_key(*u)))
            .collect();
        if remote.is_empty() {
            return out;
        }
        let Ok(mut c) = self.conn().await else {
            return out;
        };
        let keys: Vec<&str> = remote.iter().map(|(_, k)| k.as_str()).collect();
        match redis::cmd("MGET")
            .arg(&keys)
            .query_async::<Vec<Option<String>>>(&mut c)
            .await
        {
            Ok(vals) => {
                for ((i, _), v) in remote.iter().zip(vals) {
                    out[*i] = v.is_some();
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence lookup failed; reporting offline"),
        }
        out
    }

    async fn claim(&self, user: UserId, sid: u64) {
        let (tx, rx) = oneshot::channel();
        let _ = self.sub.send(SubCmd::Subscribe(user, tx));
        // Subscribed before the login replays storage, so nothing falls between.
        if tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .is_err()
        {
            tracing::warn!(
                user,
                "could not subscribe in time (Redis down?); will resync on reconnect"
            );
        }
        let Ok(mut c) = self.conn().await else { return };
        let kick = encode_event(&Event::Kick { sid }, &self.cfg.node).to_string();
        let r: redis::RedisResult<()> = redis::pipe()
            .cmd("SET")
            .arg(lease_key(user))
            .arg(self.lease_value(sid))
            .arg("PX")
            .arg(self.cfg.lease.as_millis() as u64)
            .ignore()
            .cmd("PUBLISH")
            .arg(chan(user))
            .arg(kick)
            .ignore()
            .query_async(&mut c)
            .await;
        if let Err(e) = r {
            tracing::warn!(user, error = %e, "could not record presence lease");
        }
    }

    fn shutdown(&self) {
        self.stop.cancel();
    }

    async fn release(&self, user: UserId, sid: u64) {
        let _ = self.sub.send(SubCmd::Unsubscribe(user));
        let Ok(mut c) = self.conn().await else { return };
        let r: redis::RedisResult<i64> = redis::Script::new(RELEASE)
            .key(lease_key(user))
            .arg(self.lease_value(sid))
            .invoke_async(&mut c)
            .await;
        if let Err(e) = r {
            tracing::warn!(user, error = %e, "could not release presence lease (it will lapse)");
        }
    }
}

/// Publishes events in the order they were sent, pipelining what is queued.
/// Recipients of events that failed are owed a resync, published first in a
/// later batch that gets through.
async fn publisher(bus: Arc<RedisBus>, mut rx: mpsc::Receiver<(UserId, Event)>) {
    let mut batch = Vec::with_capacity(512);
    loop {
        let owed_waiting = !bus
            .owed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        tokio::select! {
            _ = bus.stop.cancelled() => return,
            n = rx.recv_many(&mut batch, 512) => if n == 0 { return },
            // Retry owed resyncs even when no new traffic comes.
            _ = tokio::time::sleep(Duration::from_millis(500)), if owed_waiting => {}
        }
        let owed: Vec<UserId> =
            std::mem::take(&mut *bus.owed.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        if owed.is_empty() && batch.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for &to in &owed {
            pipe.cmd("PUBLISH")
                .arg(chan(to))
                .arg(encode_event(&Event::Redeliver, &bus.cfg.node).to_string())
                .ignore();
        }
        for (to, ev) in &batch {
            pipe.cmd("PUBLISH")
                .arg(chan(*to))
                .arg(encode_event(ev, &bus.cfg.node).to_string())
                .ignore();
        }
        let failed = match bus.conn().await {
            Ok(mut c) => match pipe.query_async::<()>(&mut c).await {
                Ok(()) => {
                    bus.sessions
                        .metrics
                        .bus_publishes
                        .inc_by((batch.len() + owed.len()) as u64);
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "publish failed; recipients will catch up from storage");
                    true
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "Redis unreachable; events dropped, messages stay stored");
                true
            }
        };
        if failed {
            bus.sessions
                .metrics
                .bus_publish_failures
                .inc_by((batch.len() + owed.len()) as u64);
            for to in owed {
                bus.owe(to, &Event::Redeliver);
            }
            for (to, ev) in &batch {
                bus.owe(*to, ev);
            }
        }
        batch.clear();
    }
}

/// Owns the node's one pub/sub connection: (re)connects with backoff,
/// (re)subscribes every local user, and resyncs sessions after an outage.
async fn subscriber(bus: Arc<RedisBus>, mut cmds: mpsc::UnboundedReceiver<SubCmd>) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        if bus.stop.is_cancelled() {
            return;
        }
        let pubsub = match bus.client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                bus.subscribed.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "Redis pub/sub connect failed");
                // Keep answering subscribe requests so logins are not held up.
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        c = cmds.recv() => match c {
                            Some(SubCmd::Subscribe(_, ack)) => { let _ = ack.send(()); }
                            Some(SubCmd::Unsubscribe(_)) => {}
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let users = bus.sessions.users();
        let chans: Vec<String> = users.iter().map(|u| chan(*u)).collect();
        let mut ok = true;
        for chunk in chans.chunks(1000) {
            if let Err(e) = sink.subscribe(chunk).await {
                tracing::warn!(error = %e, "resubscribe failed");
                ok = false;
                break;
            }
        }
        if !ok {
            bus.subscribed.store(false, Ordering::Relaxed);
            continue;
        }
        backoff = Duration::from_millis(100);
        bus.subscribed.store(true, Ordering::Relaxed);
        if first {
            tracing::info!(node = %bus.cfg.node, "connected to Redis");
        } else {
            bus.sessions.metrics.bus_reconnects.inc();
            tracing::info!(node = %bus.cfg.node, sessions = users.len(), "reconnected to Redis; sessions catch up from storage");
            for u in users {
                if let Some(h) = bus.sessions.get(u) {
                    h.redeliver();
                }
            }
        }
        first = false;
        loop {
            tokio::select! {
                _ = bus.stop.cancelled() => return,
                m = stream.next() => match m {
                    Some(msg) => bus.on_message(msg.get_channel_name(), msg.get_payload_bytes()),
                    None => {
                        bus.subscribed.store(false, Ordering::Relaxed);
                        tracing::warn!("Redis pub/sub connection lost; reconnecting");
                        break;
                    }
                },
                c = cmds.recv() => match c {
                    Some(SubCmd::Subscribe(u, ack)) => {
                        if let Err(e) = sink.subscribe(chan(u)).await {
                            tracing::warn!(user = u, error = %e, "subscribe failed");
                        }
                        let _ = ack.send(());
                    }
                    Some(SubCmd::Unsubscribe(u)) => {
                        // A newer login of the same user here keeps the channel.
                        if bus.sessions.get(u).is_none() {
                            let _ = sink.unsubscribe(chan(u)).await;
                        }
                    }
                    None => return,
                },
            }
        }
    }
}

/// Renews the presence lease of every local session, a third of a lease apart.
async fn renewer(bus: Arc<RedisBus>) {
    let every = bus.cfg.lease / 3;
    let script = redis::Script::new(RENEW);
    loop {
        tokio::select! {
            _ = bus.stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let handles: Vec<_> = bus
            .sessions
            .users()
            .into_iter()
            .filter_map(|u| bus.sessions.get(u))
            .collect();
        if handles.is_empty() {
            continue;
        }
        let Ok(mut c) = bus.conn().await else {
            continue;
        };
        for chunk in handles.chunks(500) {
            // EVALSHA in a pipeline does not load the script by itself, and
            // a restarted Redis has forgotten it: load it first, every time.
            let mut pipe = redis::pipe();
            pipe.load_script(&script).ignore();
            for h in chunk {
                pipe.invoke_script(
                    script
                        .key(lease_key(h.user))
                        .arg(bus.lease_value(h.sid))
                        .arg(bus.cfg.lease.as_millis() as u64),
                )
                .ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut c).await {
                tracing::warn!(error = %e, "lease renewal failed");
                break;
            }
        }
    }
}
