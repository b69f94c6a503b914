//! Friends and groups: ADD_FRIEND, DEL_FRIEND, CREATE_GROUP, ADD_GROUP,
//! QUIT_GROUP and DISBAND_GROUP. Each runs alone on its connection (see
//! [`super::Order::Exclusive`]) and is ACKed at level 2 only.

use chat_protocol::push::{self, RosterEvent};
use chat_protocol::{msgid, Errno};

use super::ReplyTo;
use crate::error::ServiceError;
use crate::names;
use crate::request::{check_chars, Request};
use crate::service::{Service, Session};
use crate::sessions::Event;
use crate::store::{GroupId, StoreError, UserId};
use bytes::Bytes;

/// A friend or group change by `me`.
#[derive(Debug)]
pub struct Social {
    me: UserId,
    /// `me`'s name, for the ROSTER pushes others get.
    my_name: String,
    change: Change,
}

/// The change itself.
#[derive(Debug)]
enum Change {
    AddFriend(UserId),
    RemoveFriend(UserId),
    CreateGroup {
        name: String,
        key: String,
        desc: String,
    },
    Join(GroupId),
    Quit(GroupId),
    Disband(GroupId),
}

impl Social {
    /// Parses any of the six requests.
    pub fn parse(req: &Request, s: &Session, sh: &Service) -> Result<Social, ServiceError> {
        req.check_self(s.user)?;
        let change = match req.msgid {
            msgid::ADD_FRIEND => {
                let friend = req.int("friendid")?;
                if friend == s.user {
                    return Err(ServiceError::malformed("you cannot befriend yourself"));
                }
                Change::AddFriend(friend)
            }
            msgid::DEL_FRIEND => Change::RemoveFriend(req.int("friendid")?),
            msgid::CREATE_GROUP => {
                let lim = &sh.cfg.limits;
                let name = req.chars("groupname", 1, lim.group_name_chars)?.to_owned();
                // The user-name rules, but errno 6 as for any bad field: only
                // REG has errno 1 ("name taken or invalid"). A taken key is
                // errno 5.
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
                Change::CreateGroup { name, key, desc }
            }
            msgid::ADD_GROUP => Change::Join(req.int("groupid")?),
            msgid::QUIT_GROUP => Change::Quit(req.int("groupid")?),
            msgid::DISBAND_GROUP => Change::Disband(req.int("groupid")?),
            other => return Err(ServiceError::malformed(format!("unknown msgid {other}"))),
        };
        Ok(Social {
            me: s.user,
            my_name: s.name.to_string(),
            change,
        })
    }

    /// Makes the change, within the user's quotas.
    pub async fn run(self, sh: &Service, to: &ReplyTo) -> Result<Option<Bytes>, ServiceError> {
        let me = self.me;
        let grows = matches!(
            self.change,
            Change::AddFriend(_) | Change::CreateGroup { .. } | Change::Join(_)
        );
        if grows && !sh.guards.social.take(me) {
            return Err(ServiceError::new(
                Errno::RateLimited,
                format!(
                    "too many friend and group changes: at most {} a minute",
                    sh.cfg.quotas.social_per_min
                ),
            ));
        }
        let store = &sh.store;
        let roster = Roster {
            sh,
            me: (me, &self.my_name),
        };
        let fields = match self.change {
            Change::AddFriend(friend) => {
                quota::friends(sh, me, friend).await?;
                store
                    .add_friend(me, friend)
                    .await
                    .map_err(|e| reword(e, "no such user", "already friends", ""))?;
                roster.friends(RosterEvent::FriendAdded, friend).await;
                vec![]
            }
            Change::RemoveFriend(friend) => {
                store
                    .remove_friend(me, friend)
                    .await
                    .map_err(|e| reword(e, "not in your friend list", "", ""))?;
                roster.friends(RosterEvent::FriendRemoved, friend).await;
                vec![]
            }
            Change::CreateGroup { name, key, desc } => {
                quota::groups_created(sh, me).await?;
                let id = store
                    .create_group(me, &name, &key, &desc)
                    .await
                    .map_err(|e| reword(e, "", "a group with this name exists", ""))?;
                vec![("groupid", id.into())]
            }
            Change::Join(g) => {
                quota::group_members(sh, g).await?;
                store
                    .join_group(g, me)
                    .await
                    .map_err(|e| reword(e, "no such group", "you are already a member", ""))?;
                // Every member, the newcomer too, after the join.
                if let Some((name, members)) = roster.group(g).await {
                    roster.group_event(RosterEvent::MemberJoined, (g, &name), &members);
                }
                vec![]
            }
            Change::Quit(g) => {
                // Every member, the leaver too: read before the leaving.
                let before = roster.group(g).await;
                store.quit_group(g, me).await.map_err(|e| {
                    reword(
                        e,
                        "no such group",
                        "",
                        "not a member, or the creator (who may disband instead)",
                    )
                })?;
                if let Some((name, members)) = before {
                    roster.group_event(RosterEvent::MemberLeft, (g, &name), &members);
                }
                vec![]
            }
            Change::Disband(g) => {
                let name = roster.group(g).await.map(|(name, _)| name);
                let members = store.disband_group(g, me).await.map_err(|e| {
                    reword(
                        e,
                        "no such group",
                        "",
                        "only the creator may disband a group",
                    )
                })?;
                if let Some(name) = name {
                    roster.group_event(RosterEvent::GroupDisbanded, (g, &name), &members);
                }
                vec![]
            }
        };
        Ok(to.ack_at_level2(fields))
    }
}

/// The ROSTER pushes of one change: they go on the bus like PRESENCE, to
/// every affected user's level-2 session on any node, and are not stored
/// (the next login ack carries the current lists). A change that is made
/// but whose push cannot be worked out (a read fails) is logged, not undone.
struct Roster<'a> {
    sh: &'a Service,
    /// The user making the change: id and name.
    me: (UserId, &'a str),
}

impl Roster<'_> {
    /// `friend_added` or `friend_removed`, to both friends, each told about
    /// the other (with their state, for a new friend).
    async fn friends(&self, event: RosterEvent, friend: UserId) {
        let (me, my_name) = self.me;
        let name = match self.sh.store.find_user(friend).await {
            Ok(Some(u)) => u.name,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(user = me, friend, error = %e, "no ROSTER sent: cannot read the friend");
                return;
            }
        };
        let added = event == RosterEvent::FriendAdded;
        let friend_online = if added {
            self.sh.bus.online(&[friend]).await.first().copied()
        } else {
            None
        };
        let to_me = push::roster(event, (friend, &name), None, friend_online);
        let to_friend = push::roster(event, (me, my_name), None, added.then_some(true));
        self.sh.bus.send(me, Event::Roster(to_me));
        self.sh.bus.send(friend, Event::Roster(to_friend));
    }

    /// A group's name and members, or `None` (logged) when it cannot be read.
    async fn group(&self, g: GroupId) -> Option<(String, Vec<UserId>)> {
        match self.sh.store.groups_of(self.me.0).await {
            Ok(groups) => groups
                .into_iter()
                .find(|x| x.id == g)
                .map(|x| (x.name, x.members.into_iter().map(|m| m.id).collect())),
            Err(e) => {
                tracing::warn!(user = self.me.0, group = g, error = %e, "no ROSTER sent: cannot read the group");
                None
            }
        }
    }

    /// A group event about `me`, to each of `members`.
    fn group_event(&self, event: RosterEvent, group: (GroupId, &str), members: &[UserId]) {
        let online = (event == RosterEvent::MemberJoined).then_some(true);
        let frame = push::roster(event, self.me, Some(group), online);
        for &m in members {
            self.sh.bus.send(m, Event::Roster(frame.clone()));
        }
    }
}

/// The per-user quotas (errno 4, naming the quota). Checked before the
/// change, so concurrent requests of one user may overshoot by their number,
/// which the per-connection ordering of social requests keeps at one.
mod quota {
    use chat_protocol::Errno;

    use crate::error::ServiceError;
    use crate::service::Service;
    use crate::store::{GroupId, UserId};

    fn over(what: String) -> ServiceError {
        ServiceError::new(Errno::Forbidden, format!("quota reached: {what}"))
    }

    pub async fn friends(sh: &Service, me: UserId, friend: UserId) -> Result<(), ServiceError> {
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

    pub async fn groups_created(sh: &Service, me: UserId) -> Result<(), ServiceError> {
        let max = sh.cfg.quotas.groups_created;
        if max > 0 && sh.store.created_count(me).await? >= max {
            return Err(over(format!("at most {max} groups created per user")));
        }
        Ok(())
    }

    pub async fn group_members(sh: &Service, g: GroupId) -> Result<(), ServiceError> {
        let max = sh.cfg.quotas.group_members;
        if max > 0 && sh.store.member_count(g).await? >= max {
            return Err(over(format!("at most {max} members per group")));
        }
        Ok(())
    }
}

/// A store error as this request words it: the store only knows "not
/// found", "exists" and "forbidden"; an empty wording keeps the default.
fn reword(
    e: StoreError,
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
            err = err.reworded(errno, msg);
        }
    }
    err
}
