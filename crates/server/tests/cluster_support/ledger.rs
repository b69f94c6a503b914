//! What the agents of one test did, and the counts a fault test prints and
//! asserts on: sent, acknowledged, received, lost and duplicated messages,
//! pushes out of `seq` order, and delivery latency.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One message an agent sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Sender.
    pub from: i64,
    /// Who must receive it: the peer, or every other group member.
    pub recipients: Vec<i64>,
    /// When first sent.
    pub at: Instant,
}

/// Everything the agents of one test did, for counting at the end.
#[derive(Debug, Default)]
pub struct Ledger {
    /// By cmid (also the message text).
    pub sent: BTreeMap<String, Sent>,
    /// cmid -> mid from the ACK.
    pub acked: BTreeMap<String, i64>,
    /// When each cmid was acknowledged.
    pub acked_at: BTreeMap<String, Instant>,
    /// (recipient, mid) -> (text, times pushed).
    pub received: HashMap<(i64, i64), (String, u32)>,
    /// Per (recipient, mid), from the message's first send to its first push.
    pub latency: HashMap<(i64, i64), Duration>,
    /// Pushes whose seq skipped past the one the connection expected.
    pub jumped: u64,
    /// Pushes of a never-seen seq below the one the connection expected:
    /// late fills of an earlier gap.
    pub reordered: u64,
    /// The first few jumps, e.g. "u12: seq 211 after 208".
    pub jump_examples: Vec<String>,
    /// The first few reorders, e.g. "u12: seq 209 late, after 211".
    pub reorder_examples: Vec<String>,
    /// ACKs for one cmid that named different mids, and other protocol faults.
    pub faults: Vec<String>,
    /// ERROR errno 10 replies to chats.
    pub busy: u64,
    /// Sends of a cmid after its first (after errno 10 or a lost connection).
    pub resent: u64,
    /// Connections an agent saw end.
    pub disconnects: u64,
    /// Successful logins after the first.
    pub reconnects: u64,
    /// LOGIN_ACKs with errno 10.
    pub login_busy: u64,
}

/// The counts a fault test prints and asserts on. A group message is one
/// message and one delivery per other member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Distinct messages sent.
    pub sent: usize,
    /// Distinct messages acknowledged.
    pub acked: usize,
    /// Deliveries the acknowledged messages owe (message x recipient).
    pub deliveries: usize,
    /// Of those, how many arrived (after dedupe by mid).
    pub received: usize,
    /// Of those, how many never arrived.
    pub lost: usize,
    /// Pushes beyond the first of each delivery (before dedupe by mid).
    pub duplicated: usize,
    /// Pushes that match no acknowledged message for that recipient.
    pub unexpected: usize,
    /// Pushes that skipped ahead of the next seq on their connection.
    pub jumped: u64,
    /// Pushes that filled an earlier gap late.
    pub reordered: u64,
    /// From first send to first push, over all deliveries that arrived.
    pub latency: Latency,
}

/// Percentiles of the delivery latency (zero when nothing arrived).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

impl Latency {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Latency {
        let mut v: Vec<Duration> = samples.into_iter().collect();
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_unstable();
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Latency {
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

impl Ledger {
    /// Deliveries of acknowledged messages that have not (yet) arrived:
    /// (cmid, recipient, mid).
    pub fn missing(&self) -> Vec<(String, i64, i64)> {
        let mut out = Vec::new();
        for (cmid, mid) in &self.acked {
            for &r in &self.sent[cmid].recipients {
                if !self.received.contains_key(&(r, *mid)) {
                    out.push((cmid.clone(), r, *mid));
                }
            }
        }
        out
    }

    /// Counts, and checks that each received message is the one acked.
    pub fn counts(&self) -> Counts {
        let acked_mids: HashMap<i64, &String> = self.acked.iter().map(|(c, m)| (*m, c)).collect();
        let mut unexpected = 0;
        for ((to, mid), (text, _)) in &self.received {
            match acked_mids.get(mid) {
                Some(c) if *c == text && self.sent[*c].recipients.contains(to) => {}
                _ => unexpected += 1,
            }
        }
        let deliveries: usize = self
            .acked
            .keys()
            .map(|c| self.sent[c].recipients.len())
            .sum();
        let lost = self.missing().len();
        Counts {
            sent: self.sent.len(),
            acked: self.acked.len(),
            deliveries,
            received: deliveries - lost,
            lost,
            duplicated: self
                .received
                .values()
                .map(|(_, n)| (*n as usize).saturating_sub(1))
                .sum(),
            unexpected,
            jumped: self.jumped,
            reordered: self.reordered,
            latency: Latency::of(self.latency.values().copied()),
        }
    }
}

/// Shared handle on a test's ledger.
pub type SharedLedger = Arc<Mutex<Ledger>>;
