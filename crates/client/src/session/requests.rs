//! The user's commands as protocol requests: local commands run at once,
//! the others are sent and remembered as [`Pending`] until their reply.
//! Chat messages also go into the outbox first, so they are kept, and sent
//! once the client is back online, until their ACK.

use chat_protocol::{limits, ChatTarget, Request};

use super::{Session, Step};
use crate::commands::{self, Command};
use crate::net::Conn;

/// A request waiting for its reply, and what it was about.
#[derive(Debug, Clone)]
pub(super) enum Pending {
    /// A message to a user; `key` is its place in the outbox.
    Chat {
        to: i64,
        key: u64,
    },
    /// A message to a group; `key` is its place in the outbox.
    GroupChat {
        group: i64,
        key: u64,
    },
    AddFriend(i64),
    DelFriend(i64),
    CreateGroup {
        name: String,
        desc: String,
    },
    AddGroup(i64),
    QuitGroup(i64),
    Disband(i64),
    History(i64),
    GroupHistory(i64),
    /// FIND_USER for this name.
    Find(String),
    /// FIND_USER to find the id a command named a user by.
    Resolve {
        name: String,
        cmd: Box<Command>,
    },
    Ping,
    LoginOut,
}

impl Pending {
    /// What the request was, in words, for error messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Pending::Chat { to, .. } => format!("chat to {to}"),
            Pending::GroupChat { group, .. } => format!("groupchat to group {group}"),
            Pending::AddFriend(u) => format!("addfriend {u}"),
            Pending::DelFriend(u) => format!("delfriend {u}"),
            Pending::CreateGroup { name, .. } => format!("creategroup {name}"),
            Pending::AddGroup(g) => format!("addgroup {g}"),
            Pending::QuitGroup(g) => format!("quitgroup {g}"),
            Pending::Disband(g) => format!("disband {g}"),
            Pending::History(u) => format!("history with {u}"),
            Pending::Find(name) => format!("find {name}"),
            Pending::Resolve { name, .. } => format!("find {name}"),
            Pending::GroupHistory(g) => format!("history of group {g}"),
            Pending::Ping => "ping".into(),
            Pending::LoginOut => "loginout".into(),
        }
    }
}

impl Session {
    /// Runs one command: local ones at once, the others as a request whose
    /// reply is matched later by its reqid.
    pub(super) async fn exec(&mut self, cmd: Command, conn: Option<&mut Conn>) -> Step {
        let cmd = match cmd {
            Command::ByName { name, cmd } => match self.known_user(&name) {
                Ok(id) => cmd.with_user(id),
                Err(Some(why)) => {
                    self.out.line(why);
                    return Step::Continue;
                }
                // Not known here: ask the server, then run it.
                Err(None) => Command::ByName { name, cmd },
            },
            cmd => cmd,
        };
        let (req, pending) = match &cmd {
            Command::Help => {
                self.out.line(commands::help_text());
                return Step::Continue;
            }
            Command::Friends => {
                self.print_friends();
                return Step::Continue;
            }
            Command::Groups => {
                self.print_groups();
                return Step::Continue;
            }
            Command::Quit => return Step::Exit,
            Command::Chat { to, text } => {
                return self.chat(ChatTarget::User(*to), text, &cmd, conn).await
            }
            Command::GroupChat { group, text } => {
                return self.chat(ChatTarget::Group(*group), text, &cmd, conn).await
            }
            _ if conn.is_none() => {
                self.out
                    .line("not connected (reconnecting…): try again when back online");
                return Step::Continue;
            }
            Command::LoginOut => (Request::LoginOut, Pending::LoginOut),
            Command::More => {
                let Some((with, before)) = self.older else {
                    self.out
                        .line("nothing older to show: history:ID or ghistory:ID shows the latest");
                    return Step::Continue;
                };
                let Some(conn) = conn else {
                    return Step::Continue;
                };
                let mut obj = Request::History { with, limit: None }.to_object(None);
                obj.insert("before".into(), before.into());
                let pending = match with {
                    ChatTarget::User(u) => Pending::History(u),
                    ChatTarget::Group(g) => Pending::GroupHistory(g),
                };
                return match conn.request_object(obj).await {
                    Ok(reqid) => {
                        self.pending.insert(reqid, pending);
                        Step::Continue
                    }
                    Err(e) => Step::Lost(format!("{e:#}")),
                };
            }
            Command::Find(name) => (Request::FindUser { name }, Pending::Find(name.clone())),
            Command::ByName { name, cmd } => (
                Request::FindUser { name },
                Pending::Resolve {
                    name: name.clone(),
                    cmd: cmd.clone(),
                },
            ),
            Command::AddFriend(f) => (Request::AddFriend(*f), Pending::AddFriend(*f)),
            Command::DelFriend(f) => (Request::DelFriend(*f), Pending::DelFriend(*f)),
            Command::CreateGroup { name, desc } => (
                Request::CreateGroup { name, desc },
                Pending::CreateGroup {
                    name: name.clone(),
                    desc: desc.clone(),
                },
            ),
            Command::AddGroup(g) => (Request::AddGroup(*g), Pending::AddGroup(*g)),
            Command::QuitGroup(g) => (Request::QuitGroup(*g), Pending::QuitGroup(*g)),
            Command::Disband(g) => (Request::DisbandGroup(*g), Pending::Disband(*g)),
            Command::History { peer, limit } => (
                Request::History {
                    with: ChatTarget::User(*peer),
                    limit: *limit,
                },
                Pending::History(*peer),
            ),
            Command::GroupHistory { group, limit } => (
                Request::History {
                    with: ChatTarget::Group(*group),
                    limit: *limit,
                },
                Pending::GroupHistory(*group),
            ),
        };
        let Some(conn) = conn else {
            return Step::Continue;
        };
        if let Some(why) = too_long(&cmd, &req) {
            self.out.line(why);
            return Step::Continue;
        }
        let logout = matches!(pending, Pending::LoginOut);
        if logout {
            if let Step::Lost(why) = self.flush_delivered(conn).await {
                return Step::Lost(why);
            }
        }
        match conn.request(&req).await {
            Ok(reqid) => {
                self.pending.insert(reqid, pending);
                if logout {
                    Step::LoggingOut
                } else {
                    Step::Continue
                }
            }
            Err(e) => Step::Lost(format!("{e:#}")),
        }
    }
}

impl Session {
    /// The id of the user called exactly `name`, among the users this
    /// session knows; `Err(None)` when it knows none, `Err(Some(why))` when
    /// the name is ambiguous.
    fn known_user(&self, name: &str) -> Result<i64, Option<String>> {
        let mut ids: Vec<i64> = self
            .names
            .iter()
            .filter(|(_, n)| n.as_str() == name)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        match ids.as_slice() {
            [] => Err(None),
            [id] => Ok(*id),
            many => {
                let list: Vec<String> = many.iter().map(|&id| self.who(id)).collect();
                Err(Some(format!(
                    "\"{}\" could be {}: use the id",
                    crate::ui::clean(name),
                    list.join(" or ")
                )))
            }
        }
    }

    /// Puts a message in the outbox, and sends it when connected.
    async fn chat(
        &mut self,
        target: ChatTarget,
        text: &str,
        cmd: &Command,
        conn: Option<&mut Conn>,
    ) -> Step {
        let req = Request::Chat { target, msg: text };
        if let Some(why) = too_long(cmd, &req) {
            self.out.line(why);
            return Step::Continue;
        }
        let key = self.outbox.add(target, text.to_owned());
        // The user's own message shows at once, marked pending until the
        // server's ACK ("message sent to ...").
        let to = match target {
            ChatTarget::User(u) => self.who(u),
            ChatTarget::Group(g) => self.group_title(g),
        };
        let echo = format!("you → {to}: {}", crate::ui::clean(text));
        match conn {
            Some(c) => {
                self.out.line(format!("{echo} (sending…)"));
                self.send_chat(c, key).await
            }
            None => {
                self.out.line(format!(
                    "{echo} (not connected: kept, goes out when the client is back online)"
                ));
                Step::Continue
            }
        }
    }

    /// Sends outbox message `key` (again, after a reconnect: same cmid).
    pub(super) async fn send_chat(&mut self, conn: &mut Conn, key: u64) -> Step {
        let Some(obj) = self.outbox.request(key) else {
            return Step::Continue;
        };
        let pending = match self.outbox.target(key) {
            Some(ChatTarget::User(to)) => Pending::Chat { to, key },
            Some(ChatTarget::Group(group)) => Pending::GroupChat { group, key },
            None => return Step::Continue,
        };
        match conn.request_object(obj).await {
            Ok(reqid) => {
                self.pending.insert(reqid, pending);
                Step::Continue
            }
            Err(e) => Step::Lost(format!("{e:#}")),
        }
    }
}

/// Why `req` must not be sent because it breaks the protocol's size limits,
/// which the server answers with an error or, for a whole frame, by closing
/// the connection. Checked before sending, so the session stays up.
fn too_long(cmd: &Command, req: &Request<'_>) -> Option<String> {
    if let Command::Chat { text, .. } | Command::GroupChat { text, .. } = cmd {
        if text.len() > limits::MAX_MSG_BYTES {
            return Some(format!(
                "not sent: the message is {} bytes long, and the limit is {} KiB ({} bytes)",
                text.len(),
                limits::MAX_MSG_BYTES / 1024,
                limits::MAX_MSG_BYTES
            ));
        }
    }
    let frame = req.encode(None).len();
    (frame > limits::MAX_FRAME).then(|| {
        format!(
            "not sent: the request is {frame} bytes long, and the server takes at most {} KiB ({} bytes)",
            limits::MAX_FRAME / 1024,
            limits::MAX_FRAME
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_messages_and_frames_are_refused_with_the_limit() {
        let chat = |n: usize| Command::Chat {
            to: 2,
            text: "x".repeat(n),
        };
        let send = |c: &Command| match c {
            Command::Chat { to, text } => too_long(
                c,
                &Request::Chat {
                    target: ChatTarget::User(*to),
                    msg: text,
                },
            ),
            _ => unreachable!(),
        };
        assert_eq!(send(&chat(limits::MAX_MSG_BYTES)), None);
        let why = send(&chat(limits::MAX_MSG_BYTES + 1)).unwrap();
        assert!(why.contains("16 KiB (16384 bytes)"), "{why}");
        let desc = "d".repeat(limits::MAX_FRAME);
        let cg = Command::CreateGroup {
            name: "g".into(),
            desc: desc.clone(),
        };
        let why = too_long(
            &cg,
            &Request::CreateGroup {
                name: "g",
                desc: &desc,
            },
        )
        .unwrap();
        assert!(why.contains("64 KiB"), "{why}");
    }
}
