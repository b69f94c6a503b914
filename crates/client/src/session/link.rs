//! Logging back in after a lost connection: a new connection, LOGIN with
//! the saved token and the confirmed `last_seq`, retried with backoff (1 s,
//! doubling up to 30 s) while the server cannot be reached or does not
//! answer. A refused token ends the session instead.

use std::time::Duration;

use chat_protocol::{msgid, Request, Secret};
use tokio::time::Instant;

use super::{Session, Step};
use crate::net::{int, text, Conn, Event};
use crate::ui::clean;

/// The wait before the first attempt.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// How long one attempt waits for the LOGIN_ACK.
const LOGIN_WAIT: Duration = Duration::from_secs(15);

/// When the next attempt is due.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retry {
    /// The moment of the attempt.
    pub at: Instant,
    delay: Duration,
}

impl Retry {
    /// The first attempt, shortly after the loss.
    pub fn first() -> Retry {
        Retry {
            at: Instant::now() + FIRST_DELAY,
            delay: FIRST_DELAY,
        }
    }

    /// Seconds until the attempt.
    pub fn wait_secs(&self) -> u64 {
        self.delay.as_secs()
    }

    /// Whether to say why the last attempt failed: from 8 s waits on, so a
    /// short blip stays quiet.
    pub fn says_why(&self) -> bool {
        self.delay >= Duration::from_secs(8)
    }

    /// The attempt after this one failed: twice the wait, at most 30 s.
    pub fn next(self) -> Retry {
        let delay = (self.delay * 2).min(MAX_DELAY);
        Retry {
            at: Instant::now() + delay,
            delay,
        }
    }
}

/// Why an attempt did not log back in.
#[derive(Debug)]
pub(super) enum Failed {
    /// The server cannot be reached, is busy or did not answer: try again.
    Again(String),
    /// The server refused the saved session: give up.
    Refused(String),
}

impl Session {
    /// One attempt to log back in; on success the session's token, delivery
    /// state and lists are those of the new login.
    pub(super) async fn relogin(&mut self) -> Result<Conn, Failed> {
        let Some(token) = self.token.clone() else {
            return Err(Failed::Refused(
                "no saved session to log back in with".into(),
            ));
        };
        let again = |e: anyhow::Error| Failed::Again(format!("{e:#}"));
        let mut conn = Conn::connect(&self.server).await.map_err(again)?;
        let last_seq = self.delivery.confirmed_seq();
        let login = Request::Login {
            id: self.me,
            secret: Secret::Token(&token),
            level: 2,
            last_seq: Some(last_seq),
        };
        conn.request(&login).await.map_err(again)?;
        let wait = async {
            loop {
                match conn.recv().await {
                    Event::Frame(f) if int(&f, "msgid") == Some(msgid::LOGIN_ACK) => return Ok(f),
                    Event::Frame(f) if int(&f, "msgid") == Some(msgid::ERROR) => return Ok(f),
                    Event::Frame(_) => {}
                    Event::Closed(why) => {
                        return Err(why.unwrap_or_else(|| "the server closed the connection".into()))
                    }
                }
            }
        };
        let ack = match tokio::time::timeout(LOGIN_WAIT, wait).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(why)) => return Err(Failed::Again(why)),
            Err(_) => return Err(Failed::Again("no reply to login".into())),
        };
        match int(&ack, "errno") {
            Some(0) => {}
            // Busy, full or shutting down: later.
            Some(9) | Some(10) => return Err(Failed::Again(clean(text(&ack, "errmsg")))),
            _ => {
                // The token was used up, expired or revoked.
                self.token = None;
                self.save_state();
                return Err(Failed::Refused(format!(
                    "cannot log back in: {}",
                    clean(text(&ack, "errmsg"))
                )));
            }
        }
        self.token = ack
            .get("token")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        self.delivery.start_session(last_seq);
        self.away_since = Some(super::LoginMoment::now());
        self.load_lists(&ack);
        self.save_state();
        Ok(conn)
    }

    /// Says the client is back, and sends again every message that was not
    /// ACKed, with its cmid, so none is lost and none is stored twice.
    pub(super) async fn back_online(&mut self, conn: &mut Conn) -> Step {
        let keys = self.outbox.keys();
        if keys.is_empty() {
            self.out.line("back online");
        } else {
            self.out.line(format!(
                "back online; sending {} unconfirmed message{} again",
                keys.len(),
                if keys.len() == 1 { "" } else { "s" }
            ));
        }
        for key in keys {
            if let Step::Lost(why) = self.send_chat(conn, key).await {
                return Step::Lost(why);
            }
        }
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let mut r = Retry::first();
        let mut delays = vec![r.delay.as_secs()];
        for _ in 0..6 {
            r = r.next();
            delays.push(r.delay.as_secs());
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
    }
}
