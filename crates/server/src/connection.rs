//! One client connection: a reader that decodes frames and runs requests, and
//! a writer that drains the bounded outbound queue, coalescing frames into few
//! writes.
//!
//! The reader is generic over its [`Source`] of frames: the TCP byte stream
//! cut at terminators here, or WebSocket messages (`http::ws`). Everything
//! after the framing (limits, pipelining, the commands) is the same code.
//!
//! Requests are pipelined: up to `max_inflight` run at once, and their replies
//! go out in request order. LOGIN and LOGINOUT change the session, and friend
//! and group changes change what later requests may do, so they wait for
//! everything before them first (the latter also finish before the next
//! request starts); HISTORY waits too, to see the writes before it.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chat_protocol::{Errno, FrameCodec, FrameError};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::cmd::{Command, Link, Order, Ran, ReplyFuture, ReplyTo};
use crate::error::ServiceError;
use crate::frames;
use crate::outbox::{Outbox, Outgoing, QueueError, Written};
use crate::request::Request;
use crate::service::{session, Service, Session};
use crate::store::UserId;
use crate::throttle::AddrPermit;

/// Token bucket of `rate` frames a second, `burst` at once (the config's,
/// passed in rather than kept: every connection's state is smaller).
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, rate: f64, burst: f64) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where a connection's frames come from.
pub trait Source: Send + 'static {
    /// The transport's name in metrics and logs: `tcp` or `ws`.
    const TRANSPORT: &'static str;

    /// The next frame; None at the end of the stream.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ReadError>>>;
    /// Whether part of a frame is buffered.
    fn buffered(&self) -> bool;
    /// Gives read buffers back while the connection is idle.
    fn release(&mut self);
}

/// Why a [`Source`] could not give a frame.
#[derive(Debug)]
pub enum ReadError {
    /// A frame over the limit (the limit): errno 8, then the connection closes.
    TooLarge(usize),
    /// A frame the transport refuses (a binary WebSocket message): this
    /// error, then the connection closes.
    Refused(ServiceError),
    /// The transport failed; the connection closes without a word.
    Io(std::io::Error),
}

struct Conn<S> {
    sh: Arc<Service>,
    out: Arc<Outbox>,
    close: CancellationToken,
    session: Option<Session>,
    /// Replies in flight, in request order; none allocated while idle (and
    /// boxed, so an idle connection keeps one pointer for it).
    pending: Option<Box<FuturesOrdered<ReplyFuture>>>,
    bucket: Bucket,
    peer: SocketAddr,
    frames: S,
    writer: JoinHandle<()>,
    /// The open-connections gauge this connection counts in (by level).
    gauge: (prometheus_client::metrics::gauge::Gauge, u8),
    /// The connection's slots, held until it closes.
    _permits: (OwnedSemaphorePermit, AddrPermit),
}

type Frames = FramedRead<OwnedReadHalf, FrameCodec>;

/// The frames of a TLS connection.
pub struct TlsFrames(FramedRead<ReadHalf<TlsServerStream>, FrameCodec>);

/// A [`FrameError`] as a [`ReadError`].
fn read_error(e: FrameError) -> ReadError {
    match e {
        FrameError::TooLarge(n) => ReadError::TooLarge(n),
        FrameError::Io(e) => ReadError::Io(e),
    }
}

impl Source for TlsFrames {
    const TRANSPORT: &'static str = "tcp";
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ReadError>>> {
        if self.0.read_buffer().capacity() == 0 {
            self.0.read_buffer_mut().reserve(READ_CHUNK);
        }
        self.0
            .poll_next_unpin(cx)
            .map(|f| f.map(|r| r.map_err(read_error)))
    }

    fn buffered(&self) -> bool {
        !self.0.read_buffer().is_empty()
    }

    /// Keeps a buffer of [`READ_CHUNK`] (the next read would allocate it
    /// again at once) but gives back a larger one.
    fn release(&mut self) {
        if self.0.read_buffer().capacity() > READ_CHUNK {
            *self.0.read_buffer_mut() = BytesMut::with_capacity(READ_CHUNK);
        }
    }
}

impl Source for Frames {
    const TRANSPORT: &'static str = "tcp";
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ReadError>>> {
        poll_frame(self, cx).map(|f| f.map(|r| r.map_err(read_error)))
    }

    fn buffered(&self) -> bool {
        !self.read_buffer().is_empty()
    }

    fn release(&mut self) {
        *self.read_buffer_mut() = BytesMut::new();
    }
}

/// Serves one accepted connection until it closes. `shutdown` is the server's.
/// `peer` is the client's address (from the PROXY header behind a load
/// balancer); the permits hold its connection slots until it closes.
///
/// The setup runs now; the future returned reads until the connection ends.
/// It is what every open connection's task holds for the connection's whole
/// life, so it is kept small: an async block that owns `Conn` (an async fn
/// would keep a second copy of its arguments), with rare and large steps
/// boxed.
pub fn serve(
    sock: TcpStream,
    peer: SocketAddr,
    sh: Arc<Service>,
    shutdown: &CancellationToken,
    permits: (OwnedSemaphorePermit, AddrPermit),
) -> impl Future<Output = ()> + Send + 'static {
    tune(&sock, peer);
    let (rd, wr) = sock.into_split();
    // No read buffer until there is something to read (see `poll_frame`).
    let frames = FramedRead::with_capacity(rd, FrameCodec::new(sh.cfg.max_frame), 0);
    start(frames, wr, peer, sh, shutdown, permits)
}

/// [`serve`] for a connection over TLS (the handshake done). The stream is
/// split with [`tokio::io::split`] (the two halves share it through a lock,
/// as TLS state is one for both directions), and the reader keeps a read
/// buffer: rustls buffers records of its own, so readiness of the socket
/// says nothing about whether a frame can be read.
pub fn serve_tls(
    sock: TlsServerStream,
    peer: SocketAddr,
    sh: Arc<Service>,
    shutdown: &CancellationToken,
    permits: (OwnedSemaphorePermit, AddrPermit),
) -> impl Future<Output = ()> + Send + 'static {
    let (rd, wr) = tokio::io::split(sock);
    let frames = TlsFrames(FramedRead::with_capacity(
        rd,
        FrameCodec::new(sh.cfg.max_frame),
        READ_CHUNK,
    ));
    start(frames, wr, peer, sh, shutdown, permits)
}

/// A TLS connection of the chat listener.
pub type TlsServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Starts the writer of a connection, then returns its reader (see [`serve`]).
fn start<S: Source, W: AsyncWrite + Unpin + Send + 'static>(
    frames: S,
    wr: W,
    peer: SocketAddr,
    sh: Arc<Service>,
    shutdown: &CancellationToken,
    permits: (OwnedSemaphorePermit, AddrPermit),
) -> impl Future<Output = ()> + Send + 'static {
    let out = Arc::new(Outbox::new(sh.cfg.outbound_queue, sh.cfg.outbound_bytes));
    let close = shutdown.child_token();
    let writer = tokio::spawn(write_loop(
        wr,
        out.clone(),
        sh.written.clone(),
        close.clone(),
        sh.cfg.shutdown_grace,
    ));
    tracing::debug!(%peer, "connected");
    run(frames, writer, out, close, peer, sh, permits)
}

/// Turns off Nagle's algorithm (replies are written whole, in as few writes
/// as can be) and turns on TCP keepalive.
pub fn tune(sock: &TcpStream, peer: SocketAddr) {
    let _ = sock.set_nodelay(true);
    keepalive(sock, peer);
}

/// Turns on TCP keepalive, so a peer that vanished is found out within
/// about two minutes even while nothing is sent.
pub fn keepalive(sock: &TcpStream, peer: SocketAddr) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(5);
    if let Err(e) = socket2::SockRef::from(sock).set_tcp_keepalive(&ka) {
        tracing::debug!(%peer, error = %e, "could not enable TCP keepalive");
    }
}

/// Runs the commands of one connection whose frames come from `frames` and
/// whose `writer` drains `out`, until it closes. See [`serve`] for why this
/// returns an async block.
pub fn run<S: Source>(
    frames: S,
    writer: JoinHandle<()>,
    out: Arc<Outbox>,
    close: CancellationToken,
    peer: SocketAddr,
    sh: Arc<Service>,
    permits: (OwnedSemaphorePermit, AddrPermit),
) -> impl Future<Output = ()> + Send + 'static {
    let gauge = sh.metrics.connections_at(S::TRANSPORT, 0);
    gauge.inc();
    let mut conn = Conn {
        gauge: (gauge, 0),
        bucket: Bucket {
            tokens: sh.cfg.rate_burst.max(1) as f64,
            last: Instant::now(),
        },
        sh,
        out,
        close,
        session: None,
        pending: None,
        peer,
        frames,
        writer,
        _permits: permits,
    };
    async move {
        conn.read_loop().await;
        // Boxed: rare, large futures would otherwise make every
        // connection's task that much bigger for its whole life.
        Box::pin(conn.end()).await;
    }
}

impl<S: Source> Conn<S> {
    async fn read_loop(&mut self) {
        // The login deadline: set at connect and at LOGINOUT, never
        // extended by other frames (junk must not hold a slot), dropped
        // once logged in.
        let mut idle = Some(Box::pin(tokio::time::sleep(self.sh.cfg.login_idle_timeout)));
        // One wait for the close for the whole loop: made afresh in each
        // round, it registered with the token and left it again (locks
        // both ways) for every frame read and every reply written.
        let closed = self.close.clone().cancelled_owned();
        tokio::pin!(closed);
        loop {
            let in_flight = self.pending.as_ref().map_or(0, |p| p.len());
            if in_flight == 0 && !self.frames.buffered() {
                // Idle: give the memory back.
                self.pending = None;
                self.frames.release();
            }
            let can_read = in_flight < self.sh.cfg.max_inflight.max(1);
            let frames = &mut self.frames;
            tokio::select! {
                biased;
                _ = &mut closed => break,
                Some(reply) = std::future::poll_fn(|cx| poll_reply(&mut self.pending, cx)), if in_flight > 0 => {
                    if !self.emit_ready(reply).await { break }
                }
                f = std::future::poll_fn(|cx| frames.poll_frame(cx)), if can_read => match f {
                    None => break,
                    Some(Ok(frame)) => {
                        Box::pin(self.on_frame(frame)).await;
                        self.count_level();
                        match (&self.session, &idle) {
                            (Some(_), Some(_)) => idle = None,
                            // LOGINOUT: a new window to log in again.
                            (None, None) => idle = Some(Box::pin(tokio::time::sleep(self.sh.cfg.login_idle_timeout))),
                            _ => {}
                        }
                    }
                    Some(Err(ReadError::TooLarge(n))) => {
                        tracing::info!(peer = %self.peer, limit = n, "frame too large; closing");
                        let e = ServiceError::new(Errno::FrameTooLarge, format!("frame longer than {n} bytes; closing"));
                        Box::pin(self.fail_and_close(e)).await;
                        break;
                    }
                    Some(Err(ReadError::Refused(e))) => {
                        tracing::info!(peer = %self.peer, error = %e, "frame refused; closing");
                        Box::pin(self.fail_and_close(e)).await;
                        break;
                    }
                    Some(Err(ReadError::Io(e))) => {
                        tracing::debug!(peer = %self.peer, error = %e, "read failed");
                        break;
                    }
                },
                _ = async { if let Some(s) = idle.as_mut() { s.await } }, if self.session.is_none() && idle.is_some() => {
                    tracing::debug!(peer = %self.peer, "closing connection that did not log in in time");
                    Box::pin(self.fail_and_close(ServiceError::new(Errno::NotLoggedIn, "no login in time; closing"))).await;
                    break;
                }
            }
        }
    }

    /// Moves this connection to the gauge of its session's level, if that
    /// changed (a login or a logout).
    fn count_level(&mut self) {
        let level = self.session.as_ref().map_or(0, |s| s.level);
        if level != self.gauge.1 {
            self.gauge.0.dec();
            let g = self.sh.metrics.connections_at(S::TRANSPORT, level);
            g.inc();
            self.gauge = (g, level);
        }
    }

    /// After the read loop: replies in flight and the logout (see
    /// `finish`), then the writer sends what is queued and stops.
    async fn end(&mut self) {
        self.finish().await;
        self.gauge.0.dec();
        self.out.close();
        let grace = self.sh.cfg.shutdown_grace + Duration::from_secs(1);
        if tokio::time::timeout(grace, &mut self.writer).await.is_err() {
            self.writer.abort();
        }
        tracing::debug!(peer = %self.peer, "disconnected");
    }

    /// Queues a frame for the writer; false once the connection is closing.
    /// Not an async fn: the frame is offered right away, and only a full
    /// queue (rare) makes a boxed future that waits for space.
    fn emit(&mut self, frame: Option<Bytes>) -> impl Future<Output = bool> + Send + '_ {
        let wait = match frame.map(|b| self.out.offer(Outgoing::frame(b))) {
            None | Some(Ok(())) => Ok(true),
            Some(Err((QueueError::Closed, _))) => Ok(false),
            Some(Err((QueueError::Full, out))) => {
                let (outbox, close) = (&self.out, &self.close);
                Err(Box::pin(async move {
                    tokio::select! {
                        r = outbox.send(out) => r.is_ok(),
                        _ = close.cancelled() => false,
                    }
                }))
            }
        };
        async move {
            match wait {
                Ok(r) => r,
                Err(w) => w.await,
            }
        }
    }

    /// Queues `reply`, then every reply behind it that is ready too: a
    /// group commit answers many requests of a connection at once, and one
    /// trip round the read loop's `select!` per reply cost more than the
    /// reply. False once the connection is closing.
    async fn emit_ready(&mut self, reply: Option<Bytes>) -> bool {
        let mut next = Some(reply);
        while let Some(reply) = next {
            if !self.emit(reply).await {
                return false;
            }
            next = std::future::poll_fn(|cx| {
                Poll::Ready(match poll_reply(&mut self.pending, cx) {
                    Poll::Ready(r) => r,
                    Poll::Pending => None,
                })
            })
            .await;
        }
        true
    }

    fn pending_mut(&mut self) -> &mut FuturesOrdered<ReplyFuture> {
        self.pending
            .get_or_insert_with(|| Box::new(FuturesOrdered::new()))
    }

    /// Queues the replies in flight, then the error the connection closes with.
    async fn fail_and_close(&mut self, e: ServiceError) {
        self.sh.metrics.error(None, &e);
        self.drain().await;
        self.emit(Some(frames::failure(None, None, &e))).await;
    }

    /// Waits for every pipelined request and queues its reply.
    async fn drain(&mut self) {
        while let Some(reply) = std::future::poll_fn(|cx| poll_reply(&mut self.pending, cx)).await {
            self.emit(reply).await;
        }
    }

    fn level(&self) -> u8 {
        self.session.as_ref().map_or(1, |s| s.level)
    }

    /// A reply that is ready now, queued behind those in flight.
    fn queue_ready(&mut self, frame: Option<Bytes>) {
        self.pending_mut()
            .push_back(Box::pin(std::future::ready(frame)));
    }

    async fn on_frame(&mut self, frame: Bytes) {
        if self.session.is_none() && !self.sh.guards.prelogin.take(self.peer.ip()) {
            // Before login a connection is anonymous: its address pays. A
            // flood from one address (REG, junk, many connections) is cut
            // off instead of answered frame by frame.
            if let Some(skipped) = self.sh.guards.refused_log.tick() {
                tracing::warn!(peer = %self.peer, refused_before = skipped, "too many requests before login from this address; closing");
            }
            let e = ServiceError::new(
                Errno::RateLimited,
                "too many requests before login from your address; closing",
            );
            Box::pin(self.fail_and_close(e)).await;
            self.close.cancel();
            return;
        }
        let cfg = &self.sh.cfg;
        if !self
            .bucket
            .take(cfg.rate_limit as f64, cfg.rate_burst.max(1) as f64)
        {
            let e = ServiceError::new(Errno::RateLimited, "too many requests; slow down");
            self.sh.metrics.error(None, &e);
            self.queue_ready(Some(frames::failure(None, None, &e)));
            return;
        }
        let req = match Request::parse(&frame) {
            Ok(r) => r,
            Err(bad) => {
                self.sh.metrics.error(None, &bad.error);
                self.queue_ready(Some(frames::failure(None, bad.reqid.as_ref(), &bad.error)));
                return;
            }
        };
        let sh = self.sh.clone();
        let parsed = Command::parse(&req, self.session.as_ref(), &sh);
        sh.metrics.request(req.msgid);
        let to = ReplyTo {
            msgid: req.msgid,
            reqid: req.reqid,
            level: self.level(),
            metrics: sh.metrics.clone(),
        };
        let cmd = match parsed {
            Ok(c) => c,
            Err(e) => return self.queue_ready(Some(to.error(&e))),
        };
        let order = cmd.order();
        if order != Order::Pipelined {
            self.drain().await;
        }
        let mut link = Link {
            out: &self.out,
            close: &self.close,
            ip: self.peer.ip(),
            session: &mut self.session,
        };
        match cmd.run(&sh, &mut link, to).await {
            Ran::Queued(reply) => self.pending_mut().push_back(reply),
            Ran::Done(frame) => self.queue_ready(frame),
        }
        if order == Order::Exclusive {
            self.drain().await;
        }
    }

    /// Ends the connection: replies still in flight get the grace period,
    /// then the session (if any) logs out.
    async fn finish(&mut self) {
        let grace = self.sh.cfg.shutdown_grace;
        if tokio::time::timeout(grace, self.drain()).await.is_err() {
            tracing::warn!(peer = %self.peer, "replies still pending at close were dropped");
        }
        if let Some(s) = self.session.take() {
            if tokio::time::timeout(grace, session::end(&self.sh, &s, false))
                .await
                .is_err()
            {
                tracing::warn!(user = s.user, "logout did not finish in time");
            }
        }
    }
}

/// The next reply in request order; None when nothing is in flight.
fn poll_reply(
    pending: &mut Option<Box<FuturesOrdered<ReplyFuture>>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Option<Bytes>>> {
    match pending {
        Some(p) => p.poll_next_unpin(cx),
        None => Poll::Ready(None),
    }
}

/// The next frame. With nothing buffered it first waits for the socket to be
/// readable and only then allocates a buffer, so that an idle connection
/// holds none while a busy one still reads in big chunks. A poll rather than
/// an async fn: waiting on `readable()` would keep its future (some 170
/// bytes) in every idle connection's task.
fn poll_frame(
    frames: &mut Frames,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Bytes, FrameError>>> {
    if frames.read_buffer().is_empty() {
        if let Err(e) = ready!(frames.get_ref().as_ref().poll_read_ready(cx)) {
            return Poll::Ready(Some(Err(FrameError::Io(e))));
        }
        frames.read_buffer_mut().reserve(READ_CHUNK);
    }
    frames.poll_next_unpin(cx)
}

/// Read buffer size for a connection with data waiting.
const READ_CHUNK: usize = 2048;

/// Drains the outbound queue into the socket. After a level-1 push is
/// written, the write is reported (the service confirms its seq). Once the connection is closing, a write
/// that makes no progress for `grace` is abandoned.
///
/// An async block rather than an async fn (which would keep a second copy of
/// its arguments), and everything but the wait for frames boxed: an idle
/// connection's writer task then holds little more than its arguments.
fn write_loop<W: AsyncWrite + Unpin + Send + 'static>(
    mut wr: W,
    outbox: Arc<Outbox>,
    written: Arc<dyn Written>,
    close: CancellationToken,
    grace: Duration,
) -> impl Future<Output = ()> + Send + 'static {
    const COALESCE: usize = 64 * 1024;
    async move {
        let mut batch: VecDeque<Outgoing> = VecDeque::new();
        while std::future::poll_fn(|cx| outbox.poll_batch(cx, &mut batch, COALESCE)).await {
            // Built in a block of its own so that none of it stays in the
            // task's state while the write runs.
            let write = {
                // A fresh buffer per batch: an idle connection holds no
                // write buffer.
                let len: usize = batch.iter().map(Outgoing::len).sum();
                let mut buf = BytesMut::with_capacity(len);
                let mut receipt = Receipt::default();
                for mut o in batch.drain(..) {
                    buf.extend_from_slice(&o.bytes);
                    if let Some(t) = &o.tail {
                        buf.extend_from_slice(t);
                    }
                    receipt.note(&mut o);
                }
                let (wr, report, close) = (&mut wr, &written, &close);
                Box::pin(async move {
                    let written = tokio::select! {
                        // Flushed: over TLS, a write may leave records
                        // in the session's buffer (a no-op on TCP).
                        r = async { wr.write_all_buf(&mut buf).await?; wr.flush().await } => r.is_ok(),
                        _ = async { close.cancelled().await; tokio::time::sleep(grace).await } => false,
                    };
                    if written {
                        receipt.settle(report.as_ref()).await;
                    }
                    written
                })
            };
            if !write.await {
                break;
            }
        }
        // Senders must not wait for space that will never come.
        outbox.close();
        let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), wr.shutdown())).await;
    }
}

/// What a batch of frames settles once it is written: the level-1
/// confirmations and the flush barriers it carries.
#[derive(Default)]
pub struct Receipt {
    barriers: Vec<tokio::sync::oneshot::Sender<()>>,
    confirm: Vec<(UserId, i64)>,
}

impl Receipt {
    /// Takes what `o` settles (call for every frame of the batch, in order).
    pub fn note(&mut self, o: &mut Outgoing) {
        self.barriers.extend(o.flushed.take());
        if let Some((u, s)) = o.l1_delivered {
            match self.confirm.last_mut() {
                Some((lu, ls)) if *lu == u => *ls = (*ls).max(s),
                _ => self.confirm.push((u, s)),
            }
        }
    }

    /// After the batch is written: confirms, then fires the barriers.
    pub async fn settle(self, written: &dyn Written) {
        for (user, seq) in self.confirm {
            written.written(user, seq, !self.barriers.is_empty()).await;
        }
        for b in self.barriers {
            let _ = b.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::StoreOptions;
    use tokio::net::TcpListener;

    /// Every open connection's two tasks hold these futures for its whole
    /// life: at 20,000 idle connections each 128 bytes (the granularity of
    /// tokio's task allocations) is 2.5 MB. A large future awaited inline
    /// (instead of boxed) or an extra copy of the state shows up here.
    #[tokio::test]
    async fn an_idle_connection_keeps_little_state() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("chat.db").display());
        let store = crate::store::open(&url, &StoreOptions::default())
            .await
            .unwrap();
        let node = crate::Node::single(Config::default(), store).unwrap();
        let sh = node.service().clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (sock, peer) = listener.accept().await.unwrap();
        let permits = (
            Arc::new(tokio::sync::Semaphore::new(1))
                .try_acquire_owned()
                .unwrap(),
            sh.guards.conns.try_acquire(peer.ip()).unwrap(),
        );
        let reader = serve(sock, peer, sh.clone(), &CancellationToken::new(), permits);
        let (_, wr) = client.into_split();
        let writer = write_loop(
            wr,
            Arc::new(Outbox::new(1, 1)),
            sh.written.clone(),
            CancellationToken::new(),
            Duration::from_secs(1),
        );
        // A task takes its future plus about 112 bytes (tracker token,
        // header, trailer), rounded up to 128: these keep the two tasks at
        // 768 and 256 bytes (they were 1,536 and 512).
        let (r, w) = (size_of_val(&reader), size_of_val(&writer));
        assert!(r <= 656, "the connection's future takes {r} bytes");
        assert!(w <= 152, "the writer's future takes {w} bytes");
    }
}
