//! ONE_CHAT and GROUP_CHAT: validate, hand to the group commit, ACK with the
//! mid once the message is durable (the committer routes it).

use std::sync::Arc;

use chat_protocol::{limits, msgid, time::unix_now, Errno};

use super::{Ran, ReplyTo};
use crate::error::ServiceError;
use crate::request::{check_bytes, Request};
use crate::service::{delivery, Service, Session};
use crate::sessions::SessionHandle;
use crate::store::{Appended, Fanout, NewMessage, Target};

/// A chat message to a user or a group.
#[derive(Debug)]
pub struct Send {
    message: NewMessage,
    /// The sender's session: it remembers the cmids it stored, so a retry
    /// on the same login is not routed twice.
    handle: Arc<SessionHandle>,
}

impl Send {
    /// Parses ONE_CHAT (`toid`, or `to`) or GROUP_CHAT (`groupid`), with
    /// `msg` and an optional `cmid`.
    pub fn parse(req: &Request, s: &Session, sh: &Service) -> Result<Send, ServiceError> {
        req.check_self(s.user)?;
        let target = if req.msgid == msgid::ONE_CHAT {
            Target::User(req.int_or("toid", "to")?)
        } else {
            Target::Group(req.int("groupid")?)
        };
        let body = req.str("msg")?;
        check_bytes("msg", body, 1, sh.cfg.limits.msg_bytes)?;
        let cmid = req.opt_str("cmid")?;
        if let Some(c) = cmid {
            check_bytes("cmid", c, 1, limits::MAX_CMID_BYTES)?;
        }
        Ok(Send {
            message: NewMessage {
                sender: s.user,
                sender_name: s.name.clone(),
                target,
                body: body.into(),
                cmid: cmid.map(str::to_owned),
                time: unix_now(),
            },
            handle: s.handle.clone(),
        })
    }

    /// Queues the message for the next commit now, in request order; the
    /// reply (the mid, at level 2) waits for durability.
    pub fn run(self, sh: &Arc<Service>, to: ReplyTo) -> Ran {
        let Send { message, handle } = self;
        let sender = message.sender;
        if !sh.guards.fanout.has_credit(sender) {
            let e = ServiceError::new(
                Errno::RateLimited,
                format!(
                    "sending too fast: at most {} deliveries per second (recipients of your messages)",
                    sh.cfg.quotas.fanout_per_sec
                ),
            );
            return Ran::Done(Some(to.error(&e)));
        }
        let target = message.target;
        let cmid = message.cmid.clone();
        let stored = sh.committer.append(message);
        let sh = sh.clone();
        let work = async move {
            let mid = match stored.await {
                Ok(Appended::New(Fanout {
                    message,
                    deliveries,
                })) => {
                    sh.guards.fanout.charge(sender, deliveries.len() as f64);
                    if let Some(c) = &cmid {
                        handle.note_stored(c);
                    }
                    message.mid
                }
                Ok(Appended::Duplicate { mid }) => {
                    // Stored by an earlier login, maybe on a node that died
                    // before routing it: make sure it reaches its
                    // recipients. Bounded per sender: a retry storm must not
                    // become a storm of reads. Past it, recipients catch up
                    // at their next message or login.
                    if !cmid.as_deref().is_some_and(|c| handle.stored_here(c))
                        && sh.guards.reroute.take(sender)
                    {
                        delivery::redeliver_message(&sh, sender, target, mid).await;
                    }
                    mid
                }
                Err(e) => {
                    return Err(ServiceError::from(e).reworded(
                        Errno::NotFound,
                        match target {
                            Target::User(_) => "no such user",
                            Target::Group(_) => "no such group",
                        },
                    ))
                }
            };
            Ok(mid)
        };
        to.queue(work, |to, mid| to.ack_mid_at_level2(mid))
    }
}
