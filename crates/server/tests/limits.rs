//! Limits and robustness: rate limiting (errno 9), the connection cap and
//! storage outages (errno 10), slow consumers, idle and half-open
//! connections, and graceful shutdown with a restart on the same database.

mod common;

use std::time::Duration;

use clusterchat::Config;
use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errno_9_when_a_connection_floods_beyond_the_rate_limit() {
    let cfg = Config {
        rate_limit: 2,
        rate_burst: 5,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let mut c = srv.connect().await;
    let mut flood = Vec::new();
    for i in 0..30 {
        flood.extend_from_slice(format!("{{\"msgid\":18,\"reqid\":{i}}}\n").as_bytes());
    }
    c.send_raw(&flood).await;
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..30 {
        let v = c.recv().await;
        match v["msgid"].as_i64() {
            Some(19) => pongs += 1,
            Some(11) => {
                assert_eq!(v["errno"], 9, "{v}");
                limited += 1;
            }
            _ => panic!("unexpected frame {v}"),
        }
    }
    assert!(pongs >= 5, "the burst is allowed: {pongs} PONGs");
    assert!(limited >= 10, "the flood is limited: {limited} errno 9");
    // Other connections have their own budget.
    let mut d = srv.connect().await;
    d.send(json!({"msgid": 18})).await;
    d.recv_msgid(19).await;
    // The connection stays open; once the bucket refills it is served again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.send(json!({"msgid": 18, "reqid": "later"})).await;
    assert_eq!(c.recv().await, json!({"msgid": 19, "reqid": "later"}));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errno_10_for_connections_over_max_connections() {
    let cfg = Config {
        max_connections: 2,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let mut c1 = srv.connect().await;
    let mut c2 = srv.connect().await;
    for c in [&mut c1, &mut c2] {
        c.send(json!({"msgid": 18})).await;
        c.recv_msgid(19).await;
    }
    let mut c3 = srv.connect().await;
    let e = c3.expect_error(10).await;
    assert!(e.get("re").is_none(), "{e}");
    c3.expect_eof().await;

    // A freed slot is usable again (the server notices the close shortly).
    drop(c1);
    let mut ok = false;
    for _ in 0..50 {
        let mut c = srv.connect().await;
        match c.read_line(Duration::from_millis(100)).await {
            Read::Timeout => {
                c.send(json!({"msgid": 18})).await;
                c.recv_msgid(19).await;
                ok = true;
                break;
            }
            Read::Line(l) => {
                let v: Value = serde_json::from_slice(&l).unwrap();
                assert_eq!(v["errno"], 10, "{v}");
            }
            Read::Eof => panic!("closed without a frame"),
        }
    }
    assert!(ok, "the slot of a closed connection was never freed");
    c2.send(json!({"msgid": 18})).await;
    c2.recv_msgid(19).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errno_10_when_storage_is_unavailable_never_errno_1() {
    let srv = TestServer::start().await;
    let mut a = srv.connect().await;
    let alice = a.register("alice", "pw").await;
    let token = a.login_l2(alice, "pw").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = srv.register("bob", "pw").await;

    // Break the database under the running server.
    srv.store.close().await;

    let mut c = srv.connect().await;
    for req in [
        json!({"msgid": 1, "id": bob, "password": "pw"}),
        json!({"msgid": 1, "id": bob, "password": "wrong"}),
        json!({"msgid": 1, "id": 999, "password": "pw"}),
        json!({"msgid": 1, "id": bob, "password": "pw", "v": 2}),
        json!({"msgid": 1, "id": alice, "token": token, "v": 2}),
    ] {
        c.send(req.clone()).await;
        let v = c.recv_msgid(2).await;
        assert_eq!(v["errno"], 10, "{req} during an outage: {v}");
    }
    c.send(json!({"msgid": 4, "name": "carol", "password": "pw"}))
        .await;
    let v = c.recv_msgid(5).await;
    assert_eq!(v["errno"], 10, "{v}");

    // A session that was already open gets errno 10 for its requests.
    for req in [
        json!({"msgid": 6, "toid": bob, "msg": "x"}),
        json!({"msgid": 10, "groupid": 1, "msg": "x"}),
        json!({"msgid": 7, "friendid": bob}),
        json!({"msgid": 8, "groupname": "g"}),
        json!({"msgid": 17, "toid": bob}),
    ] {
        a.send(req.clone()).await;
        let e = a.recv().await;
        assert_eq!(
            (e["msgid"].clone(), e["errno"].clone()),
            (json!(11), json!(10)),
            "{req} during an outage: {e}"
        );
    }
    // Liveness does not depend on storage.
    a.send(json!({"msgid": 18})).await;
    a.recv_msgid(19).await;
    srv.stop().await;
}

/// Floods a victim that never reads until the server drops it; returns the
/// mids sent, what the victim's socket held, and the parties still connected.
async fn flood_until_dropped(srv: &TestServer, level: u8) -> (i64, Vec<i64>, Vec<Value>, Client) {
    let (_sender, mut s) = user_l2(srv, "sender").await;
    let (_carol, mut c) = user_l2(srv, "carol").await;
    let (dave, mut d) = user_l2(srv, "dave").await;
    let mut v = srv.connect().await;
    let victim = v.register("victim", "pw").await;
    s.send(json!({"msgid": 7, "friendid": victim})).await;
    s.expect_ack(7).await;
    if level == 1 {
        v.login_l1(victim, "pw").await;
    } else {
        v.login_l2(victim, "pw").await;
    }
    assert_eq!(s.recv_msgid(20).await["state"], "online");
    // From here on the victim never reads.

    let mut mids = Vec::new();
    let mut dropped = false;
    // Small batches: the sender's own queue (also 8) holds its ACKs and the
    // PRESENCE this test waits for, so it must never hold more than 8 at once.
    const BATCH: usize = 4;
    for round in 0..1000 {
        let mut batch = Vec::new();
        for i in 0..BATCH {
            let f = json!({"msgid": 6, "toid": victim, "msg": body(round * BATCH + i), "reqid": round * BATCH + i});
            batch.extend_from_slice(&serde_json::to_vec(&f).unwrap());
            batch.push(b'\n');
        }
        s.send_raw(&batch).await;
        let mut acks = 0;
        while acks < BATCH {
            let f = s.recv().await;
            match f["msgid"].as_i64() {
                Some(12) => {
                    mids.push(f["mid"].as_i64().unwrap());
                    acks += 1;
                }
                Some(20) => {
                    assert_eq!(f, json!({"msgid": 20, "id": victim, "state": "offline"}));
                    dropped = true;
                }
                _ => panic!("unexpected frame for the sender: {f}"),
            }
        }
        // Everyone else is served meanwhile.
        c.send(json!({"msgid": 6, "toid": dave, "msg": format!("round {round}")}))
            .await;
        c.expect_ack(6).await;
        assert_eq!(d.recv_msgid(6).await["msg"], format!("round {round}"));
        if dropped {
            break;
        }
    }
    assert!(
        dropped,
        "the slow consumer was not disconnected after {} messages",
        mids.len()
    );
    // The victim's socket holds what was written before the drop, then EOF.
    let got = v.drain_to_eof(Duration::from_secs(30)).await;
    assert!(
        got.len() < mids.len(),
        "everything fit; nothing was dropped"
    );
    // What arrived is a prefix, in order, without gaps.
    for (i, f) in got.iter().enumerate() {
        assert_eq!(index_of(&f["msg"]), i, "frame {i} out of order");
        if level == 2 {
            assert_eq!(f["mid"], mids[i]);
            assert_eq!(f["seq"], i as i64 + 1, "seq gap at frame {i}");
        }
    }
    (victim, mids, got, s)
}

/// The number at the front of a flood message.
fn index_of(msg: &Value) -> usize {
    let s = msg.as_str().expect("msg is a string");
    assert_eq!(s.len(), 16 * 1024, "flood message truncated");
    s[..6].parse().expect("numbered message")
}

/// Message number `i`: 16 KiB, numbered at the front.
fn body(i: usize) -> String {
    let mut b = format!("{i:06}:");
    b.push_str(&"y".repeat(16 * 1024 - b.len()));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_level2_consumer_is_dropped_and_catches_up_at_next_login() {
    let cfg = Config {
        outbound_queue: 8,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let (victim, mids, _got, mut s) = flood_until_dropped(&srv, 2).await;

    // Nothing was confirmed: every message comes again, in seq order.
    let mut v = srv.connect().await;
    v.login_l2(victim, "pw").await;
    for (i, &mid) in mids.iter().enumerate() {
        let f = v.recv().await;
        assert_eq!(
            (f["msgid"].clone(), f["mid"].clone(), f["seq"].clone()),
            (json!(6), json!(mid), json!(i + 1)),
        );
        assert_eq!(index_of(&f["msg"]), i);
    }
    v.expect_silence(200).await;
    // Friends hear of the login once the replay is queued.
    assert_eq!(s.recv_msgid(20).await["state"], "online");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_level1_consumer_loses_nothing() {
    let cfg = Config {
        outbound_queue: 8,
        l1_offline_in_ack: 5,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let (victim, mids, got, mut s) = flood_until_dropped(&srv, 1).await;

    // Level 1 counts a message delivered once written; what was not written
    // comes at the next login: the first ones in the ack, the rest pushed.
    let mut v = srv.connect().await;
    let ack = v.login_l1(victim, "pw").await;
    let mut again: Vec<usize> = ack["offlinemsg"]
        .as_array()
        .expect("undelivered messages in the ack")
        .iter()
        .map(|m| index_of(&decode_str(m)["msg"]))
        .collect();
    assert!(
        (1..=5).contains(&again.len()),
        "the ack holds up to l1_offline_in_ack messages: {}",
        again.len()
    );
    while again.len() < mids.len() {
        match v.read_line(Duration::from_secs(5)).await {
            Read::Line(l) => {
                let f: Value = serde_json::from_slice(&l).unwrap();
                assert_eq!(f["msgid"], 6, "{f}");
                again.push(index_of(&f["msg"]));
            }
            _ => break,
        }
    }
    // The replay is a contiguous, ordered run to the last message that starts
    // no later than the first message the dead socket did not receive.
    let start = mids.len() - again.len();
    assert!(
        start <= got.len(),
        "lost messages {start}..{}: written to a dead socket but never replayed",
        got.len()
    );
    for (k, m) in again.iter().enumerate() {
        assert_eq!(*m, start + k, "replay out of order at {k}");
    }
    v.expect_silence(300).await;
    assert_eq!(s.recv_msgid(20).await["state"], "online");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_without_login_are_closed_with_errno_7() {
    let cfg = Config {
        login_idle_timeout: Duration::from_millis(500),
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let id = srv.register("alice", "pw").await;

    // Silent from the start.
    let mut c = srv.connect().await;
    c.expect_error(7).await;
    c.expect_eof().await;

    // Half a frame and then nothing.
    let mut c = srv.connect().await;
    c.send_raw(br#"{"msgid":18"#).await;
    c.expect_error(7).await;
    c.expect_eof().await;

    // Frames other than a successful login do not extend the window (junk
    // must not hold a connection slot): PINGs every 100 ms, closed anyway.
    let mut c = srv.connect().await;
    let mut pongs = 0;
    loop {
        c.send(json!({"msgid": 18})).await;
        let v = c.recv().await;
        if v["msgid"] == 19 {
            pongs += 1;
            assert!(pongs < 10, "PINGs kept the connection open past its window");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(v["errno"], 7, "{v}");
        break;
    }
    c.expect_eof().await;

    // A logged-in connection may idle.
    let mut c = srv.connect().await;
    c.login_l2(id, "pw").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.send(json!({"msgid": 18})).await;
    c.recv_msgid(19).await;
    // After LOGINOUT the connection stays open and the idle clock restarts.
    c.send(json!({"msgid": 3})).await;
    c.expect_ack(3).await;
    c.expect_silence(100).await;
    c.send(json!({"msgid": 18})).await;
    c.recv_msgid(19).await;
    c.expect_error(7).await;
    c.expect_eof().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_still_gets_replies_then_eof() {
    let srv = TestServer::start().await;
    let (bob, mut b) = user_l2(&srv, "bob").await;
    let mut a = srv.connect().await;
    let alice = a.register("alice", "pw").await;
    // Login, chat and ping, then half-close: every reply still comes.
    let mut bytes = Vec::new();
    for f in [
        json!({"msgid": 1, "id": alice, "password": "pw", "v": 2}),
        json!({"msgid": 6, "toid": bob, "msg": "bye"}),
        json!({"msgid": 18}),
    ] {
        bytes.extend_from_slice(&serde_json::to_vec(&f).unwrap());
        bytes.push(0);
    }
    a.send_raw(&bytes).await;
    a.shutdown_write().await;
    assert_eq!(a.recv_msgid(2).await["errno"], 0);
    a.expect_ack(6).await;
    a.recv_msgid(19).await;
    a.expect_eof().await;
    assert_eq!(b.recv_msgid(6).await["msg"], "bye");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_clients_and_a_restart_keeps_everything() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (carol, mut c) = user_l1(&srv, "carol").await;
    let bob = srv.register("bob", "pw").await;
    a.send(json!({"msgid": 7, "friendid": bob})).await;
    a.expect_ack(7).await;
    a.send(json!({"msgid": 8, "groupname": "keep", "groupdesc": "me"}))
        .await;
    let g = a.expect_ack(8).await["groupid"].as_i64().unwrap();
    // carol joins at level 1 (silent), bob joins later through the restart.
    c.send_nul(json!({"msgid": 9, "id": carol, "groupid": g}))
        .await;
    c.barrier().await;
    let mut mids = Vec::new();
    for i in 0..3 {
        a.send(json!({"msgid": 6, "toid": bob, "msg": format!("kept {i}")}))
            .await;
        mids.push(a.expect_ack(6).await["mid"].as_i64().unwrap());
    }

    // Shut down: every client sees the connection close, and run returns.
    srv.shutdown.cancel();
    a.drain_to_eof(Duration::from_secs(10)).await;
    c.drain_to_eof(Duration::from_secs(10)).await;
    let addr = srv.addr;
    let dir = srv.stop().await.expect("the temporary directory");
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    // Same database, new server: accounts, friends, groups and undelivered
    // messages are all there.
    let srv = TestServer::start_on(test_config(), &dir.path().join("chat.db")).await;
    let mut b = srv.connect().await;
    let ack = b.login_l2(bob, "pw").await;
    assert_eq!(
        ack["friends"],
        json!([{"id": alice, "name": "alice", "state": "offline"}])
    );
    for (i, &mid) in mids.iter().enumerate() {
        let f = b.recv_msgid(6).await;
        assert_eq!(f["mid"], mid);
        assert_eq!(f["seq"], i as i64 + 1);
        assert_eq!(f["msg"], format!("kept {i}"));
    }
    b.send(json!({"msgid": 9, "groupid": g})).await;
    b.expect_ack(9).await;
    let mut a = srv.connect().await;
    let ack = a.login_l2(alice, "pw").await;
    assert_eq!(ack["groups"][0]["groupname"], "keep");
    assert_eq!(ack["groups"][0]["users"].as_array().unwrap().len(), 3);
    assert_eq!(b.recv_msgid(20).await["state"], "online");
    // New ids do not collide with old ones.
    let dave = srv.register("dave", "pw").await;
    assert!(dave > bob.max(carol).max(alice));
    srv.stop().await;
    drop(dir);
}
