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
//!
//! This file holds the command line and the dispatch; what every scenario
//! shares is in [`context`] (settings, targets) and [`logins`] (users and
//! logging them in).

mod ceiling;
mod client;
mod context;
mod direct;
mod fsync;
mod group;
mod idle;
mod load;
mod logins;
mod progress;
mod report;
mod setup;
mod stamp;
mod users;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::client::Transport;
use crate::context::Ctx;

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

    /// How clients connect: `tcp` to the chat port, or `ws`, a WebSocket to
    /// `ws://ADDR/ws` where each --server is then an HTTP listener
    /// (chat-server --http-listen). The ceiling is TCP only: `ws` cannot be
    /// combined with --ceiling.
    #[arg(long, global = true, value_enum, default_value_t = Transport::Tcp)]
    transport: Transport,

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
    if cli.ceiling && cli.transport != Transport::Tcp {
        bail!(
            "--ceiling is TCP only (the forward-only ceiling has no WebSocket listener); \
             drop --ceiling with --transport ws"
        );
    }
    let ctx = Ctx {
        servers: resolve(&cli.servers)?,
        transport: cli.transport,
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
