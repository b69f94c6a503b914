//! REG, LOGIN and LOGINOUT: accounts, sessions, tokens, the login ack in both
//! shapes, the replay of undelivered messages, and presence.

use std::collections::BTreeSet;
use std::sync::Arc;

use chat_protocol::{limits, msgid, time::unix_now, Errno};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::{Pending, Reply, Session, Shared};
use crate::error::ServiceError;
use crate::frames::{self, PushBody};
use crate::names;
use crate::password::{new_token, token_hash};
use crate::request::{check_bytes, Request};
use crate::sessions::{Event, Out, Outbox, SessionHandle};
use crate::store::{GroupInfo, Person, StoreError, TokenIssued, TokenRequest, UserId};

/// REG: validate, hash off the async threads, create.
pub fn register(sh: &Arc<Shared>, req: &Request) -> Result<Pending, ServiceError> {
    let lim = &sh.cfg.limits;
    let name = req.chars("name", 1, lim.name_chars)?.to_owned();
    let password = req.str("password")?.to_owned();
    check_bytes("password", &password, 1, lim.password_bytes)?;
    // Refused names share errno 1 with taken ones: "name taken or invalid".
    let key =
        names::key(&name).map_err(|e| ServiceError::new(Errno::BadCredentials, e.to_string()))?;
    let sh = sh.clone();
    Ok(Box::pin(async move {
        let hash = sh.passwords.hash(password).await?;
        match sh.store.create_user(&name, &key, &hash).await {
            Ok(id) => {
                tracing::info!(user = id, name = %name, "registered");
                Ok(Reply::Frame(frames::reg_ack(id)))
            }
            Err(StoreError::Exists) => Err(ServiceError::new(
                Errno::BadCredentials,
                "this name is taken",
            )),
            Err(e) => Err(e.into()),
        }
    }))
}

/// What the connection lends a login: its queue and its close signal.
pub struct ConnPort<'a> {
    /// The connection's outbound queue.
    pub out: &'a Arc<Outbox>,
    /// Cancelled when the connection must close.
    pub close: &'a CancellationToken,
    /// The client's address, for failed-login throttling.
    pub ip: std::net::IpAddr,
}

struct Credentials {
    id: UserId,
    level: u8,
    password: Option<String>,
    token: Option<String>,
    last_seq: Option<i64>,
}

fn parse_login(req: &Request) -> Result<Credentials, ServiceError> {
    let id = req.int("id")?;
    let level = match req.opt_int("v")? {
        None | Some(1) => 1,
        Some(2) => 2,
        Some(_) => return Err(ServiceError::malformed("v must be 1 or 2")),
    };
    let password = req.opt_str("password")?.map(str::to_owned);
    let token = req.opt_str("token")?.map(str::to_owned);
    let last_seq = req.opt_int("last_seq")?;
    if last_seq.is_some_and(|s| s < 0) {
        return Err(ServiceError::malformed("last_seq must not be negative"));
    }
    match (&password, &token) {
        (Some(p), _) => check_bytes("password", p, 1, limits::MAX_PASSWORD_BYTES)?,
        (None, Some(t)) => {
            if level < 2 {
                return Err(ServiceError::malformed("token login needs \"v\":2"));
            }
            check_bytes("token", t, 1, limits::MAX_TOKEN_BYTES)?;
        }
        (None, None) => return Err(ServiceError::malformed("field `password` is required")),
    }
    Ok(Credentials {
        id,
        level,
        password,
        token,
        last_seq,
    })
}

fn wrong() -> ServiceError {
    ServiceError::new(Errno::BadCredentials, "wrong id or password")
}

/// LOGIN. On success the ack and the backlog are queued, the session is
/// registered (kicking an older one) and friends hear PRESENCE.
pub async fn login(
    sh: &Arc<Shared>,
    port: ConnPort<'_>,
    req: &Request,
) -> Result<Session, ServiceError> {
    let cred = parse_login(req)?;
    if cred
        .password
        .as_deref()
        .is_some_and(|p| p.len() > sh.cfg.limits.password_bytes)
    {
        return Err(ServiceError::malformed("password too long"));
    }
    let now = unix_now();
    let new_tok = (cred.level >= 2).then(new_token);
    let expires_at = now + sh.cfg.token_ttl.as_secs() as i64;

    // Authenticate. A storage failure is errno 10, never 1.
    let name = if let Some(password) = cred.password {
        let g = &sh.guards;
        if let Err(wait) = g.login_user.check(cred.id).and(g.login_addr.check(port.ip)) {
            return Err(ServiceError::new(
                Errno::RateLimited,
                format!(
                    "too many failed logins; try again in {} s",
                    wait.as_secs().max(1)
                ),
            ));
        }
        let user = sh.store.find_user(cred.id).await?;
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        if !sh.passwords.verify(password, stored).await? {
            g.login_user.failed(cred.id);
            g.login_addr.failed(port.ip);
            tracing::info!(user = cred.id, ip = %port.ip, "failed login");
            return Err(wrong());
        }
        g.login_user.succeeded(cred.id);
        let user = user.ok_or_else(wrong)?;
        if let Some(t) = &new_tok {
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
        user.name
    } else {
        let old = cred.token.as_deref().unwrap_or_default();
        let issued = sh
            .committer
            .issue_token(TokenRequest {
                consume: Some(token_hash(old)),
                user: cred.id,
                issue: token_hash(new_tok.as_deref().unwrap_or_default()),
                expires_at,
                now,
            })
            .await;
        match issued {
            Ok(TokenIssued { user }) if user == cred.id => {}
            Ok(_) | Err(StoreError::BadToken) => {
                return Err(ServiceError::new(
                    Errno::BadCredentials,
                    "invalid or expired token",
                ))
            }
            Err(e) => return Err(e.into()),
        }
        sh.store.find_user(cred.id).await?.ok_or_else(wrong)?.name
    };
    let user = cred.id;
    if let Some(seq) = cred.last_seq {
        sh.committer.ack(user, seq).await?;
    }
    let friends = sh.store.friends(user).await?;
    let groups = sh.store.groups_of(user).await?;

    // Register before reading the backlog, so that nothing committed from
    // here on can slip between the replay and live delivery.
    let sid = sh.next_sid();
    let handle = Arc::new(SessionHandle::new(
        sid,
        user,
        cred.level,
        port.out.clone(),
        port.close.clone(),
        sh.backlog.clone(),
    ));
    if let Some(old) = sh.sessions.insert(handle.clone()) {
        tracing::info!(user, old_sid = old.sid, "newer login replaces session");
        old.deliver(&Event::Kick { sid: old.sid });
    }
    sh.bus.claim(user, sid).await;
    let session = Session {
        user,
        name: name.clone(),
        level: cred.level,
        handle,
    };

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

    if let Err(e) = replay(
        sh,
        &port,
        &session,
        &friends,
        &groups,
        &online,
        new_tok,
        req.reqid.as_ref(),
    )
    .await
    {
        // The ack may be out already; the client reconnects and gets the rest.
        tracing::warn!(user, error = %e, "login replay failed; closing");
        logout(sh, &session, false).await;
        port.close.cancel();
        return Err(e);
    }
    for f in &friends {
        sh.bus.send(
            f.id,
            Event::Presence {
                id: user,
                online: true,
                since: session.handle.since,
            },
        );
    }
    tracing::info!(user, sid, level = cred.level, peer = %port.ip, "logged in");
    Ok(session)
}

fn person(p: &Person, online: &BTreeSet<UserId>) -> Value {
    json!({"id": p.id, "name": p.name, "state": frames::state(online.contains(&p.id))})
}

fn group(g: &GroupInfo, online: &BTreeSet<UserId>, level: u8) -> Value {
    let users: Vec<Value> = g
        .members
        .iter()
        .map(|m| {
            let v = json!({"id": m.id, "name": m.name, "state": frames::state(online.contains(&m.id)), "role": m.role.as_str()});
            if level >= 2 {
                v
            } else {
                Value::String(v.to_string())
            }
        })
        .collect();
    let mut v = json!({"id": g.id, "groupname": g.name, "groupdesc": g.desc});
    if level >= 2 || !users.is_empty() {
        v["users"] = Value::Array(users);
    }
    if level >= 2 {
        v
    } else {
        Value::String(v.to_string())
    }
}

/// Queues the login ack and every undelivered message, then opens the gate.
#[allow(clippy::too_many_arguments)]
async fn replay(
    sh: &Shared,
    port: &ConnPort<'_>,
    s: &Session,
    friends: &[Person],
    groups: &[GroupInfo],
    online: &BTreeSet<UserId>,
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
    let first = sh.store.undelivered(s.user, floor, first_limit).await?;

    let mut ack = Map::new();
    ack.insert("msgid".into(), msgid::LOGIN_ACK.into());
    ack.insert("errno".into(), 0.into());
    ack.insert("id".into(), s.user.into());
    ack.insert("name".into(), s.name.clone().into());
    let fl: Vec<Value> = friends
        .iter()
        .map(|f| {
            let v = person(f, online);
            if l1 {
                Value::String(v.to_string())
            } else {
                v
            }
        })
        .collect();
    let gl: Vec<Value> = groups.iter().map(|g| group(g, online, s.level)).collect();
    if !l1 || !fl.is_empty() {
        ack.insert("friends".into(), fl.into());
    }
    if !l1 || !gl.is_empty() {
        ack.insert("groups".into(), gl.into());
    }
    if let Some(t) = token {
        ack.insert("token".into(), t.into());
    }
    if let Some(r) = reqid {
        ack.insert("reqid".into(), r.clone());
    }
    let mut pending = first;
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
    send(port, frames::value(&Value::Object(ack)), l1_delivered).await?;
    if !s.handle.ack_queued() {
        // Replaced by a newer login while this one was being set up: the
        // login did succeed (its ack is out), and KICKED follows it.
        return Ok(());
    }
    for (seq, m) in pending {
        let push = PushBody::new(Arc::new(m));
        queue(port, push.level2_out(seq)).await?;
        floor = seq;
    }
    // The rest (and whatever arrived meanwhile) the gate reads in order.
    s.handle.replayed_to(floor, at_end);
    s.handle.catch_up().await?;
    Ok(())
}

async fn send(
    port: &ConnPort<'_>,
    bytes: bytes::Bytes,
    l1_delivered: Option<(UserId, i64)>,
) -> Result<(), ServiceError> {
    let out = Out {
        bytes,
        tail: None,
        l1_delivered,
        flushed: None,
    };
    queue(port, out).await
}

async fn queue(port: &ConnPort<'_>, out: Out) -> Result<(), ServiceError> {
    tokio::select! {
        r = port.out.push(out) => r.map_err(|_| ServiceError::busy("connection closed")),
        _ = port.close.cancelled() => Err(ServiceError::busy("connection closed")),
    }
}

/// Ends a session: unregisters it (unless a newer login already replaced
/// it), tells friends it went offline, and with `revoke` drops its tokens.
pub async fn logout(sh: &Shared, s: &Session, revoke: bool) {
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
