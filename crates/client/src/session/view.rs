//! The session in words: chat lines, the login summary, the friends and
//! groups lists, and HISTORY pages. Every string from the server goes
//! through `clean` before it reaches the terminal.

use chat_protocol::{msgid, ChatTarget};
use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use super::Session;
use crate::net::{int, objects, text};
use crate::ui::clean;

/// A chat frame's `time` (UTC, `YYYY-MM-DD HH:MM:SS`) in the time zone
/// `tz`, in the same format; as it came when it does not parse.
pub(super) fn local_time(utc: &str, tz: &TimeZone) -> String {
    const FORMAT: &str = "%Y-%m-%d %H:%M:%S";
    let Ok(dt) = jiff::civil::DateTime::strptime(FORMAT, utc) else {
        return utc.to_owned();
    };
    match TimeZone::UTC.to_timestamp(dt) {
        Ok(t) => t.to_zoned_datetime(tz.clone()).strftime(FORMAT).to_string(),
        Err(_) => utc.to_owned(),
    }
}

/// Formats a pushed (or history) chat frame for people, its time in the
/// terminal's time zone (`TZ`, else the system's):
/// `[time] alice(1): hi`, or `[group 3 "team"] [time] alice(1): hi` (the
/// group's name when known).
pub(super) fn format_chat(f: &Map<String, Value>, group_name: Option<&str>) -> String {
    let sender = int(f, "id").unwrap_or(0);
    let name = clean(text(f, "name"));
    let who = if name.is_empty() {
        format!("user {sender}")
    } else {
        format!("{name}({sender})")
    };
    let time = local_time(text(f, "time"), &TimeZone::system());
    let body = format!("[{}] {who}: {}", clean(&time), clean(text(f, "msg")));
    match (int(f, "msgid"), int(f, "groupid")) {
        (Some(msgid::GROUP_CHAT), Some(g)) => match group_name {
            Some(n) => format!("[group {g} \"{}\"] {body}", clean(n)),
            None => format!("[group {g}] {body}"),
        },
        _ => body,
    }
}

impl Session {
    /// `name(id)` when the name is known, else `user id`.
    pub(super) fn who(&self, id: i64) -> String {
        match self.names.get(&id) {
            Some(n) => format!("{}({id})", clean(n)),
            None => format!("user {id}"),
        }
    }

    fn state_word(&self, id: i64) -> &'static str {
        match self.online.get(&id) {
            Some(true) => "online",
            Some(false) => "offline",
            None => "state unknown",
        }
    }

    pub(super) fn group_title(&self, gid: i64) -> String {
        match self.groups.get(&gid).and_then(|g| g.name.as_deref()) {
            Some(n) => format!("group {gid} \"{}\"", clean(n)),
            None => format!("group {gid}"),
        }
    }

    /// One line about the friends, for the login summary.
    pub fn friends_summary(&self) -> String {
        if self.friends.is_empty() {
            return "friends: none yet (addfriend:ID adds one)".into();
        }
        let list: Vec<String> = self
            .friends
            .iter()
            .map(|&f| format!("{} {}", self.who(f), self.state_word(f)))
            .collect();
        format!("friends: {}", list.join(", "))
    }

    /// One line about the groups, for the login summary.
    pub fn groups_summary(&self) -> String {
        if self.groups.is_empty() {
            return "groups: none yet (creategroup:NAME:DESC or addgroup:ID)".into();
        }
        let list: Vec<String> = self
            .groups
            .iter()
            .map(|(&g, grp)| format!("{} ({} members)", self.group_title(g), grp.members.len()))
            .collect();
        format!("groups: {}", list.join(", "))
    }

    pub(super) fn print_friends(&self) {
        if self.friends.is_empty() {
            self.out
                .line("no friends yet; addfriend:ID makes user ID your friend");
            return;
        }
        let mut s = format!("friends ({}):", self.friends.len());
        for &f in &self.friends {
            s.push_str(&format!("\n  {} {}", self.who(f), self.state_word(f)));
        }
        self.out.line(s);
    }

    pub(super) fn print_groups(&self) {
        if self.groups.is_empty() {
            self.out
                .line("no groups yet; creategroup:NAME:DESC creates one, addgroup:ID joins one");
            return;
        }
        let mut s = format!("groups ({}):", self.groups.len());
        for (&gid, g) in &self.groups {
            s.push_str(&format!("\n  {}", self.group_title(gid)));
            if !g.desc.is_empty() {
                s.push_str(&format!(": {}", clean(&g.desc)));
            }
            if g.members.is_empty() {
                s.push_str("\n    (members are listed after the next login)");
            }
            for (id, role) in &g.members {
                s.push_str(&format!(
                    "\n    {} {} {}",
                    self.who(*id),
                    clean(role),
                    self.state_word(*id)
                ));
            }
        }
        self.out.line(s);
    }

    /// Prints a HISTORY page, oldest first, and remembers where the next
    /// (older) page starts, for `more`.
    pub(super) fn print_history(&mut self, title: &str, with: ChatTarget, f: &Map<String, Value>) {
        let msgs: Vec<&Map<String, Value>> = objects(f, "messages").collect();
        let mut s = format!(
            "--- {title}: {} message{} ---",
            msgs.len(),
            if msgs.len() == 1 { "" } else { "s" }
        );
        // The server sends newest first; people read oldest first.
        for m in msgs.iter().rev() {
            s.push('\n');
            s.push_str(&format_chat(m, None));
        }
        let oldest = msgs.iter().filter_map(|m| int(m, "mid")).min();
        let more = f.get("more").and_then(Value::as_bool).unwrap_or(false);
        self.older = match oldest {
            Some(mid) if more => Some((with, mid)),
            _ => None,
        };
        s.push_str(if self.older.is_some() {
            "\n--- end of history page: type more for older messages ---"
        } else {
            "\n--- end of history: nothing older ---"
        });
        self.out.line(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Delivery;
    use crate::ui::Printer;
    use serde_json::json;
    use std::time::Duration;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn chat_lines_are_easy_to_read() {
        let one = obj(json!({"msgid": 6, "id": 1, "name": "alice", "toid": 2,
            "msg": "hi: there", "time": "2026-11-23 10:00:00", "mid": 5, "seq": 1}));
        assert_eq!(
            format_chat(&one, None),
            "[2026-11-23 10:00:00] alice(1): hi: there"
        );
        let grp = obj(json!({"msgid": 10, "id": 1, "userid": 1, "name": "alice",
            "groupid": 3, "msg": "hi", "time": "2026-11-23 10:00:00"}));
        assert_eq!(
            format_chat(&grp, None),
            "[group 3] [2026-11-23 10:00:00] alice(1): hi"
        );
        assert_eq!(
            format_chat(&grp, Some("team")),
            "[group 3 \"team\"] [2026-11-23 10:00:00] alice(1): hi"
        );
        let evil = obj(json!({"msgid": 6, "id": 1, "name": "a", "msg": "\u{1b}[2J", "time": "t"}));
        assert_eq!(format_chat(&evil, None), "[t] a(1): \\u{1b}[2J");
    }

    #[test]
    fn times_are_shown_in_the_local_time_zone() {
        let shanghai = TimeZone::fixed(jiff::tz::offset(8));
        assert_eq!(
            local_time("2026-11-30 20:00:00", &shanghai),
            "2026-12-01 04:00:00"
        );
        assert_eq!(
            local_time("2026-11-30 20:00:00", &TimeZone::UTC),
            "2026-11-30 20:00:00"
        );
        assert_eq!(local_time("not a time", &shanghai), "not a time");
    }

    #[test]
    fn login_ack_fills_friends_and_groups() {
        let ack = obj(json!({
            "msgid": 2, "errno": 0, "id": 1, "name": "alice", "token": "t1",
            "friends": [{"id": 2, "name": "bob", "state": "online"}],
            "groups": [{"id": 3, "groupname": "team", "groupdesc": "d", "users": [
                {"id": 1, "name": "alice", "state": "online", "role": "creator"},
                {"id": 4, "name": "carol", "state": "offline", "role": "normal"}]}]
        }));
        let s = Session::from_ack(
            &ack,
            Delivery::new(0),
            None,
            Printer::plain_for_tests(),
            Duration::from_secs(30),
            "127.0.0.1:6000".into(),
        );
        assert_eq!(s.me(), 1);
        assert_eq!(s.token(), Some("t1"));
        assert_eq!(s.friends_summary(), "friends: bob(2) online");
        assert_eq!(s.groups_summary(), "groups: group 3 \"team\" (2 members)");
        assert_eq!(s.who(4), "carol(4)");
        assert_eq!(s.state_word(4), "offline");
        assert_eq!(s.who(9), "user 9");
    }
}
