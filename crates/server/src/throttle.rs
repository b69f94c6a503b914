//! Per-key limits kept in memory, so that one address or one account cannot
//! cost everyone else: token buckets (registrations per address), failure
//! throttles with growing delays (failed logins per account and per
//! address), and a per-address connection count.
//!
//! Every map is bounded: past its key budget, entries that carry no state
//! worth keeping (full buckets, lapsed failures) are dropped, and if that is
//! not enough the map starts over. Forgetting errs on the side of letting a
//! client in; the global caps still hold.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys any one map holds at most.
const MAX_KEYS: usize = 100_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A token bucket per key: `burst` at once, then `per_sec` a second. Sharded,
/// since the fan-out limiter sits on every message's path.
pub struct RateLimiter<K> {
    per_sec: f64,
    burst: f64,
    shards: Box<[Mutex<Buckets<K>>]>,
}

/// One shard: tokens and when they were last refilled, per key.
type Buckets<K> = HashMap<K, (f64, Instant)>;

/// Shards of a [`RateLimiter`].
const SHARDS: usize = 16;

impl<K: Hash + Eq + Copy> RateLimiter<K> {
    /// A limiter; `per_sec <= 0` lets everything through.
    pub fn new(per_sec: f64, burst: u32) -> Self {
        RateLimiter {
            per_sec,
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes one token for `key`; false when its bucket is empty.
    pub fn take(&self, key: K) -> bool {
        self.update(key, |tokens| {
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                true
            } else {
                false
            }
        })
        .unwrap_or(true)
    }

    /// Whether `key` has credit left (without taking any).
    pub fn has_credit(&self, key: K) -> bool {
        self.update(key, |tokens| *tokens > 0.0).unwrap_or(true)
    }

    /// Takes `n` tokens for `key`, into debt if need be: for costs known
    /// only after the work (a message's recipients), refused next time.
    pub fn charge(&self, key: K, n: f64) {
        self.update(key, |tokens| *tokens -= n);
    }

    /// Refills `key`'s bucket and applies `f`; `None` when unlimited.
    fn update<T>(&self, key: K, f: impl FnOnce(&mut f64) -> T) -> Option<T> {
        if self.per_sec <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let mut map = lock(&self.shards[h.finish() as usize % SHARDS]);
        if map.len() >= MAX_KEYS / SHARDS && !map.contains_key(&key) {
            let (rate, burst) = (self.per_sec, self.burst);
            map.retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * rate < burst);
            if map.len() >= MAX_KEYS / SHARDS {
                map.clear();
            }
        }
        let (tokens, at) = map.entry(key).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        Some(f(tokens))
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Instant,
}

/// Growing delays after repeated failures for a key: the first `free` come
/// at no cost, each one after blocks the key for `base`, doubling up to
/// `max`. A success, or `forget` without failures, clears the record.
pub struct FailureThrottle<K> {
    free: u32,
    base: Duration,
    max: Duration,
    forget: Duration,
    map: Mutex<HashMap<K, Failures>>,
}

impl<K: Hash + Eq + Copy> FailureThrottle<K> {
    /// A throttle; `free == u32::MAX` never blocks.
    pub fn new(free: u32, base: Duration, max: Duration, forget: Duration) -> Self {
        FailureThrottle {
            free,
            base,
            max,
            forget,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` while `key` is blocked.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        let now = Instant::now();
        match lock(&self.map).get(&key) {
            Some(f) if f.blocked_until > now => Err(f.blocked_until - now),
            _ => Ok(()),
        }
    }

    /// Records a failure for `key`.
    pub fn failed(&self, key: K) {
        let now = Instant::now();
        let mut map = lock(&self.map);
        if map.len() >= MAX_KEYS && !map.contains_key(&key) {
            let forget = self.forget;
            map.retain(|_, f| now.duration_since(f.last) < forget || f.blocked_until > now);
            if map.len() >= MAX_KEYS {
                map.clear();
            }
        }
        let f = map.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: now,
        });
        if now.duration_since(f.last) >= self.forget {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count > self.free {
            let doublings = (f.count - self.free - 1).min(30);
            let delay = self.base.saturating_mul(1 << doublings).min(self.max);
            f.blocked_until = now + delay;
        }
    }

    /// Clears `key`'s record.
    pub fn succeeded(&self, key: K) {
        lock(&self.map).remove(&key);
    }
}

/// Open connections per address, capped.
pub struct AddrConns {
    max: usize,
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One counted connection; dropping it gives the slot back.
pub struct AddrPermit {
    ip: IpAddr,
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl AddrConns {
    /// At most `max` connections per address (0: no cap).
    pub fn new(max: usize) -> Self {
        AddrConns {
            max,
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for `ip`, or `None` when it holds `max` already.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<AddrPermit> {
        let mut map = lock(&self.map);
        let n = map.entry(ip).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddrPermit {
            ip,
            map: self.map.clone(),
        })
    }
}

impl Drop for AddrPermit {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Logs an event at most once a second, with how many it left out: a flood
/// of refusals must not become a flood of log lines.
#[derive(Default)]
pub struct LogEvery {
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogEvery {
    /// `Some(suppressed since the last line)` when this one should be logged.
    pub fn tick(&self) -> Option<u64> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        match st.0 {
            Some(at) if now.duration_since(at) < Duration::from_secs(1) => {
                st.1 += 1;
                None
            }
            _ => {
                let skipped = st.1;
                *st = (Some(now), 0);
                Some(skipped)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_per_key() {
        let r = RateLimiter::new(0.001, 2);
        assert!(r.take(1) && r.take(1));
        assert!(!r.take(1));
        assert!(r.take(2));
        let off = RateLimiter::new(0.0, 1);
        assert!((0..10).all(|_| off.take(1)));
    }

    #[test]
    fn charges_run_into_debt() {
        let r = RateLimiter::new(0.001, 10);
        assert!(r.has_credit(1));
        r.charge(1, 25.0);
        assert!(!r.has_credit(1));
        assert!(r.has_credit(2));
    }

    #[test]
    fn failures_block_with_growing_delays_and_success_clears() {
        let t = FailureThrottle::new(
            2,
            Duration::from_secs(1),
            Duration::from_secs(3),
            Duration::from_secs(60),
        );
        t.failed(7);
        t.failed(7);
        assert!(t.check(7).is_ok(), "the first failures are free");
        t.failed(7);
        let w1 = t.check(7).unwrap_err();
        assert!(w1 <= Duration::from_secs(1) && w1 > Duration::from_millis(900));
        t.failed(7);
        assert!(t.check(7).unwrap_err() > Duration::from_millis(1900));
        t.failed(7);
        t.failed(7);
        assert!(t.check(7).unwrap_err() <= Duration::from_secs(3), "capped");
        assert!(t.check(8).is_ok());
        t.succeeded(7);
        assert!(t.check(7).is_ok());
    }

    #[test]
    fn address_slots_come_back() {
        let c = AddrConns::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = c.try_acquire(ip).unwrap();
        let _b = c.try_acquire(ip).unwrap();
        assert!(c.try_acquire(ip).is_none());
        assert!(c.try_acquire("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(c.try_acquire(ip).is_some());
    }

    #[test]
    fn log_lines_are_rate_limited() {
        let l = LogEvery::default();
        assert_eq!(l.tick(), Some(0));
        assert_eq!(l.tick(), None);
        assert_eq!(l.tick(), None);
    }
}
