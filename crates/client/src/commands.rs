//! What the user types once logged in, parsed into [`Command`]s.
//!
//! The syntax is the classic ChatClient's: `name:arg:rest`. Lines are split
//! on the first two colons only, so message texts and group descriptions may
//! themselves contain ':'. Where a user id is expected (`chat`, `addfriend`,
//! `delfriend`, `history`) a user name may stand instead: the command comes
//! as [`Command::ByName`], and the session finds the id.

use std::fmt;

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// List the commands.
    Help,
    /// One-to-one message.
    Chat {
        /// Recipient's user id.
        to: i64,
        /// Message text, as typed.
        text: String,
    },
    /// Befriend a user.
    AddFriend(i64),
    /// Remove a friend.
    DelFriend(i64),
    /// Create a group.
    CreateGroup {
        /// Group name.
        name: String,
        /// Description, possibly empty.
        desc: String,
    },
    /// Join a group.
    AddGroup(i64),
    /// Leave a group.
    QuitGroup(i64),
    /// Delete a group (creator only).
    Disband(i64),
    /// Group message.
    GroupChat {
        /// Group id.
        group: i64,
        /// Message text, as typed.
        text: String,
    },
    /// Page of the conversation with a user.
    History {
        /// The other user.
        peer: i64,
        /// How many messages (server default when absent).
        limit: Option<i64>,
    },
    /// Page of a group's conversation.
    GroupHistory {
        /// The group.
        group: i64,
        /// How many messages (server default when absent).
        limit: Option<i64>,
    },
    /// The page of history before the last one shown.
    More,
    /// Look a user up by exact name.
    Find(String),
    /// A user command given a name where the id goes: `cmd`'s user id is 0
    /// until [`Command::with_user`] fills it in.
    ByName {
        /// The user's name, as typed (exact).
        name: String,
        /// The command, waiting for the id.
        cmd: Box<Command>,
    },
    /// Show the friend list.
    Friends,
    /// Show the group list.
    Groups,
    /// Log out and go back to the menu.
    LoginOut,
    /// Exit the program.
    Quit,
}

impl Command {
    /// The command with its user id set to `id` (for the commands that
    /// take one; others are returned as they are).
    pub fn with_user(self, id: i64) -> Command {
        match self {
            Command::Chat { text, .. } => Command::Chat { to: id, text },
            Command::AddFriend(_) => Command::AddFriend(id),
            Command::DelFriend(_) => Command::DelFriend(id),
            Command::History { limit, .. } => Command::History { peer: id, limit },
            Command::ByName { cmd, .. } => cmd.with_user(id),
            other => other,
        }
    }
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// No command by that name.
    Unknown(String),
    /// A known command with bad arguments.
    Usage {
        /// What is wrong.
        problem: String,
        /// The command's syntax.
        usage: &'static str,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Unknown(name) => match did_you_mean(name) {
                Some(near) => write!(
                    f,
                    "unknown command \"{name}\"; did you mean {near}? type help to see the commands"
                ),
                None => write!(
                    f,
                    "unknown command \"{name}\"; type help to see the commands"
                ),
            },
            ParseError::Usage { problem, usage } => write!(f, "{problem}; usage: {usage}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Every command name, for "did you mean".
const NAMES: &[&str] = &[
    "help",
    "chat",
    "addfriend",
    "delfriend",
    "creategroup",
    "addgroup",
    "groupchat",
    "quitgroup",
    "disband",
    "history",
    "ghistory",
    "find",
    "more",
    "friends",
    "groups",
    "loginout",
    "quit",
];

/// The command a mistyped name most likely meant: the nearest by edit
/// distance, when it is at most 2 edits away (1 for short names).
fn did_you_mean(typed: &str) -> Option<&'static str> {
    let typed = typed.to_lowercase();
    let most = if typed.chars().count() <= 4 { 1 } else { 2 };
    NAMES
        .iter()
        .map(|&n| (edit_distance(&typed, n), n))
        .filter(|&(d, _)| d > 0 && d <= most)
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n)
}

/// Levenshtein distance between two strings, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Every command with its syntax and a one-line explanation, for `help`.
pub const HELP: &[(&str, &str)] = &[
    ("help", "show this list"),
    ("chat:ID:TEXT", "send TEXT to user ID (or NAME)"),
    ("addfriend:ID", "make user ID (or NAME) your friend"),
    ("delfriend:ID", "remove user ID (or NAME) from your friends"),
    (
        "creategroup:NAME:DESC",
        "create a group (DESC may be left out; a NAME with ':' goes in \"quotes\")",
    ),
    ("addgroup:ID", "join group ID"),
    ("groupchat:ID:TEXT", "send TEXT to group ID"),
    ("quitgroup:ID", "leave group ID"),
    ("disband:ID", "delete group ID (its creator only)"),
    (
        "history:ID[:N]",
        "your last N messages with user ID (default 50)",
    ),
    ("ghistory:ID[:N]", "the last N messages of group ID"),
    ("more", "older messages of the last history shown"),
    ("find:NAME", "look up user NAME (exact name): id and state"),
    ("friends", "list your friends"),
    ("groups", "list your groups"),
    ("loginout", "log out and return to the menu"),
    ("quit", "exit (Ctrl-D does too)"),
];

/// The help text, one command per line.
pub fn help_text() -> String {
    let width = HELP.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    let mut s = String::from("commands:");
    for (cmd, what) in HELP {
        s.push_str(&format!("\n  {cmd:<width$}  {what}"));
    }
    s
}

fn usage_of(name: &str) -> &'static str {
    let key = match name {
        "chat" => "chat:",
        "addfriend" => "addfriend:",
        "delfriend" => "delfriend:",
        "creategroup" => "creategroup:",
        "addgroup" => "addgroup:",
        "groupchat" => "groupchat:",
        "quitgroup" => "quitgroup:",
        "disband" => "disband:",
        "history" => "history:",
        "ghistory" => "ghistory:",
        "find" => "find:",
        _ => name,
    };
    HELP.iter()
        .find(|(c, _)| c.starts_with(key))
        .map(|(c, _)| *c)
        .unwrap_or("help")
}

/// Parses a positive id.
pub fn parse_id(s: &str) -> Option<i64> {
    s.trim().parse::<i64>().ok().filter(|&n| n > 0)
}

/// `cmd` as it is, or waiting for the id of user `name`.
fn by_name(name: Option<String>, cmd: Command) -> Command {
    match name {
        Some(name) => Command::ByName {
            name,
            cmd: Box::new(cmd),
        },
        None => cmd,
    }
}

/// Parses one line. `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let mut parts = line.splitn(3, ':');
    let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let arg = parts.next();
    let rest = parts.next();
    let usage = usage_of(&name);
    let bad = |problem: String| ParseError::Usage { problem, usage };
    let id = |what: &str| -> Result<i64, ParseError> {
        match arg {
            None => Err(bad(format!("{name} needs {what}"))),
            Some(a) if a.trim().is_empty() => Err(bad(format!("{name} needs {what}"))),
            Some(a) => parse_id(a).ok_or_else(|| {
                bad(format!(
                    "{what} must be a positive number, not \"{}\"",
                    a.trim()
                ))
            }),
        }
    };
    let no_args = |cmd: Command| -> Result<Option<Command>, ParseError> {
        if arg.is_some() {
            Err(bad(format!("{name} takes no arguments")))
        } else {
            Ok(Some(cmd))
        }
    };
    let text = || -> Result<String, ParseError> {
        match rest {
            Some(t) if !t.trim().is_empty() => Ok(t.to_owned()),
            _ => Err(bad("the message text is empty".into())),
        }
    };
    // A user id, or else a name: 0 and the name, for Command::ByName.
    let user = || -> Result<(i64, Option<String>), ParseError> {
        let a = arg.map(str::trim).unwrap_or("");
        if a.is_empty() || a.parse::<i64>().is_ok() {
            return id("a user ID").map(|v| (v, None));
        }
        Ok((0, Some(a.to_owned())))
    };
    let only_user = || -> Result<(i64, Option<String>), ParseError> {
        let v = user()?;
        if rest.is_some() {
            return Err(bad(format!("{name} takes only a user ID or name")));
        }
        Ok(v)
    };
    let only_id = |what: &str| -> Result<i64, ParseError> {
        let v = id(what)?;
        if rest.is_some() {
            return Err(bad(format!("{name} takes only {what}")));
        }
        Ok(v)
    };
    let limit = || -> Result<Option<i64>, ParseError> {
        match rest {
            None => Ok(None),
            Some(n) => parse_id(n).map(Some).ok_or_else(|| {
                bad(format!(
                    "the count must be a positive number, not \"{}\"",
                    n.trim()
                ))
            }),
        }
    };
    let cmd = match name.as_str() {
        "help" | "?" => return no_args(Command::Help),
        "friends" => return no_args(Command::Friends),
        "more" => return no_args(Command::More),
        "groups" => return no_args(Command::Groups),
        "loginout" | "logout" => return no_args(Command::LoginOut),
        "quit" | "exit" => return no_args(Command::Quit),
        "chat" => {
            let (to, who) = user()?;
            by_name(who, Command::Chat { to, text: text()? })
        }
        "groupchat" => Command::GroupChat {
            group: id("a group ID")?,
            text: text()?,
        },
        "addfriend" => {
            let (id, who) = only_user()?;
            by_name(who, Command::AddFriend(id))
        }
        "delfriend" => {
            let (id, who) = only_user()?;
            by_name(who, Command::DelFriend(id))
        }
        "addgroup" => Command::AddGroup(only_id("a group ID")?),
        "quitgroup" => Command::QuitGroup(only_id("a group ID")?),
        "disband" => Command::Disband(only_id("a group ID")?),
        "history" => {
            let (peer, who) = user()?;
            let limit = limit()?;
            by_name(who, Command::History { peer, limit })
        }
        "ghistory" => Command::GroupHistory {
            group: id("a group ID")?,
            limit: limit()?,
        },
        "find" => {
            let who = arg.map(str::trim).unwrap_or("");
            if who.is_empty() {
                return Err(bad("find needs a user name".into()));
            }
            // A name may hold ':'; take the rest of the line as is.
            let who = match rest {
                Some(r) => format!("{who}:{r}"),
                None => who.to_owned(),
            };
            Command::Find(who)
        }
        "creategroup" => {
            // A name that holds ':' goes in double quotes.
            let after = line.split_once(':').map(|(_, a)| a.trim_start());
            if let Some(quoted) = after.and_then(|a| a.strip_prefix('"')) {
                let Some((gname, tail)) = quoted.split_once('"') else {
                    return Err(bad("the group name's closing quote is missing".into()));
                };
                let tail = tail.trim_start();
                let desc = match tail.strip_prefix(':') {
                    Some(d) => d.trim(),
                    None if tail.is_empty() => "",
                    None => {
                        return Err(bad(
                            "put ':' between the quoted group name and the description".into(),
                        ))
                    }
                };
                if gname.trim().is_empty() {
                    return Err(bad("creategroup needs a group name".into()));
                }
                return Ok(Some(Command::CreateGroup {
                    name: gname.trim().to_owned(),
                    desc: desc.to_owned(),
                }));
            }
            let gname = arg.map(str::trim).unwrap_or("");
            if gname.is_empty() {
                return Err(bad("creategroup needs a group name".into()));
            }
            Command::CreateGroup {
                name: gname.to_owned(),
                desc: rest.map(str::trim).unwrap_or("").to_owned(),
            }
        }
        _ => {
            let shown = line.split(':').next().unwrap_or(line).trim();
            return Err(ParseError::Unknown(shown.to_owned()));
        }
    };
    Ok(Some(cmd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line)
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
            .expect("a command")
    }

    fn err(line: &str) -> String {
        parse(line).expect_err(line).to_string()
    }

    #[test]
    fn classic_commands() {
        assert_eq!(ok("help"), Command::Help);
        assert_eq!(
            ok("chat:2:hello"),
            Command::Chat {
                to: 2,
                text: "hello".into()
            }
        );
        assert_eq!(ok("addfriend:7"), Command::AddFriend(7));
        assert_eq!(
            ok("creategroup:team:our team"),
            Command::CreateGroup {
                name: "team".into(),
                desc: "our team".into()
            }
        );
        assert_eq!(ok("addgroup:3"), Command::AddGroup(3));
        assert_eq!(
            ok("groupchat:3:hi all"),
            Command::GroupChat {
                group: 3,
                text: "hi all".into()
            }
        );
        assert_eq!(ok("loginout"), Command::LoginOut);
    }

    #[test]
    fn new_commands() {
        assert_eq!(ok("delfriend:7"), Command::DelFriend(7));
        assert_eq!(ok("quitgroup:3"), Command::QuitGroup(3));
        assert_eq!(ok("disband:3"), Command::Disband(3));
        assert_eq!(
            ok("history:2"),
            Command::History {
                peer: 2,
                limit: None
            }
        );
        assert_eq!(
            ok("history:2:10"),
            Command::History {
                peer: 2,
                limit: Some(10)
            }
        );
        assert_eq!(
            ok("ghistory:3"),
            Command::GroupHistory {
                group: 3,
                limit: None
            }
        );
        assert_eq!(ok("friends"), Command::Friends);
        assert_eq!(ok("find:bob"), Command::Find("bob".into()));
        assert_eq!(ok("find: 李雷 "), Command::Find("李雷".into()));
        assert!(err("find:").contains("needs a user name"));
        assert_eq!(ok("groups"), Command::Groups);
        assert_eq!(ok("quit"), Command::Quit);
        assert_eq!(ok("exit"), Command::Quit);
    }

    #[test]
    fn text_keeps_its_colons_and_spaces() {
        assert_eq!(
            ok("chat:2:time is 10:30: ok"),
            Command::Chat {
                to: 2,
                text: "time is 10:30: ok".into()
            }
        );
        assert_eq!(
            ok("groupchat: 3 :  a:b "),
            Command::GroupChat {
                group: 3,
                text: "  a:b ".into()
            }
        );
        assert_eq!(
            ok("creategroup:ops:on call: 24/7"),
            Command::CreateGroup {
                name: "ops".into(),
                desc: "on call: 24/7".into()
            }
        );
    }

    #[test]
    fn a_quoted_group_name_may_hold_colons() {
        assert_eq!(
            ok("creategroup:\"10:30 club\":we meet: daily"),
            Command::CreateGroup {
                name: "10:30 club".into(),
                desc: "we meet: daily".into()
            }
        );
        assert_eq!(
            ok("creategroup: \"a:b\""),
            Command::CreateGroup {
                name: "a:b".into(),
                desc: String::new()
            }
        );
        assert!(err("creategroup:\"a:b").contains("closing quote"));
        assert!(err("creategroup:\"a\"b").contains("put ':'"));
        assert!(err("creategroup:\"\":x").contains("needs a group name"));
    }

    #[test]
    fn names_are_trimmed_and_case_insensitive() {
        assert_eq!(ok("  HELP  "), Command::Help);
        assert_eq!(
            ok("Chat:2:x\r\n"),
            Command::Chat {
                to: 2,
                text: "x".into()
            }
        );
        assert_eq!(
            ok("creategroup:team"),
            Command::CreateGroup {
                name: "team".into(),
                desc: String::new()
            }
        );
    }

    #[test]
    fn a_name_may_stand_for_a_user_id() {
        let c = ok("chat:bob:hi: there");
        assert_eq!(
            c,
            Command::ByName {
                name: "bob".into(),
                cmd: Box::new(Command::Chat {
                    to: 0,
                    text: "hi: there".into()
                })
            }
        );
        assert_eq!(
            c.with_user(2),
            Command::Chat {
                to: 2,
                text: "hi: there".into()
            }
        );
        assert_eq!(ok("addfriend: 李雷 ").with_user(7), Command::AddFriend(7));
        assert_eq!(ok("delfriend:bob").with_user(7), Command::DelFriend(7));
        assert_eq!(
            ok("history:bob:5").with_user(2),
            Command::History {
                peer: 2,
                limit: Some(5)
            }
        );
        assert!(err("addfriend:bob:x").contains("takes only"));
        assert!(err("addfriend:0").contains("positive number"));
        // Groups still take ids only.
        assert!(err("groupchat:team:hi").contains("positive number"));
    }

    #[test]
    fn blank_lines_are_nothing() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   \r\n"), Ok(None));
    }

    #[test]
    fn unknown_commands_point_to_help() {
        let e = err("hello");
        assert!(e.contains("unknown command \"hello\""), "{e}");
        assert!(e.contains("help"), "{e}");
        assert!(err("sendmsg:2:x").contains("\"sendmsg\""));
        assert!(!err("dance").contains("did you mean"));
    }

    #[test]
    fn near_misses_get_a_suggestion() {
        assert!(
            err("chatt:2:hi").contains("did you mean chat?"),
            "{}",
            err("chatt:2:hi")
        );
        assert!(err("frends").contains("did you mean friends?"));
        assert!(err("addfreind:2").contains("did you mean addfriend?"));
        assert!(err("logout:x").contains("takes no arguments"));
        assert!(err("histroy:2").contains("did you mean history?"));
        assert!(!err("xyz").contains("did you mean"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn bad_arguments_show_usage() {
        let e = err("chat:-2:hi");
        assert!(e.contains("positive number"), "{e}");
        assert!(e.contains("usage: chat:ID:TEXT"), "{e}");
        assert!(err("chat:2").contains("text is empty"));
        assert!(err("chat:2:   ").contains("text is empty"));
        assert!(err("chat").contains("needs a user ID"));
        assert!(err("addfriend:").contains("needs a user ID"));
        assert!(err("addfriend:0").contains("positive number"));
        assert!(err("addfriend:-4").contains("positive number"));
        assert!(err("addfriend:2:x").contains("takes only"));
        assert!(err("groupchat:x:hi").contains("usage: groupchat:ID:TEXT"));
        assert!(err("creategroup:").contains("needs a group name"));
        assert!(err("history:2:lots").contains("count"));
        assert!(err("friends:1").contains("takes no arguments"));
    }

    #[test]
    fn help_lists_every_command() {
        let h = help_text();
        for word in [
            "chat:ID:TEXT",
            "addfriend:ID",
            "creategroup:NAME:DESC",
            "addgroup:ID",
            "groupchat:ID:TEXT",
            "loginout",
            "delfriend:ID",
            "quitgroup:ID",
            "disband:ID",
            "history:ID",
            "ghistory:ID",
            "friends",
            "groups",
            "quit",
        ] {
            assert!(h.contains(word), "help lacks {word}");
        }
    }
}
