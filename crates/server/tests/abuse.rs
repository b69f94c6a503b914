//! Abuse resistance over real sockets: what one hostile client can make the
//! server hold or do stays bounded, and does not cost other users.
//!
//! Memory figures are this test process's RSS growth while the attack runs
//! (the server runs in-process); bounds are generous against noise and far
//! below what the unbounded behaviour cost.

mod common;

use std::time::Duration;

use clusterchat::Config;
use common::*;
use serde_json::{json, Value};

/// Tests that measure this process's memory run one at a time.
static MEASURE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A message of control characters that just fits a 64 KiB frame once
/// JSON-escaped (6 bytes each): about 63 KiB in every reply that holds it.
fn escaped_body(i: usize) -> String {
    let mut b = format!("{i:06}");
    b.push_str(&"\u{1}".repeat(10_600));
    b
}

/// Fills a new group with `n` escaped messages from a new user; returns
/// the group.
async fn group_with_history(srv: &TestServer, n: usize) -> i64 {
    let (_, mut owner) = user_l2(srv, "owner").await;
    let g = owner.create_group("big").await;
    for i in 0..n {
        owner
            .send(json!({"msgid": 10, "groupid": g, "msg": escaped_body(i)}))
            .await;
    }
    for _ in 0..n {
        owner.expect_ack(10).await;
    }
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_replies_are_capped_at_256_kib_and_page_on() {
    let srv = TestServer::start().await;
    let g = group_with_history(&srv, 20).await;
    let (_, mut c) = user_l2(&srv, "reader").await;
    c.send(json!({"msgid": 9, "groupid": g})).await;
    c.expect_ack(9).await;
    let mut seen: Vec<i64> = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut req = json!({"msgid": 17, "groupid": g, "limit": 200});
        if let Some(b) = before {
            req["before"] = b.into();
        }
        c.send(req).await;
        let line = c.recv_text().await;
        assert!(
            line.len() <= 256 * 1024 + 1024,
            "a HISTORY reply of {} bytes",
            line.len()
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msgid"], 12, "{v}");
        let page: Vec<i64> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mid"].as_i64().unwrap())
            .collect();
        assert!(!page.is_empty(), "a page with nothing in it");
        seen.extend(&page);
        before = page.last().copied();
        if v["more"] == false {
            break;
        }
        assert_eq!(v["more"], true, "{v}");
        assert!(seen.len() < 20, "more: true after every message was seen");
    }
    assert_eq!(seen.len(), 20, "paging returns every message once");
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
    // A small conversation fits one page and says so.
    c.send(json!({"msgid": 17, "groupid": g, "limit": 1})).await;
    let v = c.expect_ack(17).await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    assert_eq!(v["more"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_history_replies_keep_memory_bounded() {
    let _serial = MEASURE.lock().await;
    let srv = TestServer::start().await;
    let g = group_with_history(&srv, 200).await;
    let mut attacker = Client::connect_tight(srv.addr).await;
    let id = attacker.register("attacker", "pw").await;
    attacker.login_l2(id, "pw").await;
    attacker.send(json!({"msgid": 9, "groupid": g})).await;
    attacker.expect_ack(9).await;

    let base = rss_mib();
    let mut flood = Vec::new();
    for _ in 0..120 {
        flood.extend_from_slice(
            format!("{{\"msgid\":17,\"groupid\":{g},\"limit\":200}}\n").as_bytes(),
        );
    }
    attacker.send_raw(&flood).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss_mib() - base;
    println!("120 unread HISTORY requests: RSS grew {grown:.1} MiB");
    assert!(grown < 64.0, "RSS grew {grown:.1} MiB");

    // Others are served meanwhile.
    let (_, mut v) = user_l2(&srv, "victim").await;
    v.send(json!({"msgid": 18})).await;
    v.recv_msgid(19).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_push_is_not_copied_per_level2_recipient() {
    let _serial = MEASURE.lock().await;
    let mut cfg = test_config();
    // 20,000 deliveries at once: this test is about memory, not fan-out.
    cfg.quotas.fanout_per_sec = 0;
    let srv = TestServer::start_with(cfg).await;
    let (_, mut sender) = user_l2(&srv, "sender").await;
    let g = sender.create_group("wide").await;
    let mut members = Vec::new();
    for i in 0..200 {
        let mut c = Client::connect_tight(srv.addr).await;
        let id = c.register(&format!("m{i}"), "pw").await;
        c.login_l2(id, "pw").await;
        c.send(json!({"msgid": 9, "groupid": g})).await;
        c.expect_ack(9).await;
        members.push(c);
    }
    let base = rss_mib();
    let body = "x".repeat(16 * 1024);
    for _ in 0..100 {
        sender
            .send(json!({"msgid": 10, "groupid": g, "msg": body}))
            .await;
    }
    for _ in 0..100 {
        sender.expect_ack(10).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_mib() - base;
    // 100 x 16 KiB to 200 members: 320 MiB if each copy were its own.
    println!("100 group messages of 16 KiB to 200 idle level-2 members: RSS grew {grown:.1} MiB");
    assert!(grown < 40.0, "RSS grew {grown:.1} MiB");
    // Every member still gets everything, in order.
    let m = &mut members[7];
    for seq in 1..=100 {
        let v = m.recv_msgid(10).await;
        assert_eq!(v["seq"], seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_frames_do_not_extend_the_login_window() {
    let cfg = Config {
        login_idle_timeout: Duration::from_millis(800),
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let mut c = srv.connect().await;
    let started = std::time::Instant::now();
    let mut closed = false;
    for _ in 0..30 {
        // Junk, a valid PING, and a failed LOGIN: none of them is a login.
        if !c.try_send_raw(b"not json\n{\"msgid\":18}\n").await {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !closed {
        let frames = c.drain_to_eof(Duration::from_secs(5)).await;
        assert!(
            frames.iter().any(|f| f["errno"] == 7),
            "closed with errno 7: {frames:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the connection outlived its login window: {:?}",
        started.elapsed()
    );
    // A login ends the window for good.
    let (_, mut ok) = user_l2(&srv, "patient").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ok.send(json!({"msgid": 18})).await;
    ok.recv_msgid(19).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection_slot() {
    let cfg = Config {
        max_connections_per_ip: 3,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = srv.connect().await;
        c.send(json!({"msgid": 18})).await;
        c.recv_msgid(19).await;
        held.push(c);
    }
    let mut refused = srv.connect().await;
    let frames = refused.drain_to_eof(Duration::from_secs(5)).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["errno"], 10, "{frames:?}");
    // A slot comes back when a connection closes.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = srv.connect().await;
    again.send(json!({"msgid": 18})).await;
    again.recv_msgid(19).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_rate_limited_per_address() {
    let cfg = Config {
        reg_per_ip_per_min: 3,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let mut c = srv.connect().await;
    // Pipelined: each REG waits for the one before (one hash in flight).
    let mut flood = Vec::new();
    for i in 0..6 {
        flood.extend_from_slice(
            format!("{{\"msgid\":4,\"name\":\"r{i}\",\"password\":\"pw\"}}\n").as_bytes(),
        );
    }
    c.send_raw(&flood).await;
    let mut made = 0;
    let mut limited = 0;
    for _ in 0..6 {
        let v = c.recv().await;
        match (v["msgid"].as_i64(), v["errno"].as_i64()) {
            (Some(5), Some(0)) => made += 1,
            (_, Some(9)) => limited += 1,
            _ => panic!("unexpected reply {v}"),
        }
    }
    assert_eq!((made, limited), (3, 3));
    // Another connection from the same address shares the budget.
    let mut d = srv.connect().await;
    d.send(json!({"msgid": 4, "name": "late", "password": "pw"}))
        .await;
    assert_eq!(d.recv().await["errno"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_earn_growing_delays_then_the_password_works_again() {
    let cfg = Config {
        login_failures_per_account: 2,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let id = srv.register("target", "right").await;
    let mut c = srv.connect().await;
    for _ in 0..3 {
        c.send(json!({"msgid": 1, "id": id, "password": "wrong"}))
            .await;
        assert_eq!(c.recv_msgid(2).await["errno"], 1);
    }
    // Blocked now (1 s after the third failure), even for the right password.
    c.send(json!({"msgid": 1, "id": id, "password": "right"}))
        .await;
    let v = c.recv_msgid(2).await;
    assert_eq!(v["errno"], 9, "{v}");
    assert!(v["errmsg"].as_str().unwrap().contains("try again in"));
    // Another account is not affected.
    let other = srv.register("bystander", "pw").await;
    srv.connect().await.login_l1(other, "pw").await;
    // After the delay the right password works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.login_l2(id, "right").await;
}

/// Sends a PROXY v1 header naming `client`, then `rest`, in one write.
async fn proxied(srv: &TestServer, client: &str, rest: &str) -> Client {
    let mut c = srv.connect().await;
    c.send_raw(format!("PROXY TCP4 {client} 127.0.0.1 40000 6000\r\n{rest}").as_bytes())
        .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client_and_limits_apply_to_it() {
    let cfg = Config {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        max_connections_per_ip: 1,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    // The header and the first frame arrive together; nothing is lost.
    let mut a = proxied(&srv, "203.0.113.9", "{\"msgid\":18}\n").await;
    a.recv_msgid(19).await;
    // The same client address again: over its cap of one.
    let mut b = proxied(&srv, "203.0.113.9", "").await;
    let frames = b.drain_to_eof(Duration::from_secs(5)).await;
    assert_eq!(frames.first().map(|f| f["errno"].clone()), Some(json!(10)));
    // Another client behind the same proxy is its own address.
    let mut c = proxied(&srv, "198.51.100.4", "{\"msgid\":18}\n").await;
    c.recv_msgid(19).await;
    // From a trusted proxy the header is required.
    let mut d = srv.connect().await;
    d.send_raw(b"{\"msgid\":18}\n").await;
    assert!(d.drain_to_eof(Duration::from_secs(7)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_else_may_send_a_proxy_header() {
    let srv = TestServer::start().await;
    let mut c = proxied(&srv, "203.0.113.9", "").await;
    assert_eq!(c.recv().await["errno"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_social_changes_is_rate_limited() {
    let srv = TestServer::start().await;
    let (_, mut c) = user_l2(&srv, "burst").await;
    let mut flood = Vec::new();
    for i in 0..300 {
        flood.extend_from_slice(
            format!("{{\"msgid\":8,\"groupname\":\"g{i}\",\"groupdesc\":\"\"}}\n").as_bytes(),
        );
    }
    c.send_raw(&flood).await;
    let (mut made, mut limited) = (0, 0);
    for _ in 0..300 {
        let v = c.recv().await;
        match (v["msgid"].as_i64(), v["errno"].as_i64()) {
            (Some(12), Some(0)) => made += 1,
            (Some(11), Some(9)) => limited += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(made + limited, 300);
    assert!(made <= 61, "{made} groups created in a burst");
    assert!(limited >= 239);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_name_themselves_with_errno_4() {
    let mut cfg = test_config();
    cfg.quotas.groups_created = 2;
    cfg.quotas.friends = 2;
    cfg.quotas.group_members = 3;
    let srv = TestServer::start_with(cfg).await;
    let (_, mut c) = user_l2(&srv, "me").await;
    let g = c.create_group("q1").await;
    c.create_group("q2").await;
    c.send(json!({"msgid": 8, "groupname": "q3"})).await;
    let e = c.expect_error(4).await;
    assert!(
        e["errmsg"].as_str().unwrap().contains("groups created"),
        "{e}"
    );

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(srv.register(&format!("f{i}"), "pw").await);
    }
    for (i, f) in ids.iter().enumerate() {
        c.send(json!({"msgid": 7, "friendid": f})).await;
        if i < 2 {
            c.expect_ack(7).await;
        } else {
            let e = c.expect_error(4).await;
            assert!(e["errmsg"].as_str().unwrap().contains("friends"), "{e}");
        }
    }

    // The group has its creator; two more may join, the next may not.
    for (i, f) in ids.iter().enumerate() {
        let mut m = srv.connect().await;
        m.login_l2(*f, "pw").await;
        m.send(json!({"msgid": 9, "groupid": g})).await;
        if i < 2 {
            m.expect_ack(9).await;
        } else {
            let e = m.expect_error(4).await;
            assert!(e["errmsg"].as_str().unwrap().contains("members"), "{e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_is_rate_limited_per_sender() {
    let mut cfg = test_config();
    cfg.quotas.fanout_per_sec = 40; // a burst of 40 deliveries
    let srv = TestServer::start_with(cfg).await;
    let (_, mut s) = user_l2(&srv, "loud").await;
    let g = s.create_group("crowd").await;
    for i in 0..9 {
        let mut m = srv.connect().await;
        let id = m.register(&format!("c{i}"), "pw").await;
        m.login_l2(id, "pw").await;
        m.send(json!({"msgid": 9, "groupid": g})).await;
        m.expect_ack(9).await;
    }
    let (mut sent, mut limited) = (0, 0);
    for _ in 0..20 {
        s.send(json!({"msgid": 10, "groupid": g, "msg": "hi"}))
            .await;
        let v = s.recv().await;
        match v["errno"].as_i64() {
            Some(0) => sent += 1,
            Some(9) => limited += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    // 9 deliveries each: credit for 40 runs out after the fifth.
    assert_eq!(sent, 5, "sent {sent}, limited {limited}");
    // Someone else sends freely.
    let (_, mut q) = user_l2(&srv, "quiet").await;
    let (other, _) = user_l2(&srv, "other").await;
    q.send(json!({"msgid": 6, "toid": other, "msg": "hello"}))
        .await;
    q.expect_ack(6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hears_its_login_ack_before_kicked() {
    let srv = TestServer::start().await;
    let id = srv.register("twice", "pw").await;
    let login = json!({"msgid": 1, "id": id, "password": "pw", "v": 2});
    for round in 0..150 {
        let mut a = srv.connect().await;
        let mut b = srv.connect().await;
        // Both at once: whichever registers first is kicked by the other.
        tokio::join!(a.send(login.clone()), b.send(login.clone()));
        for c in [&mut a, &mut b] {
            let v = c.recv().await;
            assert_eq!(v["msgid"], 2, "round {round}: first frame {v}");
        }
    }
}

/// Frames until `ms` of silence.
async fn quiet_frames(c: &mut Client, ms: u64) -> Vec<Value> {
    let mut out = Vec::new();
    while let Read::Line(l) = c.read_line(Duration::from_millis(ms)).await {
        out.push(serde_json::from_slice(&l).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_the_newest_session_on_fast_reconnect() {
    let srv = TestServer::start().await;
    let (_, mut w) = user_l2(&srv, "watcher").await;
    let u = srv.register("flappy", "pw").await;
    w.send(json!({"msgid": 7, "friendid": u})).await;
    w.expect_ack(7).await;
    let mut uc = srv.connect().await;
    let mut token = uc.login_l2(u, "pw").await["token"].clone();
    let mut stale = 0;
    for _ in 0..150 {
        // Close and log in again at once (with the token: no hashing, so
        // the new login races the old session's logout).
        drop(uc);
        uc = srv.connect().await;
        uc.send(json!({"msgid": 1, "id": u, "token": token, "v": 2}))
            .await;
        let ack = uc.recv_msgid(2).await;
        assert_eq!(ack["errno"], 0, "{ack}");
        token = ack["token"].clone();
        let seen: Vec<Value> = quiet_frames(&mut w, 60)
            .await
            .into_iter()
            .filter(|f| f["msgid"] == 20 && f["id"] == u)
            .collect();
        if seen.last().is_some_and(|f| f["state"] != "online") {
            stale += 1;
        }
    }
    assert_eq!(
        stale, 0,
        "the watcher was left seeing an online user offline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_before_login_is_cut_off_per_address() {
    let cfg = Config {
        prelogin_per_ip_per_sec: 5, // a burst of 50
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let id = srv.register("someone", "pw").await;
    let mut c = srv.connect().await;
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.extend_from_slice(b"{\"msgid\":18}\n");
    }
    let _ = c.try_send_raw(&flood).await;
    let frames = c.drain_to_eof(Duration::from_secs(5)).await;
    let pongs = frames.iter().filter(|f| f["msgid"] == 19).count();
    assert!(pongs < 60, "{pongs} PONGs before the cut");
    assert_eq!(frames.last().unwrap()["errno"], 9, "{:?}", frames.last());
    // The address's budget is spent for its other connections too...
    let mut d = srv.connect().await;
    d.send(json!({"msgid": 18})).await;
    assert_eq!(d.recv().await["errno"], 9);
    // ...until it refills; a logged-in session is not charged.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut e = srv.connect().await;
    e.login_l2(id, "pw").await;
    for _ in 0..100 {
        e.send(json!({"msgid": 18})).await;
        e.recv_msgid(19).await;
    }
}
