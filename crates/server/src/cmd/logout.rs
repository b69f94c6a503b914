//! LOGINOUT: ends the session on this connection and revokes the user's
//! tokens. ACKed at level 2 only; the connection stays open for a new login.

use bytes::Bytes;

use super::{Link, ReplyTo};
use crate::error::ServiceError;
use crate::outbox::Outgoing;
use crate::request::Request;
use crate::service::{session, Service, Session};

/// The end of a session.
#[derive(Debug)]
pub struct Logout;

impl Logout {
    /// Checks the claimed id, if any, against the session.
    pub fn parse(req: &Request, s: &Session) -> Result<Logout, ServiceError> {
        req.check_self(s.user)?;
        Ok(Logout)
    }

    /// Ends the session once what was written for it is confirmed.
    pub async fn run(
        self,
        sh: &Service,
        link: &mut Link<'_>,
        to: &ReplyTo,
    ) -> Result<Option<Bytes>, ServiceError> {
        if to.level < 2 {
            // Level-1 pushes count as delivered once written: let those
            // confirmations land before the session ends, so a quick
            // re-login is not handed them again.
            let (done, flushed) = tokio::sync::oneshot::channel();
            if link.out.offer(Outgoing::barrier(done)).is_ok() {
                let _ = tokio::time::timeout(sh.cfg.shutdown_grace, flushed).await;
            }
        }
        if let Some(s) = link.session.take() {
            session::end(sh, &s, true).await;
        }
        Ok(to.ack_at_level2(vec![]))
    }
}
