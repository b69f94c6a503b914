//! A logged-in level-2 session: runs the user's commands, matches each reply
//! to its request by `reqid` and says what happened, prints pushed messages,
//! PRESENCE and KICKED as they arrive, confirms delivery with DELIVERED, and
//! sends a PING every heartbeat period so idle sessions stay alive through
//! proxies.
//!
//! Files: this one holds the session's state and its event loop;
//! [`requests`] turns the user's commands into requests, [`replies`] handles
//! what the server sends, and [`view`] says it all in words.

mod replies;
mod requests;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chat_protocol::Request;
use serde_json::{Map, Value};
use tokio::time::{Instant, MissedTickBehavior};

use crate::commands;
use crate::delivery::Delivery;
use crate::net::{int, objects, text, Conn, Event};
use crate::state::{StateStore, UserState};
use crate::ui::{Input, Printer, Ui};
use requests::Pending;

/// How long DELIVERED waits to cover a burst of messages with one frame.
const CONFIRM_DELAY: Duration = Duration::from_millis(50);
/// How long outstanding replies are awaited at loginout and exit.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// What comes after a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Back to the login menu (after loginout).
    Menu,
    /// The connection was lost or the session kicked (the text says which):
    /// back to the menu at a terminal, a failure when piped.
    Dropped(String),
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
        for f in objects(ack, "friends") {
            if let Some(id) = int(f, "id") {
                s.friends.insert(id);
                s.learn(id, f);
            }
        }
        for g in objects(ack, "groups") {
            let Some(gid) = int(g, "id") else { continue };
            let mut group = Group {
                name: Some(text(g, "groupname").to_owned()),
                desc: text(g, "groupdesc").to_owned(),
                members: Vec::new(),
            };
            for m in objects(g, "users") {
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
            if let Err(e) = conn.send(&Request::Delivered { seq }).await {
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
                    let why = format!("connection to the server lost: {why}");
                    self.out.line(why.clone());
                    self.save_state();
                    if exiting {
                        return self.end(Next::Exit, None);
                    }
                    let next = self.leave(ui, &prompt, why).await;
                    return self.end(next, None);
                }
                Step::Kicked(why) => {
                    let why = format!("kicked by the server: {why}");
                    self.out.line(why.clone());
                    self.save_state();
                    if exiting {
                        return self.end(Next::Exit, None);
                    }
                    let next = self.leave(ui, &prompt, why).await;
                    return self.end(next, None);
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

    /// Ends a session that the server ended (lost connection or KICKED). At
    /// a terminal the line editor still shows this session's prompt, and
    /// cannot be told to change it: so the client says so, and takes the
    /// line typed there itself (saying it was not sent) instead of letting
    /// the menu read it as a choice. Then the menu comes with its own prompt.
    async fn leave(&mut self, ui: &mut Ui, prompt: &str, why: String) -> Next {
        if !ui.interactive() {
            return Next::Dropped(why);
        }
        if !ui.reading() {
            self.out.line("back to the login menu");
            return Next::Dropped(why);
        }
        self.out.line(
            "you are logged out: press Enter for the login menu (Enter on the password resumes the saved session), or type quit",
        );
        match ui.read(prompt, false).await {
            Input::Eof => Next::Exit,
            Input::Line(l) if matches!(l.trim(), "quit" | "exit") => Next::Exit,
            Input::Line(l) if !l.trim().is_empty() => {
                self.out.line(format!(
                    "not sent, you are logged out: {}",
                    crate::ui::clean(l.trim())
                ));
                Next::Dropped(why)
            }
            _ => Next::Dropped(why),
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
        match conn.request(&Request::Ping).await {
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
}
