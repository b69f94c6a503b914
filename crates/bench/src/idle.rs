//! `idle`: log N connections in and hold them; report how long the logins
//! took and, with `--server-pid`, the server's RSS per held connection.
//!
//! With `--tokens` (level 2) users without a saved token first log in by
//! password to get one; the measured logins then use tokens, as a client
//! reconnecting after a crash would, and the fresh tokens are saved back.
//! With `--workers K` the connections are spread over K child processes
//! (`chat-bench idle-worker`), so the bench can hold more connections than
//! one process has file descriptors. A worker reports its logins as one JSON
//! line, holds until its stdin says `stop` (or closes), then reports how
//! many connections were still open.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

use crate::client::Conn;
use crate::context::{rss_kib, Ctx, Endpoint};
use crate::logins::{login_all, obtain_users, UserSource};
use crate::progress::{Kind, Progress};
use crate::report::{self, Column, Hist, Report};
use crate::users::{self, User};

/// `idle` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Connections to log in and hold.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    #[command(flatten)]
    pub users: UserSource,
    /// Log in with level-2 tokens (obtained first by password where the
    /// users file has none; fresh tokens are saved back to it).
    #[arg(long)]
    pub tokens: bool,
    /// The real server's pid, to read its RSS from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Child processes to spread the connections over.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Seconds to hold the connections after the RSS reading.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
    /// Logins in flight at once (in total, over all workers).
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

/// `idle-worker` arguments (internal).
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// Users to log in (a users file).
    #[arg(long)]
    pub file: PathBuf,
    /// Index of the first user in the whole run (spreads over servers).
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Log in by token.
    #[arg(long)]
    pub tokens: bool,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

const COLUMNS: &[Column] = &[
    ("logged_in", "held"),
    ("errors", "errors"),
    ("login_s", "login s"),
    ("logins_per_s", "logins/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("rss_before_kib", "RSS before KiB"),
    ("rss_hold_kib", "RSS held KiB"),
    ("kib_per_conn", "KiB/conn"),
    ("alive_after_hold", "alive at end"),
];

/// Runs `idle` against the server and, with `--ceiling`, the ceiling.
pub async fn main(ctx: &Ctx, args: &Args) -> anyhow::Result<Vec<Report>> {
    if args.tokens && ctx.level < 2 {
        bail!("--tokens needs --level 2");
    }
    // With a users file, the ceiling starts with the same accounts and the
    // tokens the server run just saved: no registration in its process.
    let seed = match (&args.users.users, args.users.register) {
        (Some(p), false) => Some(p.clone()),
        _ => None,
    };
    let mut reports = crate::context::each_target(ctx, seed, |ep| run(ctx, args, ep)).await?;
    report::emit(
        ctx,
        &mut reports,
        COLUMNS,
        &["logins_per_s", "kib_per_conn", "p99_ms"],
    );
    Ok(reports)
}

/// Connections being held, each watched by a small task that notices when
/// the server closes it.
struct Held {
    tasks: Vec<JoinHandle<()>>,
    dead: Arc<AtomicU64>,
}

impl Held {
    fn alive(&self) -> u64 {
        (self.tasks.len() as u64).saturating_sub(self.dead.load(Ordering::Relaxed))
    }

    fn close(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Logins of one slice of users.
struct Slice {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    lat_us: Vec<u64>,
    /// (index within the slice, fresh token)
    tokens: Vec<(usize, String)>,
    held: Held,
}

async fn hold_slice(
    ctx: &Ctx,
    addrs: &[SocketAddr],
    users: &[User],
    offset: usize,
    by_token: bool,
    concurrency: usize,
    done: Option<Arc<AtomicU64>>,
) -> Slice {
    let items = users
        .iter()
        .enumerate()
        .map(|(i, u)| (addrs[(offset + i) % addrs.len()], u.clone()))
        .collect();
    let logins = login_all(ctx, items, by_token, concurrency, done).await;
    let dead = Arc::new(AtomicU64::new(0));
    let mut s = Slice {
        ok: 0,
        errors: logins.errors,
        first_error: logins.first_error,
        lat_us: Vec::new(),
        tokens: Vec::new(),
        held: Held {
            tasks: Vec::new(),
            dead: dead.clone(),
        },
    };
    for (i, l) in logins.conns.into_iter().enumerate() {
        let Some(l) = l else { continue };
        s.ok += 1;
        s.lat_us.push(l.took.as_micros() as u64);
        if let Some(t) = l.token {
            s.tokens.push((i, t));
        }
        s.held.tasks.push(tokio::spawn(watch(l.conn, dead.clone())));
    }
    s
}

async fn watch(conn: Conn, dead: Arc<AtomicU64>) {
    let Conn { rd, wr } = conn;
    rd.closed().await;
    dead.fetch_add(1, Ordering::Relaxed);
    drop(wr);
}

/// What a worker process reported.
struct WorkerReady {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    lat_us: Vec<u64>,
    tokens: Vec<(usize, String)>,
}

fn parse_ready(v: &Value) -> anyhow::Result<WorkerReady> {
    Ok(WorkerReady {
        ok: v["ok"]
            .as_u64()
            .ok_or_else(|| anyhow!("bad worker report {v}"))?,
        errors: v["errors"].as_u64().unwrap_or(0),
        first_error: v["first_error"].as_str().map(str::to_owned),
        lat_us: v["lat_us"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default(),
        tokens: v["tokens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| Some((t[0].as_u64()? as usize, t[1].as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The internal `idle-worker` subcommand.
pub async fn worker(ctx: &Ctx, a: &WorkerArgs) -> anyhow::Result<()> {
    let users = users::load(&a.file)?;
    let s = hold_slice(
        ctx,
        &ctx.servers,
        &users,
        a.offset,
        a.tokens,
        a.concurrency,
        None,
    )
    .await;
    let ready = json!({
        "ok": s.ok,
        "errors": s.errors,
        "first_error": s.first_error,
        "lat_us": s.lat_us,
        "tokens": s.tokens.iter().map(|(i, t)| json!([i, t])).collect::<Vec<_>>(),
    });
    let mut out = tokio::io::stdout();
    out.write_all(format!("{ready}\n").as_bytes()).await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        if l.trim() == "stop" {
            break;
        }
    }
    out.write_all(format!("{}\n", json!({"alive": s.held.alive()})).as_bytes())
        .await?;
    out.flush().await?;
    s.held.close();
    Ok(())
}

struct Worker {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    file: PathBuf,
}

impl Worker {
    async fn spawn(
        ctx: &Ctx,
        addrs: &[SocketAddr],
        users: &[User],
        offset: usize,
        by_token: bool,
        concurrency: usize,
    ) -> anyhow::Result<Worker> {
        let file = std::env::temp_dir().join(format!(
            "chat-bench-idle-{}-{offset}.txt",
            std::process::id()
        ));
        users::save(&file, users)?;
        let servers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let exe = std::env::current_exe().context("cannot find the chat-bench executable")?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("--server")
            .arg(servers.join(","))
            .arg("--transport")
            .arg(ctx.transport.name())
            .arg("--level")
            .arg(ctx.level.to_string())
            .arg("--timeout")
            .arg(ctx.timeout.as_secs_f64().to_string())
            .arg("--quiet")
            .arg("idle-worker")
            .arg("--file")
            .arg(&file)
            .arg("--offset")
            .arg(offset.to_string())
            .arg("--concurrency")
            .arg(concurrency.to_string());
        if by_token {
            cmd.arg("--tokens");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start an idle worker")?;
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Ok(Worker {
            child,
            stdin,
            lines,
            file,
        })
    }

    async fn line(&mut self, within: Duration) -> anyhow::Result<Value> {
        let l = tokio::time::timeout(within, self.lines.next_line())
            .await
            .map_err(|_| anyhow!("an idle worker did not answer within {within:?}"))??
            .ok_or_else(|| anyhow!("an idle worker exited early"))?;
        Ok(serde_json::from_str(&l)?)
    }

    async fn finish(mut self) -> Option<u64> {
        let mut alive = None;
        if let Some(mut stdin) = self.stdin.take() {
            if stdin.write_all(b"stop\n").await.is_ok() {
                let _ = stdin.flush().await;
                alive = self
                    .line(Duration::from_secs(10))
                    .await
                    .ok()
                    .and_then(|v| v["alive"].as_u64());
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_file(&self.file);
        alive
    }
}

async fn run(ctx: &Ctx, args: &Args, ep: Endpoint) -> anyhow::Result<Report> {
    let n = args.connections;
    // The whole users file is kept so that saving tokens keeps every line.
    // The ceiling reads it too (it was seeded from it), but tokens it issues
    // are never saved: they mean nothing to the real server.
    let from_file = args.users.users.is_some() && !args.users.register;
    let save_tokens = from_file && !ep.is_ceiling();
    let mut all: Vec<User> = match (&args.users.users, from_file) {
        (Some(path), true) => {
            let all = users::load(path)?;
            if all.len() < n {
                users::take(path, n)?; // for its error message
            }
            all
        }
        _ => obtain_users(ctx, &ep, n, &args.users, "i").await?,
    };
    let mut setup_errors = 0u64;
    let mut first_error = None;

    // Tokens: a password login for every user that has none.
    if args.tokens {
        let need: Vec<usize> = (0..n).filter(|&i| all[i].token.is_none()).collect();
        if !need.is_empty() {
            let items = need
                .iter()
                .map(|&i| (ep.addrs[i % ep.addrs.len()], all[i].clone()))
                .collect();
            let done = Arc::new(AtomicU64::new(0));
            let bar = Progress::start(ctx, "tokens", Kind::Count(need.len() as u64), done.clone());
            // Few at a time: the hash is the bottleneck anyway, and a low
            // high-water mark keeps the RSS baseline honest.
            let logins = login_all(ctx, items, false, args.concurrency.min(16), Some(done)).await;
            bar.finish();
            setup_errors += logins.errors;
            first_error = logins.first_error;
            for (k, l) in logins.conns.into_iter().enumerate() {
                if let Some(l) = l {
                    all[need[k]].token = l.token;
                }
            }
            if save_tokens {
                if let Some(path) = &args.users.users {
                    users::save(path, &all)?;
                }
            }
            // Let the server log the token-fetching sessions out.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let pid = if ep.is_ceiling() {
        ep.pid
    } else {
        args.server_pid
    };
    let rss_before = pid.and_then(rss_kib);
    let workers = args.workers.clamp(1, n.max(1));
    let t0 = Instant::now();
    let mut lat = Hist::new();
    let mut ok = 0u64;
    let mut login_errors = 0u64;
    let mut fresh: Vec<(usize, String)> = Vec::new();
    let mut held = None;
    let mut procs = Vec::new();
    if workers == 1 {
        let done = Arc::new(AtomicU64::new(0));
        let bar = Progress::start(ctx, "login", Kind::Count(n as u64), done.clone());
        let s = hold_slice(
            ctx,
            &ep.addrs,
            &all[..n],
            0,
            args.tokens,
            args.concurrency,
            Some(done),
        )
        .await;
        bar.finish();
        ok = s.ok;
        login_errors = s.errors;
        first_error = first_error.or(s.first_error);
        s.lat_us.iter().for_each(|&us| lat.record_us(us));
        fresh = s.tokens;
        held = Some(s.held);
    } else {
        let chunk = n.div_ceil(workers);
        let per = (args.concurrency / workers).max(1);
        for w in 0..workers {
            let from = w * chunk;
            let to = ((w + 1) * chunk).min(n);
            if from >= to {
                break;
            }
            let p = Worker::spawn(ctx, &ep.addrs, &all[from..to], from, args.tokens, per).await?;
            procs.push((from, p));
        }
        let within = ctx.timeout * ((chunk / per) as u32 + 2) + Duration::from_secs(10);
        for (from, p) in procs.iter_mut() {
            match p.line(within).await.and_then(|v| parse_ready(&v)) {
                Ok(r) => {
                    ok += r.ok;
                    login_errors += r.errors;
                    first_error = first_error.or(r.first_error);
                    r.lat_us.iter().for_each(|&us| lat.record_us(us));
                    fresh.extend(r.tokens.into_iter().map(|(i, t)| (i + *from, t)));
                }
                Err(e) => {
                    login_errors += (n.min(*from + chunk) - *from) as u64;
                    first_error.get_or_insert(format!("{e:#}"));
                }
            }
        }
    }
    let login_s = t0.elapsed().as_secs_f64();

    // Settle, read RSS, hold.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_hold = pid.and_then(rss_kib);
    tokio::time::sleep(Duration::from_secs_f64(args.hold.max(0.0))).await;
    let mut alive = 0u64;
    if let Some(h) = held {
        alive = h.alive();
        h.close();
    }
    for (_, p) in procs {
        alive += p.finish().await.unwrap_or(0);
    }

    // Save the fresh tokens; a user whose token login failed loses its token
    // (it was used up or is bad), so the next run fetches a new one.
    if args.tokens && save_tokens {
        if let Some(path) = &args.users.users {
            for u in all.iter_mut().take(n) {
                u.token = None;
            }
            for (i, t) in fresh {
                if let Some(u) = all.get_mut(i) {
                    u.token = Some(t);
                }
            }
            users::save(path, &all)?;
        }
    }

    let mut r = Report::new(ctx, "idle", ep.name, "logins_per_s");
    r.set("connections", n);
    r.set("workers", workers);
    r.set("login_by", if args.tokens { "token" } else { "password" });
    r.set("logged_in", ok);
    r.set("login_s", report::round3(login_s));
    r.set(
        "logins_per_s",
        report::round3(ok as f64 / login_s.max(1e-9)),
    );
    lat.fields("", &mut r.fields);
    r.set("rss_before_kib", rss_before);
    r.set("rss_hold_kib", rss_hold);
    if let (Some(b), Some(h)) = (rss_before, rss_hold) {
        if ok > 0 {
            r.set(
                "kib_per_conn",
                report::round3(h.saturating_sub(b) as f64 / ok as f64),
            );
        }
    }
    r.set("alive_after_hold", alive);
    // Connections the server closed while they were held count as errors.
    let dropped = ok.saturating_sub(alive);
    r.set("dropped", dropped);
    r.set("errors", setup_errors + login_errors + dropped);
    r.set("hold_s", args.hold);
    if let Some(e) = first_error {
        r.set("first_error", e);
    }
    Ok(r)
}
