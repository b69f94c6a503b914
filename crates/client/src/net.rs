//! The connection to a clusterchat server: one TCP stream (direct, or through
//! an nginx stream proxy: all it needs is an address), requests encoded by
//! `chat_protocol::Request` (JSON + "\n"), server frames read with the
//! protocol's frame codec.

use std::time::Duration;

use anyhow::{anyhow, Context};
use chat_protocol::{FrameCodec, Request};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

/// Longest server frame the client accepts. HISTORY pages can hold 200
/// messages of 16 KiB each, so this is far above the request limit.
pub const MAX_SERVER_FRAME: usize = 32 * 1024 * 1024;

/// How long connecting may take before the client gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What reading from the server produced.
#[derive(Debug)]
pub enum Event {
    /// One JSON object from the server.
    Frame(Map<String, Value>),
    /// The connection is gone; the text says why when known.
    Closed(Option<String>),
}

/// An open connection to the server.
pub struct Conn {
    frames: FramedRead<OwnedReadHalf, FrameCodec>,
    wr: OwnedWriteHalf,
    next_reqid: u64,
    closed: bool,
}

impl Conn {
    /// Connects to `addr` (`HOST:PORT`; host names are resolved).
    pub async fn connect(addr: &str) -> anyhow::Result<Conn> {
        let sock = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("cannot connect to {addr}: timed out"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        let _ = sock.set_nodelay(true);
        let (rd, wr) = sock.into_split();
        Ok(Conn {
            frames: FramedRead::new(rd, FrameCodec::new(MAX_SERVER_FRAME)),
            wr,
            next_reqid: 1,
            closed: false,
        })
    }

    /// Sends one request with a fresh `reqid`, and returns the reqid, which
    /// the server echoes in the reply.
    pub async fn request(&mut self, req: &Request<'_>) -> anyhow::Result<u64> {
        let reqid = self.next_reqid;
        self.next_reqid += 1;
        self.write(&req.encode(Some(reqid))).await?;
        Ok(reqid)
    }

    /// Sends one request built as a JSON object (for fields the typed
    /// builder lacks, such as a chat's `cmid`) with a fresh `reqid`, and
    /// returns the reqid.
    pub async fn request_object(&mut self, mut obj: Map<String, Value>) -> anyhow::Result<u64> {
        let reqid = self.next_reqid;
        self.next_reqid += 1;
        obj.insert("reqid".into(), reqid.into());
        let mut frame = Value::Object(obj).to_string().into_bytes();
        frame.push(b'\n');
        self.write(&frame).await?;
        Ok(reqid)
    }

    /// Sends one request that gets no reply (DELIVERED), without a reqid.
    pub async fn send(&mut self, req: &Request<'_>) -> anyhow::Result<()> {
        self.write(&req.encode(None)).await
    }

    async fn write(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        if self.closed {
            return Err(anyhow!("the connection to the server is closed"));
        }
        self.wr
            .write_all(frame)
            .await
            .context("cannot send to the server")
    }

    /// Waits for the next frame. Cancel-safe: nothing is lost when the future
    /// is dropped, so it can sit in a `select!`. Frames that are not JSON
    /// objects are skipped.
    pub async fn recv(&mut self) -> Event {
        loop {
            if self.closed {
                return Event::Closed(None);
            }
            match self.frames.next().await {
                None => {
                    self.closed = true;
                    return Event::Closed(None);
                }
                Some(Err(e)) => {
                    self.closed = true;
                    return Event::Closed(Some(e.to_string()));
                }
                Some(Ok(bytes)) => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(Value::Object(m)) => return Event::Frame(m),
                    _ => continue,
                },
            }
        }
    }
}

/// The next event of `conn`, or never when there is no connection (so it
/// can sit in a `select!` while the client is offline).
pub async fn recv_opt(conn: &mut Option<Conn>) -> Event {
    match conn {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// An integer field of a server frame.
pub fn int(m: &Map<String, Value>, key: &str) -> Option<i64> {
    m.get(key).and_then(Value::as_i64)
}

/// The objects in an array field of a server frame (none when absent).
pub fn objects<'a>(
    m: &'a Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a Map<String, Value>> {
    m.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
}

/// Why the server refused a request, in words: its `errmsg`, or the errno
/// when it sent none.
pub fn reason(m: &Map<String, Value>) -> String {
    let msg = crate::ui::clean(text(m, "errmsg"));
    if msg.is_empty() {
        format!("error {}", int(m, "errno").unwrap_or(-1))
    } else {
        msg
    }
}

/// A string field of a server frame, or "" when absent.
pub fn text<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn requests_are_lines_and_replies_are_split_on_lf() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut lines = BufReader::new(rd).lines();
            let first = lines.next_line().await.unwrap().unwrap();
            wr.write_all(b"{\"msgid\":19,\"reqid\":1}\nnot json\n{\"msgid\":20,")
                .await
                .unwrap();
            wr.write_all(b"\"id\":2,\"state\":\"online\"}\n")
                .await
                .unwrap();
            first
        });
        let mut c = Conn::connect(&addr).await.unwrap();
        let reqid = c.request(&Request::Ping).await.unwrap();
        assert_eq!(reqid, 1);
        let Event::Frame(pong) = c.recv().await else {
            panic!("expected a frame")
        };
        assert_eq!(int(&pong, "msgid"), Some(19));
        let Event::Frame(p) = c.recv().await else {
            panic!("expected a frame")
        };
        assert_eq!(text(&p, "state"), "online");
        let sent: Value = serde_json::from_str(&server.await.unwrap()).unwrap();
        assert_eq!(sent, serde_json::json!({"msgid": 18, "reqid": 1}));
        assert!(matches!(c.recv().await, Event::Closed(_)));
    }

    #[tokio::test]
    async fn refused_connection_is_an_error_not_a_panic() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let err = Conn::connect(&addr).await.err().expect("nothing listens");
        assert!(err.to_string().contains("cannot connect"), "{err:#}");
    }
}
