//! Level 2: ACKs with reqid, per-user seq and delivery confirmation, resync
//! at login, HISTORY, PRESENCE, KICKED, idempotent sends, login tokens, and
//! the friend and group commands only level 2 has.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

/// Sends a level-2 ONE_CHAT and returns the mid from its ACK.
async fn chat(c: &mut Client, to: i64, msg: &str) -> i64 {
    c.send(json!({"msgid": 6, "toid": to, "msg": msg})).await;
    c.expect_ack(6).await["mid"]
        .as_i64()
        .expect("chat ACK without mid")
}

/// Sends a level-2 GROUP_CHAT and returns the mid from its ACK.
async fn group_chat(c: &mut Client, g: i64, msg: &str) -> i64 {
    c.send(json!({"msgid": 10, "groupid": g, "msg": msg})).await;
    c.expect_ack(10).await["mid"]
        .as_i64()
        .expect("chat ACK without mid")
}

/// Asserts the next frame is a pushed message with this mid and seq.
async fn expect_push(c: &mut Client, kind: i64, mid: i64, seq: i64) -> Value {
    let v = c.recv().await;
    assert_eq!(v["msgid"], kind, "expected a push, got {v}");
    assert_eq!(v["mid"], mid, "wrong mid in {v}");
    assert_eq!(v["seq"], seq, "wrong seq in {v}");
    v
}

/// LOGINOUT at level 2 then a new level-2 LOGIN on the same connection.
async fn relogin(c: &mut Client, id: i64, extra: Value) -> Value {
    c.send(json!({"msgid": 3})).await;
    c.expect_ack(3).await;
    let mut req = json!({"msgid": 1, "id": id, "password": "pw", "v": 2});
    if let (Value::Object(r), Value::Object(e)) = (&mut req, extra) {
        r.extend(e);
    }
    c.send(req).await;
    let ack = c.recv_msgid(2).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    ack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_echo_reqid_and_carry_results() {
    let srv = TestServer::start().await;
    let bob = srv.register("bob", "pw").await;
    let mut a = srv.connect().await;
    let alice = a.register("alice", "pw").await;

    a.send(json!({"msgid": 1, "id": alice, "password": "pw", "v": 2, "reqid": "login-1"}))
        .await;
    let ack = a.recv_msgid(2).await;
    assert_eq!(
        keys(&ack),
        ["errno", "friends", "groups", "id", "msgid", "name", "reqid", "token"]
    );
    assert_eq!(ack["errno"], 0);
    assert_eq!(ack["reqid"], "login-1");
    assert_eq!(ack["friends"], json!([]));
    assert_eq!(ack["groups"], json!([]));
    let token = ack["token"].as_str().unwrap();
    assert!(!token.is_empty() && token.len() <= 512);

    // PING/PONG with string, integer and no reqid.
    a.send(json!({"msgid": 18, "reqid": "abc"})).await;
    assert_eq!(a.recv_text().await, r#"{"msgid":19,"reqid":"abc"}"#);
    a.send(json!({"msgid": 18, "reqid": 7})).await;
    assert_eq!(a.recv_text().await, r#"{"msgid":19,"reqid":7}"#);
    a.send(json!({"msgid": 18})).await;
    assert_eq!(a.recv_text().await, r#"{"msgid":19}"#);

    a.send(json!({"msgid": 7, "friendid": bob, "reqid": 42}))
        .await;
    assert_eq!(
        a.recv_text().await,
        r#"{"errno":0,"msgid":12,"re":7,"reqid":42}"#
    );
    a.send(json!({"msgid": 8, "groupname": "g", "reqid": "grp"}))
        .await;
    let v = a.expect_ack(8).await;
    assert_eq!(keys(&v), ["errno", "groupid", "msgid", "re", "reqid"]);
    assert_eq!(v["reqid"], "grp");
    assert!(v["groupid"].as_i64().unwrap() > 0);
    a.send(json!({"msgid": 6, "toid": bob, "msg": "x", "reqid": "m1"}))
        .await;
    let v = a.expect_ack(6).await;
    assert_eq!(keys(&v), ["errno", "mid", "msgid", "re", "reqid"]);
    assert_eq!(v["reqid"], "m1");
    assert!(v["mid"].as_i64().unwrap() > 0);

    // Failures echo reqid too.
    a.send(json!({"msgid": 6, "toid": 999, "msg": "x", "reqid": "bad"}))
        .await;
    let e = a.expect_error(3).await;
    assert_eq!(e["re"], 6);
    assert_eq!(e["reqid"], "bad");
    a.send(json!({"msgid": 99, "reqid": -5})).await;
    let e = a.expect_error(6).await;
    assert_eq!(
        (e["re"].clone(), e["reqid"].clone()),
        (json!(99), json!(-5))
    );

    // LOGINOUT at level 2 is ACKed; the connection stays open.
    a.send(json!({"msgid": 3, "reqid": "bye"})).await;
    assert_eq!(a.expect_ack(3).await["reqid"], "bye");
    a.send(json!({"msgid": 1, "id": alice, "password": "nope", "v": 2, "reqid": 9}))
        .await;
    let v = a.recv_msgid(2).await;
    assert_eq!(v["errno"], 1);
    assert_eq!(v["reqid"], 9);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_is_per_user_from_one_and_gap_free_and_groups_skip_the_sender() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;
    let (_carol, mut c) = user_l2(&srv, "carol").await;
    let (_dave, mut d) = user_l2(&srv, "dave").await;

    let g = a.create_group("team").await;
    b.send(json!({"msgid": 9, "groupid": g})).await;
    b.expect_ack(9).await;
    c.send(json!({"msgid": 9, "groupid": g, "reqid": "j"}))
        .await;
    assert_eq!(c.expect_ack(9).await["reqid"], "j");

    let m1 = chat(&mut a, bob, "one").await;
    let raw = b.recv_text().await;
    let v: Value = serde_json::from_str(&raw).unwrap();
    let time = v["time"].as_str().unwrap();
    // Classic field order, then mid and seq.
    assert_eq!(
        raw,
        format!(
            r#"{{"msgid":6,"id":{alice},"name":"alice","toid":{bob},"msg":"one","time":"{time}","mid":{m1},"seq":1}}"#
        )
    );

    let m2 = group_chat(&mut a, g, "all").await;
    assert!(m2 > m1, "mids grow in storage order");
    let v = expect_push(&mut b, 10, m2, 2).await;
    assert_eq!(
        keys(&v),
        ["groupid", "id", "mid", "msg", "msgid", "name", "seq", "time", "userid"]
    );
    assert_eq!(
        (v["id"].clone(), v["userid"].clone()),
        (json!(alice), json!(alice))
    );
    assert_eq!(v["groupid"], g);
    expect_push(&mut c, 10, m2, 1).await;
    a.expect_silence(300).await; // the sender gets its ACK only
    d.expect_silence(10).await; // not a member

    let m3 = chat(&mut b, alice, "back").await;
    expect_push(&mut a, 6, m3, 1).await;
    let m4 = group_chat(&mut c, g, "from carol").await;
    expect_push(&mut a, 10, m4, 2).await;
    expect_push(&mut b, 10, m4, 3).await;
    c.expect_silence(200).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_friend_removes_the_friendship_for_both() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;

    a.send(json!({"msgid": 7, "friendid": bob})).await;
    a.expect_ack(7).await;
    let ack = relogin(&mut b, bob, json!({})).await;
    assert_eq!(
        ack["friends"],
        json!([{"id": alice, "name": "alice", "state": "online"}])
    );
    // alice hears bob leave and come back.
    assert_eq!(a.recv_msgid(20).await["state"], "offline");
    assert_eq!(a.recv_msgid(20).await["state"], "online");

    a.send(json!({"msgid": 13, "friendid": bob})).await;
    a.expect_ack(13).await;
    let ack = relogin(&mut b, bob, json!({})).await;
    assert_eq!(ack["friends"], json!([]));
    a.expect_silence(200).await; // no longer a friend: no PRESENCE
    a.send(json!({"msgid": 13, "friendid": bob})).await;
    assert_eq!(a.expect_error(3).await["re"], 13);
    b.send(json!({"msgid": 13, "friendid": alice})).await;
    b.expect_error(3).await;
    // Befriending again works from either side, so both directions are gone.
    b.send(json!({"msgid": 7, "friendid": alice})).await;
    b.expect_ack(7).await;
    let ack = relogin(&mut a, alice, json!({})).await;
    assert_eq!(ack["friends"][0]["id"], bob);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_and_disband_follow_the_roles() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;
    let (_carol, mut c) = user_l2(&srv, "carol").await;

    let g = a.create_group("club").await;
    b.send(json!({"msgid": 9, "groupid": g})).await;
    b.expect_ack(9).await;

    let ack = relogin(&mut b, bob, json!({})).await;
    assert_eq!(
        ack["groups"],
        json!([{"id": g, "groupname": "club", "groupdesc": "d", "users": [
            {"id": alice, "name": "alice", "state": "online", "role": "creator"},
            {"id": bob, "name": "bob", "state": "online", "role": "normal"},
        ]}])
    );

    // The creator cannot quit; others cannot disband; non-members cannot quit.
    a.send(json!({"msgid": 14, "groupid": g})).await;
    assert_eq!(a.expect_error(4).await["re"], 14);
    b.send(json!({"msgid": 15, "groupid": g})).await;
    assert_eq!(b.expect_error(4).await["re"], 15);
    c.send(json!({"msgid": 15, "groupid": g})).await;
    c.expect_error(4).await;
    c.send(json!({"msgid": 14, "groupid": g})).await;
    c.expect_error(4).await;

    // bob quits: he no longer gets the group's messages and may not send.
    b.send(json!({"msgid": 14, "groupid": g})).await;
    b.expect_ack(14).await;
    b.send(json!({"msgid": 14, "groupid": g})).await;
    b.expect_error(4).await;
    b.send(json!({"msgid": 10, "groupid": g, "msg": "x"})).await;
    b.expect_error(4).await;
    group_chat(&mut a, g, "alone").await;
    b.expect_silence(200).await;

    // The creator disbands; the group is gone for everyone.
    a.send(json!({"msgid": 15, "groupid": g, "reqid": 1})).await;
    assert_eq!(a.expect_ack(15).await["reqid"], 1);
    for (req, re) in [
        (json!({"msgid": 10, "groupid": g, "msg": "x"}), 10),
        (json!({"msgid": 15, "groupid": g}), 15),
        (json!({"msgid": 14, "groupid": g}), 14),
        (json!({"msgid": 17, "groupid": g}), 17),
    ] {
        a.send(req).await;
        assert_eq!(a.expect_error(3).await["re"], re);
    }
    c.send(json!({"msgid": 9, "groupid": g})).await;
    c.expect_error(3).await;
    let ack = relogin(&mut a, alice, json!({})).await;
    assert_eq!(ack["groups"], json!([]));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_messages_are_replayed_in_seq_order_with_same_mid() {
    let srv = TestServer::start().await;
    let (_alice, mut a) = user_l2(&srv, "alice").await;
    let mut b = srv.connect().await;
    let bob = b.register("bob", "pw").await;

    // bob is offline: the messages wait.
    let mut mids = Vec::new();
    for i in 1..=4 {
        mids.push(chat(&mut a, bob, &format!("m{i}")).await);
    }
    b.login_l2(bob, "pw").await;
    for (i, &mid) in mids.iter().enumerate() {
        let v = expect_push(&mut b, 6, mid, i as i64 + 1).await;
        assert_eq!(v["msg"], format!("m{}", i + 1));
    }
    // DELIVERED gets no reply.
    b.send(json!({"msgid": 16, "seq": 2, "reqid": "d"})).await;
    b.expect_silence(300).await;

    // Only seq 3 and 4 come again, unchanged.
    relogin(&mut b, bob, json!({})).await;
    expect_push(&mut b, 6, mids[2], 3).await;
    expect_push(&mut b, 6, mids[3], 4).await;
    b.expect_silence(300).await;

    // last_seq in LOGIN confirms too.
    relogin(&mut b, bob, json!({"last_seq": 4})).await;
    b.expect_silence(300).await;
    let m5 = chat(&mut a, bob, "m5").await;
    expect_push(&mut b, 6, m5, 5).await;

    // A confirmation beyond the last seq is clamped: later messages still wait.
    b.send(json!({"msgid": 16, "seq": 1000})).await;
    relogin(&mut b, bob, json!({})).await;
    b.expect_silence(300).await;
    b.send(json!({"msgid": 3})).await;
    b.expect_ack(3).await;
    let m6 = chat(&mut a, bob, "m6").await;
    b.login_l2(bob, "pw").await;
    expect_push(&mut b, 6, m6, 6).await;
    b.expect_silence(200).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_counter_is_shared_by_both_levels() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l1(&srv, "bob").await;
    chat(&mut a, bob, "to level 1").await;
    let v = b.recv_msgid(6).await;
    assert!(v.get("seq").is_none(), "{v}");
    // Written to a level-1 socket: delivered, once that is recorded.
    srv.wait_acked(bob, 1).await;
    b.send(json!({"msgid": 3, "id": bob})).await;
    b.login_l2(bob, "pw").await;
    b.expect_silence(200).await;
    let m = chat(&mut a, bob, "to level 2").await;
    expect_push(&mut b, 6, m, 2).await;
    let _ = alice;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_conversations_newest_first() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;
    let (_carol, mut c) = user_l2(&srv, "carol").await;

    let mut mids = Vec::new();
    for i in 0..5 {
        if i % 2 == 0 {
            mids.push(chat(&mut a, bob, &format!("h{i}")).await);
            b.recv_msgid(6).await;
        } else {
            mids.push(chat(&mut b, alice, &format!("h{i}")).await);
            a.recv_msgid(6).await;
        }
    }
    // carol's chat with bob is another conversation.
    chat(&mut c, bob, "elsewhere").await;
    b.recv_msgid(6).await;

    let newest_first: Vec<i64> = mids.iter().rev().copied().collect();
    let page_mids = |v: &Value| -> Vec<i64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mid"].as_i64().unwrap())
            .collect()
    };
    a.send(json!({"msgid": 17, "toid": bob, "reqid": "h"}))
        .await;
    let h = a.expect_ack(17).await;
    assert_eq!(h["reqid"], "h");
    assert_eq!(page_mids(&h), newest_first);
    let first = &h["messages"][0];
    assert_eq!(
        keys(first),
        ["id", "mid", "msg", "msgid", "name", "time", "toid"]
    );
    assert_eq!(
        (
            first["id"].clone(),
            first["toid"].clone(),
            first["msg"].clone()
        ),
        (json!(alice), json!(bob), json!("h4"))
    );
    // Both directions, from either side.
    b.send(json!({"msgid": 17, "toid": alice})).await;
    assert_eq!(page_mids(&b.expect_ack(17).await), newest_first);

    a.send(json!({"msgid": 17, "toid": bob, "limit": 2})).await;
    assert_eq!(page_mids(&a.expect_ack(17).await), newest_first[..2]);
    a.send(json!({"msgid": 17, "toid": bob, "before": mids[2]}))
        .await;
    assert_eq!(page_mids(&a.expect_ack(17).await), [mids[1], mids[0]]);
    a.send(json!({"msgid": 17, "toid": bob, "before": mids[4], "limit": 2}))
        .await;
    assert_eq!(page_mids(&a.expect_ack(17).await), [mids[3], mids[2]]);
    a.send(json!({"msgid": 17, "toid": bob, "before": mids[0]}))
        .await;
    assert_eq!(a.expect_ack(17).await["messages"], json!([]));

    // Groups: members only.
    let g = a.create_group("hist").await;
    b.send(json!({"msgid": 9, "groupid": g})).await;
    b.expect_ack(9).await;
    let gm1 = group_chat(&mut a, g, "g1").await;
    b.recv_msgid(10).await;
    let gm2 = group_chat(&mut b, g, "g2").await;
    a.recv_msgid(10).await;
    b.send(json!({"msgid": 17, "groupid": g})).await;
    let h = b.expect_ack(17).await;
    assert_eq!(page_mids(&h), [gm2, gm1]);
    assert_eq!(h["messages"][1]["groupid"], g);
    assert_eq!(h["messages"][1]["userid"], alice);
    c.send(json!({"msgid": 17, "groupid": g})).await;
    assert_eq!(c.expect_error(4).await["re"], 17);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_limit_defaults_to_50_and_is_clamped_to_200() {
    let srv = TestServer::start().await;
    let (_alice, mut a) = user_l2(&srv, "alice").await;
    let bob = srv.register("bob", "pw").await;

    // 210 pipelined sends in one write; the ACKs come back in order.
    let mut burst = Vec::new();
    for i in 0..210 {
        let mut f = serde_json::to_vec(
            &json!({"msgid": 6, "toid": bob, "msg": format!("n{i}"), "reqid": i}),
        )
        .unwrap();
        f.push(b'\n');
        burst.extend_from_slice(&f);
    }
    a.send_raw(&burst).await;
    let mut last = 0;
    for i in 0..210 {
        let v = a.expect_ack(6).await;
        assert_eq!(v["reqid"], i);
        let mid = v["mid"].as_i64().unwrap();
        assert!(mid > last, "mids of one sender's pipelined chats grow");
        last = mid;
    }
    a.send(json!({"msgid": 17, "toid": bob})).await;
    let h = a.expect_ack(17).await;
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 50);
    assert_eq!(msgs[0]["msg"], "n209");
    assert_eq!(msgs[49]["msg"], "n160");

    a.send(json!({"msgid": 17, "toid": bob, "limit": 100000}))
        .await;
    let h = a.expect_ack(17).await;
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 200);
    let oldest = msgs[199]["mid"].as_i64().unwrap();
    assert_eq!(msgs[199]["msg"], "n10");
    a.send(json!({"msgid": 17, "toid": bob, "limit": 200, "before": oldest}))
        .await;
    assert_eq!(
        a.expect_ack(17).await["messages"].as_array().unwrap().len(),
        10
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reaches_level2_friends_only() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let bob = srv.register("bob", "pw").await;
    let carol = srv.register("carol", "pw").await;
    for f in [bob, carol] {
        a.send(json!({"msgid": 7, "friendid": f})).await;
        a.expect_ack(7).await;
    }
    let (_dave, mut d) = user_l2(&srv, "dave").await;

    let mut b = srv.connect().await;
    let ack = b.login_l2(bob, "pw").await;
    assert_eq!(ack["friends"][0]["state"], "online");
    assert_eq!(
        a.recv_text().await,
        format!(r#"{{"id":{bob},"msgid":20,"state":"online"}}"#)
    );
    let mut c = srv.connect().await;
    c.login_l1(carol, "pw").await;
    assert_eq!(
        a.recv().await,
        json!({"msgid": 20, "id": carol, "state": "online"})
    );
    d.expect_silence(200).await; // not a friend

    // alice leaves: bob (level 2) hears it, carol (level 1) does not.
    a.send(json!({"msgid": 3})).await;
    a.expect_ack(3).await;
    assert_eq!(
        b.recv().await,
        json!({"msgid": 20, "id": alice, "state": "offline"})
    );
    c.expect_silence(300).await;
    let ack = a.login_l2(alice, "pw").await;
    let states: BTreeSet<String> = ack["friends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{}={}", f["id"], f["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        BTreeSet::from([format!("{bob}=online"), format!("{carol}=online")])
    );
    assert_eq!(
        b.recv().await,
        json!({"msgid": 20, "id": alice, "state": "online"})
    );
    c.expect_silence(200).await;

    // A dropped connection counts as going offline.
    drop(b);
    assert_eq!(
        a.recv().await,
        json!({"msgid": 20, "id": bob, "state": "offline"})
    );
    drop(c);
    assert_eq!(
        a.recv().await,
        json!({"msgid": 20, "id": carol, "state": "offline"})
    );
    d.expect_silence(100).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_login_kicks_the_old_session() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let mut b1 = srv.connect().await;
    let bob = b1.register("bob", "pw").await;
    a.send(json!({"msgid": 7, "friendid": bob})).await;
    a.expect_ack(7).await;
    b1.login_l2(bob, "pw").await;
    assert_eq!(a.recv_msgid(20).await["state"], "online");

    let mut b2 = srv.connect().await;
    b2.login_l2(bob, "pw").await;
    let k = b1.recv_msgid(21).await;
    assert!(k["errmsg"].as_str().is_some_and(|m| !m.is_empty()), "{k}");
    b1.expect_eof().await;
    // alice sees bob come online again, never offline.
    assert_eq!(a.recv_msgid(20).await["state"], "online");
    a.expect_silence(300).await;

    // The new session works.
    b2.send(json!({"msgid": 18})).await;
    b2.recv_msgid(19).await;
    let m = chat(&mut a, bob, "to the new session").await;
    expect_push(&mut b2, 6, m, 1).await;

    // A level-1 login replaces a level-2 one the same way.
    let mut b3 = srv.connect().await;
    b3.login_l1(bob, "pw").await;
    b2.recv_msgid(21).await;
    b2.expect_eof().await;
    a.recv_msgid(20).await;
    chat(&mut a, bob, "to level 1").await;
    assert_eq!(b3.recv_msgid(6).await["msg"], "to level 1");
    // ...and a level-2 login replaces a level-1 one.
    let mut b4 = srv.connect().await;
    b4.login_l2(bob, "pw").await;
    b3.recv_msgid(21).await;
    b3.expect_eof().await;
    let _ = alice;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmid_makes_a_retried_send_idempotent() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;

    a.send(json!({"msgid": 6, "toid": bob, "msg": "once", "cmid": "c-1"}))
        .await;
    let m1 = a.expect_ack(6).await["mid"].as_i64().unwrap();
    expect_push(&mut b, 6, m1, 1).await;
    // The retry gets the first mid; nothing is pushed.
    a.send(json!({"msgid": 6, "toid": bob, "msg": "once", "cmid": "c-1"}))
        .await;
    assert_eq!(a.expect_ack(6).await["mid"], m1);
    b.expect_silence(300).await;
    // The cmid reused for another text, or another recipient: errno 5,
    // nothing stored or pushed.
    a.send(json!({"msgid": 6, "toid": bob, "msg": "once again", "cmid": "c-1", "reqid": 1}))
        .await;
    let e = a.expect_error(5).await;
    assert_eq!((e["re"].clone(), e["reqid"].clone()), (json!(6), json!(1)));
    a.send(json!({"msgid": 6, "toid": alice, "msg": "once", "cmid": "c-1"}))
        .await;
    a.expect_error(5).await;
    b.expect_silence(300).await;
    // A new cmid is a new message, with the next seq (the retry used none).
    a.send(json!({"msgid": 6, "toid": bob, "msg": "twice", "cmid": "c-2"}))
        .await;
    let m2 = a.expect_ack(6).await["mid"].as_i64().unwrap();
    assert!(m2 > m1);
    expect_push(&mut b, 6, m2, 2).await;
    // cmids belong to their sender: bob may use "c-1" too.
    b.send(json!({"msgid": 6, "toid": alice, "msg": "mine", "cmid": "c-1"}))
        .await;
    let m3 = b.expect_ack(6).await["mid"].as_i64().unwrap();
    assert!(m3 > m2);
    expect_push(&mut a, 6, m3, 1).await;

    // Group chats too.
    let g = a.create_group("idem").await;
    b.send(json!({"msgid": 9, "groupid": g})).await;
    b.expect_ack(9).await;
    a.send(json!({"msgid": 10, "groupid": g, "msg": "g", "cmid": "g-1"}))
        .await;
    let gm = a.expect_ack(10).await["mid"].as_i64().unwrap();
    expect_push(&mut b, 10, gm, 3).await;
    a.send(json!({"msgid": 10, "groupid": g, "msg": "g", "cmid": "g-1"}))
        .await;
    assert_eq!(a.expect_ack(10).await["mid"], gm);
    b.expect_silence(300).await;

    // Stored once: HISTORY has a single "once".
    a.send(json!({"msgid": 17, "toid": bob})).await;
    let h = a.expect_ack(17).await;
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["mine", "twice", "once"]);
    srv.stop().await;
}

/// A level-2 token LOGIN on `c`; returns the ack (any errno).
async fn token_login(c: &mut Client, id: i64, token: &str) -> Value {
    c.send(json!({"msgid": 1, "id": id, "token": token, "v": 2}))
        .await;
    c.recv_msgid(2).await
}

/// A level-2 password LOGIN that must succeed; returns its token.
async fn password_token(c: &mut Client, id: i64) -> String {
    let ack = c.login_l2(id, "pw").await;
    ack["token"].as_str().expect("token in the ack").to_owned()
}

/// A token LOGIN that must succeed; returns the fresh token.
async fn token_login_ok(c: &mut Client, id: i64, token: &str) -> String {
    let ack = token_login(c, id, token).await;
    assert_eq!(ack["errno"], 0, "token login refused: {ack}");
    assert_eq!(ack["id"], id);
    let fresh = ack["token"].as_str().expect("fresh token").to_owned();
    assert_ne!(fresh, token, "every token login hands out a new token");
    fresh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_login_survives_a_lost_ack() {
    let srv = TestServer::start().await;
    let mut c1 = srv.connect().await;
    let alice = c1.register("alice", "pw").await;
    let t1 = password_token(&mut c1, alice).await;

    // Token login: a fresh token comes back, the old session is kicked.
    let mut c2 = srv.connect().await;
    let ack = token_login(&mut c2, alice, &t1).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    assert_eq!(ack["name"], "alice");
    let t2 = ack["token"].as_str().unwrap().to_owned();
    assert_ne!(t1, t2);
    c1.recv_msgid(21).await;
    c1.expect_eof().await;

    // Say that ack never reached the client: it still holds only t1, and t1
    // still works (within its grace), handing out t3.
    let mut c3 = srv.connect().await;
    let t3 = token_login_ok(&mut c3, alice, &t1).await;
    assert_ne!(t3, t2);
    c2.recv_msgid(21).await;
    c2.expect_eof().await;

    // Using t3 kills every token alice was given before it: t1 and t2.
    let mut c4 = srv.connect().await;
    let t4 = token_login_ok(&mut c4, alice, &t3).await;
    let mut c5 = srv.connect().await;
    for (name, dead) in [("t1", &t1), ("t2", &t2)] {
        let v = token_login(&mut c5, alice, dead).await;
        assert_eq!(v["errno"], 1, "{name} after t3 was used: {v}");
    }
    // So is a made-up one.
    assert_eq!(token_login(&mut c5, alice, "00ff").await["errno"], 1);
    // t4 works; that kills t3 as well.
    token_login_ok(&mut c5, alice, &t4).await;
    let mut c6 = srv.connect().await;
    assert_eq!(token_login(&mut c6, alice, &t3).await["errno"], 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sent_with_another_id_is_refused_and_not_burned() {
    let srv = TestServer::start().await;
    let alice = srv.register("alice", "pw").await;
    let bob = srv.register("bob", "pw").await;
    let mut c = srv.connect().await;
    let t = password_token(&mut c, alice).await;

    // alice's token with bob's id, then with an id nobody has.
    let mut m = srv.connect().await;
    let v = token_login(&mut m, bob, &t).await;
    assert_eq!(v["errno"], 1, "{v}");
    assert_eq!(token_login(&mut m, bob + 1000, &t).await["errno"], 1);
    // Still alice's.
    let mut a2 = srv.connect().await;
    token_login_ok(&mut a2, alice, &t).await;
    c.recv_msgid(21).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loginout_kills_every_token() {
    let srv = TestServer::start().await;
    let mut c1 = srv.connect().await;
    let alice = c1.register("alice", "pw").await;
    let t1 = password_token(&mut c1, alice).await;
    let mut c2 = srv.connect().await;
    let t2 = token_login_ok(&mut c2, alice, &t1).await;

    // t1 is in its grace, t2 is fresh: LOGINOUT kills both.
    c2.send(json!({"msgid": 3})).await;
    c2.expect_ack(3).await;
    let mut c3 = srv.connect().await;
    for (name, t) in [("t1", &t1), ("t2", &t2)] {
        let v = token_login(&mut c3, alice, t).await;
        assert_eq!(v["errno"], 1, "{name} after LOGINOUT: {v}");
    }
    // The password still works, and so does the token it hands out.
    let t3 = password_token(&mut c3, alice).await;
    let mut c4 = srv.connect().await;
    token_login_ok(&mut c4, alice, &t3).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_take_effect_in_request_order() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;
    let frames = |reqs: Vec<Value>| -> Vec<u8> {
        let mut out = Vec::new();
        for r in reqs {
            out.extend_from_slice(&serde_json::to_vec(&r).unwrap());
            out.push(b'\n');
        }
        out
    };
    for round in 0..20 {
        let g = a.create_group(&format!("order-{round}")).await;
        // Join, chat, read, quit, chat again: all in one write.
        b.send_raw(&frames(vec![
            json!({"msgid": 9, "groupid": g}),
            json!({"msgid": 10, "groupid": g, "msg": "in"}),
            json!({"msgid": 17, "groupid": g}),
            json!({"msgid": 14, "groupid": g}),
            json!({"msgid": 10, "groupid": g, "msg": "out"}),
        ]))
        .await;
        b.expect_ack(9).await;
        let mid = b.expect_ack(10).await["mid"].clone();
        let h = b.expect_ack(17).await;
        assert_eq!(
            h["messages"][0]["mid"], mid,
            "HISTORY misses the chat before it"
        );
        b.expect_ack(14).await;
        b.expect_error(4).await;
        assert_eq!(a.recv_msgid(10).await["msg"], "in");
    }
    // Befriend, unfriend, befriend again in one write.
    a.send_raw(&frames(vec![
        json!({"msgid": 7, "friendid": bob}),
        json!({"msgid": 13, "friendid": bob}),
        json!({"msgid": 7, "friendid": bob}),
        json!({"msgid": 13, "friendid": bob}),
        json!({"msgid": 13, "friendid": bob}),
    ]))
    .await;
    for re in [7, 13, 7, 13] {
        a.expect_ack(re).await;
    }
    a.expect_error(3).await;
    // A burst of chats then HISTORY: it sees all of them, newest first.
    let mut reqs: Vec<Value> = (0..10)
        .map(|i| json!({"msgid": 6, "toid": alice, "msg": format!("p{i}")}))
        .collect();
    reqs.push(json!({"msgid": 17, "toid": alice, "limit": 10}));
    b.send_raw(&frames(reqs)).await;
    let mut mids = Vec::new();
    for _ in 0..10 {
        mids.push(b.expect_ack(6).await["mid"].as_i64().unwrap());
    }
    let h = b.expect_ack(17).await;
    let got: Vec<i64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mid"].as_i64().unwrap())
        .collect();
    mids.reverse();
    assert_eq!(got, mids);
    for i in 0..10 {
        assert_eq!(a.recv_msgid(6).await["msg"], format!("p{i}"));
    }
    srv.stop().await;
}
