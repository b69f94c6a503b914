//! FIND_USER: a user by the exact name they registered, with whether they
//! are online. No prefix or look-alike search, so the user list cannot be
//! scraped; each lookup counts against the user's friend-and-group rate.

use std::sync::Arc;

use chat_protocol::Errno;
use serde_json::json;

use super::{Ran, ReplyTo};
use crate::error::ServiceError;
use crate::request::Request;
use crate::service::{Service, Session};
use crate::store::UserId;

/// A lookup by name.
#[derive(Debug)]
pub struct FindUser {
    me: UserId,
    name: String,
}

impl FindUser {
    /// Parses `name` (within the name length limit).
    pub fn parse(req: &Request, s: &Session, sh: &Service) -> Result<FindUser, ServiceError> {
        req.check_self(s.user)?;
        let name = req.chars("name", 1, sh.cfg.limits.name_chars)?.to_owned();
        Ok(FindUser { me: s.user, name })
    }

    /// Looks the name up while the connection reads on. Answered at both
    /// levels, as HISTORY is: the request is useless without its result.
    pub fn run(self, sh: &Arc<Service>, to: ReplyTo) -> Ran {
        if !sh.guards.social.take(self.me) {
            let e = ServiceError::new(
                Errno::RateLimited,
                format!(
                    "too many lookups and friend and group changes: at most {} a minute",
                    sh.cfg.quotas.social_per_min
                ),
            );
            return Ran::Done(Some(to.error(&e)));
        }
        let sh = sh.clone();
        let work = async move {
            let p = sh
                .store
                .find_user_by_name(&self.name)
                .await?
                .ok_or_else(|| ServiceError::new(Errno::NotFound, "no user has this name"))?;
            let online = sh.bus.online(&[p.id]).await.first() == Some(&true);
            Ok(json!({"id": p.id, "name": p.name, "online": online}))
        };
        to.queue(work, |to, user| to.ack(vec![("user", user)]))
    }
}
