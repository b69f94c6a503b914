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
