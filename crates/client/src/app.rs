//! The program's flow: connect, show the classic menu (1. login 2. register
//! 3. quit), log in at level 2 (with the password, or the saved token), run
//! the session, and come back to the menu after loginout or a lost
//! connection.
//!
//! At a terminal a failed step is said and the menu comes back. Piped (a
//! script), the client fails fast instead: it stops with a [`Failure`] whose
//! exit status is one of [`exit`], so the script can tell what went wrong.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use chat_protocol::{msgid, Request, Secret};
use serde_json::{Map, Value};

use crate::commands::parse_id;
use crate::delivery::Delivery;
use crate::net::{int, reason, recv_opt, text, Conn, Event, Server};
use crate::session::{Next, Session};
use crate::state::{StateStore, UserState};
use crate::ui::{clean, Input, Printer, Ui};

/// How long LOGIN and REG may take (password hashing is slow on purpose).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// The exit statuses of `chat` (2 is a bad command line, from clap).
pub mod exit {
    /// The server cannot be reached at start, or the client cannot run.
    pub const ERROR: u8 = 1;
    /// Piped only: login or registration refused, or a menu line that is not
    /// a valid choice, id or password.
    pub const REFUSED: u8 = 3;
    /// Piped only: the connection to the server was lost, or the session was
    /// replaced by a login elsewhere (KICKED).
    pub const DISCONNECTED: u8 = 4;
}

/// Why the client stops with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit status, one of [`exit`].
    pub code: u8,
    /// What went wrong, for stderr.
    pub message: String,
}

/// What the command line decided.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The server: its address, `HOST:PORT`, and TLS.
    pub server: Server,
    /// Base directory for saved state; `None` keeps nothing.
    pub state_dir: Option<PathBuf>,
    /// PING period while logged in.
    pub heartbeat: Duration,
}

/// The client.
pub struct App {
    cfg: Settings,
    ui: Ui,
    out: Printer,
    store: Option<StateStore>,
    conn: Option<Conn>,
    deliveries: HashMap<i64, Delivery>,
    /// The last failed step, for a script's exit status.
    failure: Option<Failure>,
}

enum Choice {
    Quit,
    LoggedIn(Box<Session>, Conn),
    Fail(Failure),
}

/// The outcome of a prompt or a request inside the menu.
enum Attempt<T> {
    Done(T),
    Failed,
    Quit,
}

impl App {
    /// A client for `cfg`, talking to the user through `ui`.
    pub fn new(cfg: Settings, ui: Ui) -> App {
        let store = cfg
            .state_dir
            .as_deref()
            .map(|d| StateStore::new(d, &cfg.server.addr));
        App {
            out: ui.printer(),
            ui,
            store,
            conn: None,
            deliveries: HashMap::new(),
            failure: None,
            cfg,
        }
    }

    /// Runs until the user quits. Fails when the server cannot be reached at
    /// start and, when piped, at the first failed login, registration or
    /// menu line, and when the connection is lost.
    pub async fn run(mut self) -> Result<(), Failure> {
        let conn = Conn::connect(&self.cfg.server).await.map_err(|e| Failure {
            code: exit::ERROR,
            message: format!("{e:#}"),
        })?;
        self.conn = Some(conn);
        self.out.line(format!("connected to {}", self.cfg.server));
        if self.store.is_none() {
            self.out.line(
                "note: no state directory (see --state-dir), so delivery state and sessions are not saved",
            );
        }
        let result = loop {
            match self.menu().await {
                Choice::Quit => break Ok(()),
                Choice::Fail(f) => break Err(f),
                Choice::LoggedIn(session, conn) => {
                    let o = session.run(conn, &mut self.ui).await;
                    self.deliveries.insert(o.user, o.delivery);
                    self.conn = o.conn;
                    match o.next {
                        Next::Exit => break Ok(()),
                        Next::Menu => {}
                        Next::Dropped(why) if !self.ui.interactive() => {
                            break Err(Failure {
                                code: exit::DISCONNECTED,
                                message: why,
                            })
                        }
                        Next::Dropped(_) => {}
                    }
                }
            }
        };
        if result.is_ok() {
            self.out.line("bye");
        }
        self.ui.finish();
        result
    }

    /// Says why a menu step failed, and keeps it for a script's exit status.
    fn fail(&mut self, code: u8, message: String) {
        self.out.line(message.clone());
        self.failure = Some(Failure { code, message });
    }

    fn print_menu(&self) {
        self.out.line(
            "========================\n1. login\n2. register\n3. quit\n========================",
        );
    }

    /// Reads one line at the menu (a secret: not shown), noticing meanwhile
    /// when the server drops the idle connection.
    async fn read(&mut self, prompt: &str, secret: bool) -> Input {
        loop {
            let read = async {
                if secret {
                    self.ui.read_secret(prompt).await
                } else {
                    self.ui.read(prompt, false).await
                }
            };
            tokio::select! {
                input = read => return input,
                ev = recv_opt(&mut self.conn) => {
                    if let Event::Closed(_) = ev {
                        self.conn = None;
                    }
                }
            }
        }
    }

    /// A prompt inside a menu action: Ctrl-C cancels the action.
    async fn ask(&mut self, prompt: &str) -> Attempt<String> {
        self.ask_as(prompt, false).await
    }

    /// A password prompt inside a menu action: what is typed is not shown.
    async fn ask_secret(&mut self, prompt: &str) -> Attempt<String> {
        self.ask_as(prompt, true).await
    }

    async fn ask_as(&mut self, prompt: &str, secret: bool) -> Attempt<String> {
        match self.read(prompt, secret).await {
            Input::Line(l) => Attempt::Done(l),
            Input::Interrupted => Attempt::Failed,
            Input::Eof => Attempt::Quit,
        }
    }

    async fn menu(&mut self) -> Choice {
        self.print_menu();
        loop {
            let line = match self.read("choice: ", false).await {
                Input::Line(l) => l,
                Input::Eof | Input::Interrupted => return Choice::Quit,
            };
            match line.trim() {
                "" => continue,
                "1" | "login" => match self.login().await {
                    Attempt::Done((s, c)) => return Choice::LoggedIn(s, c),
                    Attempt::Quit => return Choice::Quit,
                    Attempt::Failed => {}
                },
                "2" | "register" => {
                    if let Attempt::Quit = self.register().await {
                        return Choice::Quit;
                    }
                }
                "3" | "quit" | "exit" => return Choice::Quit,
                other => {
                    let msg = format!(
                        "invalid choice \"{}\": type 1 to log in, 2 to register, 3 to quit",
                        clean(other)
                    );
                    self.fail(exit::REFUSED, msg);
                }
            }
            if let Some(f) = self.failure.take() {
                if !self.ui.interactive() {
                    return Choice::Fail(f);
                }
                // The error said what went wrong; a short reminder, not the
                // whole menu again.
                if !f.message.starts_with("invalid choice") {
                    self.out.line("(1 login, 2 register, 3 quit)");
                }
                continue;
            }
            self.print_menu();
        }
    }

    async fn connection(&mut self) -> Option<&mut Conn> {
        if self.conn.is_none() {
            match Conn::connect(&self.cfg.server).await {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    self.fail(exit::DISCONNECTED, format!("{e:#}"));
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }

    /// Sends a request and waits for the reply of kind `want` (or an ERROR
    /// for it). On failure the error is already printed, prefixed by `what`.
    async fn call(
        &mut self,
        what: &str,
        req: &Request<'_>,
        want: i64,
    ) -> Option<Map<String, Value>> {
        let conn = self.connection().await?;
        let reqid = match conn.request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                self.fail(exit::DISCONNECTED, format!("{what} failed: {e:#}"));
                return None;
            }
        };
        let wait = async {
            loop {
                match conn.recv().await {
                    Event::Frame(f) => {
                        let kind = int(&f, "msgid");
                        let mine = f
                            .get("reqid")
                            .and_then(Value::as_u64)
                            .is_none_or(|r| r == reqid);
                        if mine && (kind == Some(want) || kind == Some(msgid::ERROR)) {
                            return Ok(f);
                        }
                    }
                    Event::Closed(why) => {
                        return Err(why.unwrap_or_else(|| "the server closed the connection".into()))
                    }
                }
            }
        };
        let reply = match tokio::time::timeout(REPLY_TIMEOUT, wait).await {
            Ok(Ok(f)) => f,
            Ok(Err(why)) => {
                self.conn = None;
                self.fail(exit::DISCONNECTED, format!("{what} failed: {why}"));
                return None;
            }
            Err(_) => {
                self.conn = None;
                let msg = format!("{what} failed: no reply from the server");
                self.fail(exit::DISCONNECTED, msg);
                return None;
            }
        };
        Some(reply)
    }

    fn load_state(&self, user: i64) -> UserState {
        self.store
            .as_ref()
            .map(|s| s.load(user))
            .unwrap_or_default()
    }

    fn save_state(&self, user: i64, st: &UserState) {
        if let Some(s) = &self.store {
            if let Err(e) = s.save(user, st) {
                self.out.line(format!(
                    "warning: cannot save state in {}: {e}",
                    s.dir().display()
                ));
            }
        }
    }

    async fn login(&mut self) -> Attempt<(Box<Session>, Conn)> {
        let line = match self.ask("id: ").await {
            Attempt::Done(l) => l,
            Attempt::Failed => return Attempt::Failed,
            Attempt::Quit => return Attempt::Quit,
        };
        let Some(id) = parse_id(&line) else {
            let msg = format!(
                "\"{}\" is not a user id: the id is the number you got when you registered",
                clean(line.trim())
            );
            self.fail(exit::REFUSED, msg);
            return Attempt::Failed;
        };
        let mut saved = self.load_state(id);
        if saved.last_seq == 0 {
            if let Some(d) = self.deliveries.get(&id) {
                saved.last_seq = d.confirmed_seq();
            }
        }
        let prompt = if saved.token.is_some() {
            "password (Enter to resume the saved session): "
        } else {
            "password: "
        };
        let password = match self.ask_secret(prompt).await {
            Attempt::Done(l) => l,
            Attempt::Failed => return Attempt::Failed,
            Attempt::Quit => return Attempt::Quit,
        };
        let token = saved.token.clone();
        let secret = match (password.is_empty(), &token) {
            (false, _) => Secret::Password(&password),
            (true, Some(t)) => Secret::Token(t),
            (true, None) => {
                self.fail(exit::REFUSED, "the password must not be empty".into());
                return Attempt::Failed;
            }
        };
        let using_token = matches!(secret, Secret::Token(_));
        let Some(ack) = self.send_login(id, secret, saved.last_seq).await else {
            return Attempt::Failed;
        };
        let errno = int(&ack, "errno").unwrap_or(-1);
        let ack = if errno == 0 {
            ack
        } else if using_token && errno == 1 {
            // Single use, expired, or revoked: forget it, ask for the password.
            saved.token = None;
            self.save_state(id, &saved);
            self.out
                .line("the saved session has expired; log in with your password");
            let password = match self.ask_secret("password: ").await {
                Attempt::Done(l) if !l.is_empty() => l,
                Attempt::Quit => return Attempt::Quit,
                _ => return Attempt::Failed,
            };
            let Some(ack) = self
                .send_login(id, Secret::Password(&password), saved.last_seq)
                .await
            else {
                return Attempt::Failed;
            };
            if int(&ack, "errno") != Some(0) {
                self.login_failed(&ack);
                return Attempt::Failed;
            }
            ack
        } else {
            self.login_failed(&ack);
            return Attempt::Failed;
        };
        let Some(conn) = self.conn.take() else {
            return Attempt::Failed;
        };
        let delivery = match self.deliveries.remove(&id) {
            Some(mut d) => {
                d.start_session(saved.last_seq);
                d
            }
            None => Delivery::new(saved.last_seq),
        };
        let session = Session::from_ack(
            &ack,
            delivery,
            self.store.clone(),
            self.out.clone(),
            self.cfg.heartbeat,
            self.cfg.server.clone(),
        );
        let me = session.me();
        self.out
            .line(format!("logged in as {}({me})", clean(text(&ack, "name"))));
        self.out.line(session.friends_summary());
        self.out.line(session.groups_summary());
        self.out.line("type help to see the commands");
        Attempt::Done((Box::new(session), conn))
    }

    fn login_failed(&mut self, ack: &Map<String, Value>) {
        let msg = format!("login failed: {}", reason(ack));
        self.fail(exit::REFUSED, msg);
    }

    async fn send_login(
        &mut self,
        id: i64,
        secret: Secret<'_>,
        last_seq: i64,
    ) -> Option<Map<String, Value>> {
        let login = Request::Login {
            id,
            secret,
            level: 2,
            last_seq: Some(last_seq),
        };
        self.call("login", &login, msgid::LOGIN_ACK).await
    }

    async fn register(&mut self) -> Attempt<()> {
        let name = match self.ask("name: ").await {
            Attempt::Done(l) => l,
            Attempt::Failed => return Attempt::Failed,
            Attempt::Quit => return Attempt::Quit,
        };
        if name.trim().is_empty() {
            self.fail(exit::REFUSED, "the name must not be empty".into());
            return Attempt::Failed;
        }
        let password = match self.ask_secret("password: ").await {
            Attempt::Done(l) => l,
            Attempt::Failed => return Attempt::Failed,
            Attempt::Quit => return Attempt::Quit,
        };
        if password.is_empty() {
            self.fail(exit::REFUSED, "the password must not be empty".into());
            return Attempt::Failed;
        }
        let reg = Request::Register {
            name: &name,
            password: &password,
        };
        let Some(ack) = self.call("register", &reg, msgid::REG_ACK).await else {
            return Attempt::Failed;
        };
        match (int(&ack, "errno"), int(&ack, "id")) {
            (Some(0), Some(id)) => {
                self.out.line(format!(
                    "registered {}: your id is {id}; log in with it (choose 1)",
                    clean(&name)
                ));
                Attempt::Done(())
            }
            _ => {
                let msg = format!("register failed: {}", reason(&ack));
                self.fail(exit::REFUSED, msg);
                Attempt::Failed
            }
        }
    }
}
