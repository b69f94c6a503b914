//! `chat-server`: runs one clusterchat node.
//!
//! With no arguments it listens on 127.0.0.1:6000 for chat clients, serves
//! the web client on http://127.0.0.1:8080, and keeps its data in
//! `./clusterchat.db` (SQLite, WAL), creating and migrating it as needed.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use clusterchat::bus::redis::RedisBusConfig;
use clusterchat::config::{Config, HashCost, Quotas};
use clusterchat::store::{self, StoreOptions};
use clusterchat::tls::Tls;
use clusterchat::Node;
use tokio_util::sync::CancellationToken;

/// mimalloc: the server allocates many small, short-lived buffers per
/// message, where glibc's malloc showed up at ~12% of CPU in profiles. Built
/// without transparent huge pages (see the workspace Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SQLite durability.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Synchronous {
    /// fsync at every commit: a message that was ACKed survives power loss.
    Full,
    /// fsync at checkpoints only: survives a crash of the server, not of the machine.
    Normal,
}

/// Every default below comes from here ([`Config::default`] and
/// [`StoreOptions::default`]), so the flags and the library cannot disagree.
static DEFAULTS: LazyLock<(Config, StoreOptions)> =
    LazyLock::new(|| (Config::default(), StoreOptions::default()));

/// The library's defaults for the server.
fn cfg() -> &'static Config {
    &DEFAULTS.0
}

/// The library's defaults for the store.
fn store_opts() -> &'static StoreOptions {
    &DEFAULTS.1
}

/// Presence lease without `--presence-lease-secs`, in seconds.
const DEFAULT_LEASE_SECS: u64 = 30;

/// Parses a count that must be at least 1 (a queue, a page or a window of
/// zero would stall or panic), with an error that says so.
fn at_least_one<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
    T::Err: std::fmt::Display,
{
    let n: T = s.parse().map_err(|e| format!("{e}"))?;
    if n < T::from(1) {
        return Err("must be at least 1".to_owned());
    }
    Ok(n)
}

/// The clusterchat server.
#[derive(Debug, Parser)]
#[command(name = "chat-server", version, about, long_about = None)]
struct Args {
    /// Without a command, run the server.
    #[command(subcommand)]
    command: Option<Command>,

    /// Address to listen on.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:6000")]
    listen: SocketAddr,

    /// Address of the HTTP listener: the web client at `/` and its WebSocket
    /// at `/ws`. `off` turns it off. Default: 127.0.0.1:8080 on a single
    /// node, off in cluster mode (give each node its own).
    #[arg(long, env = "CHAT_HTTP_LISTEN", value_name = "ADDR|off")]
    http_listen: Option<String>,

    /// Web origins (`https://chat.example.com`) whose pages may open the
    /// WebSocket, comma-separated; `*` allows any. Default: only pages
    /// served from the same host and port.
    #[arg(long, env = "CHAT_HTTP_ALLOW_ORIGINS", value_delimiter = ',')]
    http_allow_origin: Vec<String>,

    /// Delete messages older than this many days (fractions allowed) from
    /// history, once every recipient has them. Default: keep history for
    /// ever. Confirmed delivery rows are pruned either way.
    #[arg(long, env = "CHAT_RETENTION_DAYS", value_name = "DAYS")]
    retention_days: Option<f64>,

    /// Seconds between WebSocket pings; a client silent for 2.5 rounds is
    /// dropped.
    #[arg(long, env = "CHAT_WS_PING_SECS", default_value_t = cfg().ws_ping_every.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    ws_ping_secs: u64,

    /// TLS certificate chain (PEM, leaf first): both listeners speak TLS
    /// only (the web client becomes https, its WebSocket wss). Needs
    /// --tls-key. SIGHUP reads both files again.
    #[arg(long, env = "CHAT_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, env = "CHAT_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// Database URL: sqlite://PATH (created if missing) or mysql://USER:PASS@HOST:PORT/DB.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://clusterchat.db",
        global = true
    )]
    database_url: String,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `clusterchat=debug`).
    /// Admin commands log warnings only unless it is set.
    #[arg(long, env = "CHAT_LOG")]
    log: Option<String>,

    /// Log line format: `text` for people, `json` (one object per line, a
    /// field per key: user, peer, msgid, errno, ...) for log shippers.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    /// Most open client connections; more are refused with errno 10.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = cfg().max_connections)]
    max_connections: usize,

    /// Longest client frame in bytes; longer ones get errno 8 and a close.
    #[arg(long, env = "CHAT_MAX_FRAME", default_value_t = cfg().max_frame)]
    max_frame: usize,

    /// Frames queued for one client before it counts as too slow and is disconnected.
    #[arg(long, env = "CHAT_OUTBOUND_QUEUE", default_value_t = cfg().outbound_queue)]
    outbound_queue: usize,

    /// Bytes queued for one client before it counts as too slow: pushes beyond
    /// disconnect it (its messages stay stored), replies wait for room.
    #[arg(long, env = "CHAT_OUTBOUND_BYTES", default_value_t = cfg().outbound_bytes)]
    outbound_bytes: usize,

    /// Requests one connection may have in flight at once (pipelined); the
    /// connection reads no further frame until one of them finishes.
    #[arg(long, env = "CHAT_MAX_INFLIGHT", value_name = "N",
          value_parser = at_least_one::<usize>, default_value_t = cfg().max_inflight)]
    max_inflight: usize,

    /// Sustained requests per second per connection (errno 9 beyond); 0 = unlimited.
    #[arg(long, env = "CHAT_RATE_LIMIT", default_value_t = cfg().rate_limit)]
    rate_limit: u32,

    /// Requests per connection allowed at once above the sustained rate.
    #[arg(long, env = "CHAT_RATE_BURST", default_value_t = cfg().rate_burst)]
    rate_burst: u32,

    /// Seconds a new connection has to log in (frames do not extend it).
    #[arg(long, env = "CHAT_LOGIN_IDLE_SECS", default_value_t = cfg().login_idle_timeout.as_secs())]
    login_idle_secs: u64,

    /// Open connections per client address at most (0 = no cap). Generous,
    /// for many users behind one NAT.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_IP", default_value_t = cfg().max_connections_per_ip)]
    max_connections_per_ip: usize,

    /// Registrations per client address per minute (errno 9 beyond).
    #[arg(long, env = "CHAT_REG_PER_IP_PER_MIN", default_value_t = cfg().reg_per_ip_per_min)]
    reg_per_ip_per_min: u32,

    /// Frames per second that connections not yet logged in may send, summed
    /// per client address (burst: ten seconds' worth); beyond, errno 9 and
    /// the connection closes. 0 = no limit.
    #[arg(long, env = "CHAT_PRELOGIN_PER_IP_PER_SEC", default_value_t = cfg().prelogin_per_ip_per_sec)]
    prelogin_per_ip_per_sec: u32,

    /// Failed password logins per account before growing delays (errno 9).
    #[arg(long, env = "CHAT_LOGIN_FAILURES_PER_ACCOUNT", default_value_t = cfg().login_failures_per_account)]
    login_failures_per_account: u32,

    /// Failed password logins per client address before growing delays.
    #[arg(long, env = "CHAT_LOGIN_FAILURES_PER_IP", default_value_t = cfg().login_failures_per_ip)]
    login_failures_per_ip: u32,

    /// Longest delay, in seconds, that a run of failed logins earns an
    /// account or address.
    #[arg(long, env = "CHAT_LOGIN_BLOCK_MAX_SECS", default_value_t = cfg().login_block_max.as_secs())]
    login_block_max_secs: u64,

    /// Quota: groups one user may have created (errno 4 beyond; 0 = none).
    #[arg(long, env = "CHAT_QUOTA_GROUPS_CREATED", default_value_t = cfg().quotas.groups_created)]
    quota_groups_created: i64,

    /// Quota: friends per user.
    #[arg(long, env = "CHAT_QUOTA_FRIENDS", default_value_t = cfg().quotas.friends)]
    quota_friends: i64,

    /// Quota: members per group.
    #[arg(long, env = "CHAT_QUOTA_GROUP_MEMBERS", default_value_t = cfg().quotas.group_members)]
    quota_group_members: i64,

    /// Friend and group changes per user per minute (errno 9 beyond; 0 = no limit).
    #[arg(long, env = "CHAT_SOCIAL_PER_MIN", default_value_t = cfg().quotas.social_per_min)]
    social_per_min: u32,

    /// Deliveries one sender may cause per second, counting each recipient
    /// of each message (errno 9 beyond; 0 = no limit).
    #[arg(long, env = "CHAT_FANOUT_PER_SEC", default_value_t = cfg().quotas.fanout_per_sec)]
    fanout_per_sec: u32,

    /// Load balancer addresses whose connections start with a PROXY protocol
    /// (v1 or v2) header naming the real client, comma-separated (nginx:
    /// `proxy_protocol on`). Only these may send one, and they must. On the
    /// HTTP listener their `X-Real-IP` header names the client.
    #[arg(long, env = "CHAT_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<std::net::IpAddr>,

    /// Lifetime of level-2 login tokens, in days.
    #[arg(long, env = "CHAT_TOKEN_TTL_DAYS", default_value_t = cfg().token_ttl.as_secs() / (24 * 3600))]
    token_ttl_days: u64,

    /// Seconds shutdown waits for connections to flush and log out.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE_SECS", default_value_t = cfg().shutdown_grace.as_secs())]
    shutdown_grace_secs: u64,

    /// argon2id memory cost in KiB (OWASP: 19456).
    #[arg(long, env = "CHAT_ARGON2_M_KIB", default_value_t = cfg().hash.m_kib, global = true)]
    argon2_m_kib: u32,

    /// argon2id passes.
    #[arg(long, env = "CHAT_ARGON2_T", default_value_t = cfg().hash.t, global = true)]
    argon2_t: u32,

    /// Password hashes computed at once (default: this machine's CPUs).
    #[arg(long, env = "CHAT_ARGON2_CONCURRENCY", value_name = "N",
          value_parser = at_least_one::<usize>, default_value_t = cfg().hash.concurrency)]
    argon2_concurrency: usize,

    /// Password hashes that may wait for a turn; LOGIN and REG beyond get errno 10.
    #[arg(long, env = "CHAT_ARGON2_QUEUE", default_value_t = cfg().hash.queue)]
    argon2_queue: usize,

    /// Database connections for reads.
    #[arg(long, env = "CHAT_POOL_SIZE", default_value_t = store_opts().pool_size)]
    pool_size: u32,

    /// SQLite durability: `full` fsyncs every group commit.
    #[arg(long, env = "CHAT_SQLITE_SYNCHRONOUS", value_enum,
          default_value_t = if store_opts().sqlite_synchronous_full { Synchronous::Full } else { Synchronous::Normal })]
    sqlite_synchronous: Synchronous,

    /// Redis URL (e.g. redis://127.0.0.1:6379/): run as a cluster node. Without it the node is standalone.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,

    /// This node's name in the cluster (default: HOST:PORT of --listen).
    #[arg(long, env = "CHAT_NODE_ID")]
    node_id: Option<String>,

    /// Seconds a crashed node's users still read as online (presence lease).
    #[arg(long, env = "CHAT_PRESENCE_LEASE_SECS", default_value_t = DEFAULT_LEASE_SECS)]
    presence_lease_secs: u64,

    /// Most writes in one group commit.
    #[arg(long, env = "CHAT_COMMIT_BATCH", default_value_t = cfg().commit_batch)]
    commit_batch: usize,

    /// Writes that may wait for the committer (messages, confirmations,
    /// social changes); senders beyond wait for room.
    #[arg(long, env = "CHAT_COMMIT_QUEUE", value_name = "N",
          value_parser = at_least_one::<usize>, default_value_t = cfg().commit_queue)]
    commit_queue: usize,

    /// Undelivered messages a level-1 LOGIN ack carries inside it; the rest
    /// follow as pushes.
    #[arg(long, env = "CHAT_L1_OFFLINE_IN_ACK", value_name = "N",
          value_parser = at_least_one::<usize>, default_value_t = cfg().l1_offline_in_ack)]
    l1_offline_in_ack: usize,

    /// Rows per storage read when a session replays undelivered messages:
    /// the backlog at level-2 login, and the resync after a gap or a bus
    /// outage.
    #[arg(long, env = "CHAT_BACKLOG_PAGE", value_name = "ROWS",
          value_parser = at_least_one::<i64>, default_value_t = cfg().backlog_page)]
    backlog_page: i64,

    /// Sessions reading their backlog from storage at once (resyncs after a
    /// gap or a bus outage); more wait their turn.
    #[arg(long, env = "CHAT_BACKLOG_READS", value_name = "N",
          value_parser = at_least_one::<usize>, default_value_t = cfg().backlog_reads)]
    backlog_reads: usize,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines (coloured at a terminal unless NO_COLOR is set).
    Text,
    /// One JSON object per line.
    Json,
}

/// What `chat-server` runs besides the server.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Operator commands: list users, reset a password, disable, enable or
    /// delete a user, back up the database. They use the server's
    /// --database-url (DATABASE_URL) and need no server stopped: running
    /// nodes close the sessions of accounts disabled, deleted or reset
    /// within a few seconds.
    Admin {
        #[command(subcommand)]
        command: clusterchat::admin::cli::AdminCommand,
    },
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let admin = args.command.take();
    let default_log = if admin.is_some() { "warn" } else { "info" };
    let log = args.log.clone().unwrap_or_else(|| default_log.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&log)
        .with_context(|| format!("bad --log filter {log:?}"))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match admin {
        Some(Command::Admin { command }) => {
            let hash = HashCost {
                m_kib: args.argon2_m_kib,
                t: args.argon2_t,
                ..cfg().hash.clone()
            };
            rt.block_on(clusterchat::admin::cli::run(
                command,
                &args.database_url,
                hash,
            ))
        }
        None => rt.block_on(run(args)),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(Tls::load(cert, key)?)),
        _ => None,
    };
    let cfg = Config {
        max_frame: args.max_frame,
        max_connections: args.max_connections,
        outbound_queue: args.outbound_queue,
        outbound_bytes: args.outbound_bytes,
        max_inflight: args.max_inflight,
        rate_limit: args.rate_limit,
        rate_burst: args.rate_burst,
        login_idle_timeout: Duration::from_secs(args.login_idle_secs),
        max_connections_per_ip: args.max_connections_per_ip,
        reg_per_ip_per_min: args.reg_per_ip_per_min,
        prelogin_per_ip_per_sec: args.prelogin_per_ip_per_sec,
        login_failures_per_account: args.login_failures_per_account,
        login_failures_per_ip: args.login_failures_per_ip,
        login_block_max: Duration::from_secs(args.login_block_max_secs),
        trusted_proxies: args.trusted_proxies.clone(),
        quotas: Quotas {
            groups_created: args.quota_groups_created,
            friends: args.quota_friends,
            group_members: args.quota_group_members,
            social_per_min: args.social_per_min,
            fanout_per_sec: args.fanout_per_sec,
        },
        token_ttl: Duration::from_secs(args.token_ttl_days * 24 * 3600),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        hash: HashCost {
            m_kib: args.argon2_m_kib,
            t: args.argon2_t,
            concurrency: args.argon2_concurrency,
            queue: args.argon2_queue,
            ..cfg().hash.clone()
        },
        commit_batch: args.commit_batch,
        commit_queue: args.commit_queue,
        l1_offline_in_ack: args.l1_offline_in_ack,
        backlog_page: args.backlog_page,
        backlog_reads: args.backlog_reads,
        http_allow_origins: args.http_allow_origin.clone(),
        ws_ping_every: Duration::from_secs(args.ws_ping_secs),
        retention: retention(args.retention_days)?,
        tls: tls.clone(),
        ..cfg().clone()
    };
    let opts = StoreOptions {
        pool_size: args.pool_size,
        sqlite_synchronous_full: matches!(args.sqlite_synchronous, Synchronous::Full),
        background: true,
    };
    let store = store::open(&args.database_url, &opts)
        .await
        .with_context(|| format!("cannot open database {}", redact_url(&args.database_url)))?;
    let listener =
        listen(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let http = match http_addr(args.http_listen.as_deref(), args.redis_url.is_some())? {
        None => None,
        Some(addr) => Some(listen(addr).with_context(|| {
            format!("cannot listen on {addr} for the web client (choose another with --http-listen ADDR, or turn it off with --http-listen off)")
        })?),
    };
    let node = match &args.redis_url {
        None => Node::single(cfg, store)?,
        Some(url) => {
            let node = args.node_id.clone().unwrap_or_else(|| {
                listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            });
            tracing::info!(%node, redis = %redact_url(url), "cluster mode");
            Node::clustered(
                cfg,
                store,
                RedisBusConfig {
                    url: url.clone(),
                    node,
                    lease: Duration::from_secs(args.presence_lease_secs.max(3)),
                },
            )?
        }
    };
    let http_at = match &http {
        Some(l) => l.local_addr()?.to_string(),
        None => "off".to_owned(),
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        http = %http_at,
        database = %redact_url(&args.database_url),
        max_connections = args.max_connections,
        tls = tls.is_some(),
        "clusterchat server ready"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    if let Some(tls) = tls {
        tokio::spawn(reload_tls_on_hangup(tls));
    }
    node.run_with_http(listener, http, shutdown).await
}

/// `--retention-days` as a duration; it must be positive.
fn retention(days: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match days {
        None => Ok(None),
        Some(d) if d.is_finite() && d > 0.0 && d < 1e6 => {
            Ok(Some(Duration::from_secs_f64(d * 24.0 * 3600.0)))
        }
        Some(d) => anyhow::bail!("--retention-days {d}: expected a positive number of days"),
    }
}

/// The HTTP listener's address from `--http-listen`: its default depends on
/// the mode, and `off` turns it off.
fn http_addr(arg: Option<&str>, clustered: bool) -> anyhow::Result<Option<SocketAddr>> {
    match arg.map(str::trim) {
        None if clustered => Ok(None),
        None => Ok(Some(SocketAddr::from(([127, 0, 0, 1], 8080)))),
        Some(a) if a.eq_ignore_ascii_case("off") || a.eq_ignore_ascii_case("none") => Ok(None),
        Some(a) => a.parse().map(Some).with_context(|| {
            format!("--http-listen {a:?}: expected an address like 127.0.0.1:8080, or off")
        }),
    }
}

/// `url` with any password replaced by `***`, for logs and error messages.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &url[scheme_end + at..]
        ),
        _ => url.to_owned(),
    }
}

/// Binds with a deep accept queue: std's default backlog is 128, and a
/// reconnect storm overflowing it costs clients a 1 s SYN retry each.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

/// Reads the TLS certificate and key again on every SIGHUP: new
/// connections get the new certificate, open ones go on. If the files do
/// not make a usable pair, the old ones stay in use.
async fn reload_tls_on_hangup(tls: Arc<Tls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: TLS certificates will not reload");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!(?tls, "TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "TLS certificate reload failed; keeping the old one"
                    )
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn signals(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    shutdown.cancel();
}
