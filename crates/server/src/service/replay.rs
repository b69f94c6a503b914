//! What a login queues on its connection: the ack, then every message the
//! user has not confirmed, in seq order, before any live push (the session's
//! gate holds those back until the replay is done).

use std::sync::Arc;

use serde_json::Value;

use super::login_ack;
pub use super::login_ack::Contacts;
use super::{Session, Shared};
use crate::cmd::Link;
use crate::error::ServiceError;
use crate::frames::{self, PushBody};
use crate::outbox::Out;

/// Queues the login ack and the first page of the backlog, then lets the
/// session's gate read the rest and open for live delivery.
pub async fn login(
    sh: &Shared,
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
    let mut ack = login_ack::build(s.user, &s.name, s.level, contacts, token, reqid);
    let at_end = (pending.len() as i64) < first_limit;
    let mut l1_delivered = None;
    if l1 {
        // The first page travels inside the ack, the classic way.
        let offline: Vec<Value> = pending
            .drain(..)
            .map(|(seq, m)| {
                floor = seq;
                Value::String(PushBody::new(Arc::new(m)).level1_text().to_owned())
            })
            .collect();
        if floor > 0 {
            l1_delivered = Some((s.user, floor));
        }
        if !offline.is_empty() {
            ack.insert("offlinemsg".into(), offline.into());
        }
    }
    // The ack goes first: the gate queues no live push until the replay is
    // done, so none can overtake it.
    let ack = Out {
        bytes: frames::value(&Value::Object(ack)),
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
        let push = PushBody::new(Arc::new(m));
        queue(link, push.level2_out(seq)).await?;
        floor = seq;
    }
    // The rest (and whatever arrived meanwhile) the gate reads in order.
    s.handle.replayed_to(floor, at_end);
    s.handle.catch_up().await?;
    Ok(())
}

/// Waits for room in the connection's queue, unless it closes first.
async fn queue(link: &Link<'_>, out: Out) -> Result<(), ServiceError> {
    tokio::select! {
        r = link.out.push(out) => r.map_err(|_| ServiceError::busy("connection closed")),
        _ = link.close.cancelled() => Err(ServiceError::busy("connection closed")),
    }
}
