//! Shared by the bench's integration tests: an in-process clusterchat server
//! on a temporary SQLite file, the ceiling as a child process, and a small
//! line client whose every read has a timeout.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use clusterchat::config::{Config, HashCost, Quotas};
use clusterchat::store::sqlite::SqliteStore;
use clusterchat::store::{Store, StoreOptions};
use clusterchat::Node;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Longest wait for any single frame.
pub const WAIT: Duration = Duration::from_secs(5);

/// The bench binary under test.
pub const BENCH: &str = env!("CARGO_BIN_EXE_chat-bench");

/// A real clusterchat node in this process.
pub struct RealServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl RealServer {
    /// Starts a node with cheap password hashing on a fresh database.
    pub async fn start() -> RealServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("chat.db").display());
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&url, &StoreOptions::default())
                .await
                .expect("open sqlite"),
        );
        let cfg = Config {
            hash: HashCost {
                m_kib: 1024,
                t: 1,
                ..Default::default()
            },
            shutdown_grace: Duration::from_secs(1),
            // A load generator: every client comes from one address.
            max_connections_per_ip: 0,
            reg_per_ip_per_min: 0,
            prelogin_per_ip_per_sec: 0,
            quotas: Quotas {
                social_per_min: 0,
                fanout_per_sec: 0,
                ..Default::default()
            },
            ..Default::default()
        };
        let node = Node::single(cfg, store).expect("node");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(node.run(listener, shutdown.clone()));
        RealServer {
            addr,
            shutdown,
            handle,
            _dir: dir,
        }
    }

    /// Shuts the node down (bounded).
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
    }
}

/// The forward-only ceiling, run as `chat-bench ceiling`.
pub struct CeilingProc {
    /// Where it listens.
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl CeilingProc {
    /// Starts it on a free port.
    pub async fn start() -> CeilingProc {
        let mut child = tokio::process::Command::new(BENCH)
            .args(["ceiling", "--listen", "127.0.0.1:0", "--lifeline"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the ceiling");
        let out = child.stdout.take().expect("stdout");
        let line = tokio::time::timeout(WAIT, BufReader::new(out).lines().next_line())
            .await
            .expect("ceiling start timed out")
            .expect("read")
            .expect("a line");
        let addr = line
            .strip_prefix("listening ")
            .expect("listening line")
            .parse()
            .expect("address");
        CeilingProc { addr, child }
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A line client.
pub struct Client {
    rd: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    wr: OwnedWriteHalf,
}

impl Client {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let (rd, wr) = s.into_split();
        Client {
            rd: BufReader::new(rd).lines(),
            wr,
        }
    }

    /// Sends one LF-terminated JSON frame.
    pub async fn send(&mut self, v: Value) {
        let mut b = serde_json::to_vec(&v).expect("json");
        b.push(b'\n');
        self.wr.write_all(&b).await.expect("write");
    }

    /// The next frame, failing the test after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.rd.next_line())
            .await
            .expect("no frame within the wait")
            .expect("read")
            .expect("connection closed");
        serde_json::from_str(&line).expect("frame is JSON")
    }

    /// The next frame if one comes within `wait`.
    pub async fn maybe_recv(&mut self, wait: Duration) -> Option<Value> {
        match tokio::time::timeout(wait, self.rd.next_line()).await {
            Ok(Ok(Some(line))) => Some(serde_json::from_str(&line).expect("frame is JSON")),
            _ => None,
        }
    }
}
