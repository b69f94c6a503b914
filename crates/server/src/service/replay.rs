//! What a login queues on its connection: the ack, then every message the
//! user has not confirmed, in seq order, before any live push (the session's
//! gate holds those back until the replay is done).

use std::collections::BTreeSet;
use std::sync::Arc;

use chat_protocol::reply::{LoginAck, Member};
use serde_json::Value;

use super::{Service, Session};
use crate::cmd::Link;
use crate::error::ServiceError;
use crate::frames::EncodedChat;
use crate::outbox::Outgoing;
use crate::store::{GroupInfo, Person, UserId};

/// Who the user knows, and which of them are online: the lists in the ack.
#[derive(Clone, Copy)]
pub struct Contacts<'a> {
    /// The user's friends.
    pub friends: &'a [Person],
    /// The user's groups, with their members.
    pub groups: &'a [GroupInfo],
    /// Which of the friends and members are online.
    pub online: &'a BTreeSet<UserId>,
}

/// The login ack for this session, without its level-1 offline messages.
fn ack(s: &Session, c: Contacts<'_>, token: Option<String>) -> LoginAck {
    let mut ack = LoginAck::new(s.level, s.user, &s.name);
    for f in c.friends {
        ack.friend(f.id, &f.name, c.online.contains(&f.id));
    }
    for g in c.groups {
        let members = g.members.iter().map(|m| Member {
            id: m.id,
            name: &m.name,
            online: c.online.contains(&m.id),
            role: m.role.as_str(),
        });
        ack.group(g.id, &g.name, &g.desc, members);
    }
    if let Some(t) = token {
        ack.token(t);
    }
    ack
}

/// Queues the login ack and the first page of the backlog, then lets the
/// session's gate read the rest and open for live delivery.
pub async fn login(
    sh: &Service,
    link: &Link<'_>,
    s: &Session,
    contacts: Contacts<'_>,
    token: Option<String>,
    reqid: Option<&Value>,
) -> Result<(), ServiceError> {
    let l1 = s.level < 2;
    let first_limit = if l1 {
        sh.cfg.l1_offline_in_ack.max(1) as i64
    } else {
        sh.cfg.backlog_page.max(1)
    };
    let mut floor = 0i64;
    let mut pending = sh.store.undelivered(s.user, floor, first_limit).await?;
    let mut ack = ack(s, contacts, token);
    let at_end = (pending.len() as i64) < first_limit;
    let mut l1_delivered = None;
    if l1 {
        // The first page travels inside the ack, the classic way.
        for (seq, m) in pending.drain(..) {
            floor = seq;
            ack.offline(EncodedChat::new(Arc::new(m)).level1_text());
        }
        if floor > 0 {
            l1_delivered = Some((s.user, floor));
        }
    }
    // The ack goes first: the gate queues no live push until the replay is
    // done, so none can overtake it.
    let ack = Outgoing {
        bytes: ack.encode(reqid),
        tail: None,
        l1_delivered,
        flushed: None,
    };
    queue(link, ack).await?;
    if !s.handle.ack_queued() {
        // Replaced by a newer login while this one was being set up: the
        // login did succeed (its ack is out), and KICKED follows it.
        return Ok(());
    }
    for (seq, m) in pending {
        let push = EncodedChat::new(Arc::new(m));
        queue(link, push.level2_out(seq)).await?;
        floor = seq;
    }
    // The rest (and whatever arrived meanwhile) the gate reads in order.
    s.handle.replayed_to(floor, at_end);
    s.handle.catch_up().await?;
    Ok(())
}

/// Waits for room in the connection's queue, unless it closes first.
async fn queue(link: &Link<'_>, out: Outgoing) -> Result<(), ServiceError> {
    tokio::select! {
        r = link.out.send(out) => r.map_err(|_| ServiceError::busy("connection closed")),
        _ = link.close.cancelled() => Err(ServiceError::busy("connection closed")),
    }
}
