//! What the server sends during a session: pushed messages, replies
//! matched to their request by `reqid`, PRESENCE and KICKED.

use chat_protocol::msgid;
use serde_json::{Map, Value};

use super::requests::Pending;
use super::view::format_chat;
use super::{Group, Session, Step};
use crate::net::{int, text};
use crate::ui::clean;

impl Session {
    /// Reacts to one server frame.
    pub(super) fn on_frame(&mut self, f: &Map<String, Value>) -> Step {
        match int(f, "msgid") {
            Some(msgid::ONE_CHAT) | Some(msgid::GROUP_CHAT) => {
                if self.delivery.receive(int(f, "mid"), int(f, "seq")) {
                    if let Some(id) = int(f, "id") {
                        let name = text(f, "name");
                        if !name.is_empty() {
                            self.names.insert(id, name.to_owned());
                        }
                    }
                    self.out.line(format_chat(f));
                }
                Step::Continue
            }
            Some(msgid::ACK) | Some(msgid::PONG) => match self.take_pending(f) {
                Some(p) => self.on_ack(p, f),
                None => Step::Continue,
            },
            Some(msgid::ERROR) => {
                let errno = int(f, "errno").unwrap_or(-1);
                let msg = clean(text(f, "errmsg"));
                match self.take_pending(f) {
                    Some(Pending::Ping) => {
                        self.ping_outstanding = false;
                    }
                    Some(Pending::LoginOut) => {
                        self.out.line(format!("error {errno}: {msg} (loginout)"));
                        return Step::LoggedOut;
                    }
                    Some(p) => {
                        if let Pending::Chat { key, .. } | Pending::GroupChat { key, .. } = p {
                            // Refused, not lost: sending it again would not help.
                            self.outbox.done(key);
                        }
                        self.out
                            .line(format!("error {errno}: {msg} ({})", p.describe()))
                    }
                    None => self.out.line(format!("server error {errno}: {msg}")),
                }
                Step::Continue
            }
            Some(msgid::PRESENCE) => {
                if let Some(id) = int(f, "id") {
                    let online = text(f, "state") == "online";
                    self.online.insert(id, online);
                    // PRESENCE only comes from friends, including ones who
                    // befriended this user after the login ack.
                    self.friends.insert(id);
                    self.out.line(format!(
                        "{} is now {}",
                        self.who(id),
                        if online { "online" } else { "offline" }
                    ));
                }
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

    /// The request this reply answers, no longer pending.
    fn take_pending(&mut self, f: &Map<String, Value>) -> Option<Pending> {
        let reqid = f.get("reqid").and_then(Value::as_u64)?;
        self.pending.remove(&reqid)
    }

    /// Reports a successful reply and updates what the session knows.
    fn on_ack(&mut self, p: Pending, f: &Map<String, Value>) -> Step {
        let mid = || {
            int(f, "mid")
                .map(|m| format!(" (mid {m})"))
                .unwrap_or_default()
        };
        match p {
            Pending::Ping => self.ping_outstanding = false,
            Pending::LoginOut => {
                self.out.line(format!("{} logged out", self.who(self.me)));
                return Step::LoggedOut;
            }
            Pending::Chat { key, .. } => {
                self.outbox.done(key);
                self.out.line(format!("message sent{}", mid()));
            }
            Pending::GroupChat { key, .. } => {
                self.outbox.done(key);
                self.out.line(format!("group message sent{}", mid()));
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
            Pending::History(u) => {
                let title = format!("history with {}", self.who(u));
                self.print_history(&title, f);
            }
            Pending::GroupHistory(g) => {
                let title = format!("history of {}", self.group_title(g));
                self.print_history(&title, f);
            }
        }
        Step::Continue
    }
}
