//! The connection to a clusterchat server: one TCP stream (direct, or through
//! an nginx stream proxy: all it needs is an address), plain or TLS
//! (`--tls`), requests encoded by `chat_protocol::Request` (JSON + "\n"),
//! server frames read with the protocol's frame codec.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use chat_protocol::{FrameCodec, Request};
use futures_util::StreamExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
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

/// Where the client connects: the address, and how to speak TLS there.
#[derive(Clone)]
pub struct Server {
    /// `HOST:PORT`; host names are resolved.
    pub addr: String,
    /// TLS (`--tls`): None speaks plain TCP.
    pub tls: Option<Tls>,
}

/// A plain (no TLS) server at this address.
impl From<&str> for Server {
    fn from(addr: &str) -> Server {
        Server {
            addr: addr.to_owned(),
            tls: None,
        }
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tls {
            None => f.write_str(&self.addr),
            Some(_) => write!(f, "{} (TLS)", self.addr),
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// How to speak TLS to the server: whom to trust, and the name its
/// certificate must carry.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    /// TLS to `addr`, verifying the server's certificate against the CA
    /// certificates (PEM) in `ca`, or without it the system's trusted roots.
    /// The certificate must be for `name`, by default the host part of
    /// `addr` (a DNS name or an IP address).
    pub fn new(addr: &str, ca: Option<&Path>, name: Option<&str>) -> anyhow::Result<Tls> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(ca) => {
                let certs = CertificateDer::pem_file_iter(ca)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .with_context(|| {
                        format!("cannot read the CA certificates in {}", ca.display())
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                anyhow::ensure!(added > 0, "no usable CA certificate in {}", ca.display());
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                anyhow::ensure!(
                    !roots.is_empty(),
                    "no trusted CA certificates found on this system{}; name one with --ca FILE",
                    found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let host = name.unwrap_or_else(|| host_part(addr));
        let name = ServerName::try_from(host)
            .map(|n| n.to_owned())
            .map_err(|_| anyhow!("{host:?} is not a host name or IP address for TLS; name the server with --tls-name NAME"))?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// The host of `HOST:PORT` (`[V6]:PORT` too), without the brackets.
fn host_part(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host;
        }
    }
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// An open connection to the server.
pub struct Conn {
    frames: FramedRead<Reader, FrameCodec>,
    wr: Writer,
    next_reqid: u64,
    closed: bool,
}

impl Conn {
    /// Connects to `server`, and with TLS completes the handshake (the
    /// server's certificate verified), all within [`CONNECT_TIMEOUT`].
    pub async fn connect(server: &Server) -> anyhow::Result<Conn> {
        let addr = &server.addr;
        let connect = async {
            let sock = TcpStream::connect(addr)
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            let _ = sock.set_nodelay(true);
            let (rd, wr): (Reader, Writer) = match &server.tls {
                None => {
                    let (rd, wr) = sock.into_split();
                    (Box::pin(rd) as Reader, Box::pin(wr) as Writer)
                }
                Some(tls) => {
                    let s = tls
                        .connector
                        .connect(tls.name.clone(), sock)
                        .await
                        .with_context(|| format!("TLS handshake with {addr} failed"))?;
                    let (rd, wr) = tokio::io::split(s);
                    (Box::pin(rd) as Reader, Box::pin(wr) as Writer)
                }
            };
            anyhow::Ok((rd, wr))
        };
        let (rd, wr) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| anyhow!("cannot connect to {addr}: timed out"))??;
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
        // Flushed: over TLS the record may sit in the session's buffer.
        let write = async {
            self.wr.write_all(frame).await?;
            self.wr.flush().await
        };
        write.await.context("cannot send to the server")
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

    fn plain(addr: &str) -> Server {
        Server::from(addr)
    }

    #[test]
    fn the_tls_name_is_the_host_part() {
        assert_eq!(host_part("chat.example.com:6000"), "chat.example.com");
        assert_eq!(host_part("127.0.0.1:6000"), "127.0.0.1");
        assert_eq!(host_part("[::1]:6000"), "::1");
        assert_eq!(host_part("localhost"), "localhost");
    }

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
        let mut c = Conn::connect(&plain(&addr)).await.unwrap();
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
        let err = Conn::connect(&plain(&addr))
            .await
            .err()
            .expect("nothing listens");
        assert!(err.to_string().contains("cannot connect"), "{err:#}");
    }
}
