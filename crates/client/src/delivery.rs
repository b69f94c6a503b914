//! Delivery bookkeeping for level 2: which pushed messages are new (a message
//! pushed again is dropped by its `mid`), and the highest contiguous `seq`
//! held, which the client confirms with DELIVERED and saves as `last_seq`.

use std::collections::{BTreeSet, HashSet, VecDeque};

/// How many recent mids are remembered to drop duplicates.
const MAX_SEEN: usize = 100_000;
/// How many out-of-order seqs are held while waiting for a gap to fill.
const MAX_AHEAD: usize = 100_000;

/// One user's delivery state, kept across logins within one run.
#[derive(Debug, Default)]
pub struct Delivery {
    last_seq: i64,
    confirmed: i64,
    first_of_session: bool,
    ahead: BTreeSet<i64>,
    seen: HashSet<i64>,
    order: VecDeque<i64>,
}

impl Delivery {
    /// State for a user whose saved `last_seq` is `last_seq`.
    pub fn new(last_seq: i64) -> Self {
        Delivery {
            last_seq,
            confirmed: last_seq,
            first_of_session: true,
            ..Default::default()
        }
    }

    /// Starts a new session whose LOGIN carried `last_seq` (which confirms
    /// everything up to it). Remembered mids stay, to drop re-pushes.
    pub fn start_session(&mut self, last_seq: i64) {
        self.last_seq = last_seq;
        self.confirmed = last_seq;
        self.first_of_session = true;
        self.ahead.clear();
    }

    /// Records a pushed message; false when it is a duplicate to drop.
    pub fn receive(&mut self, mid: Option<i64>, seq: Option<i64>) -> bool {
        if let Some(s) = seq.filter(|&s| s > 0) {
            self.track(s);
        }
        let Some(m) = mid else { return true };
        if !self.seen.insert(m) {
            return false;
        }
        self.order.push_back(m);
        if self.order.len() > MAX_SEEN {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn track(&mut self, s: i64) {
        if std::mem::take(&mut self.first_of_session) {
            // The server replays from its first unconfirmed seq, so the first
            // push of a session says where the confirmed prefix ends, even
            // when another device confirmed more than this one saved.
            self.last_seq = s - 1;
            self.confirmed = self.confirmed.min(self.last_seq);
        }
        if s == self.last_seq + 1 {
            self.last_seq = s;
            while self.ahead.remove(&(self.last_seq + 1)) {
                self.last_seq += 1;
            }
        } else if s > self.last_seq + 1 && self.ahead.len() < MAX_AHEAD {
            self.ahead.insert(s);
        }
    }

    /// The seq to confirm with DELIVERED, when there is something new.
    pub fn to_confirm(&self) -> Option<i64> {
        (self.last_seq > self.confirmed).then_some(self.last_seq)
    }

    /// Notes that `seq` was confirmed to the server.
    pub fn confirmed(&mut self, seq: i64) {
        self.confirmed = self.confirmed.max(seq);
    }

    /// The highest contiguous seq held.
    #[cfg(test)]
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// The highest seq confirmed to the server: what is safe to save.
    pub fn confirmed_seq(&self) -> i64 {
        self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_seqs_advance_and_get_confirmed() {
        let mut d = Delivery::new(0);
        assert_eq!(d.to_confirm(), None);
        assert!(d.receive(Some(10), Some(1)));
        assert!(d.receive(Some(11), Some(2)));
        assert_eq!(d.to_confirm(), Some(2));
        d.confirmed(2);
        assert_eq!(d.to_confirm(), None);
        assert_eq!(d.last_seq(), 2);
    }

    #[test]
    fn duplicates_are_dropped_by_mid() {
        let mut d = Delivery::new(0);
        assert!(d.receive(Some(10), Some(1)));
        assert!(!d.receive(Some(10), Some(1)));
        // A new session re-pushing the same message: still a duplicate.
        d.start_session(0);
        assert!(!d.receive(Some(10), Some(1)));
        assert!(d.receive(Some(12), Some(2)));
        assert_eq!(d.to_confirm(), Some(2));
    }

    #[test]
    fn gaps_hold_back_confirmation_until_filled() {
        let mut d = Delivery::new(0);
        assert!(d.receive(Some(1), Some(1)));
        assert!(d.receive(Some(3), Some(3)));
        assert_eq!(d.last_seq(), 1);
        assert!(d.receive(Some(2), Some(2)));
        assert_eq!(d.last_seq(), 3);
    }

    #[test]
    fn the_first_push_sets_the_base() {
        // Saved 5, but another device confirmed up to 9: replay starts at 10.
        let mut d = Delivery::new(5);
        assert!(d.receive(Some(100), Some(10)));
        assert_eq!(d.to_confirm(), Some(10));
        // A server that lost its data starts again at 1: follow it.
        let mut d = Delivery::new(50);
        assert!(d.receive(Some(1), Some(1)));
        assert_eq!(d.last_seq(), 1);
        assert_eq!(d.to_confirm(), Some(1));
    }

    #[test]
    fn frames_without_seq_or_mid_are_shown() {
        let mut d = Delivery::new(0);
        assert!(d.receive(None, None));
        assert!(d.receive(None, None));
        assert_eq!(d.to_confirm(), None);
    }
}
