//! ONE_CHAT, GROUP_CHAT, DELIVERED and HISTORY.

use std::sync::Arc;

use chat_protocol::{limits, msgid, time::unix_now, Errno};
use serde_json::Value;

use super::{HandlerResult, Pending, Reply, Session, Shared};
use crate::error::ServiceError;
use crate::frames;
use crate::request::{check_bytes, Request};
use crate::sessions::Event;
use crate::store::{Appended, Conversation, Fanout, NewMessage, Target, UserId};

/// ONE_CHAT / GROUP_CHAT: validate, hand to the group commit, ACK with the mid
/// once the message is durable (routing happens in the committer).
pub fn send(sh: &Arc<Shared>, s: &Session, req: &Request) -> Result<Pending, ServiceError> {
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
    if !sh.guards.fanout.has_credit(s.user) {
        return Err(ServiceError::new(
            Errno::RateLimited,
            format!(
                "sending too fast: at most {} deliveries per second (recipients of your messages)",
                sh.cfg.quotas.fanout_per_sec
            ),
        ));
    }
    let message = NewMessage {
        sender: s.user,
        sender_name: s.name.clone(),
        target,
        body: body.to_owned(),
        cmid: cmid.map(str::to_owned),
        time: unix_now(),
    };
    let sh = sh.clone();
    let sender = s.user;
    let handle = s.handle.clone();
    let cmid = cmid.map(str::to_owned);
    // Queued now, in request order; the reply waits for durability.
    let stored = sh.committer.append(message);
    Ok(Box::pin(async move {
        match stored.await {
            Ok(Appended::New(Fanout {
                message,
                deliveries,
            })) => {
                sh.guards.fanout.charge(sender, deliveries.len() as f64);
                if let Some(c) = &cmid {
                    handle.note_stored(c);
                }
                Ok(Reply::Ack(vec![("mid", message.mid.into())]))
            }
            Ok(Appended::Duplicate { mid }) => {
                // Stored by an earlier login, maybe on a node that died
                // before routing it: make sure it reaches its recipients.
                // Bounded per sender: a retry storm must not become a
                // storm of reads. Past it, recipients catch up at their
                // next message or login.
                if !cmid.as_deref().is_some_and(|c| handle.stored_here(c))
                    && sh.guards.reroute.take(sender)
                {
                    reroute(&sh, sender, target, mid).await;
                }
                Ok(Reply::Ack(vec![("mid", mid.into())]))
            }
            Err(e) => Err(ServiceError::from(e).say(
                Errno::NotFound,
                match target {
                    Target::User(_) => "no such user",
                    Target::Group(_) => "no such group",
                },
            )),
        }
    }))
}

/// A retried send that an earlier login stored: the sender never saw its
/// ACK, and the node that stored it may have died before routing it. Each
/// online recipient's session catches up from storage, in seq order, from
/// where it stands (a no-op for one that has it already); offline
/// recipients get it at their next login.
async fn reroute(sh: &Shared, sender: UserId, target: Target, mid: i64) {
    let recipients: Vec<UserId> = match target {
        Target::User(u) => vec![u],
        Target::Group(g) => match sh.store.groups_of(sender).await {
            Ok(groups) => groups
                .into_iter()
                .find(|x| x.id == g)
                .map(|x| x.members.into_iter().map(|m| m.id).collect())
                .unwrap_or_default(),
            Err(e) => {
                tracing::warn!(mid, error = %e, "retried message not routed again");
                return;
            }
        },
    };
    let recipients: Vec<UserId> = recipients.into_iter().filter(|&r| r != sender).collect();
    let online = sh.bus.online(&recipients).await;
    for (&user, on) in recipients.iter().zip(online) {
        if on {
            sh.bus.send(user, Event::Resync);
        }
    }
}

/// DELIVERED: a cumulative confirmation, queued for the next commit. No reply.
pub fn delivered(sh: &Arc<Shared>, s: &Session, req: &Request) -> Result<Pending, ServiceError> {
    let seq = req.int("seq")?;
    if seq < 0 {
        return Err(ServiceError::malformed("seq must not be negative"));
    }
    let committer = sh.committer.clone();
    let user = s.user;
    Ok(Box::pin(async move {
        committer.ack_detached(user, seq).await?;
        Ok(Reply::Nothing)
    }))
}

/// Encoded messages in one HISTORY reply at most (PROTOCOL.md, "HISTORY
/// size"): a reply nobody reads must not cost megabytes.
pub const HISTORY_MAX_BYTES: usize = 256 * 1024;

/// HISTORY: one page of a conversation, newest first, with `more` when
/// older messages remain.
pub fn history(sh: &Arc<Shared>, s: &Session, req: &Request) -> Result<Pending, ServiceError> {
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
    let sh = sh.clone();
    let me = s.user;
    Ok(Box::pin(
        async move { page(&sh, me, conv, before, limit).await },
    ))
}

async fn page(
    sh: &Shared,
    me: i64,
    conv: Conversation,
    before: Option<i64>,
    limit: i64,
) -> HandlerResult {
    match conv {
        Conversation::Direct(_, peer) => {
            if sh.store.find_user(peer).await?.is_none() {
                return Err(ServiceError::new(Errno::NotFound, "no such user"));
            }
        }
        Conversation::Group(g) => match sh.store.membership(g, me).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(ServiceError::new(
                    Errno::Forbidden,
                    "you are not a member of this group",
                ))
            }
            Err(e) => return Err(ServiceError::from(e).say(Errno::NotFound, "no such group")),
        },
    }
    // One row more than asked for tells whether older ones remain.
    let msgs = sh.store.history(conv, before, limit + 1).await?;
    let mut list: Vec<Value> = Vec::new();
    let mut bytes = 0;
    for m in &msgs {
        if list.len() as i64 == limit {
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
    Ok(Reply::AckAlways(vec![
        ("messages", Value::Array(list)),
        ("more", Value::Bool(more)),
    ]))
}
