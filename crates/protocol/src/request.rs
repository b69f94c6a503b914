//! Typed client requests: each variant names one msgid and its fields, and
//! encodes to the exact frame a client sends. The load generator's hot path
//! has [`write_plain_chat`], which skips JSON escaping for text that needs
//! none.

use serde_json::{Map, Value};

use crate::{msgid, push::ChatTarget};

/// How a LOGIN proves who the user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret<'a> {
    /// The account's password.
    Password(&'a str),
    /// A level-2 login token from an earlier login ack.
    Token(&'a str),
}

/// One client request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// LOGIN; `level` 2 adds `"v":2`, `last_seq` skips messages already held.
    Login {
        /// User id.
        id: i64,
        /// Password or token.
        secret: Secret<'a>,
        /// Protocol level, 1 or 2.
        level: u8,
        /// Highest seq the client holds every message up to.
        last_seq: Option<i64>,
    },
    /// LOGINOUT.
    LoginOut,
    /// REG.
    Register {
        /// The new account's name.
        name: &'a str,
        /// Its password.
        password: &'a str,
    },
    /// ONE_CHAT or GROUP_CHAT, after the target.
    Chat {
        /// Recipient user or group.
        target: ChatTarget,
        /// The text.
        msg: &'a str,
    },
    /// ADD_FRIEND.
    AddFriend(i64),
    /// DEL_FRIEND.
    DelFriend(i64),
    /// CREATE_GROUP.
    CreateGroup {
        /// Group name.
        name: &'a str,
        /// Group description.
        desc: &'a str,
    },
    /// ADD_GROUP: join a group.
    AddGroup(i64),
    /// QUIT_GROUP: leave a group.
    QuitGroup(i64),
    /// DISBAND_GROUP: delete a group (its creator only).
    DisbandGroup(i64),
    /// DELIVERED: every message up to `seq` is held.
    Delivered {
        /// The highest seq held.
        seq: i64,
    },
    /// HISTORY of a one-to-one or group conversation.
    History {
        /// The peer user or the group.
        with: ChatTarget,
        /// Page size; the server's default when absent.
        limit: Option<i64>,
    },
    /// PING.
    Ping,
    /// FIND_USER: a user by exact (case-sensitive) name.
    FindUser {
        /// The name as registered.
        name: &'a str,
    },
}

impl Request<'_> {
    /// The request's msgid.
    pub fn msgid(&self) -> i64 {
        match self {
            Request::Login { .. } => msgid::LOGIN,
            Request::LoginOut => msgid::LOGINOUT,
            Request::Register { .. } => msgid::REG,
            Request::Chat { target, .. } => target.msgid(),
            Request::AddFriend(_) => msgid::ADD_FRIEND,
            Request::DelFriend(_) => msgid::DEL_FRIEND,
            Request::CreateGroup { .. } => msgid::CREATE_GROUP,
            Request::AddGroup(_) => msgid::ADD_GROUP,
            Request::QuitGroup(_) => msgid::QUIT_GROUP,
            Request::DisbandGroup(_) => msgid::DISBAND_GROUP,
            Request::Delivered { .. } => msgid::DELIVERED,
            Request::History { .. } => msgid::HISTORY,
            Request::Ping => msgid::PING,
            Request::FindUser { .. } => msgid::FIND_USER,
        }
    }

    /// The request as a JSON object, with `reqid` when given.
    pub fn to_object(&self, reqid: Option<u64>) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.into(), v);
        };
        put("msgid", self.msgid().into());
        if let Some(r) = reqid {
            put("reqid", r.into());
        }
        let target = |put: &mut dyn FnMut(&str, Value), t: ChatTarget| match t {
            ChatTarget::User(u) => put("toid", u.into()),
            ChatTarget::Group(g) => put("groupid", g.into()),
        };
        match *self {
            Request::Login {
                id,
                secret,
                level,
                last_seq,
            } => {
                put("id", id.into());
                match secret {
                    Secret::Password(p) => put("password", p.into()),
                    Secret::Token(t) => put("token", t.into()),
                }
                if level >= 2 {
                    put("v", 2.into());
                }
                if let Some(s) = last_seq {
                    put("last_seq", s.into());
                }
            }
            Request::FindUser { name } => put("name", name.into()),
            Request::Register { name, password } => {
                put("name", name.into());
                put("password", password.into());
            }
            Request::Chat { target: t, msg } => {
                target(&mut put, t);
                put("msg", msg.into());
            }
            Request::AddFriend(f) | Request::DelFriend(f) => put("friendid", f.into()),
            Request::CreateGroup { name, desc } => {
                put("groupname", name.into());
                put("groupdesc", desc.into());
            }
            Request::AddGroup(g) | Request::QuitGroup(g) | Request::DisbandGroup(g) => {
                put("groupid", g.into())
            }
            Request::Delivered { seq } => put("seq", seq.into()),
            Request::History { with, limit } => {
                target(&mut put, with);
                if let Some(l) = limit {
                    put("limit", l.into());
                }
            }
            Request::LoginOut | Request::Ping => {}
        }
        m
    }

    /// The request as a frame: JSON text (keys in alphabetical order) and
    /// an LF.
    pub fn encode(&self, reqid: Option<u64>) -> Vec<u8> {
        let mut b = serde_json::to_vec(&Value::Object(self.to_object(reqid)))
            .expect("a JSON value always serialises");
        b.push(b'\n');
        b
    }
}

/// Appends a complete ONE_CHAT or GROUP_CHAT request frame (LF-terminated)
/// without building a JSON value: `text` writes the message text, which must
/// need no JSON escaping (no quote, backslash or control character). Made
/// for load generators, whose text is their own.
pub fn write_plain_chat(out: &mut String, target: ChatTarget, text: impl FnOnce(&mut String)) {
    use std::fmt::Write as _;
    match target {
        ChatTarget::User(to) => {
            let _ = write!(
                out,
                "{{\"msgid\":{},\"toid\":{to},\"msg\":\"",
                msgid::ONE_CHAT
            );
        }
        ChatTarget::Group(g) => {
            let _ = write!(
                out,
                "{{\"msgid\":{},\"groupid\":{g},\"msg\":\"",
                msgid::GROUP_CHAT
            );
        }
    }
    let start = out.len();
    text(out);
    debug_assert!(!out[start..]
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b < 0x20));
    out.push_str("\"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: Request<'_>, reqid: Option<u64>) -> String {
        String::from_utf8(r.encode(reqid)).unwrap()
    }

    #[test]
    fn requests_encode_to_their_frames() {
        let login = Request::Login {
            id: 5,
            secret: Secret::Token("t"),
            level: 2,
            last_seq: Some(3),
        };
        assert_eq!(
            text(login, Some(1)),
            "{\"id\":5,\"last_seq\":3,\"msgid\":1,\"reqid\":1,\"token\":\"t\",\"v\":2}\n"
        );
        let l1 = Request::Login {
            id: 5,
            secret: Secret::Password("p"),
            level: 1,
            last_seq: None,
        };
        assert_eq!(
            text(l1, None),
            "{\"id\":5,\"msgid\":1,\"password\":\"p\"}\n"
        );
        assert_eq!(text(Request::Ping, None), "{\"msgid\":18}\n");
        assert_eq!(
            text(Request::Delivered { seq: 9 }, None),
            "{\"msgid\":16,\"seq\":9}\n"
        );
        let history = Request::History {
            with: ChatTarget::Group(4),
            limit: Some(10),
        };
        assert_eq!(
            text(history, Some(2)),
            "{\"groupid\":4,\"limit\":10,\"msgid\":17,\"reqid\":2}\n"
        );
        let chat = Request::Chat {
            target: ChatTarget::User(2),
            msg: "a\"b",
        };
        assert_eq!(
            text(chat, None),
            "{\"msg\":\"a\\\"b\",\"msgid\":6,\"toid\":2}\n"
        );
        assert_eq!(
            text(Request::AddFriend(3), None),
            "{\"friendid\":3,\"msgid\":7}\n"
        );
    }

    #[test]
    fn plain_chats_are_valid_json() {
        let mut f = String::new();
        write_plain_chat(&mut f, ChatTarget::Group(9), |s| s.push_str("hello"));
        assert_eq!(f, "{\"msgid\":10,\"groupid\":9,\"msg\":\"hello\"}\n");
        let v: Value = serde_json::from_str(f.trim_end()).unwrap();
        assert_eq!(v["groupid"], 9);
    }
}
