//! Level 1, the classic protocol, byte for byte: login and register acks,
//! silent successes, ERROR on failures, offline messages in the login ack,
//! and the shape of pushed chat frames.

mod common;

use chat_protocol::time::{format_utc, unix_now};
use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg_and_login_acks_have_the_classic_bytes() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.send(json!({"msgid": 4, "name": "alice", "password": "secret"}))
        .await;
    let reg = c.recv_text().await;
    let id: i64 = serde_json::from_str::<Value>(&reg).unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(reg, format!(r#"{{"errno":0,"id":{id},"msgid":5}}"#));

    // NUL-terminated, as the classic client sends it.
    c.send_nul(json!({"msgid": 1, "id": id, "password": "secret"}))
        .await;
    let ack = c.recv_text().await;
    // No friends, groups or offline messages: the keys are left out.
    assert_eq!(
        ack,
        format!(r#"{{"errno":0,"id":{id},"msgid":2,"name":"alice"}}"#)
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_ack_lists_friends_groups_and_offline_messages_as_json_strings() {
    let srv = TestServer::start().await;
    let alice = srv.register("alice", "pw-a").await;
    let (bob, mut b) = user_l1(&srv, "bob").await;

    // Everything below succeeds silently at level 1.
    b.send_nul(json!({"msgid": 7, "id": bob, "friendid": alice}))
        .await;
    b.send_nul(json!({"msgid": 8, "id": bob, "groupname": "rust", "groupdesc": "crabs"}))
        .await;
    b.expect_silence(300).await;
    // LOGINOUT is silent too, and the connection stays open for a new LOGIN,
    // whose ack tells bob the group id.
    b.send_nul(json!({"msgid": 3, "id": bob})).await;
    b.expect_silence(200).await;
    let ack = b.login_l1(bob, "pw").await;
    let groups = ack["groups"].as_array().expect("groups array");
    assert_eq!(groups.len(), 1);
    let g = decode_str(&groups[0]);
    let gid = g["id"].as_i64().unwrap();

    // alice joins while bob is online, then leaves.
    {
        let mut a = srv.connect().await;
        a.login_l1(alice, "pw-a").await;
        a.send_nul(json!({"msgid": 9, "id": alice, "groupid": gid}))
            .await;
        a.expect_silence(200).await;
    }
    // Give the server a moment to notice alice left: her messages must be
    // stored as offline ones.
    wait_offline(&srv, alice).await;

    // Offline messages: one-to-one with the `to` alias, then a group message.
    b.send_nul(json!({"msgid": 6, "id": bob, "to": alice, "msg": "first"}))
        .await;
    b.send_nul(json!({"msgid": 10, "id": bob, "groupid": gid, "msg": "second"}))
        .await;
    b.expect_silence(300).await;

    let mut a = srv.connect().await;
    let ack = a.login_l1(alice, "pw-a").await;
    assert_eq!(
        keys(&ack),
        [
            "errno",
            "friends",
            "groups",
            "id",
            "msgid",
            "name",
            "offlinemsg"
        ]
    );
    assert_eq!(ack["name"], "alice");
    assert!(ack.get("token").is_none(), "level 1 gets no token: {ack}");

    let friends = ack["friends"].as_array().unwrap();
    assert_eq!(friends.len(), 1);
    assert_eq!(
        friends[0].as_str().unwrap(),
        format!(r#"{{"id":{bob},"name":"bob","state":"online"}}"#)
    );

    let groups = ack["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    let g = decode_str(&groups[0]);
    assert_eq!(keys(&g), ["groupdesc", "groupname", "id", "users"]);
    assert_eq!(g["groupname"], "rust");
    assert_eq!(g["groupdesc"], "crabs");
    let users: Vec<Value> = g["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(decode_str)
        .collect();
    assert_eq!(users.len(), 2);
    let by_id = |id: i64| users.iter().find(|u| u["id"] == id).unwrap().clone();
    assert_eq!(
        by_id(bob),
        json!({"id": bob, "name": "bob", "state": "online", "role": "creator"})
    );
    // alice is logging in right now; the ack may list her either way.
    let me = by_id(alice);
    assert_eq!(keys(&me), ["id", "name", "role", "state"]);
    assert_eq!(me["role"], "normal");

    let off = ack["offlinemsg"].as_array().unwrap();
    assert_eq!(off.len(), 2, "{ack}");
    // Each element is the pushed frame exactly as it would arrive live, oldest first.
    let first = off[0].as_str().unwrap();
    let t0 = decode_str(&off[0])["time"].as_str().unwrap().to_owned();
    assert_eq!(
        first,
        format!(
            r#"{{"msgid":6,"id":{bob},"name":"bob","toid":{alice},"msg":"first","time":"{t0}"}}"#
        )
    );
    let second = off[1].as_str().unwrap();
    let t1 = decode_str(&off[1])["time"].as_str().unwrap().to_owned();
    assert_eq!(
        second,
        format!(
            r#"{{"msgid":10,"id":{bob},"userid":{bob},"name":"bob","groupid":{gid},"msg":"second","time":"{t1}"}}"#
        )
    );

    // Handed over in a level-1 ack means delivered: a second login gets none.
    srv.wait_acked(alice, 2).await;
    a.send_nul(json!({"msgid": 3, "id": alice})).await;
    let ack = a.login_l1(alice, "pw-a").await;
    assert!(ack.get("offlinemsg").is_none(), "delivered twice: {ack}");
    // And on a fresh connection neither.
    drop(a);
    wait_offline(&srv, alice).await;
    let mut a = srv.connect().await;
    let ack = a.login_l1(alice, "pw-a").await;
    assert!(ack.get("offlinemsg").is_none(), "delivered twice: {ack}");
    a.expect_silence(200).await;
    srv.stop().await;
}

/// Polls until the user has no session on the server (bounded).
async fn wait_offline(srv: &TestServer, user: i64) {
    for _ in 0..100 {
        if srv.shared.sessions.get(user).is_none() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("user {user} still online after 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_one_to_one_frame_is_classic_and_server_stamped() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l1(&srv, "alice").await;
    let (bob, mut b) = user_l1(&srv, "bob").await;

    let before = format_utc(unix_now());
    // The classic client's request, with a forged name and time.
    a.send_nul(
        json!({"msgid": 6, "id": alice, "name": "mallory", "toid": bob,
                      "msg": "hello \"bob\" 你好", "time": "1999-01-01 00:00:00"}),
    )
    .await;
    let raw = b.recv_text().await;
    let after = format_utc(unix_now());
    let v: Value = serde_json::from_str(&raw).unwrap();
    let time = v["time"].as_str().unwrap();
    assert!(
        before.as_str() <= time && time <= after.as_str(),
        "time {time} not stamped by the server ({before}..{after})"
    );
    assert_eq!(
        raw,
        format!(
            r#"{{"msgid":6,"id":{alice},"name":"alice","toid":{bob},"msg":"hello \"bob\" 你好","time":"{time}"}}"#
        )
    );
    // The sender hears nothing at level 1.
    a.expect_silence(200).await;

    // `userid` naming oneself is accepted too; `to` is an alias for `toid`.
    b.send(json!({"msgid": 6, "userid": bob, "to": alice, "msg": "back"}))
        .await;
    let v = a.recv_msgid(6).await;
    assert_eq!(v["id"], bob);
    assert_eq!(v["toid"], alice);
    assert_eq!(v["msg"], "back");
    assert!(v.get("mid").is_none() && v.get("seq").is_none(), "{v}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_message_reaches_every_member_but_the_sender() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l1(&srv, "alice").await;
    let (bob, mut b) = user_l1(&srv, "bob").await;
    let (carol, mut c) = user_l1(&srv, "carol").await;
    let (_dave, mut d) = user_l1(&srv, "dave").await;

    a.send_nul(json!({"msgid": 8, "id": alice, "groupname": "g", "groupdesc": ""}))
        .await;
    a.barrier().await;
    // Groups are numbered from 1 in a fresh database; HISTORY (answered at
    // both levels) confirms it.
    a.send(json!({"msgid": 17, "groupid": 1})).await;
    let h = a.recv_msgid(12).await;
    assert_eq!(h["messages"], json!([]));
    let gid = 1;
    b.send_nul(json!({"msgid": 9, "id": bob, "groupid": gid}))
        .await;
    c.send_nul(json!({"msgid": 9, "id": carol, "groupid": gid}))
        .await;
    b.barrier().await;
    c.barrier().await;

    let before = format_utc(unix_now());
    a.send_nul(
        json!({"msgid": 10, "id": alice, "name": "x", "groupid": gid,
                      "msg": "hi all", "time": "2000-01-01 00:00:00"}),
    )
    .await;
    for cl in [&mut b, &mut c] {
        let raw = cl.recv_text().await;
        let v: Value = serde_json::from_str(&raw).unwrap();
        let time = v["time"].as_str().unwrap().to_owned();
        assert!(time.as_str() >= before.as_str(), "{raw}");
        assert_eq!(
            raw,
            format!(
                r#"{{"msgid":10,"id":{alice},"userid":{alice},"name":"alice","groupid":{gid},"msg":"hi all","time":"{time}"}}"#
            )
        );
    }
    a.expect_silence(300).await;
    d.expect_silence(10).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_are_silent_and_failures_get_error_frames() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l1(&srv, "alice").await;
    let (bob, mut b) = user_l1(&srv, "bob").await;

    // Successes: nothing comes back.
    a.send_nul(json!({"msgid": 7, "id": alice, "friendid": bob}))
        .await;
    a.send_nul(json!({"msgid": 8, "id": alice, "groupname": "g1"}))
        .await;
    a.send_nul(json!({"msgid": 6, "id": alice, "toid": bob, "msg": "m"}))
        .await;
    a.expect_silence(300).await;
    a.barrier().await;
    b.recv_msgid(6).await;
    b.send_nul(json!({"msgid": 9, "id": bob, "groupid": 1}))
        .await;
    b.barrier().await;
    b.send_nul(json!({"msgid": 10, "id": bob, "groupid": 1, "msg": "g"}))
        .await;
    b.expect_silence(300).await;
    a.recv_msgid(10).await;

    // Failures: an ERROR with `re` naming the request.
    a.send_nul(json!({"msgid": 7, "id": alice, "friendid": bob}))
        .await;
    let e = a.expect_error(5).await;
    assert_eq!(e["re"], 7);
    assert_eq!(keys(&e), ["errmsg", "errno", "msgid", "re"]);
    a.send_nul(json!({"msgid": 6, "id": alice, "toid": 999, "msg": "m"}))
        .await;
    assert_eq!(a.expect_error(3).await["re"], 6);
    a.send_nul(json!({"msgid": 8, "id": alice, "groupname": "g1"}))
        .await;
    assert_eq!(a.expect_error(5).await["re"], 8);
    a.send_nul(json!({"msgid": 9, "id": alice, "groupid": 77}))
        .await;
    assert_eq!(a.expect_error(3).await["re"], 9);
    a.send_nul(json!({"msgid": 10, "id": alice, "groupid": 77, "msg": "x"}))
        .await;
    assert_eq!(a.expect_error(3).await["re"], 10);
    a.send_nul(json!({"msgid": 3, "id": bob})).await;
    assert_eq!(a.expect_error(4).await["re"], 3);

    // A level-1 LOGINOUT is silent; afterwards the session is gone.
    a.send_nul(json!({"msgid": 3, "id": alice})).await;
    a.expect_silence(200).await;
    a.send_nul(json!({"msgid": 6, "id": alice, "toid": bob, "msg": "m"}))
        .await;
    assert_eq!(a.expect_error(7).await["re"], 6);
    b.expect_silence(100).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level1_live_message_is_delivered_once_and_ping_and_history_answer() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l1(&srv, "alice").await;
    let (bob, mut b) = user_l1(&srv, "bob").await;
    a.send_nul(json!({"msgid": 6, "id": alice, "toid": bob, "msg": "live"}))
        .await;
    assert_eq!(b.recv_msgid(6).await["msg"], "live");
    // PING gets PONG and HISTORY gets its ACK even at level 1.
    b.send(json!({"msgid": 18, "reqid": 5})).await;
    assert_eq!(b.recv().await, json!({"msgid": 19, "reqid": 5}));
    b.send(json!({"msgid": 17, "toid": alice})).await;
    let h = b.recv_msgid(12).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    assert_eq!(h["messages"][0]["msg"], "live");
    assert!(h["messages"][0]["mid"].is_i64());

    // A message written to a level-1 socket counts as delivered: once that
    // is recorded, the next login does not replay it.
    srv.wait_acked(bob, 1).await;
    b.send_nul(json!({"msgid": 3})).await;
    let ack = b.login_l1(bob, "pw").await;
    assert!(ack.get("offlinemsg").is_none(), "{ack}");
    b.expect_silence(200).await;
    srv.stop().await;
}

/// Offline messages handed over in a level-1 login ack are not handed over
/// again by an immediate re-login on the same connection, in the same write.
/// (LOGINOUT waits for the writer's delivery records; the race it closes only
/// shows under load, so this pins the behaviour rather than the race.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_relogin_after_loginout_gets_no_offline_messages_twice() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let mut b = srv.connect().await;
    let bob = b.register("bob", "pw").await;
    for i in 0..5 {
        a.send(json!({"msgid": 6, "toid": bob, "msg": format!("m{i}")}))
            .await;
        a.expect_ack(6).await;
    }
    let _ = alice;
    b.login_l1(bob, "pw").await;
    // LOGINOUT and LOGIN in one write: no time for anything in between.
    let mut both = serde_json::to_vec(&json!({"msgid": 3, "id": bob})).unwrap();
    both.push(0);
    both.extend(serde_json::to_vec(&json!({"msgid": 1, "id": bob, "password": "pw"})).unwrap());
    both.push(0);
    b.send_raw(&both).await;
    let again = b.recv_msgid(2).await;
    assert_eq!(again["errno"], 0, "{again}");
    assert!(
        again.get("offlinemsg").is_none(),
        "offline messages handed out twice: {again}"
    );
}
