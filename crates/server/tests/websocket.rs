//! The WebSocket transport, without a browser: the upgrade, one frame per
//! text message each way, the app's files, and the same limits, kicks and
//! delivery as over TCP. Every test drives a real server over real sockets.

mod common;

use std::time::Duration;

use clusterchat::Config;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The next text message as JSON (pings and pongs skipped).
async fn next_json(ws: &mut WebSocket) -> Option<Value> {
    loop {
        match tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("no message in time")
        {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(m)) => panic!("unexpected message {m:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_and_a_tcp_client_chat_both_ways() {
    let srv = TestServer::start().await;
    let alice = srv.register("alice", "pw").await;
    let bob = srv.register("bob", "pw").await;

    let mut a = srv.connect_ws().await;
    a.login_l2(alice, "pw").await;
    let mut b = srv.connect().await;
    b.login_l2(bob, "pw").await;

    a.send(json!({"msgid": 6, "toid": bob, "msg": "over the web", "cmid": "w1", "reqid": 1}))
        .await;
    a.expect_ack(6).await;
    let got = b.recv_msgid(6).await;
    assert_eq!(
        (got["id"].clone(), got["msg"].clone()),
        (json!(alice), json!("over the web"))
    );

    b.send(json!({"msgid": 6, "toid": alice, "msg": "<b>back</b>"}))
        .await;
    b.expect_ack(6).await;
    let got = a.recv_msgid(6).await;
    assert_eq!(got["msg"], "<b>back</b>");
    a.send(json!({"msgid": 16, "seq": got["seq"]})).await;

    // A level-1 session works over a WebSocket too.
    let carol = srv.register("carol", "pw").await;
    let mut c = srv.connect_ws().await;
    c.login_l1(carol, "pw").await;
    b.send(json!({"msgid": 6, "toid": carol, "msg": "classic"}))
        .await;
    b.expect_ack(6).await;
    assert_eq!(c.recv_msgid(6).await["msg"], "classic");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_text_message_is_one_frame_each_way() {
    let srv = TestServer::start().await;
    let mut ws = ws_connect(srv.http, None).await.unwrap();
    // A frame may carry the TCP terminator; an empty message is skipped.
    ws.send(Message::text("{\"msgid\":18,\"reqid\":1}\n"))
        .await
        .unwrap();
    ws.send(Message::text("")).await.unwrap();
    ws.send(Message::text("{\"msgid\":18,\"reqid\":2}"))
        .await
        .unwrap();
    ws.send(Message::text("not json")).await.unwrap();
    for want in [json!(1), json!(2)] {
        let v = next_json(&mut ws).await.unwrap();
        assert_eq!((v["msgid"].clone(), v["reqid"].clone()), (json!(19), want));
    }
    // Bad JSON: errno 6, and the session stays open.
    assert_eq!(next_json(&mut ws).await.unwrap()["errno"], 6);
    ws.send(Message::text("{\"msgid\":18,\"reqid\":3}"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await.unwrap()["reqid"], 3);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_message_gets_errno_6_then_a_close() {
    let srv = TestServer::start().await;
    let mut ws = ws_connect(srv.http, None).await.unwrap();
    ws.send(Message::binary(b"{\"msgid\":18}".to_vec()))
        .await
        .unwrap();
    let v = next_json(&mut ws).await.expect("an error before the close");
    assert_eq!(v["errno"], 6, "{v}");
    assert!(v["errmsg"].as_str().unwrap().contains("binary"), "{v}");
    assert!(next_json(&mut ws).await.is_none(), "the server must close");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_gets_errno_8_then_a_close() {
    let cfg = Config {
        max_frame: 1024,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    // Just over the limit, and far over it (beyond the WebSocket layer's
    // own cap): both get errno 8.
    for size in [1025, 64 * 1024] {
        let mut ws = ws_connect(srv.http, None).await.unwrap();
        let big = format!("{{\"msgid\":18,\"pad\":\"{}\"}}", "x".repeat(size));
        let _ = ws.send(Message::text(big)).await;
        let v = next_json(&mut ws).await.expect("an error before the close");
        assert_eq!(v["errno"], 8, "{size}: {v}");
        assert!(next_json(&mut ws).await.is_none(), "the server must close");
    }
    // At the limit is fine.
    let mut ws = ws_connect(srv.http, None).await.unwrap();
    let pad = 1024 - "{\"msgid\":18,\"p\":\"\"}".len();
    ws.send(Message::text(format!(
        "{{\"msgid\":18,\"p\":\"{}\"}}",
        "x".repeat(pad)
    )))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await.unwrap()["msgid"], 19);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_is_refused() {
    let srv = TestServer::start().await;
    let own = format!("http://{}", srv.http);
    assert!(Client::try_connect_ws(srv.http, Some(&own)).await.is_ok());
    let e = Client::try_connect_ws(srv.http, Some("http://evil.example"))
        .await
        .err()
        .expect("another origin must be refused");
    assert!(e.contains("403"), "{e}");
    let e = Client::try_connect_ws(srv.http, Some("null"))
        .await
        .err()
        .unwrap();
    assert!(e.contains("403"), "{e}");
    srv.stop().await;

    // An allow-list replaces the same-origin rule.
    let cfg = Config {
        http_allow_origins: vec!["https://chat.example".into()],
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let mut c = Client::try_connect_ws(srv.http, Some("https://chat.example"))
        .await
        .unwrap();
    c.send(json!({"msgid": 18})).await;
    assert_eq!(c.recv().await["msgid"], 19);
    let own = format!("http://{}", srv.http);
    assert!(Client::try_connect_ws(srv.http, Some(&own)).await.is_err());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_and_drops_a_silent_peer() {
    let cfg = Config {
        ws_ping_every: Duration::from_millis(300),
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    // A client that reads answers pings (tungstenite does): it stays.
    let mut ws = ws_connect(srv.http, None).await.unwrap();
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, ws.next()).await {
        if let Message::Ping(_) = m {
            pings += 1;
        }
    }
    assert!(pings >= 2, "{pings} pings in 1.5 s at one per 0.3 s");
    ws.send(Message::text("{\"msgid\":18}")).await.unwrap();
    assert_eq!(next_json(&mut ws).await.unwrap()["msgid"], 19);

    // A peer that upgrades and then never answers is closed after 2.5
    // rounds without a word from it.
    let mut raw = TcpStream::connect(srv.http).await.unwrap();
    let hs = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        srv.http
    );
    raw.write_all(hs.as_bytes()).await.unwrap();
    let mut sink = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut sink)).await;
    assert!(ended.is_ok(), "a silent WebSocket peer was never dropped");
    assert!(String::from_utf8_lossy(&sink).starts_with("HTTP/1.1 101"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_elsewhere_kicks_across_transports() {
    let srv = TestServer::start().await;
    let alice = srv.register("alice", "pw").await;
    let mut tcp = srv.connect().await;
    tcp.login_l2(alice, "pw").await;
    let mut web = srv.connect_ws().await;
    web.login_l2(alice, "pw").await;
    assert_eq!(tcp.recv_msgid(21).await["msgid"], 21, "TCP session kicked");
    tcp.expect_eof().await;

    let mut tcp = srv.connect().await;
    tcp.login_l2(alice, "pw").await;
    assert_eq!(
        web.recv_msgid(21).await["msgid"],
        21,
        "WebSocket session kicked"
    );
    web.expect_eof().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_counts_websockets() {
    let cfg = Config {
        max_connections: 2,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let _t = srv.connect().await;
    let mut w = srv.connect_ws().await;
    w.send(json!({"msgid": 18})).await;
    assert_eq!(w.recv().await["msgid"], 19);
    let e = Client::try_connect_ws(srv.http, None)
        .await
        .err()
        .expect("over the cap");
    assert!(e.contains("503"), "{e}");
    drop(w);
    // The slot comes back once the WebSocket closes.
    let mut ok = false;
    for _ in 0..50 {
        if Client::try_connect_ws(srv.http, None).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a closed WebSocket kept its connection slot");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_websocket_consumer_is_dropped_and_loses_nothing() {
    let cfg = Config {
        outbound_queue: 8,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let (_s, mut s) = user_l2(&srv, "sender").await;
    let mut v = srv.connect_ws().await;
    let victim = v.register("victim", "pw").await;
    s.send(json!({"msgid": 7, "friendid": victim})).await;
    s.expect_ack(7).await;
    v.login_l2(victim, "pw").await;
    assert_eq!(s.recv_msgid(20).await["state"], "online");
    // From here on the victim never reads.
    let body = "z".repeat(16 * 1024 - 6);
    let mut sent = 0;
    let mut dropped = false;
    while sent < 4000 && !dropped {
        for i in 0..4 {
            s.send(json!({"msgid": 6, "toid": victim, "msg": format!("{:06}{body}", sent + i)}))
                .await;
        }
        let mut acks = 0;
        while acks < 4 {
            let f = s.recv().await;
            match f["msgid"].as_i64() {
                Some(12) => acks += 1,
                Some(20) => dropped = f["state"] == "offline",
                _ => panic!("unexpected frame for the sender: {f}"),
            }
        }
        sent += 4;
    }
    assert!(
        dropped,
        "the slow WebSocket was not dropped after {sent} messages"
    );
    drop(v);
    // Nothing was confirmed: all of it comes at the next login, in order.
    let mut v = srv.connect_ws().await;
    v.login_l2(victim, "pw").await;
    for i in 0..sent {
        let f = v.recv_msgid(6).await;
        assert_eq!(f["seq"], json!(i + 1));
        assert_eq!(&f["msg"].as_str().unwrap()[..6], format!("{i:06}"));
    }
    v.expect_silence(200).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_is_served_from_the_binary() {
    let srv = TestServer::start().await;
    let HttpResponse { status, head, body } = http_get(srv.http, "/").await;
    assert_eq!(status, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("<html"), "not the app: {page:.200}");
    // Every script the page names is served, as JavaScript.
    let scripts = page
        .split("src=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next());
    for src in scripts.filter(|s| s.ends_with(".js")) {
        let path = format!("/{}", src.trim_start_matches("./").trim_start_matches('/'));
        let HttpResponse { status, head, .. } = http_get(srv.http, &path).await;
        assert_eq!(status, 200, "{path}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("text/javascript"),
            "{path}: {head}"
        );
    }
    assert_eq!(http_get(srv.http, "/nope.js").await.status, 404);
    let status = http_get(srv.http, "/../Cargo.toml").await.status;
    assert!(status == 404 || status == 400, "{status}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_request_head_is_refused() {
    let srv = TestServer::start().await;
    let big = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nX-Pad: {}\r\n\r\n",
        srv.http,
        "a".repeat(64 * 1024)
    );
    let mut s = TcpStream::connect(srv.http).await.unwrap();
    let _ = s.write_all(big.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the server kept a huge request head open");
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "a 64 KiB head was not refused: {text:.100}"
    );
    // The listener still serves others.
    let mut c = srv.connect_ws().await;
    c.send(json!({"msgid": 18})).await;
    assert_eq!(c.recv().await["msgid"], 19);
    srv.stop().await;
}
