//! `chat-bench`: the clusterchat load generator.
//!
//! It drives any server that speaks the clusterchat protocol, at level 1 or
//! 2, spreading its clients over one or more addresses, and can measure the
//! same scenario against a forward-only ceiling server (`--ceiling`) so that
//! each result also reads as a fraction of what the machine can do at all.
//!
//! Subcommands: `setup` (register users), `idle` (hold logged-in
//! connections, measure RSS), `direct` (one-to-one pairs), `group` (one
//! group fan-out), `ceiling` (run the forward-only server), `report`
//! (markdown medians over JSON-line results), `fsync-probe` (the disk's
//! durability floor).

mod ceiling;
mod client;
mod direct;
mod fsync;
mod group;
mod idle;
mod load;
mod progress;
mod report;
mod setup;
mod users;
mod wire;

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;

use crate::client::{Conn, Secret};
use crate::report::Report;
use crate::users::User;

/// The clusterchat load generator.
#[derive(Debug, Parser)]
#[command(name = "chat-bench", version, about, long_about = None)]
struct Cli {
    /// Server address; repeat it or separate with commas to spread clients
    /// over several servers (a cluster, or nginx in front of one).
    #[arg(
        long = "server",
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:6000"
    )]
    servers: Vec<String>,

    /// Protocol level of the bench's clients.
    #[arg(long, global = true, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    level: u8,

    /// Print one JSON line per run on stdout (the table goes to stderr).
    #[arg(long, global = true)]
    json: bool,

    /// No progress bar and no table on stderr.
    #[arg(long, global = true)]
    quiet: bool,

    /// Also run the scenario against a forward-only ceiling server started
    /// for the purpose, and report the real server as a fraction of it.
    #[arg(long, global = true)]
    ceiling: bool,

    /// Seconds any single wait may take (connect, reply, write).
    #[arg(long, global = true, default_value_t = 10.0)]
    timeout: f64,

    /// KEY=VALUE added to every JSON line (labels, server settings).
    #[arg(long = "note", global = true, value_parser = parse_note)]
    notes: Vec<(String, String)>,

    /// Exit with status 3 if any run counted errors.
    #[arg(long, global = true)]
    strict: bool,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Register N users and save them to a file.
    Setup(setup::Args),
    /// Log N connections in and hold them; report login time and server RSS.
    Idle(idle::Args),
    /// One-to-one: P sender/receiver pairs.
    Direct(direct::Args),
    /// One group of M online members, S of them sending.
    Group(group::Args),
    /// Run the forward-only ceiling server.
    Ceiling(CeilingArgs),
    /// Summarise JSON-line results as a markdown table of medians.
    Report(ReportArgs),
    /// Measure the disk's durability floor: fdatasync of small appends.
    FsyncProbe(fsync::Args),
    /// Internal: one process of a multi-process `idle`.
    #[command(hide = true)]
    IdleWorker(idle::WorkerArgs),
}

/// `ceiling` arguments.
#[derive(Debug, clap::Args)]
struct CeilingArgs {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:6100")]
    listen: SocketAddr,
    /// Frames queued per connection before a slow reader is dropped.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    /// Accounts (and tokens) to start with, from a users file.
    #[arg(long)]
    users: Option<PathBuf>,
    /// Exit when stdin closes (used when the bench starts it).
    #[arg(long, hide = true)]
    lifeline: bool,
}

/// `report` arguments.
#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// JSON-line files written with `--json`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn parse_note(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Settings every scenario shares.
pub struct Ctx {
    /// The real server(s).
    pub servers: Vec<SocketAddr>,
    /// Protocol level of the clients.
    pub level: u8,
    /// JSON-line output.
    pub json: bool,
    /// No progress bar, no table on stderr.
    pub quiet: bool,
    /// Also measure the ceiling.
    pub ceiling: bool,
    /// Bound on every single wait.
    pub timeout: Duration,
    /// Extra report fields.
    pub notes: Vec<(String, String)>,
    /// Origin of the send stamps.
    pub start: Instant,
    /// Tells this run's messages and names from older ones.
    pub run_id: u64,
}

/// Where a scenario runs: the real server(s) or the ceiling.
pub struct Endpoint {
    /// "server" or "ceiling".
    pub name: &'static str,
    /// Addresses to spread clients over.
    pub addrs: Vec<SocketAddr>,
    /// The process to read RSS from, when known.
    pub pid: Option<u32>,
}

impl Endpoint {
    /// Whether this is the forward-only ceiling.
    pub fn is_ceiling(&self) -> bool {
        self.name == "ceiling"
    }
}

/// Runs `f` against the real server, then (with `--ceiling`) against a
/// ceiling child process started for it, seeded with the accounts of the
/// users file `seed` when given (read after the server run).
pub async fn each_target<F, Fut>(
    ctx: &Ctx,
    seed: Option<PathBuf>,
    f: F,
) -> anyhow::Result<Vec<Report>>
where
    F: Fn(Endpoint) -> Fut,
    Fut: Future<Output = anyhow::Result<Report>>,
{
    let mut out = vec![
        f(Endpoint {
            name: "server",
            addrs: ctx.servers.clone(),
            pid: None,
        })
        .await?,
    ];
    if ctx.ceiling {
        let opts = ceiling::Options {
            seed,
            ..ceiling::Options::default()
        };
        let child = ceiling::Child::spawn(&opts).await?;
        let r = f(Endpoint {
            name: "ceiling",
            addrs: vec![child.addr],
            pid: Some(child.pid),
        })
        .await;
        child.stop().await;
        out.push(r?);
    }
    Ok(out)
}

/// Where users come from for a scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct UserSource {
    /// Users file written by `setup` (first N lines are used).
    #[arg(long)]
    pub users: Option<PathBuf>,
    /// Register fresh users on the server instead of reading a file.
    #[arg(long)]
    pub register: bool,
}

/// `n` users for `ep`: from the file for the real server, or registered
/// (always so on the ceiling, which starts empty).
pub async fn obtain_users(
    ctx: &Ctx,
    ep: &Endpoint,
    n: usize,
    src: &UserSource,
    tag: &str,
) -> anyhow::Result<Vec<User>> {
    if !ep.is_ceiling() && !src.register {
        let Some(path) = &src.users else {
            bail!("give --users FILE (from `chat-bench setup`) or --register");
        };
        return users::take(path, n);
    }
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress::Progress::start(
        ctx,
        "register",
        progress::Kind::Count(n as u64),
        done.clone(),
    );
    let prefix = format!("b{:x}{}{tag}", ctx.run_id, &ep.name[..1]);
    let reg = users::register_many(&ep.addrs, n, &prefix, 16, ctx.timeout, done).await;
    bar.finish();
    if reg.users.len() < n {
        bail!(
            "registered only {} of {n} users on the {}: {}",
            reg.users.len(),
            ep.name,
            reg.first_error.unwrap_or_default()
        );
    }
    Ok(reg.users)
}

/// A successful login.
pub struct LoggedIn {
    /// The connection, logged in.
    pub conn: Conn,
    /// The level-2 token the ack carried.
    pub token: Option<String>,
    /// Connect plus login time.
    pub took: Duration,
}

/// Outcome of [`login_all`].
pub struct Logins {
    /// One slot per request, `None` where it failed.
    pub conns: Vec<Option<LoggedIn>>,
    /// Failures.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
}

/// Connects and logs each `(address, user)` in, `concurrency` at a time.
/// With `by_token`, users log in with their saved token.
pub async fn login_all(
    ctx: &Ctx,
    items: Vec<(SocketAddr, User)>,
    by_token: bool,
    concurrency: usize,
    done: Option<Arc<AtomicU64>>,
) -> Logins {
    let n = items.len();
    let timeout = ctx.timeout;
    let level = ctx.level;
    let results: Vec<(usize, anyhow::Result<LoggedIn>)> =
        futures_util::stream::iter(items.into_iter().enumerate())
            .map(|(i, (addr, u))| {
                let done = done.clone();
                async move {
                    let t0 = Instant::now();
                    let r = async {
                        let mut conn = Conn::connect(addr, timeout).await?;
                        let secret = match (&u.token, by_token) {
                            (Some(t), true) => Secret::Token(t),
                            (None, true) => bail!("user {} has no saved token", u.id),
                            _ => Secret::Password(&u.password),
                        };
                        let ack = conn
                            .login(u.id, secret, level, timeout)
                            .await
                            .with_context(|| format!("login of user {}", u.id))?;
                        Ok(LoggedIn {
                            conn,
                            token: ack.token,
                            took: t0.elapsed(),
                        })
                    }
                    .await;
                    if let Some(d) = &done {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                    (i, r)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let mut out = Logins {
        conns: (0..n).map(|_| None).collect(),
        errors: 0,
        first_error: None,
    };
    for (i, r) in results {
        match r {
            Ok(l) => out.conns[i] = Some(l),
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    out
}

/// Resident set size of a process in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn resolve(servers: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for s in servers.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let a = s
            .to_socket_addrs()
            .with_context(|| format!("bad --server {s:?}"))?
            .next()
            .with_context(|| format!("--server {s:?} resolves to nothing"))?;
        out.push(a);
    }
    if out.is_empty() {
        bail!("no --server given");
    }
    Ok(out)
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-bench: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chat-bench: {e:#}");
            1
        }
    };
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let run_id = {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        (t ^ ((std::process::id() as u64) << 20)) & 0xffff_ffff_ffff
    };
    let ctx = Ctx {
        servers: resolve(&cli.servers)?,
        level: cli.level,
        json: cli.json,
        quiet: cli.quiet,
        ceiling: cli.ceiling,
        timeout: Duration::from_secs_f64(cli.timeout.max(0.001)),
        notes: cli.notes,
        start: Instant::now(),
        run_id,
    };
    let reports = match &cli.cmd {
        Cmd::Setup(a) => setup::main(&ctx, a).await?,
        Cmd::Idle(a) => idle::main(&ctx, a).await?,
        Cmd::Direct(a) => direct::main(&ctx, a).await?,
        Cmd::Group(a) => group::main(&ctx, a).await?,
        Cmd::IdleWorker(a) => {
            idle::worker(&ctx, a).await?;
            return Ok(0);
        }
        Cmd::Ceiling(a) => {
            let opts = ceiling::Options {
                queue: a.queue,
                seed: a.users.clone(),
                ..ceiling::Options::default()
            };
            ceiling::run(a.listen, opts, a.lifeline).await?;
            return Ok(0);
        }
        Cmd::Report(a) => {
            print!("{}", report::markdown(&a.files)?);
            return Ok(0);
        }
        Cmd::FsyncProbe(a) => {
            fsync::main(a)?;
            return Ok(0);
        }
    };
    let errors: u64 = reports
        .iter()
        .filter_map(|r| r.fields.get("errors").and_then(|v| v.as_u64()))
        .sum();
    Ok(if cli.strict && errors > 0 { 3 } else { 0 })
}
