//! Dev-only test kit shared by the server, cluster and bench tests, so that
//! they start servers and read frames one way: an in-process [`TestServer`]
//! on a loopback port with a temporary SQLite file, and a line [`Client`]
//! whose every read has a timeout, so no test can hang.
//!
//! Never a normal dependency: only `[dev-dependencies]` name it.

mod client;
mod server;

pub mod http;
pub mod tls;
pub use client::{ws_connect, Client, Read, Recv, WebSocket, RECV_TIMEOUT};
pub use http::{http_get, http_raw, HttpResponse};
pub use server::{test_config, user_l1, user_l2, TestServer};
pub use tls::TestCerts;

/// A command for the `chat-server` binary at `exe` that only its arguments
/// configure: the `CHAT_*`, `DATABASE_URL`, `REDIS_URL` and `RUST_LOG`
/// variables of the test's own environment are removed (no stray cluster
/// mode, database or limits).
pub fn server_command(exe: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CHAT_") || ["DATABASE_URL", "REDIS_URL", "RUST_LOG"].contains(&k.as_ref())
        {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd
}
