//! The soak: a real cluster (two nodes, MariaDB, Redis, nginx) under mixed
//! load for many minutes, while a node, Redis and MariaDB are killed and
//! restarted on a schedule. Run it with `scripts/soak.sh MINUTES`; it is
//! ignored by `cargo test`.
//!
//! Load: level-2 agents (`cluster_support::agent`) chat one to one and in
//! groups through nginx, resending by `cmid` and reconnecting after faults,
//! and idle logged-in sessions sit on both nodes. At the end every message
//! must be acknowledged and received once, in order: the report gives lost,
//! duplicated and reordered counts, and, every sample, each node's RSS and
//! the database's size.

// This test uses a part of the shared support only.
#[allow(unused_imports)]
mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::*;
use tokio::sync::watch;

/// One line of the report, every `SAMPLE`.
const SAMPLE: Duration = Duration::from_secs(30);

/// The fault schedule, repeated: (seconds into the cycle, what).
const CYCLE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run scripts/soak.sh MINUTES"]
async fn soak() {
    let test = "soak";
    let minutes: f64 = std::env::var("CLUSTERCHAT_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30.0);
    let run_for = Duration::from_secs_f64(minutes * 60.0);
    let Some(mut cl) = Cluster::start(test, 2, true).await else {
        return;
    };
    let (na, nb, lb) = (cl.node(0), cl.node(1), cl.nginx());

    // 14 users: 6 pairs chat one to one, and two groups of 4 (pair users
    // and the other group's sender) get the messages of their first member.
    let mut users = Vec::new();
    for i in 0..14 {
        users.push(register(if i % 2 == 0 { na } else { nb }, &format!("soak{i}")).await);
    }
    let pairs: Vec<(i64, i64)> = (0..6).map(|k| (users[2 * k], users[2 * k + 1])).collect();
    befriend(na, &pairs).await;
    // Every member is an agent (who receives for it); each sender is one
    // agent, chatting nowhere else.
    let g1: Vec<i64> = vec![users[12], users[0], users[1], users[2]];
    let g2: Vec<i64> = vec![users[13], users[3], users[4], users[12]];
    let g1_id = make_group(na, "soak-g1", g1[0], &g1[1..]).await;
    let g2_id = make_group(nb, "soak-g2", g2[0], &g2[1..]).await;

    // Idle sessions: 200 logged-in users that only hold their connection.
    // They come from 127.0.1.x, 20 to an address: the registration limit
    // per address would refuse more.
    let mut idle = Vec::new();
    for i in 0..200u8 {
        let node = if i % 2 == 0 { na } else { nb };
        let from = std::net::Ipv4Addr::new(127, 0, 1, i / 20 + 1);
        let mut c = Client::connect_from(node, from).await;
        let id = c.register(&format!("idle{i}"), "pw").await;
        c.login_l2(id, "pw").await;
        idle.push(c);
    }

    // Agents go through nginx and come back through it after any fault.
    let (_tx, rx) = watch::channel(Some(lb));
    let pace = Duration::from_millis(100);
    let count = (run_for.as_secs_f64() / pace.as_secs_f64()) as usize;
    let mut agents = Vec::new();
    for &(x, y) in &pairs {
        agents.push((x, Dest::User(y), lb, rx.clone()));
        agents.push((y, Dest::User(x), lb, rx.clone()));
    }
    agents.push((g1[0], Dest::Group(g1_id, g1.clone()), lb, rx.clone()));
    agents.push((g2[0], Dest::Group(g2_id, g2.clone()), lb, rx.clone()));
    println!(
        "{test}: {minutes} min, {} agents x {count} messages, 200 idle sessions, faults every {} s",
        agents.len(),
        CYCLE.as_secs() / 4
    );
    let mut traffic = Traffic::start(agents, count, pace).await;

    let start = Instant::now();
    let mut next_sample = start;
    let mut faults = 0;
    let mut victim = 0;
    let mut step = 0u32;
    println!("{test}: t(s)  sent  acked  received  node-a RSS KiB  node-b RSS KiB  db KiB  fault");
    while start.elapsed() < run_for {
        // A fault every quarter cycle: a node, Redis, MariaDB, a pause.
        let at = start + CYCLE / 4 * (step + 1);
        tokio::time::sleep_until(at.min(next_sample).into()).await;
        let mut what = "";
        if Instant::now() >= at && start.elapsed() < run_for {
            match step % 4 {
                0 => {
                    cl.kill_node(victim).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    cl.restart_node(victim).await;
                    victim = 1 - victim;
                    what = "node killed and restarted";
                }
                1 => {
                    cl.redis.kill().await;
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    cl.redis.start().await;
                    what = "Redis killed and restarted";
                }
                2 => {
                    cl.db.kill().await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    cl.db.start().await;
                    what = "MariaDB killed and restarted";
                }
                _ => what = "(quiet)",
            }
            if step % 4 != 3 {
                faults += 1;
            }
            step += 1;
        }
        if Instant::now() >= next_sample || !what.is_empty() {
            let (sent, acked, received) = {
                let l = traffic.ledger.lock().unwrap();
                let c = l.counts();
                (c.sent, c.acked, c.received)
            };
            let rss = |i: usize| {
                cl.nodes[i]
                    .as_ref()
                    .and_then(|n| n.rss_kib())
                    .map_or("-".to_owned(), |k| k.to_string())
            };
            let db = cl
                .db
                .try_sql(
                    "SELECT COALESCE(SUM(data_length + index_length), 0) DIV 1024 FROM \
                     information_schema.tables WHERE table_schema = 'clusterchat'",
                )
                .await
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "-".to_owned());
            println!(
                "{test}: {:5} {sent:6} {acked:6} {received:8} {:>14} {:>14} {db:>7}  {what}",
                start.elapsed().as_secs(),
                rss(0),
                rss(1),
            );
            if Instant::now() >= next_sample {
                next_sample += SAMPLE;
            }
        }
    }
    // Agents fall behind their pace through the faults: they stop when the
    // time is up, and what they sent must all arrive.
    let total = traffic.halt().await;
    let out = traffic.finish(test, Duration::from_secs(120)).await;
    // `finish` printed the counts (sent, acked, lost, duplicated, jumped,
    // reordered, latency).
    println!(
        "{test}: done after {:.1} min with {faults} faults",
        start.elapsed().as_secs_f64() / 60.0
    );
    out.assert_nothing_lost(total);
    drop(idle);
}
