//! `group`: one group of M members, all online, S of them sending.
//!
//! The group is created over a short level-2 connection of its first member
//! (a level-1 CREATE_GROUP does not say the new group's id), everyone joins
//! with ADD_GROUP, and the group is disbanded afterwards so reused users do
//! not pile up groups. In closed loop a message is confirmed once every
//! other member has it, so the window bounds what waits in the server's
//! per-member queues, and the rate found is one that loses nothing.

use std::net::SocketAddr;

use anyhow::{anyhow, bail};
use chat_protocol::{ChatTarget, Request, Secret};
use futures_util::StreamExt;

use crate::client::Conn;
use crate::context::{Ctx, Endpoint};
use crate::load::{self, Confirm, LoadArgs, Mode, SenderSpec};
use crate::logins::{login_all, obtain_users, UserSource};
use crate::report::{self, Column, Report};
use crate::users::User;

/// `group` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Members of the group, all online.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// How many members send.
    #[arg(long, default_value_t = 5)]
    pub senders: usize,
    #[command(flatten)]
    pub users: UserSource,
    #[command(flatten)]
    pub load: LoadArgs,
}

const COLUMNS: &[Column] = &[
    ("deliveries_per_s", "deliveries/s"),
    ("msgs_per_s", "msg/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("p999_ms", "p99.9 ms"),
    ("max_ms", "max ms"),
    ("lost", "lost"),
    ("errors", "errors"),
];

const RATIOS: &[&str] = &["deliveries_per_s", "p50_ms", "p99_ms"];

/// Runs `group` against the server and, with `--ceiling`, the ceiling.
pub async fn main(ctx: &Ctx, args: &Args) -> anyhow::Result<Vec<Report>> {
    if args.members < 2 || args.senders == 0 || args.senders > args.members {
        bail!("need --members >= 2 and 1 <= --senders <= --members");
    }
    let mut reports = crate::context::each_target(ctx, None, |ep| run(ctx, args, ep)).await?;
    report::emit(ctx, &mut reports, COLUMNS, RATIOS);
    Ok(reports)
}

/// Logs the creator in at level 2 on a connection of its own and runs one
/// request.
async fn as_creator(
    ctx: &Ctx,
    addr: SocketAddr,
    u: &User,
    req: Request<'_>,
) -> anyhow::Result<serde_json::Value> {
    let mut c = Conn::connect(ctx.transport, addr, ctx.timeout).await?;
    c.login(u.id, Secret::Password(&u.password), 2, ctx.timeout)
        .await?;
    c.call(&req, ctx.timeout).await
}

async fn run(ctx: &Ctx, args: &Args, ep: Endpoint) -> anyhow::Result<Report> {
    let m = args.members;
    let users = obtain_users(ctx, &ep, m, &args.users, "g").await?;
    let gname = format!("bench-{:x}-{}", ctx.run_id, ep.name);
    let created = as_creator(
        ctx,
        ep.addrs[0],
        &users[0],
        Request::CreateGroup {
            name: &gname,
            desc: "chat-bench",
        },
    )
    .await?;
    let gid = created["groupid"]
        .as_i64()
        .ok_or_else(|| anyhow!("CREATE_GROUP ack without groupid: {created}"))?;

    let n = ep.addrs.len();
    let items: Vec<(SocketAddr, User)> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (ep.addrs[i % n], u.clone()))
        .collect();
    let logins = login_all(ctx, items, false, 64, None).await;
    let mut setup_errors = logins.errors;
    let mut first_error = logins.first_error;
    let mut conns = logins.conns;

    // Everyone but the creator joins; PING marks the end of each reply.
    let timeout = ctx.timeout;
    let joined: Vec<bool> = futures_util::stream::iter(conns.iter_mut().enumerate())
        .map(|(i, c)| async move {
            let Some(c) = c else { return Err(None) };
            if i == 0 {
                return Ok(());
            }
            let r = async {
                c.conn.send(&Request::AddGroup(gid)).await?;
                let failures = c.conn.sync(timeout).await?;
                match failures.first() {
                    None => Ok(()),
                    Some(f) => Err(anyhow!("ADD_GROUP refused: {f}")),
                }
            }
            .await;
            r.map_err(|e| Some(format!("{e:#}")))
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|r| match r {
            Ok(()) => true,
            Err(None) => false,
            Err(Some(e)) => {
                setup_errors += 1;
                first_error.get_or_insert(e);
                false
            }
        })
        .collect();

    let mut plan_conns = Vec::new();
    for (c, j) in conns.into_iter().zip(&joined) {
        if let (Some(c), true) = (c, j) {
            plan_conns.push(c.conn);
        }
    }
    let online = plan_conns.len();
    if online < 2 {
        bail!(
            "fewer than two members online on the {}: {}",
            ep.name,
            first_error.unwrap_or_default()
        );
    }
    let senders: Vec<SenderSpec> = (0..args.senders.min(online))
        .map(|i| SenderSpec {
            conn: i,
            target: ChatTarget::Group(gid),
        })
        .collect();
    let nsenders = senders.len();
    let fanout = (online - 1) as u64;
    let (mode, confirm) = match args.load.rate {
        Some(rate) => (Mode::Rate(rate), Confirm::Ack),
        None => (
            Mode::Window(args.load.window),
            Confirm::Arrival(fanout as u32),
        ),
    };
    let plan = args.load.plan(plan_conns, senders, fanout, confirm, mode);
    let duration = plan.duration;

    let o = load::run(ctx, plan, &format!("group/{}", ep.name)).await;

    if let Err(e) = as_creator(ctx, ep.addrs[0], &users[0], Request::DisbandGroup(gid)).await {
        first_error.get_or_insert(format!("disband failed: {e:#}"));
    }

    let headline = args.load.headline("deliveries_per_s");
    let mut r = Report::new(ctx, "group", ep.name, headline);
    r.set("members", m);
    r.set("online", online);
    r.set("senders", nsenders);
    r.set("servers", ep.addrs.len());
    args.load.describe(&mut r);
    load::fill(&mut r, &o, "deliveries_per_s", setup_errors);
    r.set(
        "msgs_per_s",
        report::round3(o.delivered_in_window as f64 / fanout as f64 / duration.as_secs_f64()),
    );
    if o.first_error.is_none() {
        if let Some(e) = first_error {
            r.set("first_error", e);
        }
    }
    Ok(r)
}
