//! A server node: its shared state, the accept loop, and graceful shutdown.
//!
//! [`Node::run`] takes a listener that is already bound, so tests bind
//! `127.0.0.1:0` and run several nodes in one process.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::local::LocalBus;
use crate::bus::redis::{RedisBus, RedisBusConfig};
use crate::bus::Bus;
use crate::bus::BusDispatch;
use crate::committer::{CommitTask, Committer};
use crate::config::Config;
use crate::frames;
use crate::password::Passwords;
use crate::service::Service;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::throttle::AddrPermit;

/// How often a node deletes dead login tokens that no login of their user
/// will prune.
const TOKEN_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);
/// Rows one sweep statement deletes at most.
const TOKEN_SWEEP_BATCH: i64 = 1000;
/// Statements one sweep runs at most, while each fills its batch.
const TOKEN_SWEEP_ROUNDS: u32 = 10;

/// A configured node, ready to serve.
pub struct Node {
    service: Arc<Service>,
    commit: CommitTask,
}

impl Node {
    /// A node whose bus `make_bus` builds over the node's sessions.
    pub fn new(
        cfg: Config,
        store: Arc<dyn Store>,
        make_bus: impl FnOnce(Arc<Sessions>) -> anyhow::Result<Arc<dyn Bus>>,
    ) -> anyhow::Result<Node> {
        let passwords = Passwords::new(&cfg.hash)?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let sessions = Arc::new(Sessions::new(metrics.clone()));
        let bus = make_bus(sessions.clone())?;
        let (committer, commit) = Committer::spawn(
            store.clone(),
            Arc::new(BusDispatch(bus.clone())),
            cfg.commit_batch,
            cfg.commit_queue,
            metrics,
        );
        let service = Arc::new(Service::new(
            cfg, store, committer, bus, sessions, passwords,
        ));
        Ok(Node { service, commit })
    }

    /// A single node with the in-process bus.
    pub fn single(cfg: Config, store: Arc<dyn Store>) -> anyhow::Result<Node> {
        Self::new(cfg, store, |s| Ok(Arc::new(LocalBus::new(s))))
    }

    /// A cluster node: sessions elsewhere are reached through Redis.
    pub fn clustered(
        cfg: Config,
        store: Arc<dyn Store>,
        redis: RedisBusConfig,
    ) -> anyhow::Result<Node> {
        Self::new(cfg, store, move |s| {
            Ok(RedisBus::start(redis, s)? as Arc<dyn Bus>)
        })
    }

    /// The node's chat service.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Accepts connections until `shutdown` fires, then stops accepting, lets
    /// connections flush and log out (bounded by the grace period), and
    /// commits what is queued.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        self.run_with_http(listener, None, shutdown).await
    }

    /// [`Node::run`], and serves the web client and its WebSocket on `http`
    /// too (see [`crate::http`]).
    pub async fn run_with_http(
        self,
        listener: TcpListener,
        http: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let sh = self.service;
        let tracker = TaskTracker::new();
        if let Some(http) = http {
            tracker.spawn(crate::http::run(
                http,
                sh.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        let slots = sh.guards.slots.clone();
        let sweeper = tokio::spawn(sweep_tokens(sh.store.clone(), shutdown.clone()));
        let pruner = tokio::spawn(prune(
            sh.store.clone(),
            sh.cfg.prune_every,
            sh.cfg.retention,
            shutdown.clone(),
        ));
        let watcher = tokio::spawn(crate::admin::watch(
            sh.store.clone(),
            sh.sessions.clone(),
            shutdown.clone(),
        ));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((sock, peer)) => match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let proxied = sh.cfg.trusted_proxies.contains(&peer.ip());
                            if proxied || sh.cfg.tls.is_some() {
                                tracker.spawn(admit_slow(sock, peer, proxied, sh.clone(), shutdown.clone(), permit, tracker.clone()));
                            } else {
                                admit(&tracker, sock, peer, &sh, &shutdown, permit);
                            }
                        }
                        Err(_) => {
                            if let Some(skipped) = sh.guards.refused_log.tick() {
                                tracing::warn!(%peer, max = sh.cfg.max_connections, refused_before = skipped, "connection limit reached; refusing");
                            }
                            tracker.spawn(refuse(sock, peer, sh.cfg.tls.clone()));
                        }
                    },
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        tracing::info!(
            connections = tracker.len(),
            "shutting down: no longer accepting"
        );
        tracker.close();
        let grace = sh.cfg.shutdown_grace + std::time::Duration::from_secs(2);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                left = tracker.len(),
                "connections still open after the grace period"
            );
        }
        let _ = sweeper.await;
        let _ = pruner.await;
        let _ = watcher.await;
        self.commit.shutdown().await;
        sh.bus.shutdown();
        sh.store.close().await;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Applies the per-address cap to the client at `client`, then serves the
/// (plain) connection in a task of its own.
fn admit(
    tracker: &TaskTracker,
    sock: tokio::net::TcpStream,
    client: std::net::SocketAddr,
    sh: &Arc<Service>,
    shutdown: &CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let Some(addr_permit) = addr_permit(client, sh) else {
        tracker.spawn(refuse(sock, client, None));
        return;
    };
    let conn = crate::connection::serve(sock, client, sh.clone(), shutdown, (permit, addr_permit));
    tracker.spawn(conn);
}

/// The per-address slot of the client at `client`; None (logged, rate
/// limited) when its address has all its slots.
fn addr_permit(client: std::net::SocketAddr, sh: &Arc<Service>) -> Option<AddrPermit> {
    let permit = sh.guards.conns.try_acquire(client.ip());
    if permit.is_none() {
        if let Some(skipped) = sh.guards.refused_log.tick() {
            tracing::warn!(peer = %client, max = sh.cfg.max_connections_per_ip, refused_before = skipped, "per-address connection limit reached; refusing");
        }
    }
    permit
}

/// Admits a connection that needs reading or a handshake first: learns the
/// client's real address from the PROXY header of a trusted load balancer
/// (`proxied`; the header comes first, in plain text, even with TLS), then
/// applies the per-address cap, then with TLS runs the handshake (bounded).
/// The connection is then served in a task of its own: this one's state
/// (the header read, the handshake) does not stay with it.
async fn admit_slow(
    mut sock: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    proxied: bool,
    sh: Arc<Service>,
    shutdown: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
    tracker: TaskTracker,
) {
    let client = if proxied {
        match crate::proxy::accept(&mut sock, peer, PROXY_HEADER_WAIT).await {
            Ok(a) => a,
            Err(e) => {
                if let Some(skipped) = sh.guards.refused_log.tick() {
                    tracing::warn!(%peer, error = %e, refused_before = skipped, "bad PROXY header from a trusted proxy; closing");
                }
                return;
            }
        }
    } else {
        peer
    };
    let Some(tls) = sh.cfg.tls.clone() else {
        admit(&tracker, sock, client, &sh, &shutdown, permit);
        return;
    };
    let Some(addr_permit) = addr_permit(client, &sh) else {
        refuse(sock, client, Some(tls)).await;
        return;
    };
    crate::connection::tune(&sock, client);
    let Some(stream) = tls.accept(sock, client).await else {
        return;
    };
    let conn =
        crate::connection::serve_tls(stream, client, sh.clone(), &shutdown, (permit, addr_permit));
    tracker.spawn(conn);
}

/// How long a trusted proxy has to send its PROXY header.
const PROXY_HEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Every [`TOKEN_SWEEP_EVERY`], deletes dead login tokens (expired, or past
/// their grace), a bounded number per round. Token writes prune their own
/// user's dead rows; this catches users who never log in again. Ends on
/// `stop`, between statements.
/// Users whose confirmed inbox rows one pruning step looks at.
const PRUNE_USERS: i64 = 200;
/// Confirmed rows one step deletes per user at most.
const PRUNE_PER_USER: i64 = 500;
/// Messages one retention step deletes at most.
const PRUNE_MESSAGES: i64 = 2000;

/// Every `every`: deletes confirmed inbox rows (they are never read again)
/// and, with a `retention`, messages older than that whose deliveries are
/// all confirmed. Works in small steps, each a short transaction on the
/// writer, so commits are never held up for long; between steps it yields.
/// Ends on `stop`, between steps.
async fn prune(
    store: Arc<dyn Store>,
    every: std::time::Duration,
    retention: Option<std::time::Duration>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (mut rows, mut messages, mut after) = (0u64, 0u64, 0);
        loop {
            if stop.is_cancelled() {
                return;
            }
            match store
                .prune_delivered(after, PRUNE_USERS, PRUNE_PER_USER)
                .await
            {
                Ok((n, next)) => {
                    rows += n;
                    // A user with more confirmed rows than one step takes
                    // gets the rest in the next round.
                    match next {
                        Some(u) => after = u,
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "pruning delivered rows failed; retrying next round");
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        if let Some(keep) = retention {
            let before = chat_protocol::time::unix_now() - keep.as_secs() as i64;
            loop {
                if stop.is_cancelled() {
                    return;
                }
                match store.prune_messages(before, PRUNE_MESSAGES).await {
                    Ok(n) => {
                        messages += n;
                        if n < PRUNE_MESSAGES as u64 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "retention failed; retrying next round");
                        break;
                    }
                }
                tokio::task::yield_now().await;
            }
        }
        if rows + messages > 0 {
            tracing::debug!(inbox_rows = rows, messages, "pruned");
        }
    }
}

async fn sweep_tokens(store: Arc<dyn Store>, stop: CancellationToken) {
    let start = tokio::time::Instant::now() + TOKEN_SWEEP_EVERY;
    let mut tick = tokio::time::interval_at(start, TOKEN_SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for _ in 0..TOKEN_SWEEP_ROUNDS {
            if stop.is_cancelled() {
                return;
            }
            let now = chat_protocol::time::unix_now();
            match store.prune_tokens(now, TOKEN_SWEEP_BATCH).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(deleted = n, "swept dead login tokens");
                    }
                    if n < TOKEN_SWEEP_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    // Another node sweeping at once, or the database is
                    // down: logins report that; try again next time.
                    tracing::debug!(error = %e, "token sweep failed");
                    break;
                }
            }
        }
    }
}

/// Tells a connection over the limits that the server is full (errno 10),
/// then closes it; over TLS after a handshake, bounded.
async fn refuse(
    sock: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<Arc<crate::tls::Tls>>,
) {
    let Some(tls) = tls else {
        return tell_full(sock).await;
    };
    let _ = tokio::time::timeout(REFUSE_HANDSHAKE_WAIT, async {
        if let Some(s) = tls.accept(sock, peer).await {
            tell_full(s).await;
        }
    })
    .await;
}

/// How long a refused TLS client has for its handshake.
const REFUSE_HANDSHAKE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

async fn tell_full<S: tokio::io::AsyncWrite + Unpin>(mut sock: S) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = sock.write_all(&frames::server_full()).await;
        let _ = sock.shutdown().await;
    })
    .await;
}
