//! `direct`: P sender/receiver pairs exchanging one-to-one messages. With
//! two or more servers, a sender and its receiver sit on different ones.

use std::net::SocketAddr;

use anyhow::bail;

use chat_protocol::ChatTarget;

use crate::context::{Ctx, Endpoint};
use crate::load::{self, Confirm, LoadArgs, Mode, SenderSpec};
use crate::logins::{login_all, obtain_users, UserSource};
use crate::report::{self, Column, Report};
use crate::users::User;

/// `direct` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    #[command(flatten)]
    pub users: UserSource,
    #[command(flatten)]
    pub load: LoadArgs,
}

const COLUMNS: &[Column] = &[
    ("msgs_per_s", "msg/s"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("p999_ms", "p99.9 ms"),
    ("max_ms", "max ms"),
    ("lost", "lost"),
    ("errors", "errors"),
];

const RATIOS: &[&str] = &["msgs_per_s", "p50_ms", "p99_ms", "p999_ms"];

/// Runs `direct` against the server and, with `--ceiling`, the ceiling.
pub async fn main(ctx: &Ctx, args: &Args) -> anyhow::Result<Vec<Report>> {
    if args.pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    let mut reports = crate::context::each_target(ctx, None, |ep| run(ctx, args, ep)).await?;
    report::emit(ctx, &mut reports, COLUMNS, RATIOS);
    Ok(reports)
}

async fn run(ctx: &Ctx, args: &Args, ep: Endpoint) -> anyhow::Result<Report> {
    let p = args.pairs;
    let users = obtain_users(ctx, &ep, 2 * p, &args.users, "d").await?;
    let n = ep.addrs.len();
    let items: Vec<(SocketAddr, User)> = (0..p)
        .map(|i| (ep.addrs[i % n], users[i].clone()))
        .chain((0..p).map(|i| (ep.addrs[(i + 1) % n], users[p + i].clone())))
        .collect();
    let logins = login_all(ctx, items, false, 64, None).await;
    let mut conns = logins.conns;
    let receivers = conns.split_off(p);
    let mut plan_conns = Vec::new();
    let mut senders = Vec::new();
    for (i, (s, r)) in conns.into_iter().zip(receivers).enumerate() {
        if let (Some(s), Some(r)) = (s, r) {
            senders.push(SenderSpec {
                conn: plan_conns.len(),
                target: ChatTarget::User(users[p + i].id),
            });
            plan_conns.push(s.conn);
            plan_conns.push(r.conn);
        }
    }
    if senders.is_empty() {
        bail!(
            "no pair could log in on the {}: {}",
            ep.name,
            logins.first_error.unwrap_or_default()
        );
    }
    let (mode, confirm) = match args.load.rate {
        Some(rate) => (Mode::Rate(rate / senders.len() as f64), Confirm::Ack),
        None if ctx.level >= 2 => (Mode::Window(args.load.window), Confirm::Ack),
        None => (Mode::Window(args.load.window), Confirm::Arrival(1)),
    };
    let pairs = senders.len();
    let plan = args.load.plan(plan_conns, senders, 1, confirm, mode);

    let o = load::run(ctx, plan, &format!("direct/{}", ep.name)).await;
    let headline = args.load.headline("msgs_per_s");
    let mut r = Report::new(ctx, "direct", ep.name, headline);
    r.set("pairs", pairs);
    r.set("servers", ep.addrs.len());
    args.load.describe(&mut r);
    load::fill(&mut r, &o, "msgs_per_s", logins.errors);
    if o.first_error.is_none() {
        if let Some(e) = logins.first_error {
            r.set("first_error", e);
        }
    }
    Ok(r)
}
