//! A logged-in level-2 session: runs the user's commands, matches each reply
//! to its request by `reqid` and says what happened, prints pushed messages,
//! PRESENCE and KICKED as they arrive, confirms delivery with DELIVERED, and
//! sends a PING every heartbeat period so idle sessions stay alive through
//! proxies.
//!
//! At a terminal a lost connection does not end the session: the client
//! logs back in by itself with the saved token, with backoff ([`link`]),
//! and sends again what was not ACKed ([`outbox`]). Piped, it ends the
//! session, so the script fails fast.
//!
//! Files: this one holds the session's state and its event loop;
//! [`requests`] turns the user's commands into requests, [`replies`] handles
//! what the server sends, [`view`] says it all in words, [`outbox`] keeps
//! unacknowledged messages and [`link`] reconnects.

mod link;
mod outbox;
mod replies;
mod requests;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chat_protocol::Request;
use serde_json::{Map, Value};
use tokio::time::{Instant, MissedTickBehavior};

use crate::commands;
use crate::complete::Words;
use crate::delivery::Delivery;
use crate::net::{int, objects, recv_opt, text, Conn, Event, Server};
use crate::state::{StateStore, UserState};
use crate::ui::{Input, Printer, Ui};
use link::{Failed, Retry};
use outbox::Outbox;
use requests::Pending;

/// How long DELIVERED waits to cover a burst of messages with one frame.
const CONFIRM_DELAY: Duration = Duration::from_millis(50);
/// How long outstanding replies are awaited at loginout and exit.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// How soon after a login the backlog arrives (it is pushed right after the
/// login ack); a message arriving later is live.
const BACKLOG_WINDOW: Duration = Duration::from_secs(5);

/// When a login happened, to tell the backlog from live messages.
#[derive(Debug, Clone)]
struct LoginMoment {
    /// In the format of a chat frame's `time` (UTC), so the two compare as
    /// strings.
    utc: String,
    at: Instant,
}

impl LoginMoment {
    fn now() -> LoginMoment {
        LoginMoment {
            utc: chat_protocol::time::format_utc(chat_protocol::time::unix_now()),
            at: Instant::now(),
        }
    }

    /// Whether a message written at `time` and arriving now was written
    /// before the login (a whole second before, so a message of the login's
    /// own second counts as live) and came with the backlog.
    fn is_backlog(&self, time: &str) -> bool {
        !time.is_empty() && time < self.utc.as_str() && self.at.elapsed() < BACKLOG_WINDOW
    }
}

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
    /// The client cannot log back in after a lost connection.
    Refused(String),
    /// Run this command now (one whose user name was just looked up).
    Run(Box<crate::commands::Command>),
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
    /// The login moment, until the backlog that follows a login has been
    /// marked or ruled out.
    away_since: Option<LoginMoment>,
    /// Where the last HISTORY page ended, when older messages remain: the
    /// conversation and the smallest mid shown.
    older: Option<(chat_protocol::ChatTarget, i64)>,
    outbox: Outbox,
    server: Server,
}

impl Session {
    /// Builds the session from a successful level-2 LOGIN_ACK.
    pub fn from_ack(
        ack: &Map<String, Value>,
        delivery: Delivery,
        store: Option<StateStore>,
        out: Printer,
        heartbeat: Duration,
        server: Server,
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
            away_since: Some(LoginMoment::now()),
            older: None,
            outbox: Outbox::new(),
            server,
        };
        s.load_lists(ack);
        s
    }

    /// Takes the friend and group lists from a LOGIN_ACK, replacing what the
    /// session knew.
    fn load_lists(&mut self, ack: &Map<String, Value>) {
        let s = self;
        s.friends.clear();
        s.groups.clear();
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

    /// Runs the session until logout, exit, KICKED or, when it cannot log
    /// back in (or is piped), a lost connection.
    pub async fn run(mut self, conn: Conn, ui: &mut Ui) -> Outcome {
        self.save_state();
        ui.set_words(self.words());
        let mut conn = Some(conn);
        let prompt = format!("{}> ", self.name);
        let period = self.heartbeat.max(Duration::from_secs(1));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut confirm_at: Option<Instant> = None;
        let mut phase = Phase::Active;
        let mut retry: Option<Retry> = None;
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
            let retry_due = async {
                match &retry {
                    Some(r) => tokio::time::sleep_until(r.at).await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                input = ui.read(&prompt, true), if matches!(phase, Phase::Active) => {
                    self.on_input(input, conn.as_mut()).await
                }
                ev = recv_opt(&mut conn) => match ev {
                    Event::Frame(f) => match self.on_frame(&f) {
                        Step::Run(cmd) => self.exec(*cmd, conn.as_mut()).await,
                        step => step,
                    },
                    Event::Closed(why) => Step::Lost(why.unwrap_or_else(|| "the server closed the connection".into())),
                },
                _ = heartbeat.tick(), if conn.is_some() => match conn.as_mut() {
                    Some(c) => self.on_heartbeat(c).await,
                    None => Step::Continue,
                },
                _ = confirm_due, if conn.is_some() => {
                    confirm_at = None;
                    match conn.as_mut() {
                        Some(c) => self.flush_delivered(c).await,
                        None => Step::Continue,
                    }
                }
                _ = phase_due => match phase {
                    Phase::Exiting(_) => {
                        self.out.line("some replies did not arrive before exit");
                        return self.exit(conn).await;
                    }
                    _ => Step::Lost("no reply to loginout".into()),
                },
                _ = retry_due => {
                    let r = retry.take().unwrap_or_else(Retry::first);
                    match self.relogin().await {
                        Ok(mut c) => {
                            heartbeat.reset();
                            let step = self.back_online(&mut c).await;
                            conn = Some(c);
                            step
                        }
                        Err(Failed::Again(why)) => {
                            let next = r.next();
                            // Quiet for a blip; a word now and then for an outage.
                            if next.says_why() {
                                self.out.line(format!(
                                    "still offline ({why}); next try in {} s",
                                    next.wait_secs()
                                ));
                            }
                            retry = Some(next);
                            Step::Continue
                        }
                        Err(Failed::Refused(why)) => Step::Refused(why),
                    }
                }
            };
            let exiting = matches!(phase, Phase::Exiting(_));
            match step {
                Step::Continue | Step::Run(_) => {}
                Step::LoggingOut => phase = Phase::LoggingOut(Instant::now() + REPLY_WAIT),
                Step::LoggedOut => {
                    // LOGINOUT revoked every token of this user.
                    self.token = None;
                    self.save_state();
                    return self.end(Next::Menu, conn);
                }
                Step::Exit => {
                    if conn.is_none() {
                        self.warn_unsent();
                        self.save_state();
                        return self.end(Next::Exit, None);
                    }
                    // Let the replies to what was just sent arrive first, so
                    // a script that ends with `quit` still sees them.
                    phase = Phase::Exiting(Instant::now() + REPLY_WAIT);
                }
                Step::Lost(why) => {
                    let why = format!("connection to the server lost: {why}");
                    self.save_state();
                    if exiting {
                        self.out.line(why);
                        self.warn_unsent();
                        return self.end(Next::Exit, None);
                    }
                    conn = None;
                    self.pending.clear();
                    self.ping_outstanding = false;
                    let again =
                        ui.interactive() && matches!(phase, Phase::Active) && self.token.is_some();
                    if again {
                        self.out.line(format!("{why}; reconnecting…"));
                        retry = Some(Retry::first());
                    } else {
                        self.out.line(why.clone());
                        self.warn_unsent();
                        let next = self.leave(ui, &prompt, why).await;
                        return self.end(next, None);
                    }
                }
                Step::Kicked(why) => {
                    let why = format!("kicked by the server: {why}");
                    return self.ended(ui, &prompt, why, exiting).await;
                }
                Step::Refused(why) => return self.ended(ui, &prompt, why, exiting).await,
            }
            if matches!(phase, Phase::Exiting(_)) && !self.awaiting_replies() {
                return self.exit(conn).await;
            }
            ui.set_words(self.words());
            if confirm_at.is_none() && self.delivery.to_confirm().is_some() {
                confirm_at = Some(Instant::now() + CONFIRM_DELAY);
            }
        }
    }

    /// Ends the session for good after KICKED, or when it cannot log back
    /// in.
    async fn ended(mut self, ui: &mut Ui, prompt: &str, why: String, exiting: bool) -> Outcome {
        self.out.line(why.clone());
        self.save_state();
        self.warn_unsent();
        if exiting {
            return self.end(Next::Exit, None);
        }
        let next = self.leave(ui, prompt, why).await;
        self.end(next, None)
    }

    /// Says how many typed messages were never ACKed, when the session ends
    /// with some: they may or may not have reached the server.
    fn warn_unsent(&self) {
        let n = self.outbox.len();
        if n > 0 {
            self.out.line(format!(
                "{n} message{} not confirmed by the server; {} may not have been delivered",
                if n == 1 { " was" } else { "s were" },
                if n == 1 { "it" } else { "they" }
            ));
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

    /// What Tab completes: the names of the users this session knows, and
    /// its groups.
    fn words(&self) -> Words {
        let mut users: Vec<String> = self
            .names
            .iter()
            .filter(|(&id, _)| id != self.me)
            .map(|(_, n)| n.clone())
            .collect();
        users.sort();
        users.dedup();
        let groups = self
            .groups
            .iter()
            .map(|(&id, g)| (id, g.name.clone().unwrap_or_default()))
            .collect();
        Words { users, groups }
    }

    /// True while a request other than PING waits for its reply.
    fn awaiting_replies(&self) -> bool {
        self.pending.values().any(|p| !matches!(p, Pending::Ping))
    }

    /// Confirms what arrived, saves the state and ends for good. The
    /// session is not logged out, so the saved token stays valid.
    async fn exit(mut self, mut conn: Option<Conn>) -> Outcome {
        if let Some(c) = conn.as_mut() {
            if let Step::Lost(why) = self.flush_delivered(c).await {
                self.out.line(format!("could not confirm delivery: {why}"));
            }
        }
        self.warn_unsent();
        self.save_state();
        self.end(Next::Exit, conn)
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

    async fn on_input(&mut self, input: Input, conn: Option<&mut Conn>) -> Step {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_what_was_written_before_the_login_second() {
        let login = LoginMoment {
            utc: "2026-11-30 10:00:05".into(),
            at: Instant::now(),
        };
        assert!(login.is_backlog("2026-11-30 10:00:04"));
        assert!(login.is_backlog("2026-11-29 23:59:59"));
        assert!(!login.is_backlog("2026-11-30 10:00:05"));
        assert!(!login.is_backlog("2026-11-30 10:00:06"));
        assert!(!login.is_backlog(""));
    }
}
