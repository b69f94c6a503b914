//! A protocol fuzzer over real sockets (issue 13), on stable Rust with
//! proptest. Each case opens one connection to an in-process server, over
//! TCP or over the WebSocket, sometimes logs in as a fuzz user first, and
//! sends a few pieces: well-formed requests of every msgid with random field
//! values (right and wrong types, extremes, unicode, extra fields), mutations
//! of them (byte flips, truncation, duplication, splicing, inserted NUL, LF,
//! CR and invalid UTF-8), byte soup, and specials (nesting 10,000 deep,
//! frames at the 64 KiB limit and just over it). TCP bytes go out cut at
//! random points; WebSocket pieces go out as text messages, and now and then
//! as a binary one.
//!
//! What every case asserts, from docs/protocol.md:
//! - every frame the server sends is a JSON object with an integer msgid the
//!   server may send; ERROR carries errno 1..=10 (never the reserved 2) and
//!   an errmsg; an ACK has errno 0 and names a request; acks' errnos are
//!   known ones;
//! - the connection closes exactly when the protocol says: after a frame over
//!   the limit (ERROR errno 8, as the last frame) or a binary WebSocket
//!   message (ERROR errno 6); otherwise it stays open and answers a PING sent
//!   after the fuzz (so nothing hangs either);
//! - afterwards the server answers a PING on a fresh connection, no server
//!   task panicked, and a control pair of level-2 users (one on TCP, one on
//!   the WebSocket, never used by the fuzz) still exchange a message, which
//!   arrives once and in order, and HISTORY of their conversation holds
//!   exactly what they sent. At the end the whole history is compared and
//!   the server shuts down cleanly.
//!
//! Budget: `CLUSTERCHAT_FUZZ_CASES` cases (default 2500, some 35 s on two
//! cores in a debug build; 0: no limit) or `CLUSTERCHAT_FUZZ_SECS` seconds
//! (default 50, for a loaded machine), whichever ends first.
//! `CLUSTERCHAT_FUZZ_SEED` picks the seed (default fixed, so CI runs the same
//! inputs); a failure prints the seed of its chunk, which replays it, the
//! shrunk case, and writes the case in full under `target/tmp/fuzz-failures/`.
//! `scripts/fuzz.sh MINUTES` runs it longer.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chat_protocol::limits::MAX_FRAME;
use clusterchat::config::Quotas;
use clusterchat::Config;
use common::*;
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config as RunConfig, RngAlgorithm, TestError, TestRng, TestRunner};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Fuzz users: each case may log in as one (password "pw").
const FUZZ_USERS: usize = 3;
/// The request msgids of the protocol.
const REQUESTS: [i64; 15] = [1, 3, 4, 6, 7, 8, 9, 10, 13, 14, 15, 16, 17, 18, 22];
/// How long one fuzz connection may take to answer its closing PING.
const CASE_WAIT: Duration = Duration::from_secs(10);
/// Cases per proptest run; each run has a seed of its own.
const CHUNK: u32 = 100;

// ---------------------------------------------------------------------------
// What a case is

/// How a piece ends on the wire.
#[derive(Clone, Copy, Debug)]
enum End {
    Lf,
    Nul,
    CrLf,
    /// No terminator: glued to the next piece.
    Glued,
}

impl End {
    fn bytes(self) -> &'static [u8] {
        match self {
            End::Lf => b"\n",
            End::Nul => b"\0",
            End::CrLf => b"\r\n",
            End::Glued => b"",
        }
    }
}

/// One frame's worth of fuzz (one message over the WebSocket).
#[derive(Clone)]
struct Piece {
    bytes: Vec<u8>,
    end: End,
    /// Over the WebSocket: sent as a binary message.
    binary: bool,
}

/// One fuzz case: a connection and what goes over it.
#[derive(Clone)]
struct Case {
    ws: bool,
    /// Log in first as this fuzz user at this level.
    login: Option<(usize, u8)>,
    pieces: Vec<Piece>,
    /// Where the TCP stream is cut into writes.
    cuts: Vec<Index>,
}

/// `b` as a Rust byte string literal, the middle of a long one elided
/// unless `full`.
fn literal(b: &[u8], full: bool) -> String {
    let esc = |b: &[u8]| b.escape_ascii().to_string();
    if full || b.len() <= 240 {
        format!("b\"{}\"", esc(b))
    } else {
        format!(
            "b\"{}\" ..{} bytes.. b\"{}\"",
            esc(&b[..160]),
            b.len() - 220,
            esc(&b[b.len() - 60..])
        )
    }
}

impl Case {
    fn render(&self, full: bool) -> String {
        let mut s = format!(
            "Case {{ transport: {}, login: {:?}, cuts: {:?}, pieces: [\n",
            if self.ws { "WebSocket" } else { "TCP" },
            self.login
                .map(|(u, v)| format!("fuzz user {u} at level {v}")),
            self.cuts,
        );
        for p in &self.pieces {
            s += &format!("  {},\n", p.render(full, self.ws));
        }
        s + "] }"
    }

    /// The TCP byte stream: the pieces, then a PING with `nonce`, on a line
    /// of its own.
    fn tcp_stream(&self, nonce: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.pieces {
            out.extend_from_slice(&p.bytes);
            out.extend_from_slice(p.end.bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(&ping(nonce));
        out.push(b'\n');
        out
    }

    /// The WebSocket messages: the pieces, then a PING with `nonce`.
    fn ws_messages(&self, nonce: &str) -> Vec<Message> {
        let mut out: Vec<Message> = self
            .pieces
            .iter()
            .map(|p| {
                let mut b = p.bytes.clone();
                b.extend_from_slice(p.end.bytes());
                if p.binary {
                    Message::binary(b)
                } else {
                    Message::text(String::from_utf8_lossy(&b).into_owned())
                }
            })
            .collect();
        out.push(Message::text(
            String::from_utf8(ping(nonce)).expect("ASCII"),
        ));
        out
    }
}

impl Piece {
    fn render(&self, full: bool, ws: bool) -> String {
        format!(
            "{} + {:?}{}",
            literal(&self.bytes, full),
            self.end,
            if self.binary && ws { " (binary)" } else { "" }
        )
    }
}

impl fmt::Debug for Piece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false, true))
    }
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

fn ping(nonce: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"msgid": 18, "reqid": nonce})).expect("serialise")
}

/// The errno the server must close a TCP connection with after `stream`:
/// 8 if a frame is over the limit (a CR before its terminator not counted),
/// else none. The codec's rule, docs/protocol.md "Connections and frames".
fn tcp_close(stream: &[u8]) -> Option<i64> {
    stream.split(|&b| b == b'\n' || b == 0).find_map(|f| {
        let len = match f.last() {
            Some(b'\r') if f.len() <= MAX_FRAME + 1 => f.len() - 1,
            _ => f.len(),
        };
        (len > MAX_FRAME).then_some(8)
    })
}

/// The WebSocket layer's own message limit (see `http/mod.rs`): a message
/// over it is cut off unread, as a frame too large, whatever its kind.
const WS_LIMIT: usize = 2 * MAX_FRAME + 1024;

/// The same over the WebSocket: a binary message closes with errno 6, a
/// text message over the limit (its trailing LF, CR and NUL not counted)
/// with errno 8, and so does any message over [`WS_LIMIT`]; the first such
/// message decides.
fn ws_close(msgs: &[Message]) -> Option<i64> {
    msgs.iter().find_map(|m| match m {
        _ if m.len() > WS_LIMIT => Some(8),
        Message::Binary(_) => Some(6),
        Message::Text(t) => {
            let len = t.trim_end_matches(['\n', '\r', '\0']).len();
            (len > MAX_FRAME).then_some(8)
        }
        _ => None,
    })
}

// ---------------------------------------------------------------------------
// Strategies

/// Integers: mostly ids that exist (users and groups are numbered from 1),
/// then extremes, then numbers that are not integers.
fn int() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => (0i64..12).prop_map(Value::from),
        1 => select(vec![-1i64, i64::MAX, i64::MIN, 1 << 31, 1 << 53]).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => select(vec![json!(u64::MAX), json!(1.5), json!(-0.0), json!(1e300), json!(3.0)]),
    ]
    .boxed()
}

/// Strings that names, passwords and messages are checked against.
const ODD_STRINGS: &[&str] = &[
    "\u{0}",
    "\u{202e}evil",
    "\u{1F469}\u{200D}\u{1F469}\u{200D}\u{1F467}",
    "\u{feff}",
    " padded",
    "padded ",
    "tab\there",
    "line\nbreak",
    "\u{2028}",
    "\u{FF21}lice",
    "\u{0410}lice",
    "\u{115f}",
    "\u{2800}",
    "a\u{0301}",
    "\u{10ffff}",
    "\u{7f}\u{85}",
    "\\u0000",
    "null",
    "{\"msgid\":18}",
];

/// A string for a field whose limit is `limit` (characters, or bytes if
/// `bytes`): ordinary, unicode, control characters, odd, and around the limit.
fn text(limit: usize, bytes: bool) -> BoxedStrategy<String> {
    let around = (
        select(vec!["x", "\u{e9}", "\u{1F600}", "\u{200b}"]),
        -1i64..=1,
    )
        .prop_map(move |(c, d)| {
            let n = if bytes { limit / c.len() } else { limit };
            c.repeat(n.saturating_add_signed(d as isize))
        });
    prop_oneof![
        3 => "[a-z]{1,10}",
        2 => "\\PC{0,24}",
        1 => "(?s).{0,16}",
        1 => Just(String::new()),
        1 => Just("pw".to_owned()),
        1 => select(ODD_STRINGS).prop_map(str::to_owned),
        1 => around,
    ]
    .boxed()
}

/// Any JSON value, nested a little.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        int(),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// What a field holds.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    /// A string limited to this many characters (or bytes).
    Str(usize, bool),
    Version,
}

/// The fields each request reads (docs/protocol.md, Requests and Limits).
fn fields(msgid: i64) -> &'static [(&'static str, Kind)] {
    use Kind::*;
    match msgid {
        1 => &[
            ("id", Int),
            ("password", Str(128, true)),
            ("token", Str(512, true)),
            ("v", Version),
            ("last_seq", Int),
        ],
        3 => &[("id", Int)],
        4 => &[("name", Str(50, false)), ("password", Str(128, true))],
        6 => &[
            ("toid", Int),
            ("to", Int),
            ("msg", Str(16 * 1024, true)),
            ("cmid", Str(64, true)),
        ],
        7 | 13 => &[("friendid", Int)],
        8 => &[
            ("groupname", Str(50, false)),
            ("groupdesc", Str(200, false)),
        ],
        9 | 14 | 15 => &[("groupid", Int)],
        10 => &[
            ("groupid", Int),
            ("msg", Str(16 * 1024, true)),
            ("cmid", Str(64, true)),
        ],
        16 => &[("seq", Int)],
        17 => &[
            ("toid", Int),
            ("groupid", Int),
            ("before", Int),
            ("limit", Int),
        ],
        22 => &[("name", Str(50, false))],
        _ => &[],
    }
}

/// A value for a field of `kind`: mostly of the right type; if `clean`,
/// always, and plausible (ids that exist, short names), so that requests
/// get past validation.
fn field(kind: Kind, clean: bool) -> BoxedStrategy<Value> {
    if clean {
        return match kind {
            Kind::Int => (0i64..12).prop_map(Value::from).boxed(),
            Kind::Str(..) => prop_oneof![
                3 => "[a-z]{1,10}",
                1 => "\\PC{1,20}",
                1 => Just("pw".to_owned()),
            ]
            .prop_map(Value::from)
            .boxed(),
            Kind::Version => select(vec![1, 2]).prop_map(Value::from).boxed(),
        };
    }
    let right = match kind {
        Kind::Int => int(),
        Kind::Str(n, bytes) => text(n, bytes).prop_map(Value::from).boxed(),
        Kind::Version => prop_oneof![Just(json!(1)), Just(json!(2)), int()].boxed(),
    };
    prop_oneof![5 => right, 1 => any_json()].boxed()
}

/// A request of any msgid (mostly real ones) with its fields, each maybe
/// missing; half of them clean (see [`field`]), the others with fields
/// maybe mistyped, extreme or odd, and extra fields; maybe a reqid.
fn request() -> impl Strategy<Value = Value> {
    let msgid = prop_oneof![
        14 => select(REQUESTS.to_vec()).prop_map(Value::from),
        1 => int(),
        1 => any_json(),
    ];
    let extra_key = prop_oneof![
        3 => select(vec![
            "id", "userid", "name", "time", "msgid", "toid", "groupid", "v", "mid", "seq",
            "errno", "",
        ])
        .prop_map(str::to_owned)
        .boxed(),
        1 => "\\PC{0,8}".boxed(),
    ];
    let reqid = prop_oneof![
        3 => "[a-z0-9]{0,8}".prop_map(Value::from).boxed(),
        2 => int(),
        1 => any_json(),
    ];
    (msgid, any::<bool>())
        .prop_flat_map(move |(m, clean)| {
            let vals: Vec<_> = fields(m.as_i64().unwrap_or(0))
                .iter()
                .map(|&(_, k)| prop::option::weighted(0.85, field(k, clean)))
                .collect();
            let extras = if clean { 0..1 } else { 0..3 };
            (
                Just(m),
                vals,
                prop::option::weighted(0.3, reqid.clone()),
                prop::collection::vec((extra_key.clone(), any_json()), extras),
            )
        })
        .prop_map(|(m, vals, reqid, extra)| {
            let mut o = serde_json::Map::new();
            o.insert("msgid".into(), m.clone());
            for (&(name, _), v) in fields(m.as_i64().unwrap_or(0)).iter().zip(vals) {
                if let Some(v) = v {
                    o.insert(name.into(), v);
                }
            }
            if let Some(r) = reqid {
                o.insert("reqid".into(), r);
            }
            for (k, v) in extra {
                o.entry(k).or_insert(v);
            }
            Value::Object(o)
        })
}

/// A request on the wire: compact, sometimes pretty-printed (line breaks
/// inside, so over TCP it is many frames).
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    (request(), prop::bool::weighted(0.02)).prop_map(|(v, pretty)| {
        if pretty {
            serde_json::to_vec_pretty(&v)
        } else {
            serde_json::to_vec(&v)
        }
        .expect("serialise")
    })
}

/// One change to a frame's bytes.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Duplicate(Index, Index),
    Delete(Index, Index),
    /// Keep this much of the frame, then the other frame from here.
    Splice(Index, Index),
    Insert(Index, &'static [u8]),
}

/// Bytes worth inserting: terminators, invalid UTF-8 (a lone byte, a lone
/// lead byte, a surrogate, an overlong form, past U+10FFFF), JSON syntax.
const INSERTS: &[&[u8]] = &[
    b"\0",
    b"\n",
    b"\r",
    b"\r\n",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xf4\x90\x80\x80",
    b"\"",
    b"{",
    b"}",
    b"[",
    b",",
    b"\\",
    b"\\u",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Delete(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Splice(a, b)),
        3 => (any::<Index>(), select(INSERTS)).prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

/// The range between two indexes into `len` bytes.
fn range(a: &Index, b: &Index, len: usize) -> std::ops::Range<usize> {
    let (a, b) = (a.index(len + 1), b.index(len + 1));
    a.min(b)..a.max(b)
}

fn mutate(mut f: Vec<u8>, other: &[u8], ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let len = f.len();
        match m {
            Mutation::Flip(i, b) if len > 0 => f[i.index(len)] = *b,
            Mutation::Flip(..) => {}
            Mutation::Truncate(i) => f.truncate(i.index(len + 1)),
            Mutation::Duplicate(a, b) => {
                let r = range(a, b, len);
                let dup = f[r.clone()].to_vec();
                f.splice(r.end..r.end, dup);
            }
            Mutation::Delete(a, b) => {
                f.drain(range(a, b, len));
            }
            Mutation::Splice(a, b) => {
                f.truncate(a.index(len + 1));
                f.extend_from_slice(&other[b.index(other.len() + 1)..]);
            }
            Mutation::Insert(i, b) => {
                let at = i.index(len + 1);
                f.splice(at..at, b.iter().copied());
            }
        }
    }
    f
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        request_bytes(),
        request_bytes(),
        prop::collection::vec(mutation(), 1..5),
    )
        .prop_map(|(f, other, ms)| mutate(f, &other, &ms))
}

/// Random bytes; or random JSON-ish bytes, which get further into parsers.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    let jsonish: Vec<u8> = b"{}[]\":,.-+0123456789eEmsgidtrufalsn \\\n\r\0\xff".to_vec();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        prop::collection::vec(select(jsonish), 0..200),
    ]
}

/// Frames that are odd on purpose.
const ODD_FRAMES: &[&[u8]] = &[
    b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 6000",
    b"GET /ws HTTP/1.1",
    b"\xef\xbb\xbf{\"msgid\":18}",
    b"{\"msgid\":18,\"msgid\":6}",
    b"{\"msgid\":6,\"toid\":3,\"toid\":\"x\",\"msg\":\"dup\"}",
    b"{\"msgid\":1e400}",
    b"{\"msgid\":18,\"reqid\":1e999}",
    b"{\"msgid\":-0}",
    b"{\"msgid\":18.0}",
    b"{\"msgid\":0x12}",
    b"{\"msgid\":18,}",
    b"{\"msgid\":18}}",
    b"{\"msgid\":18}{\"msgid\":18}",
    b"{\"msgid\":\"\\ud800\"}",
    b"{\"msgid\":18,\"reqid\":\"\\udc00\\ud800\"}",
    b"{\"msgid\":4,\"name\":\"\\ud83d\",\"password\":\"pw\"}",
    b"{\"msgid\":6,\"toid\":3,\"msg\":\"\\u0000\"}",
    b"{\"msgid\":18,\"reqid\":18446744073709551616}",
    b"{\"msgid\":17,\"toid\":3,\"limit\":0}",
    b"{\"msgid\":17,\"toid\":3,\"before\":-1,\"limit\":-1}",
    b"{\"msgid\":16,\"seq\":9223372036854775807}",
    b"{\"msgid\":1,\"id\":3,\"password\":\"pw\",\"v\":2,\"last_seq\":-1}",
];

/// Nesting `n` deep: arrays, objects, inside a request, or unclosed.
fn nested(n: usize, how: u8) -> Vec<u8> {
    match how {
        0 => format!("{}{}", "[".repeat(n), "]".repeat(n)),
        1 => format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)),
        2 => format!("{{\"msgid\":18,\"x\":{}{}}}", "[".repeat(n), "]".repeat(n)),
        _ => "[{\"a\":".repeat(n),
    }
    .into_bytes()
}

/// A PING padded to exactly `len` bytes with `pad` (ASCII, or an escape).
fn padded_ping(len: usize, pad: &str) -> Vec<u8> {
    let mut f = br#"{"msgid":18,"pad":""#.to_vec();
    while f.len() + pad.len() + 2 <= len {
        f.extend_from_slice(pad.as_bytes());
    }
    while f.len() + 2 < len {
        f.push(b'x');
    }
    f.extend_from_slice(b"\"}");
    f
}

fn special() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => select(ODD_FRAMES).prop_map(<[u8]>::to_vec),
        2 => (select(vec![127usize, 128, 129, 1000, 10_000]), 0u8..4)
            .prop_map(|(n, how)| nested(n, how)),
        2 => (-2i64..=2, select(vec!["x", "\\u0001"]))
            .prop_map(|(d, pad)| padded_ping(MAX_FRAME.saturating_add_signed(d as isize), pad)),
        1 => Just(vec![b'{'; 2 * MAX_FRAME + 2048]),
    ]
}

fn piece() -> impl Strategy<Value = Piece> {
    let body = prop_oneof![
        10 => request_bytes().boxed(),
        5 => mutated().boxed(),
        1 => soup().boxed(),
        1 => special().boxed(),
    ];
    let end = prop_oneof![
        10 => Just(End::Lf),
        5 => Just(End::Nul),
        4 => Just(End::CrLf),
        1 => Just(End::Glued),
    ];
    (body, end, prop::bool::weighted(0.03)).prop_map(|(bytes, end, binary)| Piece {
        bytes,
        end,
        binary,
    })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::bool::weighted(0.35),
        prop::option::weighted(0.6, (0..FUZZ_USERS, 1u8..=2)),
        prop::collection::vec(piece(), 1..8),
        prop::collection::vec(any::<Index>(), 0..4),
    )
        .prop_map(|(ws, login, pieces, cuts)| Case {
            ws,
            login,
            pieces,
            cuts,
        })
}

// ---------------------------------------------------------------------------
// Checking what the server sends

/// Checks one frame the server sent against the protocol; returns it parsed.
fn check_frame(raw: &[u8]) -> Result<Value, String> {
    let text = String::from_utf8_lossy(raw);
    let v: Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON ({e}): {text}"))?;
    let o = v.as_object().ok_or(format!("not a JSON object: {text}"))?;
    let msgid = o
        .get("msgid")
        .and_then(Value::as_i64)
        .ok_or(format!("no integer msgid: {text}"))?;
    let errno = o.get("errno").map(|e| e.as_i64().unwrap_or(-1));
    let errmsg_ok = o
        .get("errmsg")
        .and_then(Value::as_str)
        .is_some_and(|m| !m.is_empty());
    let known_errno = |e: i64| (1..=10).contains(&e) && e != 2;
    let ok = match msgid {
        // LOGIN_ACK, REG_ACK: errno 0, or an errno with errmsg.
        2 | 5 => match errno {
            Some(0) => o.get("id").is_some_and(Value::is_i64),
            Some(e) => known_errno(e) && errmsg_ok,
            None => false,
        },
        11 => errno.is_some_and(known_errno) && errmsg_ok && o.get("re").is_none_or(Value::is_i64),
        12 => {
            errno == Some(0)
                && o.get("re")
                    .and_then(Value::as_i64)
                    .is_some_and(|re| REQUESTS.contains(&re))
        }
        19 => o.keys().all(|k| k == "msgid" || k == "reqid"),
        6 | 10 => {
            o.get("id").is_some_and(Value::is_i64) && o.get("msg").is_some_and(Value::is_string)
        }
        20 => matches!(
            o.get("state").and_then(Value::as_str),
            Some("online" | "offline")
        ),
        21 => errmsg_ok,
        23 => o.get("event").is_some_and(Value::is_string),
        _ => false,
    };
    let reqid_ok = o
        .get("reqid")
        .is_none_or(|r| r.is_string() || r.is_i64() || r.is_u64());
    if ok && reqid_ok {
        Ok(v)
    } else {
        Err(format!("breaks the protocol: {text}"))
    }
}

/// What reading a connection came to.
#[derive(Debug, PartialEq)]
enum Got {
    Frame(Vec<u8>),
    Closed,
    Timeout,
}

/// The read half of a fuzz connection.
enum Reader {
    Tcp(OwnedReadHalf, Vec<u8>),
    Ws(futures_util::stream::SplitStream<WebSocket>),
}

impl Reader {
    async fn next(&mut self, deadline: tokio::time::Instant) -> Result<Got, String> {
        match self {
            Reader::Tcp(rd, buf) => loop {
                if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let mut line: Vec<u8> = buf.drain(..=i).collect();
                    line.pop();
                    return Ok(Got::Frame(line));
                }
                buf.reserve(64 * 1024);
                match tokio::time::timeout_at(deadline, rd.read_buf(buf)).await {
                    Err(_) => return Ok(Got::Timeout),
                    Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => return Ok(Got::Closed),
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        return Err(format!(
                            "the server closed after an unterminated frame: {}",
                            literal(buf, false)
                        ))
                    }
                    Ok(Ok(_)) => {}
                }
            },
            Reader::Ws(rx) => loop {
                match tokio::time::timeout_at(deadline, rx.next()).await {
                    Err(_) => return Ok(Got::Timeout),
                    Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                        return Ok(Got::Closed)
                    }
                    Ok(Some(Ok(Message::Text(t)))) => return Ok(Got::Frame(t.as_bytes().to_vec())),
                    Ok(Some(Ok(Message::Binary(b)))) => {
                        return Err(format!("the server sent a binary message: {b:?}"))
                    }
                    Ok(Some(Ok(_))) => {}
                }
            },
        }
    }

    /// The next frame, checked; an error if the connection closed or hung.
    async fn frame(&mut self) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        match self.next(deadline).await? {
            Got::Frame(f) => check_frame(&f),
            g => Err(format!("expected a frame, got {g:?}")),
        }
    }
}

// ---------------------------------------------------------------------------
// Running a case

/// What the fuzz saw, for the summary.
#[derive(Default)]
struct Stats {
    cases: u64,
    ws: u64,
    logged_in: u64,
    pieces: u64,
    bytes: u64,
    replies: u64,
    /// Replies by msgid, and ERRORs by errno (as 1100 + errno).
    kinds: BTreeMap<i64, u64>,
    /// Closes the protocol asked for, by errno.
    closes: BTreeMap<i64, u64>,
}

/// The server and the users the cases use.
struct Env {
    srv: TestServer,
    /// Replaced by new users every chunk, so that their login acks (which
    /// list every friend and group, with members) stay small.
    fuzz_ids: Mutex<Vec<i64>>,
}

/// A fuzz connection's write half, kept open until the reading is done
/// (dropping it would half-close the connection).
type Keep = Box<dyn std::any::Any + Send>;

/// Tells every case attempt (shrinking reruns too) apart.
static NONCE: AtomicU64 = AtomicU64::new(0);

/// Panics on the runtime's worker threads, where the server's tasks run
/// (this file's own tasks there never panic).
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

async fn run_case(env: &Env, case: &Case, stats: &Mutex<Stats>) -> Result<(), String> {
    let nonce = format!("fz-end-{}", NONCE.fetch_add(1, Ordering::Relaxed));
    let fuzz_ids = env.fuzz_ids.lock().expect("fuzz ids").clone();
    let login = case.login.map(|(u, v)| {
        let mut req = json!({"msgid": 1, "id": fuzz_ids[u], "password": "pw"});
        if v == 2 {
            // Confirms the backlog so that it does not grow from case to case.
            req["v"] = json!(2);
            req["last_seq"] = json!(i64::MAX);
        }
        req.to_string()
    });
    let (mut reader, writer, expect_close, sent) = if case.ws {
        let ws = ws_connect(env.srv.http, None).await?;
        let (mut tx, rx) = ws.split();
        let mut reader = Reader::Ws(rx);
        if let Some(l) = &login {
            tx.send(Message::text(l.clone()))
                .await
                .map_err(|e| e.to_string())?;
            check_login_ack(reader.frame().await?)?;
        }
        let msgs = case.ws_messages(&nonce);
        let expect = ws_close(&msgs);
        let sent: usize = msgs.iter().map(Message::len).sum();
        let writer = tokio::spawn(async move {
            for m in msgs {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
            Box::new(tx) as Keep
        });
        (reader, writer, expect, sent)
    } else {
        let sock = tokio::time::timeout(RECV_TIMEOUT, TcpStream::connect(env.srv.addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        let (rd, mut wr) = sock.into_split();
        let mut reader = Reader::Tcp(rd, Vec::new());
        if let Some(l) = &login {
            wr.write_all(format!("{l}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            check_login_ack(reader.frame().await?)?;
        }
        let stream = case.tcp_stream(&nonce);
        let expect = tcp_close(&stream);
        let mut cuts: Vec<usize> = case.cuts.iter().map(|i| i.index(stream.len())).collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts.push(stream.len());
        let sent = stream.len();
        let writer = tokio::spawn(async move {
            let mut from = 0;
            for to in cuts {
                if wr.write_all(&stream[from..to]).await.is_err() {
                    break;
                }
                from = to;
                tokio::task::yield_now().await;
            }
            Box::new(wr) as Keep
        });
        (reader, writer, expect, sent)
    };

    // Read, concurrently with the writes, until the PONG or the close.
    let deadline = tokio::time::Instant::now() + CASE_WAIT;
    let mut frames: Vec<Value> = Vec::new();
    let got = loop {
        match reader.next(deadline).await? {
            Got::Frame(f) => {
                let v = check_frame(&f)?;
                if v == json!({"msgid": 19, "reqid": nonce}) {
                    break Got::Frame(f);
                }
                frames.push(v);
            }
            g => break g,
        }
    };
    if got == Got::Timeout {
        writer.abort();
    }
    let _keep = tokio::time::timeout(RECV_TIMEOUT, writer)
        .await
        .map_err(|_| "the writes did not end".to_owned())?
        .map_err(|e| e.to_string());

    let last = frames.last();
    let kicked = last.is_some_and(|v| v["msgid"] == 21);
    let closing = |e: i64, v: &Value| v["msgid"] == 11 && v["errno"] == e;
    let eights = frames.iter().filter(|v| closing(8, v)).count();
    match (expect_close, &got) {
        (None, Got::Frame(_)) if eights == 0 => {}
        (None, Got::Closed) if kicked => {}
        (Some(e), Got::Closed) if last.is_some_and(|v| closing(e, v)) && eights <= 1 => {
            if v_has_re(last) {
                return Err(format!("the closing ERROR names a request: {last:?}"));
            }
        }
        (Some(_), Got::Closed) if kicked => {}
        _ => {
            return Err(format!(
                "expected {}, got {got:?} after {} frames, the last {:?}",
                match expect_close {
                    Some(e) => format!("ERROR errno {e} and a close"),
                    None => "the connection to stay open and answer the PING".to_owned(),
                },
                frames.len(),
                last.map(Value::to_string),
            ))
        }
    }

    let mut s = stats.lock().expect("stats");
    s.cases += 1;
    s.ws += u64::from(case.ws);
    s.logged_in += u64::from(case.login.is_some());
    s.pieces += case.pieces.len() as u64;
    s.bytes += sent as u64;
    s.replies += frames.len() as u64;
    for v in &frames {
        let m = v["msgid"].as_i64().unwrap_or(0);
        let k = if m == 11 {
            1100 + v["errno"].as_i64().unwrap_or(0)
        } else {
            m
        };
        *s.kinds.entry(k).or_default() += 1;
    }
    if let (Some(e), Got::Closed) = (expect_close, got) {
        *s.closes.entry(e).or_default() += 1;
    }
    Ok(())
}

fn v_has_re(v: Option<&Value>) -> bool {
    v.is_some_and(|v| v.get("re").is_some())
}

fn check_login_ack(v: Value) -> Result<(), String> {
    if v["msgid"] == 2 && v["errno"] == 0 {
        Ok(())
    } else {
        Err(format!("the fuzz user's login failed: {v}"))
    }
}

// ---------------------------------------------------------------------------
// The control pair

/// Two level-2 users, one on TCP and one on the WebSocket, that the fuzz
/// never logs in as (their password is not one the fuzz generates). After
/// every case they exchange one message, in turn.
struct Control {
    clients: [Client; 2],
    ids: [i64; 2],
    /// Every message they sent, in order: (sender index, text).
    sent: Vec<(usize, String)>,
    /// The texts each still has to receive from the other, in order.
    expect: [VecDeque<String>; 2],
}

impl Control {
    async fn start(srv: &TestServer) -> Control {
        const PW: &str = "control-secret-Qx7";
        let a = srv.register("control-a", PW).await;
        let b = srv.register("control-b", PW).await;
        let mut ca = srv.connect().await.presence_aside();
        ca.login_l2(a, PW).await;
        let mut cb = srv.connect_ws().await.presence_aside();
        cb.login_l2(b, PW).await;
        Control {
            clients: [ca, cb],
            ids: [a, b],
            sent: Vec::new(),
            expect: [VecDeque::new(), VecDeque::new()],
        }
    }

    /// Reads client `i`'s frames until one satisfies `done`.
    async fn read_until(&mut self, i: usize, done: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.clients[i].recv().await;
            if done(&v) {
                return v;
            }
            self.absorb(i, &v);
        }
    }

    /// A frame for client `i` that is not the reply it waits for. Chat from
    /// the other control user must be the next text expected; chat from fuzz
    /// users (who may write to anyone) and leftover replies of an earlier,
    /// failed check are skipped; anything else is a failure.
    fn absorb(&mut self, i: usize, v: &Value) {
        let stale = v["msgid"] == 12
            && v["reqid"]
                .as_str()
                .is_some_and(|r| r.starts_with("ctl-") || r.starts_with("hist-"));
        match v["msgid"].as_i64() {
            Some(6) if v["id"] == self.ids[1 - i] => {
                let want = self.expect[i].pop_front();
                assert_eq!(
                    v["msg"].as_str(),
                    want.as_deref(),
                    "control user {i} got a message out of order, twice or corrupted: {v}"
                );
            }
            Some(6) => {}
            _ if stale => {}
            _ => panic!("control user {i} got an unexpected frame: {v}"),
        }
    }

    /// One message from one control user to the other, and HISTORY.
    async fn check(&mut self) {
        let n = self.sent.len() + 1;
        let from = n % 2;
        let to = 1 - from;
        let text = format!("control message {n}: \u{e9}\u{1F600} \"quoted\"");
        self.sent.push((from, text.clone()));
        self.expect[to].push_back(text.clone());
        let tag = format!("ctl-{n}");
        self.clients[from]
            .send(json!({"msgid": 6, "toid": self.ids[to], "msg": text, "cmid": tag, "reqid": tag}))
            .await;
        let ack = self
            .read_until(from, |v| v["msgid"] == 12 && v["reqid"] == tag)
            .await;
        assert!(
            ack["re"] == 6 && ack["errno"] == 0 && ack["mid"].is_i64(),
            "the control message was not acknowledged: {ack}"
        );
        while !self.expect[to].is_empty() {
            let v = self.clients[to].recv().await;
            self.absorb(to, &v);
        }
        // The receiver's view of the conversation, the newest few.
        let tag = format!("hist-{n}");
        self.clients[to]
            .send(json!({"msgid": 17, "toid": self.ids[from], "limit": 3, "reqid": tag}))
            .await;
        let h = self
            .read_until(to, |v| v["msgid"] == 12 && v["reqid"] == tag)
            .await;
        let want: Vec<_> = self.sent.iter().rev().take(3).collect();
        self.compare(&h["messages"], &want);
    }

    /// Asserts that HISTORY `messages` are `want` (newest first).
    fn compare(&self, got: &Value, want: &[&(usize, String)]) {
        let got = got.as_array().expect("HISTORY messages");
        let got: Vec<(i64, i64, &str)> = got
            .iter()
            .map(|m| {
                (
                    m["id"].as_i64().unwrap_or(0),
                    m["toid"].as_i64().unwrap_or(0),
                    m["msg"].as_str().unwrap_or("?"),
                )
            })
            .collect();
        let want: Vec<(i64, i64, &str)> = want
            .iter()
            .map(|(f, t)| (self.ids[*f], self.ids[1 - f], t.as_str()))
            .collect();
        assert_eq!(got, want, "HISTORY of the control conversation is wrong");
    }

    /// The whole conversation, paged back to its start.
    async fn check_all(&mut self) {
        let mut got = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let mut req =
                json!({"msgid": 17, "toid": self.ids[1], "limit": 200, "reqid": "hist-all"});
            if let Some(b) = before {
                req["before"] = json!(b);
            }
            self.clients[0].send(req).await;
            let h = self
                .read_until(0, |v| v["msgid"] == 12 && v["reqid"] == "hist-all")
                .await;
            let page = h["messages"].as_array().expect("messages").clone();
            before = page.iter().filter_map(|m| m["mid"].as_i64()).min();
            got.extend(page);
            if h["more"] != true {
                break;
            }
        }
        let want: Vec<_> = self.sent.iter().rev().collect();
        self.compare(&Value::from(got), &want);
    }
}

/// A PING on a fresh connection gets its PONG.
async fn alive(srv: &TestServer, ws: bool) {
    let mut c = if ws {
        srv.connect_ws().await
    } else {
        srv.connect().await
    };
    c.send(json!({"msgid": 18, "reqid": "alive"})).await;
    assert_eq!(
        c.recv().await,
        json!({"msgid": 19, "reqid": "alive"}),
        "the server did not answer a PING on a fresh connection"
    );
}

// ---------------------------------------------------------------------------
// The test

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={s:?} is not a number"))
        }
        Err(_) => default,
    }
}

fn rng(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes(),
        );
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

fn summary(s: &Stats, t: Duration) -> String {
    format!(
        "{} cases in {:.1} s ({:.0}/s): {} over the WebSocket, {} logged in first; \
         {} pieces, {} KiB sent, {} replies {:?} (11xx: ERROR errno xx); closes as promised {:?}",
        s.cases,
        t.as_secs_f64(),
        s.cases as f64 / t.as_secs_f64().max(0.001),
        s.ws,
        s.logged_in,
        s.pieces,
        s.bytes / 1024,
        s.replies,
        s.kinds,
        s.closes,
    )
}

#[test]
fn fuzzed_frames_never_break_the_server() {
    let cases = env_u64("CLUSTERCHAT_FUZZ_CASES", 2500);
    let secs = env_u64("CLUSTERCHAT_FUZZ_SECS", 50);
    let seed = env_u64("CLUSTERCHAT_FUZZ_SEED", 0x5eed_c1a5_7e2c_0013);
    println!(
        "fuzz: seed {seed:#x}, at most {} cases, at most {secs} s \
         (CLUSTERCHAT_FUZZ_SEED, CLUSTERCHAT_FUZZ_CASES, CLUSTERCHAT_FUZZ_SECS)",
        if cases == 0 {
            "unlimited".to_owned()
        } else {
            cases.to_string()
        },
    );

    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("tokio-runtime-worker"))
        {
            SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
        }
        prev(info);
    }));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The test config (no per-address limits) with no failed-login
    // throttle (the fuzz fails many logins from one address) and a social
    // rate that does not turn the fuzz users' friend and group requests
    // into errno 9. The frame limit stays at its default.
    let defaults = test_config();
    let cfg = Config {
        login_failures_per_account: 0,
        login_failures_per_ip: 0,
        quotas: Quotas {
            social_per_min: 1_000_000,
            ..defaults.quotas.clone()
        },
        ..defaults
    };
    let (env, control) = rt.block_on(async {
        let srv = TestServer::start_with(cfg).await;
        let control = Control::start(&srv).await;
        let env = Env {
            srv,
            fuzz_ids: Mutex::new(Vec::new()),
        };
        (env, control)
    });
    let control = tokio::sync::Mutex::new(control);
    let stats = Mutex::new(Stats::default());
    let start = Instant::now();
    let budget = Duration::from_secs(secs);
    let last_report = Mutex::new(Instant::now());
    let strategy = case();

    let mut chunk: u64 = 0;
    while (cases == 0 || stats.lock().expect("stats").cases < cases) && start.elapsed() < budget {
        let chunk_seed = seed.wrapping_add(chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let ids = rt.block_on(async {
            let mut ids = Vec::new();
            for i in 0..FUZZ_USERS {
                ids.push(env.srv.register(&format!("fuzz{chunk}x{i}"), "pw").await);
            }
            ids
        });
        *env.fuzz_ids.lock().expect("fuzz ids") = ids;
        chunk += 1;
        let config = RunConfig {
            cases: CHUNK,
            failure_persistence: None,
            max_shrink_iters: env_u64("CLUSTERCHAT_FUZZ_SHRINK", 256) as u32,
            max_shrink_time: 120_000,
            ..RunConfig::default()
        };
        let mut runner = TestRunner::new_with_rng(config, rng(chunk_seed));
        let result = runner.run(&strategy, |case| {
            let done = stats.lock().expect("stats").cases;
            if (cases != 0 && done >= cases) || start.elapsed() >= budget {
                return Ok(()); // over budget: the rest of the chunk is skipped
            }
            rt.block_on(async {
                if let Err(e) = run_case(&env, &case, &stats).await {
                    return Err(TestCaseError::fail(e));
                }
                let n = NONCE.load(Ordering::Relaxed);
                alive(&env.srv, n % 8 == 0).await;
                control.lock().await.check().await;
                let panics = SERVER_PANICS.load(Ordering::SeqCst);
                prop_assert_eq!(panics, 0, "a server task panicked (see stderr)");
                Ok(())
            })?;
            let mut last = last_report.lock().expect("report");
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                let s = stats.lock().expect("stats");
                let t = start.elapsed().as_secs_f64();
                println!(
                    "fuzz: {} cases, {:.0} s, {:.0}/s",
                    s.cases,
                    t,
                    s.cases as f64 / t
                );
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, case)) => {
                let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
                let file = dir.join(format!("{chunk_seed:#x}.txt"));
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(&file, format!("{why}\n{}\n", case.render(true)));
                panic!(
                    "fuzz case failed: {why}\nminimal case: {case:?}\n\
                     replay with CLUSTERCHAT_FUZZ_SEED={chunk_seed:#x}; the case in full is in {}",
                    file.display()
                );
            }
            Err(TestError::Abort(why)) => panic!("fuzz aborted: {why}"),
        }
    }

    let mut control = control.into_inner();
    rt.block_on(async {
        control.check_all().await;
        alive(&env.srv, true).await;
        drop(control);
        env.srv.stop().await;
    });
    assert_eq!(
        SERVER_PANICS.load(Ordering::SeqCst),
        0,
        "a server task panicked"
    );
    let s = stats.into_inner().expect("stats");
    println!("fuzz: done: {}", summary(&s, start.elapsed()));
    assert!(s.cases > 0, "no case ran");
}
