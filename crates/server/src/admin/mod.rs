//! Operator commands (`chat-server admin ...`) and how running nodes learn
//! of them.
//!
//! The commands ([`cli`]) run in a process of their own, against the same
//! database as the servers, while they run. A change that live sessions must
//! hear of (an account disabled or deleted, a password reset) is written
//! with a row in `admin_events`, in the same transaction. Every node polls
//! that table ([`watch`], every [`POLL_EVERY`]) and closes the sessions it
//! holds of the accounts named, with a KICKED that says why. Logins check
//! the account itself, so a disabled account cannot log in again anywhere.

pub mod cli;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::frames;
use crate::sessions::Sessions;
use crate::store::{AccountChange, AccountEvent, Store};

/// How often each node looks for account changes: a disabled user's
/// session ends within about this long.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// Event ids below the highest seen that are read again at each poll. MySQL
/// hands out AUTO_INCREMENT ids at insert time, so two operators' changes
/// can commit out of id order; a late one still shows up in this window.
const OVERLAP: i64 = 32;

/// Events read per query; a poll reads until it has them all.
const PAGE: i64 = 1000;

/// What KICKED says to a session an operator ended.
pub fn reason(change: AccountChange) -> &'static str {
    match change {
        AccountChange::Disabled => "your account was disabled",
        AccountChange::Deleted => "your account was deleted",
        AccountChange::PasswordReset => "your password was reset; log in with the new one",
    }
}

/// Polls for account changes until `stop`, ending this node's sessions of
/// the accounts they name. Changes from before it started are not acted on.
pub async fn watch(store: Arc<dyn Store>, sessions: Arc<Sessions>, stop: CancellationToken) {
    let mut seen = Seen::default();
    let mut started = false;
    loop {
        if started {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
        let res = if started {
            seen.poll(&*store, |ev| end_sessions(&sessions, ev)).await
        } else {
            seen.start(&*store).await
        };
        match res {
            Ok(()) => started = true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read account changes; trying again");
                if !started {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(POLL_EVERY) => {}
                    }
                }
            }
        }
    }
}

/// Closes this node's session of the event's user, if it holds one.
fn end_sessions(sessions: &Sessions, ev: &AccountEvent) {
    let Some(change) = ev.change else {
        return;
    };
    if let Some(h) = sessions.get(ev.user) {
        tracing::info!(
            user = ev.user,
            sid = h.sid,
            change = change.as_str(),
            "an operator changed the account; closing its session"
        );
        h.kick(frames::kicked_because(reason(change)));
    }
}

/// The event ids already handled: everything up to `below`, and those in
/// the overlap window above it.
#[derive(Debug, Default)]
struct Seen {
    /// The highest id handled.
    high: i64,
    /// Ids handled within `OVERLAP` of `high`.
    recent: BTreeSet<i64>,
}

impl Seen {
    /// Marks what is recorded already as handled.
    async fn start(&mut self, store: &dyn Store) -> crate::store::StoreResult<()> {
        self.high = store.last_account_event().await?;
        self.poll(store, |_| {}).await
    }

    /// Reads the events not handled yet and hands each to `act`, once.
    async fn poll(
        &mut self,
        store: &dyn Store,
        mut act: impl FnMut(&AccountEvent),
    ) -> crate::store::StoreResult<()> {
        let mut from = (self.high - OVERLAP).max(0);
        loop {
            let page = store.account_events(from, PAGE).await?;
            for ev in &page {
                if self.recent.insert(ev.id) {
                    act(ev);
                }
                self.high = self.high.max(ev.id);
                from = ev.id;
            }
            if (page.len() as i64) < PAGE {
                break;
            }
        }
        let floor = self.high - OVERLAP;
        self.recent.retain(|&id| id > floor);
        Ok(())
    }
}
