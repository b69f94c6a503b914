//! Hot-path frame handling: building chat requests without serde, reading
//! the few fields the bench needs straight out of server frames, and the
//! send stamp each benchmark message carries in its text.
//!
//! The scanners are only used on frames whose shape the bench knows (server
//! replies and pushes of messages the bench itself wrote, whose text never
//! needs JSON escaping); anything else goes through `serde_json`.

use std::fmt::Write as _;

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last = hay.len() - needle.len();
    let mut i = 0;
    while i <= last {
        match hay[i..=last].iter().position(|&b| b == first) {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

fn key_pos(frame: &[u8], key: &str) -> Option<usize> {
    // `"key":` — the quote before the key keeps `"id":` from matching `"toid":`.
    let mut pat = [0u8; 24];
    let k = key.as_bytes();
    if k.len() + 3 > pat.len() {
        return None;
    }
    pat[0] = b'"';
    pat[1..1 + k.len()].copy_from_slice(k);
    pat[1 + k.len()] = b'"';
    pat[2 + k.len()] = b':';
    find(frame, &pat[..k.len() + 3]).map(|p| p + k.len() + 3)
}

/// Parses a decimal integer at the start of `s` (optional minus sign).
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    let mut n = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as i64)?;
        n += 1;
    }
    (n > 0).then_some(if neg { -v } else { v })
}

/// The integer value of top-level-looking field `key`, found by scanning.
pub fn int_field(frame: &[u8], key: &str) -> Option<i64> {
    let p = key_pos(frame, key)?;
    parse_int(&frame[p..])
}

/// The raw (unescaped only if it needed no escapes) string value of `key`.
pub fn str_field<'a>(frame: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let p = key_pos(frame, key)?;
    let rest = frame.get(p..)?;
    if rest.first() != Some(&b'"') {
        return None;
    }
    let rest = &rest[1..];
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest[end] == b'"').then_some(&rest[..end])
}

/// The msgid of a server frame. Server frames start with `{"msgid":` for
/// pushes; replies have sorted keys, so fall back to a scan.
pub fn msgid(frame: &[u8]) -> Option<i64> {
    const PREFIX: &[u8] = b"{\"msgid\":";
    if frame.starts_with(PREFIX) {
        return parse_int(&frame[PREFIX.len()..]);
    }
    int_field(frame, "msgid")
}

/// What a benchmark message carries: run id, sender index, sequence number
/// within the sender, and send time in nanoseconds since the bench started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Identifies this bench run; messages of older runs are ignored.
    pub run: u64,
    /// Index of the sending client within the scenario.
    pub sender: u32,
    /// The sender's message counter.
    pub k: u64,
    /// Send time, nanoseconds since the bench's start instant.
    pub t_ns: u64,
}

/// Appends the message text for `stamp`, padded with `x` to `size` bytes.
pub fn write_stamp(out: &mut String, stamp: Stamp, size: usize) {
    let start = out.len();
    let _ = write!(
        out,
        "r={:x};s={};k={};t={};",
        stamp.run, stamp.sender, stamp.k, stamp.t_ns
    );
    let len = out.len() - start;
    for _ in len..size {
        out.push('x');
    }
}

/// Reads a stamp back out of message text; `None` if it is not one.
pub fn parse_stamp(msg: &[u8]) -> Option<Stamp> {
    let mut run = None;
    let mut sender = None;
    let mut k = None;
    let mut t = None;
    for part in msg.split(|&b| b == b';') {
        if part.len() < 2 || part[1] != b'=' {
            break;
        }
        let v = &part[2..];
        match part[0] {
            b'r' => run = u64::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok(),
            b's' => sender = parse_int(v).and_then(|x| u32::try_from(x).ok()),
            b'k' => k = parse_int(v).map(|x| x as u64),
            b't' => {
                t = parse_int(v).map(|x| x as u64);
                break;
            }
            _ => break,
        }
    }
    Some(Stamp {
        run: run?,
        sender: sender?,
        k: k?,
        t_ns: t?,
    })
}

/// Where a chat message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// ONE_CHAT to this user id.
    User(i64),
    /// GROUP_CHAT to this group id.
    Group(i64),
}

/// Appends a complete ONE_CHAT or GROUP_CHAT request frame (LF-terminated).
pub fn write_chat(out: &mut String, target: Target, stamp: Stamp, size: usize) {
    match target {
        Target::User(to) => {
            let _ = write!(out, "{{\"msgid\":6,\"toid\":{to},\"msg\":\"");
        }
        Target::Group(g) => {
            let _ = write!(out, "{{\"msgid\":10,\"groupid\":{g},\"msg\":\"");
        }
    }
    write_stamp(out, stamp, size);
    out.push_str("\"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_fields_of_server_frames() {
        let ack = br#"{"errno":0,"mid":17,"msgid":12,"re":6}"#;
        assert_eq!(msgid(ack), Some(12));
        assert_eq!(int_field(ack, "re"), Some(6));
        assert_eq!(int_field(ack, "mid"), Some(17));
        let push =
            br#"{"msgid":6,"id":3,"name":"b","toid":4,"msg":"hi","time":"x","mid":9,"seq":-2}"#;
        assert_eq!(msgid(push), Some(6));
        assert_eq!(int_field(push, "id"), Some(3));
        assert_eq!(int_field(push, "toid"), Some(4));
        assert_eq!(int_field(push, "seq"), Some(-2));
        assert_eq!(str_field(push, "msg"), Some(&b"hi"[..]));
        assert_eq!(str_field(br#"{"msg":"a\"b"}"#, "msg"), None);
        assert_eq!(int_field(push, "nope"), None);
    }

    #[test]
    fn stamps_round_trip_and_pad() {
        let s = Stamp {
            run: 0xabc,
            sender: 7,
            k: 12,
            t_ns: 123_456_789,
        };
        let mut text = String::new();
        write_stamp(&mut text, s, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_stamp(text.as_bytes()), Some(s));
        let mut short = String::new();
        write_stamp(&mut short, s, 1);
        assert_eq!(parse_stamp(short.as_bytes()), Some(s));
        assert_eq!(parse_stamp(b"hello"), None);
    }

    #[test]
    fn chat_frames_are_valid_json() {
        let s = Stamp {
            run: 1,
            sender: 0,
            k: 0,
            t_ns: 5,
        };
        let mut f = String::new();
        write_chat(&mut f, Target::Group(9), s, 30);
        let v: serde_json::Value = serde_json::from_str(f.trim_end()).unwrap();
        assert_eq!(v["msgid"], 10);
        assert_eq!(v["groupid"], 9);
        assert_eq!(v["msg"].as_str().unwrap().len(), 30);
    }
}
