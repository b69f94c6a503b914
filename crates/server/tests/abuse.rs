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

async fn create_group(c: &mut Client, name: &str) -> i64 {
    c.send(json!({"msgid": 8, "groupname": name, "groupdesc": "d"}))
        .await;
    c.expect_ack(8).await["groupid"]
        .as_i64()
        .expect("CREATE_GROUP ACK without groupid")
}

/// Fills a new group with `n` escaped messages from a new user; returns
/// the group.
async fn group_with_history(srv: &TestServer, n: usize) -> i64 {
    let (_, mut owner) = user_l2(srv, "owner").await;
    let g = create_group(&mut owner, "big").await;
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
    let cfg = Config { ..test_config() };
    let srv = TestServer::start_with(cfg).await;
    let (_, mut sender) = user_l2(&srv, "sender").await;
    let g = create_group(&mut sender, "wide").await;
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
