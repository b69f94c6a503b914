//! The ceiling's answers to requests: checks of LOGIN, the login ack, and
//! every other request (REG, chats, groups, DELIVERED, PING, LOGINOUT).
//! Frames come from `chat_protocol`, as the real server's do.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use chat_protocol::reply::{self, LoginAck, Member};
use chat_protocol::time::unix_now;
use chat_protocol::{limits, msgid, ChatMessage, ChatPush, ChatTarget, Errno};
use serde_json::{Map, Value};

use super::conn::Me;
use super::{Ceiling, Group, User};

/// A refused request: its errno and message.
pub(super) struct Fail(pub(super) Errno, pub(super) &'static str);

impl Fail {
    /// The failure frame for a request of msgid `re` (when known).
    pub(super) fn reply(&self, re: Option<i64>, reqid: Option<&Value>) -> Bytes {
        reply::failure(re, reqid, self.0, self.1)
    }
}

/// An integer field.
fn int(body: &Map<String, Value>, k: &str) -> Result<i64, Fail> {
    body.get(k)
        .and_then(Value::as_i64)
        .ok_or(Fail(Errno::Malformed, "missing or non-integer field"))
}

/// A string field of `min..=max` bytes.
fn text<'a>(
    body: &'a Map<String, Value>,
    k: &str,
    min: usize,
    max: usize,
) -> Result<&'a str, Fail> {
    let s = body
        .get(k)
        .and_then(Value::as_str)
        .ok_or(Fail(Errno::Malformed, "missing or non-string field"))?;
    if s.len() < min || s.len() > max {
        return Err(Fail(Errno::Malformed, "field length out of range"));
    }
    Ok(s)
}

/// A string field of 1 to `max` characters.
fn chars<'a>(body: &'a Map<String, Value>, k: &str, max: usize) -> Result<&'a str, Fail> {
    let s = text(body, k, 1, max * 4)?;
    if s.chars().count() > max {
        return Err(Fail(Errno::Malformed, "field length out of range"));
    }
    Ok(s)
}

/// The reply to any request but LOGIN and REG before logging in.
const NOT_LOGGED_IN: Fail = Fail(Errno::NotLoggedIn, "not logged in");

/// A chat message from `sender`, stamped now, encoded once for everyone.
fn encode(sender: &User, target: ChatTarget, msg: &str, mid: i64) -> ChatPush {
    ChatPush::encode(&ChatMessage {
        mid,
        sender: sender.id,
        sender_name: &sender.name,
        target,
        body: msg,
        time: unix_now(),
    })
}

impl Ceiling {
    /// Checks a LOGIN: the user and the level it logs in at.
    pub(super) fn check_login(
        &self,
        body: &Map<String, Value>,
        logged_in: bool,
    ) -> Result<(Arc<User>, u8), Fail> {
        if logged_in {
            return Err(Fail(
                Errno::Forbidden,
                "this connection is logged in; send LOGINOUT first",
            ));
        }
        let id = int(body, "id")?;
        let level = match body.get("v").and_then(Value::as_i64) {
            None | Some(1) => 1u8,
            Some(2) => 2,
            Some(_) => return Err(Fail(Errno::Malformed, "v must be 1 or 2")),
        };
        let bad_password = Fail(Errno::BadCredentials, "wrong id or password");
        let user = if let Some(p) = body.get("password").and_then(Value::as_str) {
            let u = self.user(id).ok_or(bad_password)?;
            if u.password != p {
                return Err(Fail(Errno::BadCredentials, "wrong id or password"));
            }
            u
        } else if let Some(t) = body.get("token").and_then(Value::as_str) {
            if level < 2 {
                return Err(Fail(Errno::Malformed, "token login needs \"v\":2"));
            }
            let owner = self.tokens.lock().expect("tokens").remove(t);
            match owner {
                Some(o) if o == id => self.user(id).ok_or(bad_password)?,
                _ => return Err(Fail(Errno::BadCredentials, "invalid or expired token")),
            }
        } else {
            return Err(Fail(Errno::Malformed, "field `password` is required"));
        };
        Ok((user, level))
    }

    /// The login ack: the user's groups and (level 2) a fresh token.
    pub(super) fn login_ack(&self, user: &User, level: u8, reqid: Option<&Value>) -> Bytes {
        let mut ack = LoginAck::new(level, user.id, &user.name);
        let gids = user.groups.lock().expect("groups").clone();
        for gid in gids {
            let Some(g) = self.group(gid) else { continue };
            let members = g.members.read().expect("members");
            ack.group(
                g.id,
                &g.name,
                &g.desc,
                members.iter().map(|m| Member {
                    id: m.id,
                    name: &m.name,
                    online: m.session.lock().expect("session").is_some(),
                    role: if m.id == g.creator {
                        "creator"
                    } else {
                        "normal"
                    },
                }),
            );
        }
        if level >= 2 {
            let token = format!(
                "c{:x}.{:x}",
                user.id,
                self.next_sid.fetch_add(1, Ordering::Relaxed) ^ 0x5bd1_e995_7f4a_7c15
            );
            self.tokens
                .lock()
                .expect("tokens")
                .insert(token.clone(), user.id);
            ack.token(token);
        }
        ack.encode(reqid)
    }

    /// Every request but LOGIN. Returns the reply frame, if any.
    pub(super) fn handle(&self, body: &Map<String, Value>, me: &mut Option<Me>) -> Option<Bytes> {
        let reqid = body.get("reqid");
        let Some(id) = body.get("msgid").and_then(Value::as_i64) else {
            return Some(Fail(Errno::Malformed, "msgid must be an integer").reply(None, reqid));
        };
        let level = me.as_ref().map_or(1, |m| m.level);
        let r = match id {
            msgid::REG => return Some(self.register(body, reqid)),
            msgid::PING => return Some(reply::with_reqid(reply::pong(), reqid)),
            msgid::LOGINOUT => match me.take() {
                None => Err(NOT_LOGGED_IN),
                Some(m) => {
                    self.logout(&m);
                    Ok(None)
                }
            },
            msgid::DELIVERED => match me {
                None => Err(NOT_LOGGED_IN),
                Some(_) => match int(body, "seq") {
                    Ok(_) => return None,
                    Err(f) => Err(f),
                },
            },
            msgid::ONE_CHAT | msgid::GROUP_CHAT => match me {
                None => Err(NOT_LOGGED_IN),
                Some(m) => self.chat(id, body, m).map(|mid| Some(("mid", mid.into()))),
            },
            msgid::CREATE_GROUP => match me {
                None => Err(NOT_LOGGED_IN),
                Some(m) => self
                    .create_group(body, m)
                    .map(|g| Some(("groupid", g.into()))),
            },
            msgid::ADD_GROUP => match me {
                None => Err(NOT_LOGGED_IN),
                Some(m) => self.add_group(body, m).map(|_| None),
            },
            msgid::DISBAND_GROUP => match me {
                None => Err(NOT_LOGGED_IN),
                Some(m) => self.disband_group(body, m).map(|_| None),
            },
            _ => Err(Fail(
                Errno::Malformed,
                "unknown msgid (or one the ceiling does not implement)",
            )),
        };
        match r {
            Ok(extra) => (level >= 2).then(|| reply::ack(id, reqid, extra.as_slice())),
            Err(f) => Some(f.reply(Some(id), reqid)),
        }
    }

    fn register(&self, body: &Map<String, Value>, reqid: Option<&Value>) -> Bytes {
        let r = (|| {
            let name = chars(body, "name", limits::MAX_NAME_CHARS)?;
            text(body, "password", 1, limits::MAX_PASSWORD_BYTES)?;
            if name.trim() != name || name.chars().any(char::is_control) {
                return Err(Fail(Errno::BadCredentials, "invalid name"));
            }
            if !self.names.lock().expect("names").insert(name.to_owned()) {
                return Err(Fail(Errno::BadCredentials, "this name is taken"));
            }
            let id = self.next_user.fetch_add(1, Ordering::Relaxed);
            let user = Arc::new(User {
                id,
                name: name.to_owned(),
                password: text(body, "password", 1, limits::MAX_PASSWORD_BYTES)?.to_owned(),
                seq: AtomicI64::new(0),
                session: Mutex::new(None),
                groups: Mutex::new(Vec::new()),
            });
            self.users.write().expect("users").insert(id, user);
            Ok(id)
        })();
        match r {
            Ok(id) => reply::with_reqid(reply::reg_ack(id), reqid),
            Err(f) => f.reply(Some(msgid::REG), reqid),
        }
    }

    /// Queues a push for `user`'s session, if any, with its next seq.
    fn deliver(user: &User, push: &ChatPush) {
        let seq = user.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let s = user.session.lock().expect("session");
        if let Some(s) = s.as_ref() {
            let f = if s.level >= 2 {
                push.level2(seq)
            } else {
                push.level1()
            };
            if s.tx.try_send(f).is_err() {
                // Too slow to keep up: disconnect, as the real server does.
                s.close.cancel();
            }
        }
    }

    fn chat(&self, kind: i64, body: &Map<String, Value>, me: &Me) -> Result<i64, Fail> {
        let msg = text(body, "msg", 1, limits::MAX_MSG_BYTES)?;
        if kind == msgid::ONE_CHAT {
            let to = body
                .get("toid")
                .or_else(|| body.get("to"))
                .and_then(Value::as_i64)
                .ok_or(Fail(Errno::Malformed, "field `toid` is required"))?;
            let target = self.user(to).ok_or(Fail(Errno::NotFound, "no such user"))?;
            let mid = self.next_mid.fetch_add(1, Ordering::Relaxed);
            let push = encode(&me.user, ChatTarget::User(to), msg, mid);
            Self::deliver(&target, &push);
            Ok(mid)
        } else {
            let gid = int(body, "groupid")?;
            let g = self
                .group(gid)
                .ok_or(Fail(Errno::NotFound, "no such group"))?;
            let members = g.members.read().expect("members");
            if !members.iter().any(|m| m.id == me.user.id) {
                return Err(Fail(Errno::Forbidden, "you are not a member of this group"));
            }
            let mid = self.next_mid.fetch_add(1, Ordering::Relaxed);
            let push = encode(&me.user, ChatTarget::Group(gid), msg, mid);
            for m in members.iter().filter(|m| m.id != me.user.id) {
                Self::deliver(m, &push);
            }
            Ok(mid)
        }
    }

    fn create_group(&self, body: &Map<String, Value>, me: &Me) -> Result<i64, Fail> {
        let name = chars(body, "groupname", limits::MAX_GROUP_NAME_CHARS)?;
        let desc = match body.get("groupdesc") {
            None | Some(Value::Null) => "",
            Some(_) => text(body, "groupdesc", 0, limits::MAX_GROUP_DESC_CHARS * 4)?,
        };
        if !self
            .group_names
            .lock()
            .expect("group names")
            .insert(name.to_owned())
        {
            return Err(Fail(Errno::Exists, "a group with this name exists"));
        }
        let id = self.next_group.fetch_add(1, Ordering::Relaxed);
        let g = Arc::new(Group {
            id,
            name: name.to_owned(),
            desc: desc.to_owned(),
            creator: me.user.id,
            members: RwLock::new(vec![me.user.clone()]),
        });
        self.groups.write().expect("groups").insert(id, g);
        me.user.groups.lock().expect("groups").push(id);
        Ok(id)
    }

    fn add_group(&self, body: &Map<String, Value>, me: &Me) -> Result<(), Fail> {
        let gid = int(body, "groupid")?;
        let g = self
            .group(gid)
            .ok_or(Fail(Errno::NotFound, "no such group"))?;
        let mut members = g.members.write().expect("members");
        if members.iter().any(|m| m.id == me.user.id) {
            return Err(Fail(Errno::Exists, "you are already a member"));
        }
        members.push(me.user.clone());
        me.user.groups.lock().expect("groups").push(gid);
        Ok(())
    }

    fn disband_group(&self, body: &Map<String, Value>, me: &Me) -> Result<(), Fail> {
        let gid = int(body, "groupid")?;
        let g = self
            .group(gid)
            .ok_or(Fail(Errno::NotFound, "no such group"))?;
        if g.creator != me.user.id {
            return Err(Fail(
                Errno::Forbidden,
                "only the creator may disband a group",
            ));
        }
        self.groups.write().expect("groups").remove(&gid);
        self.group_names
            .lock()
            .expect("group names")
            .remove(&g.name);
        for m in g.members.read().expect("members").iter() {
            m.groups.lock().expect("groups").retain(|&x| x != gid);
        }
        Ok(())
    }
}
