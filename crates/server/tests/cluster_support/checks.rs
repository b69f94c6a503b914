//! The checks at the end of a fault test: waiting until everything
//! settled, and printing the counts.

use std::time::{Duration, Instant};

use super::ledger::{Counts, Ledger, SharedLedger};

/// Waits (bounded) until every agent sent everything and got every ACK, and
/// every acknowledged message reached its recipient. Returns whether it did.
pub async fn wait_settled(ledger: &SharedLedger, total: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        {
            let l = ledger.lock().unwrap();
            if l.sent.len() == total && l.acked.len() == total && l.missing().is_empty() {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the counts under a heading, and the first out-of-order pushes.
pub fn print_counts(test: &str, c: &Counts, l: &Ledger) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{test}: messages sent={} acknowledged={}; deliveries owed={} received={} lost={} duplicated={} (before dedupe by mid); \
         jumped={} reordered={}; latency p50={:.1}ms p99={:.1}ms max={:.1}ms; \
         unexpected={} errno10-replies={} resent={} login-errno10={} disconnects={} reconnects={}",
        c.sent,
        c.acked,
        c.deliveries,
        c.received,
        c.lost,
        c.duplicated,
        c.jumped,
        c.reordered,
        ms(c.latency.p50),
        ms(c.latency.p99),
        ms(c.latency.max),
        c.unexpected,
        l.busy,
        l.resent,
        l.login_busy,
        l.disconnects,
        l.reconnects
    );
    if !l.jump_examples.is_empty() {
        println!("{test}: first jumps: {}", l.jump_examples.join("; "));
    }
    if !l.reorder_examples.is_empty() {
        println!("{test}: first reorders: {}", l.reorder_examples.join("; "));
    }
}
