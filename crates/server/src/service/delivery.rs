//! Delivery bookkeeping the service owns: level-1 confirmations (a push
//! written to the socket counts as delivered) and redelivery of a message
//! stored by an earlier attempt.

use async_trait::async_trait;

use super::Service;
use crate::committer::Committer;
use crate::outbox::Written;
use crate::sessions::Event;
use crate::store::{Target, UserId};

/// Turns "written" reports of connection writers into confirmations, queued
/// for the next group commit.
pub struct Confirmations(pub Committer);

#[async_trait]
impl Written for Confirmations {
    async fn written(&self, user: UserId, seq: i64, wait: bool) {
        if wait {
            let _ = self.0.ack(user, seq).await;
        } else {
            let _ = self.0.ack_detached(user, seq).await;
        }
    }
}

/// A retried send that an earlier login stored: the sender never saw its
/// ACK, and the node that stored it may have died before routing it. Each
/// online recipient's session is told to redeliver (read from storage, in
/// seq order, from where it stands: a no-op for one that has it already);
/// offline recipients get it at their next login.
pub async fn redeliver_message(sh: &Service, sender: UserId, target: Target, mid: i64) {
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
            sh.bus.send(user, Event::Redeliver);
        }
    }
}
