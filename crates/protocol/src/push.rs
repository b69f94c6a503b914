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
    /// Encodes a message, once for every recipient and both levels: the
    /// level-2 frame is the level-1 frame with `mid` appended (and later the
    /// seq). Written straight into one buffer that both levels share (every
    /// stored message gets one): the same bytes as serialising the frame
    /// with serde_json (tested), without a value per field.
    pub fn encode(message: &ChatMessage<'_>) -> Self {
        let fields = 96 + message.sender_name.len() + message.body.len();
        let mut out = Vec::with_capacity(2 * fields + 32);
        out.extend_from_slice(b"{\"msgid\":");
        put_int(&mut out, message.target.msgid());
        out.extend_from_slice(b",\"id\":");
        put_int(&mut out, message.sender);
        if let ChatTarget::Group(_) = message.target {
            out.extend_from_slice(b",\"userid\":");
            put_int(&mut out, message.sender);
        }
        out.extend_from_slice(b",\"name\":");
        write_json_str(&mut out, message.sender_name);
        let to = match message.target {
            ChatTarget::User(u) => {
                out.extend_from_slice(b",\"toid\":");
                u
            }
            ChatTarget::Group(g) => {
                out.extend_from_slice(b",\"groupid\":");
                g
            }
        };
        put_int(&mut out, to);
        out.extend_from_slice(b",\"msg\":");
        write_json_str(&mut out, message.body);
        out.extend_from_slice(b",\"time\":\"");
        put_time(&mut out, message.time);
        out.push(b'"');
        // Level 1 ends here; level 2 repeats the fields and goes on.
        let fields_end = out.len();
        out.extend_from_slice(b"}\n");
        out.extend_from_within(..fields_end);
        out.extend_from_slice(b",\"mid\":");
        put_int(&mut out, message.mid);
        let mut all = Bytes::from(out);
        let l1 = all.split_to(fields_end + 2);
        ChatPush { l1, l2_prefix: all }
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
        std::str::from_utf8(&self.l1[..self.l1.len() - 1]).expect("the encoder writes UTF-8")
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
    b.put_slice(itoa::Buffer::new().format(seq).as_bytes());
    b.put_slice(b"}\n");
    b.freeze()
}

/// Appends `secs` as the push's `YYYY-MM-DD HH:MM:SS`. Pushes come many a
/// second, so each thread keeps the last one it wrote.
fn put_time(out: &mut Vec<u8>, secs: i64) {
    thread_local! {
        static LAST: std::cell::Cell<Option<(i64, [u8; 19])>> = const { std::cell::Cell::new(None) };
    }
    if let Some((at, text)) = LAST.get() {
        if at == secs {
            out.extend_from_slice(&text);
            return;
        }
    }
    let mut text = String::with_capacity(19);
    crate::time::write_utc(&mut text, secs);
    if let Ok(fixed) = <[u8; 19]>::try_from(text.as_bytes()) {
        LAST.set(Some((secs, fixed)));
    }
    out.extend_from_slice(text.as_bytes());
}

/// Appends an integer as decimal text (every push carries five, every
/// stored message's ACK two).
pub(crate) fn put_int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it
/// (`"`, `\\` and control characters; everything else as UTF-8).
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let clean = plain_len(bytes);
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// How many bytes at the start of `bytes` a JSON string holds as they are:
/// the length up to the first `"`, `\\` or control character (all of
/// `bytes` if there is none). Most text has none, so it is skipped eight
/// bytes at a time. Shared by the push encoder and the server's request
/// scanner, which must agree with serde_json on what needs an escape.
pub fn plain_len(bytes: &[u8]) -> usize {
    let mut clean = 0;
    while let Some(word) = bytes.get(clean..clean + 8) {
        if needs_escape(u64::from_le_bytes(word.try_into().expect("eight bytes"))) {
            break;
        }
        clean += 8;
    }
    clean
        + bytes[clean..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .unwrap_or(bytes.len() - clean)
}

/// Whether any of the eight bytes of `w` is below 0x20, `"` or `\\`
/// (exact: the usual has-zero-byte and has-less-than tests).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))) != 0
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

    /// The frames as serde_json writes them from the frame struct: what
    /// the hand-written encoder must match byte for byte.
    fn reference(m: &ChatMessage<'_>, seq: i64) -> (Vec<u8>, Vec<u8>) {
        let mut l1 = serde_json::to_vec(&m.frame(false)).unwrap();
        l1.push(b'\n');
        let mut l2 = serde_json::to_vec(&m.frame(true)).unwrap();
        l2.pop();
        l2.extend_from_slice(format!(",\"seq\":{seq}}}\n").as_bytes());
        (l1, l2)
    }

    #[test]
    fn escapes_match_serde_json() {
        for text in [
            "",
            "plain",
            "q\"uote\\back",
            "\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\u{7f} end",
            "你好 🙂 \u{2028}",
            "\"",
        ] {
            let m = ChatMessage {
                mid: 1,
                sender: 2,
                sender_name: text,
                target: ChatTarget::User(3),
                body: text,
                time: 1_700_000_000,
            };
            let p = ChatPush::encode(&m);
            let (l1, l2) = reference(&m, 5);
            assert_eq!(&p.level1()[..], &l1[..], "{text:?}");
            assert_eq!(&p.level2(5)[..], &l2[..], "{text:?}");
        }
    }

    #[test]
    fn a_repeated_time_is_written_like_a_new_one() {
        for time in [
            0,
            0,
            59,
            59,
            60,
            -1,
            -1,
            253_402_300_800,
            253_402_300_800,
            5,
        ] {
            let m = ChatMessage {
                mid: 1,
                sender: 2,
                sender_name: "n",
                target: ChatTarget::User(3),
                body: "b",
                time,
            };
            assert_eq!(
                &ChatPush::encode(&m).level1()[..],
                &reference(&m, 0).0[..],
                "{time}"
            );
        }
    }

    #[test]
    fn the_word_test_finds_every_byte_that_needs_an_escape() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut word = [b'a'; 8];
                word[at] = b;
                let want = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(
                    needs_escape(u64::from_le_bytes(word)),
                    want,
                    "{b:#x} at {at}"
                );
                // Neighbours that need no escape never mask it.
                let mut high = [0xffu8; 8];
                high[at] = b;
                let want_high = want || b < 0x20;
                assert_eq!(needs_escape(u64::from_le_bytes(high)), want_high);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_len_stops_at_the_first_byte_to_escape(
            bytes in proptest::collection::vec(proptest::prop_oneof![
                0x20u8..=0xff,
                proptest::sample::select(vec![b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x5b, 0x5d, 0x7f, 0x80]),
            ], 0..40)
        ) {
            let want = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(bytes.len());
            proptest::prop_assert_eq!(plain_len(&bytes), want);
        }

        #[test]
        fn escaping_text_matches_serde_json(text in "[a-z\"\\\\\\x00-\\x1f\\x7f\u{e9}\u{4f60}]{0,40}") {
            let mut ours = Vec::new();
            write_json_str(&mut ours, &text);
            proptest::prop_assert_eq!(ours, serde_json::to_vec(&text).unwrap());
        }

        #[test]
        fn encode_matches_serde_json(
            mid in proptest::prelude::any::<i64>(),
            sender in proptest::prelude::any::<i64>(),
            name in ".{0,40}",
            body in proptest::prelude::any::<String>(),
            group in proptest::prelude::any::<bool>(),
            to in proptest::prelude::any::<i64>(),
            time in -100_000_000_000i64..100_000_000_000,
            seq in proptest::prelude::any::<i64>(),
        ) {
            let m = ChatMessage {
                mid,
                sender,
                sender_name: &name,
                target: if group { ChatTarget::Group(to) } else { ChatTarget::User(to) },
                body: &body,
                time,
            };
            let p = ChatPush::encode(&m);
            let (l1, l2) = reference(&m, seq);
            proptest::prop_assert_eq!(&p.level1()[..], &l1[..]);
            proptest::prop_assert_eq!(&p.level2(seq)[..], &l2[..]);
            let (a, b) = p.level2_parts(seq);
            proptest::prop_assert_eq!([&a[..], &b[..]].concat(), l2);
        }
    }

    #[test]
    fn integers_encode_as_json() {
        for v in [0, 7, -1, 10, 1_234_567, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            put_int(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
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
