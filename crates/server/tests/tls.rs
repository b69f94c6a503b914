//! TLS on both listeners (`--tls-cert`, `--tls-key`): chat sessions over
//! TLS, the WebSocket over wss, plain clients turned away, the PROXY header
//! before the handshake, and certificates reloaded on SIGHUP without
//! dropping sessions. The certificates are made at test time (rcgen).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterchat::Config;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test server with TLS on both listeners.
async fn tls_server(certs: &TestCerts) -> TestServer {
    TestServer::start_with(Config {
        tls: Some(certs.server()),
        ..test_config()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tls_clients_register_log_in_and_chat() {
    let certs = TestCerts::new("test CA");
    let srv = tls_server(&certs).await;
    let mut a = Client::connect_tls(srv.addr, certs.client_config()).await;
    let mut b = Client::connect_tls(srv.addr, certs.client_config()).await;
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    a.login_l2(alice, "pw").await;
    b.login_l2(bob, "pw").await;

    a.send(json!({"msgid": 6, "toid": bob, "msg": "over TLS", "cmid": "t1", "reqid": 1}))
        .await;
    a.expect_ack(6).await;
    let got = b.recv_msgid(6).await;
    assert_eq!(
        (&got["id"], &got["msg"]),
        (&json!(alice), &json!("over TLS"))
    );
    // A frame larger than a TLS record (16 KiB) arrives whole.
    let long = "x".repeat(16 * 1024);
    b.send(json!({"msgid": 6, "toid": alice, "msg": long, "cmid": "t2"}))
        .await;
    b.expect_ack(6).await;
    assert_eq!(a.recv_msgid(6).await["msg"], json!(long));

    // A level-1 session works over TLS too.
    let mut c = Client::connect_tls(srv.addr, certs.client_config()).await;
    let carol = c.register("carol", "pw").await;
    c.login_l1(carol, "pw").await;
    a.send(json!({"msgid": 6, "toid": carol, "msg": "classic", "cmid": "t3"}))
        .await;
    a.expect_ack(6).await;
    assert_eq!(c.recv_msgid(6).await["msg"], "classic");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_wss_chats_with_a_tls_client() {
    let certs = TestCerts::new("test CA");
    let srv = tls_server(&certs).await;
    let alice = srv_register(&srv, &certs, "alice").await;
    let bob = srv_register(&srv, &certs, "bob").await;
    let mut a = Client::connect_wss(srv.http, certs.client_config()).await;
    a.login_l2(alice, "pw").await;
    let mut b = Client::connect_tls(srv.addr, certs.client_config()).await;
    b.login_l2(bob, "pw").await;
    a.send(json!({"msgid": 6, "toid": bob, "msg": "from the browser", "cmid": "w1"}))
        .await;
    a.expect_ack(6).await;
    assert_eq!(b.recv_msgid(6).await["msg"], "from the browser");
    b.send(json!({"msgid": 6, "toid": alice, "msg": "back", "cmid": "t1"}))
        .await;
    b.expect_ack(6).await;
    assert_eq!(a.recv_msgid(6).await["msg"], "back");

    // The page itself comes over https.
    let mut s = chat_testkit::tls::tls_connect(srv.http, certs.client_config())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut page = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, s.read_to_end(&mut page))
        .await
        .expect("the page did not end in time")
        .ok();
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    srv.stop().await;
}

/// Registers `name` (password "pw") over a throwaway TLS connection.
async fn srv_register(srv: &TestServer, certs: &TestCerts, name: &str) -> i64 {
    let mut c = Client::connect_tls(srv.addr, certs.client_config()).await;
    c.register(name, "pw").await
}

/// Writes `bytes` on a plain connection to `addr` and reads until the server
/// closes it; returns what came back.
async fn plain_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, s.read_to_end(&mut back))
        .await
        .expect("the server did not close a plain connection")
        .ok();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_are_turned_away_and_stalled_handshakes_block_nobody() {
    let certs = TestCerts::new("test CA");
    let srv = tls_server(&certs).await;
    // A connection that never starts its handshake: accepting goes on.
    let _stalled = TcpStream::connect(srv.addr).await.unwrap();
    let _stalled_http = TcpStream::connect(srv.http).await.unwrap();

    // Plain text on the chat listener: closed, no JSON answer.
    let back = plain_exchange(srv.addr, b"{\"msgid\":18}\n").await;
    assert!(
        !back.contains(&b'{'),
        "a JSON reply over plain TCP: {back:?}"
    );
    // Plain HTTP on the https listener: closed, no HTTP answer.
    let back = plain_exchange(srv.http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!back.starts_with(b"HTTP/"), "a plain HTTP reply: {back:?}");

    // A client of another CA does not accept the server's certificate.
    let other = TestCerts::new("another CA");
    let e = Client::try_connect_tls(srv.addr, other.client_config())
        .await
        .err()
        .expect("a certificate of an unknown CA was accepted");
    assert!(e.contains("certificate"), "{e}");

    // The server goes on serving TLS clients.
    let mut c = Client::connect_tls(srv.addr, certs.client_config()).await;
    c.send(json!({"msgid": 18})).await;
    c.recv_msgid(19).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_the_proxy_header_comes_before_the_handshake() {
    let certs = TestCerts::new("test CA");
    let srv = TestServer::start_with(Config {
        tls: Some(certs.server()),
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        max_connections_per_ip: 1,
        ..test_config()
    })
    .await;
    let through_proxy = |client: &'static str| {
        let config = certs.client_config();
        let addr = srv.addr;
        async move {
            let mut sock = TcpStream::connect(addr).await.unwrap();
            sock.write_all(format!("PROXY TCP4 {client} 127.0.0.1 40000 6000\r\n").as_bytes())
                .await
                .unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(name, sock)
                .await
        }
    };
    let mut a = through_proxy("203.0.113.7").await.expect("TLS after PROXY");
    a.write_all(b"{\"msgid\":18}\n").await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(RECV_TIMEOUT, a.read(&mut buf))
        .await
        .expect("no PONG in time")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("\"msgid\":19"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The address from the header counts: a second client "from"
    // 203.0.113.7 is over the per-address cap of 1 and told so over TLS;
    // another address is not.
    let mut b = through_proxy("203.0.113.7").await.expect("TLS after PROXY");
    let mut refusal = Vec::new();
    let _ = tokio::time::timeout(RECV_TIMEOUT, b.read_to_end(&mut refusal)).await;
    let refusal = String::from_utf8_lossy(&refusal);
    assert!(refusal.contains("\"errno\":10"), "{refusal}");
    assert!(through_proxy("203.0.113.8").await.is_ok());
    srv.stop().await;
}

/// A `chat-server` process with TLS, killed on drop.
struct Proc {
    child: Child,
    log: std::path::PathBuf,
    addr: std::net::SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    async fn start(dir: &Path, certs: &TestCerts) -> Proc {
        let log = dir.join("server.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = server_command(env!("CARGO_BIN_EXE_chat-server"));
        let url = format!("sqlite://{}", dir.join("chat.db").display());
        let child = cmd
            .env("NO_COLOR", "1")
            .args(["--listen", "127.0.0.1:0", "--http-listen", "off"])
            .args(["--database-url", &url, "--log", "info"])
            .args(["--argon2-m-kib", "1024", "--argon2-t", "1"])
            .arg("--tls-cert")
            .arg(&certs.cert)
            .arg("--tls-key")
            .arg(&certs.key)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn chat-server");
        let mut p = Proc {
            child,
            log,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let line = p.wait_for("listen=").await;
        p.addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        p
    }

    /// The log's text, without colours.
    fn text(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::new();
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Waits (bounded) for a log line with `needle` after the first `skip`
    /// such lines; returns it.
    async fn wait_for_nth(&mut self, needle: &str, skip: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.text();
            if let Some(l) = text.lines().filter(|l| l.contains(needle)).nth(skip) {
                return l.to_owned();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("chat-server exited ({st}):\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within 30 s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_nth(needle, 0).await
    }

    fn hangup(&self) {
        let st = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(st.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_open_sessions_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("tls");
    std::fs::create_dir(&files).unwrap();
    let a = TestCerts::write_in(&files, "CA A");
    let trust_a = a.client_config();
    let mut srv = Proc::start(dir.path(), &a).await;

    let mut old = Client::connect_tls(srv.addr, trust_a.clone()).await;
    let id = old.register("alice", "pw").await;
    old.login_l2(id, "pw").await;

    // Files that are not a certificate and key: the old ones stay.
    std::fs::write(&a.cert, "not a certificate").unwrap();
    srv.hangup();
    srv.wait_for("TLS certificate reload failed").await;
    Client::connect_tls(srv.addr, trust_a.clone()).await;

    // Certificate B (of another CA) in place of A.
    let b = TestCerts::write_in(&files, "CA B");
    let trust_b = b.client_config();
    srv.hangup();
    srv.wait_for("TLS certificate reloaded").await;
    let mut new = Client::connect_tls(srv.addr, trust_b).await;
    new.send(json!({"msgid": 18})).await;
    new.recv_msgid(19).await;
    let e = Client::try_connect_tls(srv.addr, trust_a)
        .await
        .err()
        .expect("a new connection still got certificate A");
    assert!(e.contains("certificate"), "{e}");

    // The session from before both reloads goes on.
    old.send(json!({"msgid": 18})).await;
    old.recv_msgid(19).await;
}
