//! One client connection: a reader that decodes frames and runs requests, and
//! a writer that drains the bounded outbound queue, coalescing frames into few
//! writes.
//!
//! Requests are pipelined: up to `max_inflight` run at once, and their replies
//! go out in request order. LOGIN and LOGINOUT change the session, and friend
//! and group changes change what later requests may do, so they wait for
//! everything before them first (the latter also finish before the next
//! request starts); HISTORY waits too, to see the writes before it.

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
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::committer::Committer;
use crate::error::ServiceError;
use crate::frames;
use crate::request::Request;
use crate::service::{auth, chat, social, HandlerResult, Pending, Reply, Session, Shared};
use crate::sessions::Out;
use crate::store::{UserId, WriteOp};

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
    out: mpsc::Sender<Out>,
    close: CancellationToken,
    session: Option<Session>,
    pending: FuturesOrdered<Encoded>,
    bucket: Bucket,
    peer: SocketAddr,
}

/// Serves one accepted connection until it closes. `shutdown` is the server's.
pub async fn serve(
    sock: TcpStream,
    peer: SocketAddr,
    sh: Arc<Shared>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
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
    // A small read buffer keeps idle connections cheap; it grows for big frames.
    let mut frames = FramedRead::with_capacity(rd, FrameCodec::new(sh.cfg.max_frame), 1024);
    let (out, rx) = mpsc::channel(sh.cfg.outbound_queue.max(1));
    let close = shutdown.child_token();
    let grace = sh.cfg.shutdown_grace;
    let writer = tokio::spawn(write_loop(
        wr,
        rx,
        sh.committer.clone(),
        close.clone(),
        grace,
    ));
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
        pending: FuturesOrdered::new(),
        peer,
    };
    conn.read_loop(&mut frames).await;
    conn.finish().await;
    drop(conn);
    let mut writer = writer;
    if tokio::time::timeout(grace + Duration::from_secs(1), &mut writer)
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
        let idle = tokio::time::sleep(self.sh.cfg.login_idle_timeout);
        tokio::pin!(idle);
        loop {
            let can_read = self.pending.len() < self.sh.cfg.max_inflight.max(1);
            tokio::select! {
                biased;
                _ = self.close.cancelled() => break,
                Some(reply) = self.pending.next(), if !self.pending.is_empty() => {
                    if !self.emit(reply).await { break }
                }
                f = frames.next(), if can_read => match f {
                    None => break,
                    Some(Ok(frame)) => {
                        self.on_frame(frame).await;
                        // After the frame, so that LOGINOUT restarts the clock too.
                        if self.session.is_none() {
                            idle.as_mut().reset(tokio::time::Instant::now() + self.sh.cfg.login_idle_timeout);
                        }
                    }
                    Some(Err(FrameError::TooLarge(n))) => {
                        tracing::info!(peer = %self.peer, limit = n, "frame too large; closing");
                        self.drain().await;
                        let e = ServiceError::new(Errno::FrameTooLarge, format!("frame longer than {n} bytes; closing"));
                        self.emit(Some(frames::failure(None, None, &e))).await;
                        break;
                    }
                    Some(Err(FrameError::Io(e))) => {
                        tracing::debug!(peer = %self.peer, error = %e, "read failed");
                        break;
                    }
                },
                _ = &mut idle, if self.session.is_none() => {
                    tracing::debug!(peer = %self.peer, "closing idle connection that never logged in");
                    self.drain().await;
                    self.emit(Some(frames::failure(None, None, &ServiceError::new(Errno::NotLoggedIn, "idle without login; closing")))).await;
                    break;
                }
            }
        }
    }

    /// Queues a frame for the writer; false once the connection is closing.
    async fn emit(&mut self, frame: Option<Bytes>) -> bool {
        let Some(bytes) = frame else { return true };
        tokio::select! {
            r = self.out.send(Out::frame(bytes)) => r.is_ok(),
            _ = self.close.cancelled() => false,
        }
    }

    /// Waits for every pipelined request and queues its reply.
    async fn drain(&mut self) {
        while let Some(reply) = self.pending.next().await {
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
        self.pending.push_back(fut);
    }

    async fn on_frame(&mut self, frame: Bytes) {
        if !self.bucket.take() {
            let e = ServiceError::new(Errno::RateLimited, "too many requests; slow down");
            self.pending
                .push_back(Box::pin(std::future::ready(Some(frames::failure(
                    None, None, &e,
                )))));
            return;
        }
        let req = match Request::parse(&frame) {
            Ok(r) => r,
            Err(bad) => {
                let f = frames::failure(None, bad.reqid.as_ref(), &bad.error);
                self.pending
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
                let w = auth::register(&sh, &req);
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
    mut rx: mpsc::Receiver<Out>,
    committer: Committer,
    close: CancellationToken,
    grace: Duration,
) {
    const COALESCE: usize = 64 * 1024;
    let mut confirm: Vec<(UserId, i64)> = Vec::new();
    while let Some(first) = rx.recv().await {
        // A fresh buffer per batch: an idle connection holds no write buffer.
        let mut buf = BytesMut::with_capacity(first.bytes.len().max(512));
        let mut add = |o: Out, buf: &mut BytesMut| {
            buf.extend_from_slice(&o.bytes);
            if let Some((u, s)) = o.l1_delivered {
                match confirm.last_mut() {
                    Some((lu, ls)) if *lu == u => *ls = (*ls).max(s),
                    _ => confirm.push((u, s)),
                }
            }
        };
        add(first, &mut buf);
        while buf.len() < COALESCE {
            match rx.try_recv() {
                Ok(o) => add(o, &mut buf),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            r = wr.write_all_buf(&mut buf) => r.is_ok(),
            _ = async { close.cancelled().await; tokio::time::sleep(grace).await } => false,
        };
        if !written {
            break;
        }
        for (user, seq) in confirm.drain(..) {
            let _ = committer.submit_detached(WriteOp::Ack { user, seq }).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}
