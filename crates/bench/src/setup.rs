//! `setup N --out FILE`: registers N users with bounded concurrency, saves
//! them, and reports the rate. On a real server REG is bound by the password
//! hash, so the rate is the server's hashes per second.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use crate::context::{Ctx, Endpoint};
use crate::progress::{Kind, Progress};
use crate::report::{self, Column, Report};
use crate::users;

/// `setup` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of users to register.
    pub n: usize,
    /// Where to save them (`id password name` per line).
    #[arg(long)]
    pub out: PathBuf,
    /// Registrations in flight at once (one connection each).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

const COLUMNS: &[Column] = &[
    ("users", "users"),
    ("errors", "errors"),
    ("secs", "secs"),
    ("users_per_s", "users/s"),
    ("p50_ms", "REG p50 ms"),
    ("p99_ms", "REG p99 ms"),
    ("max_ms", "max ms"),
];

/// Runs `setup` against the server and, with `--ceiling`, the ceiling.
pub async fn main(ctx: &Ctx, args: &Args) -> anyhow::Result<Vec<Report>> {
    let mut reports = crate::context::each_target(ctx, None, |ep| run(ctx, args, ep)).await?;
    report::emit(ctx, &mut reports, COLUMNS, &["users_per_s"]);
    Ok(reports)
}

async fn run(ctx: &Ctx, args: &Args, ep: Endpoint) -> anyhow::Result<Report> {
    let done = Arc::new(AtomicU64::new(0));
    let bar = Progress::start(ctx, "register", Kind::Count(args.n as u64), done.clone());
    let t0 = Instant::now();
    let prefix = format!("b{:x}{}", ctx.run_id, &ep.name[..1]);
    let reg = users::register_many(
        ctx.transport,
        &ep.addrs,
        args.n,
        &prefix,
        args.concurrency,
        ctx.timeout,
        done,
    )
    .await;
    let secs = t0.elapsed().as_secs_f64();
    bar.finish();
    if ep.name == "server" {
        users::save(&args.out, &reg.users)?;
    }
    let mut r = Report::new(ctx, "setup", ep.name, "users_per_s");
    r.set("requested", args.n);
    r.set("concurrency", args.concurrency);
    r.set("users", reg.users.len());
    r.set("errors", reg.errors);
    r.set("secs", report::round3(secs));
    r.set(
        "users_per_s",
        report::round3(reg.users.len() as f64 / secs.max(1e-9)),
    );
    reg.latency.fields("", &mut r.fields);
    if let Some(e) = reg.first_error {
        r.set("first_error", e);
    }
    Ok(r)
}
