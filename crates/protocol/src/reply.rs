//! Replies: the frames the server sends in answer to a request (failures,
//! level-2 ACKs, REG_ACK, PONG and the login ack). Each function returns the
//! frame's bytes with the trailing LF, ready to write.
//!
//! Objects built as `serde_json` maps come out with their keys in
//! alphabetical order; clients and tests rely on these exact bytes.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::push::{put_int, state};
use crate::{msgid, Errno};

/// A finished JSON value as a frame: its text and an LF.
pub fn finish(v: &Value) -> Bytes {
    let mut out = serde_json::to_vec(v).expect("a JSON value always serialises");
    out.push(b'\n');
    Bytes::from(out)
}

/// A failed request: LOGIN and REG failures come back in their own ack type,
/// everything else as ERROR with `re` naming the failed msgid (when known).
pub fn failure(re: Option<i64>, reqid: Option<&Value>, errno: Errno, errmsg: &str) -> Bytes {
    let mut m = Map::new();
    let kind = match re {
        Some(msgid::LOGIN) => msgid::LOGIN_ACK,
        Some(msgid::REG) => msgid::REG_ACK,
        _ => msgid::ERROR,
    };
    m.insert("msgid".into(), kind.into());
    m.insert("errno".into(), errno.code().into());
    m.insert("errmsg".into(), errmsg.into());
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
/// still come out in alphabetical order, as a map would write them.
pub fn ack(re: i64, reqid: Option<&Value>, extra: &[(&str, Value)]) -> Bytes {
    let (msgid, re, errno) = (Value::from(msgid::ACK), Value::from(re), Value::from(0));
    let mut fields: Vec<(&str, &Value)> = vec![("errno", &errno), ("msgid", &msgid), ("re", &re)];
    fields.extend(reqid.map(|r| ("reqid", r)));
    fields.extend(extra.iter().map(|(k, v)| (*k, v)));
    fields.sort_by_key(|&(k, _)| k);
    fields.dedup_by_key(|&mut (k, _)| k);
    let mut out = Vec::with_capacity(64);
    for (i, (k, v)) in fields.into_iter().enumerate() {
        // Keys are protocol field names: nothing to escape.
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

/// The ACK of a stored chat message: the bytes of [`ack`] with the one
/// field `mid`, written straight into one buffer (every message gets one,
/// so it skips building values and sorting keys).
pub fn ack_mid(re: i64, reqid: Option<&Value>, mid: i64) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"errno\":0,\"mid\":");
    put_int(&mut out, mid);
    out.extend_from_slice(b",\"msgid\":");
    put_int(&mut out, msgid::ACK);
    out.extend_from_slice(b",\"re\":");
    put_int(&mut out, re);
    if let Some(r) = reqid {
        out.extend_from_slice(b",\"reqid\":");
        serde_json::to_writer(&mut out, r).expect("a JSON value always serialises");
    }
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// REG_ACK on success (see [`with_reqid`] for the `reqid`).
pub fn reg_ack(id: i64) -> Value {
    json!({"msgid": msgid::REG_ACK, "errno": 0, "id": id})
}

/// PONG (see [`with_reqid`] for the `reqid`).
pub fn pong() -> Value {
    json!({"msgid": msgid::PONG})
}

/// A reply object of its own kind as a frame, with the request's `reqid`
/// echoed.
pub fn with_reqid(mut v: Value, reqid: Option<&Value>) -> Bytes {
    if let (Some(r), Value::Object(m)) = (reqid, &mut v) {
        m.insert("reqid".into(), r.clone());
    }
    finish(&v)
}

/// A group member as the login ack lists it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// User id.
    pub id: i64,
    /// User name.
    pub name: &'a str,
    /// Whether the user is online now.
    pub online: bool,
    /// `creator` or `normal`.
    pub role: &'a str,
}

/// A successful LOGIN_ACK, built up part by part. Level 1 nests friends,
/// groups and members as JSON text (the classic shape) and leaves out empty
/// lists; level 2 nests objects and always has `friends` and `groups`.
#[derive(Debug)]
pub struct LoginAck {
    level: u8,
    head: Map<String, Value>,
    friends: Vec<Value>,
    groups: Vec<Value>,
    offline: Vec<Value>,
}

impl LoginAck {
    /// The ack for user `id` called `name`, logged in at `level`.
    pub fn new(level: u8, id: i64, name: &str) -> Self {
        let mut head = Map::new();
        head.insert("msgid".into(), msgid::LOGIN_ACK.into());
        head.insert("errno".into(), 0.into());
        head.insert("id".into(), id.into());
        head.insert("name".into(), name.into());
        LoginAck {
            level,
            head,
            friends: Vec::new(),
            groups: Vec::new(),
            offline: Vec::new(),
        }
    }

    /// Level 1 nests JSON text, level 2 the objects themselves.
    fn nest(&self, v: Value) -> Value {
        if self.level >= 2 {
            v
        } else {
            Value::String(v.to_string())
        }
    }

    /// Adds a friend.
    pub fn friend(&mut self, id: i64, name: &str, online: bool) {
        let v = json!({"id": id, "name": name, "state": state(online)});
        let v = self.nest(v);
        self.friends.push(v);
    }

    /// Adds a group and its members.
    pub fn group<'m>(
        &mut self,
        id: i64,
        name: &str,
        desc: &str,
        members: impl IntoIterator<Item = Member<'m>>,
    ) {
        let users: Vec<Value> = members
            .into_iter()
            .map(|m| {
                self.nest(
                    json!({"id": m.id, "name": m.name, "state": state(m.online), "role": m.role}),
                )
            })
            .collect();
        let mut v = json!({"id": id, "groupname": name, "groupdesc": desc});
        if self.level >= 2 || !users.is_empty() {
            v["users"] = Value::Array(users);
        }
        let v = self.nest(v);
        self.groups.push(v);
    }

    /// Sets the level-2 token for the next login.
    pub fn token(&mut self, token: String) {
        self.head.insert("token".into(), token.into());
    }

    /// Adds a level-1 offline message: a pushed chat frame's text (see
    /// [`crate::push::ChatPush::level1_text`]).
    pub fn offline(&mut self, frame_text: &str) {
        self.offline.push(frame_text.into());
    }

    /// The finished frame, with the request's `reqid` echoed.
    pub fn encode(self, reqid: Option<&Value>) -> Bytes {
        let mut m = self.head;
        let l2 = self.level >= 2;
        if l2 || !self.friends.is_empty() {
            m.insert("friends".into(), self.friends.into());
        }
        if l2 || !self.groups.is_empty() {
            m.insert("groups".into(), self.groups.into());
        }
        if !self.offline.is_empty() {
            m.insert("offlinemsg".into(), self.offline.into());
        }
        if let Some(r) = reqid {
            m.insert("reqid".into(), r.clone());
        }
        finish(&Value::Object(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_written_with_sorted_keys() {
        let reqid = Value::String("r\"1".into());
        let a = ack(6, Some(&reqid), &[("mid", 42.into())]);
        assert_eq!(
            std::str::from_utf8(&a).unwrap(),
            "{\"errno\":0,\"mid\":42,\"msgid\":12,\"re\":6,\"reqid\":\"r\\\"1\"}\n"
        );
    }

    #[test]
    fn the_mid_ack_is_the_general_ack_with_a_mid() {
        let reqids = [
            None,
            Some(Value::from(7)),
            Some(Value::String("r\"1\u{e9}".into())),
            Some(json!({"b": [1, null], "a": "x"})),
        ];
        for reqid in &reqids {
            for (re, mid) in [(6, 1), (10, 9_007_199_254_740_993), (6, -3), (0, 0)] {
                assert_eq!(
                    ack_mid(re, reqid.as_ref(), mid),
                    ack(re, reqid.as_ref(), &[("mid", mid.into())]),
                    "re {re}, mid {mid}, reqid {reqid:?}"
                );
            }
        }
    }

    #[test]
    fn failures_use_the_ack_type_of_login_and_reg() {
        let f = failure(Some(msgid::LOGIN), None, Errno::BadCredentials, "no");
        assert_eq!(&f[..], b"{\"errmsg\":\"no\",\"errno\":1,\"msgid\":2}\n");
        let f = failure(Some(9), Some(&7.into()), Errno::NotFound, "x");
        assert_eq!(
            &f[..],
            b"{\"errmsg\":\"x\",\"errno\":3,\"msgid\":11,\"re\":9,\"reqid\":7}\n"
        );
        let f = failure(None, None, Errno::Malformed, "x");
        assert_eq!(&f[..], b"{\"errmsg\":\"x\",\"errno\":6,\"msgid\":11}\n");
    }

    #[test]
    fn login_acks_nest_text_at_level_1_and_objects_at_level_2() {
        let member = Member {
            id: 2,
            name: "b",
            online: true,
            role: "creator",
        };
        let mut l1 = LoginAck::new(1, 1, "a");
        l1.group(5, "g", "", [member]);
        l1.offline("{}");
        let v: Value = serde_json::from_slice(&l1.encode(None)).unwrap();
        assert!(v.get("friends").is_none());
        let g: Value = serde_json::from_str(v["groups"][0].as_str().unwrap()).unwrap();
        assert!(g["users"][0].is_string());
        assert_eq!(v["offlinemsg"][0], "{}");

        let mut l2 = LoginAck::new(2, 1, "a");
        l2.group(5, "g", "", [member]);
        l2.token("t".into());
        let v: Value = serde_json::from_slice(&l2.encode(Some(&3.into()))).unwrap();
        assert_eq!(v["friends"], json!([]));
        assert_eq!(v["groups"][0]["users"][0]["state"], "online");
        assert_eq!(
            (v["token"].as_str(), v["reqid"].as_i64()),
            (Some("t"), Some(3))
        );
    }
}
