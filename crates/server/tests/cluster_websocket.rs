//! The web client's transport across a cluster (real processes, MariaDB,
//! Redis, nginx): a WebSocket session on one node and a TCP one on another
//! chat both ways, directly and through nginx's HTTP proxy, and a login over
//! the WebSocket kicks the TCP session on the other node. Also: a node's
//! `/readyz` follows Redis and MariaDB going away and coming back.
//!
//! Without MariaDB, Redis or nginx installed this prints "skipped" and
//! passes, unless the environment variable `CI` is set.

// This test uses a part of the shared support only.
#[allow(unused_imports)]
mod cluster_support;

use cluster_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_one_node_and_a_tcp_client_on_another_chat_both_ways() {
    let test = "a_browser_on_one_node_and_a_tcp_client_on_another_chat_both_ways";
    let Some(cl) = Cluster::start(test, 2, true).await else {
        return;
    };
    let alice = register(cl.node(0), "alice").await;
    let bob = register(cl.node(1), "bob").await;

    // Alice in a browser on node A; bob on TCP on node B.
    let mut web = Client::connect_ws(cl.node_http(0)).await;
    web.login_l2(alice, "pw").await;
    let mut tcp = Client::connect(cl.node(1)).await;
    tcp.login_l2(bob, "pw").await;

    web.send(json!({"msgid": 6, "toid": bob, "msg": "from the browser", "cmid": "b1"}))
        .await;
    web.expect_ack(6).await;
    let got = tcp.recv_msgid(6).await;
    assert_eq!(
        (got["id"].clone(), got["msg"].clone()),
        (json!(alice), json!("from the browser"))
    );
    tcp.send(json!({"msgid": 16, "seq": got["seq"]})).await;

    tcp.send(json!({"msgid": 6, "toid": alice, "msg": "from the terminal"}))
        .await;
    tcp.expect_ack(6).await;
    let got = web.recv_msgid(6).await;
    assert_eq!(
        (got["id"].clone(), got["msg"].clone()),
        (json!(bob), json!("from the terminal"))
    );
    web.send(json!({"msgid": 16, "seq": got["seq"]})).await;

    // Through nginx's HTTP proxy: the page and the WebSocket.
    drop(web);
    let mut web = Client::connect_ws(cl.nginx_http()).await;
    web.login_l2(alice, "pw").await;
    tcp.send(json!({"msgid": 6, "toid": alice, "msg": "via nginx"}))
        .await;
    tcp.expect_ack(6).await;
    assert_eq!(web.recv_msgid(6).await["msg"], "via nginx");
    web.send(json!({"msgid": 6, "toid": bob, "msg": "back via nginx"}))
        .await;
    web.expect_ack(6).await;
    let got = tcp.recv_msgid(6).await;
    assert_eq!(got["msg"], "back via nginx");
    tcp.send(json!({"msgid": 16, "seq": got["seq"]})).await;

    // Bob opens the web client on node A: his TCP session on node B is kicked.
    let mut bob_web = Client::connect_ws(cl.node_http(0)).await;
    bob_web.login_l2(bob, "pw").await;
    assert_eq!(tcp.recv_msgid(21).await["msgid"], 21);
    tcp.expect_eof().await;
    web.send(json!({"msgid": 6, "toid": bob, "msg": "now in your browser"}))
        .await;
    web.expect_ack(6).await;
    // The confirmation above may not be stored yet when bob logs in again:
    // then the last message comes once more first.
    let mut got = bob_web.recv_msgid(6).await;
    if got["msg"] == "back via nginx" {
        got = bob_web.recv_msgid(6).await;
    }
    assert_eq!(got["msg"], "now in your browser");
}

/// `GET /readyz` on a node: its status code.
async fn readyz(http: std::net::SocketAddr) -> u16 {
    chat_testkit::http_get(http, "/readyz").await.status
}

/// Polls `/readyz` until it answers `want`, for at most `secs`; the seconds
/// it took.
async fn readyz_becomes(http: std::net::SocketAddr, want: u16, secs: u64) -> f64 {
    let start = std::time::Instant::now();
    loop {
        if readyz(http).await == want {
            return start.elapsed().as_secs_f64();
        }
        assert!(
            start.elapsed().as_secs() < secs,
            "/readyz did not turn {want} within {secs} s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_and_the_database() {
    let test = "readiness_follows_redis_and_the_database";
    let Some(mut cl) = Cluster::start(test, 1, false).await else {
        return;
    };
    let http = cl.node_http(0);
    assert_eq!(readyz(http).await, 200);

    cl.redis.kill().await;
    let t = readyz_becomes(http, 503, 5).await;
    println!("{test}: not ready {t:.1} s after Redis died");
    cl.redis.start().await;
    readyz_becomes(http, 200, 15).await;

    cl.db.kill().await;
    let t = readyz_becomes(http, 503, 5).await;
    println!("{test}: not ready {t:.1} s after MariaDB died");
    cl.db.start().await;
    readyz_becomes(http, 200, 30).await;
}
