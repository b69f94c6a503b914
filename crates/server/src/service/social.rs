//! Friends and groups: ADD_FRIEND, DEL_FRIEND, CREATE_GROUP, ADD_GROUP,
//! QUIT_GROUP and DISBAND_GROUP.

use std::sync::Arc;

use chat_protocol::{msgid, Errno};

use super::{Pending, Reply, Session, Shared};
use crate::error::ServiceError;
use crate::names;
use crate::request::{check_chars, Request};

/// Any friend or group request.
pub fn handle(sh: &Arc<Shared>, s: &Session, req: &Request) -> Result<Pending, ServiceError> {
    req.check_self(s.user)?;
    let grows = matches!(
        req.msgid,
        msgid::ADD_FRIEND | msgid::CREATE_GROUP | msgid::ADD_GROUP
    );
    if grows && !sh.guards.social.take(s.user) {
        return Err(ServiceError::new(
            Errno::RateLimited,
            format!(
                "too many friend and group changes: at most {} a minute",
                sh.cfg.quotas.social_per_min
            ),
        ));
    }
    let sh = sh.clone();
    let me = s.user;
    Ok(match req.msgid {
        msgid::ADD_FRIEND => {
            let friend = req.int("friendid")?;
            if friend == me {
                return Err(ServiceError::malformed("you cannot befriend yourself"));
            }
            Box::pin(async move {
                quota::friends(&sh, me, friend).await?;
                sh.store
                    .add_friend(me, friend)
                    .await
                    .map_err(|e| say(e, "no such user", "already friends", ""))?;
                Ok(Reply::Ack(vec![]))
            })
        }
        msgid::DEL_FRIEND => {
            let friend = req.int("friendid")?;
            Box::pin(async move {
                sh.store
                    .remove_friend(me, friend)
                    .await
                    .map_err(|e| say(e, "not in your friend list", "", ""))?;
                Ok(Reply::Ack(vec![]))
            })
        }
        msgid::CREATE_GROUP => {
            let lim = &sh.cfg.limits;
            let name = req.chars("groupname", 1, lim.group_name_chars)?.to_owned();
            // The user-name rules, but errno 6 as for any bad field: only REG
            // has errno 1 ("name taken or invalid"). A taken key is errno 5.
            let key = names::key(&name)
                .map_err(|e| ServiceError::malformed(format!("groupname: {e}")))?;
            let desc = req.opt_str("groupdesc")?.unwrap_or("").to_owned();
            check_chars("groupdesc", &desc, 0, lim.group_desc_chars)?;
            names::check_text(&desc).map_err(|c| {
                ServiceError::malformed(format!(
                    "groupdesc may not contain control characters or line or paragraph \
                     separators (found U+{:04X})",
                    u32::from(c)
                ))
            })?;
            Box::pin(async move {
                quota::groups_created(&sh, me).await?;
                let id = sh
                    .store
                    .create_group(me, &name, &key, &desc)
                    .await
                    .map_err(|e| say(e, "", "a group with this name exists", ""))?;
                Ok(Reply::Ack(vec![("groupid", id.into())]))
            })
        }
        msgid::ADD_GROUP => {
            let g = req.int("groupid")?;
            Box::pin(async move {
                quota::group_members(&sh, g).await?;
                sh.store
                    .join_group(g, me)
                    .await
                    .map_err(|e| say(e, "no such group", "you are already a member", ""))?;
                Ok(Reply::Ack(vec![]))
            })
        }
        msgid::QUIT_GROUP => {
            let g = req.int("groupid")?;
            Box::pin(async move {
                sh.store.quit_group(g, me).await.map_err(|e| {
                    say(
                        e,
                        "no such group",
                        "",
                        "not a member, or the creator (who may disband instead)",
                    )
                })?;
                Ok(Reply::Ack(vec![]))
            })
        }
        msgid::DISBAND_GROUP => {
            let g = req.int("groupid")?;
            Box::pin(async move {
                sh.store.disband_group(g, me).await.map_err(|e| {
                    say(
                        e,
                        "no such group",
                        "",
                        "only the creator may disband a group",
                    )
                })?;
                Ok(Reply::Ack(vec![]))
            })
        }
        other => unreachable!("social::handle got msgid {other}"),
    })
}

/// The per-user quotas (errno 4, naming the quota). Checked before the
/// change, so concurrent requests of one user may overshoot by their number,
/// which the per-connection ordering of social requests keeps at one.
mod quota {
    use chat_protocol::Errno;

    use crate::error::ServiceError;
    use crate::service::Shared;
    use crate::store::{GroupId, UserId};

    fn over(what: String) -> ServiceError {
        ServiceError::new(Errno::Forbidden, format!("quota reached: {what}"))
    }

    pub async fn friends(sh: &Shared, me: UserId, friend: UserId) -> Result<(), ServiceError> {
        let max = sh.cfg.quotas.friends;
        if max <= 0 {
            return Ok(());
        }
        if sh.store.friends(me).await?.len() as i64 >= max {
            return Err(over(format!("at most {max} friends per user")));
        }
        if sh.store.friends(friend).await?.len() as i64 >= max {
            return Err(over(format!(
                "at most {max} friends per user, and they have as many"
            )));
        }
        Ok(())
    }

    pub async fn groups_created(sh: &Shared, me: UserId) -> Result<(), ServiceError> {
        let max = sh.cfg.quotas.groups_created;
        if max > 0 && sh.store.created_count(me).await? >= max {
            return Err(over(format!("at most {max} groups created per user")));
        }
        Ok(())
    }

    pub async fn group_members(sh: &Shared, g: GroupId) -> Result<(), ServiceError> {
        let max = sh.cfg.quotas.group_members;
        if max > 0 && sh.store.member_count(g).await? >= max {
            return Err(over(format!("at most {max} members per group")));
        }
        Ok(())
    }
}

/// Store error to service error, with this request's wording.
fn say(
    e: crate::store::StoreError,
    not_found: &'static str,
    exists: &'static str,
    forbidden: &'static str,
) -> ServiceError {
    let mut err = ServiceError::from(e);
    for (errno, msg) in [
        (Errno::NotFound, not_found),
        (Errno::Exists, exists),
        (Errno::Forbidden, forbidden),
    ] {
        if !msg.is_empty() {
            err = err.say(errno, msg);
        }
    }
    err
}
