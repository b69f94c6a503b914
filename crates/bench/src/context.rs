//! What every scenario shares: the run's settings ([`Ctx`]), where a
//! scenario runs ([`Endpoint`]: the real server or the ceiling), running it
//! on each, and reading a process's memory.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ceiling;
use crate::client::Transport;
use crate::report::Report;

/// Settings every scenario shares.
pub struct Ctx {
    /// The real server(s).
    pub servers: Vec<SocketAddr>,
    /// How the clients connect to the real server(s).
    pub transport: Transport,
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

/// Resident set size of a process in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
