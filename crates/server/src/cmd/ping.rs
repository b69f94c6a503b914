//! PING: answered with PONG at either level, with nothing else to do.

use bytes::Bytes;

use super::ReplyTo;
use crate::error::ServiceError;
use crate::frames;

/// A liveness probe.
#[derive(Debug)]
pub struct Ping;

impl Ping {
    /// PONG, with the request's reqid.
    pub fn run(self, to: &ReplyTo) -> Result<Option<Bytes>, ServiceError> {
        Ok(to.frame(frames::pong()))
    }
}
