//! Traffic for fault tests: agents chatting through faults into one ledger,
//! and what it came to.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::agent::{Agent, AgentCtl, AgentReport, AgentSpec, Dest};
use super::checks::{print_counts, wait_settled};
use super::ledger::{Counts, Ledger, SharedLedger};

/// Users, agents and a ledger for a fault test.
pub struct Traffic {
    /// What the agents did.
    pub ledger: SharedLedger,
    stop: CancellationToken,
    halt: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<AgentReport>>,
    /// Messages the agents send in all.
    pub total: usize,
}

impl Traffic {
    /// Starts one agent per (user, partner, home, reconnect channel).
    pub async fn start(
        agents: Vec<(i64, Dest, SocketAddr, watch::Receiver<Option<SocketAddr>>)>,
        count: usize,
        pace: Duration,
    ) -> Traffic {
        let ledger: SharedLedger = Arc::new(Mutex::new(Ledger::default()));
        let stop = CancellationToken::new();
        let halt = CancellationToken::new();
        let mut handles = Vec::new();
        let n = agents.len();
        for (id, dest, home, rx) in agents {
            let spec = AgentSpec {
                id,
                dest,
                count,
                pace,
                home,
                label: format!("u{id}"),
            };
            let ctl = AgentCtl {
                reconnect_to: rx,
                stop: stop.clone(),
                halt: halt.clone(),
                ledger: ledger.clone(),
            };
            let agent = Agent::start(spec, ctl).await;
            handles.push(tokio::spawn(agent.run()));
        }
        Traffic {
            ledger,
            stop,
            halt,
            handles,
            total: n * count,
        }
    }

    /// Stops the agents from starting new messages; [`Traffic::finish`]
    /// then waits for those already sent. Returns how many that is.
    pub async fn halt(&mut self) -> usize {
        self.halt.cancel();
        // An agent between the check and recording its send finishes it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.total = self.ledger.lock().unwrap().sent.len();
        self.total
    }

    /// Waits for everything to be acknowledged and received (bounded), stops
    /// the agents, prints and returns the counts.
    pub async fn finish(self, test: &str, within: Duration) -> Outcome {
        let settled = wait_settled(&self.ledger, self.total, within).await;
        self.stop.cancel();
        for h in self.handles {
            tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .expect("agent did not stop")
                .expect("agent panicked");
        }
        let l = self.ledger.lock().unwrap();
        let c = l.counts();
        print_counts(test, &c, &l);
        if !settled {
            let missing = l.missing();
            eprintln!(
                "{test}: not settled within {within:?}: sent {} of {}, acked {}, {} acknowledged not received, e.g. {:?}",
                l.sent.len(),
                self.total,
                l.acked.len(),
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
        Outcome {
            counts: c,
            faults: l.faults.clone(),
            jump_examples: l.jump_examples.clone(),
            reorder_examples: l.reorder_examples.clone(),
            disconnects: l.disconnects,
            busy: l.busy,
        }
    }
}

/// What a fault test's traffic came to.
pub struct Outcome {
    /// The ledger's counts.
    pub counts: Counts,
    /// Protocol faults the agents saw.
    pub faults: Vec<String>,
    /// Examples of seq jumps.
    pub jump_examples: Vec<String>,
    /// Examples of late gap fills.
    pub reorder_examples: Vec<String>,
    /// Connections the agents lost.
    pub disconnects: u64,
    /// errno 10 replies.
    pub busy: u64,
}

impl Outcome {
    /// Everything sent was acknowledged and received exactly once after
    /// dedupe, and each connection saw its seqs one by one, in order.
    pub fn assert_nothing_lost(&self, total: usize) {
        let c = &self.counts;
        assert!(self.faults.is_empty(), "protocol faults: {:?}", self.faults);
        assert_eq!(c.sent, total, "every message was sent");
        assert_eq!(c.acked, c.sent, "every message was acknowledged in the end");
        assert_eq!(c.lost, 0, "acknowledged messages were lost");
        assert_eq!(c.received, c.deliveries);
        assert_eq!(c.unexpected, 0, "messages arrived that nobody acknowledged");
        assert_eq!(
            c.jumped, 0,
            "a client saw a gap in its seqs (a later message overtook an earlier one), e.g. {:?}",
            self.jump_examples
        );
        assert_eq!(
            c.reordered, 0,
            "a client got a seq below ones it already had (a gap filled late), e.g. {:?}",
            self.reorder_examples
        );
    }
}
