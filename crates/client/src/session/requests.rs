//! The user's commands as protocol requests: local commands run at once,
//! the others are sent and remembered as [`Pending`] until their reply.

use chat_protocol::{ChatTarget, Request};

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
