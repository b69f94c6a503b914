//! FIND_USER and ROSTER on one node: looking people up by exact name, and
//! the pushes that keep friend and group lists current (level 2 only).

mod common;

use common::*;
use serde_json::{json, Value};

/// A new level-2 user whose client returns ROSTER pushes.
async fn user(srv: &TestServer, name: &str) -> (i64, Client) {
    let (id, c) = user_l2(srv, name).await;
    (id, c.with_roster())
}

/// The frames before a barrier PONG, as `(msgid, frame)`; the ROSTER ones
/// and the ACKs are what these tests look at.
async fn settle(c: &mut Client) -> Vec<Value> {
    c.frames_before_barrier().await
}

/// The ROSTER pushes among `frames`.
fn rosters(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|v| v["msgid"] == 23).collect()
}

/// Asserts exactly one ROSTER in `frames` and returns it.
fn one_roster(frames: &[Value]) -> Value {
    let r = rosters(frames);
    assert_eq!(r.len(), 1, "expected one ROSTER, got {frames:?}");
    r[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_user_by_exact_name() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user(&srv, "Alice").await;
    let (bob, mut b) = user(&srv, "李雷").await;
    let carol = srv.register("carol", "pw").await;

    a.send(json!({"msgid": 22, "name": "李雷", "reqid": 7}))
        .await;
    let ack = a.expect_ack(22).await;
    assert_eq!(ack["reqid"], 7);
    assert_eq!(
        ack["user"],
        json!({"id": bob, "name": "李雷", "online": true})
    );

    a.send(json!({"msgid": 22, "name": "carol"})).await;
    let ack = a.expect_ack(22).await;
    assert_eq!(
        ack["user"],
        json!({"id": carol, "name": "carol", "online": false})
    );

    // Exact and case-sensitive: no prefix, no other case, no look-alike.
    for miss in ["alice", "ALICE", "Ali", "c", "Аlice"] {
        a.send(json!({"msgid": 22, "name": miss})).await;
        let e = a.expect_error(3).await;
        assert_eq!(e["re"], 22, "{miss:?}: {e}");
    }
    b.send(json!({"msgid": 22, "name": "Alice"})).await;
    assert_eq!(b.expect_ack(22).await["user"]["id"], alice);

    // Bad fields are errno 6.
    a.send(json!({"msgid": 22})).await;
    a.expect_error(6).await;
    a.send(json!({"msgid": 22, "name": 5})).await;
    a.expect_error(6).await;
    a.send(json!({"msgid": 22, "name": "x".repeat(51)})).await;
    a.expect_error(6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_user_needs_login_and_answers_level1() {
    let srv = TestServer::start().await;
    let bob = srv.register("bob", "pw").await;
    let mut anon = srv.connect().await;
    anon.send(json!({"msgid": 22, "name": "bob"})).await;
    anon.expect_error(7).await;

    // At level 1 too: a lookup is useless without its answer.
    let (_, old) = user_l1(&srv, "old").await;
    let mut old = old.with_roster();
    old.send(json!({"msgid": 22, "name": "bob"})).await;
    let ack = old.recv_msgid(12).await;
    assert_eq!(ack["user"]["id"], bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_user_counts_against_the_social_rate() {
    let mut cfg = test_config();
    cfg.quotas.social_per_min = 3;
    let srv = TestServer::start_with(cfg).await;
    let (_, mut a) = user(&srv, "alice").await;
    srv.register("bob", "pw").await;
    for _ in 0..3 {
        a.send(json!({"msgid": 22, "name": "bob"})).await;
        a.expect_ack(22).await;
    }
    a.send(json!({"msgid": 22, "name": "bob"})).await;
    let e = a.expect_error(9).await;
    assert_eq!(e["re"], 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_hear_roster_on_add_and_remove() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user(&srv, "alice").await;
    let (bob, mut b) = user(&srv, "bob").await;
    let (_, old) = user_l1(&srv, "old").await;
    let mut old = old.with_roster();

    a.send(json!({"msgid": 7, "friendid": bob})).await;
    let frames = settle(&mut a).await;
    assert!(
        frames.iter().any(|v| v["msgid"] == 12 && v["re"] == 7),
        "{frames:?}"
    );
    assert_eq!(
        one_roster(&frames),
        json!({"msgid": 23, "event": "friend_added", "id": bob, "name": "bob", "state": "online"})
    );
    let frames = settle(&mut b).await;
    assert_eq!(
        one_roster(&frames),
        json!({"msgid": 23, "event": "friend_added", "id": alice, "name": "alice", "state": "online"})
    );

    b.send(json!({"msgid": 13, "friendid": alice})).await;
    let frames = settle(&mut b).await;
    assert_eq!(
        one_roster(&frames),
        json!({"msgid": 23, "event": "friend_removed", "id": alice, "name": "alice"})
    );
    let frames = settle(&mut a).await;
    assert_eq!(
        one_roster(&frames),
        json!({"msgid": 23, "event": "friend_removed", "id": bob, "name": "bob"})
    );

    // Level-1 sessions get no ROSTER (the classic client would not know it).
    old.send(json!({"msgid": 7, "friendid": alice})).await;
    old.barrier().await;
    assert_eq!(
        rosters(&settle(&mut a).await).len(),
        1,
        "alice hears of old"
    );

    // An offline friend is named with its state.
    let carol = srv.register("carol", "pw").await;
    a.send(json!({"msgid": 7, "friendid": carol})).await;
    let frames = settle(&mut a).await;
    assert_eq!(one_roster(&frames)["state"], "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_hear_roster_on_join_leave_and_disband() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user(&srv, "alice").await;
    let (bob, mut b) = user(&srv, "bob").await;
    let (carol, mut c) = user(&srv, "carol").await;
    let g = a.create_group("team").await;
    b.send(json!({"msgid": 9, "groupid": g})).await;
    let joined = json!({"msgid": 23, "event": "member_joined", "id": bob, "name": "bob",
                        "groupid": g, "groupname": "team", "state": "online"});
    assert_eq!(one_roster(&settle(&mut b).await), joined);
    assert_eq!(one_roster(&settle(&mut a).await), joined);
    // Not a member: hears nothing.
    assert!(rosters(&settle(&mut c).await).is_empty());

    c.send(json!({"msgid": 9, "groupid": g})).await;
    let joined_c = one_roster(&settle(&mut c).await);
    assert_eq!(
        (joined_c["event"].clone(), joined_c["id"].clone()),
        (json!("member_joined"), json!(carol))
    );
    for m in [&mut a, &mut b] {
        assert_eq!(one_roster(&settle(m).await)["id"], carol);
    }

    b.send(json!({"msgid": 14, "groupid": g})).await;
    let left = json!({"msgid": 23, "event": "member_left", "id": bob, "name": "bob",
                      "groupid": g, "groupname": "team"});
    // The leaver first: its barrier waits for the change.
    for (who, m) in [("bob", &mut b), ("alice", &mut a), ("carol", &mut c)] {
        let frames = settle(m).await;
        assert_eq!(rosters(&frames), [&left], "{who}: {frames:?}");
    }

    a.send(json!({"msgid": 15, "groupid": g})).await;
    let gone = json!({"msgid": 23, "event": "group_disbanded", "id": alice, "name": "alice",
                      "groupid": g, "groupname": "team"});
    assert_eq!(one_roster(&settle(&mut a).await), gone);
    assert_eq!(one_roster(&settle(&mut c).await), gone);
    // Bob left before: nothing for him.
    assert!(rosters(&settle(&mut b).await).is_empty());

    // A refused change pushes nothing.
    b.send(json!({"msgid": 14, "groupid": g})).await;
    let frames = settle(&mut b).await;
    assert!(rosters(&frames).is_empty(), "{frames:?}");
}
