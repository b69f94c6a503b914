//! The message bus: how an event reaches a user's session on whichever node
//! holds it, and who is online. A single node uses [`local::LocalBus`]; a
//! cluster uses a Redis-backed bus with the same trait.

pub mod dispatch;
pub mod local;
pub mod redis;

use async_trait::async_trait;

use crate::sessions::Event;
use crate::store::UserId;

pub use dispatch::BusDispatch;

/// Routing and presence across the nodes of a deployment.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Sends an event to a user's session, wherever it is. Never blocks; events
    /// sent from one task arrive in the order they were sent.
    fn send(&self, to: UserId, ev: Event);

    /// Whether each of these users has a session anywhere.
    async fn online(&self, users: &[UserId]) -> Vec<bool>;

    /// Records that this node now holds `user`'s session `sid`; a session of
    /// theirs on another node is kicked.
    async fn claim(&self, user: UserId, sid: u64);

    /// Records that session `sid` of `user` ended here.
    async fn release(&self, user: UserId, sid: u64);

    /// Stops background work at node shutdown, after sessions are released.
    fn shutdown(&self) {}

    /// Whether the bus can carry events now; the error says why not.
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
