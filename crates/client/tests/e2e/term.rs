//! A `chat` process on a real pseudo-terminal, so it runs its line editor
//! as it does for a person: [`Term::type_in`] writes bytes to the terminal in
//! one `write` (as a fast typist, a script, an input method's commit or a
//! terminal multiplexer's `send-keys` does), and [`Term::expect`] waits for
//! text on the screen, with terminal control sequences stripped.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::pty::{openpty, Winsize};

use crate::harness::{chat_exe, TIMEOUT};

/// A `chat` client whose stdin, stdout and stderr are a pseudo-terminal.
pub struct Term {
    who: String,
    child: Child,
    master: File,
    screen: Arc<Mutex<Vec<u8>>>,
    /// How much of the screen text earlier expectations consumed.
    read_to: usize,
}

/// The screen's bytes as text, without ANSI control sequences and carriage
/// returns.
fn plain(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

impl Term {
    /// Starts `chat ADDR` on a new 120x40 pseudo-terminal.
    pub fn start(who: &str, addr: &str, state_dir: &Path) -> Term {
        Term::start_with(who, addr, state_dir, &[])
    }

    /// [`Term::start`] with more command-line arguments.
    pub fn start_with(who: &str, addr: &str, state_dir: &Path, extra: &[&str]) -> Term {
        let size = Winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&size), None).expect("openpty");
        // The child must not hold the master, or it never sees a hang-up.
        fcntl(&pty.master, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("cloexec");
        let slave = File::from(pty.slave);
        let child = Command::new(chat_exe())
            .arg(addr)
            .args(extra)
            .env("CHAT_STATE_DIR", state_dir)
            .env("TERM", "xterm-256color")
            .env_remove("CHAT_SERVER")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("cannot start chat");
        let master = File::from(pty.master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut rd = master.try_clone().unwrap();
        let sink = Arc::clone(&screen);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child is gone and no one holds the slave.
            while let Ok(n @ 1..) = rd.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Term {
            who: who.to_owned(),
            child,
            master,
            screen,
            read_to: 0,
        }
    }

    /// Everything shown so far, as plain text.
    pub fn text(&self) -> String {
        plain(&self.screen.lock().unwrap())
    }

    /// Writes `bytes` to the terminal in a single write, as a burst.
    pub fn type_in(&mut self, bytes: &str) {
        self.master.write_all(bytes.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Waits up to `limit` for `needle` to appear on the screen after what
    /// earlier expectations consumed; true when it did.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.text();
            if let Some(at) = text.get(self.read_to..).and_then(|t| t.find(needle)) {
                self.read_to += at + needle.len();
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `needle` on the screen, failing the test with the screen's
    /// text after [`TIMEOUT`].
    pub fn expect(&mut self, needle: &str) {
        if !self.wait_for(needle, TIMEOUT) {
            self.fail(&format!("timed out waiting for {needle:?}"));
        }
    }

    /// Logs in at the menu's `choice: ` prompt; an empty password uses the
    /// saved session.
    pub fn login(&mut self, id: i64, password: &str, name: &str) {
        self.expect("choice: ");
        self.type_in("1\r");
        self.expect("id: ");
        self.type_in(&format!("{id}\r"));
        self.expect("password");
        self.type_in(&format!("{password}\r"));
        self.expect(&format!("logged in as {name}({id})"));
        self.expect(&format!("{name}> "));
    }

    /// Fails the test, showing the screen.
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\n--- {}'s screen ---\n{}",
            self.who,
            self.who,
            self.text()
        )
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
