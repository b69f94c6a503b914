//! The ceiling must answer the bench's requests in the real server's shapes,
//! or the bench's clients would not run unchanged against it. One scripted
//! exchange (REG, LOGIN at both levels, chats both ways, groups, errors,
//! token login, kick) runs against a real node and against the ceiling, and
//! the frames' shapes (keys, value types, msgid/errno/re values) must match.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use chat_testkit::Client;
use serde_json::{json, Map, Value};
use support::{real_server, CeilingProc};

/// Keys and value types; msgid, errno and re keep their values.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                let s = match k.as_str() {
                    "msgid" | "errno" | "re" => x.clone(),
                    _ => shape(x),
                };
                out.insert(k.clone(), s);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::String(_) => json!("str"),
        Value::Number(_) => json!(0),
        other => other.clone(),
    }
}

async fn transcript(addr: SocketAddr) -> Vec<(String, Value)> {
    let mut t: Vec<(String, Value)> = Vec::new();
    macro_rules! note {
        ($what:expr, $v:expr) => {{
            let v: Value = $v;
            t.push(($what.to_string(), shape(&v)));
            v
        }};
    }
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    a.send(json!({"msgid": 4, "name": "alice", "password": "pa"}))
        .await;
    let alice = note!("reg", a.recv().await)["id"].as_i64().unwrap();
    a.send(json!({"msgid": 4, "name": "alice", "password": "pa"}))
        .await;
    note!("reg taken", a.recv().await);
    b.send(json!({"msgid": 4, "name": "bob", "password": "pb"}))
        .await;
    let bob = b.recv().await["id"].as_i64().unwrap();

    a.send(json!({"msgid": 1, "id": alice, "password": "nope", "v": 2}))
        .await;
    note!("login wrong password", a.recv().await);
    a.send(json!({"msgid": 1, "id": alice, "password": "pa", "v": 2}))
        .await;
    let ack = note!("login l2", a.recv().await);
    let token = ack["token"].as_str().unwrap().to_owned();
    b.send(json!({"msgid": 1, "id": bob, "password": "pb"}))
        .await;
    note!("login l1", b.recv().await);

    a.send(json!({"msgid": 6, "toid": bob, "msg": "hi bob", "reqid": "r1"}))
        .await;
    note!("one_chat ack l2", a.recv().await);
    note!("push l1", b.recv().await);
    b.send(json!({"msgid": 6, "toid": alice, "msg": "hi alice"}))
        .await;
    note!("push l2", a.recv().await);

    a.send(json!({"msgid": 6, "toid": 999_999, "msg": "x"}))
        .await;
    note!("no such user l2", a.recv().await);
    b.send(json!({"msgid": 6, "toid": 999_999, "msg": "x"}))
        .await;
    note!("no such user l1", b.recv().await);

    a.send(json!({"msgid": 8, "groupname": "g1", "groupdesc": "d"}))
        .await;
    let gid = note!("create_group ack", a.recv().await)["groupid"]
        .as_i64()
        .unwrap();
    b.send(json!({"msgid": 9, "groupid": gid})).await;
    b.send(json!({"msgid": 18})).await;
    note!("add_group l1 then pong", b.recv().await);
    b.send(json!({"msgid": 9, "groupid": gid})).await;
    note!("add_group again", b.recv().await);
    a.send(json!({"msgid": 10, "groupid": gid, "msg": "to all"}))
        .await;
    note!("group_chat ack", a.recv().await);
    note!("group push l1", b.recv().await);
    b.send(json!({"msgid": 10, "groupid": gid, "msg": "back"}))
        .await;
    let push = note!("group push l2", a.recv().await);
    a.send(json!({"msgid": 16, "seq": push["seq"]})).await;
    a.send(json!({"msgid": 18, "reqid": 7})).await;
    note!("delivered then pong", a.recv().await);

    let mut c = Client::connect(addr).await;
    c.send(json!({"msgid": 6, "toid": bob, "msg": "x"})).await;
    note!("not logged in", c.recv().await);
    c.send(json!({"msgid": 1, "id": alice, "token": token, "v": 2}))
        .await;
    let ack = note!("token login", c.recv().await);
    note!("kicked", a.recv().await);
    // Using the newer token kills the older one (PROTOCOL.md, "Tokens, more
    // precisely"; within its grace the older one would still work).
    let newer = ack["token"].clone();
    let mut d = Client::connect(addr).await;
    d.send(json!({"msgid": 1, "id": alice, "token": newer, "v": 2}))
        .await;
    note!("newer token login", d.recv().await);
    note!("kicked again", c.recv().await);
    let mut e = Client::connect(addr).await;
    e.send(json!({"msgid": 1, "id": alice, "token": token, "v": 2}))
        .await;
    note!("superseded token", e.recv().await);
    note!(
        "nothing more for b",
        json!(b.maybe_recv(Duration::from_millis(200)).await.is_some())
    );
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceiling_replies_in_the_real_servers_shapes() {
    let real = real_server().await;
    let expected = transcript(real.addr).await;
    real.stop().await;
    let ceiling = CeilingProc::start().await;
    let got = transcript(ceiling.addr).await;
    ceiling.stop().await;
    assert_eq!(expected.len(), got.len());
    for ((what, e), (_, g)) in expected.iter().zip(&got) {
        assert_eq!(e, g, "{what}: real server {e} vs ceiling {g}");
    }
}
