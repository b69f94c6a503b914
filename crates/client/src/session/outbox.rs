//! Chat messages typed and not yet ACKed. Each gets a `cmid` when it is
//! typed and keeps it across resends, so a message sent again after a
//! reconnect is stored once: the server answers a `cmid` it already holds
//! with the first `mid`. Nothing leaves the outbox but an ACK or an ERROR.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use chat_protocol::{ChatTarget, Request};
use serde_json::{Map, Value};

/// One message waiting for its ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Outgoing {
    /// Where it goes.
    pub target: ChatTarget,
    /// The text, as typed.
    pub text: String,
    /// The client message id, the same on every send of this message.
    pub cmid: String,
}

/// The messages waiting for their ACK, in the order they were typed.
#[derive(Debug)]
pub(super) struct Outbox {
    base: String,
    next: u64,
    items: BTreeMap<u64, Outgoing>,
}

impl Outbox {
    /// An empty outbox whose cmids are unique to this process and moment,
    /// so they never repeat one used by an earlier run for another text.
    pub fn new() -> Outbox {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Outbox {
            base: format!("{nanos:x}.{:x}", std::process::id()),
            next: 1,
            items: BTreeMap::new(),
        }
    }

    /// Adds a message; returns its key.
    pub fn add(&mut self, target: ChatTarget, text: String) -> u64 {
        let key = self.next;
        self.next += 1;
        let cmid = format!("{}.{key}", self.base);
        self.items.insert(key, Outgoing { target, text, cmid });
        key
    }

    /// The request that sends message `key`, with its cmid.
    pub fn request(&self, key: u64) -> Option<Map<String, Value>> {
        let o = self.items.get(&key)?;
        let mut obj = Request::Chat {
            target: o.target,
            msg: &o.text,
        }
        .to_object(None);
        obj.insert("cmid".into(), o.cmid.clone().into());
        Some(obj)
    }

    /// Where message `key` goes.
    pub fn target(&self, key: u64) -> Option<ChatTarget> {
        self.items.get(&key).map(|o| o.target)
    }

    /// Removes message `key` (ACKed or refused).
    pub fn done(&mut self, key: u64) -> Option<Outgoing> {
        self.items.remove(&key)
    }

    /// The keys of every waiting message, oldest first.
    pub fn keys(&self) -> Vec<u64> {
        self.items.keys().copied().collect()
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_keeps_its_cmid_until_done() {
        let mut o = Outbox::new();
        let a = o.add(ChatTarget::User(2), "hi".into());
        let b = o.add(ChatTarget::Group(3), "all".into());
        let first = o.request(a).unwrap();
        assert_eq!(o.request(a).unwrap(), first, "a resend is the same frame");
        assert_eq!(first["msg"], "hi");
        assert_eq!(first["toid"], 2);
        let cmid = first["cmid"].as_str().unwrap();
        assert!(!cmid.is_empty() && cmid.len() <= chat_protocol::limits::MAX_CMID_BYTES);
        assert_ne!(o.request(b).unwrap()["cmid"], first["cmid"]);
        assert_eq!(o.keys(), vec![a, b]);
        assert_eq!(o.done(a).map(|m| m.text), Some("hi".into()));
        assert_eq!(o.keys(), vec![b]);
        assert_eq!(o.len(), 1);
    }
}
