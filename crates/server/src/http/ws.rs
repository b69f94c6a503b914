//! A chat session over a WebSocket: each text message is one protocol frame,
//! each way. Only the framing is here; the limits, the pipelining and the
//! commands are the TCP connection's own code (`connection::run`).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::{Bytes, BytesMut};
use chat_protocol::Errno;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::connection::{ReadError, Receipt, Source};
use crate::error::ServiceError;
use crate::outbox::{Outbox, Outgoing, Written};
use crate::service::Service;
use crate::throttle::AddrPermit;

/// The WebSocket layer's read buffer. Small: an idle session keeps it (at
/// 4 KiB an idle WebSocket cost 9.3 KiB of RSS, at 1 KiB 6.4 KiB); a bigger
/// frame still arrives whole, the layer makes room for it.
pub const READ_BUFFER: usize = 1024;
/// Bytes the WebSocket layer gathers before it writes; the writer flushes
/// after every batch anyway.
pub const WRITE_BUFFER: usize = 16 * 1024;
/// Bytes of frames the writer takes from the queue per flush.
const COALESCE: usize = 64 * 1024;

/// Serves one upgraded WebSocket until it closes; see `connection::serve`.
pub fn serve(
    socket: WebSocket,
    peer: SocketAddr,
    sh: Arc<Service>,
    shutdown: &CancellationToken,
    permits: (OwnedSemaphorePermit, AddrPermit),
) -> impl Future<Output = ()> + Send + 'static {
    let (sink, stream) = socket.split();
    let heard = Arc::new(Heard::new());
    let out = Arc::new(Outbox::new(sh.cfg.outbound_queue, sh.cfg.outbound_bytes));
    let close = shutdown.child_token();
    let writer = tokio::spawn(write_loop(
        sink,
        out.clone(),
        sh.written.clone(),
        close.clone(),
        sh.cfg.shutdown_grace,
        (heard.clone(), sh.cfg.ws_ping_every),
    ));
    tracing::debug!(%peer, transport = "ws", "connected");
    let frames = Frames {
        stream,
        max: sh.cfg.max_frame,
        heard,
    };
    crate::connection::run(frames, writer, out, close, peer, sh, permits)
}

/// When the client was last heard from (any message, pongs included), in
/// milliseconds since the session began.
struct Heard {
    start: Instant,
    at_ms: AtomicU64,
}

impl Heard {
    fn new() -> Self {
        Heard {
            start: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.at_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.at_ms.load(Ordering::Relaxed)),
        )
    }
}

/// The read half: text messages are frames.
struct Frames {
    stream: SplitStream<WebSocket>,
    max: usize,
    heard: Arc<Heard>,
}

impl Source for Frames {
    const TRANSPORT: &'static str = "ws";
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ReadError>>> {
        loop {
            let msg = match ready!(self.stream.poll_next_unpin(cx)) {
                None => return Poll::Ready(None),
                Some(Ok(m)) => m,
                Some(Err(e)) => return Poll::Ready(Some(Err(read_error(e, self.max)))),
            };
            self.heard.touch();
            match msg {
                Message::Text(_) => {
                    let mut frame = msg.into_data();
                    // A frame may end with the TCP terminators too.
                    while let Some(b'\n' | b'\r' | b'\0') = frame.last() {
                        frame.truncate(frame.len() - 1);
                    }
                    if frame.len() > self.max {
                        return Poll::Ready(Some(Err(ReadError::TooLarge(self.max))));
                    }
                    if !frame.is_empty() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Message::Binary(_) => {
                    let e = ServiceError::new(
                        Errno::Malformed,
                        "binary WebSocket messages are not part of the protocol; send each frame as a text message; closing",
                    );
                    return Poll::Ready(Some(Err(ReadError::Refused(e))));
                }
                Message::Close(_) => return Poll::Ready(None),
                // The WebSocket layer answers pings itself.
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    }

    fn buffered(&self) -> bool {
        // The WebSocket layer hands over whole messages only.
        false
    }

    fn release(&mut self) {}
}

/// A read failure: a message over the WebSocket layer's own limit is still a
/// frame too large.
fn read_error(e: axum::Error, max: usize) -> ReadError {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) => match *e {
            tungstenite::Error::Capacity(_) => ReadError::TooLarge(max),
            tungstenite::Error::Io(e) => ReadError::Io(e),
            e => ReadError::Io(std::io::Error::other(e)),
        },
        Err(e) => ReadError::Io(std::io::Error::other(e)),
    }
}

/// Drains the outbound queue into the WebSocket, one message per frame and
/// one flush per batch, and pings the client every `ping.1`. See
/// `connection::write_loop`, whose rules it follows.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: Arc<Outbox>,
    written: Arc<dyn Written>,
    close: CancellationToken,
    grace: Duration,
    ping: (Arc<Heard>, Duration),
) {
    let (heard, every) = ping;
    let mut batch: VecDeque<Outgoing> = VecDeque::new();
    let mut tick = Box::pin(tokio::time::interval_at(
        tokio::time::Instant::now() + every,
        every,
    ));
    let mut close_frame = None;
    loop {
        let more = tokio::select! {
            more = std::future::poll_fn(|cx| outbox.poll_batch(cx, &mut batch, COALESCE)) => more,
            _ = tick.tick() => {
                if heard.silent_for() > every * 5 / 2 {
                    tracing::debug!("WebSocket answered no ping; closing");
                    close.cancel();
                    break;
                }
                if !send_all(&mut sink, vec![Message::Ping(Bytes::new())], &close, grace).await {
                    break;
                }
                continue;
            }
        };
        if !more {
            close_frame = Some(CloseFrame {
                code: if close.is_cancelled() { 1001 } else { 1000 },
                reason: Utf8Bytes::from_static(""),
            });
            break;
        }
        let mut receipt = Receipt::default();
        let mut msgs = Vec::with_capacity(batch.len());
        for mut o in batch.drain(..) {
            receipt.note(&mut o);
            if let Some(m) = message(o) {
                msgs.push(m);
            }
        }
        if !send_all(&mut sink, msgs, &close, grace).await {
            break;
        }
        receipt.settle(written.as_ref()).await;
    }
    // Senders must not wait for space that will never come.
    outbox.close();
    let bye = async {
        if let Some(f) = close_frame {
            let _ = sink.send(Message::Close(Some(f))).await;
        }
        let _ = sink.close().await;
    };
    let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), bye)).await;
}

/// One queued frame as a text message, without its line feed; None for a
/// barrier.
fn message(o: Outgoing) -> Option<Message> {
    if o.is_empty() {
        return None;
    }
    let mut frame = match o.tail {
        None => o.bytes,
        Some(tail) => {
            let mut b = BytesMut::with_capacity(o.bytes.len() + tail.len());
            b.extend_from_slice(&o.bytes);
            b.extend_from_slice(&tail);
            b.freeze()
        }
    };
    if frame.last() == Some(&b'\n') {
        frame.truncate(frame.len() - 1);
    }
    // The server's frames are JSON it wrote itself: always UTF-8.
    Utf8Bytes::try_from(frame).ok().map(Message::Text)
}

/// Writes `msgs` and flushes; false if the connection failed, or made no
/// progress for `grace` once closing.
async fn send_all(
    sink: &mut SplitSink<WebSocket, Message>,
    msgs: Vec<Message>,
    close: &CancellationToken,
    grace: Duration,
) -> bool {
    let write = async {
        for m in msgs {
            sink.feed(m).await?;
        }
        sink.flush().await
    };
    tokio::select! {
        r = write => r.is_ok(),
        _ = async { close.cancelled().await; tokio::time::sleep(grace).await } => false,
    }
}
