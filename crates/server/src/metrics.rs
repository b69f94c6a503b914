//! The node's metrics, served at `GET /metrics` in the Prometheus text
//! format. One [`Metrics`] per node (no global registry), so two nodes in one
//! test process count apart.
//!
//! Counters and histograms are bumped where things happen; gauges that are
//! a queue's state (committer queue, argon2 queue) are read at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Open connections by transport (`tcp`, `ws`) and protocol level (`0`
/// before login).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// `tcp` or `ws`.
    pub transport: &'static str,
    /// `0` (not logged in), `1` or `2`.
    pub level: &'static str,
}

/// A login's outcome and how it was attempted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    /// `ok`, or the errno's name (`bad_credentials`, `rate_limited`, ...).
    pub result: &'static str,
    /// `password` or `token`.
    pub method: &'static str,
}

/// A request's msgid.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MsgidLabels {
    /// The msgid (unknown msgids count as their number too: they are ints).
    pub msgid: i64,
}

/// A failed request: its msgid (-1 when it could not be read) and errno.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrnoLabels {
    /// The msgid.
    pub msgid: i64,
    /// The errno.
    pub errno: i64,
}

/// What kind of thing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// For messages `direct` or `group`; for pushes `chat`, `presence`,
    /// `roster` or `kicked`.
    pub kind: &'static str,
}

/// Kinds of push, in [`Metrics::pushed`]'s order.
pub const PUSH_KINDS: [&str; 5] = ["chat", "presence", "roster", "kicked", "redeliver"];

/// The msgids clients send: their series exist from the start and count
/// without a map lookup (see [`Metrics::request`]).
const REQUEST_MSGIDS: [i64; 15] = {
    use chat_protocol::msgid::*;
    [
        LOGIN,
        LOGINOUT,
        REG,
        ONE_CHAT,
        ADD_FRIEND,
        CREATE_GROUP,
        ADD_GROUP,
        GROUP_CHAT,
        DEL_FRIEND,
        QUIT_GROUP,
        DISBAND_GROUP,
        DELIVERED,
        HISTORY,
        PING,
        FIND_USER,
    ]
};

/// Every metric of a node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The hot-path series, resolved once: per push kind (in
    /// [`PUSH_KINDS`] order), per message kind (direct, group), and per
    /// known msgid. Each is a handle on its family's series.
    pushed: [Counter; PUSH_KINDS.len()],
    stored: [Counter; 2],
    requested: Vec<Option<Counter>>,
    /// Open connections.
    pub connections: Family<ConnLabels, Gauge>,
    /// Logins by result.
    pub logins: Family<LoginLabels, Counter>,
    /// Requests by msgid.
    pub requests: Family<MsgidLabels, Counter>,
    /// Requests answered with an error, by msgid and errno.
    pub request_errors: Family<ErrnoLabels, Counter>,
    /// Messages stored (once per message, whatever its fan-out).
    pub messages_stored: Family<KindLabels, Counter>,
    /// Frames pushed to sessions on this node (queued for their writers).
    pub pushes: Family<KindLabels, Counter>,
    /// Writes per group commit.
    pub commit_batch: Histogram,
    /// How long one group commit took (until committed; see
    /// `commit_flush_seconds` for the wait for the disk after it).
    pub commit_seconds: Histogram,
    /// How long a committed batch then waited until it was on disk.
    pub commit_flush_seconds: Histogram,
    /// Writes waiting for the committer (read at scrape time).
    pub commit_queue: Gauge,
    /// Sessions dropped because their outbound queue was full.
    pub slow_consumer_drops: Counter,
    /// Events published to the bus for other nodes.
    pub bus_publishes: Counter,
    /// Events the bus failed to publish (their recipients resync).
    pub bus_publish_failures: Counter,
    /// Reconnections of the bus subscriber.
    pub bus_reconnects: Counter,
    /// Pages of undelivered messages read from storage (login replays and
    /// resyncs).
    pub backlog_pages: Counter,
    /// Requests that failed because storage was unavailable.
    pub store_errors: Counter,
    /// Password hashes waiting for a hashing slot (read at scrape time).
    pub argon2_queue: Gauge,
    /// Password hashes running.
    pub argon2_running: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, registered under the `chat_` prefix.
    pub fn new() -> Self {
        let mut root = Registry::with_prefix("chat");
        let m = Metrics {
            registry: Registry::default(),
            pushed: Default::default(),
            stored: Default::default(),
            requested: Vec::new(),
            connections: Family::default(),
            logins: Family::default(),
            requests: Family::default(),
            request_errors: Family::default(),
            messages_stored: Family::default(),
            pushes: Family::default(),
            // 1 to 4096 writes.
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 50 µs to about 3.3 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            commit_flush_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            commit_queue: Gauge::default(),
            slow_consumer_drops: Counter::default(),
            bus_publishes: Counter::default(),
            bus_publish_failures: Counter::default(),
            bus_reconnects: Counter::default(),
            backlog_pages: Counter::default(),
            store_errors: Counter::default(),
            argon2_queue: Gauge::default(),
            argon2_running: Gauge::default(),
        };
        let r = &mut root;
        r.register(
            "connections",
            "Open connections by transport and protocol level (0: not logged in)",
            m.connections.clone(),
        );
        r.register(
            "logins",
            "Login attempts by result and method",
            m.logins.clone(),
        );
        r.register("requests", "Requests by msgid", m.requests.clone());
        r.register(
            "request_errors",
            "Requests answered with an ERROR, by msgid (-1: unreadable) and errno",
            m.request_errors.clone(),
        );
        r.register(
            "messages_stored",
            "Chat messages stored, once each whatever their fan-out",
            m.messages_stored.clone(),
        );
        r.register(
            "pushes",
            "Frames pushed to sessions on this node, by kind",
            m.pushes.clone(),
        );
        r.register(
            "commit_batch_writes",
            "Writes per group commit",
            m.commit_batch.clone(),
        );
        r.register_with_unit(
            "commit_duration",
            "Group commit latency until committed (with SQLite, before its WAL is flushed)",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        r.register_with_unit(
            "commit_flush_duration",
            "Wait from a group commit until it is on disk (SQLite's WAL fdatasync; 0 where the commit includes it)",
            Unit::Seconds,
            m.commit_flush_seconds.clone(),
        );
        r.register(
            "commit_queue_depth",
            "Writes waiting for the committer",
            m.commit_queue.clone(),
        );
        r.register(
            "slow_consumer_drops",
            "Sessions dropped because their outbound queue was full",
            m.slow_consumer_drops.clone(),
        );
        r.register(
            "bus_publishes",
            "Events published to the bus for other nodes",
            m.bus_publishes.clone(),
        );
        r.register(
            "bus_publish_failures",
            "Events the bus could not publish (their recipients resync from storage)",
            m.bus_publish_failures.clone(),
        );
        r.register(
            "bus_reconnects",
            "Reconnections of the bus subscriber",
            m.bus_reconnects.clone(),
        );
        r.register(
            "backlog_pages",
            "Pages of undelivered messages read from storage (login replays, resyncs)",
            m.backlog_pages.clone(),
        );
        r.register(
            "store_errors",
            "Requests that failed because storage was unavailable (errno 10)",
            m.store_errors.clone(),
        );
        r.register(
            "argon2_queue_depth",
            "Password hashes waiting for a hashing slot",
            m.argon2_queue.clone(),
        );
        r.register(
            "argon2_running",
            "Password hashes running",
            m.argon2_running.clone(),
        );
        // Series that exist from the start (at 0), so dashboards and
        // alerts see them before the first event.
        for transport in ["tcp", "ws"] {
            for level in 0..=2 {
                m.connections_at(transport, level);
            }
        }
        let pushed = PUSH_KINDS.map(|kind| m.pushes.get_or_create(&KindLabels { kind }).clone());
        let stored = ["direct", "group"].map(|kind| {
            m.messages_stored
                .get_or_create(&KindLabels { kind })
                .clone()
        });
        let mut requested = vec![None; 32];
        for msgid in REQUEST_MSGIDS {
            requested[msgid as usize] =
                Some(m.requests.get_or_create(&MsgidLabels { msgid }).clone());
        }
        Metrics {
            registry: root,
            pushed,
            stored,
            requested,
            ..m
        }
    }

    /// Counts a request: the protocol's msgids through their handle, others
    /// (junk) through the family.
    pub fn request(&self, msgid: i64) {
        match usize::try_from(msgid)
            .ok()
            .and_then(|i| self.requested.get(i)?.as_ref())
        {
            Some(c) => c.inc(),
            None => self.requests.get_or_create(&MsgidLabels { msgid }).inc(),
        };
    }

    /// Counts a push of kind `PUSH_KINDS[kind]`.
    pub fn pushed(&self, kind: usize) {
        self.pushed[kind].inc();
    }

    /// Counts a stored message: one to one, or to a group.
    pub fn stored(&self, group: bool) {
        self.stored[usize::from(group)].inc();
    }

    /// Counts a request answered with `e`.
    pub fn error(&self, msgid: Option<i64>, e: &crate::error::ServiceError) {
        let msgid = msgid.unwrap_or(-1);
        let errno = e.errno.code();
        self.request_errors
            .get_or_create(&ErrnoLabels { msgid, errno })
            .inc();
        if e.is_store_failure() {
            self.store_errors.inc();
        }
    }

    /// The gauge of connections on `transport` at `level`.
    pub fn connections_at(&self, transport: &'static str, level: u8) -> Gauge {
        let level = match level {
            0 => "0",
            1 => "1",
            _ => "2",
        };
        self.connections
            .get_or_create(&ConnLabels { transport, level })
            .clone()
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
