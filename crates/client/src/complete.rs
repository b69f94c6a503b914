//! Tab completion at the terminal: command names first, then, after a
//! command that takes a user, the names of the users the session knows
//! (friends, group members, people met), and after a group command, the
//! ids of the user's groups (shown with their names).

use std::sync::{Arc, Mutex};

use rustyline::completion::Pair;

use crate::commands::HELP;

/// What Tab completes after a command: kept current by the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Words {
    /// User names, sorted, without duplicates.
    pub users: Vec<String>,
    /// Group ids with their names, by id.
    pub groups: Vec<(i64, String)>,
}

/// The words, shared between the session and the line editor's thread.
pub type SharedWords = Arc<Mutex<Words>>;

/// The commands that take a user first.
const USER_COMMANDS: &[&str] = &["chat", "addfriend", "delfriend", "history"];
/// The commands that take a group id first.
const GROUP_COMMANDS: &[&str] = &["groupchat", "addgroup", "quitgroup", "disband", "ghistory"];
/// The commands whose first argument is followed by more (a text or a count).
const MORE_AFTER: &[&str] = &["chat", "groupchat"];

/// The completions of the text before the cursor, `head`: where the
/// replaced part starts, and the candidates.
pub fn complete(head: &str, words: &Words) -> (usize, Vec<Pair>) {
    let Some(colon) = head.find(':') else {
        let typed = head.trim_start();
        let start = head.len() - typed.len();
        let found = HELP
            .iter()
            .map(|(syntax, _)| match syntax.find(':') {
                Some(i) => &syntax[..=i],
                None => syntax,
            })
            .filter(|c| c.starts_with(&typed.to_ascii_lowercase()))
            .map(|c| Pair {
                display: c.to_owned(),
                replacement: c.to_owned(),
            })
            .collect();
        return (start, found);
    };
    let cmd = head[..colon].trim().to_ascii_lowercase();
    let arg = &head[colon + 1..];
    if arg.contains(':') {
        return (0, Vec::new());
    }
    let after = if MORE_AFTER.contains(&cmd.as_str()) {
        ":"
    } else {
        ""
    };
    let found = if USER_COMMANDS.contains(&cmd.as_str()) {
        words
            .users
            .iter()
            .filter(|n| n.starts_with(arg) && !n.contains(':'))
            .map(|n| Pair {
                display: n.clone(),
                replacement: format!("{n}{after}"),
            })
            .collect()
    } else if GROUP_COMMANDS.contains(&cmd.as_str()) {
        words
            .groups
            .iter()
            .filter(|(id, name)| id.to_string().starts_with(arg) || name.starts_with(arg))
            .map(|(id, name)| Pair {
                display: format!("{id} {name}"),
                replacement: format!("{id}{after}"),
            })
            .collect()
    } else {
        Vec::new()
    };
    (colon + 1, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words() -> Words {
        Words {
            users: vec!["bob".into(), "bobby".into(), "李雷".into()],
            groups: vec![(3, "team".into()), (12, "ops".into())],
        }
    }

    fn replacements(head: &str) -> (usize, Vec<String>) {
        let (start, found) = complete(head, &words());
        (start, found.into_iter().map(|p| p.replacement).collect())
    }

    #[test]
    fn command_names_then_users_then_groups() {
        assert_eq!(replacements("fri"), (0, vec!["friends".into()]));
        assert_eq!(
            replacements("  add"),
            (2, vec!["addfriend:".into(), "addgroup:".into()])
        );
        assert_eq!(
            replacements("chat:bo"),
            (5, vec!["bob:".into(), "bobby:".into()])
        );
        assert_eq!(replacements("addfriend:李"), (10, vec!["李雷".into()]));
        assert_eq!(replacements("groupchat:te"), (10, vec!["3:".into()]));
        assert_eq!(replacements("disband:1"), (8, vec!["12".into()]));
        // Inside a message text, nothing.
        assert_eq!(replacements("chat:bob:hel").1, Vec::<String>::new());
        assert_eq!(replacements("friends:x").1, Vec::<String>::new());
    }
}
