//! Every request-level errno the protocol defines (1, 3, 4, 5, 6, 7), each
//! provoked over a real socket, with checks that a refused request did
//! nothing. errno 2 is reserved and never sent; 8, 9 and 10 are in
//! `framing.rs` and `limits.rs`.

mod common;

use common::*;
use serde_json::{json, Value};

/// Sends a request and asserts an ERROR with this errno naming its msgid.
async fn refused(c: &mut Client, req: Value, errno: i64) -> Value {
    let re = req["msgid"].clone();
    c.send(req.clone()).await;
    let e = c.recv().await;
    assert_eq!(e["msgid"], 11, "{req} should get ERROR {errno}, got {e}");
    assert_eq!(e["errno"], errno, "{req} should get ERROR {errno}, got {e}");
    assert_eq!(e["re"], re, "{e}");
    assert!(e["errmsg"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    e
}

/// Sends a LOGIN or REG and asserts its ack carries this errno.
async fn refused_ack(c: &mut Client, req: Value, errno: i64) -> Value {
    let ack = req["msgid"].as_i64().unwrap() + 1;
    c.send(req.clone()).await;
    let v = c.recv().await;
    assert_eq!(v["msgid"], ack, "{req} should get its ack, got {v}");
    assert_eq!(v["errno"], errno, "{req} should get errno {errno}, got {v}");
    assert!(v["errmsg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(keys(&v), ["errmsg", "errno", "msgid"], "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errno_1_wrong_credentials_taken_or_invalid_names_and_bad_tokens() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let id = c.register("alice", "right").await;

    let wrong_pw = refused_ack(
        &mut c,
        json!({"msgid": 1, "id": id, "password": "wrong"}),
        1,
    )
    .await;
    // An unknown id gets the same answer as a wrong password.
    let unknown = refused_ack(
        &mut c,
        json!({"msgid": 1, "id": id + 1000, "password": "right"}),
        1,
    )
    .await;
    assert_eq!(wrong_pw, unknown);
    refused_ack(
        &mut c,
        json!({"msgid": 1, "id": id, "password": "wrong", "v": 2}),
        1,
    )
    .await;
    refused_ack(
        &mut c,
        json!({"msgid": 1, "id": id, "token": "not-a-token", "v": 2}),
        1,
    )
    .await;

    // REG: taken, control characters, leading or trailing spaces.
    for name in ["alice", " padded", "padded ", "tab\there", "nl\nname"] {
        refused_ack(
            &mut c,
            json!({"msgid": 4, "name": name, "password": "pw"}),
            1,
        )
        .await;
    }
    // None of that logged anyone in.
    refused(&mut c, json!({"msgid": 17, "toid": id}), 7).await;
    c.login_l1(id, "right").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errno_3_no_such_user_or_group() {
    let srv = TestServer::start().await;
    let (_alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, _b) = user_l2(&srv, "bob").await;
    let nobody = 424_242;
    for req in [
        json!({"msgid": 6, "toid": nobody, "msg": "x"}),
        json!({"msgid": 6, "to": nobody, "msg": "x"}),
        json!({"msgid": 10, "groupid": nobody, "msg": "x"}),
        json!({"msgid": 7, "friendid": nobody}),
        json!({"msgid": 9, "groupid": nobody}),
        json!({"msgid": 13, "friendid": bob}), // exists, but not a friend
        json!({"msgid": 13, "friendid": nobody}),
        json!({"msgid": 14, "groupid": nobody}),
        json!({"msgid": 15, "groupid": nobody}),
        json!({"msgid": 17, "toid": nobody}),
        json!({"msgid": 17, "groupid": nobody}),
    ] {
        refused(&mut a, req, 3).await;
    }
    // At level 1 the same failures come as ERROR too.
    let (_carol, mut c) = user_l1(&srv, "carol").await;
    refused(&mut c, json!({"msgid": 6, "toid": nobody, "msg": "x"}), 3).await;
    refused(&mut c, json!({"msgid": 9, "groupid": nobody}), 3).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errno_4_another_users_id_non_members_and_non_creators() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;
    let (carol, mut c) = user_l1(&srv, "carol").await;

    // Another user's id in `id` or `userid`: refused, and nothing is done.
    refused(
        &mut a,
        json!({"msgid": 6, "id": bob, "toid": carol, "msg": "forged"}),
        4,
    )
    .await;
    refused(
        &mut a,
        json!({"msgid": 6, "userid": bob, "toid": carol, "msg": "forged"}),
        4,
    )
    .await;
    refused(&mut a, json!({"msgid": 7, "id": bob, "friendid": carol}), 4).await;
    refused(
        &mut a,
        json!({"msgid": 8, "id": bob, "groupname": "forged"}),
        4,
    )
    .await;
    refused(&mut c, json!({"msgid": 3, "id": alice}), 4).await;
    c.expect_silence(300).await;
    b.expect_silence(10).await;
    c.send(json!({"msgid": 17, "toid": bob})).await;
    assert_eq!(c.recv_msgid(12).await["messages"], json!([]));
    // bob and carol are not friends, and "forged" is free.
    b.send(json!({"msgid": 7, "friendid": carol})).await;
    b.expect_ack(7).await;
    b.send(json!({"msgid": 8, "groupname": "forged"})).await;
    let g = b.expect_ack(8).await["groupid"].as_i64().unwrap();
    // carol's refused LOGINOUT left her logged in.
    c.send(json!({"msgid": 6, "id": carol, "toid": alice, "msg": "still here"}))
        .await;
    assert_eq!(a.recv_msgid(6).await["msg"], "still here");

    // Groups: non-members may not chat, quit or read; only the creator disbands.
    refused(&mut a, json!({"msgid": 10, "groupid": g, "msg": "x"}), 4).await;
    refused(&mut a, json!({"msgid": 14, "groupid": g}), 4).await;
    refused(&mut a, json!({"msgid": 17, "groupid": g}), 4).await;
    a.send(json!({"msgid": 9, "groupid": g})).await;
    a.expect_ack(9).await;
    refused(&mut a, json!({"msgid": 15, "groupid": g}), 4).await;
    refused(&mut b, json!({"msgid": 14, "groupid": g}), 4).await; // the creator
    b.expect_silence(200).await;
    a.expect_silence(10).await;

    // A second LOGIN on a logged-in connection.
    refused_ack(
        &mut a,
        json!({"msgid": 1, "id": alice, "password": "pw", "v": 2}),
        4,
    )
    .await;
    refused_ack(
        &mut b,
        json!({"msgid": 1, "id": alice, "password": "pw"}),
        4,
    )
    .await;
    // bob's session is intact.
    b.send(json!({"msgid": 10, "groupid": g, "msg": "ok"}))
        .await;
    b.expect_ack(10).await;
    assert_eq!(a.recv_msgid(10).await["msg"], "ok");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errno_5_already_friends_members_or_group_name_taken() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;
    a.send(json!({"msgid": 7, "friendid": bob})).await;
    a.expect_ack(7).await;
    refused(&mut a, json!({"msgid": 7, "friendid": bob}), 5).await;
    refused(&mut b, json!({"msgid": 7, "friendid": alice}), 5).await;

    a.send(json!({"msgid": 8, "groupname": "dup"})).await;
    let g = a.expect_ack(8).await["groupid"].as_i64().unwrap();
    refused(&mut b, json!({"msgid": 8, "groupname": "dup"}), 5).await;
    refused(&mut a, json!({"msgid": 9, "groupid": g}), 5).await; // creator
    b.send(json!({"msgid": 9, "groupid": g})).await;
    b.expect_ack(9).await;
    refused(&mut b, json!({"msgid": 9, "groupid": g}), 5).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errno_6_malformed_requests_and_values_out_of_range() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let id = c.register("alice", "pw").await;

    // REG and LOGIN answer in their own acks.
    for req in [
        json!({"msgid": 4, "name": "n".repeat(51), "password": "pw"}),
        json!({"msgid": 4, "name": "", "password": "pw"}),
        json!({"msgid": 4, "name": 5, "password": "pw"}),
        json!({"msgid": 4, "password": "pw"}),
        json!({"msgid": 4, "name": "ok", "password": "p".repeat(129)}),
        json!({"msgid": 4, "name": "ok", "password": ""}),
        json!({"msgid": 4, "name": "ok", "password": 123}),
        json!({"msgid": 4, "name": "ok"}),
    ] {
        refused_ack(&mut c, req, 6).await;
    }
    // Limits count characters for names, bytes for passwords.
    let long = "é".repeat(50);
    let other = c.register(&long, &"p".repeat(128)).await;
    for req in [
        json!({"msgid": 1, "id": id, "password": "p".repeat(129)}),
        json!({"msgid": 1, "id": id, "password": ""}),
        json!({"msgid": 1, "id": id.to_string(), "password": "pw"}),
        json!({"msgid": 1, "password": "pw"}),
        json!({"msgid": 1, "id": id}),
        json!({"msgid": 1, "id": id, "password": "pw", "v": 3}),
        json!({"msgid": 1, "id": id, "password": "pw", "v": "2"}),
        json!({"msgid": 1, "id": id, "token": "abc"}), // tokens need level 2
        json!({"msgid": 1, "id": id, "password": "pw", "v": 2, "last_seq": -1}),
    ] {
        refused_ack(&mut c, req, 6).await;
    }
    c.login_l2(id, "pw").await;

    // Unknown msgids, including server-only ones.
    for m in [0, 2, 5, 11, 12, 19, 20, 21, 22, 99, -1] {
        refused(&mut c, json!({"msgid": m}), 6).await;
    }
    let big = "x".repeat(16 * 1024 + 1);
    let cmid65 = "c".repeat(65);
    for req in [
        json!({"msgid": 6, "toid": other, "msg": big}),
        json!({"msgid": 6, "toid": other, "msg": ""}),
        json!({"msgid": 6, "toid": other, "msg": 1}),
        json!({"msgid": 6, "toid": other}),
        json!({"msgid": 6, "msg": "x"}),
        json!({"msgid": 6, "toid": other.to_string(), "msg": "x"}),
        json!({"msgid": 6, "toid": 1.5, "msg": "x"}),
        json!({"msgid": 6, "toid": other, "msg": "x", "cmid": cmid65}),
        json!({"msgid": 6, "toid": other, "msg": "x", "cmid": 7}),
        json!({"msgid": 6, "toid": other, "msg": "x", "cmid": ""}),
        json!({"msgid": 6, "id": "me", "toid": other, "msg": "x"}),
        json!({"msgid": 10, "groupid": "1", "msg": "x"}),
        json!({"msgid": 10, "msg": "x"}),
        json!({"msgid": 7, "friendid": id}), // self-befriend
        json!({"msgid": 7, "friendid": "x"}),
        json!({"msgid": 7}),
        json!({"msgid": 13}),
        json!({"msgid": 8, "groupname": "g".repeat(51)}),
        json!({"msgid": 8, "groupname": ""}),
        json!({"msgid": 8, "groupname": "g", "groupdesc": "d".repeat(201)}),
        json!({"msgid": 8, "groupname": "g", "groupdesc": 1}),
        json!({"msgid": 8}),
        json!({"msgid": 9, "groupid": [1]}),
        json!({"msgid": 14}),
        json!({"msgid": 15, "groupid": {}}),
        json!({"msgid": 16, "seq": -1}),
        json!({"msgid": 16, "seq": "1"}),
        json!({"msgid": 16}),
        json!({"msgid": 17}),
        json!({"msgid": 17, "toid": other, "groupid": 1}),
        json!({"msgid": 17, "toid": other, "limit": 0}),
        json!({"msgid": 17, "toid": other, "before": 0}),
        json!({"msgid": 17, "toid": other, "limit": "5"}),
    ] {
        refused(&mut c, req, 6).await;
    }
    // Invalid UTF-8 inside a string.
    c.send_raw(b"{\"msgid\":6,\"toid\":2,\"msg\":\"\xff\"}\n")
        .await;
    c.expect_error(6).await;

    // The edges that are allowed.
    let max = "x".repeat(16 * 1024);
    c.send(json!({"msgid": 6, "toid": other, "msg": max, "cmid": "c".repeat(64)}))
        .await;
    c.expect_ack(6).await;
    c.send(json!({"msgid": 8, "groupname": "é".repeat(50), "groupdesc": "d".repeat(200)}))
        .await;
    c.expect_ack(8).await;
    // Nothing refused was stored.
    c.send(json!({"msgid": 17, "toid": other})).await;
    let h = c.expect_ack(17).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1, "{h}");

    // Level 1 gets the same ERROR frames.
    let mut d = srv.connect().await;
    d.login_l1(other, &"p".repeat(128)).await;
    refused(
        &mut d,
        json!({"msgid": 6, "id": other, "toid": id, "msg": ""}),
        6,
    )
    .await;
    refused(
        &mut d,
        json!({"msgid": 7, "id": other, "friendid": other}),
        6,
    )
    .await;
    refused(&mut d, json!({"msgid": 42}), 6).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errno_7_requests_before_login_and_after_loginout() {
    let srv = TestServer::start().await;
    let bob = srv.register("bob", "pw").await;
    let mut c = srv.connect().await;
    let reqs = [
        json!({"msgid": 3}),
        json!({"msgid": 6, "toid": bob, "msg": "x"}),
        json!({"msgid": 7, "friendid": bob}),
        json!({"msgid": 8, "groupname": "g"}),
        json!({"msgid": 9, "groupid": 1}),
        json!({"msgid": 10, "groupid": 1, "msg": "x"}),
        json!({"msgid": 13, "friendid": bob}),
        json!({"msgid": 14, "groupid": 1}),
        json!({"msgid": 15, "groupid": 1}),
        json!({"msgid": 16, "seq": 1}),
        json!({"msgid": 17, "toid": bob}),
    ];
    for req in reqs.clone() {
        refused(&mut c, req, 7).await;
    }
    // PING and REG need no session.
    c.send(json!({"msgid": 18})).await;
    c.recv_msgid(19).await;
    let id = c.register("alice", "pw").await;
    c.login_l2(id, "pw").await;
    c.send(json!({"msgid": 3})).await;
    c.expect_ack(3).await;
    for req in reqs {
        refused(&mut c, req, 7).await;
    }
    // bob was never written to.
    let mut b = srv.connect().await;
    b.login_l2(bob, "pw").await;
    b.expect_silence(200).await;
    srv.stop().await;
}
