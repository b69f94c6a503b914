//! The line client: LF-terminated JSON over TCP, with a timeout on every
//! connect, write and read, and assertions for the frames tests expect.
//!
//! PRESENCE pushes (msgid 20) arrive whenever a friend's state changes; on a
//! cluster their timing is not deterministic. A client made with
//! [`Client::presence_aside`] sets them aside in [`Client::presence`]
//! instead of returning them from [`Client::recv`].
//!
//! ROSTER pushes (msgid 23) come with friend and group changes, before or
//! after the change's ACK. Every read sets them aside in [`Client::roster`]
//! unless the client was made with [`Client::with_roster`]: tests of other
//! things read their replies in order, as before ROSTER existed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// How long any single connect, write or expected frame may take.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// The PRESENCE push's msgid.
const PRESENCE: i64 = 20;
/// The ROSTER push's msgid.
const ROSTER: i64 = 23;

/// What one raw read produced.
#[derive(Debug)]
pub enum Read {
    /// A complete LF-terminated line, without the LF.
    Line(Vec<u8>),
    /// The server closed (or reset) the connection.
    Eof,
    /// Nothing within the wait.
    Timeout,
}

/// What one frame read produced.
#[derive(Debug)]
pub enum Recv {
    /// A frame, parsed.
    Frame(Value),
    /// The server closed (or reset) the connection.
    Eof,
    /// Nothing within the wait.
    Timeout,
}

/// A byte stream a client talks over: a TCP socket, or its end of a pipe
/// to a WebSocket (see [`Client::connect_ws`]).
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A test client speaking LF-terminated JSON.
pub struct Client {
    sock: Box<dyn Io>,
    buf: Vec<u8>,
    eof: bool,
    /// Whether [`Client::recv`] sets PRESENCE pushes aside.
    aside: bool,
    /// PRESENCE pushes set aside (or awaited), as (id, state), in arrival order.
    pub presence: Vec<(i64, String)>,
    /// Whether reads set ROSTER pushes aside (the default).
    roster_aside: bool,
    /// ROSTER pushes set aside, in arrival order.
    pub roster: Vec<Value>,
}

impl Client {
    /// Connects to the server; panics within [`RECV_TIMEOUT`] if it cannot.
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_with(addr, None, None)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Connects, or says why not.
    pub async fn try_connect(addr: SocketAddr) -> Result<Client, String> {
        Self::connect_with(addr, None, None).await
    }

    /// Connects with a tiny receive buffer, so that what the client does not
    /// read stays in the server's queues rather than in the kernel's.
    pub async fn connect_tight(addr: SocketAddr) -> Client {
        Self::connect_with(addr, None, Some(4096))
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Connects from a chosen loopback address (all of 127.0.0.0/8 works),
    /// to tell clients apart by address behind a proxy.
    pub async fn connect_from(addr: SocketAddr, local: Ipv4Addr) -> Client {
        Self::connect_with(addr, Some(local), None)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr} from {local}: {e}"))
    }

    async fn connect_with(
        addr: SocketAddr,
        local: Option<Ipv4Addr>,
        rcvbuf: Option<u32>,
    ) -> Result<Client, String> {
        let s = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        if let Some(n) = rcvbuf {
            s.set_recv_buffer_size(n)
                .map_err(|e| format!("SO_RCVBUF: {e}"))?;
        }
        if let Some(ip) = local {
            s.bind(SocketAddr::new(ip.into(), 0))
                .map_err(|e| format!("bind: {e}"))?;
        }
        let sock = tokio::time::timeout(RECV_TIMEOUT, s.connect(addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect failed: {e}"))?;
        sock.set_nodelay(true)
            .map_err(|e| format!("nodelay: {e}"))?;
        Ok(Self::over(Box::new(sock)))
    }

    /// Connects over TLS to a server whose listener speaks it, trusting
    /// what `config` trusts (see [`crate::TestCerts::client_config`]);
    /// panics within [`RECV_TIMEOUT`] if it cannot.
    pub async fn connect_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Client {
        Self::try_connect_tls(addr, config)
            .await
            .unwrap_or_else(|e| panic!("TLS connect to {addr}: {e}"))
    }

    /// [`Client::connect_tls`], or says why not (a handshake the client
    /// refused, such as a certificate of an unknown CA).
    pub async fn try_connect_tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Client, String> {
        let s = crate::tls::tls_connect(addr, config).await?;
        Ok(Self::over(Box::new(s)))
    }

    /// Connects over a WebSocket over TLS (`wss://localhost:PORT/ws`) to the
    /// HTTP listener at `https`.
    pub async fn connect_wss(https: SocketAddr, config: Arc<rustls::ClientConfig>) -> Client {
        let s = crate::tls::tls_connect(https, config)
            .await
            .unwrap_or_else(|e| panic!("TLS connect to {https}: {e}"));
        let url = format!("wss://localhost:{}/ws", https.port());
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::client_async(url, s))
            .await
            .expect("WebSocket handshake timed out")
            .unwrap_or_else(|e| panic!("WebSocket over TLS to {https}: {e}"));
        let (near, far) = tokio::io::duplex(256 * 1024);
        tokio::spawn(bridge(ws, far));
        Self::over(Box::new(near))
    }

    fn over(sock: Box<dyn Io>) -> Client {
        Client {
            sock,
            buf: Vec::new(),
            eof: false,
            aside: false,
            presence: Vec::new(),
            roster_aside: true,
            roster: Vec::new(),
        }
    }

    /// Connects over a WebSocket to the HTTP listener at `http` (`/ws`).
    /// Every helper works as over TCP: each line written becomes one text
    /// message, and each message received reads as one line. The server
    /// closing the WebSocket reads as EOF.
    pub async fn connect_ws(http: SocketAddr) -> Client {
        Self::try_connect_ws(http, None)
            .await
            .unwrap_or_else(|e| panic!("WebSocket to {http}: {e}"))
    }

    /// Connects over a WebSocket, sending `origin` as the page's origin; or
    /// says why the server refused.
    pub async fn try_connect_ws(http: SocketAddr, origin: Option<&str>) -> Result<Client, String> {
        let ws = ws_connect(http, origin).await?;
        let (near, far) = tokio::io::duplex(256 * 1024);
        tokio::spawn(bridge(ws, far));
        Ok(Self::over(Box::new(near)))
    }

    /// This client, setting PRESENCE pushes aside in [`Client::presence`]
    /// rather than returning them from [`Client::recv`] and the checks built
    /// on it.
    pub fn presence_aside(mut self) -> Client {
        self.aside = true;
        self
    }

    /// Writes raw bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(RECV_TIMEOUT, self.sock.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write failed");
        self.sock.flush().await.expect("flush failed");
    }

    /// Writes raw bytes, tolerating a connection the server already closed.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(RECV_TIMEOUT, self.sock.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Sends one JSON request terminated by LF; false if the connection is gone.
    pub async fn try_send(&mut self, v: &Value) -> bool {
        self.try_send_raw(&frame(v, b'\n')).await
    }

    /// Half-closes: the server reads EOF, but can still write to us.
    pub async fn shutdown_write(&mut self) {
        let _ = self.sock.shutdown().await;
    }

    /// Sends one JSON request terminated by LF.
    pub async fn send(&mut self, v: Value) {
        self.send_raw(&frame(&v, b'\n')).await;
    }

    /// Sends one JSON request terminated by NUL, as the classic client does.
    pub async fn send_nul(&mut self, v: Value) {
        self.send_raw(&frame(&v, 0)).await;
    }

    /// This client, returning ROSTER pushes from every read like any other
    /// frame (tests of ROSTER itself).
    pub fn with_roster(mut self) -> Client {
        self.roster_aside = false;
        self
    }

    /// Reads one line, waiting at most `wait` (ROSTER set aside, unless
    /// [`Client::with_roster`]). Cancel-safe.
    pub async fn read_line(&mut self, wait: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if self.roster_aside {
                    if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                        if v["msgid"] == ROSTER {
                            self.roster.push(v);
                            continue;
                        }
                    }
                }
                return Read::Line(line);
            }
            if self.eof {
                return Read::Eof;
            }
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.buf)).await {
                Err(_) => return Read::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads one frame (PRESENCE included), waiting at most `wait`;
    /// panics on bad JSON. Cancel-safe.
    pub async fn read(&mut self, wait: Duration) -> Recv {
        match self.read_line(wait).await {
            Read::Line(l) => Recv::Frame(parse(&l)),
            Read::Eof => Recv::Eof,
            Read::Timeout => Recv::Timeout,
        }
    }

    /// The next frame's raw text, PRESENCE included; panics on timeout or EOF.
    pub async fn recv_text(&mut self) -> String {
        match self.read_line(RECV_TIMEOUT).await {
            Read::Line(l) => String::from_utf8(l).expect("server sent invalid UTF-8"),
            Read::Eof => panic!("expected a frame, but the server closed the connection"),
            Read::Timeout => panic!("expected a frame, but none arrived within {RECV_TIMEOUT:?}"),
        }
    }

    /// The next frame as JSON, PRESENCE included; panics on timeout, EOF or
    /// bad JSON.
    pub async fn recv_any(&mut self) -> Value {
        let t = self.recv_text().await;
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("server sent bad JSON {t:?}: {e}"))
    }

    /// The next frame (not PRESENCE, if those are set aside); panics on
    /// timeout, EOF or bad JSON.
    pub async fn recv(&mut self) -> Value {
        loop {
            let v = self.recv_any().await;
            if let Some(v) = self.unless_aside(v) {
                return v;
            }
        }
    }

    /// The next frame if one comes within `wait` (None on timeout or EOF).
    pub async fn maybe_recv(&mut self, wait: Duration) -> Option<Value> {
        match self.read(wait).await {
            Recv::Frame(v) => Some(v),
            Recv::Eof | Recv::Timeout => None,
        }
    }

    /// `v`, unless it is a PRESENCE push that this client sets aside.
    fn unless_aside(&mut self, v: Value) -> Option<Value> {
        if self.aside && v["msgid"] == PRESENCE {
            self.note_presence(&v);
            None
        } else {
            Some(v)
        }
    }

    fn note_presence(&mut self, v: &Value) {
        self.presence.push((
            v["id"].as_i64().expect("PRESENCE id"),
            v["state"].as_str().expect("PRESENCE state").to_owned(),
        ));
    }

    /// The next frame, asserting its msgid.
    pub async fn recv_msgid(&mut self, msgid: i64) -> Value {
        let v = self.recv().await;
        assert_eq!(v["msgid"], msgid, "expected msgid {msgid}, got {v}");
        v
    }

    /// The next frame, asserting it is an ERROR with this errno.
    pub async fn expect_error(&mut self, errno: i64) -> Value {
        let v = self.recv().await;
        assert_eq!(v["msgid"], 11, "expected ERROR errno {errno}, got {v}");
        assert_eq!(v["errno"], errno, "expected ERROR errno {errno}, got {v}");
        assert!(
            v["errmsg"].as_str().is_some_and(|m| !m.is_empty()),
            "ERROR without errmsg: {v}"
        );
        v
    }

    /// The next frame, asserting it is a level-2 ACK for `re`.
    pub async fn expect_ack(&mut self, re: i64) -> Value {
        let v = self.recv().await;
        assert_eq!(v["msgid"], 12, "expected ACK for {re}, got {v}");
        assert_eq!(v["re"], re, "expected ACK for {re}, got {v}");
        assert_eq!(v["errno"], 0, "ACK with nonzero errno: {v}");
        v
    }

    /// Waits (bounded) until a PRESENCE for `id` with `state` has arrived;
    /// any other frame fails the test.
    pub async fn expect_presence(&mut self, id: i64, state: &str) {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            if self.presence.iter().any(|(i, s)| *i == id && s == state) {
                return;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Recv::Frame(v) if v["msgid"] == PRESENCE => self.note_presence(&v),
                Recv::Frame(v) => panic!("waiting for PRESENCE {id} {state}, got {v}"),
                Recv::Eof => panic!("waiting for PRESENCE {id} {state}, connection closed"),
                Recv::Timeout => panic!(
                    "no PRESENCE {id} {state} within {RECV_TIMEOUT:?} (had {:?})",
                    self.presence
                ),
            }
        }
    }

    /// Waits until every request sent so far has finished: replies leave in
    /// request order, so the PONG comes only after all of them. Use only when
    /// no other frame can arrive in between.
    pub async fn barrier(&mut self) {
        self.send(json!({"msgid": 18, "reqid": "barrier"})).await;
        let v = self.recv().await;
        assert_eq!(
            v,
            json!({"msgid": 19, "reqid": "barrier"}),
            "expected the barrier PONG"
        );
    }

    /// Like [`Client::barrier`], but returns the frames that came before
    /// the PONG instead of failing on them.
    pub async fn frames_before_barrier(&mut self) -> Vec<Value> {
        self.send(json!({"msgid": 18, "reqid": "barrier"})).await;
        let mut before = Vec::new();
        loop {
            let v = self.recv().await;
            if v["msgid"] == 19 && v["reqid"] == "barrier" {
                return before;
            }
            before.push(v);
        }
    }

    /// Asserts that nothing arrives (and the connection stays open) for `ms`.
    pub async fn expect_silence(&mut self, ms: u64) {
        match self.read_line(Duration::from_millis(ms)).await {
            Read::Timeout => {}
            Read::Line(l) => panic!(
                "expected silence, got frame {:?}",
                String::from_utf8_lossy(&l)
            ),
            Read::Eof => panic!("expected silence, but the server closed the connection"),
        }
    }

    /// Asserts that the server closes the connection next, with no frame
    /// before (PRESENCE aside, if set aside).
    pub async fn expect_eof(&mut self) {
        loop {
            match self.read_line(RECV_TIMEOUT).await {
                Read::Eof => return,
                Read::Line(l) => {
                    if let Some(v) = self.unless_aside(parse(&l)) {
                        panic!("expected the connection to close, got frame {v}")
                    }
                }
                Read::Timeout => {
                    panic!("expected the connection to close within {RECV_TIMEOUT:?}")
                }
            }
        }
    }

    /// Reads frames until the server closes, within `wait`; returns them.
    pub async fn drain_to_eof(&mut self, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Recv::Eof => return out,
                Recv::Timeout => panic!("connection not closed within {wait:?}"),
                Recv::Frame(v) => out.push(v),
            }
        }
    }

    /// Reads whatever arrives within `ms` (PRESENCE set aside, if so).
    pub async fn drain(&mut self, ms: u64) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Recv::Frame(v) => out.extend(self.unless_aside(v)),
                Recv::Eof | Recv::Timeout => return out,
            }
        }
    }

    /// REG; asserts success and returns the new id.
    pub async fn register(&mut self, name: &str, password: &str) -> i64 {
        self.send(json!({"msgid": 4, "name": name, "password": password}))
            .await;
        let v = self.recv_msgid(5).await;
        assert_eq!(v["errno"], 0, "REG {name:?} failed: {v}");
        v["id"].as_i64().expect("REG_ACK without integer id")
    }

    /// CREATE_GROUP at level 2; asserts success and returns the group id.
    pub async fn create_group(&mut self, name: &str) -> i64 {
        self.send(json!({"msgid": 8, "groupname": name, "groupdesc": "d"}))
            .await;
        self.expect_ack(8).await["groupid"]
            .as_i64()
            .expect("CREATE_GROUP ACK without groupid")
    }

    /// A LOGIN request; returns the LOGIN_ACK whatever its errno.
    pub async fn login_raw(&mut self, req: Value) -> Value {
        self.send(req).await;
        self.recv_msgid(2).await
    }

    /// Level-1 LOGIN; asserts success and returns the ack.
    pub async fn login_l1(&mut self, id: i64, password: &str) -> Value {
        let v = self
            .login_raw(json!({"msgid": 1, "id": id, "password": password}))
            .await;
        assert_eq!(v["errno"], 0, "level-1 LOGIN of {id} failed: {v}");
        v
    }

    /// Level-2 LOGIN; asserts success and returns the ack.
    pub async fn login_l2(&mut self, id: i64, password: &str) -> Value {
        let v = self
            .login_raw(json!({"msgid": 1, "id": id, "password": password, "v": 2}))
            .await;
        assert_eq!(v["errno"], 0, "level-2 LOGIN of {id} failed: {v}");
        v
    }
}

/// `v` serialised and followed by `end`.
fn frame(v: &Value, end: u8) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).expect("serialise");
    b.push(end);
    b
}

/// A line the server sent, as JSON; panics if it is not.
fn parse(line: &[u8]) -> Value {
    serde_json::from_slice(line).unwrap_or_else(|e| {
        panic!(
            "server sent bad JSON {:?}: {e}",
            String::from_utf8_lossy(line)
        )
    })
}

/// A client-side WebSocket.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `ws://{http}/ws`, with `origin` as the page's origin if given; the
/// error says the HTTP status of a refusal.
pub async fn ws_connect(http: SocketAddr, origin: Option<&str>) -> Result<WebSocket, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{http}/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", o.parse().map_err(|_| "bad origin".to_owned())?);
    }
    match tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(req)).await {
        Err(_) => Err("WebSocket handshake timed out".to_owned()),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            Err(format!("refused with HTTP {}", resp.status().as_u16()))
        }
        Ok(Err(e)) => Err(e.to_string()),
    }
}

/// Pumps frames between a WebSocket and a pipe: lines (ended by LF or NUL)
/// from the pipe go out as text messages; messages come back as lines.
async fn bridge<S>(ws: tokio_tungstenite::WebSocketStream<S>, pipe: tokio::io::DuplexStream)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let (mut prd, mut pwr) = tokio::io::split(pipe);
    let up = async move {
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 8192];
            match prd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while let Some(i) = buf.iter().position(|&b| b == b'\n' || b == 0) {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if tx.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        }
        let _ = tx.close().await;
    };
    let down = async move {
        while let Some(Ok(m)) = rx.next().await {
            let bytes = match m {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if pwr.write_all(&bytes).await.is_err() || pwr.write_all(b"\n").await.is_err() {
                break;
            }
        }
        let _ = pwr.shutdown().await;
    };
    tokio::join!(up, down);
}
