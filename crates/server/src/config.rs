//! Server tuning. `chat-server` fills this from flags and environment
//! variables; tests build it directly. Defaults follow the protocol.

use std::time::Duration;

use chat_protocol::limits;

/// Field limits enforced on every request (errno 6 when broken).
#[derive(Debug, Clone)]
pub struct Limits {
    /// User names: 1..=this many characters.
    pub name_chars: usize,
    /// Passwords: 1..=this many bytes.
    pub password_bytes: usize,
    /// Group names: 1..=this many characters.
    pub group_name_chars: usize,
    /// Group descriptions: up to this many characters.
    pub group_desc_chars: usize,
    /// Message text: 1..=this many bytes.
    pub msg_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            name_chars: limits::MAX_NAME_CHARS,
            password_bytes: limits::MAX_PASSWORD_BYTES,
            group_name_chars: limits::MAX_GROUP_NAME_CHARS,
            group_desc_chars: limits::MAX_GROUP_DESC_CHARS,
            msg_bytes: limits::MAX_MSG_BYTES,
        }
    }
}

/// argon2id cost. The default is OWASP's recommendation (19 MiB, 2 passes).
#[derive(Debug, Clone)]
pub struct HashCost {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
    /// Hashes computed at once; more wait in line.
    pub concurrency: usize,
    /// Hashes allowed to wait in line before LOGIN/REG get errno 10.
    pub queue: usize,
}

impl Default for HashCost {
    fn default() -> Self {
        HashCost {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            queue: 1024,
        }
    }
}

/// Per-user quotas (errno 4 past them) and rates (errno 9). 0 turns one off.
#[derive(Debug, Clone)]
pub struct Quotas {
    /// Groups one user may have created (and not disbanded).
    pub groups_created: i64,
    /// Friends one user may have.
    pub friends: i64,
    /// Members one group may have.
    pub group_members: i64,
    /// Friend and group changes (add, create, join) per user per minute;
    /// also the burst.
    pub social_per_min: u32,
    /// Deliveries (recipients of messages) one sender may cause per second;
    /// also the burst.
    pub fanout_per_sec: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            groups_created: 100,
            friends: 1000,
            group_members: 1000,
            social_per_min: 60,
            fanout_per_sec: 5000,
        }
    }
}

/// Everything a server instance needs besides its listener, store and bus.
#[derive(Debug, Clone)]
pub struct Config {
    /// Longest client frame in bytes.
    pub max_frame: usize,
    /// Open connections at most; more are told errno 10 and closed.
    pub max_connections: usize,
    /// Frames queued for one client before it counts as too slow and is dropped.
    pub outbound_queue: usize,
    /// Bytes queued for one client before it counts as too slow.
    pub outbound_bytes: usize,
    /// Requests one connection may have in flight (pipelined).
    pub max_inflight: usize,
    /// Sustained frames per second per connection; 0 turns limiting off.
    pub rate_limit: u32,
    /// Burst allowance on top of `rate_limit`.
    pub rate_burst: u32,
    /// A connection must log in within this long of connecting (or of its
    /// LOGINOUT); frames sent meanwhile do not extend it.
    pub login_idle_timeout: Duration,
    /// Open connections per client address at most (0: no cap). Generous:
    /// many users can sit behind one NAT.
    pub max_connections_per_ip: usize,
    /// REG requests per client address per minute (errno 9 beyond); also the
    /// burst. 0: no limit.
    pub reg_per_ip_per_min: u32,
    /// Frames per second that connections not logged in may send, summed
    /// over a client address (the burst is ten seconds' worth); beyond, the
    /// connection is closed with errno 9. 0: no limit.
    pub prelogin_per_ip_per_sec: u32,
    /// Failed password logins per account before each further one blocks it
    /// for a growing delay (errno 9). 0: no throttle.
    pub login_failures_per_account: u32,
    /// Failed password logins per address before the same.
    pub login_failures_per_ip: u32,
    /// Longest delay a run of failed logins earns.
    pub login_block_max: Duration,
    /// Quotas and rates per user: one user must not cost others more than
    /// their share.
    pub quotas: Quotas,
    /// Load balancers whose connections start with a PROXY protocol header
    /// naming the real client; nobody else may send one.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Lifetime of level-2 login tokens.
    pub token_ttl: Duration,
    /// How long shutdown waits for connections to flush.
    pub shutdown_grace: Duration,
    /// Password hashing cost.
    pub hash: HashCost,
    /// Largest group-commit batch.
    pub commit_batch: usize,
    /// Writes waiting for the committer before senders wait.
    pub commit_queue: usize,
    /// Offline messages put inside a level-1 login ack; the rest follow as pushes.
    pub l1_offline_in_ack: usize,
    /// Rows per page when replaying undelivered messages.
    pub backlog_page: i64,
    /// Sessions reading their backlog from storage at once (gap fills and
    /// catch-ups after a bus outage); more wait their turn.
    pub backlog_reads: usize,
    /// Field limits.
    pub limits: Limits,
    /// The web origins (`scheme://host[:port]`) whose pages may open the
    /// WebSocket; empty: only pages served from the same host and port.
    /// `*` allows any.
    pub http_allow_origins: Vec<String>,
    /// How often confirmed inbox rows (and, with `retention`, old messages)
    /// are pruned.
    pub prune_every: Duration,
    /// Messages older than this are deleted once all their deliveries are
    /// confirmed; None keeps history for ever.
    pub retention: Option<Duration>,
    /// How often a WebSocket is pinged; one that answers nothing for two
    /// and a half rounds is closed.
    pub ws_ping_every: Duration,
    /// TLS on both listeners (chat and HTTP); None: plain TCP and HTTP.
    pub tls: Option<std::sync::Arc<crate::tls::Tls>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame: limits::MAX_FRAME,
            max_connections: 10_000,
            outbound_queue: 1024,
            outbound_bytes: 4 << 20,
            max_inflight: 64,
            rate_limit: 5_000,
            rate_burst: 5_000,
            login_idle_timeout: Duration::from_secs(30),
            max_connections_per_ip: 256,
            reg_per_ip_per_min: 30,
            prelogin_per_ip_per_sec: 50,
            login_failures_per_account: 5,
            login_failures_per_ip: 100,
            login_block_max: Duration::from_secs(300),
            trusted_proxies: Vec::new(),
            quotas: Quotas::default(),
            token_ttl: Duration::from_secs(14 * 24 * 3600),
            shutdown_grace: Duration::from_secs(5),
            hash: HashCost::default(),
            commit_batch: 1024,
            commit_queue: 16_384,
            l1_offline_in_ack: 100,
            backlog_page: 256,
            backlog_reads: 16,
            limits: Limits::default(),
            http_allow_origins: Vec::new(),
            ws_ping_every: Duration::from_secs(30),
            prune_every: Duration::from_secs(10),
            retention: None,
            tls: None,
        }
    }
}
