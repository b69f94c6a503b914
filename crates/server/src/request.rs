//! Decoding a client frame into a request: a JSON object with an integer
//! `msgid`, plus typed field accessors that turn every wrong or missing field
//! into errno 6 with a message naming the field.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::error::ServiceError;

/// A decoded request frame. Its field names and string values borrow from
/// the frame (copied only when they contain JSON escapes), so a chat message
/// costs one allocation to decode, not one per key and value as a
/// `serde_json::Value` map did.
#[derive(Debug)]
pub struct Request<'a> {
    /// The request's msgid.
    pub msgid: i64,
    /// The client's `reqid`, echoed in the reply (string or integer).
    pub reqid: Option<Value>,
    /// The fields in frame order; on a repeated key the last one counts.
    body: Vec<(Cow<'a, str>, Field<'a>)>,
}

/// One field's value, as far as any request needs to know it.
#[derive(Debug, PartialEq)]
enum Field<'a> {
    Null,
    Int(i64),
    /// An integer above `i64::MAX`: a valid `reqid`, no valid field.
    Big(u64),
    Str(Cow<'a, str>),
    /// A float, a boolean, an array or an object.
    Other,
}

/// A frame that is not a request: errno 6, with the reqid if one was readable.
#[derive(Debug)]
pub struct BadFrame {
    /// Why.
    pub error: ServiceError,
    /// The reqid, if the frame was an object that carried a valid one.
    pub reqid: Option<Value>,
}

impl<'a> Request<'a> {
    /// Parses one frame.
    pub fn parse(frame: &'a Bytes) -> Result<Request<'a>, BadFrame> {
        let bad = |msg: &'static str, reqid| BadFrame {
            error: ServiceError::malformed(msg),
            reqid,
        };
        // UTF-8 first, for the whole frame: serde_json checks it only in
        // the strings it reads, not in the values it skips.
        let Ok(text) = std::str::from_utf8(frame) else {
            return Err(bad("frame is not valid UTF-8", None));
        };
        let parsed = match flat::object(text) {
            Some(body) => Ok(Top::Object(body)),
            None => serde_json::from_str::<Top<'a>>(text),
        };
        let mut body = match parsed {
            Ok(Top::Object(body)) => body,
            Ok(Top::NotObject) => return Err(bad("frame is not a JSON object", None)),
            Err(_) => return Err(bad("frame is not valid JSON", None)),
        };
        // Like a JSON map, the last of repeated keys counts: take that one
        // out and drop the rest.
        let mut reqid = None;
        if let Some(i) = body.iter().rposition(|(k, _)| k == "reqid") {
            let (_, v) = body.remove(i);
            body.retain(|(k, _)| k != "reqid");
            reqid = match v {
                Field::Null => None,
                Field::Str(s) => Some(Value::String(s.into_owned())),
                Field::Int(n) => Some(Value::from(n)),
                Field::Big(n) => Some(Value::from(n)),
                Field::Other => {
                    return Err(bad("reqid must be a string or an integer", None));
                }
            };
        }
        let req = Request {
            msgid: 0,
            reqid,
            body,
        };
        match req.get("msgid") {
            Some(Field::Int(msgid)) => Ok(Request {
                msgid: *msgid,
                ..req
            }),
            _ => Err(bad("msgid must be an integer", req.reqid)),
        }
    }

    /// The field under `key` (the last one, if repeated).
    fn get(&self, key: &str) -> Option<&Field<'a>> {
        self.body
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Whether the field is present (and not null).
    pub fn has(&self, key: &str) -> bool {
        !matches!(self.get(key), None | Some(Field::Null))
    }

    /// An optional integer field.
    pub fn opt_int(&self, key: &'static str) -> Result<Option<i64>, ServiceError> {
        match self.get(key) {
            None | Some(Field::Null) => Ok(None),
            Some(Field::Int(v)) => Ok(Some(*v)),
            Some(_) => Err(ServiceError::malformed(format!(
                "field `{key}` must be an integer"
            ))),
        }
    }

    /// A required integer field.
    pub fn int(&self, key: &'static str) -> Result<i64, ServiceError> {
        self.opt_int(key)?
            .ok_or_else(|| ServiceError::malformed(format!("field `{key}` is required")))
    }

    /// A required integer field that may also come under an alias (`to` for `toid`).
    pub fn int_or(&self, key: &'static str, alias: &'static str) -> Result<i64, ServiceError> {
        match self.opt_int(key)? {
            Some(v) => Ok(v),
            None => self
                .opt_int(alias)?
                .ok_or_else(|| ServiceError::malformed(format!("field `{key}` is required"))),
        }
    }

    /// An optional string field.
    pub fn opt_str(&self, key: &'static str) -> Result<Option<&str>, ServiceError> {
        match self.get(key) {
            None | Some(Field::Null) => Ok(None),
            Some(Field::Str(s)) => Ok(Some(s)),
            Some(_) => Err(ServiceError::malformed(format!(
                "field `{key}` must be a string"
            ))),
        }
    }

    /// A required string field.
    pub fn str(&self, key: &'static str) -> Result<&str, ServiceError> {
        self.opt_str(key)?
            .ok_or_else(|| ServiceError::malformed(format!("field `{key}` is required")))
    }

    /// A string field whose length in characters must be within `min..=max`.
    pub fn chars(&self, key: &'static str, min: usize, max: usize) -> Result<&str, ServiceError> {
        let s = self.str(key)?;
        check_chars(key, s, min, max)?;
        Ok(s)
    }

    /// The classic client repeats its own id in `id` or `userid`; accept it
    /// when it names `me`, refuse it (errno 4) when it names anyone else.
    pub fn check_self(&self, me: i64) -> Result<(), ServiceError> {
        for key in ["id", "userid"] {
            if let Some(v) = self.opt_int(key)? {
                if v != me {
                    return Err(ServiceError::new(
                        chat_protocol::Errno::Forbidden,
                        "the id in the request is not yours",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The top level of a frame: an object's fields, or anything else.
enum Top<'a> {
    Object(Vec<(Cow<'a, str>, Field<'a>)>),
    NotObject,
}

impl<'de> de::Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Top<'de>, M::Error> {
                let mut body = Vec::with_capacity(m.size_hint().unwrap_or(8).min(16));
                while let Some(Key(k)) = m.next_key()? {
                    body.push((k, m.next_value()?));
                }
                Ok(Top::Object(body))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<Top<'de>, S::Error> {
                while s.next_element::<Checked>()?.is_some() {}
                Ok(Top::NotObject)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
            fn visit_str<E>(self, _: &str) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
            fn visit_unit<E>(self) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
        }
        d.deserialize_any(TopVisitor)
    }
}

/// A nested value no request reads (inside an array or object), parsed in
/// full and dropped: unlike `IgnoredAny`, serde_json then still refuses lone
/// surrogate escapes in it and nesting deeper than its limit of 128, as the
/// `Value` parse did. Requests hold no nested values, so this costs nothing
/// on the hot path.
type Checked = Value;

/// A field name, borrowed from the frame unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(CowStr).map(Key)
    }
}

/// Visits a string into a `Cow`, borrowed when serde_json can lend it.
struct CowStr;

impl<'de> Visitor<'de> for CowStr {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

impl<'de> de::Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_none<E>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_i64<E>(self, v: i64) -> Result<Field<'de>, E> {
                Ok(Field::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Field<'de>, E> {
                Ok(i64::try_from(v).map_or(Field::Big(v), Field::Int))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Field<'de>, E> {
                Ok(Field::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Field<'de>, E> {
                Ok(Field::Other)
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Owned(v)))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<Field<'de>, S::Error> {
                while s.next_element::<Checked>()?.is_some() {}
                Ok(Field::Other)
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Field<'de>, M::Error> {
                while m.next_entry::<Checked, Checked>()?.is_some() {}
                Ok(Field::Other)
            }
        }
        d.deserialize_any(FieldVisitor)
    }
}

/// The fast path for the frames clients send all the time: a flat object
/// whose strings have no escapes and whose numbers are plain integers.
///
/// Why: serde_json's visitor machinery cost ~3.4k instructions for a chat
/// frame of ~100 bytes, a tenth of the server's whole cost of a message.
/// This scanner reads the same frame in one pass. It gives up (`None`) on
/// anything outside its subset: escapes, control characters, floats,
/// exponents, `-0`, integers outside i64/u64, nested values, bad syntax;
/// serde_json then parses the frame as before, and its answer (or error)
/// stands. So on what it accepts it must agree with serde_json exactly,
/// which a property test checks.
mod flat {
    use super::Field;
    use std::borrow::Cow;

    /// The object's fields, in frame order, or `None` to fall back.
    pub(super) fn object(text: &str) -> Option<Vec<(Cow<'_, str>, Field<'_>)>> {
        let mut s = Scan {
            b: text.as_bytes(),
            text,
            i: 0,
        };
        let mut body = Vec::with_capacity(8);
        s.ws();
        s.eat(b'{')?;
        s.ws();
        if s.peek() == Some(b'}') {
            s.i += 1;
        } else {
            loop {
                let key = s.string()?;
                s.ws();
                s.eat(b':')?;
                s.ws();
                let value = s.value()?;
                body.push((Cow::Borrowed(key), value));
                s.ws();
                match s.peek()? {
                    b',' => {
                        s.i += 1;
                        s.ws();
                    }
                    b'}' => {
                        s.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        s.ws();
        (s.i == s.b.len()).then_some(body)
    }

    struct Scan<'a> {
        b: &'a [u8],
        text: &'a str,
        i: usize,
    }

    impl<'a> Scan<'a> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn eat(&mut self, c: u8) -> Option<()> {
            (self.peek()? == c).then(|| self.i += 1)
        }

        /// JSON's whitespace, as serde_json skips it.
        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
                self.i += 1;
            }
        }

        /// A string without escapes or control characters, borrowed. The
        /// text is valid UTF-8 and the quotes are ASCII, so the slice is too.
        fn string(&mut self) -> Option<&'a str> {
            self.eat(b'"')?;
            let start = self.i;
            let len = chat_protocol::push::plain_len(&self.b[start..]);
            self.i = start + len;
            self.eat(b'"')?;
            self.text.get(start..start + len)
        }

        fn value(&mut self) -> Option<Field<'a>> {
            match self.peek()? {
                b'"' => self.string().map(|s| Field::Str(Cow::Borrowed(s))),
                b'n' => self.word("null", Field::Null),
                b't' => self.word("true", Field::Other),
                b'f' => self.word("false", Field::Other),
                b'-' => {
                    self.i += 1;
                    // -0 is a float to serde_json, and i64::MIN is left to
                    // it too.
                    match self.digits()? {
                        0 => None,
                        m => i64::try_from(m).ok().map(|m| Field::Int(-m)),
                    }
                }
                b'0'..=b'9' => {
                    let n = self.digits()?;
                    Some(i64::try_from(n).map_or(Field::Big(n), Field::Int))
                }
                _ => None,
            }
        }

        fn word(&mut self, w: &str, f: Field<'a>) -> Option<Field<'a>> {
            let end = self.i + w.len();
            (self.b.get(self.i..end)? == w.as_bytes()).then(|| {
                self.i = end;
                f
            })
        }

        /// An unsigned integer as JSON writes it (no leading zeros), not
        /// followed by a fraction or an exponent; `None` if it overflows.
        fn digits(&mut self) -> Option<u64> {
            let start = self.i;
            let mut n: u64 = 0;
            while let Some(c @ b'0'..=b'9') = self.peek() {
                n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
                self.i += 1;
            }
            let len = self.i - start;
            if len == 0 || (len > 1 && self.b[start] == b'0') {
                return None;
            }
            match self.peek() {
                Some(b'.' | b'e' | b'E') => None,
                _ => Some(n),
            }
        }
    }
}

/// Length check in Unicode scalar values, errno 6 when out of range.
pub fn check_chars(key: &'static str, s: &str, min: usize, max: usize) -> Result<(), ServiceError> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(ServiceError::malformed(format!(
            "field `{key}` must be {min} to {max} characters"
        )));
    }
    Ok(())
}

/// Length check in bytes, errno 6 when out of range.
pub fn check_bytes(key: &'static str, s: &str, min: usize, max: usize) -> Result<(), ServiceError> {
    if s.len() < min || s.len() > max {
        return Err(ServiceError::malformed(format!(
            "field `{key}` must be {min} to {max} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &'static str) -> Result<Request<'static>, BadFrame> {
        // Leaked so the borrowed request can outlive this helper in a test.
        let frame: &'static Bytes = Box::leak(Box::new(Bytes::from_static(s.as_bytes())));
        Request::parse(frame)
    }

    #[test]
    fn fields_borrow_and_unescape() {
        let req = parse(r#"{"msgid":5,"msg":"a\"b\u00e9","toid":7,"reqid":"r1"}"#).unwrap();
        assert_eq!(req.msgid, 5);
        assert_eq!(req.reqid, Some(Value::from("r1")));
        assert_eq!(req.str("msg").unwrap(), "a\"bé");
        assert_eq!(req.int("toid").unwrap(), 7);
        assert!(!req.has("reqid"), "reqid is taken out of the body");
    }

    #[test]
    fn the_last_of_repeated_keys_counts() {
        let req =
            parse(r#"{"msgid":1,"reqid":1,"toid":2,"toid":3,"msgid":4,"reqid":"x"}"#).unwrap();
        assert_eq!(req.msgid, 4);
        assert_eq!(req.int("toid").unwrap(), 3);
        assert_eq!(req.reqid, Some(Value::from("x")));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let req =
            parse(r#"{"msgid":5,"toid":1.5,"msg":[1],"name":null,"big":18446744073709551615}"#)
                .unwrap();
        assert!(req
            .int("toid")
            .unwrap_err()
            .to_string()
            .contains("`toid` must be an integer"));
        assert!(req
            .str("msg")
            .unwrap_err()
            .to_string()
            .contains("`msg` must be a string"));
        assert!(req
            .str("name")
            .unwrap_err()
            .to_string()
            .contains("`name` is required"));
        assert!(req.int("big").is_err());
        assert!(req.has("msg") && !req.has("name"));
    }

    #[test]
    fn frames_that_are_not_requests() {
        let msg = |s| parse(s).unwrap_err().error.to_string();
        assert!(msg("[1,2]").contains("not a JSON object"));
        assert!(msg("\"x\"").contains("not a JSON object"));
        assert!(msg("{\"msgid\":").contains("not valid JSON"));
        assert!(msg(r#"{"msgid":1.0}"#).contains("msgid must be an integer"));
        assert!(msg(r#"{"msgid":1,"reqid":true}"#).contains("reqid must be"));
        let big = parse(r#"{"msgid":"x","reqid":18446744073709551615}"#).unwrap_err();
        assert_eq!(
            big.reqid,
            Some(Value::from(u64::MAX)),
            "a readable reqid is echoed"
        );
        assert!(msg(r#"{"msgid":1,"x":["\ud800"]}"#).contains("not valid JSON"));
        let deep = format!(
            "{{\"msgid\":1,\"x\":{}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        let deep: &'static str = Box::leak(deep.into_boxed_str());
        assert!(msg(deep).contains("not valid JSON"), "nesting is limited");
        for frame in [
            &b"{\"msgid\":1,\"x\":[\"\xff\"]}"[..],
            b"[\"\xff\"]",
            b"{\"a\":\"\xff\"}",
        ] {
            let frame: &'static Bytes = Box::leak(Box::new(Bytes::from_static(frame)));
            let err = Request::parse(frame).unwrap_err().error.to_string();
            assert!(err.contains("UTF-8"), "{err}");
        }
    }

    /// The fast path against serde_json, the reference it must match.
    mod fast_path {
        use super::super::*;
        use proptest::prelude::*;

        type Body<'a> = Vec<(Cow<'a, str>, Field<'a>)>;

        fn reference(text: &str) -> Option<Body<'_>> {
            match serde_json::from_str::<Top<'_>>(text) {
                Ok(Top::Object(body)) => Some(body),
                _ => None,
            }
        }

        /// Whatever the fast path accepts, serde_json reads the same way.
        fn agrees(text: &str) -> Result<(), TestCaseError> {
            if let Some(fast) = flat::object(text) {
                prop_assert_eq!(Some(fast), reference(text), "{:?}", text);
            }
            Ok(())
        }

        fn ws() -> impl Strategy<Value = String> {
            "[ \t\r\n]{0,2}"
        }

        /// A value the fast path should take.
        fn plain_value() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9 é😀<>/']{0,10}".prop_map(|s| format!("\"{s}\"")),
                (1..=i64::MAX).prop_map(|n| format!("-{n}")),
                any::<u64>().prop_map(|n| n.to_string()),
                Just("null".to_owned()),
                Just("true".to_owned()),
                Just("false".to_owned()),
            ]
        }

        /// A well-formed flat object of plain values, with whitespace.
        fn plain_object() -> impl Strategy<Value = String> {
            object_of(plain_value())
        }

        /// A value the fast path may or may not take: escapes, control
        /// characters, numbers of any size and form.
        fn any_value() -> impl Strategy<Value = String> {
            prop_oneof![
                plain_value(),
                "([a-z\\x00-\\x1f\\x7f é]|\\\\[\"\\\\/bfnrtx]|\\\\u[0-9a-fA-F]{4}){0,5}"
                    .prop_map(|s| format!("\"{s}\"")),
                any::<u128>().prop_map(|n| n.to_string()),
                any::<i128>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| n.to_string()),
                prop::sample::select(vec!["-0", "01", "-01", "1.5", "2e3", "1E2", "[]", "{}"])
                    .prop_map(str::to_owned),
            ]
        }

        /// A flat object of values from `value`.
        fn object_of(value: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
            proptest::collection::vec(("[a-z]{1,6}", value, ws(), ws()), 0..6).prop_flat_map(
                |fields| {
                    let inner: Vec<String> = fields
                        .into_iter()
                        .map(|(k, v, a, b)| format!("{a}\"{k}\"{b}:{a}{v}{b}"))
                        .collect();
                    (ws(), ws()).prop_map(move |(a, b)| format!("{a}{{{}}}{b}", inner.join(",")))
                },
            )
        }

        /// Pieces that are valid JSON only in some places, or not at all.
        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                plain_value(),
                "[a-z\\\\\"\\x00-\\x1f]{0,4}".prop_map(|s| format!("\"{s}\"")),
                any::<u128>().prop_map(|n| n.to_string()),
                any::<i128>().prop_map(|n| n.to_string()),
                prop::sample::select(vec![
                    "{", "}", ",", ":", "\"", "\\", " ", "[1]", "{}", "-0", "-", "01", "1.5",
                    "2e3", "1E2", "nul", "truex", "\\u00e9", "\u{7f}", "\u{0}",
                ])
                .prop_map(str::to_owned),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Plain objects go the fast way, and read as serde_json reads them.
            #[test]
            fn takes_plain_objects(text in plain_object()) {
                prop_assert!(flat::object(&text).is_some(), "fell back on {:?}", text);
                agrees(&text)?;
            }

            /// Objects of any values: either path, one answer.
            #[test]
            fn any_values_agree(text in object_of(any_value())) {
                agrees(&text)?;
            }

            /// A plain object with a piece put in anywhere: either path, one answer.
            #[test]
            fn near_misses_agree(text in plain_object(), at in any::<prop::sample::Index>(), p in piece()) {
                let mut t = text.clone();
                let cut = t.char_indices().map(|(i, _)| i).chain([t.len()]).collect::<Vec<_>>();
                t.insert_str(*at.get(&cut), &p);
                agrees(&t)?;
            }

            /// Strings of pieces alone.
            #[test]
            fn soup_agrees(parts in proptest::collection::vec(piece(), 0..12)) {
                agrees(&parts.concat())?;
            }
        }

        #[test]
        fn edge_cases_agree_and_fall_back_where_they_must() {
            for text in [
                r#"{"a":-0}"#,
                r#"{"a":-9223372036854775808}"#,
                r#"{"a":-9223372036854775809}"#,
                r#"{"a":18446744073709551616}"#,
                r#"{"a":01}"#,
                r#"{"a":1.0}"#,
                r#"{"a":1e2}"#,
                r#"{"a":"\u00e9"}"#,
                "{\"a\":\"\u{1}\"}",
                "{\"a\":\"x\u{1f}\"}",
                "{\"a\u{10}\":1}",
                r#"{"a":[]}"#,
                r#"{"a":1,}"#,
                r#"{,}"#,
                r#"{"a"1}"#,
                r#"{"a":1}x"#,
                r#"{"a":1} {"#,
            ] {
                assert!(flat::object(text).is_none(), "{text} must fall back");
            }
            let ok = r#" {"msgid":6,"toid":2,"msg":"hi é","reqid":"r","x":null,"y":true} "#;
            assert_eq!(flat::object(ok), reference(ok));
            assert!(flat::object(ok).is_some());
            assert_eq!(flat::object("{}"), Some(vec![]));
            let big = r#"{"a":18446744073709551615}"#;
            assert_eq!(flat::object(big), reference(big));
            assert_eq!(
                flat::object(big),
                Some(vec![(Cow::Borrowed("a"), Field::Big(u64::MAX))])
            );
        }
    }
}
