//! clusterchat: an instant-messaging server that speaks the classic muduo
//! "cluster chat server" protocol (level 1) and its extension (level 2).
//!
//! Layers, outside in: [`server`] accepts, [`connection`] frames and pipelines
//! requests, [`service`] handles them, [`committer`] batches writes into the
//! [`store`], and the [`bus`] routes events to [`sessions`].

pub mod admin;
pub mod bus;
pub mod cmd;
pub mod committer;
pub mod config;
pub mod connection;
pub mod error;
pub mod frames;
pub mod http;
pub mod metrics;
pub mod names;
pub mod outbox;
pub mod password;
pub mod proxy;
pub mod request;
pub mod server;
pub mod service;
pub mod sessions;
pub mod store;
pub mod throttle;
pub mod tls;

pub use config::Config;
pub use server::Node;
