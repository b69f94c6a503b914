//! The login ack in both shapes: level 1 (the classic client's, with friends,
//! groups and members as JSON strings inside JSON) and level 2 (objects).

use std::collections::BTreeSet;

use chat_protocol::msgid;
use serde_json::{json, Map, Value};

use crate::frames;
use crate::store::{GroupInfo, Person, UserId};

/// Who the user knows, and which of them are online.
#[derive(Clone, Copy)]
pub struct Contacts<'a> {
    /// The user's friends.
    pub friends: &'a [Person],
    /// The user's groups, with their members.
    pub groups: &'a [GroupInfo],
    /// Which of the friends and members are online.
    pub online: &'a BTreeSet<UserId>,
}

/// The ack, without the level-1 `offlinemsg` (the replay adds it).
pub fn build(
    user: UserId,
    name: &str,
    level: u8,
    contacts: Contacts<'_>,
    token: Option<String>,
    reqid: Option<&Value>,
) -> Map<String, Value> {
    let l1 = level < 2;
    let mut ack = Map::new();
    ack.insert("msgid".into(), msgid::LOGIN_ACK.into());
    ack.insert("errno".into(), 0.into());
    ack.insert("id".into(), user.into());
    ack.insert("name".into(), name.into());
    let fl: Vec<Value> = contacts
        .friends
        .iter()
        .map(|f| level_shape(person(f, contacts.online), l1))
        .collect();
    let gl: Vec<Value> = contacts
        .groups
        .iter()
        .map(|g| group(g, contacts.online, level))
        .collect();
    if !l1 || !fl.is_empty() {
        ack.insert("friends".into(), fl.into());
    }
    if !l1 || !gl.is_empty() {
        ack.insert("groups".into(), gl.into());
    }
    if let Some(t) = token {
        ack.insert("token".into(), t.into());
    }
    if let Some(r) = reqid {
        ack.insert("reqid".into(), r.clone());
    }
    ack
}

/// Level 1 carries nested objects as JSON text.
fn level_shape(v: Value, l1: bool) -> Value {
    if l1 {
        Value::String(v.to_string())
    } else {
        v
    }
}

fn person(p: &Person, online: &BTreeSet<UserId>) -> Value {
    json!({"id": p.id, "name": p.name, "state": frames::state(online.contains(&p.id))})
}

fn group(g: &GroupInfo, online: &BTreeSet<UserId>, level: u8) -> Value {
    let l1 = level < 2;
    let users: Vec<Value> = g
        .members
        .iter()
        .map(|m| {
            let v = json!({"id": m.id, "name": m.name, "state": frames::state(online.contains(&m.id)), "role": m.role.as_str()});
            level_shape(v, l1)
        })
        .collect();
    let mut v = json!({"id": g.id, "groupname": g.name, "groupdesc": g.desc});
    if !l1 || !users.is_empty() {
        v["users"] = Value::Array(users);
    }
    level_shape(v, l1)
}
