//! Zero-loss crash test for the single-node SQLite server.
//!
//! What it proves: the server ACKs a chat message only after the message is
//! committed, so a `kill -9` under load loses nothing that was acknowledged,
//! and a client's retry after the crash stores nothing twice.
//!
//! How: the real `chat-server` binary runs on a SQLite file while 8 senders
//! pipeline ONE_CHAT and GROUP_CHAT (each with a `cmid`, 16 in flight each)
//! at 8 receivers and a group of 8. Half the receivers are online, reading
//! pushes and confirming some of them; the rest are offline. The server is
//! killed with SIGKILL while sends are in flight and restarted on the same
//! file, six times: on odd runs at the moment a sender reads an ACK (when an
//! ACK that overtook its commit would be lost), on even runs at no particular
//! moment (which often leaves messages committed but not yet ACKed). After
//! each restart the senders first re-send every message they saw no ACK for,
//! with the same `cmid`. After the last restart the retries must all be
//! ACKed, every recipient logs in and reads its backlog, and the test checks
//! against HISTORY (what is stored) and every ACK and push it saw:
//!
//! - every ACKed message is stored, once, under the mid of its ACK;
//! - nothing is stored twice: a retry whose message was stored gets the
//!   stored mid, one whose message was lost is stored fresh; no mid carries
//!   two texts, and nothing is stored that was not sent;
//! - each recipient has each message meant for it under exactly one seq, its
//!   seqs are 1..n without gaps, and pushes within a session never go back.
//!
//! Why: the SQLite write path is one rusqlite writer thread that remembers
//! counters (highest mid, each user's last seq) between batches. An ACK sent
//! before the commit, a counter out of step with the file after a crash, a
//! row lost from a batch or a broken `cmid` lookup each break these checks.
//!
//! Limits: a killed process leaves what it wrote in the OS page cache, so
//! this shows that the ACK waits for the commit, not that the commit waits
//! for the disk (`synchronous = FULL`): that needs a power cut. An ACK that
//! leaves only microseconds before its COMMIT is caught by chance (about
//! five runs in six when tried); a wider gap, every time.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Read};
use serde_json::{json, Value};

const SENDERS: usize = 8;
const RECEIVERS: usize = 8;
/// Receivers 0..ONLINE are logged in during the load; the rest are offline.
const ONLINE: usize = 4;
/// Senders 0..GROUP_SENDERS are group members and also send to the group.
const GROUP_SENDERS: usize = 4;
/// Receivers in the group: two online, two offline.
const GROUP_RECEIVERS: [usize; 4] = [0, 1, 4, 5];
/// Requests each sender keeps in flight.
const WINDOW: usize = 16;
/// Load time before each kill (the kill also waits for `MIN_ACKS`).
const LOAD: [Duration; 6] = [
    Duration::from_millis(300),
    Duration::from_millis(700),
    Duration::from_millis(400),
    Duration::from_millis(900),
    Duration::from_millis(500),
    Duration::from_millis(600),
];
const MIN_ACKS: usize = 100;
/// How long a reply may take before the test fails (the machine is shared
/// and the server is a debug build: generous, only so nothing hangs).
const REPLY_WAIT: Duration = Duration::from_secs(20);
/// How long a listener waits for the kill's EOF.
const LISTEN_WAIT: Duration = Duration::from_secs(90);
const PASSWORD: &str = "pw";

// ---------------------------------------------------------------------------
// The server process

/// A `chat-server` child on the test's database file, killed when dropped.
struct Server {
    child: Arc<Mutex<Child>>,
    addr: SocketAddr,
    log: PathBuf,
}

/// Kills the server from the first task that sees an ACK once armed: the
/// moment when an ACK sent before its commit would most likely be lost.
#[derive(Clone)]
struct Trigger {
    child: Arc<Mutex<Child>>,
    armed: Arc<AtomicBool>,
}

impl Trigger {
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn is_armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }

    /// SIGKILL if armed (once); true if this call killed.
    fn fire(&self) -> bool {
        if !self.armed.swap(false, Ordering::SeqCst) {
            return false;
        }
        let _ = lock(&self.child).kill();
        true
    }
}

impl Server {
    /// Starts the binary on `db` and waits (bounded) for its `listen=` line.
    async fn start(dir: &Path, db: &Path, run: usize) -> Server {
        let log = dir.join(format!("server-{run}.log"));
        let out = File::create(&log).expect("create server log");
        let err = out.try_clone().expect("clone server log");
        let mut cmd = common::server_command(env!("CARGO_BIN_EXE_chat-server"));
        let url = format!("sqlite://{}", db.display());
        cmd.env("NO_COLOR", "1")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "off",
                "--database-url",
                &url,
            ])
            .args(["--sqlite-synchronous", "full", "--log", "info"])
            .args(["--argon2-m-kib", "1024", "--argon2-t", "1"])
            .args(["--max-connections-per-ip", "0", "--reg-per-ip-per-min", "0"])
            .args([
                "--login-failures-per-ip",
                "0",
                "--prelogin-per-ip-per-sec",
                "0",
            ])
            .args(["--social-per-min", "0", "--fanout-per-sec", "0"])
            .args(["--rate-limit", "0", "--shutdown-grace-secs", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = Arc::new(Mutex::new(cmd.spawn().expect("spawn chat-server")));
        let mut srv = Server {
            child,
            addr: "0.0.0.0:0".parse().expect("placeholder address"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = strip_ansi(&std::fs::read_to_string(&srv.log).unwrap_or_default());
            if let Some(addr) = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
                .and_then(|a| a.parse().ok())
            {
                srv.addr = addr;
                return srv;
            }
            if let Ok(Some(st)) = lock(&srv.child).try_wait() {
                panic!("chat-server exited ({st}) before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "chat-server printed no listen= line within 60 s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn trigger(&self) -> Trigger {
        Trigger {
            child: self.child.clone(),
            armed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `kill -9` (unless a trigger did already), and reaps it.
    fn crash(&mut self) {
        let mut c = lock(&self.child);
        let _ = c.kill(); // fails only if it is gone already
        c.wait().expect("reap chat-server");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut c = lock(&self.child);
        if let Ok(None) = c.try_wait() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `s` without ANSI colour sequences (ESC '[' ... final letter).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// What the test saw

/// Every push, ACK and HISTORY entry, checked as it is recorded.
#[derive(Default)]
struct Ledger {
    /// Per user: seq -> mid, over all sessions and server runs.
    inbox: HashMap<i64, BTreeMap<i64, i64>>,
    /// (user, mid) -> seq.
    seq_of: HashMap<(i64, i64), i64>,
    /// mid -> text.
    text_of: HashMap<i64, String>,
    /// text -> mid (every text the test sends is unique).
    mid_of: HashMap<String, i64>,
    /// Push frames read, redeliveries included.
    pushes: usize,
    /// What went wrong, each once, in the order seen.
    problems: Vec<String>,
    seen_problems: HashSet<String>,
}

impl Ledger {
    fn problem(&mut self, p: String) {
        if self.seen_problems.insert(p.clone()) {
            self.problems.push(p);
        }
    }

    /// One mid, one text; one text, one mid.
    fn message(&mut self, mid: i64, text: &str, source: &str) {
        match self.text_of.get(&mid) {
            Some(t) if t != text => {
                let p = format!("mid {mid} carries two texts: {t:?} and {text:?} ({source})");
                self.problem(p);
            }
            Some(_) => {}
            None => {
                self.text_of.insert(mid, text.to_owned());
            }
        }
        match self.mid_of.get(text) {
            Some(&m) if m != mid => {
                let p = format!("{text:?} exists twice, as mid {m} and mid {mid} ({source})");
                self.problem(p);
            }
            Some(_) => {}
            None => {
                self.mid_of.insert(text.to_owned(), mid);
            }
        }
    }

    /// A push to `user`: its seq names one mid for good, and the other way.
    fn push(&mut self, user: i64, seq: i64, mid: i64, text: &str) {
        self.pushes += 1;
        self.message(mid, text, "push");
        let inbox = self.inbox.entry(user).or_default();
        match inbox.get(&seq) {
            Some(&m) if m != mid => {
                let p = format!("user {user}: seq {seq} was mid {m}, now mid {mid}");
                self.problem(p);
            }
            Some(_) => {}
            None => {
                inbox.insert(seq, mid);
            }
        }
        match self.seq_of.get(&(user, mid)) {
            Some(&s) if s != seq => {
                let p = format!("user {user}: mid {mid} delivered twice, as seq {s} and seq {seq}");
                self.problem(p);
            }
            Some(_) => {}
            None => {
                self.seq_of.insert((user, mid), seq);
            }
        }
    }
}

type Shared = Arc<Mutex<Ledger>>;

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A chat push (level 2: it has a seq).
fn is_push(v: &Value) -> bool {
    matches!(v["msgid"].as_i64(), Some(6 | 10)) && v.get("seq").is_some()
}

/// One frame terminated by LF.
fn frame(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).expect("serialise");
    b.push(b'\n');
    b
}

enum Got {
    Frame(Value),
    Eof,
    Timeout,
}

/// A level-2 session of one user; every push it reads goes into the ledger.
struct Conn {
    client: Client,
    user: i64,
    ledger: Shared,
    /// The highest seq pushed in this session.
    session_seq: i64,
}

impl Conn {
    /// Connects and logs in at level 2 with `last_seq` 0.
    async fn login(addr: SocketAddr, user: i64, ledger: &Shared) -> Conn {
        let mut c = Conn {
            client: Client::connect(addr).await,
            user,
            ledger: ledger.clone(),
            session_seq: 0,
        };
        let req = json!({"msgid": 1, "id": user, "password": PASSWORD, "v": 2, "last_seq": 0});
        c.client.send(req).await;
        let v = c.reply("LOGIN").await;
        assert_eq!(
            v["msgid"], 2,
            "LOGIN of {user}: expected LOGIN_ACK, got {v}"
        );
        assert_eq!(v["errno"], 0, "LOGIN of {user} failed: {v}");
        c
    }

    /// The next frame; a push is recorded first.
    async fn next(&mut self, wait: Duration) -> Got {
        match self.client.read_line(wait).await {
            Read::Line(l) => {
                let v: Value = serde_json::from_slice(&l)
                    .unwrap_or_else(|e| panic!("bad JSON {:?}: {e}", String::from_utf8_lossy(&l)));
                if is_push(&v) {
                    self.record(&v);
                }
                Got::Frame(v)
            }
            Read::Eof => Got::Eof,
            Read::Timeout => Got::Timeout,
        }
    }

    fn record(&mut self, v: &Value) {
        let (Some(seq), Some(mid), Some(text)) =
            (v["seq"].as_i64(), v["mid"].as_i64(), v["msg"].as_str())
        else {
            panic!("push without integer seq, mid or string msg: {v}");
        };
        let mut l = lock(&self.ledger);
        if seq <= self.session_seq {
            let p = format!(
                "user {}: seq {seq} pushed after seq {} in the same session",
                self.user, self.session_seq
            );
            l.problem(p);
        }
        self.session_seq = self.session_seq.max(seq);
        l.push(self.user, seq, mid, text);
    }

    /// The next frame that is not a push or a notice (PRESENCE, ROSTER).
    async fn reply(&mut self, what: &str) -> Value {
        let deadline = tokio::time::Instant::now() + REPLY_WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Got::Frame(v) if is_push(&v) || matches!(v["msgid"].as_i64(), Some(20 | 23)) => {}
                Got::Frame(v) => return v,
                Got::Eof => panic!("{what}: the server closed user {}'s connection", self.user),
                Got::Timeout => panic!("{what}: no reply for user {} in {REPLY_WAIT:?}", self.user),
            }
        }
    }

    /// Confirms everything up to `seq` (no reply).
    async fn delivered(&mut self, seq: i64) -> bool {
        self.client
            .try_send_raw(&frame(&json!({"msgid": 16, "seq": seq})))
            .await
    }
}

// ---------------------------------------------------------------------------
// Senders

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    User(i64),
    Group(i64),
}

#[derive(Debug)]
struct Msg {
    cmid: String,
    to: To,
    text: String,
    /// The mid of its ACK, once one came.
    mid: Option<i64>,
}

impl Msg {
    fn request(&self) -> Vec<u8> {
        frame(&match self.to {
            To::User(u) => json!({"msgid": 6, "toid": u, "msg": self.text,
                "cmid": self.cmid, "reqid": self.cmid}),
            To::Group(g) => json!({"msgid": 10, "groupid": g, "msg": self.text,
                "cmid": self.cmid, "reqid": self.cmid}),
        })
    }
}

/// One sender's messages, kept across server runs.
struct Sender {
    idx: usize,
    id: i64,
    in_group: bool,
    msgs: Vec<Msg>,
}

impl Sender {
    /// A new message (not sent yet); returns its index.
    fn fresh(&mut self, run: usize, group: i64, receivers: &[i64]) -> usize {
        let k = self.msgs.len();
        let to = if self.in_group && k % 3 == 2 {
            To::Group(group)
        } else {
            To::User(receivers[(self.idx + k) % receivers.len()])
        };
        // Unique text per message, of varying length.
        let text = format!("s{} m{k} run{run} {}", self.idx, "é".repeat(k % 9));
        self.msgs.push(Msg {
            cmid: format!("c{k}"),
            to,
            text,
            mid: None,
        });
        k
    }
}

/// Counts for the summary.
#[derive(Default)]
struct Counts {
    /// ACKs of this run (for the kill trigger).
    acks_this_run: AtomicUsize,
    /// Re-sends of messages an earlier run did not ACK.
    retried: AtomicUsize,
    /// ... of which the server had stored (ACKed with an older mid).
    retry_found: AtomicUsize,
    /// ... of which it had not (stored now).
    retry_fresh: AtomicUsize,
    /// Requests answered with errno 10 (retried later).
    busy: AtomicUsize,
    /// Requests in flight when a kill cut the connection.
    cut: AtomicUsize,
}

#[derive(Clone)]
enum Mode {
    /// Retries first, then fresh messages until the server dies; an ACK
    /// fires the trigger once it is armed.
    Load(Trigger),
    /// Only the retries; every one must be ACKed.
    Drain,
}

/// Pipelines a sender's unacknowledged messages (retries, with their old
/// `cmid`) and, in `Load` mode, fresh ones until the connection dies.
/// `boundary` is a mid this run stored before any retry: a retry ACKed with
/// a smaller mid was stored by an earlier run.
#[allow(clippy::too_many_arguments)]
async fn pump(
    mut conn: Conn,
    mut s: Sender,
    mode: Mode,
    run: usize,
    group: i64,
    receivers: Arc<Vec<i64>>,
    boundary: i64,
    counts: Arc<Counts>,
) -> (Sender, Conn) {
    let retries: HashSet<usize> = (0..s.msgs.len())
        .filter(|&i| s.msgs[i].mid.is_none())
        .collect();
    let mut queue: VecDeque<usize> = {
        let mut v: Vec<usize> = retries.iter().copied().collect();
        v.sort_unstable();
        v.into()
    };
    let mut busy_resends = 0;
    let mut inflight: HashMap<String, usize> = HashMap::new();
    let mut closed = false;
    let load = matches!(mode, Mode::Load(_));
    loop {
        while !closed && inflight.len() < WINDOW {
            let i = match queue.pop_front() {
                Some(i) => i,
                None if load => s.fresh(run, group, &receivers),
                None => break,
            };
            let m = &s.msgs[i];
            if retries.contains(&i) {
                counts.retried.fetch_add(1, Ordering::Relaxed);
            }
            inflight.insert(m.cmid.clone(), i);
            if !conn.client.try_send_raw(&m.request()).await {
                assert!(load, "sender {}: write failed", s.idx);
                closed = true;
            }
        }
        if inflight.is_empty() {
            break;
        }
        match conn.next(REPLY_WAIT).await {
            Got::Frame(v) => match v["msgid"].as_i64() {
                Some(12) => {
                    if let Mode::Load(t) = &mode {
                        t.fire();
                    }
                    let cmid = v["reqid"].as_str().unwrap_or_default();
                    let i = inflight
                        .remove(cmid)
                        .unwrap_or_else(|| panic!("sender {}: ACK for no request: {v}", s.idx));
                    let mid = v["mid"]
                        .as_i64()
                        .unwrap_or_else(|| panic!("chat ACK without mid: {v}"));
                    let m = &mut s.msgs[i];
                    assert!(m.mid.is_none(), "message ACKed twice: {v}");
                    m.mid = Some(mid);
                    lock(&conn.ledger).message(mid, &m.text, "ACK");
                    if retries.contains(&i) {
                        let c = if mid < boundary {
                            &counts.retry_found
                        } else {
                            &counts.retry_fresh
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    counts.acks_this_run.fetch_add(1, Ordering::Relaxed);
                }
                Some(11) => {
                    // Storage busy: legal, and the message is retried (with
                    // its cmid) like one cut off by the kill. Anything else
                    // (errno 5: the cmid names another message) is a bug.
                    assert_eq!(v["errno"], 10, "sender {}: unexpected ERROR {v}", s.idx);
                    let cmid = v["reqid"].as_str().unwrap_or_default();
                    let i = inflight
                        .remove(cmid)
                        .unwrap_or_else(|| panic!("sender {}: ERROR for no request: {v}", s.idx));
                    counts.busy.fetch_add(1, Ordering::Relaxed);
                    busy_resends += 1;
                    assert!(busy_resends < 1000, "sender {}: busy for good", s.idx);
                    queue.push_back(i);
                }
                _ => {} // pushes are in the ledger; notices are ignored
            },
            Got::Eof => {
                assert!(load, "sender {}: connection closed with no kill", s.idx);
                counts.cut.fetch_add(inflight.len(), Ordering::Relaxed);
                break;
            }
            Got::Timeout => panic!(
                "sender {}: no reply within {REPLY_WAIT:?} with {} requests in flight",
                s.idx,
                inflight.len()
            ),
        }
    }
    (s, conn)
}

/// An online recipient during the load: reads pushes until the kill, and
/// confirms them now and then (so some are confirmed, some are not).
async fn listen(mut conn: Conn) {
    let mut since = 0;
    loop {
        match conn.next(LISTEN_WAIT).await {
            Got::Frame(v) if is_push(&v) => {
                since += 1;
                if since == 8 {
                    since = 0;
                    let seq = conn.session_seq;
                    if !conn.delivered(seq).await {
                        return;
                    }
                }
            }
            Got::Frame(_) => {}
            Got::Eof => return,
            Got::Timeout => panic!("user {}: no EOF within {LISTEN_WAIT:?}", conn.user),
        }
    }
}

/// Sends one fresh message from `s` and waits for its ACK; returns the mid.
async fn probe(conn: &mut Conn, s: &mut Sender, run: usize, group: i64, rcv: &[i64]) -> i64 {
    let i = s.fresh(run, group, rcv);
    conn.client.send_raw(&s.msgs[i].request()).await;
    let v = conn.reply("probe").await;
    assert_eq!(v["msgid"], 12, "probe: expected ACK, got {v}");
    let mid = v["mid"].as_i64().expect("probe ACK without mid");
    s.msgs[i].mid = Some(mid);
    lock(&conn.ledger).message(mid, &s.msgs[i].text, "ACK");
    mid
}

// ---------------------------------------------------------------------------
// Reading back what is stored

/// A stored message as HISTORY shows it.
struct Stored {
    mid: i64,
    sender: i64,
    to: To,
    text: String,
}

/// Every message of a conversation, by HISTORY pages of 200.
async fn history(conn: &mut Conn, to: To) -> Vec<Stored> {
    let mut out = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut req = match to {
            To::User(u) => json!({"msgid": 17, "toid": u, "limit": 200}),
            To::Group(g) => json!({"msgid": 17, "groupid": g, "limit": 200}),
        };
        if let Some(b) = before {
            req["before"] = b.into();
        }
        conn.client.send(req).await;
        let v = conn.reply("HISTORY").await;
        assert_eq!(v["msgid"], 12, "HISTORY: expected ACK, got {v}");
        let msgs = v["messages"].as_array().expect("HISTORY without messages");
        for m in msgs {
            let mid = m["mid"].as_i64().expect("HISTORY entry without mid");
            let to = match m["msgid"].as_i64() {
                Some(6) => To::User(m["toid"].as_i64().expect("toid")),
                Some(10) => To::Group(m["groupid"].as_i64().expect("groupid")),
                _ => panic!("HISTORY entry of unknown kind: {m}"),
            };
            out.push(Stored {
                mid,
                sender: m["id"].as_i64().expect("HISTORY entry without id"),
                to,
                text: m["msg"].as_str().expect("HISTORY entry without msg").into(),
            });
            before = Some(before.map_or(mid, |b| b.min(mid)));
        }
        if v["more"] != true || msgs.is_empty() {
            return out;
        }
    }
}

/// Logs `user` in and reads its backlog until its ledger holds every mid of
/// `expected`, confirming as it goes; then a PING flushes what follows.
/// Returns false if the backlog stopped short (`idle` passed with nothing
/// new): the final checks then say what is missing.
async fn collect(
    addr: SocketAddr,
    user: i64,
    expected: &HashSet<i64>,
    ledger: &Shared,
    idle: Duration,
) -> bool {
    let has_all = |l: &Ledger| expected.iter().all(|&m| l.seq_of.contains_key(&(user, m)));
    let mut conn = Conn::login(addr, user, ledger).await;
    let mut since = 0;
    while !has_all(&lock(ledger)) {
        match conn.next(idle).await {
            Got::Frame(v) if is_push(&v) => {
                since += 1;
                if since == 64 {
                    since = 0;
                    assert!(conn.delivered(conn.session_seq).await, "DELIVERED failed");
                }
            }
            Got::Frame(_) => {}
            Got::Eof => panic!("user {user}: connection closed while reading the backlog"),
            Got::Timeout => return false,
        }
    }
    conn.client
        .send(json!({"msgid": 18, "reqid": "flush"}))
        .await;
    let v = conn.reply("PING").await;
    assert_eq!(v["msgid"], 19, "expected PONG, got {v}");
    if conn.session_seq > 0 {
        assert!(conn.delivered(conn.session_seq).await, "DELIVERED failed");
    }
    true
}

// ---------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_exactly_once() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("chat.db");
    let ledger: Shared = Arc::default();
    let counts = Arc::new(Counts::default());

    // Users and the group, on the first run.
    let mut srv = Server::start(dir.path(), &db, 0).await;
    let addr = srv.addr;
    let mut reg = Client::connect(addr).await;
    let sender_ids: Vec<i64> = {
        let mut v = Vec::new();
        for i in 0..SENDERS {
            v.push(reg.register(&format!("crash sender {i}"), PASSWORD).await);
        }
        v
    };
    let receivers: Vec<i64> = {
        let mut v = Vec::new();
        for i in 0..RECEIVERS {
            v.push(reg.register(&format!("crash receiver {i}"), PASSWORD).await);
        }
        v
    };
    let receivers = Arc::new(receivers);
    drop(reg);
    let group = {
        let mut owner = Conn::login(addr, sender_ids[0], &ledger).await;
        owner
            .client
            .send(json!({"msgid": 8, "groupname": "crash group", "groupdesc": "d"}))
            .await;
        let v = owner.reply("CREATE_GROUP").await;
        assert_eq!(v["msgid"], 12, "CREATE_GROUP: {v}");
        v["groupid"]
            .as_i64()
            .expect("CREATE_GROUP ACK without groupid")
    };
    let mut members: Vec<i64> = sender_ids[..GROUP_SENDERS].to_vec();
    members.extend(GROUP_RECEIVERS.iter().map(|&r| receivers[r]));
    for &m in &members[1..] {
        let mut c = Conn::login(addr, m, &ledger).await;
        c.client.send(json!({"msgid": 9, "groupid": group})).await;
        let v = c.reply("ADD_GROUP").await;
        assert_eq!(v["msgid"], 12, "ADD_GROUP of {m}: {v}");
    }
    let mut senders: Vec<Sender> = sender_ids
        .iter()
        .enumerate()
        .map(|(idx, &id)| Sender {
            idx,
            id,
            in_group: idx < GROUP_SENDERS,
            msgs: Vec::new(),
        })
        .collect();

    // Load, kill -9, restart: six times.
    let mut acked_at_kill = Vec::new();
    for (run, &load) in LOAD.iter().enumerate() {
        if run > 0 {
            srv = Server::start(dir.path(), &db, run).await;
        }
        let addr = srv.addr;
        let mut listeners = Vec::new();
        for &r in &receivers[..ONLINE] {
            let c = Conn::login(addr, r, &ledger).await;
            listeners.push(tokio::spawn(listen(c)));
        }
        let mut conns = Vec::new();
        for s in &senders {
            conns.push(Conn::login(addr, s.id, &ledger).await);
        }
        // A fresh message first: its mid tells a retry that found its
        // message stored (smaller mid) from one stored now.
        let boundary = probe(&mut conns[0], &mut senders[0], run, group, &receivers).await;
        counts.acks_this_run.store(0, Ordering::Relaxed);
        let trigger = srv.trigger();
        let mut pumps = Vec::new();
        for (s, c) in senders.drain(..).zip(conns) {
            pumps.push(tokio::spawn(pump(
                c,
                s,
                Mode::Load(trigger.clone()),
                run,
                group,
                receivers.clone(),
                boundary,
                counts.clone(),
            )));
        }
        let t0 = Instant::now();
        loop {
            let acks = counts.acks_this_run.load(Ordering::Relaxed);
            if acks >= MIN_ACKS && t0.elapsed() >= load {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "run {run}: only {acks} ACKs in 60 s"
            );
            if pumps.iter().any(|p| p.is_finished()) {
                break; // a sender failed: its join below tells why
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Odd runs: the next ACK any sender reads kills the server (should
        // none come, the kill comes from here), which catches an ACK that
        // overtook its commit. Even runs: the kill comes from here, at no
        // particular moment, which more often leaves messages committed but
        // not yet ACKed: their retries must get the stored mid.
        trigger.arm();
        if run % 2 == 1 {
            let armed = Instant::now();
            while trigger.is_armed() && armed.elapsed() < REPLY_WAIT {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        trigger.fire();
        srv.crash();
        for p in pumps {
            let (s, _dead) = tokio::time::timeout(REPLY_WAIT, p)
                .await
                .expect("sender did not stop after the kill")
                .expect("sender task panicked");
            senders.push(s);
        }
        for l in listeners {
            tokio::time::timeout(REPLY_WAIT, l)
                .await
                .expect("listener did not stop after the kill")
                .expect("listener task panicked");
        }
        acked_at_kill.push(counts.acks_this_run.load(Ordering::Relaxed));
    }

    // The last restart: retry what is left, then check everything.
    let srv = Server::start(dir.path(), &db, LOAD.len()).await;
    let addr = srv.addr;
    let unacked_before_final: usize = senders
        .iter()
        .map(|s| s.msgs.iter().filter(|m| m.mid.is_none()).count())
        .sum();
    let mut conns = Vec::new();
    for s in &senders {
        conns.push(Conn::login(addr, s.id, &ledger).await);
    }
    let run = LOAD.len();
    let boundary = probe(&mut conns[0], &mut senders[0], run, group, &receivers).await;
    let mut pumps = Vec::new();
    for (s, c) in senders.drain(..).zip(conns) {
        pumps.push(tokio::spawn(pump(
            c,
            s,
            Mode::Drain,
            run,
            group,
            receivers.clone(),
            boundary,
            counts.clone(),
        )));
    }
    let mut conns = Vec::new();
    for p in pumps {
        let (s, c) = p.await.expect("sender task panicked");
        senders.push(s);
        conns.push(c);
    }
    for s in &senders {
        assert!(
            s.msgs.iter().all(|m| m.mid.is_some()),
            "sender {}: a retry was not ACKed",
            s.idx
        );
    }

    // What is stored: each sender's conversation with each receiver, and
    // the group.
    let mut stored: Vec<Stored> = Vec::new();
    for (c, s) in conns.iter_mut().zip(&senders) {
        for &r in receivers.iter() {
            for m in history(c, To::User(r)).await {
                assert_eq!(m.sender, s.id, "a receiver sent a message: mid {}", m.mid);
                stored.push(m);
            }
        }
    }
    stored.extend(history(&mut conns[0], To::Group(group)).await);
    drop(conns);

    let mut problems: Vec<String> = Vec::new();
    // By (sender, text): what the test sent.
    let by_text: HashMap<(i64, &str), &Msg> = senders
        .iter()
        .flat_map(|s| s.msgs.iter().map(move |m| ((s.id, m.text.as_str()), m)))
        .collect();
    let mut stored_by_text: HashMap<(i64, &str), i64> = HashMap::new();
    let mut stored_mids: HashSet<i64> = HashSet::new();
    {
        let mut l = lock(&ledger);
        for m in &stored {
            l.message(m.mid, &m.text, "HISTORY");
            if !stored_mids.insert(m.mid) {
                problems.push(format!("mid {} listed twice by HISTORY", m.mid));
            }
            if let Some(first) = stored_by_text.insert((m.sender, &m.text), m.mid) {
                problems.push(format!(
                    "{:?} of sender {} stored twice: mids {first} and {}",
                    m.text, m.sender, m.mid
                ));
            }
            match by_text.get(&(m.sender, m.text.as_str())) {
                None => problems.push(format!("stored message never sent: mid {}", m.mid)),
                Some(s) if s.to != m.to => problems.push(format!(
                    "mid {} stored for {:?}, sent to {:?}",
                    m.mid, m.to, s.to
                )),
                Some(_) => {}
            }
        }
    }
    // Every ACK (all messages have one now) names the stored message.
    for s in &senders {
        for m in &s.msgs {
            let mid = m.mid.expect("checked above");
            match stored_by_text.get(&(s.id, m.text.as_str())) {
                None => problems.push(format!(
                    "ACKed but not stored: sender {} cmid {} mid {mid}",
                    s.idx, m.cmid
                )),
                Some(&st) if st != mid => problems.push(format!(
                    "sender {} cmid {}: ACKed as mid {mid}, stored as mid {st}",
                    s.idx, m.cmid
                )),
                Some(_) => {}
            }
        }
    }

    // Who must have what: each stored message, at each recipient.
    let mut expected: HashMap<i64, HashSet<i64>> = HashMap::new();
    for m in &stored {
        match m.to {
            To::User(u) => {
                expected.entry(u).or_default().insert(m.mid);
            }
            To::Group(_) => {
                for &u in members.iter().filter(|&&u| u != m.sender) {
                    expected.entry(u).or_default().insert(m.mid);
                }
            }
        }
    }
    let recipients: Vec<i64> = receivers
        .iter()
        .chain(&sender_ids[..GROUP_SENDERS])
        .copied()
        .collect();
    // Generous while all is well; once something is missing, the rest
    // need not wait long for what will not come.
    let mut idle = REPLY_WAIT;
    for &u in &recipients {
        let want = expected.entry(u).or_default();
        if !lock(&ledger).problems.is_empty() {
            idle = Duration::from_secs(2);
        }
        if !collect(addr, u, want, &ledger, idle).await {
            idle = Duration::from_secs(2);
        }
    }

    // Each inbox: seqs 1..n, one mid each, exactly the stored messages.
    let l = lock(&ledger);
    let mut delivered = 0;
    for &u in &recipients {
        let inbox = l.inbox.get(&u).cloned().unwrap_or_default();
        let n = inbox.len() as i64;
        delivered += inbox.len();
        if let Some((&last, _)) = inbox.last_key_value() {
            if inbox.keys().next() != Some(&1) || last != n {
                let seqs: Vec<i64> = inbox.keys().copied().collect();
                let gaps: Vec<i64> = (1..=last).filter(|s| !inbox.contains_key(s)).collect();
                problems.push(format!(
                    "user {u}: {n} seqs up to {last}, missing {:?} (of {} seqs)",
                    &gaps[..gaps.len().min(20)],
                    seqs.len()
                ));
            }
        }
        let got: HashSet<i64> = inbox.values().copied().collect();
        if got.len() != inbox.len() {
            problems.push(format!("user {u}: a mid under two seqs"));
        }
        let want = &expected[&u];
        let extra: Vec<&i64> = got.difference(want).collect();
        let missing: Vec<&i64> = want.difference(&got).collect();
        if !extra.is_empty() || !missing.is_empty() {
            problems.push(format!(
                "user {u}: delivered but not stored {extra:?}, stored but not delivered {missing:?}"
            ));
        }
    }
    problems.extend(l.problems.iter().cloned());

    let sent: usize = senders.iter().map(|s| s.msgs.len()).sum();
    if stored.len() != sent {
        problems.push(format!(
            "{sent} messages sent (all ACKed in the end), {} stored",
            stored.len()
        ));
    }
    println!(
        "crash: {} kills; sent {sent}, ACKs per run before its kill {:?}, in flight at the kills {}, \
         retried {} ({} found stored, {} stored fresh; {} unacked before the last restart), \
         busy {}, stored {}, delivered {} (pushes read {}), {:.1} s",
        LOAD.len(),
        acked_at_kill,
        counts.cut.load(Ordering::Relaxed),
        counts.retried.load(Ordering::Relaxed),
        counts.retry_found.load(Ordering::Relaxed),
        counts.retry_fresh.load(Ordering::Relaxed),
        unacked_before_final,
        counts.busy.load(Ordering::Relaxed),
        stored.len(),
        delivered,
        l.pushes,
        started.elapsed().as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "{} problems, the first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(30)]
    );
    drop(l);
    drop(srv);
}
