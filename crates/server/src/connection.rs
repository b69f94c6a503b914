//! One client connection: a reader that decodes frames and runs requests, and
//! a writer that drains the bounded outbound queue, coalescing frames into few
//! writes.
//!
//! Requests are pipelined: up to `max_inflight` run at once, and their replies
//! go out in request order. LOGIN and LOGINOUT change the session, and friend
//! and group changes change what later requests may do, so they wait for
//! everything before them first (the latter also finish before the next
//! request starts); HISTORY waits too, to see the writes before it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chat_protocol::{msgid, Errno, FrameCodec, FrameError};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::committer::Committer;
use crate::error::ServiceError;
use crate::frames;
use crate::request::Request;
use crate::service::{auth, chat, social, HandlerResult, Pending, Reply, Session, Shared};
use crate::sessions::{Out, Outbox, PushError};
use crate::store::{UserId, WriteOp};
use crate::throttle::AddrPermit;

type Encoded = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Bytes>> + Send>>;

/// Token bucket: `rate` frames a second, `burst` at once.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Conn {
    sh: Arc<Shared>,
    out: Arc<Outbox>,
    close: CancellationToken,
    session: Option<Session>,
    /// Replies in flight, in request order; none allocated while idle.
    pending: Option<FuturesOrdered<Encoded>>,
    bucket: Bucket,
    peer: SocketAddr,
}

/// Serves one accepted connection until it closes. `shutdown` is the server's.
/// `peer` is the client's address (from the PROXY header behind a load
/// balancer); the permits hold its connection slots until it closes.
pub async fn serve(
    sock: TcpStream,
    peer: SocketAddr,
    sh: Arc<Shared>,
    shutdown: CancellationToken,
    _permits: (OwnedSemaphorePermit, AddrPermit),
) {
    let _ = sock.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(5);
    if let Err(e) = socket2::SockRef::from(&sock).set_tcp_keepalive(&ka) {
        tracing::debug!(%peer, error = %e, "could not enable TCP keepalive");
    }
    let (rd, wr) = sock.into_split();
    // No read buffer until there is something to read (see `read_loop`).
    let mut frames = FramedRead::with_capacity(rd, FrameCodec::new(sh.cfg.max_frame), 0);
    let out = Arc::new(Outbox::new(sh.cfg.outbound_queue, sh.cfg.outbound_bytes));
    let close = shutdown.child_token();
    let grace = sh.cfg.shutdown_grace;
    let wfut = write_loop(wr, out.clone(), sh.committer.clone(), close.clone(), grace);
    let writer = tokio::spawn(wfut);
    tracing::debug!(%peer, "connected");
    let mut conn = Conn {
        bucket: Bucket {
            rate: sh.cfg.rate_limit as f64,
            burst: sh.cfg.rate_burst.max(1) as f64,
            tokens: sh.cfg.rate_burst.max(1) as f64,
            last: Instant::now(),
        },
        sh,
        out,
        close,
        session: None,
        pending: None,
        peer,
    };
    conn.read_loop(&mut frames).await;
    // Boxed, here and below: rare, large futures would otherwise make every
    // connection's task that much bigger for its whole life.
    Box::pin(conn.finish()).await;
    // The writer sends what is queued and stops.
    conn.out.close();
    drop(conn);
    let mut writer = writer;
    if Box::pin(tokio::time::timeout(
        grace + Duration::from_secs(1),
        &mut writer,
    ))
    .await
    .is_err()
    {
        writer.abort();
    }
    tracing::debug!(%peer, "disconnected");
}

impl Conn {
    async fn read_loop(
        &mut self,
        frames: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    ) {
        // The login deadline: set at connect and at LOGINOUT, never
        // extended by other frames (junk must not hold a slot), dropped
        // once logged in.
        let mut idle = Some(Box::pin(tokio::time::sleep(self.sh.cfg.login_idle_timeout)));
        loop {
            let in_flight = self.pending.as_ref().map_or(0, |p| p.len());
            if in_flight == 0 && frames.read_buffer().is_empty() {
                // Idle: give the memory back.
                self.pending = None;
                *frames.read_buffer_mut() = BytesMut::new();
            }
            let can_read = in_flight < self.sh.cfg.max_inflight.max(1);
            tokio::select! {
                biased;
                _ = self.close.cancelled() => break,
                Some(reply) = next_reply(&mut self.pending), if in_flight > 0 => {
                    if !self.emit(reply).await { break }
                }
                f = next_frame(frames), if can_read => match f {
                    None => break,
                    Some(Ok(frame)) => {
                        Box::pin(self.on_frame(frame)).await;
                        match (&self.session, &idle) {
                            (Some(_), Some(_)) => idle = None,
                            // LOGINOUT: a new window to log in again.
                            (None, None) => idle = Some(Box::pin(tokio::time::sleep(self.sh.cfg.login_idle_timeout))),
                            _ => {}
                        }
                    }
                    Some(Err(FrameError::TooLarge(n))) => {
                        tracing::info!(peer = %self.peer, limit = n, "frame too large; closing");
                        let e = ServiceError::new(Errno::FrameTooLarge, format!("frame longer than {n} bytes; closing"));
                        Box::pin(self.fail_and_close(e)).await;
                        break;
                    }
                    Some(Err(FrameError::Io(e))) => {
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

    /// Queues a frame for the writer; false once the connection is closing.
    async fn emit(&mut self, frame: Option<Bytes>) -> bool {
        let Some(bytes) = frame else { return true };
        match self.out.offer(Out::frame(bytes)) {
            Ok(()) => true,
            Err((PushError::Closed, _)) => false,
            // Rare, so boxed: waiting stays out of the connection's task.
            Err((PushError::Full, out)) => {
                let (outbox, close) = (&self.out, &self.close);
                Box::pin(async move {
                    tokio::select! {
                        r = outbox.push(out) => r.is_ok(),
                        _ = close.cancelled() => false,
                    }
                })
                .await
            }
        }
    }

    fn pending_mut(&mut self) -> &mut FuturesOrdered<Encoded> {
        self.pending.get_or_insert_with(FuturesOrdered::new)
    }

    /// Queues the replies in flight, then the error the connection closes with.
    async fn fail_and_close(&mut self, e: ServiceError) {
        self.drain().await;
        self.emit(Some(frames::failure(None, None, &e))).await;
    }

    /// Waits for every pipelined request and queues its reply.
    async fn drain(&mut self) {
        while let Some(reply) = next_reply(&mut self.pending).await {
            self.emit(reply).await;
        }
    }

    fn level(&self) -> u8 {
        self.session.as_ref().map_or(1, |s| s.level)
    }

    fn push(&mut self, re: i64, reqid: Option<Value>, work: Result<Pending, ServiceError>) {
        let level = self.level();
        let fut: Encoded = match work {
            Ok(p) => Box::pin(async move { encode(re, reqid.as_ref(), level, p.await) }),
            Err(e) => {
                let r = encode(re, reqid.as_ref(), level, Err(e));
                Box::pin(std::future::ready(r))
            }
        };
        self.pending_mut().push_back(fut);
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
        if !self.bucket.take() {
            let e = ServiceError::new(Errno::RateLimited, "too many requests; slow down");
            self.pending_mut()
                .push_back(Box::pin(std::future::ready(Some(frames::failure(
                    None, None, &e,
                )))));
            return;
        }
        let req = match Request::parse(&frame) {
            Ok(r) => r,
            Err(bad) => {
                let f = frames::failure(None, bad.reqid.as_ref(), &bad.error);
                self.pending_mut()
                    .push_back(Box::pin(std::future::ready(Some(f))));
                return;
            }
        };
        let sh = self.sh.clone();
        let id = req.msgid;
        match id {
            msgid::LOGIN => {
                self.drain().await;
                let r = if self.session.is_some() {
                    Err(ServiceError::new(
                        Errno::Forbidden,
                        "this connection is logged in; send LOGINOUT first",
                    ))
                } else {
                    let port = auth::ConnPort {
                        out: &self.out,
                        close: &self.close,
                        ip: self.peer.ip(),
                    };
                    auth::login(&sh, port, &req).await
                };
                match r {
                    Ok(s) => self.session = Some(s),
                    Err(e) => {
                        self.emit(Some(frames::failure(Some(id), req.reqid.as_ref(), &e)))
                            .await;
                    }
                }
            }
            msgid::LOGINOUT => {
                self.drain().await;
                let r = match &self.session {
                    None => Err(ServiceError::not_logged_in()),
                    Some(s) => s.check_self_and(&req),
                };
                let level = self.level();
                if r.is_ok() {
                    if level < 2 {
                        // Level-1 pushes count as delivered once written: let
                        // those confirmations land before the session ends,
                        // so a quick re-login is not handed them again.
                        let (done, flushed) = tokio::sync::oneshot::channel();
                        if self.out.offer(Out::barrier(done)).is_ok() {
                            let _ = tokio::time::timeout(self.sh.cfg.shutdown_grace, flushed).await;
                        }
                    }
                    if let Some(s) = self.session.take() {
                        auth::logout(&sh, &s, true).await;
                    }
                }
                self.emit(encode(
                    id,
                    req.reqid.as_ref(),
                    level,
                    r.map(|_| Reply::Ack(vec![])),
                ))
                .await;
            }
            msgid::REG => {
                // One password hash in flight per connection: a pipelined
                // flood waits for each one instead of filling the queue.
                self.drain().await;
                let w = if sh.guards.reg.take(self.peer.ip()) {
                    auth::register(&sh, &req)
                } else {
                    Err(ServiceError::new(
                        Errno::RateLimited,
                        "too many registrations from your address; try again later",
                    ))
                };
                self.push(id, req.reqid, w);
            }
            msgid::PING => self.push(
                id,
                req.reqid,
                Ok(crate::service::ready(Ok(Reply::Frame(frames::pong())))),
            ),
            msgid::ONE_CHAT | msgid::GROUP_CHAT | msgid::DELIVERED | msgid::HISTORY => {
                if id == msgid::HISTORY {
                    // It must see what this connection wrote before it.
                    self.drain().await;
                }
                let w = match &self.session {
                    None => Err(ServiceError::not_logged_in()),
                    Some(s) => match id {
                        msgid::DELIVERED => chat::delivered(&sh, s, &req),
                        msgid::HISTORY => chat::history(&sh, s, &req),
                        _ => chat::send(&sh, s, &req),
                    },
                };
                self.push(id, req.reqid, w);
            }
            msgid::ADD_FRIEND
            | msgid::DEL_FRIEND
            | msgid::CREATE_GROUP
            | msgid::ADD_GROUP
            | msgid::QUIT_GROUP
            | msgid::DISBAND_GROUP => {
                // Take effect in request order: a pipelined ADD_GROUP then
                // GROUP_CHAT must not run the chat first.
                self.drain().await;
                let w = match &self.session {
                    None => Err(ServiceError::not_logged_in()),
                    Some(s) => social::handle(&sh, s, &req),
                };
                self.push(id, req.reqid, w);
                self.drain().await;
            }
            _ => {
                let e = ServiceError::malformed(format!("unknown msgid {id}"));
                self.push(id, req.reqid, Err(e));
            }
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
            if tokio::time::timeout(grace, auth::logout(&self.sh, &s, false))
                .await
                .is_err()
            {
                tracing::warn!(user = s.user, "logout did not finish in time");
            }
        }
    }
}

impl Session {
    fn check_self_and(&self, req: &Request) -> Result<(), ServiceError> {
        req.check_self(self.user)
    }
}

/// The next reply in request order; None when nothing is in flight.
async fn next_reply(pending: &mut Option<FuturesOrdered<Encoded>>) -> Option<Option<Bytes>> {
    match pending {
        Some(p) => p.next().await,
        None => None,
    }
}

/// The next frame. With nothing buffered it first waits for the socket to be
/// readable and only then allocates a buffer, so that an idle connection
/// holds none while a busy one still reads in big chunks.
async fn next_frame(
    frames: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
) -> Option<Result<Bytes, FrameError>> {
    if frames.read_buffer().is_empty() {
        if let Err(e) = frames.get_ref().readable().await {
            return Some(Err(FrameError::Io(e)));
        }
        frames.read_buffer_mut().reserve(READ_CHUNK);
    }
    frames.next().await
}

/// Read buffer size for a connection with data waiting.
const READ_CHUNK: usize = 2048;

/// Turns a handler's result into the frame the client gets, if any.
fn encode(re: i64, reqid: Option<&Value>, level: u8, r: HandlerResult) -> Option<Bytes> {
    match r {
        Ok(Reply::Nothing) => None,
        Ok(Reply::Ack(fields)) => (level >= 2).then(|| frames::ack(re, reqid, fields)),
        Ok(Reply::AckAlways(fields)) => Some(frames::ack(re, reqid, fields)),
        Ok(Reply::Frame(v)) => Some(frames::with_reqid(v, reqid)),
        Err(e) => Some(frames::failure(Some(re), reqid, &e)),
    }
}

/// Drains the outbound queue into the socket. After a level-1 push is
/// written, its seq is confirmed. Once the connection is closing, a write
/// that makes no progress for `grace` is abandoned.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    outbox: Arc<Outbox>,
    committer: Committer,
    close: CancellationToken,
    grace: Duration,
) {
    const COALESCE: usize = 64 * 1024;
    let mut confirm: Vec<(UserId, i64)> = Vec::new();
    let mut batch: VecDeque<Out> = VecDeque::new();
    while outbox.pop_batch(&mut batch, COALESCE).await {
        // A fresh buffer per batch: an idle connection holds no write buffer.
        let len: usize = batch.iter().map(Out::len).sum();
        let mut buf = BytesMut::with_capacity(len);
        let mut barriers = Vec::new();
        for o in batch.drain(..) {
            buf.extend_from_slice(&o.bytes);
            if let Some(t) = &o.tail {
                buf.extend_from_slice(t);
            }
            barriers.extend(o.flushed);
            if let Some((u, s)) = o.l1_delivered {
                match confirm.last_mut() {
                    Some((lu, ls)) if *lu == u => *ls = (*ls).max(s),
                    _ => confirm.push((u, s)),
                }
            }
        }
        // Boxed: an idle writer then holds only the small wait above.
        let written = Box::pin(async {
            let written = tokio::select! {
                r = wr.write_all_buf(&mut buf) => r.is_ok(),
                _ = async { close.cancelled().await; tokio::time::sleep(grace).await } => false,
            };
            if written {
                for (user, seq) in confirm.drain(..) {
                    let op = WriteOp::Ack { user, seq };
                    if barriers.is_empty() {
                        let _ = committer.submit_detached(op).await;
                    } else {
                        let _ = committer.submit(op).await;
                    }
                }
                for b in barriers.drain(..) {
                    let _ = b.send(());
                }
            }
            written
        })
        .await;
        if !written {
            break;
        }
    }
    // Senders must not wait for space that will never come.
    outbox.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}
