//! Encoding of every server-to-client frame. Each function returns the frame's
//! bytes with the trailing LF, ready for a connection's outbound queue.

use bytes::{BufMut, Bytes, BytesMut};
use chat_protocol::{msgid, time::format_utc, Errno};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::ServiceError;
use crate::outbox::Out;
use crate::store::{StoredMessage, Target, UserId};

fn finish(v: &Value) -> Bytes {
    let mut out = serde_json::to_vec(v).expect("a JSON value always serialises");
    out.push(b'\n');
    Bytes::from(out)
}

/// A failed request: LOGIN and REG failures come back in their own ack type,
/// everything else as ERROR with `re` naming the failed msgid.
pub fn failure(re: Option<i64>, reqid: Option<&Value>, err: &ServiceError) -> Bytes {
    let mut m = Map::new();
    let kind = match re {
        Some(msgid::LOGIN) => msgid::LOGIN_ACK,
        Some(msgid::REG) => msgid::REG_ACK,
        _ => msgid::ERROR,
    };
    m.insert("msgid".into(), kind.into());
    m.insert("errno".into(), err.errno.code().into());
    m.insert("errmsg".into(), err.msg.as_ref().into());
    if let Some(r) = reqid {
        m.insert("reqid".into(), r.clone());
    }
    if kind == msgid::ERROR {
        if let Some(re) = re {
            m.insert("re".into(), re.into());
        }
    }
    finish(&Value::Object(m))
}

/// A level-2 ACK with optional result fields. Every chat message gets one, so
/// it is written directly rather than built as a JSON map first; the keys
/// still come out in the map's (alphabetical) order, as before.
pub fn ack(re: i64, reqid: Option<&Value>, extra: Vec<(&'static str, Value)>) -> Bytes {
    let (msgid, re, errno) = (Value::from(msgid::ACK), Value::from(re), Value::from(0));
    let mut fields: Vec<(&str, &Value)> = vec![("errno", &errno), ("msgid", &msgid), ("re", &re)];
    fields.extend(reqid.map(|r| ("reqid", r)));
    fields.extend(extra.iter().map(|(k, v)| (*k, v)));
    fields.sort_by_key(|&(k, _)| k);
    fields.dedup_by_key(|&mut (k, _)| k);
    let mut out = Vec::with_capacity(64);
    for (i, (k, v)) in fields.into_iter().enumerate() {
        // Keys are this crate's own identifiers: nothing to escape.
        debug_assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        out.push(if i == 0 { b'{' } else { b',' });
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":");
        serde_json::to_writer(&mut out, v).expect("a JSON value always serialises");
    }
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// REG_ACK on success (the connection adds `reqid`).
pub fn reg_ack(id: UserId) -> Value {
    json!({"msgid": msgid::REG_ACK, "errno": 0, "id": id})
}

/// PONG (the connection adds `reqid`).
pub fn pong() -> Value {
    json!({"msgid": msgid::PONG})
}

/// A reply frame of its own kind, with the request's `reqid` echoed.
pub fn with_reqid(mut v: Value, reqid: Option<&Value>) -> Bytes {
    if let (Some(r), Value::Object(m)) = (reqid, &mut v) {
        m.insert("reqid".into(), r.clone());
    }
    finish(&v)
}

/// PRESENCE for level-2 friends.
pub fn presence(id: UserId, online: bool) -> Bytes {
    finish(&json!({"msgid": msgid::PRESENCE, "id": id, "state": state(online)}))
}

/// KICKED, just before the server closes a replaced session.
pub fn kicked() -> Bytes {
    finish(
        &json!({"msgid": msgid::KICKED, "errmsg": "you logged in somewhere else; this session is closed"}),
    )
}

/// A connection over the server's cap.
pub fn server_full() -> Bytes {
    failure(
        None,
        None,
        &ServiceError::busy("server is full, retry later"),
    )
}

/// `"online"` or `"offline"`.
pub fn state(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

/// A pushed chat frame, field order as the classic server writes it.
#[derive(Serialize)]
struct ChatFrame<'a> {
    msgid: i64,
    id: UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    userid: Option<UserId>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    toid: Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groupid: Option<i64>,
    msg: &'a str,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mid: Option<i64>,
}

fn chat_frame(m: &StoredMessage, with_mid: bool) -> ChatFrame<'_> {
    let (toid, groupid, userid) = match m.target {
        Target::User(u) => (Some(u), None, None),
        Target::Group(g) => (None, Some(g), Some(m.sender)),
    };
    ChatFrame {
        msgid: m.target.kind(),
        id: m.sender,
        userid,
        name: &m.sender_name,
        toid,
        groupid,
        msg: &m.body,
        time: format_utc(m.time),
        mid: with_mid.then_some(m.mid),
    }
}

/// A stored message as a JSON object with `mid` (HISTORY entries).
pub fn history_entry(m: &StoredMessage) -> Value {
    serde_json::to_value(chat_frame(m, true)).expect("chat frames serialise")
}

/// One message encoded once for all its recipients: the level-1 frame is the
/// same for everyone; level 2 only appends the recipient's `seq`.
#[derive(Debug)]
pub struct PushBody {
    /// The stored message.
    pub message: std::sync::Arc<StoredMessage>,
    l1: Bytes,
    l2_prefix: Bytes,
}

impl PushBody {
    /// Encodes a stored message: serialised once, since the level-2 frame is
    /// the level-1 frame with `mid` appended (and later the seq).
    pub fn new(message: std::sync::Arc<StoredMessage>) -> Self {
        let mut l1 =
            serde_json::to_vec(&chat_frame(&message, false)).expect("chat frames serialise");
        let mut l2 = Vec::with_capacity(l1.len() + 24);
        l2.extend_from_slice(&l1[..l1.len() - 1]); // up to the closing brace
        l2.extend_from_slice(b",\"mid\":");
        l2.extend_from_slice(itoa(message.mid).as_bytes());
        l1.push(b'\n');
        PushBody {
            message,
            l1: Bytes::from(l1),
            l2_prefix: Bytes::from(l2),
        }
    }

    /// Bytes this encoding holds (both levels' shared parts).
    pub fn size(&self) -> usize {
        self.l1.len() + self.l2_prefix.len()
    }

    /// The classic frame, LF-terminated.
    pub fn level1(&self) -> Bytes {
        self.l1.clone()
    }

    /// The classic frame without its LF, as the level-1 login ack embeds it.
    pub fn level1_text(&self) -> &str {
        std::str::from_utf8(&self.l1[..self.l1.len() - 1]).expect("serde_json writes UTF-8")
    }

    /// The level-2 frame: classic fields plus `mid` and this recipient's `seq`.
    pub fn level2(&self, seq: i64) -> Bytes {
        let mut b = BytesMut::with_capacity(self.l2_prefix.len() + 32);
        b.put_slice(&self.l2_prefix);
        b.put_slice(&seq_tail(seq));
        b.freeze()
    }

    /// The level-2 frame as an [`Out`]: the body shared with every other
    /// recipient (no copy), and a few bytes of its own carrying `seq`.
    pub fn level2_out(&self, seq: i64) -> Out {
        Out {
            bytes: self.l2_prefix.clone(),
            tail: Some(seq_tail(seq)),
            l1_delivered: None,
            flushed: None,
        }
    }
}

fn seq_tail(seq: i64) -> Bytes {
    let mut b = BytesMut::with_capacity(28);
    b.put_slice(b",\"seq\":");
    b.put_slice(itoa(seq).as_bytes());
    b.put_slice(b"}\n");
    b.freeze()
}

/// An integer as decimal text, without the formatting machinery.
fn itoa(v: i64) -> String {
    let mut digits = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut s = String::with_capacity(21);
    if v < 0 {
        s.push('-');
    }
    s.extend(digits[i..].iter().map(|&d| char::from(d)));
    s
}

/// Encodes a finished JSON value (for login acks built by the auth module).
pub fn value(v: &Value) -> Bytes {
    finish(v)
}

/// errno 6 for frames that are not requests at all.
pub fn malformed(msg: &'static str) -> Bytes {
    failure(None, None, &ServiceError::new(Errno::Malformed, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn push_frames_keep_the_classic_shape() {
        let m = Arc::new(StoredMessage {
            mid: 9,
            sender: 1,
            sender_name: "li \"lei\"".into(),
            target: Target::Group(3),
            body: "你好".into(),
            time: 0,
        });
        let p = PushBody::new(m);
        assert_eq!(
            p.level1_text(),
            r#"{"msgid":10,"id":1,"userid":1,"name":"li \"lei\"","groupid":3,"msg":"你好","time":"1970-01-01 00:00:00"}"#
        );
        let l2: Value = serde_json::from_slice(&p.level2(42)).unwrap();
        assert_eq!(l2["mid"], 9);
        assert_eq!(l2["seq"], 42);
        assert_eq!(l2["groupid"], 3);
        let neg: Value = serde_json::from_slice(&p.level2(-7)).unwrap();
        assert_eq!(neg["seq"], -7);
    }

    #[test]
    fn integers_and_acks_encode_as_json() {
        for v in [0, 7, -1, 10, 1_234_567, i64::MAX, i64::MIN] {
            assert_eq!(itoa(v), v.to_string());
        }
        let reqid = Value::String("r\"1".into());
        let a = ack(6, Some(&reqid), vec![("mid", 42.into())]);
        assert_eq!(a.last(), Some(&b'\n'));
        assert_eq!(
            std::str::from_utf8(&a).unwrap(),
            "{\"errno\":0,\"mid\":42,\"msgid\":12,\"re\":6,\"reqid\":\"r\\\"1\"}\n"
        );
    }
}
