//! LOGIN: authenticate by password or token, register the session (kicking
//! an older one), queue the login ack and the backlog, and tell friends.

use std::collections::BTreeSet;
use std::sync::Arc;

use chat_protocol::{limits, time::unix_now, Errno};

use super::{Link, ReplyTo};
use crate::error::ServiceError;
use crate::metrics::LoginLabels;
use crate::password::{new_token, token_hash};
use crate::request::{check_bytes, Request};
use crate::service::{replay, session, Service, Session};
use crate::sessions::{Event, SessionHandle};
use crate::store::{StoreError, TokenIssued, TokenRequest, UserId, UserRecord};

/// A login request.
#[derive(Debug)]
pub struct Login {
    id: UserId,
    level: u8,
    secret: Secret,
    /// Level 2: the highest seq the client holds, confirmed before the replay.
    last_seq: Option<i64>,
}

/// What the client proves itself with.
#[derive(Debug)]
enum Secret {
    Password(String),
    Token(String),
}

impl Login {
    /// Parses `id`, `v`, `password` or (level 2) `token`, and `last_seq`.
    /// A connection that is logged in must log out first.
    pub fn parse(req: &Request, me: Option<&Session>, sh: &Service) -> Result<Login, ServiceError> {
        if me.is_some() {
            return Err(ServiceError::new(
                Errno::Forbidden,
                "this connection is logged in; send LOGINOUT first",
            ));
        }
        let id = req.int("id")?;
        let level = match req.opt_int("v")? {
            None | Some(1) => 1,
            Some(2) => 2,
            Some(_) => return Err(ServiceError::malformed("v must be 1 or 2")),
        };
        let password = req.opt_str("password")?;
        let token = req.opt_str("token")?;
        let last_seq = req.opt_int("last_seq")?;
        if last_seq.is_some_and(|s| s < 0) {
            return Err(ServiceError::malformed("last_seq must not be negative"));
        }
        let secret = match (password, token) {
            (Some(p), _) => {
                check_bytes("password", p, 1, limits::MAX_PASSWORD_BYTES)?;
                if p.len() > sh.cfg.limits.password_bytes {
                    return Err(ServiceError::malformed("password too long"));
                }
                Secret::Password(p.to_owned())
            }
            (None, Some(t)) => {
                if level < 2 {
                    return Err(ServiceError::malformed("token login needs \"v\":2"));
                }
                check_bytes("token", t, 1, limits::MAX_TOKEN_BYTES)?;
                Secret::Token(t.to_owned())
            }
            (None, None) => return Err(ServiceError::malformed("field `password` is required")),
        };
        Ok(Login {
            id,
            level,
            secret,
            last_seq,
        })
    }

    /// Logs in. On success the ack and the backlog are queued on the link,
    /// the session is in `link.session`, and friends hear PRESENCE.
    pub async fn run(
        self,
        sh: &Arc<Service>,
        link: &mut Link<'_>,
        to: &ReplyTo,
    ) -> Result<(), ServiceError> {
        let method = match self.secret {
            Secret::Password(_) => "password",
            Secret::Token(_) => "token",
        };
        let r = self.log_in(sh, link, to).await;
        let result = match &r {
            Ok(()) => "ok",
            Err(e) => e.errno.name(),
        };
        sh.metrics
            .logins
            .get_or_create(&LoginLabels { result, method })
            .inc();
        r
    }

    async fn log_in(
        self,
        sh: &Arc<Service>,
        link: &mut Link<'_>,
        to: &ReplyTo,
    ) -> Result<(), ServiceError> {
        let level = self.level;
        let user = self.id;
        let token = (level >= 2).then(new_token);
        let account = self.authenticate(sh, link, token.as_deref()).await?;
        if let Some(seq) = self.last_seq {
            sh.committer.ack(user, seq).await?;
        }
        let friends = sh.store.friends(user).await?;
        let groups = sh.store.groups_of(user).await?;

        // Register before reading the backlog, so that nothing committed
        // from here on can slip between the replay and live delivery.
        let sid = sh.next_sid();
        let handle = Arc::new(SessionHandle::new(
            sid,
            user,
            level,
            link.out.clone(),
            link.close.clone(),
            sh.backlog.clone(),
        ));
        if let Some(old) = sh.sessions.insert(handle.clone()) {
            tracing::info!(user, old_sid = old.sid, "newer login replaces session");
            old.deliver(&Event::Kick { sid: old.sid });
        }
        sh.bus.claim(user, sid).await;
        let s = Session {
            user,
            name: account.name.as_str().into(),
            level,
            handle,
        };
        // An operator may have disabled or deleted the account, or reset its
        // password, since it was checked: the nodes' watch for such changes
        // (`admin::watch`) sees only registered sessions, so look again now
        // that this one is.
        if let Err(e) = still_valid(sh, &account).await {
            session::end(sh, &s, false).await;
            link.close.cancel();
            return Err(e);
        }

        let ids: Vec<UserId> = friends
            .iter()
            .map(|f| f.id)
            .chain(groups.iter().flat_map(|g| g.members.iter().map(|m| m.id)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let online: BTreeSet<UserId> = ids
            .iter()
            .zip(sh.bus.online(&ids).await)
            .filter_map(|(id, on)| on.then_some(*id))
            .collect();

        let contacts = replay::Contacts {
            friends: &friends,
            groups: &groups,
            online: &online,
        };
        if let Err(e) = replay::login(sh, link, &s, contacts, token, to.reqid.as_ref()).await {
            // The ack may be out already; the client reconnects and gets the rest.
            tracing::warn!(user, error = %e, "login replay failed; closing");
            session::end(sh, &s, false).await;
            link.close.cancel();
            return Err(e);
        }
        for f in &friends {
            sh.bus.send(
                f.id,
                Event::Presence {
                    id: user,
                    online: true,
                    since: s.handle.since,
                },
            );
        }
        tracing::info!(user, sid, level, peer = %link.ip, "logged in");
        *link.session = Some(s);
        Ok(())
    }

    /// Checks the password or exchanges the token (issuing the new one),
    /// and returns the account. A storage failure is errno 10, never 1.
    async fn authenticate(
        &self,
        sh: &Service,
        link: &Link<'_>,
        token: Option<&str>,
    ) -> Result<UserRecord, ServiceError> {
        let now = unix_now();
        let expires_at = now + sh.cfg.token_ttl.as_secs() as i64;
        match &self.secret {
            Secret::Password(password) => {
                let g = &sh.guards;
                if let Err(wait) = g.login_user.check(self.id).and(g.login_addr.check(link.ip)) {
                    return Err(ServiceError::new(
                        Errno::RateLimited,
                        format!(
                            "too many failed logins; try again in {} s",
                            wait.as_secs().max(1)
                        ),
                    ));
                }
                let user = sh.store.find_user(self.id).await?;
                let stored = user.as_ref().map(|u| u.password_hash.clone());
                if !sh.passwords.verify(password.clone(), stored).await? {
                    g.login_user.failed(self.id);
                    g.login_addr.failed(link.ip);
                    tracing::info!(user = self.id, ip = %link.ip, "failed login");
                    return Err(bad_credentials());
                }
                g.login_user.succeeded(self.id);
                let user = user.ok_or_else(bad_credentials)?;
                if user.disabled {
                    return Err(disabled());
                }
                if let Some(t) = token {
                    sh.committer
                        .issue_token(TokenRequest {
                            consume: None,
                            user: user.id,
                            issue: token_hash(t),
                            expires_at,
                            now,
                        })
                        .await?;
                }
                Ok(user)
            }
            Secret::Token(old) => {
                let issued = sh
                    .committer
                    .issue_token(TokenRequest {
                        consume: Some(token_hash(old)),
                        user: self.id,
                        issue: token_hash(token.unwrap_or_default()),
                        expires_at,
                        now,
                    })
                    .await;
                match issued {
                    Ok(TokenIssued { user }) if user == self.id => {}
                    Ok(_) | Err(StoreError::BadToken) => {
                        return Err(ServiceError::new(
                            Errno::BadCredentials,
                            "invalid or expired token",
                        ))
                    }
                    Err(e) => return Err(e.into()),
                }
                // Disabling an account revoked its tokens: a disabled
                // account's token fails above, as any dead token does.
                sh.store
                    .find_user(self.id)
                    .await?
                    .ok_or_else(bad_credentials)
            }
        }
    }
}

/// Whether the account is still as it was when the login checked it: not
/// deleted, not disabled, the same password.
async fn still_valid(sh: &Service, checked: &UserRecord) -> Result<(), ServiceError> {
    match sh.store.find_user(checked.id).await? {
        Some(u) if u.disabled => Err(disabled()),
        Some(u) if u.password_hash == checked.password_hash => Ok(()),
        _ => Err(bad_credentials()),
    }
}

/// errno 4: an operator disabled the account (docs/protocol.md, Clarifications).
fn disabled() -> ServiceError {
    ServiceError::new(Errno::Forbidden, "this account is disabled")
}

/// errno 1, worded the same whether the id or the password was wrong.
fn bad_credentials() -> ServiceError {
    ServiceError::new(Errno::BadCredentials, "wrong id or password")
}
