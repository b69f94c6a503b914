//! Frames the server pushes without a request: chat messages (encoded once
//! for all their recipients), PRESENCE and KICKED.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{msgid, reply::finish, time::format_utc};

/// Where a chat message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatTarget {
    /// ONE_CHAT to this user id.
    User(i64),
    /// GROUP_CHAT to this group id.
    Group(i64),
}

impl ChatTarget {
    /// The msgid of requests and pushes for this kind of chat.
    pub fn msgid(self) -> i64 {
        match self {
            ChatTarget::User(_) => msgid::ONE_CHAT,
            ChatTarget::Group(_) => msgid::GROUP_CHAT,
        }
    }
}

/// A stored chat message, as pushes and HISTORY entries describe it.
#[derive(Debug, Clone, Copy)]
pub struct ChatMessage<'a> {
    /// The message id.
    pub mid: i64,
    /// The sender's user id.
    pub sender: i64,
    /// The sender's name.
    pub sender_name: &'a str,
    /// The recipient user or group.
    pub target: ChatTarget,
    /// The text.
    pub body: &'a str,
    /// Unix seconds when stored.
    pub time: i64,
}

/// A pushed chat frame, field order as the classic server writes it.
#[derive(Serialize)]
struct ChatFrame<'a> {
    msgid: i64,
    id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    userid: Option<i64>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    toid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groupid: Option<i64>,
    msg: &'a str,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mid: Option<i64>,
}

impl<'a> ChatMessage<'a> {
    fn frame(&self, with_mid: bool) -> ChatFrame<'a> {
        let (toid, groupid, userid) = match self.target {
            ChatTarget::User(u) => (Some(u), None, None),
            ChatTarget::Group(g) => (None, Some(g), Some(self.sender)),
        };
        ChatFrame {
            msgid: self.target.msgid(),
            id: self.sender,
            userid,
            name: self.sender_name,
            toid,
            groupid,
            msg: self.body,
            time: format_utc(self.time),
            mid: with_mid.then_some(self.mid),
        }
    }

    /// The message as a JSON object with `mid` (a HISTORY entry).
    pub fn history_entry(&self) -> Value {
        serde_json::to_value(self.frame(true)).expect("chat frames serialise")
    }
}

/// One chat message encoded once for all its recipients: the level-1 frame
/// is the same for everyone; level 2 only appends the recipient's `seq`.
#[derive(Debug, Clone)]
pub struct ChatPush {
    l1: Bytes,
    l2_prefix: Bytes,
}

impl ChatPush {
    /// Encodes a message: serialised once, since the level-2 frame is the
    /// level-1 frame with `mid` appended (and later the seq).
    pub fn encode(message: &ChatMessage<'_>) -> Self {
        let mut l1 = serde_json::to_vec(&message.frame(false)).expect("chat frames serialise");
        let mut l2 = Vec::with_capacity(l1.len() + 24);
        l2.extend_from_slice(&l1[..l1.len() - 1]); // up to the closing brace
        l2.extend_from_slice(b",\"mid\":");
        l2.extend_from_slice(itoa(message.mid).as_bytes());
        l1.push(b'\n');
        ChatPush {
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

    /// The level-2 frame in two parts: the body shared with every other
    /// recipient (no copy), and a few bytes of this recipient's own that
    /// carry `seq` and end the frame.
    pub fn level2_parts(&self, seq: i64) -> (Bytes, Bytes) {
        (self.l2_prefix.clone(), seq_tail(seq))
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

/// `"online"` or `"offline"`, as PRESENCE and the login ack say it.
pub fn state(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

/// PRESENCE: a level-2 friend came online or went offline.
pub fn presence(id: i64, online: bool) -> Bytes {
    finish(&json!({"msgid": msgid::PRESENCE, "id": id, "state": state(online)}))
}

/// What changed in a ROSTER push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RosterEvent {
    /// A friendship began; sent to both friends.
    FriendAdded,
    /// A friendship ended; sent to both.
    FriendRemoved,
    /// Someone joined a group; sent to every member.
    MemberJoined,
    /// Someone left a group; sent to every member, the leaver included.
    MemberLeft,
    /// A group was disbanded; sent to every former member.
    GroupDisbanded,
}

impl RosterEvent {
    /// The `event` field.
    pub fn as_str(self) -> &'static str {
        match self {
            RosterEvent::FriendAdded => "friend_added",
            RosterEvent::FriendRemoved => "friend_removed",
            RosterEvent::MemberJoined => "member_joined",
            RosterEvent::MemberLeft => "member_left",
            RosterEvent::GroupDisbanded => "group_disbanded",
        }
    }
}

/// A ROSTER push: `event`, the user involved (`id`, `name`: the other friend,
/// the member who joined or left, or who disbanded the group), the group
/// (`groupid`, `groupname`) for group events, and `state` of that user when
/// it is news to the recipient (friend_added, member_joined).
pub fn roster(
    event: RosterEvent,
    user: (i64, &str),
    group: Option<(i64, &str)>,
    online: Option<bool>,
) -> Bytes {
    let mut v =
        json!({"msgid": msgid::ROSTER, "event": event.as_str(), "id": user.0, "name": user.1});
    if let Some((id, name)) = group {
        v["groupid"] = id.into();
        v["groupname"] = name.into();
    }
    if let Some(on) = online {
        v["state"] = state(on).into();
    }
    finish(&v)
}

/// What KICKED says to a session replaced by a newer login.
const KICKED_MSG: &str = "you logged in somewhere else; this session is closed";

/// KICKED, just before the server closes a replaced session.
pub fn kicked() -> Bytes {
    kicked_because(KICKED_MSG)
}

/// KICKED with another reason: an operator disabled or deleted the account,
/// or reset its password.
pub fn kicked_because(errmsg: &str) -> Bytes {
    finish(&json!({"msgid": msgid::KICKED, "errmsg": errmsg}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_frames_keep_the_classic_shape() {
        let p = ChatPush::encode(&ChatMessage {
            mid: 9,
            sender: 1,
            sender_name: "li \"lei\"",
            target: ChatTarget::Group(3),
            body: "你好",
            time: 0,
        });
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
        let (body, tail) = p.level2_parts(42);
        assert_eq!([&body[..], &tail[..]].concat(), p.level2(42).to_vec());
    }

    #[test]
    fn integers_encode_as_json() {
        for v in [0, 7, -1, 10, 1_234_567, i64::MAX, i64::MIN] {
            assert_eq!(itoa(v), v.to_string());
        }
    }

    #[test]
    fn notices_have_their_classic_bytes() {
        assert_eq!(
            &presence(3, true)[..],
            b"{\"id\":3,\"msgid\":20,\"state\":\"online\"}\n"
        );
        assert_eq!(
            &kicked()[..],
            format!("{{\"errmsg\":\"{KICKED_MSG}\",\"msgid\":21}}\n").as_bytes()
        );
    }
}
