//! The send stamp each benchmark message carries in its text (run, sender,
//! counter, send time), and the chat request frames that carry it, written
//! without serde on the hot path.

use std::fmt::Write as _;

use chat_protocol::request::write_plain_chat;
use chat_protocol::scan::parse_int;
use chat_protocol::ChatTarget;

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

/// Appends a complete ONE_CHAT or GROUP_CHAT request frame (LF-terminated)
/// whose text is `stamp`, padded to `size` bytes. Stamps need no JSON
/// escaping.
pub fn write_chat(out: &mut String, target: ChatTarget, stamp: Stamp, size: usize) {
    write_plain_chat(out, target, |text| write_stamp(text, stamp, size));
}

/// Gives the chat frame [`write_chat`] just appended a `cmid` unique to
/// this run, sender and message, as real clients do.
pub fn add_cmid(out: &mut String, run: u64, sender: usize, k: u64) {
    use std::fmt::Write as _;
    // The frame ends with `}` and a newline: the field goes before them.
    debug_assert!(out.ends_with("}\n"));
    out.truncate(out.len() - 2);
    let _ = writeln!(out, ",\"cmid\":\"{run:x}.{sender}.{k}\"}}");
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn cmids_are_added_to_the_last_frame() {
        let s = Stamp {
            run: 0xabc,
            sender: 7,
            k: 12,
            t_ns: 5,
        };
        let mut f = String::new();
        write_chat(&mut f, ChatTarget::User(3), s, 40);
        write_chat(&mut f, ChatTarget::User(3), s, 40);
        add_cmid(&mut f, 0xabc, 7, 12);
        let frames: Vec<serde_json::Value> = f
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(frames.len(), 2);
        assert!(frames[0].get("cmid").is_none());
        assert_eq!(frames[1]["cmid"], "abc.7.12");
        assert_eq!(frames[1]["toid"], 3);
        assert!(f.ends_with("}\n"));
        assert!("abc.7.12".len() <= chat_protocol::limits::MAX_CMID_BYTES);
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
        write_chat(&mut f, ChatTarget::Group(9), s, 30);
        let v: serde_json::Value = serde_json::from_str(f.trim_end()).unwrap();
        assert_eq!(v["msgid"], 10);
        assert_eq!(v["groupid"], 9);
        assert_eq!(v["msg"].as_str().unwrap().len(), 30);
    }
}
