//! Helpers of the single-node integration tests. The test server and the
//! line client come from the shared test kit (`chat-testkit`); what is left
//! here reads level-1 login acks and this process's memory.

#![allow(dead_code)] // each test binary uses a different subset

pub use chat_testkit::*;
use serde_json::Value;

/// Parses a JSON-encoded string element of a level-1 login ack array.
pub fn decode_str(v: &Value) -> Value {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a JSON-encoded string, got {v}"));
    serde_json::from_str(s).unwrap_or_else(|e| panic!("element {s:?} is not JSON: {e}"))
}

/// The sorted key set of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// This process's resident memory in MiB (Linux), for tests that bound what
/// a misbehaving client can make the server hold.
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib / 1024.0
}
