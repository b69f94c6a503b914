//! A benchmark client connection: connect, send frames, read frames, and the
//! request/reply exchanges (REG, LOGIN, CREATE_GROUP, ...) that set a
//! scenario up. Every wait is bounded by a timeout.
//!
//! A connection is plain TCP (LF-terminated frames) or a WebSocket to the
//! server's HTTP listener (`ws://ADDR/ws`, one frame per text message); see
//! [`Transport`]. Only [`Reader`] and [`Writer`] know the difference: both
//! speak in frames, so scenarios are the same over either.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use chat_protocol::{msgid, scan, FrameCodec, Request, Secret};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::Decoder;

/// Largest server frame the bench accepts (login acks of big groups are long).
const MAX_SERVER_FRAME: usize = 64 * 1024 * 1024;

/// WebSocket messages taken per [`Reader::fill`] once the first has come:
/// those already read from the socket, up to this many.
const WS_BATCH: usize = 256;

/// How bench connections reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// The chat port: LF-terminated frames over TCP.
    Tcp,
    /// A WebSocket to the HTTP listener's `/ws`, one frame per text message.
    Ws,
}

impl Transport {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        }
    }
}

type Ws = WebSocketStream<TcpStream>;

/// Where frames come from.
enum Source {
    /// TCP: bytes, cut into frames by the codec.
    Tcp {
        rd: OwnedReadHalf,
        buf: BytesMut,
        codec: FrameCodec,
    },
    /// WebSocket: whole messages, queued until taken.
    Ws {
        rd: SplitStream<Ws>,
        queue: VecDeque<Bytes>,
    },
}

/// The read side of a connection, frame by frame.
pub struct Reader {
    src: Source,
}

impl Reader {
    fn tcp(rd: OwnedReadHalf) -> Self {
        Reader {
            src: Source::Tcp {
                rd,
                buf: BytesMut::with_capacity(4096),
                codec: FrameCodec::new(MAX_SERVER_FRAME),
            },
        }
    }

    /// Reads more from the connection. `Ok(false)` at end of stream (for a
    /// WebSocket also a close message). Cancel-safe: nothing is lost if the
    /// future is dropped.
    pub async fn fill(&mut self) -> std::io::Result<bool> {
        match &mut self.src {
            Source::Tcp { rd, buf, .. } => {
                if buf.capacity() - buf.len() < 8 * 1024 {
                    buf.reserve(16 * 1024);
                }
                Ok(rd.read_buf(buf).await? > 0)
            }
            Source::Ws { rd, queue } => {
                // The first message may wait; the rest are those already
                // read from the socket (WebSocket layer buffer).
                if !take_ws(rd.next().await, queue)? {
                    return Ok(false);
                }
                for _ in 1..WS_BATCH {
                    // A close here hands over what came before it; the next
                    // fill reports the end.
                    let Some(m) = rd.next().now_or_never() else {
                        break;
                    };
                    if !take_ws(m, queue)? {
                        break;
                    }
                }
                Ok(true)
            }
        }
    }

    /// The next complete frame already buffered, if any.
    pub fn next_buffered(&mut self) -> anyhow::Result<Option<Bytes>> {
        match &mut self.src {
            Source::Tcp { buf, codec, .. } => codec
                .decode(buf)
                .map_err(|e| anyhow!("bad frame from server: {e}")),
            Source::Ws { queue, .. } => Ok(queue.pop_front()),
        }
    }

    /// The next frame, reading as needed; `None` when the server closed.
    pub async fn frame(&mut self) -> anyhow::Result<Option<Bytes>> {
        loop {
            if let Some(f) = self.next_buffered()? {
                return Ok(Some(f));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Waits until the server closes the connection (or it fails), reading
    /// and dropping whatever comes; for held idle connections. Over TCP the
    /// frame buffer is dropped first: nothing is parsed.
    pub async fn closed(self) {
        match self.src {
            Source::Tcp { mut rd, .. } => {
                let mut b = [0u8; 256];
                while let Ok(1..) = rd.read(&mut b).await {}
            }
            // Reading also answers the server's pings.
            Source::Ws { mut rd, .. } => {
                while let Some(Ok(m)) = rd.next().await {
                    if m.is_close() {
                        break;
                    }
                }
            }
        }
    }
}

/// Queues a WebSocket message's frame. `Ok(false)` when the stream ended or
/// the server closed; binary messages are a protocol error.
fn take_ws(
    m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    queue: &mut VecDeque<Bytes>,
) -> std::io::Result<bool> {
    match m {
        None | Some(Ok(Message::Close(_))) => Ok(false),
        Some(Err(e)) => Err(std::io::Error::other(e)),
        Some(Ok(Message::Text(t))) => {
            queue.push_back(t.into());
            Ok(true)
        }
        Some(Ok(Message::Binary(_))) => Err(std::io::Error::other(
            "the server sent a binary WebSocket message",
        )),
        // Pings are answered by the WebSocket layer.
        Some(Ok(_)) => Ok(true),
    }
}

/// The write side of a connection.
pub enum Writer {
    /// TCP: the bytes as they are.
    Tcp(OwnedWriteHalf),
    /// WebSocket: one text message per frame.
    Ws(Box<SplitSink<Ws, Message>>),
}

impl Writer {
    /// Writes complete LF-terminated frames (one or more) and flushes them.
    /// Over a WebSocket each frame (without its LF) becomes one text
    /// message; the batch is copied once and the messages share the copy.
    pub async fn write_frames(&mut self, frames: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Tcp(w) => w.write_all(frames).await,
            Writer::Ws(w) => {
                let all = Bytes::copy_from_slice(frames);
                let mut at = 0;
                while at < all.len() {
                    let end = all[at..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(all.len(), |i| at + i);
                    if end > at {
                        let text = Utf8Bytes::try_from(all.slice(at..end))
                            .map_err(std::io::Error::other)?;
                        w.feed(Message::Text(text))
                            .await
                            .map_err(std::io::Error::other)?;
                    }
                    at = end + 1;
                }
                w.flush().await.map_err(std::io::Error::other)
            }
        }
    }

    /// Ends the connection politely: FIN over TCP, a close message over a
    /// WebSocket.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Writer::Tcp(w) => w.shutdown().await,
            Writer::Ws(w) => w.close().await.map_err(std::io::Error::other),
        }
    }
}

/// One client connection.
pub struct Conn {
    /// Read side.
    pub rd: Reader,
    /// Write side.
    pub wr: Writer,
}

/// A reply that is not the success the caller wanted.
#[derive(Debug)]
pub struct Refused {
    /// The frame's msgid.
    pub msgid: i64,
    /// Its errno.
    pub errno: i64,
    /// Its errmsg.
    pub errmsg: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server refused (msgid {}, errno {}): {}",
            self.msgid, self.errno, self.errmsg
        )
    }
}

impl std::error::Error for Refused {}

/// What a successful login returns.
#[derive(Debug, Default)]
pub struct LoginReply {
    /// Level-2 token for the next login.
    pub token: Option<String>,
}

impl Conn {
    /// Connects over `transport` with a timeout (covering the WebSocket
    /// handshake too) and turns off Nagle.
    pub async fn connect(
        transport: Transport,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<Conn> {
        tokio::time::timeout(timeout, Self::dial(transport, addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))?
            .with_context(|| format!("connect to {addr}"))
    }

    async fn dial(transport: Transport, addr: SocketAddr) -> anyhow::Result<Conn> {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        match transport {
            Transport::Tcp => {
                let (rd, wr) = sock.into_split();
                Ok(Conn {
                    rd: Reader::tcp(rd),
                    wr: Writer::Tcp(wr),
                })
            }
            Transport::Ws => {
                // Buffers like the TCP reader's; the writer flushes after
                // every batch, so its buffer only gathers one batch.
                let cfg = WebSocketConfig::default()
                    .read_buffer_size(16 * 1024)
                    .write_buffer_size(64 * 1024)
                    .max_message_size(Some(MAX_SERVER_FRAME))
                    .max_frame_size(Some(MAX_SERVER_FRAME));
                let (ws, _) = tokio_tungstenite::client_async_with_config(
                    format!("ws://{addr}/ws"),
                    sock,
                    Some(cfg),
                )
                .await
                .context("WebSocket handshake")?;
                let (wr, rd) = ws.split();
                Ok(Conn {
                    rd: Reader {
                        src: Source::Ws {
                            rd,
                            queue: VecDeque::new(),
                        },
                    },
                    wr: Writer::Ws(Box::new(wr)),
                })
            }
        }
    }

    /// Sends one request.
    pub async fn send(&mut self, req: &Request<'_>) -> anyhow::Result<()> {
        self.wr.write_frames(&req.encode(None)).await?;
        Ok(())
    }

    /// Reads frames until one is not a push (chat, PRESENCE, ROSTER) and returns it
    /// parsed. Replies come back in request order, so this is the reply.
    pub async fn reply(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        let fut = async {
            loop {
                let f = self
                    .rd
                    .frame()
                    .await?
                    .ok_or_else(|| anyhow!("server closed the connection"))?;
                match scan::msgid(&f) {
                    Some(msgid::ONE_CHAT | msgid::GROUP_CHAT | msgid::PRESENCE | msgid::ROSTER) => {
                        continue
                    }
                    _ => return Ok(serde_json::from_slice::<Value>(&f)?),
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| anyhow!("no reply within {timeout:?}"))?
    }

    /// Sends `req` and returns its reply, failing on a non-zero errno.
    pub async fn call(&mut self, req: &Request<'_>, timeout: Duration) -> anyhow::Result<Value> {
        self.send(req).await?;
        let r = self.reply(timeout).await?;
        check(&r)?;
        Ok(r)
    }

    /// REG; returns the new user id.
    pub async fn register(
        &mut self,
        name: &str,
        password: &str,
        timeout: Duration,
    ) -> anyhow::Result<i64> {
        let r = self
            .call(&Request::Register { name, password }, timeout)
            .await?;
        r["id"]
            .as_i64()
            .ok_or_else(|| anyhow!("REG_ACK without id: {r}"))
    }

    /// LOGIN at `level` (1 or 2).
    pub async fn login(
        &mut self,
        id: i64,
        secret: Secret<'_>,
        level: u8,
        timeout: Duration,
    ) -> anyhow::Result<LoginReply> {
        let req = Request::Login {
            id,
            secret,
            level,
            last_seq: None,
        };
        let r = self.call(&req, timeout).await?;
        if r["msgid"].as_i64() != Some(msgid::LOGIN_ACK) {
            bail!("expected LOGIN_ACK, got {r}");
        }
        Ok(LoginReply {
            token: r["token"].as_str().map(str::to_owned),
        })
    }

    /// Sends PING and waits for PONG, collecting any failures that came
    /// before it (level-1 requests answer only on failure).
    pub async fn sync(&mut self, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        self.send(&Request::Ping).await?;
        let mut failures = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self.reply(left).await?;
            match r["msgid"].as_i64() {
                Some(msgid::PONG) => return Ok(failures),
                Some(msgid::ACK) => {}
                _ => failures.push(r),
            }
        }
    }
}

/// `Err(Refused)` when a reply carries a non-zero errno.
pub fn check(r: &Value) -> anyhow::Result<()> {
    match r["errno"].as_i64() {
        None | Some(0) => Ok(()),
        Some(errno) => Err(Refused {
            msgid: r["msgid"].as_i64().unwrap_or(-1),
            errno,
            errmsg: r["errmsg"].as_str().unwrap_or_default().to_owned(),
        }
        .into()),
    }
}
