//! The user's commands as protocol requests: local commands run at once,
//! the others are sent and remembered as [`Pending`] until their reply.

use chat_protocol::{limits, ChatTarget, Request};

use super::{Session, Step};
use crate::commands::{self, Command};
use crate::net::Conn;

/// A request waiting for its reply, and what it was about.
#[derive(Debug, Clone)]
pub(super) enum Pending {
    Chat(i64),
    GroupChat(i64),
    AddFriend(i64),
    DelFriend(i64),
    CreateGroup { name: String, desc: String },
    AddGroup(i64),
    QuitGroup(i64),
    Disband(i64),
    History(i64),
    GroupHistory(i64),
    Ping,
    LoginOut,
}

impl Pending {
    /// What the request was, in words, for error messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Pending::Chat(to) => format!("chat to {to}"),
            Pending::GroupChat(g) => format!("groupchat to group {g}"),
            Pending::AddFriend(u) => format!("addfriend {u}"),
            Pending::DelFriend(u) => format!("delfriend {u}"),
            Pending::CreateGroup { name, .. } => format!("creategroup {name}"),
            Pending::AddGroup(g) => format!("addgroup {g}"),
            Pending::QuitGroup(g) => format!("quitgroup {g}"),
            Pending::Disband(g) => format!("disband {g}"),
            Pending::History(u) => format!("history with {u}"),
            Pending::GroupHistory(g) => format!("history of group {g}"),
            Pending::Ping => "ping".into(),
            Pending::LoginOut => "loginout".into(),
        }
    }
}

impl Session {
    /// Runs one command: local ones at once, the others as a request whose
    /// reply is matched later by its reqid.
    pub(super) async fn exec(&mut self, cmd: Command, conn: &mut Conn) -> Step {
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
            Command::LoginOut => {
                if let Step::Lost(why) = self.flush_delivered(conn).await {
                    return Step::Lost(why);
                }
                (Request::LoginOut, Pending::LoginOut)
            }
            Command::Chat { to, text } => (
                Request::Chat {
                    target: ChatTarget::User(*to),
                    msg: text,
                },
                Pending::Chat(*to),
            ),
            Command::GroupChat { group, text } => (
                Request::Chat {
                    target: ChatTarget::Group(*group),
                    msg: text,
                },
                Pending::GroupChat(*group),
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
        if let Some(why) = too_long(&cmd, &req) {
            self.out.line(why);
            return Step::Continue;
        }
        let logout = matches!(pending, Pending::LoginOut);
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
