//! The load engine behind `direct` and `group`: logged-in connections, some
//! of which send (open loop at a fixed rate, or closed loop with a window of
//! unconfirmed messages), and all of which read. Readers time every message
//! by the stamp in its text, confirm deliveries at level 2 (DELIVERED, sent
//! per 32 messages or after 20 ms), and give window permits back.
//!
//! Nothing waits without a bound: writes have the I/O timeout, sending stops
//! at the deadline, and the drain stops at its own deadline.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_protocol::{msgid, scan, ChatTarget, Request};
use tokio::sync::{Mutex as AsyncMutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::{Conn, Reader, Writer};
use crate::context::Ctx;
use crate::progress::{Kind, Progress};
use crate::report::Hist;
use crate::stamp::{self, Stamp};

/// How a sender paces itself.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Closed loop: at most this many unconfirmed messages per sender.
    Window(usize),
    /// Open loop: this many messages per second per sender, evenly spaced,
    /// senders phase-shifted so the total is spread evenly too.
    Rate(f64),
}

/// What confirms a message and frees its window slot.
#[derive(Debug, Clone, Copy)]
pub enum Confirm {
    /// The level-2 ACK.
    Ack,
    /// Its arrival at this many recipients.
    Arrival(u32),
}

/// One sending connection.
pub struct SenderSpec {
    /// Index into [`Plan::conns`].
    pub conn: usize,
    /// Where its messages go.
    pub target: ChatTarget,
}

/// A load run, ready to go: every connection is logged in.
pub struct Plan {
    /// Logged-in connections.
    pub conns: Vec<Conn>,
    /// Which of them send, and to whom.
    pub senders: Vec<SenderSpec>,
    /// Deliveries each message should produce.
    pub fanout: u64,
    /// How messages are confirmed (window mode).
    pub confirm: Confirm,
    /// Pacing.
    pub mode: Mode,
    /// Message text size in bytes.
    pub size: usize,
    /// Whether messages carry a unique `cmid`.
    pub cmid: bool,
    /// Time before measuring starts.
    pub warmup: Duration,
    /// Measured sending time.
    pub duration: Duration,
    /// Longest wait for outstanding messages after sending stops.
    pub drain: Duration,
}

/// What a run measured.
#[derive(Default)]
pub struct Outcome {
    /// Messages written.
    pub sent: u64,
    /// Messages ACKed (level 2).
    pub acked: u64,
    /// Sends the server refused (ERROR for ONE_CHAT/GROUP_CHAT).
    pub refused: u64,
    /// Sends that got neither ACK nor ERROR by the end of the drain (level 2).
    pub unanswered: u64,
    /// Other errors: broken connections, unexpected ERRORs, KICKED, timeouts.
    pub errors: u64,
    /// Deliveries of this run's messages.
    pub delivered: u64,
    /// Deliveries that arrived inside the measured window.
    pub delivered_in_window: u64,
    /// Deliveries expected from what was confirmed (ACKed, or sent at level 1).
    pub expected: u64,
    /// Messages of earlier runs (replayed backlog), ignored.
    pub stale: u64,
    /// End-to-end latency of messages sent inside the measured window.
    pub latency: Hist,
    /// Length of the measured window.
    pub measured: Duration,
    /// How long the drain took.
    pub drain_time: Duration,
    /// First error, for the report.
    pub first_error: Option<String>,
}

impl Outcome {
    /// Expected deliveries that never came.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
}

/// One sender's counters and its window of unacknowledged messages.
struct SenderState {
    sent: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
    window: Semaphore,
    ring: Vec<AtomicU32>,
}

/// What every task of one load run shares: the plan's timing, the
/// senders' counters and the delivery tallies.
struct RunState {
    run: u64,
    start: Instant,
    level: u8,
    warm_ns: u64,
    end_ns: u64,
    io_timeout: Duration,
    confirm: Confirm,
    senders: Vec<SenderState>,
    delivered: Arc<AtomicU64>,
    in_window: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl RunState {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.note(what);
    }

    /// Remembers the first thing that went wrong, without counting it.
    fn note(&self, what: String) {
        self.first_error
            .lock()
            .expect("first error")
            .get_or_insert(what);
    }
}

/// Runs a plan to the end of its drain.
pub async fn run(ctx: &Ctx, plan: Plan, label: &str) -> Outcome {
    let window = match plan.mode {
        Mode::Window(w) => w.max(1),
        Mode::Rate(_) => 1,
    };
    let t0 = Instant::now() + Duration::from_millis(50);
    let warm_at = t0 + plan.warmup;
    let end_at = warm_at + plan.duration;
    let ns = |t: Instant| t.duration_since(ctx.start).as_nanos() as u64;
    let sh = Arc::new(RunState {
        run: ctx.run_id,
        start: ctx.start,
        level: ctx.level,
        warm_ns: ns(warm_at),
        end_ns: ns(end_at),
        io_timeout: ctx.timeout,
        confirm: plan.confirm,
        senders: plan
            .senders
            .iter()
            .map(|_| SenderState {
                sent: AtomicU64::new(0),
                acked: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                window: Semaphore::new(window),
                ring: (0..window).map(|_| AtomicU32::new(0)).collect(),
            })
            .collect(),
        delivered: Arc::new(AtomicU64::new(0)),
        in_window: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let stop = CancellationToken::new();
    let mut sender_of = vec![None; plan.conns.len()];
    for (s, spec) in plan.senders.iter().enumerate() {
        sender_of[spec.conn] = Some(s);
    }
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (i, conn) in plan.conns.into_iter().enumerate() {
        let wr = Arc::new(AsyncMutex::new(conn.wr));
        writers.push(wr.clone());
        readers.push(tokio::spawn(read_loop(
            sh.clone(),
            conn.rd,
            wr,
            sender_of[i],
            stop.clone(),
        )));
    }
    let nsenders = plan.senders.len().max(1);
    let mut sends = Vec::new();
    for (s, spec) in plan.senders.iter().enumerate() {
        let pace = match plan.mode {
            Mode::Window(_) => None,
            Mode::Rate(r) => {
                let period = Duration::from_secs_f64(1.0 / r.max(1e-3));
                Some((period, period.mul_f64(s as f64 / nsenders as f64)))
            }
        };
        sends.push(tokio::spawn(send_loop(
            sh.clone(),
            s,
            spec.target,
            writers[spec.conn].clone(),
            pace,
            (plan.size, plan.cmid),
            t0,
            end_at,
        )));
    }
    let bar = Progress::start(
        ctx,
        label,
        Kind::Timed(plan.warmup + plan.duration),
        sh.delivered.clone(),
    );
    for s in sends {
        if s.await.is_err() {
            sh.error("a sender task panicked".into());
        }
    }
    bar.finish();

    // Drain: wait for every answer and every expected delivery.
    let drain_start = Instant::now();
    let drain_end = drain_start + plan.drain;
    let expected = |sh: &RunState| -> (u64, bool) {
        let mut exp = 0;
        let mut answered = true;
        for st in &sh.senders {
            let sent = st.sent.load(Ordering::Acquire);
            let acked = st.acked.load(Ordering::Acquire);
            let refused = st.refused.load(Ordering::Acquire);
            if sh.level >= 2 {
                exp += acked * plan.fanout;
                answered &= acked + refused >= sent;
            } else {
                exp += sent.saturating_sub(refused) * plan.fanout;
            }
        }
        (exp, answered)
    };
    loop {
        let (exp, answered) = expected(&sh);
        if answered && sh.delivered.load(Ordering::Acquire) >= exp {
            break;
        }
        if Instant::now() >= drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_time = drain_start.elapsed();
    stop.cancel();
    let mut latency = Hist::new();
    for r in readers {
        match tokio::time::timeout(Duration::from_secs(5), r).await {
            Ok(Ok(h)) => latency.merge(&h),
            _ => sh.error("a reader did not stop".into()),
        }
    }
    for w in writers {
        if let Ok(mut w) = tokio::time::timeout(Duration::from_secs(1), w.lock()).await {
            let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
        }
    }
    let (exp, _) = expected(&sh);
    let mut out = Outcome {
        expected: exp,
        latency,
        measured: plan.duration,
        drain_time,
        delivered: sh.delivered.load(Ordering::Acquire),
        delivered_in_window: sh.in_window.load(Ordering::Acquire),
        stale: sh.stale.load(Ordering::Acquire),
        errors: sh.errors.load(Ordering::Acquire),
        first_error: sh.first_error.lock().expect("first error").take(),
        ..Outcome::default()
    };
    for st in &sh.senders {
        out.sent += st.sent.load(Ordering::Acquire);
        out.acked += st.acked.load(Ordering::Acquire);
        out.refused += st.refused.load(Ordering::Acquire);
    }
    if ctx.level >= 2 {
        out.unanswered = out.sent.saturating_sub(out.acked + out.refused);
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    sh: Arc<RunState>,
    s: usize,
    target: ChatTarget,
    wr: Arc<AsyncMutex<Writer>>,
    pace: Option<(Duration, Duration)>,
    (size, cmid): (usize, bool),
    t0: Instant,
    end_at: Instant,
) {
    let st = &sh.senders[s];
    let end = tokio::time::Instant::from_std(end_at);
    let mut k = 0u64;
    let mut buf = String::with_capacity(4096);
    let mut ticker = pace.map(|(period, offset)| {
        let mut iv = tokio::time::interval_at(tokio::time::Instant::from_std(t0 + offset), period);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        iv
    });
    tokio::time::sleep_until(tokio::time::Instant::from_std(t0)).await;
    loop {
        let n = match ticker.as_mut() {
            Some(iv) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => break,
                    _ = iv.tick() => 1,
                }
            }
            None => {
                let p = tokio::select! {
                    _ = tokio::time::sleep_until(end) => break,
                    p = st.window.acquire() => p,
                };
                let Ok(p) = p else { break };
                p.forget();
                let mut n = 1;
                while n < 256 {
                    match st.window.try_acquire() {
                        Ok(p) => {
                            p.forget();
                            n += 1;
                        }
                        Err(_) => break,
                    }
                }
                n
            }
        };
        if tokio::time::Instant::now() >= end {
            break;
        }
        buf.clear();
        let t_ns = sh.now_ns();
        for _ in 0..n {
            let stamp = Stamp {
                run: sh.run,
                sender: s as u32,
                k,
                t_ns,
            };
            stamp::write_chat(&mut buf, target, stamp, size);
            if cmid {
                stamp::add_cmid(&mut buf, sh.run, s, k);
            }
            k += 1;
        }
        st.sent.fetch_add(n as u64, Ordering::Release);
        let r = {
            let mut w = wr.lock().await;
            tokio::time::timeout(sh.io_timeout, w.write_frames(buf.as_bytes())).await
        };
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                sh.error(format!("send failed: {e}"));
                break;
            }
            Err(_) => {
                sh.error(format!("send blocked for {:?}", sh.io_timeout));
                break;
            }
        }
    }
}

async fn read_loop(
    sh: Arc<RunState>,
    mut rd: Reader,
    wr: Arc<AsyncMutex<Writer>>,
    me: Option<usize>,
    stop: CancellationToken,
) -> Hist {
    let mut hist = Hist::new();
    let mut max_seq = 0i64;
    let mut confirmed = 0i64;
    let mut flush_at: Option<tokio::time::Instant> = None;
    'outer: loop {
        let mut flush = false;
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = async { tokio::time::sleep_until(flush_at.expect("armed")).await }, if flush_at.is_some() => {
                flush = true;
            }
            r = rd.fill() => match r {
                Ok(true) => {}
                Ok(false) => {
                    if !stop.is_cancelled() {
                        sh.error("server closed a connection".into());
                    }
                    break;
                }
                Err(e) => {
                    if !stop.is_cancelled() {
                        sh.error(format!("read failed: {e}"));
                    }
                    break;
                }
            },
        }
        if !flush {
            let now_ns = sh.now_ns();
            loop {
                let f = match rd.next_buffered() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        sh.error(format!("{e:#}"));
                        break 'outer;
                    }
                };
                match scan::msgid(&f) {
                    Some(msgid::ONE_CHAT | msgid::GROUP_CHAT) => {
                        if sh.level >= 2 {
                            if let Some(seq) = scan::int_field(&f, "seq") {
                                max_seq = max_seq.max(seq);
                            }
                        }
                        on_push(&sh, &f, now_ns, &mut hist);
                    }
                    Some(msgid::ACK) => {
                        let re = scan::int_field(&f, "re");
                        if let (Some(msgid::ONE_CHAT | msgid::GROUP_CHAT), Some(s)) = (re, me) {
                            let st = &sh.senders[s];
                            st.acked.fetch_add(1, Ordering::Release);
                            if matches!(sh.confirm, Confirm::Ack) {
                                st.window.add_permits(1);
                            }
                        }
                    }
                    Some(msgid::ERROR) => {
                        let re = scan::int_field(&f, "re");
                        match (re, me) {
                            (Some(msgid::ONE_CHAT | msgid::GROUP_CHAT), Some(s)) => {
                                let st = &sh.senders[s];
                                st.refused.fetch_add(1, Ordering::Release);
                                st.window.add_permits(1);
                                sh.note(format!("send refused: {}", String::from_utf8_lossy(&f)));
                            }
                            _ => sh.error(format!("server error: {}", String::from_utf8_lossy(&f))),
                        }
                    }
                    Some(msgid::KICKED) => {
                        sh.error("session kicked by another login".into());
                        break 'outer;
                    }
                    _ => {}
                }
            }
        }
        if sh.level >= 2 && max_seq > confirmed {
            let due = flush || max_seq - confirmed >= 32;
            if due {
                let delivered = Request::Delivered { seq: max_seq }.encode(None);
                let r = {
                    let mut w = wr.lock().await;
                    tokio::time::timeout(sh.io_timeout, w.write_frames(&delivered)).await
                };
                if !matches!(r, Ok(Ok(()))) {
                    if !stop.is_cancelled() {
                        sh.error("DELIVERED could not be sent".into());
                    }
                    break;
                }
                confirmed = max_seq;
                flush_at = None;
            } else if flush_at.is_none() {
                flush_at = Some(tokio::time::Instant::now() + Duration::from_millis(20));
            }
        } else {
            flush_at = None;
        }
    }
    hist
}

fn on_push(sh: &RunState, f: &[u8], now_ns: u64, hist: &mut Hist) {
    let Some(stamp) = scan::str_field(f, "msg").and_then(stamp::parse_stamp) else {
        sh.stale.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if stamp.run != sh.run {
        sh.stale.fetch_add(1, Ordering::Relaxed);
        return;
    }
    sh.delivered.fetch_add(1, Ordering::Release);
    if stamp.t_ns >= sh.warm_ns && stamp.t_ns < sh.end_ns {
        hist.record_us(now_ns.saturating_sub(stamp.t_ns) / 1000);
    }
    if now_ns >= sh.warm_ns && now_ns < sh.end_ns {
        sh.in_window.fetch_add(1, Ordering::Relaxed);
    }
    if let Confirm::Arrival(needed) = sh.confirm {
        let Some(st) = sh.senders.get(stamp.sender as usize) else {
            return;
        };
        let slot = &st.ring[(stamp.k % st.ring.len() as u64) as usize];
        if slot.fetch_add(1, Ordering::AcqRel) + 1 >= needed {
            slot.store(0, Ordering::Release);
            st.window.add_permits(1);
        }
    }
}

/// Pacing and timing flags shared by `direct` and `group`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Open loop: messages per second (direct: in total, spread over the
    /// pairs; group: per sender).
    #[arg(long, conflicts_with = "max")]
    pub rate: Option<f64>,
    /// Closed loop, as fast as the window allows (the default without --rate).
    #[arg(long)]
    pub max: bool,
    /// Closed loop: unconfirmed messages per sender.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Message text size in bytes (the send stamp is padded to it).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Give every message a unique `cmid`, as the terminal and web clients
    /// do; the server then also keeps and checks it for retries.
    #[arg(long)]
    pub cmid: bool,
    /// Seconds of measured sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of sending before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Longest wait, in seconds, for outstanding messages after sending stops.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
}

impl LoadArgs {
    /// The report's headline figure: latency in an open loop (it delivers
    /// what is offered), else the scenario's `throughput` figure.
    pub fn headline(&self, throughput: &'static str) -> &'static str {
        if self.rate.is_some() {
            "p99_ms"
        } else {
            throughput
        }
    }

    /// Puts the pacing parameters into a report.
    pub fn describe(&self, r: &mut crate::report::Report) {
        match self.rate {
            Some(rate) => {
                r.set("mode", "rate");
                r.set("rate", rate);
            }
            None => {
                r.set("mode", "max");
                r.set("window", self.window);
            }
        }
        r.set("size", self.size);
        if self.cmid {
            r.set("cmid", true);
        }
        r.set("duration_s", self.duration);
        r.set("warmup_s", self.warmup);
    }

    /// A run of these pacing and timing settings over `conns`: `senders`
    /// send, each message makes `fanout` deliveries.
    pub fn plan(
        &self,
        conns: Vec<Conn>,
        senders: Vec<SenderSpec>,
        fanout: u64,
        confirm: Confirm,
        mode: Mode,
    ) -> Plan {
        let d = |s: f64| Duration::from_secs_f64(s.max(0.0));
        Plan {
            conns,
            senders,
            fanout,
            confirm,
            mode,
            size: self.size,
            cmid: self.cmid,
            warmup: d(self.warmup),
            duration: d(self.duration.max(0.01)),
            drain: d(self.drain),
        }
    }
}

/// Puts an outcome's figures into a report; `rate_key` names the
/// deliveries-per-second figure. `setup_errors` are errors before the run.
pub fn fill(r: &mut crate::report::Report, o: &Outcome, rate_key: &str, setup_errors: u64) {
    use crate::report::round3;
    let secs = o.measured.as_secs_f64().max(1e-9);
    r.set("sent", o.sent);
    r.set("acked", o.acked);
    r.set("delivered", o.delivered);
    r.set(rate_key, round3(o.delivered_in_window as f64 / secs));
    o.latency.fields("", &mut r.fields);
    r.set("expected", o.expected);
    r.set("lost", o.lost());
    r.set("refused", o.refused);
    r.set("unanswered", o.unanswered);
    r.set("stale", o.stale);
    r.set("drain_s", round3(o.drain_time.as_secs_f64()));
    r.set("errors", o.errors + o.refused + o.unanswered + setup_errors);
    if let Some(e) = &o.first_error {
        r.set("first_error", e.clone());
    }
}
