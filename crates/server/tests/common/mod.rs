//! Test harness shared by the integration tests: an in-process server on a
//! real loopback socket with a temporary SQLite file, and a line-oriented
//! client with timeouts on every read, so no test can hang.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clusterchat::config::{Config, HashCost};
use clusterchat::service::Shared;
use clusterchat::store::sqlite::SqliteStore;
use clusterchat::store::{Store, StoreOptions};
use clusterchat::Node;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any single read waits before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// A config for tests: cheap password hashing and a short shutdown grace,
/// everything else at the protocol defaults.
pub fn test_config() -> Config {
    Config {
        hash: HashCost {
            m_kib: 1024,
            t: 1,
            ..Default::default()
        },
        shutdown_grace: Duration::from_secs(1),
        // Every test client comes from 127.0.0.1; the tests of these limits
        // set them.
        max_connections_per_ip: 0,
        reg_per_ip_per_min: 0,
        prelogin_per_ip_per_sec: 0,
        ..Default::default()
    }
}

/// A running server and what a test needs to reach, inspect and stop it.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Cancel for graceful shutdown.
    pub shutdown: CancellationToken,
    /// The `Node::run` task.
    pub handle: JoinHandle<anyhow::Result<()>>,
    /// The store the node uses (tests may break it on purpose).
    pub store: Arc<dyn Store>,
    /// The node's shared state.
    pub shared: Arc<Shared>,
    /// The SQLite file.
    pub db: PathBuf,
    /// Keeps the temporary directory alive (None when the caller owns the path).
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with the test config and a fresh database.
    pub async fn start() -> TestServer {
        Self::start_with(test_config()).await
    }

    /// A server with this config and a fresh database.
    pub async fn start_with(cfg: Config) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("chat.db");
        let mut s = Self::start_on(cfg, &db).await;
        s._dir = Some(dir);
        s
    }

    /// A server with this config on an existing (or new) database file.
    pub async fn start_on(cfg: Config, db: &Path) -> TestServer {
        let url = format!("sqlite://{}", db.display());
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&url, &StoreOptions::default())
                .await
                .expect("open sqlite store"),
        );
        let node = Node::single(cfg, store.clone()).expect("build node");
        let shared = node.shared().clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(node.run(listener, shutdown.clone()));
        TestServer {
            addr,
            shutdown,
            handle,
            store,
            shared,
            db: db.to_owned(),
            _dir: None,
        }
    }

    /// A new client connection.
    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Cancels the server and waits (bounded) for `Node::run` to return.
    /// Returns the temporary directory so the database can be reopened.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(15), &mut self.handle)
            .await
            .expect("Node::run did not return within 15 s of shutdown");
        r.expect("server task panicked")
            .expect("Node::run returned an error");
        self._dir.take()
    }

    /// Waits (bounded) until `user` has confirmed everything up to `seq`.
    ///
    /// A level-1 session confirms a message only after the write to its
    /// socket returns, asynchronously: a client can read the frame before
    /// the confirmation is queued. Tests that log in again right after
    /// reading wait for it here instead of racing it.
    pub async fn wait_acked(&self, user: i64, seq: i64) {
        for _ in 0..250 {
            if self.store.acked_seq(user).await.expect("acked_seq") >= seq {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("user {user} never confirmed seq {seq}");
    }

    /// Registers a user on a throwaway connection and returns the new id.
    pub async fn register(&self, name: &str, password: &str) -> i64 {
        let mut c = self.connect().await;
        c.register(name, password).await
    }
}

/// A test client speaking LF-terminated JSON.
pub struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

/// What one read produced.
#[derive(Debug)]
pub enum Read {
    /// A complete LF-terminated line, without the LF.
    Line(Vec<u8>),
    /// The server closed (or reset) the connection.
    Eof,
    /// Nothing within the wait.
    Timeout,
}

impl Client {
    /// Connects to the server.
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_with(addr, None).await
    }

    /// Connects with a tiny receive buffer, so that what the client does not
    /// read stays in the server's queues rather than in the kernel's.
    pub async fn connect_tight(addr: SocketAddr) -> Client {
        Self::connect_with(addr, Some(4096)).await
    }

    async fn connect_with(addr: SocketAddr, rcvbuf: Option<u32>) -> Client {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(n) = rcvbuf {
            s.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        let sock = tokio::time::timeout(RECV_TIMEOUT, s.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        sock.set_nodelay(true).expect("nodelay");
        Client {
            sock,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes raw bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(RECV_TIMEOUT, self.sock.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write failed");
        self.sock.flush().await.expect("flush failed");
    }

    /// Writes raw bytes, tolerating a connection the server already closed.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(RECV_TIMEOUT, self.sock.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Half-closes: the server reads EOF, but can still write to us.
    pub async fn shutdown_write(&mut self) {
        let _ = self.sock.shutdown().await;
    }

    /// Sends one JSON request terminated by LF.
    pub async fn send(&mut self, v: Value) {
        let mut b = serde_json::to_vec(&v).expect("serialise");
        b.push(b'\n');
        self.send_raw(&b).await;
    }

    /// Sends one JSON request terminated by NUL, as the classic client does.
    pub async fn send_nul(&mut self, v: Value) {
        let mut b = serde_json::to_vec(&v).expect("serialise");
        b.push(0);
        self.send_raw(&b).await;
    }

    /// Reads one line, waiting at most `wait`.
    pub async fn read_line(&mut self, wait: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                return Read::Line(line);
            }
            if self.eof {
                return Read::Eof;
            }
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.buf)).await {
                Err(_) => return Read::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next frame's raw text; panics on timeout or EOF.
    pub async fn recv_text(&mut self) -> String {
        match self.read_line(RECV_TIMEOUT).await {
            Read::Line(l) => String::from_utf8(l).expect("server sent invalid UTF-8"),
            Read::Eof => panic!("expected a frame, but the server closed the connection"),
            Read::Timeout => panic!("expected a frame, but none arrived within {RECV_TIMEOUT:?}"),
        }
    }

    /// The next frame as JSON; panics on timeout, EOF or bad JSON.
    pub async fn recv(&mut self) -> Value {
        let t = self.recv_text().await;
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("server sent bad JSON {t:?}: {e}"))
    }

    /// The next frame, asserting its msgid.
    pub async fn recv_msgid(&mut self, msgid: i64) -> Value {
        let v = self.recv().await;
        assert_eq!(v["msgid"], msgid, "expected msgid {msgid}, got {v}");
        v
    }

    /// The next frame, asserting it is an ERROR with this errno.
    pub async fn expect_error(&mut self, errno: i64) -> Value {
        let v = self.recv().await;
        assert_eq!(v["msgid"], 11, "expected ERROR errno {errno}, got {v}");
        assert_eq!(v["errno"], errno, "expected ERROR errno {errno}, got {v}");
        assert!(
            v["errmsg"].as_str().is_some_and(|m| !m.is_empty()),
            "ERROR without errmsg: {v}"
        );
        v
    }

    /// The next frame, asserting it is a level-2 ACK for `re`.
    pub async fn expect_ack(&mut self, re: i64) -> Value {
        let v = self.recv().await;
        assert_eq!(v["msgid"], 12, "expected ACK for {re}, got {v}");
        assert_eq!(v["re"], re, "expected ACK for {re}, got {v}");
        assert_eq!(v["errno"], 0, "ACK with nonzero errno: {v}");
        v
    }

    /// Waits until every request sent so far has finished: replies leave in
    /// request order, so the PONG comes only after all of them. Use only when
    /// no other frame can arrive in between.
    pub async fn barrier(&mut self) {
        self.send(json!({"msgid": 18, "reqid": "barrier"})).await;
        let v = self.recv().await;
        assert_eq!(
            v,
            json!({"msgid": 19, "reqid": "barrier"}),
            "expected the barrier PONG"
        );
    }

    /// Asserts that nothing arrives (and the connection stays open) for `ms`.
    pub async fn expect_silence(&mut self, ms: u64) {
        match self.read_line(Duration::from_millis(ms)).await {
            Read::Timeout => {}
            Read::Line(l) => panic!(
                "expected silence, got frame {:?}",
                String::from_utf8_lossy(&l)
            ),
            Read::Eof => panic!("expected silence, but the server closed the connection"),
        }
    }

    /// Asserts that the server closes the connection next, with no frame before.
    pub async fn expect_eof(&mut self) {
        match self.read_line(RECV_TIMEOUT).await {
            Read::Eof => {}
            Read::Line(l) => panic!(
                "expected the connection to close, got frame {:?}",
                String::from_utf8_lossy(&l)
            ),
            Read::Timeout => panic!("expected the connection to close within {RECV_TIMEOUT:?}"),
        }
    }

    /// Reads frames until the server closes, within `wait`; returns them.
    pub async fn drain_to_eof(&mut self, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_line(left).await {
                Read::Eof => return out,
                Read::Timeout => panic!("connection not closed within {wait:?}"),
                Read::Line(l) => {
                    out.push(serde_json::from_slice(&l).unwrap_or_else(|e| {
                        panic!("bad JSON {:?}: {e}", String::from_utf8_lossy(&l))
                    }))
                }
            }
        }
    }

    /// REG; asserts success and returns the new id.
    pub async fn register(&mut self, name: &str, password: &str) -> i64 {
        self.send(json!({"msgid": 4, "name": name, "password": password}))
            .await;
        let v = self.recv_msgid(5).await;
        assert_eq!(v["errno"], 0, "REG {name:?} failed: {v}");
        v["id"].as_i64().expect("REG_ACK without integer id")
    }

    /// CREATE_GROUP at level 2; asserts success and returns the group id.
    pub async fn create_group(&mut self, name: &str) -> i64 {
        self.send(json!({"msgid": 8, "groupname": name, "groupdesc": "d"}))
            .await;
        self.expect_ack(8).await["groupid"]
            .as_i64()
            .expect("CREATE_GROUP ACK without groupid")
    }

    /// Level-1 LOGIN; asserts success and returns the ack.
    pub async fn login_l1(&mut self, id: i64, password: &str) -> Value {
        self.send(json!({"msgid": 1, "id": id, "password": password}))
            .await;
        let v = self.recv_msgid(2).await;
        assert_eq!(v["errno"], 0, "level-1 LOGIN of {id} failed: {v}");
        v
    }

    /// Level-2 LOGIN; asserts success and returns the ack.
    pub async fn login_l2(&mut self, id: i64, password: &str) -> Value {
        self.send(json!({"msgid": 1, "id": id, "password": password, "v": 2}))
            .await;
        let v = self.recv_msgid(2).await;
        assert_eq!(v["errno"], 0, "level-2 LOGIN of {id} failed: {v}");
        v
    }
}

/// A connected, level-1 logged-in client for a new user.
pub async fn user_l1(srv: &TestServer, name: &str) -> (i64, Client) {
    let mut c = srv.connect().await;
    let id = c.register(name, "pw").await;
    c.login_l1(id, "pw").await;
    (id, c)
}

/// A connected, level-2 logged-in client for a new user.
pub async fn user_l2(srv: &TestServer, name: &str) -> (i64, Client) {
    let mut c = srv.connect().await;
    let id = c.register(name, "pw").await;
    c.login_l2(id, "pw").await;
    (id, c)
}

/// Parses a JSON-encoded string element of a level-1 login ack array.
pub fn decode_str(v: &Value) -> Value {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a JSON-encoded string, got {v}"));
    serde_json::from_str(s).unwrap_or_else(|e| panic!("element {s:?} is not JSON: {e}"))
}

/// The sorted key set of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// This process's resident memory in MiB (Linux), for tests that bound what
/// a misbehaving client can make the server hold.
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib / 1024.0
}
