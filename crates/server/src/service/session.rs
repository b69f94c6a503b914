//! A logged-in session as its connection holds it, and how one ends.

use std::sync::Arc;

use super::Service;
use crate::sessions::{Event, SessionHandle};
use crate::store::UserId;

/// A logged-in session, as its connection holds it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user.
    pub user: UserId,
    /// Their name.
    pub name: std::sync::Arc<str>,
    /// Protocol level, 1 or 2.
    pub level: u8,
    /// Registry entry.
    pub handle: Arc<SessionHandle>,
}

/// Ends a session: unregisters it (unless a newer login already replaced
/// it), tells friends it went offline, and with `revoke` (LOGINOUT) drops
/// the user's tokens.
pub async fn end(sh: &Service, s: &Session, revoke: bool) {
    if revoke {
        if let Err(e) = sh.committer.revoke_tokens(s.user).await {
            tracing::warn!(user = s.user, error = %e, "could not revoke tokens");
        }
    }
    if !sh.sessions.remove_if(s.user, s.handle.sid) {
        return; // replaced by a newer login: still online
    }
    sh.bus.release(s.user, s.handle.sid).await;
    if sh.bus.online(&[s.user]).await.first() == Some(&true) {
        return; // a newer login on another node holds the user
    }
    match sh.store.friends(s.user).await {
        Ok(friends) => {
            for f in friends {
                sh.bus.send(
                    f.id,
                    Event::Presence {
                        id: s.user,
                        online: false,
                        since: s.handle.since,
                    },
                );
            }
        }
        Err(e) => {
            tracing::warn!(user = s.user, error = %e, "no PRESENCE sent: cannot list friends")
        }
    }
    tracing::info!(user = s.user, sid = s.handle.sid, "logged out");
}
