//! The chat service: the state every connection of a node shares, and the
//! work commands (see [`crate::cmd`]) have in common: sessions, the login
//! replay, delivery bookkeeping.

pub mod delivery;
pub mod replay;
pub mod session;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::bus::Bus;
use crate::committer::Committer;
use crate::config::Config;
use crate::outbox::Written;
use crate::password::Passwords;
use crate::sessions::{Backlog, Sessions, StoreBacklog};
use crate::store::{Store, UserId};

use crate::throttle::{AddrConns, FailureThrottle, LogEvery, RateLimiter};
pub use session::Session;

/// The chat service of one node: its configuration, storage, group commit,
/// bus, sessions, password hashing and limits, which every connection and
/// command uses. Passed around explicitly (no singleton), so several nodes
/// can live in one process (tests do).
pub struct Service {
    /// Tuning and limits.
    pub cfg: Config,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// The group-commit writer.
    pub committer: Committer,
    /// Routing and presence.
    pub bus: Arc<dyn Bus>,
    /// Sessions on this node.
    pub sessions: Arc<Sessions>,
    /// Password hashing.
    pub passwords: Passwords,
    /// Storage reads of sessions catching up (login replay, gap fill).
    pub backlog: Arc<Backlog>,
    /// Per-address and per-account limits.
    pub guards: Guards,
    /// The node's metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What connection writers report their writes to.
    pub written: Arc<dyn Written>,
    next_sid: AtomicU64,
}

impl Service {
    /// Assembles the state.
    pub fn new(
        cfg: Config,
        store: Arc<dyn Store>,
        committer: Committer,
        bus: Arc<dyn Bus>,
        sessions: Arc<Sessions>,
        passwords: Passwords,
    ) -> Self {
        let backlog = Arc::new(Backlog::new(
            Arc::new(StoreBacklog(store.clone())),
            cfg.backlog_page,
            cfg.backlog_reads,
            // A client that reads nothing for this long while catching up
            // is dropped as too slow; its messages stay stored.
            std::time::Duration::from_secs(30),
            sessions.metrics.clone(),
        ));
        let guards = Guards::new(&cfg);
        Service {
            metrics: sessions.metrics.clone(),
            written: Arc::new(delivery::Confirmations(committer.clone())),
            backlog,
            guards,
            cfg,
            store,
            committer,
            bus,
            sessions,
            passwords,
            next_sid: AtomicU64::new(1),
        }
    }

    /// A session id unique on this node.
    pub fn next_sid(&self) -> u64 {
        self.next_sid.fetch_add(1, Ordering::Relaxed)
    }
}

/// The limits that keep one address or one account from costing everyone.
pub struct Guards {
    /// REG per client address.
    pub reg: RateLimiter<IpAddr>,
    /// Failed password logins per account.
    pub login_user: FailureThrottle<UserId>,
    /// Failed password logins per client address.
    pub login_addr: FailureThrottle<IpAddr>,
    /// Open connections per client address.
    pub conns: AddrConns,
    /// Open connections of the node, TCP and WebSocket alike.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Frames before login, per client address.
    pub prelogin: RateLimiter<IpAddr>,
    /// Re-routing of retried sends per sender: each one costs reads.
    pub reroute: RateLimiter<UserId>,
    /// Friend and group changes per user.
    pub social: RateLimiter<UserId>,
    /// Deliveries each sender causes (charged after the commit).
    pub fanout: RateLimiter<UserId>,
    /// Refused connections, for rate-limited logging.
    pub refused_log: LogEvery,
}

impl Guards {
    fn new(cfg: &Config) -> Self {
        // A failure run is forgotten a quarter hour after its last failure.
        let forget = std::time::Duration::from_secs(900);
        let base = std::time::Duration::from_secs(1);
        let free = |n: u32| if n == 0 { u32::MAX } else { n };
        Guards {
            reg: RateLimiter::new(
                f64::from(cfg.reg_per_ip_per_min) / 60.0,
                cfg.reg_per_ip_per_min,
            ),
            login_user: FailureThrottle::new(
                free(cfg.login_failures_per_account),
                base,
                cfg.login_block_max,
                forget,
            ),
            login_addr: FailureThrottle::new(
                free(cfg.login_failures_per_ip),
                base,
                cfg.login_block_max,
                forget,
            ),
            conns: AddrConns::new(cfg.max_connections_per_ip),
            slots: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1))),
            reroute: RateLimiter::new(10.0, 100),
            prelogin: RateLimiter::new(
                f64::from(cfg.prelogin_per_ip_per_sec),
                cfg.prelogin_per_ip_per_sec.saturating_mul(10),
            ),
            social: RateLimiter::new(
                f64::from(cfg.quotas.social_per_min) / 60.0,
                cfg.quotas.social_per_min,
            ),
            fanout: RateLimiter::new(
                f64::from(cfg.quotas.fanout_per_sec),
                cfg.quotas.fanout_per_sec,
            ),
            refused_log: LogEvery::default(),
        }
    }
}
