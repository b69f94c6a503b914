//! The forward-only ceiling server: the same framing (`FrameCodec`) and the
//! same routing as clusterchat, with everything kept in memory, no storage
//! and no password hashing. A task per connection reads and handles
//! requests; a writer task per connection drains a bounded queue and
//! coalesces frames into few writes, as the real server does.
//!
//! It answers LOGIN (password or level-2 token), REG, ONE_CHAT, GROUP_CHAT,
//! CREATE_GROUP, ADD_GROUP, DISBAND_GROUP, DELIVERED, PING and LOGINOUT with
//! replies and pushes built by the real server's encoders (`chat_protocol`,
//! with `mid` and `seq` at level 2), so the bench's clients run unchanged
//! against it. What the real
//! server costs above this is the price of durability and bookkeeping.
//!
//! Files: this one holds the shared state; [`conn`] runs a connection (read
//! loop, login, writer), [`requests`] answers every other request, and
//! [`process`] runs the ceiling as its own process.

mod conn;
mod process;
mod requests;

pub use process::{run, Child};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::limits;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Ceiling tuning.
#[derive(Debug, Clone)]
pub struct Options {
    /// Frames queued per connection before a slow reader is disconnected
    /// (the real server's default is 1024).
    pub queue: usize,
    /// Longest client frame.
    pub max_frame: usize,
    /// A users file whose accounts (and tokens) exist from the start, so a
    /// scenario needs no registration and the RSS baseline is a fresh process.
    pub seed: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queue: 1024,
            max_frame: limits::MAX_FRAME,
            seed: None,
        }
    }
}

/// The session a user is logged in with.
struct Sess {
    sid: u64,
    level: u8,
    tx: mpsc::Sender<Bytes>,
    close: CancellationToken,
}

/// An account, with its session when online.
struct User {
    id: i64,
    name: String,
    password: String,
    seq: AtomicI64,
    session: Mutex<Option<Sess>>,
    groups: Mutex<Vec<i64>>,
}

/// A group and its members.
struct Group {
    id: i64,
    name: String,
    desc: String,
    creator: i64,
    members: RwLock<Vec<Arc<User>>>,
}

/// The ceiling's shared state.
pub struct Ceiling {
    opts: Options,
    users: RwLock<HashMap<i64, Arc<User>>>,
    names: Mutex<HashSet<String>>,
    next_user: AtomicI64,
    groups: RwLock<HashMap<i64, Arc<Group>>>,
    group_names: Mutex<HashSet<String>>,
    next_group: AtomicI64,
    next_mid: AtomicI64,
    tokens: Mutex<HashMap<String, i64>>,
    next_sid: AtomicU64,
}

impl Ceiling {
    /// An empty ceiling.
    pub fn new(opts: Options) -> Arc<Ceiling> {
        Arc::new(Ceiling {
            opts,
            users: RwLock::default(),
            names: Mutex::default(),
            next_user: AtomicI64::new(1),
            groups: RwLock::default(),
            group_names: Mutex::default(),
            next_group: AtomicI64::new(1),
            next_mid: AtomicI64::new(1),
            tokens: Mutex::default(),
            next_sid: AtomicU64::new(1),
        })
    }

    /// Adds accounts as if they had registered, with their saved tokens.
    pub fn seed(&self, users: &[crate::users::User]) {
        let mut map = self.users.write().expect("users");
        let mut names = self.names.lock().expect("names");
        let mut tokens = self.tokens.lock().expect("tokens");
        for u in users {
            names.insert(u.name.clone());
            if let Some(t) = &u.token {
                tokens.insert(t.clone(), u.id);
            }
            map.insert(
                u.id,
                Arc::new(User {
                    id: u.id,
                    name: u.name.clone(),
                    password: u.password.clone(),
                    seq: AtomicI64::new(0),
                    session: Mutex::new(None),
                    groups: Mutex::new(Vec::new()),
                }),
            );
            self.next_user.fetch_max(u.id + 1, Ordering::Relaxed);
        }
    }

    /// Accepts connections forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    tokio::spawn(self.clone().conn(sock));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn user(&self, id: i64) -> Option<Arc<User>> {
        self.users.read().expect("users").get(&id).cloned()
    }

    fn group(&self, id: i64) -> Option<Arc<Group>> {
        self.groups.read().expect("groups").get(&id).cloned()
    }
}
