//! One ceiling connection: the read loop, LOGIN (which needs the
//! connection's queue and close token) and the writer task that coalesces
//! queued frames into few socket writes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chat_protocol::{msgid, push, Errno, FrameCodec, FrameError};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::requests::Fail;
use super::{Ceiling, Sess, User};

/// Who this connection is logged in as.
pub(super) struct Me {
    pub(super) user: Arc<User>,
    pub(super) level: u8,
    sid: u64,
}

impl Ceiling {
    /// Serves one connection until it closes.
    pub(super) async fn conn(self: Arc<Self>, sock: TcpStream) {
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
                    _ => {
                        Some(Fail(Errno::Malformed, "frame is not a JSON object").reply(None, None))
                    }
                },
                Some(Err(FrameError::TooLarge(_))) => {
                    let f = Fail(Errno::FrameTooLarge, "frame too large; closing");
                    let _ = tx.send(f.reply(None, None)).await;
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

    /// Ends `m`'s session, unless a newer login replaced it.
    pub(super) fn logout(&self, m: &Me) {
        let mut s = m.user.session.lock().expect("session");
        if s.as_ref().is_some_and(|s| s.sid == m.sid) {
            *s = None;
        }
    }

    /// LOGIN: the ack first, then the session (and KICKED for the old one).
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
                let _ = tx.send(f.reply(Some(msgid::LOGIN), reqid)).await;
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
            let _ = old.tx.try_send(push::kicked());
            old.close.cancel();
        }
        *me = Some(Me { user, level, sid });
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
