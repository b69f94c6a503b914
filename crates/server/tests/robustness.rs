//! An attacker and a victim side by side on one node: the attacker throws
//! every abuse at once (unread HISTORY, a REG flood, a cmid-retry storm, junk
//! connections, a huge group at full fan-out); the victim's round trips and
//! the server's memory stay bounded.
//!
//! Every client comes through a PROXY header (the node trusts 127.0.0.1 as
//! its load balancer), so attacker and victim have addresses of their own,
//! as they would on the internet.

mod common;

use std::time::{Duration, Instant};

use clusterchat::Config;
use common::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Connects as if from `ip`, through the trusted proxy.
async fn connect_as(srv: &TestServer, ip: &str, tight: bool) -> Client {
    let mut c = if tight {
        Client::connect_tight(srv.addr).await
    } else {
        srv.connect().await
    };
    c.send_raw(format!("PROXY TCP4 {ip} 127.0.0.1 40000 6000\r\n").as_bytes())
        .await;
    c
}

async fn account(srv: &TestServer, ip: &str, name: &str) -> (i64, Client) {
    let mut c = connect_as(srv, ip, false).await;
    let id = c.register(name, "pw").await;
    c.login_l2(id, "pw").await;
    (id, c)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_does_not_cost_the_victim() {
    // The shipped per-address limits (the test harness turns them off for
    // tests whose clients all come from 127.0.0.1).
    let defaults = Config::default();
    let cfg = Config {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        max_connections_per_ip: defaults.max_connections_per_ip,
        reg_per_ip_per_min: defaults.reg_per_ip_per_min,
        prelogin_per_ip_per_sec: defaults.prelogin_per_ip_per_sec,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    const EVIL: &str = "203.0.113.66";

    // Setup (not measured): the victim and a friend, the attacker, a group
    // full of big messages, and a huge group of the attacker's.
    let (victim, mut v) = account(&srv, "198.51.100.1", "victim").await;
    let (pal, mut p) = account(&srv, "198.51.100.2", "pal").await;
    let (evil, mut e) = account(&srv, EVIL, "evil").await;
    e.send(json!({"msgid": 8, "groupname": "bulky"})).await;
    let bulky = e.expect_ack(8).await["groupid"].as_i64().unwrap();
    let big = "\u{1}".repeat(10_000);
    for _ in 0..60 {
        e.send(json!({"msgid": 10, "groupid": bulky, "msg": big}))
            .await;
        e.expect_ack(10).await;
    }
    e.send(json!({"msgid": 8, "groupname": "huge"})).await;
    let huge = e.expect_ack(8).await["groupid"].as_i64().unwrap();
    let mut members = Vec::new();
    for i in 0..150 {
        let (_, mut m) = account(
            &srv,
            &format!("10.1.{}.{}", i / 250, i % 250 + 1),
            &format!("m{i}"),
        )
        .await;
        m.send(json!({"msgid": 9, "groupid": huge})).await;
        m.expect_ack(9).await;
        members.push(m); // logged in, never reading
    }
    // A message the storm will retry from new logins.
    e.send(json!({"msgid": 6, "toid": victim, "msg": "hello", "cmid": "storm"}))
        .await;
    e.expect_ack(6).await;
    let _ = quiet(&mut v).await;

    let base = rss_mib();
    let stop = CancellationToken::new();
    let mut attacks = Vec::new();
    // ROBUSTNESS_BASELINE=1 runs the victim alone, for comparison.
    let attack = std::env::var_os("ROBUSTNESS_BASELINE").is_none();
    // ROBUSTNESS_ONLY=1,3 runs only those attacks, to see what each costs.
    let only = std::env::var("ROBUSTNESS_ONLY").ok();
    let on = |n: &str| attack && only.as_deref().is_none_or(|o| o.split(',').any(|x| x == n));

    // 1. Unread HISTORY, pipelined, from a connection that never reads.
    if on("1") {
        let mut h = connect_as(&srv, EVIL, true).await;
        h.send(json!({"msgid": 1, "id": evil, "password": "pw", "v": 2}))
            .await;
        let mut flood = Vec::new();
        for _ in 0..150 {
            flood.extend_from_slice(
                format!("{{\"msgid\":17,\"groupid\":{bulky},\"limit\":200}}\n").as_bytes(),
            );
        }
        let stop = stop.clone();
        attacks.push(tokio::spawn(async move {
            let _ = h.try_send_raw(&flood).await;
            stop.cancelled().await;
            drop(h);
        }));
    }
    // 2. A REG flood from 10 connections.
    for k in (0..10).filter(|_| on("2")) {
        let mut c = connect_as(&srv, EVIL, false).await;
        let stop = stop.clone();
        attacks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                let mut flood = Vec::new();
                for _ in 0..20 {
                    i += 1;
                    flood.extend_from_slice(
                        format!("{{\"msgid\":4,\"name\":\"spam{k}x{i}\",\"password\":\"pw\"}}\n")
                            .as_bytes(),
                    );
                }
                if !c.try_send_raw(&flood).await {
                    break;
                }
                let _ = c.read_line(Duration::from_millis(20)).await;
            }
        }));
    }
    // 3. A cmid-retry storm from fresh logins.
    if on("3") {
        let srv_addr = srv.addr;
        let stop = stop.clone();
        attacks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let mut c = Client::connect(srv_addr).await;
                c.send_raw(format!("PROXY TCP4 {EVIL} 127.0.0.1 40000 6000\r\n").as_bytes()).await;
                c.send(json!({"msgid": 1, "id": evil, "password": "pw", "v": 2})).await;
                let mut burst = Vec::new();
                for _ in 0..200 {
                    burst.extend_from_slice(format!("{{\"msgid\":6,\"toid\":{victim},\"msg\":\"hello\",\"cmid\":\"storm\"}}\n").as_bytes());
                }
                let _ = c.try_send_raw(&burst).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    // 4. Junk connections, more than one address may hold.
    if on("4") {
        let mut junk = Vec::new();
        for _ in 0..300 {
            let mut c = connect_as(&srv, EVIL, false).await;
            let _ = c.try_send_raw(b"{not json\n").await;
            junk.push(c);
        }
        let stop = stop.clone();
        attacks.push(tokio::spawn(async move {
            stop.cancelled().await;
            drop(junk);
        }));
    }
    // 5. The huge group at full speed.
    if on("5") {
        let stop = stop.clone();
        attacks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let mut burst = Vec::new();
                for _ in 0..50 {
                    burst.extend_from_slice(
                        format!("{{\"msgid\":10,\"groupid\":{huge},\"msg\":\"x\"}}\n").as_bytes(),
                    );
                }
                if !e.try_send_raw(&burst).await {
                    break;
                }
                while let Read::Line(_) = e.read_line(Duration::from_millis(5)).await {}
            }
        }));
    }

    // The victim meanwhile: PINGs and chats, one at a time, for 5 s.
    let mut ping = Vec::new();
    let mut chat = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    let mut peak = 0.0f64;
    while Instant::now() < until {
        let t = Instant::now();
        v.send(json!({"msgid": 18})).await;
        loop {
            let f = v.recv().await;
            if f["msgid"] == 19 {
                break;
            }
        }
        ping.push(t.elapsed());
        let t = Instant::now();
        v.send(json!({"msgid": 6, "toid": pal, "msg": "still here?"}))
            .await;
        loop {
            let f = p.recv().await;
            if f["msgid"] == 6 {
                break;
            }
        }
        chat.push(t.elapsed());
        // The victim's own ACKs and the storm's resyncs: read them away.
        while let Read::Line(_) = v.read_line(Duration::from_millis(1)).await {}
        peak = peak.max(rss_mib() - base);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    for a in attacks {
        let _ = tokio::time::timeout(Duration::from_secs(10), a).await;
    }
    ping.sort();
    chat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "victim under attack: PING p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} round trips); \
         chat p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({}); server RSS grew at most {peak:.1} MiB",
        ms(percentile(&ping, 0.5)),
        ms(percentile(&ping, 0.99)),
        ms(*ping.last().unwrap()),
        ping.len(),
        ms(percentile(&chat, 0.5)),
        ms(percentile(&chat, 0.99)),
        ms(*chat.last().unwrap()),
        chat.len(),
    );
    // Bounds far above what the limits allow and far below what the
    // unbounded server cost (seconds of delay, gigabytes of memory): see
    // docs/reliability.md for the measured figures.
    assert!(percentile(&ping, 0.99) < Duration::from_millis(250));
    assert!(percentile(&chat, 0.99) < Duration::from_millis(250));
    assert!(peak < 256.0, "RSS grew {peak:.1} MiB");
    assert!(
        ping.len() > 50,
        "the victim got only {} round trips in 5 s",
        ping.len()
    );
    drop(members);
}

/// Frames until 100 ms of silence.
async fn quiet(c: &mut Client) -> Vec<Value> {
    let mut out = Vec::new();
    while let Read::Line(l) = c.read_line(Duration::from_millis(100)).await {
        out.push(serde_json::from_slice(&l).unwrap());
    }
    out
}
