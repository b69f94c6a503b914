//! A logged-in level-2 session: runs the user's commands, matches each reply
//! to its request by `reqid` and says what happened, prints pushed messages,
//! PRESENCE and KICKED as they arrive, confirms delivery with DELIVERED, and
//! sends a PING every heartbeat period so idle sessions stay alive through
//! proxies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chat_protocol::msgid;
use serde_json::{json, Map, Value};
use tokio::time::{Instant, MissedTickBehavior};

use crate::commands::{self, Command};
use crate::delivery::Delivery;
use crate::net::{int, text, Conn, Event};
use crate::state::{StateStore, UserState};
use crate::ui::{clean, Input, Printer, Ui};

/// How long DELIVERED waits to cover a burst of messages with one frame.
const CONFIRM_DELAY: Duration = Duration::from_millis(50);
/// How long outstanding replies are awaited at loginout and exit.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// What comes after a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Back to the login menu.
    Menu,
    /// Exit the program.
    Exit,
}

/// How a session ended, and what it hands back.
pub struct Outcome {
    /// Menu or exit.
    pub next: Next,
    /// The connection, when it is still usable (after LOGINOUT).
    pub conn: Option<Conn>,
    /// The user whose session it was.
    pub user: i64,
    /// Delivery state, kept to drop re-pushed messages at the next login.
    pub delivery: Delivery,
}

/// A group as the client knows it.
#[derive(Debug, Clone, Default)]
struct Group {
    name: Option<String>,
    desc: String,
    /// (user id, role)
    members: Vec<(i64, String)>,
}

/// A request waiting for its reply, and what it was about.
#[derive(Debug, Clone)]
enum Pending {
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
    fn describe(&self) -> String {
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

/// Where the session is in its life.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading commands.
    Active,
    /// LOGINOUT sent; waiting for its ACK until the deadline.
    LoggingOut(Instant),
    /// The user quit; waiting for outstanding replies until the deadline.
    Exiting(Instant),
}

/// What the loop does after one event.
enum Step {
    Continue,
    LoggingOut,
    LoggedOut,
    Exit,
    Lost(String),
    Kicked(String),
}

/// The state of one logged-in user.
pub struct Session {
    me: i64,
    name: String,
    friends: BTreeSet<i64>,
    groups: BTreeMap<i64, Group>,
    names: HashMap<i64, String>,
    online: HashMap<i64, bool>,
    pending: HashMap<u64, Pending>,
    delivery: Delivery,
    token: Option<String>,
    store: Option<StateStore>,
    out: Printer,
    heartbeat: Duration,
    ping_outstanding: bool,
    warned_store: bool,
}

/// Formats a pushed (or history) chat frame for people:
/// `[time] alice(1): hi`, or `[group 3] [time] alice(1): hi`.
pub fn format_chat(f: &Map<String, Value>) -> String {
    let sender = int(f, "id").unwrap_or(0);
    let name = clean(text(f, "name"));
    let who = if name.is_empty() {
        format!("user {sender}")
    } else {
        format!("{name}({sender})")
    };
    let body = format!(
        "[{}] {who}: {}",
        clean(text(f, "time")),
        clean(text(f, "msg"))
    );
    match (int(f, "msgid"), int(f, "groupid")) {
        (Some(msgid::GROUP_CHAT), Some(g)) => format!("[group {g}] {body}"),
        _ => body,
    }
}

impl Session {
    /// Builds the session from a successful level-2 LOGIN_ACK.
    pub fn from_ack(
        ack: &Map<String, Value>,
        delivery: Delivery,
        store: Option<StateStore>,
        out: Printer,
        heartbeat: Duration,
    ) -> Session {
        let me = int(ack, "id").unwrap_or(0);
        let name = text(ack, "name").to_owned();
        let mut s = Session {
            me,
            name: name.clone(),
            friends: BTreeSet::new(),
            groups: BTreeMap::new(),
            names: HashMap::from([(me, name)]),
            online: HashMap::from([(me, true)]),
            pending: HashMap::new(),
            delivery,
            token: ack.get("token").and_then(Value::as_str).map(str::to_owned),
            store,
            out,
            heartbeat,
            ping_outstanding: false,
            warned_store: false,
        };
        for f in ack
            .get("friends")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
        {
            if let Some(id) = int(f, "id") {
                s.friends.insert(id);
                s.learn(id, f);
            }
        }
        for g in ack
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
        {
            let Some(gid) = int(g, "id") else { continue };
            let mut group = Group {
                name: Some(text(g, "groupname").to_owned()),
                desc: text(g, "groupdesc").to_owned(),
                members: Vec::new(),
            };
            for m in g
                .get("users")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
            {
                if let Some(id) = int(m, "id") {
                    group.members.push((id, text(m, "role").to_owned()));
                    s.learn(id, m);
                }
            }
            s.groups.insert(gid, group);
        }
        s
    }

    /// Notes a user's name and state from a friend or member object.
    fn learn(&mut self, id: i64, o: &Map<String, Value>) {
        let name = text(o, "name");
        if !name.is_empty() {
            self.names.insert(id, name.to_owned());
        }
        match text(o, "state") {
            "online" => {
                self.online.insert(id, true);
            }
            "offline" => {
                self.online.insert(id, false);
            }
            _ => {}
        }
    }

    /// The user id.
    pub fn me(&self) -> i64 {
        self.me
    }

    /// The token from the login ack, to save for the next login.
    #[cfg(test)]
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `name(id)` when the name is known, else `user id`.
    fn who(&self, id: i64) -> String {
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

    fn group_title(&self, gid: i64) -> String {
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

    fn print_friends(&self) {
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

    fn print_groups(&self) {
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

    fn save_state(&mut self) {
        let Some(store) = &self.store else { return };
        let st = UserState {
            last_seq: self.delivery.confirmed_seq(),
            token: self.token.clone(),
        };
        if let Err(e) = store.save(self.me, &st) {
            if !std::mem::replace(&mut self.warned_store, true) {
                self.out.line(format!(
                    "warning: cannot save state in {}: {e}",
                    store.dir().display()
                ));
            }
        }
    }

    /// Sends DELIVERED for what is newly held, and saves `last_seq`.
    async fn flush_delivered(&mut self, conn: &mut Conn) -> Step {
        if let Some(seq) = self.delivery.to_confirm() {
            if let Err(e) = conn
                .send(&json!({"msgid": msgid::DELIVERED, "seq": seq}))
                .await
            {
                return Step::Lost(format!("{e:#}"));
            }
            self.delivery.confirmed(seq);
            self.save_state();
        }
        Step::Continue
    }

    /// Runs the session until logout, exit, KICKED or a lost connection.
    pub async fn run(mut self, mut conn: Conn, ui: &mut Ui) -> Outcome {
        self.save_state();
        let prompt = format!("{}> ", self.name);
        let period = self.heartbeat.max(Duration::from_secs(1));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut confirm_at: Option<Instant> = None;
        let mut phase = Phase::Active;
        loop {
            let confirm_due = async {
                match confirm_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let phase_due = async {
                match phase {
                    Phase::Active => std::future::pending().await,
                    Phase::LoggingOut(t) | Phase::Exiting(t) => tokio::time::sleep_until(t).await,
                }
            };
            let step = tokio::select! {
                input = ui.read(&prompt, true), if matches!(phase, Phase::Active) => {
                    self.on_input(input, &mut conn).await
                }
                ev = conn.recv() => match ev {
                    Event::Frame(f) => self.on_frame(&f),
                    Event::Closed(why) => Step::Lost(why.unwrap_or_else(|| "the server closed the connection".into())),
                },
                _ = heartbeat.tick() => self.on_heartbeat(&mut conn).await,
                _ = confirm_due => {
                    confirm_at = None;
                    self.flush_delivered(&mut conn).await
                }
                _ = phase_due => match phase {
                    Phase::Exiting(_) => {
                        self.out.line("some replies did not arrive before exit");
                        return self.exit(conn).await;
                    }
                    _ => Step::Lost("no reply to loginout".into()),
                },
            };
            let exiting = matches!(phase, Phase::Exiting(_));
            match step {
                Step::Continue => {}
                Step::LoggingOut => phase = Phase::LoggingOut(Instant::now() + REPLY_WAIT),
                Step::LoggedOut => {
                    // LOGINOUT revoked every token of this user.
                    self.token = None;
                    self.save_state();
                    return self.end(Next::Menu, Some(conn));
                }
                Step::Exit => {
                    // Let the replies to what was just sent arrive first, so
                    // a script that ends with `quit` still sees them.
                    phase = Phase::Exiting(Instant::now() + REPLY_WAIT);
                }
                Step::Lost(why) => {
                    self.out
                        .line(format!("connection to the server lost: {why}"));
                    self.save_state();
                    if exiting {
                        return self.end(Next::Exit, None);
                    }
                    self.out.line(
                        "back to the menu: log in again to reconnect (Enter on the password uses the saved session)",
                    );
                    return self.end(Next::Menu, None);
                }
                Step::Kicked(why) => {
                    self.out.line(format!("kicked by the server: {why}"));
                    self.save_state();
                    if exiting {
                        return self.end(Next::Exit, None);
                    }
                    self.out.line("back to the menu");
                    return self.end(Next::Menu, None);
                }
            }
            if matches!(phase, Phase::Exiting(_)) && !self.awaiting_replies() {
                return self.exit(conn).await;
            }
            if confirm_at.is_none() && self.delivery.to_confirm().is_some() {
                confirm_at = Some(Instant::now() + CONFIRM_DELAY);
            }
        }
    }

    /// True while a request other than PING waits for its reply.
    fn awaiting_replies(&self) -> bool {
        self.pending.values().any(|p| !matches!(p, Pending::Ping))
    }

    /// Confirms what arrived, saves the state and ends for good. The
    /// session is not logged out, so the saved token stays valid.
    async fn exit(mut self, mut conn: Conn) -> Outcome {
        if let Step::Lost(why) = self.flush_delivered(&mut conn).await {
            self.out.line(format!("could not confirm delivery: {why}"));
        }
        self.save_state();
        self.end(Next::Exit, Some(conn))
    }

    fn end(self, next: Next, conn: Option<Conn>) -> Outcome {
        Outcome {
            next,
            conn,
            user: self.me,
            delivery: self.delivery,
        }
    }

    async fn on_heartbeat(&mut self, conn: &mut Conn) -> Step {
        if self.ping_outstanding {
            return Step::Lost(format!(
                "no reply to PING within {} s",
                self.heartbeat.as_secs()
            ));
        }
        match conn.request(msgid::PING, vec![]).await {
            Ok(r) => {
                self.pending.insert(r, Pending::Ping);
                self.ping_outstanding = true;
                Step::Continue
            }
            Err(e) => Step::Lost(format!("{e:#}")),
        }
    }

    async fn on_input(&mut self, input: Input, conn: &mut Conn) -> Step {
        let line = match input {
            Input::Line(l) => l,
            Input::Eof => return Step::Exit,
            Input::Interrupted => {
                self.out
                    .line("(type quit or press Ctrl-D to exit, loginout to log out)");
                return Step::Continue;
            }
        };
        match commands::parse(&line) {
            Ok(None) => Step::Continue,
            Err(e) => {
                self.out.line(e.to_string());
                Step::Continue
            }
            Ok(Some(cmd)) => self.exec(cmd, conn).await,
        }
    }

    async fn exec(&mut self, cmd: Command, conn: &mut Conn) -> Step {
        let (id, fields, pending) = match cmd {
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
                (msgid::LOGINOUT, vec![], Pending::LoginOut)
            }
            Command::Chat { to, text } => (
                msgid::ONE_CHAT,
                vec![("toid", to.into()), ("msg", text.into())],
                Pending::Chat(to),
            ),
            Command::GroupChat { group, text } => (
                msgid::GROUP_CHAT,
                vec![("groupid", group.into()), ("msg", text.into())],
                Pending::GroupChat(group),
            ),
            Command::AddFriend(f) => (
                msgid::ADD_FRIEND,
                vec![("friendid", f.into())],
                Pending::AddFriend(f),
            ),
            Command::DelFriend(f) => (
                msgid::DEL_FRIEND,
                vec![("friendid", f.into())],
                Pending::DelFriend(f),
            ),
            Command::CreateGroup { name, desc } => (
                msgid::CREATE_GROUP,
                vec![
                    ("groupname", name.clone().into()),
                    ("groupdesc", desc.clone().into()),
                ],
                Pending::CreateGroup { name, desc },
            ),
            Command::AddGroup(g) => (
                msgid::ADD_GROUP,
                vec![("groupid", g.into())],
                Pending::AddGroup(g),
            ),
            Command::QuitGroup(g) => (
                msgid::QUIT_GROUP,
                vec![("groupid", g.into())],
                Pending::QuitGroup(g),
            ),
            Command::Disband(g) => (
                msgid::DISBAND_GROUP,
                vec![("groupid", g.into())],
                Pending::Disband(g),
            ),
            Command::History { peer, limit } => {
                let mut f = vec![("toid", peer.into())];
                if let Some(l) = limit {
                    f.push(("limit", l.into()));
                }
                (msgid::HISTORY, f, Pending::History(peer))
            }
            Command::GroupHistory { group, limit } => {
                let mut f = vec![("groupid", group.into())];
                if let Some(l) = limit {
                    f.push(("limit", l.into()));
                }
                (msgid::HISTORY, f, Pending::GroupHistory(group))
            }
        };
        let logout = matches!(pending, Pending::LoginOut);
        match conn.request(id, fields).await {
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

    fn on_frame(&mut self, f: &Map<String, Value>) -> Step {
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
                    Some(p) => self
                        .out
                        .line(format!("error {errno}: {msg} ({})", p.describe())),
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

    fn take_pending(&mut self, f: &Map<String, Value>) -> Option<Pending> {
        let reqid = f.get("reqid").and_then(Value::as_u64)?;
        self.pending.remove(&reqid)
    }

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
            Pending::Chat(_) => self.out.line(format!("message sent{}", mid())),
            Pending::GroupChat(_) => self.out.line(format!("group message sent{}", mid())),
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

    fn print_history(&mut self, title: &str, f: &Map<String, Value>) {
        let msgs: Vec<&Map<String, Value>> = f
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .collect();
        let mut s = format!(
            "--- {title}: {} message{} ---",
            msgs.len(),
            if msgs.len() == 1 { "" } else { "s" }
        );
        // The server sends newest first; people read oldest first.
        for m in msgs.iter().rev() {
            s.push('\n');
            s.push_str(&format_chat(m));
        }
        s.push_str("\n--- end of history ---");
        self.out.line(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn chat_lines_are_easy_to_read() {
        let one = obj(json!({"msgid": 6, "id": 1, "name": "alice", "toid": 2,
            "msg": "hi: there", "time": "2026-11-23 10:00:00", "mid": 5, "seq": 1}));
        assert_eq!(
            format_chat(&one),
            "[2026-11-23 10:00:00] alice(1): hi: there"
        );
        let grp = obj(json!({"msgid": 10, "id": 1, "userid": 1, "name": "alice",
            "groupid": 3, "msg": "hi", "time": "2026-11-23 10:00:00"}));
        assert_eq!(
            format_chat(&grp),
            "[group 3] [2026-11-23 10:00:00] alice(1): hi"
        );
        let evil = obj(json!({"msgid": 6, "id": 1, "name": "a", "msg": "\u{1b}[2J", "time": "t"}));
        assert_eq!(format_chat(&evil), "[t] a(1): \\u{1b}[2J");
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
