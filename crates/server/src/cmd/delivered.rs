//! DELIVERED: a cumulative confirmation, queued for the next commit. No
//! reply at either level.

use std::sync::Arc;

use super::{Ran, ReplyTo};
use crate::error::ServiceError;
use crate::request::Request;
use crate::service::{Service, Session};
use crate::store::UserId;

/// The session holds every message up to `seq`.
#[derive(Debug)]
pub struct Delivered {
    user: UserId,
    seq: i64,
}

impl Delivered {
    /// Parses `seq` (not negative).
    pub fn parse(req: &Request, s: &Session) -> Result<Delivered, ServiceError> {
        let seq = req.int("seq")?;
        if seq < 0 {
            return Err(ServiceError::malformed("seq must not be negative"));
        }
        Ok(Delivered { user: s.user, seq })
    }

    /// Hands the confirmation to the committer without waiting for the commit.
    pub fn run(self, sh: &Arc<Service>, to: ReplyTo) -> Ran {
        let committer = sh.committer.clone();
        let Delivered { user, seq } = self;
        let work = async move {
            committer
                .ack_detached(user, seq)
                .await
                .map_err(ServiceError::from)
        };
        to.queue(work, |_, ()| None)
    }
}
