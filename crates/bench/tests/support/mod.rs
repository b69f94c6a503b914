//! Shared by the bench's integration tests: the ceiling as a child process
//! and the config of a real node under load. The in-process server and the
//! line client come from the shared test kit (`chat-testkit`).

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use chat_testkit::TestServer;
use clusterchat::config::{Config, Quotas};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Longest wait for any single frame.
pub const WAIT: Duration = Duration::from_secs(5);

/// The bench binary under test.
pub const BENCH: &str = env!("CARGO_BIN_EXE_chat-bench");

/// A real clusterchat node in this process, configured for a load
/// generator: every client comes from one address, and no quota applies.
pub async fn real_server() -> TestServer {
    TestServer::start_with(Config {
        quotas: Quotas {
            social_per_min: 0,
            fanout_per_sec: 0,
            ..Default::default()
        },
        ..chat_testkit::test_config()
    })
    .await
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
