//! A benchmark client connection: connect, send frames, read frames, and the
//! request/reply exchanges (REG, LOGIN, CREATE_GROUP, ...) that set a
//! scenario up. Every wait is bounded by a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use chat_protocol::{msgid, scan, FrameCodec, Request, Secret};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// Largest server frame the bench accepts (login acks of big groups are long).
const MAX_SERVER_FRAME: usize = 64 * 1024 * 1024;

/// The read side: a buffer and the frame decoder.
pub struct Reader {
    /// The socket's read half.
    pub rd: OwnedReadHalf,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Reader {
    fn new(rd: OwnedReadHalf) -> Self {
        Reader {
            rd,
            buf: BytesMut::with_capacity(4096),
            codec: FrameCodec::new(MAX_SERVER_FRAME),
        }
    }

    /// Reads more bytes from the socket. `Ok(false)` at end of stream.
    /// Cancel-safe: nothing is lost if the future is dropped.
    pub async fn fill(&mut self) -> std::io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 8 * 1024 {
            self.buf.reserve(16 * 1024);
        }
        Ok(self.rd.read_buf(&mut self.buf).await? > 0)
    }

    /// The next complete frame already buffered, if any.
    pub fn next_buffered(&mut self) -> anyhow::Result<Option<Bytes>> {
        self.codec
            .decode(&mut self.buf)
            .map_err(|e| anyhow!("bad frame from server: {e}"))
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
}

/// One client connection.
pub struct Conn {
    /// Read side.
    pub rd: Reader,
    /// Write side.
    pub wr: OwnedWriteHalf,
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
    /// Connects with a timeout and turns off Nagle.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Conn> {
        let sock = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        sock.set_nodelay(true)?;
        let (rd, wr) = sock.into_split();
        Ok(Conn {
            rd: Reader::new(rd),
            wr,
        })
    }

    /// Sends one request.
    pub async fn send(&mut self, req: &Request<'_>) -> anyhow::Result<()> {
        self.wr.write_all(&req.encode(None)).await?;
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
