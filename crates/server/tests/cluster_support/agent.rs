//! A level-2 chat client that sends with `cmid`, retries what was not
//! acknowledged, reconnects when told, confirms delivery, and records
//! everything in a shared [`Ledger`](super::Ledger).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::client::Client;
use super::ledger::{Sent, SharedLedger};
use chat_testkit::Recv;

/// Where an agent's messages go.
#[derive(Debug, Clone)]
pub enum Dest {
    /// One-to-one, to this user.
    User(i64),
    /// To this group, whose members (the sender among them) are listed.
    Group(i64, Vec<i64>),
}

/// What an agent does.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The agent's user.
    pub id: i64,
    /// Whom it chats with.
    pub dest: Dest,
    /// How many messages it sends.
    pub count: usize,
    /// Pause between sends.
    pub pace: Duration,
    /// Where it connects first.
    pub home: SocketAddr,
    /// Label for logs.
    pub label: String,
}

/// How a test steers its agents.
#[derive(Clone)]
pub struct AgentCtl {
    /// Where to reconnect after a lost connection; `None`: wait.
    pub reconnect_to: watch::Receiver<Option<SocketAddr>>,
    /// Ends the agent (after the test saw everything arrive).
    pub stop: CancellationToken,
    /// Once cancelled, the agent starts no new message (it still resends
    /// and receives): a test that runs for a time rather than a count.
    pub halt: CancellationToken,
    /// Where the agent records what it did.
    pub ledger: SharedLedger,
}

const SEND_WINDOW: usize = 4;
const RETRY_AFTER: Duration = Duration::from_millis(300);

struct Inflight {
    /// When to send again; `None` while waiting for the reply.
    retry_at: Option<Instant>,
    /// Times sent so far.
    sends: u32,
}

/// A level-2 client that keeps chatting through faults.
pub struct Agent {
    spec: AgentSpec,
    ctl: AgentCtl,
    conn: Option<Client>,
    token: Option<String>,
    next: usize,
    next_send: Instant,
    inflight: BTreeMap<String, Inflight>,
    /// Every seq received, on any connection.
    seqs: BTreeSet<i64>,
    /// seq -> the mid it carried, to catch one seq naming two messages.
    seq_mids: HashMap<i64, i64>,
    contiguous: i64,
    /// The seq the next push on this connection must carry.
    expect: i64,
    logins: u64,
}

/// Final state of an agent, for the test's assertions.
#[derive(Debug)]
pub struct AgentReport {
    /// The spec it ran.
    pub label: String,
    /// Messages it finished (acked).
    pub done: usize,
    /// Its highest contiguous seq.
    pub contiguous: i64,
}

impl Agent {
    /// An agent that connects to its home node and logs in (panics if that fails).
    pub async fn start(spec: AgentSpec, ctl: AgentCtl) -> Agent {
        let mut a = Agent {
            next_send: Instant::now(),
            spec,
            ctl,
            conn: None,
            token: None,
            next: 0,
            inflight: BTreeMap::new(),
            seqs: BTreeSet::new(),
            seq_mids: HashMap::new(),
            contiguous: 0,
            expect: 1,
            logins: 0,
        };
        let home = a.spec.home;
        assert!(
            a.connect(home).await,
            "{}: first login on {home} failed",
            a.spec.label
        );
        a
    }

    fn cmid(&self, i: usize) -> String {
        format!("{}#{i}", self.spec.label)
    }

    /// Connects and logs in (token first, password as fallback).
    async fn connect(&mut self, addr: SocketAddr) -> bool {
        let Ok(mut c) = Client::try_connect(addr).await else {
            return false;
        };
        let mut req = json!({"msgid": 1, "id": self.spec.id, "v": 2, "last_seq": self.contiguous});
        match &self.token {
            Some(t) => req["token"] = t.clone().into(),
            None => req["password"] = "pw".into(),
        }
        if !c.try_send(&req).await {
            return false;
        }
        let ack = loop {
            match c.read(Duration::from_secs(15)).await {
                Recv::Frame(v) if v["msgid"] == 2 => break v,
                Recv::Frame(v) => {
                    self.fault(format!("frame before LOGIN_ACK: {v}"));
                }
                Recv::Eof | Recv::Timeout => return false,
            }
        };
        match ack["errno"].as_i64() {
            Some(0) => {}
            Some(1) if self.token.is_some() => {
                // Used up (the connection died after it was spent): use the password.
                self.token = None;
                return false;
            }
            Some(10) => {
                self.ctl.ledger.lock().unwrap().login_busy += 1;
                return false;
            }
            _ => {
                self.fault(format!("LOGIN failed: {ack}"));
                return false;
            }
        }
        self.token = ack["token"].as_str().map(str::to_owned);
        // The login confirmed up to `contiguous`: the server replays from the next.
        self.expect = self.contiguous + 1;
        self.logins += 1;
        if self.logins > 1 {
            self.ctl.ledger.lock().unwrap().reconnects += 1;
        }
        self.conn = Some(c);
        // Whatever was unanswered goes again, with the same cmid.
        let now = Instant::now();
        for f in self.inflight.values_mut() {
            f.retry_at = Some(now);
        }
        true
    }

    fn fault(&self, what: String) {
        eprintln!("{}: {what}", self.spec.label);
        self.ctl
            .ledger
            .lock()
            .unwrap()
            .faults
            .push(format!("{}: {what}", self.spec.label));
    }

    async fn send_chat(&mut self, cmid: &str) {
        let req = match &self.spec.dest {
            Dest::User(to) => {
                json!({"msgid": 6, "toid": to, "msg": cmid, "cmid": cmid, "reqid": cmid})
            }
            Dest::Group(g, _) => {
                json!({"msgid": 10, "groupid": g, "msg": cmid, "cmid": cmid, "reqid": cmid})
            }
        };
        let ok = match &mut self.conn {
            Some(c) => c.try_send(&req).await,
            None => false,
        };
        if let Some(f) = self.inflight.get_mut(cmid) {
            f.retry_at = None;
            f.sends += 1;
            if f.sends > 1 {
                self.ctl.ledger.lock().unwrap().resent += 1;
            }
        }
        if !ok {
            self.lost_connection();
        }
    }

    fn lost_connection(&mut self) {
        if self.conn.take().is_some() {
            self.ctl.ledger.lock().unwrap().disconnects += 1;
        }
    }

    async fn on_frame(&mut self, v: Value) {
        match v["msgid"].as_i64() {
            Some(6) | Some(10) => {
                let (Some(mid), Some(seq), Some(text)) =
                    (v["mid"].as_i64(), v["seq"].as_i64(), v["msg"].as_str())
                else {
                    return self.fault(format!("push without mid/seq/msg: {v}"));
                };
                let arrived = Instant::now();
                {
                    let mut l = self.ctl.ledger.lock().unwrap();
                    let e = l
                        .received
                        .entry((self.spec.id, mid))
                        .or_insert_with(|| (text.to_owned(), 0));
                    e.1 += 1;
                    // The text is the cmid, so this works before the sender's ACK.
                    if e.1 == 1 {
                        if let Some(at) = l.sent.get(text).map(|s| s.at) {
                            l.latency.insert((self.spec.id, mid), arrived - at);
                        }
                    }
                }
                self.check_order(seq, mid);
                self.seqs.insert(seq);
                let before = self.contiguous;
                while self.seqs.contains(&(self.contiguous + 1)) {
                    self.contiguous += 1;
                }
                if self.contiguous > before {
                    let d = json!({"msgid": 16, "seq": self.contiguous});
                    let ok = match &mut self.conn {
                        Some(c) => c.try_send(&d).await,
                        None => true,
                    };
                    if !ok {
                        self.lost_connection();
                    }
                }
            }
            Some(12) => {
                let (Some(cmid), Some(mid)) = (v["reqid"].as_str(), v["mid"].as_i64()) else {
                    return self.fault(format!("unexpected ACK {v}"));
                };
                if self.inflight.remove(cmid).is_some() || self.cmid_known(cmid) {
                    let mut l = self.ctl.ledger.lock().unwrap();
                    match l.acked.get(cmid) {
                        Some(m) if *m != mid => {
                            let f = format!("{cmid} acked as mid {m} and again as {mid}");
                            l.faults.push(f);
                        }
                        Some(_) => {}
                        None => {
                            l.acked.insert(cmid.to_owned(), mid);
                            l.acked_at.insert(cmid.to_owned(), Instant::now());
                        }
                    }
                }
            }
            Some(11) => {
                let cmid = v["reqid"].as_str().map(str::to_owned);
                match (cmid, v["errno"].as_i64()) {
                    (Some(c), Some(10)) if self.inflight.contains_key(&c) => {
                        self.ctl.ledger.lock().unwrap().busy += 1;
                        if let Some(f) = self.inflight.get_mut(&c) {
                            f.retry_at = Some(Instant::now() + RETRY_AFTER);
                        }
                    }
                    _ => self.fault(format!("unexpected ERROR {v}")),
                }
            }
            Some(20) | Some(19) => {}
            Some(21) => self.fault(format!("KICKED: {v}")),
            _ => self.fault(format!("unexpected frame {v}")),
        }
    }

    /// Checks a push's seq against the one this connection expects next, and
    /// that a seq never names two messages. Call before recording `seq`.
    fn check_order(&mut self, seq: i64, mid: i64) {
        if let Some(m) = self.seq_mids.insert(seq, mid).filter(|m| *m != mid) {
            self.fault(format!("second mid for seq {seq}: {m}, then {mid}"));
        }
        let label = &self.spec.label;
        let last = self.expect - 1;
        if seq == self.expect {
            self.expect += 1;
        } else if seq > self.expect {
            self.expect = seq + 1;
            let mut l = self.ctl.ledger.lock().unwrap();
            l.jumped += 1;
            if l.jump_examples.len() < 10 {
                l.jump_examples
                    .push(format!("{label}: seq {seq} after {last}"));
            }
        } else if !self.seqs.contains(&seq) {
            let mut l = self.ctl.ledger.lock().unwrap();
            l.reordered += 1;
            if l.reorder_examples.len() < 10 {
                l.reorder_examples
                    .push(format!("{label}: seq {seq} late, after {last}"));
            }
        }
        // Otherwise a duplicate, counted by mid in `received`.
    }

    fn cmid_known(&self, cmid: &str) -> bool {
        self.ctl.ledger.lock().unwrap().sent.contains_key(cmid)
    }

    /// Runs until the test stops it; returns what it did.
    pub async fn run(mut self) -> AgentReport {
        let stop = self.ctl.stop.clone();
        while !stop.is_cancelled() {
            if self.conn.is_none() {
                let target = *self.ctl.reconnect_to.borrow();
                match target {
                    Some(addr) => {
                        if !self.connect(addr).await {
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            }
                        }
                    }
                    None => {
                        let mut rx = self.ctl.reconnect_to.clone();
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = rx.changed() => {}
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                }
                continue;
            }
            // Resend what is due.
            let now = Instant::now();
            let due: Vec<String> = self
                .inflight
                .iter()
                .filter(|(_, f)| f.retry_at.is_some_and(|t| t <= now))
                .map(|(c, _)| c.clone())
                .collect();
            for c in due {
                self.send_chat(&c).await;
            }
            if self.conn.is_none() {
                continue;
            }
            // A new message when its time has come and the window has room.
            if self.next < self.spec.count
                && !self.ctl.halt.is_cancelled()
                && self.inflight.len() < SEND_WINDOW
                && Instant::now() >= self.next_send
            {
                let cmid = self.cmid(self.next);
                self.next += 1;
                self.next_send = Instant::now() + self.spec.pace;
                self.ctl.ledger.lock().unwrap().sent.insert(
                    cmid.clone(),
                    Sent {
                        from: self.spec.id,
                        recipients: match &self.spec.dest {
                            Dest::User(u) => vec![*u],
                            Dest::Group(_, members) => members
                                .iter()
                                .copied()
                                .filter(|m| *m != self.spec.id)
                                .collect(),
                        },
                        at: Instant::now(),
                    },
                );
                self.inflight.insert(
                    cmid.clone(),
                    Inflight {
                        retry_at: None,
                        sends: 0,
                    },
                );
                self.send_chat(&cmid).await;
                continue;
            }
            let wait = Duration::from_millis(50);
            let r = {
                let c = self.conn.as_mut().expect("connected");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = c.read(wait) => r,
                }
            };
            match r {
                Recv::Frame(v) => self.on_frame(v).await,
                Recv::Eof => self.lost_connection(),
                Recv::Timeout => {}
            }
        }
        AgentReport {
            label: self.spec.label.clone(),
            done: self.next - self.inflight.len(),
            contiguous: self.contiguous,
        }
    }
}
