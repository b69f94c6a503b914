//! The forward-only ceiling server: the same framing (`FrameCodec`) and the
//! same routing as clusterchat, with everything kept in memory, no storage
//! and no password hashing. A task per connection reads and handles
//! requests; a writer task per connection drains a bounded queue and
//! coalesces frames into few writes, as the real server does.
//!
//! It answers LOGIN (password or level-2 token), REG, ONE_CHAT, GROUP_CHAT,
//! CREATE_GROUP, ADD_GROUP, DISBAND_GROUP, DELIVERED, PING and LOGINOUT with
//! replies and pushes in the real server's shapes (with `mid` and `seq` at
//! level 2), so the bench's clients run unchanged against it. What the real
//! server costs above this is the price of durability and bookkeeping.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::{Bytes, BytesMut};
use chat_protocol::{limits, msgid, time, Errno, FrameCodec, FrameError};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// Ceiling tuning.
#[derive(Debug, Clone)]
pub struct Options {
    /// Frames queued per connection before a slow reader is disconnected
    /// (the real server's default is 1024).
    pub queue: usize,
    /// Longest client frame.
    pub max_frame: usize,
    /// A users file whose accounts (and tokens) exist from the start, so a
    /// scenario needs no registration and the RSS baseline is a fresh process.
    pub seed: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queue: 1024,
            max_frame: limits::MAX_FRAME,
            seed: None,
        }
    }
}

struct Sess {
    sid: u64,
    level: u8,
    tx: mpsc::Sender<Bytes>,
    close: CancellationToken,
}

struct User {
    id: i64,
    name: String,
    password: String,
    seq: AtomicI64,
    session: Mutex<Option<Sess>>,
    groups: Mutex<Vec<i64>>,
}

struct Group {
    id: i64,
    name: String,
    desc: String,
    creator: i64,
    members: RwLock<Vec<Arc<User>>>,
}

/// The ceiling's shared state.
pub struct Ceiling {
    opts: Options,
    users: RwLock<HashMap<i64, Arc<User>>>,
    names: Mutex<HashSet<String>>,
    next_user: AtomicI64,
    groups: RwLock<HashMap<i64, Arc<Group>>>,
    group_names: Mutex<HashSet<String>>,
    next_group: AtomicI64,
    next_mid: AtomicI64,
    tokens: Mutex<HashMap<String, i64>>,
    next_sid: AtomicU64,
}

fn frame(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).expect("JSON values serialise");
    b.push(b'\n');
    Bytes::from(b)
}

struct Fail(Errno, &'static str);

fn failure(re: i64, reqid: Option<&Value>, f: &Fail) -> Bytes {
    let kind = match re {
        msgid::LOGIN => msgid::LOGIN_ACK,
        msgid::REG => msgid::REG_ACK,
        _ => msgid::ERROR,
    };
    let mut m = Map::new();
    m.insert("msgid".into(), kind.into());
    m.insert("errno".into(), f.0.code().into());
    m.insert("errmsg".into(), f.1.into());
    if kind == msgid::ERROR && re > 0 {
        m.insert("re".into(), re.into());
    }
    if let Some(r) = reqid {
        m.insert("reqid".into(), r.clone());
    }
    frame(&Value::Object(m))
}

fn ack(re: i64, reqid: Option<&Value>, extra: Option<(&str, i64)>) -> Bytes {
    let mut m = Map::new();
    m.insert("msgid".into(), msgid::ACK.into());
    m.insert("re".into(), re.into());
    m.insert("errno".into(), 0.into());
    if let Some((k, v)) = extra {
        m.insert(k.into(), v.into());
    }
    if let Some(r) = reqid {
        m.insert("reqid".into(), r.clone());
    }
    frame(&Value::Object(m))
}

fn int(body: &Map<String, Value>, k: &str) -> Result<i64, Fail> {
    body.get(k)
        .and_then(Value::as_i64)
        .ok_or(Fail(Errno::Malformed, "missing or non-integer field"))
}

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

fn chars<'a>(body: &'a Map<String, Value>, k: &str, max: usize) -> Result<&'a str, Fail> {
    let s = text(body, k, 1, max * 4)?;
    if s.chars().count() > max {
        return Err(Fail(Errno::Malformed, "field length out of range"));
    }
    Ok(s)
}

const NOT_LOGGED_IN: Fail = Fail(Errno::NotLoggedIn, "not logged in");

/// Who this connection is logged in as.
struct Me {
    user: Arc<User>,
    level: u8,
    sid: u64,
}

/// A chat message encoded once for all recipients.
struct Push {
    l1: Bytes,
    l2_prefix: Vec<u8>,
}

impl Push {
    fn level2(&self, seq: i64) -> Bytes {
        let mut b = Vec::with_capacity(self.l2_prefix.len() + 24);
        b.extend_from_slice(&self.l2_prefix);
        let _ = writeln!(b, ",\"seq\":{seq}}}");
        Bytes::from(b)
    }
}

impl Ceiling {
    /// An empty ceiling.
    pub fn new(opts: Options) -> Arc<Ceiling> {
        Arc::new(Ceiling {
            opts,
            users: RwLock::default(),
            names: Mutex::default(),
            next_user: AtomicI64::new(1),
            groups: RwLock::default(),
            group_names: Mutex::default(),
            next_group: AtomicI64::new(1),
            next_mid: AtomicI64::new(1),
            tokens: Mutex::default(),
            next_sid: AtomicU64::new(1),
        })
    }

    /// Adds accounts as if they had registered, with their saved tokens.
    pub fn seed(&self, users: &[crate::users::User]) {
        let mut map = self.users.write().expect("users");
        let mut names = self.names.lock().expect("names");
        let mut tokens = self.tokens.lock().expect("tokens");
        for u in users {
            names.insert(u.name.clone());
            if let Some(t) = &u.token {
                tokens.insert(t.clone(), u.id);
            }
            map.insert(
                u.id,
                Arc::new(User {
                    id: u.id,
                    name: u.name.clone(),
                    password: u.password.clone(),
                    seq: AtomicI64::new(0),
                    session: Mutex::new(None),
                    groups: Mutex::new(Vec::new()),
                }),
            );
            self.next_user.fetch_max(u.id + 1, Ordering::Relaxed);
        }
    }

    /// Accepts connections forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    tokio::spawn(self.clone().conn(sock));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn user(&self, id: i64) -> Option<Arc<User>> {
        self.users.read().expect("users").get(&id).cloned()
    }

    fn group(&self, id: i64) -> Option<Arc<Group>> {
        self.groups.read().expect("groups").get(&id).cloned()
    }

    async fn conn(self: Arc<Self>, sock: TcpStream) {
        let _ = sock.set_nodelay(true);
        let (rd, wr) = sock.into_split();
        // A small first read buffer: it grows under load, and idle connections
        // stay cheap (4 KiB here cost 3.5 KiB of RSS per held connection).
        let mut frames = FramedRead::with_capacity(rd, FrameCodec::new(self.opts.max_frame), 512);
        let (tx, rx) = mpsc::channel::<Bytes>(self.opts.queue.max(1));
        let close = CancellationToken::new();
        let mut writer = tokio::spawn(write_loop(wr, rx, close.clone()));
        let mut me: Option<Me> = None;
        loop {
            let f = tokio::select! {
                _ = close.cancelled() => break,
                f = frames.next() => f,
            };
            let reply = match f {
                Some(Ok(f)) => match serde_json::from_slice::<Value>(&f) {
                    Ok(Value::Object(body)) => {
                        if body.get("msgid").and_then(Value::as_i64) == Some(msgid::LOGIN) {
                            self.login(&body, &mut me, &tx, &close).await;
                            continue;
                        }
                        self.handle(&body, &mut me)
                    }
                    _ => Some(failure(
                        0,
                        None,
                        &Fail(Errno::Malformed, "frame is not a JSON object"),
                    )),
                },
                Some(Err(FrameError::TooLarge(_))) => {
                    let f = Fail(Errno::FrameTooLarge, "frame too large; closing");
                    let _ = tx.send(failure(0, None, &f)).await;
                    break;
                }
                _ => break,
            };
            if let Some(r) = reply {
                let sent = tokio::select! {
                    r = tx.send(r) => r.is_ok(),
                    _ = close.cancelled() => false,
                };
                if !sent {
                    break;
                }
            }
        }
        if let Some(m) = me.take() {
            self.logout(&m);
        }
        drop(tx);
        if tokio::time::timeout(Duration::from_secs(2), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }

    fn logout(&self, m: &Me) {
        let mut s = m.user.session.lock().expect("session");
        if s.as_ref().is_some_and(|s| s.sid == m.sid) {
            *s = None;
        }
    }

    async fn login(
        &self,
        body: &Map<String, Value>,
        me: &mut Option<Me>,
        tx: &mpsc::Sender<Bytes>,
        close: &CancellationToken,
    ) {
        let reqid = body.get("reqid");
        let r = self.check_login(body, me.is_some());
        let (user, level) = match r {
            Ok(x) => x,
            Err(f) => {
                let _ = tx.send(failure(msgid::LOGIN, reqid, &f)).await;
                return;
            }
        };
        let ack = self.login_ack(&user, level, reqid);
        // The ack goes first; only then can pushes reach this connection.
        if tx.send(ack).await.is_err() {
            return;
        }
        let sid = self.next_sid.fetch_add(1, Ordering::Relaxed);
        let old = user.session.lock().expect("session").replace(Sess {
            sid,
            level,
            tx: tx.clone(),
            close: close.clone(),
        });
        if let Some(old) = old {
            let _ = old.tx.try_send(frame(&json!({
                "msgid": msgid::KICKED,
                "errmsg": "you logged in somewhere else; this session is closed"
            })));
            old.close.cancel();
        }
        *me = Some(Me { user, level, sid });
    }

    fn check_login(
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
        let wrong = Fail(Errno::BadCredentials, "wrong id or password");
        let user = if let Some(p) = body.get("password").and_then(Value::as_str) {
            let u = self.user(id).ok_or(wrong)?;
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
                Some(o) if o == id => self.user(id).ok_or(wrong)?,
                _ => return Err(Fail(Errno::BadCredentials, "invalid or expired token")),
            }
        } else {
            return Err(Fail(Errno::Malformed, "field `password` is required"));
        };
        Ok((user, level))
    }

    fn login_ack(&self, user: &User, level: u8, reqid: Option<&Value>) -> Bytes {
        let l1 = level < 2;
        let mut ack = Map::new();
        ack.insert("msgid".into(), msgid::LOGIN_ACK.into());
        ack.insert("errno".into(), 0.into());
        ack.insert("id".into(), user.id.into());
        ack.insert("name".into(), user.name.clone().into());
        let gids = user.groups.lock().expect("groups").clone();
        let mut groups = Vec::new();
        for gid in gids {
            let Some(g) = self.group(gid) else { continue };
            let members: Vec<Value> = g
                .members
                .read()
                .expect("members")
                .iter()
                .map(|m| {
                    let online = m.session.lock().expect("session").is_some();
                    let v = json!({
                        "id": m.id,
                        "name": m.name,
                        "state": if online { "online" } else { "offline" },
                        "role": if m.id == g.creator { "creator" } else { "normal" },
                    });
                    if l1 {
                        Value::String(v.to_string())
                    } else {
                        v
                    }
                })
                .collect();
            let v = json!({"id": g.id, "groupname": g.name, "groupdesc": g.desc, "users": members});
            groups.push(if l1 { Value::String(v.to_string()) } else { v });
        }
        if !l1 {
            ack.insert("friends".into(), Value::Array(vec![]));
        }
        if !l1 || !groups.is_empty() {
            ack.insert("groups".into(), Value::Array(groups));
        }
        if !l1 {
            let token = format!(
                "c{:x}.{:x}",
                user.id,
                self.next_sid.fetch_add(1, Ordering::Relaxed) ^ 0x5bd1_e995_7f4a_7c15
            );
            self.tokens
                .lock()
                .expect("tokens")
                .insert(token.clone(), user.id);
            ack.insert("token".into(), token.into());
        }
        if let Some(r) = reqid {
            ack.insert("reqid".into(), r.clone());
        }
        frame(&Value::Object(ack))
    }

    /// Every request but LOGIN. Returns the reply frame, if any.
    fn handle(&self, body: &Map<String, Value>, me: &mut Option<Me>) -> Option<Bytes> {
        let reqid = body.get("reqid");
        let Some(id) = body.get("msgid").and_then(Value::as_i64) else {
            return Some(failure(
                0,
                reqid,
                &Fail(Errno::Malformed, "msgid must be an integer"),
            ));
        };
        let level = me.as_ref().map_or(1, |m| m.level);
        let r = match id {
            msgid::REG => return Some(self.register(body, reqid)),
            msgid::PING => {
                let mut m = Map::new();
                m.insert("msgid".into(), msgid::PONG.into());
                if let Some(r) = reqid {
                    m.insert("reqid".into(), r.clone());
                }
                return Some(frame(&Value::Object(m)));
            }
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
                Some(m) => self.chat(id, body, m).map(|mid| Some(("mid", mid))),
            },
            msgid::CREATE_GROUP => match me {
                None => Err(NOT_LOGGED_IN),
                Some(m) => self.create_group(body, m).map(|g| Some(("groupid", g))),
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
            Ok(extra) => (level >= 2).then(|| ack(id, reqid, extra)),
            Err(f) => Some(failure(id, reqid, &f)),
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
            Ok(id) => {
                let mut m = Map::new();
                m.insert("msgid".into(), msgid::REG_ACK.into());
                m.insert("errno".into(), 0.into());
                m.insert("id".into(), id.into());
                if let Some(r) = reqid {
                    m.insert("reqid".into(), r.clone());
                }
                frame(&Value::Object(m))
            }
            Err(f) => failure(msgid::REG, reqid, &f),
        }
    }

    fn encode(&self, sender: &User, to: (&str, i64), msg: &str, mid: i64) -> Push {
        let mut b: Vec<u8> = Vec::with_capacity(msg.len() + sender.name.len() + 128);
        let kind = if to.0 == "toid" {
            msgid::ONE_CHAT
        } else {
            msgid::GROUP_CHAT
        };
        let _ = write!(b, "{{\"msgid\":{kind},\"id\":{}", sender.id);
        if kind == msgid::GROUP_CHAT {
            let _ = write!(b, ",\"userid\":{}", sender.id);
        }
        b.extend_from_slice(b",\"name\":");
        let _ = serde_json::to_writer(&mut b, &sender.name);
        let _ = write!(b, ",\"{}\":{},\"msg\":", to.0, to.1);
        let _ = serde_json::to_writer(&mut b, msg);
        let _ = write!(b, ",\"time\":\"{}\"", time::format_utc(time::unix_now()));
        let mut l1 = b.clone();
        l1.extend_from_slice(b"}\n");
        let _ = write!(b, ",\"mid\":{mid}");
        Push {
            l1: Bytes::from(l1),
            l2_prefix: b,
        }
    }

    fn deliver(user: &User, push: &Push) {
        let seq = user.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let s = user.session.lock().expect("session");
        if let Some(s) = s.as_ref() {
            let f = if s.level >= 2 {
                push.level2(seq)
            } else {
                push.l1.clone()
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
            let push = self.encode(&me.user, ("toid", to), msg, mid);
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
            let push = self.encode(&me.user, ("groupid", gid), msg, mid);
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

/// Drains the queue into the socket, coalescing up to 64 KiB per write.
/// Once the connection is closing, a write gets one more second.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    close: CancellationToken,
) {
    const COALESCE: usize = 64 * 1024;
    // Allocated on first use and dropped when large, so idle connections
    // cost little.
    let mut buf = BytesMut::new();
    loop {
        let first = tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(b) => b,
                None => break,
            },
            _ = close.cancelled() => break,
        };
        buf.extend_from_slice(&first);
        while buf.len() < COALESCE {
            match rx.try_recv() {
                Ok(b) => buf.extend_from_slice(&b),
                Err(_) => break,
            }
        }
        let ok = tokio::select! {
            r = wr.write_all_buf(&mut buf) => r.is_ok(),
            _ = async { close.cancelled().await; tokio::time::sleep(Duration::from_secs(1)).await } => false,
        };
        if !ok {
            close.cancel();
            break;
        }
        if buf.capacity() > 256 * 1024 {
            buf = BytesMut::new();
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

/// `chat-bench ceiling`: binds, prints `listening ADDR` on stdout, serves.
/// With `lifeline`, exits when stdin reaches end of file (its parent died
/// or let go).
pub async fn run(listen: SocketAddr, opts: Options, lifeline: bool) -> anyhow::Result<()> {
    // A deep accept queue, so a login storm is not held up by SYN retries.
    let sock = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let listener = sock.listen(4096)?;
    println!("listening {}", listener.local_addr()?);
    let _ = std::io::stdout().flush();
    let seed = opts.seed.clone();
    let ceiling = Ceiling::new(opts);
    if let Some(path) = seed {
        ceiling.seed(&crate::users::load(&path)?);
    }
    let serve = ceiling.serve(listener);
    if lifeline {
        let mut stdin = tokio::io::stdin();
        let mut sink = [0u8; 64];
        tokio::select! {
            _ = serve => {}
            _ = async { while let Ok(n) = stdin.read(&mut sink).await { if n == 0 { break } } } => {}
        }
    } else {
        serve.await;
    }
    Ok(())
}

/// A ceiling running as a child process of the bench, so that it has its
/// own threads, file descriptors and RSS, like the real server.
pub struct Child {
    child: tokio::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id (for RSS).
    pub pid: u32,
}

impl Child {
    /// Starts `chat-bench ceiling` on a free loopback port.
    pub async fn spawn(opts: &Options) -> anyhow::Result<Child> {
        let exe = std::env::current_exe().context("cannot find the chat-bench executable")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["ceiling", "--listen", "127.0.0.1:0", "--lifeline"])
            .arg("--queue")
            .arg(opts.queue.to_string())
            .args(
                opts.seed
                    .iter()
                    .flat_map(|p| [std::ffi::OsStr::new("--users"), p.as_os_str()]),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the ceiling server")?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("ceiling exited at once"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| anyhow!("the ceiling did not start within 10 s"))??
            .ok_or_else(|| anyhow!("the ceiling exited before listening"))?;
        let addr = line
            .strip_prefix("listening ")
            .ok_or_else(|| anyhow!("unexpected line from the ceiling: {line}"))?
            .parse()?;
        Ok(Child { child, addr, pid })
    }

    /// Stops it (we started it, so we kill it by its handle) and reaps it.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
