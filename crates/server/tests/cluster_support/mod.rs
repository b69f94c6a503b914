//! Harness for the cluster tests: real processes, each on free loopback ports
//! in a temporary directory, each killed when its handle drops.
//!
//! - [`Cluster`] (`cluster.rs`): a private MariaDB (`mariadb.rs`) and Redis
//!   (`redis.rs`), N `chat-server` nodes and optionally nginx built from the
//!   shipped `deploy/nginx/clusterchat.conf` (`nodes.rs`); the programs are
//!   found by `bins.rs` and run as process groups by `process.rs`.
//! - [`Client`] (`client.rs`): the test kit's line client, PRESENCE set aside.
//! - [`Agent`] (`agent.rs`): a level-2 chat client that sends with `cmid`,
//!   retries what was not acknowledged, reconnects when told, confirms
//!   delivery, and records everything in a shared [`Ledger`] (`ledger.rs`)
//!   so a test can count sent, acknowledged, received, lost and duplicated
//!   messages, pushes out of `seq` order, and delivery latency; `checks.rs`
//!   waits for it to settle and prints the counts.
//!
//! Every child runs in its own process group, so a kill reaches the
//! processes it forked too (nginx workers), and nothing else.

#![allow(dead_code)] // not every test uses every helper

mod agent;
mod bins;
mod checks;
mod client;
mod cluster;
mod ledger;
mod mariadb;
mod nodes;
mod process;
mod redis;
mod traffic;

pub use agent::{Agent, AgentCtl, AgentReport, AgentSpec, Dest};
pub use chat_testkit::Recv;
pub use checks::{print_counts, wait_settled};
pub use client::{as_user, befriend, friend_state, make_group, register, Client};
pub use cluster::Cluster;
pub use ledger::{Counts, Ledger, SharedLedger};
pub use traffic::{Outcome, Traffic};

/// The presence lease the nodes run with, in seconds (the server's minimum).
pub const LEASE_SECS: u64 = 3;
