//! The server's side of the wire model: thin adapters from the server's own
//! types (service errors, stored messages, outbound frames) to the encoders
//! in `chat_protocol`, which own the bytes. Each function returns the frame's
//! bytes with the trailing LF, ready for a connection's outbound queue.

use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::{reply, ChatMessage, ChatPush, ChatTarget, Errno};
use serde_json::Value;

use crate::error::ServiceError;
use crate::outbox::Outgoing;
use crate::store::{StoredMessage, Target};

pub use chat_protocol::push::{kicked, kicked_because, presence};
pub use chat_protocol::reply::{pong, reg_ack, with_reqid};

/// A failed request: LOGIN and REG failures come back in their own ack type,
/// everything else as ERROR with `re` naming the failed msgid.
pub fn failure(re: Option<i64>, reqid: Option<&Value>, err: &ServiceError) -> Bytes {
    reply::failure(re, reqid, err.errno, &err.msg)
}

/// A level-2 ACK with optional result fields (see [`reply::ack`]).
pub fn ack(re: i64, reqid: Option<&Value>, extra: Vec<(&'static str, Value)>) -> Bytes {
    reply::ack(re, reqid, &extra)
}

/// A connection over the server's cap.
pub fn server_full() -> Bytes {
    reply::failure(
        None,
        None,
        Errno::Unavailable,
        "server is full, retry later",
    )
}

/// A stored message in the protocol's terms.
fn message(m: &StoredMessage) -> ChatMessage<'_> {
    ChatMessage {
        mid: m.mid,
        sender: m.sender,
        sender_name: &m.sender_name,
        target: match m.target {
            Target::User(u) => ChatTarget::User(u),
            Target::Group(g) => ChatTarget::Group(g),
        },
        body: &m.body,
        time: m.time,
    }
}

/// A stored message as a JSON object with `mid` (HISTORY entries).
pub fn history_entry(m: &StoredMessage) -> Value {
    message(m).history_entry()
}

/// One message encoded once for all its recipients (see [`ChatPush`]),
/// kept with the message it encodes.
#[derive(Debug)]
pub struct EncodedChat {
    /// The stored message.
    pub message: Arc<StoredMessage>,
    encoded: ChatPush,
}

impl EncodedChat {
    /// Encodes a stored message, once for every recipient and level.
    pub fn new(message: Arc<StoredMessage>) -> Self {
        let encoded = ChatPush::encode(&self::message(&message));
        EncodedChat { message, encoded }
    }

    /// Bytes this encoding holds (both levels' shared parts).
    pub fn size(&self) -> usize {
        self.encoded.size()
    }

    /// The classic frame, LF-terminated.
    pub fn level1(&self) -> Bytes {
        self.encoded.level1()
    }

    /// The classic frame without its LF, as the level-1 login ack embeds it.
    pub fn level1_text(&self) -> &str {
        self.encoded.level1_text()
    }

    /// The level-2 frame as an [`Outgoing`]: the body shared with every other
    /// recipient (no copy), and a few bytes of its own carrying `seq`.
    pub fn level2_out(&self, seq: i64) -> Outgoing {
        let (body, tail) = self.encoded.level2_parts(seq);
        Outgoing {
            bytes: body,
            tail: Some(tail),
            l1_delivered: None,
            flushed: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_bodies_encode_stored_messages() {
        let m = Arc::new(StoredMessage {
            mid: 9,
            sender: 1,
            sender_name: "li \"lei\"".into(),
            target: Target::Group(3),
            body: "你好".into(),
            time: 0,
        });
        let p = EncodedChat::new(m);
        assert_eq!(
            p.level1_text(),
            r#"{"msgid":10,"id":1,"userid":1,"name":"li \"lei\"","groupid":3,"msg":"你好","time":"1970-01-01 00:00:00"}"#
        );
        let out = p.level2_out(42);
        let whole = [&out.bytes[..], &out.tail.unwrap()[..]].concat();
        assert_eq!(whole, p.encoded.level2(42).to_vec());
        let entry = history_entry(&p.message);
        assert_eq!(
            (entry["mid"].as_i64(), entry["groupid"].as_i64()),
            (Some(9), Some(3))
        );
    }

    #[test]
    fn acks_keep_their_bytes() {
        let reqid = Value::String("r\"1".into());
        let a = ack(6, Some(&reqid), vec![("mid", 42.into())]);
        assert_eq!(
            std::str::from_utf8(&a).unwrap(),
            "{\"errno\":0,\"mid\":42,\"msgid\":12,\"re\":6,\"reqid\":\"r\\\"1\"}\n"
        );
    }
}
