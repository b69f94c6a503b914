//! The in-process test server: a real `Node` on a loopback socket with a
//! temporary SQLite file, and the config every test starts from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clusterchat::config::{Config, HashCost};
use clusterchat::service::Service;
use clusterchat::store::sqlite::SqliteStore;
use clusterchat::store::{Store, StoreOptions};
use clusterchat::Node;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Client;

/// A config for tests: cheap password hashing, a short shutdown grace and
/// no per-address limits (every test client comes from 127.0.0.1; the tests
/// of those limits set them), everything else at the defaults.
pub fn test_config() -> Config {
    Config {
        hash: HashCost {
            m_kib: 1024,
            t: 1,
            ..Default::default()
        },
        shutdown_grace: Duration::from_secs(1),
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
    /// Where its HTTP listener (web client, WebSocket) listens.
    pub http: SocketAddr,
    /// Cancel for graceful shutdown.
    pub shutdown: CancellationToken,
    /// The `Node::run` task.
    pub handle: JoinHandle<anyhow::Result<()>>,
    /// The store the node uses (tests may break it on purpose).
    pub store: Arc<dyn Store>,
    /// The node's shared state.
    pub shared: Arc<Service>,
    /// The SQLite file.
    pub db: PathBuf,
    /// Keeps the temporary directory alive (None when the caller owns the path).
    dir: Option<tempfile::TempDir>,
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
        s.dir = Some(dir);
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
        let shared = node.service().clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let http_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http = http_listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let handle =
            tokio::spawn(node.run_with_http(listener, Some(http_listener), shutdown.clone()));
        TestServer {
            addr,
            http,
            shutdown,
            handle,
            store,
            shared,
            db: db.to_owned(),
            dir: None,
        }
    }

    /// A new client connection.
    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// A new client connection over a WebSocket.
    pub async fn connect_ws(&self) -> Client {
        Client::connect_ws(self.http).await
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
        self.dir.take()
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

/// A connected, level-1 logged-in client for a new user (password "pw").
pub async fn user_l1(srv: &TestServer, name: &str) -> (i64, Client) {
    let mut c = srv.connect().await;
    let id = c.register(name, "pw").await;
    c.login_l1(id, "pw").await;
    (id, c)
}

/// A connected, level-2 logged-in client for a new user (password "pw").
pub async fn user_l2(srv: &TestServer, name: &str) -> (i64, Client) {
    let mut c = srv.connect().await;
    let id = c.register(name, "pw").await;
    c.login_l2(id, "pw").await;
    (id, c)
}
