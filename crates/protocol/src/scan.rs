//! Reading a few fields straight out of server frames, without parsing
//! them: for the load generator's hot path.
//!
//! Only for frames whose shape the caller knows (server replies, and pushes
//! of text that needs no JSON escaping); anything else goes through
//! `serde_json`.

/// Position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
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

/// The raw string value of `key`, if it needed no escapes.
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

/// The msgid of a server frame. Pushes start with `{"msgid":`; replies
/// have sorted keys, so fall back to a scan.
pub fn msgid(frame: &[u8]) -> Option<i64> {
    const PREFIX: &[u8] = b"{\"msgid\":";
    if frame.starts_with(PREFIX) {
        return parse_int(&frame[PREFIX.len()..]);
    }
    int_field(frame, "msgid")
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
}
