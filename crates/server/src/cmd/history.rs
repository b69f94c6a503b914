//! HISTORY: one page of a conversation, newest first, with `more` when older
//! messages remain. Answered at both levels: it is useless without its result.

use std::sync::Arc;

use chat_protocol::{limits, Errno};
use serde_json::Value;

use super::{Ran, ReplyTo};
use crate::error::ServiceError;
use crate::frames;
use crate::request::Request;
use crate::service::{Service, Session};
use crate::store::{Conversation, UserId};

/// Encoded messages in one HISTORY reply at most (PROTOCOL.md, "HISTORY
/// size"): a reply nobody reads must not cost megabytes.
pub const HISTORY_MAX_BYTES: usize = 256 * 1024;

/// A page request.
#[derive(Debug)]
pub struct History {
    me: UserId,
    conv: Conversation,
    before: Option<i64>,
    limit: i64,
}

impl History {
    /// Parses exactly one of `toid` and `groupid`, and the optional
    /// `before` (a mid) and `limit` (capped at the protocol's maximum).
    pub fn parse(req: &Request, s: &Session) -> Result<History, ServiceError> {
        req.check_self(s.user)?;
        let toid = req.opt_int("toid")?;
        let groupid = req.opt_int("groupid")?;
        let before = req.opt_int("before")?;
        if before.is_some_and(|b| b < 1) {
            return Err(ServiceError::malformed("before must be a positive mid"));
        }
        let limit = match req.opt_int("limit")? {
            None => limits::HISTORY_DEFAULT,
            Some(l) if l < 1 => return Err(ServiceError::malformed("limit must be at least 1")),
            Some(l) => l.min(limits::HISTORY_MAX),
        };
        let conv = match (toid, groupid) {
            (Some(t), None) => Conversation::Direct(s.user, t),
            (None, Some(g)) => Conversation::Group(g),
            _ => {
                return Err(ServiceError::malformed(
                    "give exactly one of toid and groupid",
                ))
            }
        };
        Ok(History {
            me: s.user,
            conv,
            before,
            limit,
        })
    }

    /// Reads the page while the connection reads on.
    pub fn run(self, sh: &Arc<Service>, to: ReplyTo) -> Ran {
        let sh = sh.clone();
        to.queue(async move { self.page(&sh).await }, |to, (list, more)| {
            to.ack(vec![
                ("messages", Value::Array(list)),
                ("more", Value::Bool(more)),
            ])
        })
    }

    async fn page(self, sh: &Service) -> Result<(Vec<Value>, bool), ServiceError> {
        match self.conv {
            Conversation::Direct(_, peer) => {
                if sh.store.find_user(peer).await?.is_none() {
                    return Err(ServiceError::new(Errno::NotFound, "no such user"));
                }
            }
            Conversation::Group(g) => match sh.store.membership(g, self.me).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(ServiceError::new(
                        Errno::Forbidden,
                        "you are not a member of this group",
                    ))
                }
                Err(e) => {
                    return Err(ServiceError::from(e).reworded(Errno::NotFound, "no such group"))
                }
            },
        }
        // One row more than asked for tells whether older ones remain.
        let msgs = sh
            .store
            .history(self.conv, self.before, self.limit + 1)
            .await?;
        let mut list: Vec<Value> = Vec::new();
        let mut bytes = 0;
        for m in &msgs {
            if list.len() as i64 == self.limit {
                break;
            }
            let entry = frames::history_entry(m);
            let size = serde_json::to_vec(&entry).map_or(0, |v| v.len());
            // At least one message, however large, so paging always advances.
            if !list.is_empty() && bytes + size > HISTORY_MAX_BYTES {
                break;
            }
            bytes += size;
            list.push(entry);
        }
        let more = list.len() < msgs.len();
        Ok((list, more))
    }
}
