//! The in-process bus of a single node: every session is local, so routing is
//! a registry lookup and presence is registry membership.

use std::sync::Arc;

use async_trait::async_trait;

use super::Bus;
use crate::sessions::{Event, Sessions};
use crate::store::UserId;

/// In-process bus.
pub struct LocalBus {
    sessions: Arc<Sessions>,
}

impl LocalBus {
    /// A bus over this node's sessions.
    pub fn new(sessions: Arc<Sessions>) -> Self {
        LocalBus { sessions }
    }
}

#[async_trait]
impl Bus for LocalBus {
    fn send(&self, to: UserId, ev: Event) {
        self.sessions.deliver(to, &ev);
    }

    async fn online(&self, users: &[UserId]) -> Vec<bool> {
        users
            .iter()
            .map(|u| self.sessions.get(*u).is_some())
            .collect()
    }

    async fn claim(&self, _user: UserId, _sid: u64) {}

    async fn release(&self, _user: UserId, _sid: u64) {}
}
