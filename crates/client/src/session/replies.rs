//! What the server sends during a session: pushed messages, replies
//! matched to their request by `reqid`, PRESENCE, ROSTER and KICKED.
//!
//! ROSTER keeps the friend and group lists current between logins, and says
//! what others did (befriended you, joined your group, ...). What this
//! user's own request caused is said once, by the reply to that request.

use chat_protocol::{msgid, ChatTarget};
use serde_json::{Map, Value};

use super::requests::Pending;
use super::view::format_chat;
use super::{Group, Session, Step};
use crate::net::{int, reason, text};
use crate::ui::clean;

impl Session {
    /// Reacts to one server frame.
    pub(super) fn on_frame(&mut self, f: &Map<String, Value>) -> Step {
        match int(f, "msgid") {
            Some(msgid::ONE_CHAT) | Some(msgid::GROUP_CHAT) => {
                if self.delivery.receive(int(f, "mid"), int(f, "seq")) {
                    // The first message after a login: one written before
                    // the login is the backlog, and gets a marker.
                    if let Some(login) = self.away_since.take() {
                        if login.is_backlog(text(f, "time")) {
                            self.out.line("--- while you were away ---");
                        }
                    }
                    if let Some(id) = int(f, "id") {
                        let name = text(f, "name");
                        if !name.is_empty() {
                            self.names.insert(id, name.to_owned());
                        }
                    }
                    let gname = int(f, "groupid")
                        .filter(|_| int(f, "msgid") == Some(msgid::GROUP_CHAT))
                        .and_then(|g| self.groups.get(&g))
                        .and_then(|g| g.name.clone());
                    self.out.line(format_chat(f, gname.as_deref()));
                }
                Step::Continue
            }
            Some(msgid::ACK) | Some(msgid::PONG) => match self.take_pending(f) {
                Some(p) => self.on_ack(p, f),
                None => Step::Continue,
            },
            Some(msgid::ERROR) => {
                let errno = int(f, "errno").unwrap_or(-1);
                let msg = reason(f);
                match self.take_pending(f) {
                    Some(Pending::Ping) => {
                        self.ping_outstanding = false;
                    }
                    Some(Pending::Find(name) | Pending::Resolve { name, .. }) if errno == 3 => {
                        self.out
                            .line(format!("no user is called \"{}\"", clean(&name)));
                    }
                    Some(Pending::LoginOut) => {
                        self.out.line(format!("loginout failed: {msg}"));
                        return Step::LoggedOut;
                    }
                    Some(p) => {
                        if let Pending::Chat { key, .. } | Pending::GroupChat { key, .. } = p {
                            // Refused, not lost: sending it again would not help.
                            self.outbox.done(key);
                        }
                        self.out.line(format!("{} failed: {msg}", p.describe()))
                    }
                    None => self.out.line(format!("the server says: {msg}")),
                }
                Step::Continue
            }
            Some(msgid::PRESENCE) => {
                if let Some(id) = int(f, "id") {
                    let online = text(f, "state") == "online";
                    // PRESENCE only comes from friends, including ones who
                    // befriended this user after the login ack.
                    self.friends.insert(id);
                    // It is a state, not a toggle: a second login of a
                    // friend already online says nothing new.
                    if self.online.insert(id, online) != Some(online) {
                        self.out.line(format!(
                            "{} is now {}",
                            self.who(id),
                            if online { "online" } else { "offline" }
                        ));
                    }
                }
                Step::Continue
            }
            Some(msgid::ROSTER) => {
                self.on_roster(f);
                Step::Continue
            }
            Some(msgid::KICKED) => {
                let why = clean(text(f, "errmsg"));
                Step::Kicked(if why.is_empty() {
                    "this session was replaced by a newer login".into()
                } else {
                    why
                })
            }
            _ => Step::Continue,
        }
    }

    /// Whether a request of this user's own, still waiting for its reply,
    /// is what `matches` says.
    fn own_pending(&self, matches: impl Fn(&Pending) -> bool) -> bool {
        self.pending.values().any(matches)
    }

    /// Applies a ROSTER push to the lists, and says what others did.
    fn on_roster(&mut self, f: &Map<String, Value>) {
        let Some(id) = int(f, "id") else { return };
        self.learn(id, f);
        let who = self.who(id);
        let gid = int(f, "groupid");
        if let Some(g) = gid {
            let name = text(f, "groupname");
            if !name.is_empty() {
                if let Some(group) = self.groups.get_mut(&g) {
                    group.name = Some(name.to_owned());
                }
            }
        }
        match (text(f, "event"), gid) {
            ("friend_added", _) => {
                let mine = self.friends.contains(&id)
                    || self.own_pending(|p| matches!(p, Pending::AddFriend(u) if *u == id));
                self.friends.insert(id);
                if !mine {
                    let state = match self.online.get(&id) {
                        Some(true) => " (online)",
                        Some(false) => " (offline)",
                        None => "",
                    };
                    self.out.line(format!("{who} added you as a friend{state}"));
                }
            }
            ("friend_removed", _) => {
                let mine = !self.friends.contains(&id)
                    || self.own_pending(|p| matches!(p, Pending::DelFriend(u) if *u == id));
                self.friends.remove(&id);
                if !mine {
                    self.out
                        .line(format!("{who} removed you from their friends"));
                }
            }
            ("member_joined", Some(g)) => {
                let name = text(f, "groupname");
                let group = self.groups.entry(g).or_default();
                if group.name.is_none() && !name.is_empty() {
                    group.name = Some(name.to_owned());
                }
                if !group.members.iter().any(|(m, _)| *m == id) {
                    group.members.push((id, "normal".into()));
                }
                if id != self.me {
                    let title = self.group_title(g);
                    self.out.line(format!("{who} joined {title}"));
                }
            }
            ("member_left", Some(g)) => {
                let title = self.group_title(g);
                if id == self.me {
                    // The reply to this user's own quitgroup says it, with
                    // the group's name.
                    let own = self.own_pending(|p| matches!(p, Pending::QuitGroup(q) if *q == g));
                    if !own && self.groups.remove(&g).is_some() {
                        self.out.line(format!("you left {title}"));
                    }
                } else {
                    if let Some(group) = self.groups.get_mut(&g) {
                        group.members.retain(|(m, _)| *m != id);
                    }
                    self.out.line(format!("{who} left {title}"));
                }
            }
            ("group_disbanded", Some(g)) => {
                let title = self.group_title(g);
                if !self.own_pending(|p| matches!(p, Pending::Disband(d) if *d == g))
                    && self.groups.remove(&g).is_some()
                {
                    self.out.line(format!("{title} was disbanded by {who}"));
                }
            }
            _ => {}
        }
    }

    /// The request this reply answers, no longer pending.
    fn take_pending(&mut self, f: &Map<String, Value>) -> Option<Pending> {
        let reqid = f.get("reqid").and_then(Value::as_u64)?;
        self.pending.remove(&reqid)
    }

    /// Reports a successful reply and updates what the session knows.
    fn on_ack(&mut self, p: Pending, f: &Map<String, Value>) -> Step {
        match p {
            Pending::Ping => self.ping_outstanding = false,
            Pending::LoginOut => {
                self.out.line(format!("{} logged out", self.who(self.me)));
                return Step::LoggedOut;
            }
            Pending::Chat { to, key } => {
                self.outbox.done(key);
                // The presence already known: a friend who is offline gets
                // it at their next login.
                let later = if to != self.me && self.online.get(&to) == Some(&false) {
                    " (offline: stored for later)"
                } else {
                    ""
                };
                self.out
                    .line(format!("message sent to {}{later}", self.who(to)));
            }
            Pending::GroupChat { group, key } => {
                self.outbox.done(key);
                let title = self.group_title(group);
                self.out.line(format!("group message sent to {title}"));
            }
            Pending::AddFriend(u) => {
                self.friends.insert(u);
                self.out.line(format!("{} is now your friend", self.who(u)));
            }
            Pending::DelFriend(u) => {
                self.friends.remove(&u);
                self.out
                    .line(format!("{} is no longer your friend", self.who(u)));
            }
            Pending::CreateGroup { name, desc } => match int(f, "groupid") {
                Some(g) => {
                    self.groups.insert(
                        g,
                        Group {
                            name: Some(name.clone()),
                            desc,
                            members: vec![(self.me, "creator".into())],
                        },
                    );
                    self.out
                        .line(format!("group \"{}\" created (id {g})", clean(&name)));
                }
                None => self.out.line(format!("group \"{}\" created", clean(&name))),
            },
            Pending::AddGroup(g) => {
                self.groups.entry(g).or_default();
                self.out.line(format!("joined group {g}"));
            }
            Pending::QuitGroup(g) => {
                let title = self.group_title(g);
                self.groups.remove(&g);
                self.out.line(format!("left {title}"));
            }
            Pending::Disband(g) => {
                let title = self.group_title(g);
                self.groups.remove(&g);
                self.out.line(format!("{title} disbanded"));
            }
            Pending::Find(name) => {
                let user = f.get("user").and_then(Value::as_object);
                match user.and_then(|u| int(u, "id").map(|id| (id, u))) {
                    Some((id, u)) => {
                        let found = text(u, "name");
                        let found = if found.is_empty() { &name } else { found };
                        self.names.insert(id, found.to_owned());
                        let state = match u.get("online").and_then(Value::as_bool) {
                            Some(online) => {
                                self.online.insert(id, online);
                                if online {
                                    "online"
                                } else {
                                    "offline"
                                }
                            }
                            None => "state unknown",
                        };
                        self.out
                            .line(format!("{}: user id {id}, {state}", clean(found)));
                    }
                    None => self
                        .out
                        .line(format!("no user is called \"{}\"", clean(&name))),
                }
            }
            Pending::Resolve { name, cmd } => {
                let found = f
                    .get("user")
                    .and_then(Value::as_object)
                    .and_then(|u| int(u, "id"));
                match found {
                    Some(id) => {
                        self.names.insert(id, name);
                        return Step::Run(Box::new(cmd.with_user(id)));
                    }
                    None => self
                        .out
                        .line(format!("no user is called \"{}\"", clean(&name))),
                }
            }
            Pending::History(u) => {
                let title = format!("history with {}", self.who(u));
                self.print_history(&title, ChatTarget::User(u), f);
            }
            Pending::GroupHistory(g) => {
                let title = format!("history of {}", self.group_title(g));
                self.print_history(&title, ChatTarget::Group(g), f);
            }
        }
        Step::Continue
    }
}
