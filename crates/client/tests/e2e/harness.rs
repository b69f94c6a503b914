//! The test harness: a real `chat-server` on a free loopback port with a
//! temporary SQLite database, and real `chat` processes fed through pipes
//! ([`Client`]) or through a pseudo-terminal ([`Term`], in `term.rs`). Every
//! read has a timeout, and every child is killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Longest wait for any one expected line.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub fn chat_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chat"))
}

/// The server binary sits next to the client's in the target directory.
fn server_exe() -> PathBuf {
    let exe = chat_exe().with_file_name(format!("chat-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        exe.exists(),
        "the server binary is missing at {}: build it first with `cargo build -p clusterchat-server` \
         (`cargo test --workspace` builds it)",
        exe.display()
    );
    exe
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `chat-server`, killed on drop.
pub struct Server {
    child: Child,
    pub addr: String,
    /// Flags beyond the usual ones (TLS), kept for restarts.
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server started with these flags too (e.g. `--tls-cert FILE`).
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        // The port is free now; a race with another process is possible but
        // shows up as a clear failure below.
        let addr = format!("127.0.0.1:{}", free_port());
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Server::spawn_with(dir.path(), &addr, &extra);
        Server {
            child,
            addr,
            extra,
            _dir: dir,
        }
    }

    /// Kills the server as a crash would (start it again with
    /// [`Server::start_again`]).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same address and database.
    pub fn start_again(&mut self) {
        self.child = Server::spawn_with(self._dir.path(), &self.addr, &self.extra);
    }

    /// Freezes (`true`) or thaws the server process, as a hung host would.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { "-STOP" } else { "-CONT" };
        let st = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig} failed");
    }

    /// Kills the server as a crash would, then starts it again on the same
    /// address and database.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Server::spawn_with(self._dir.path(), &self.addr, &self.extra);
    }

    fn spawn_with(dir: &Path, addr: &str, extra: &[String]) -> Child {
        let exe = server_exe();
        let db = dir.join("chat.db");
        let mut child = Command::new(&exe)
            .args(["--listen", addr, "--http-listen", "off"])
            .arg("--database-url")
            .arg(format!("sqlite://{}", db.display()))
            .args(["--argon2-m-kib", "1024", "--argon2-t", "1"])
            .args(["--sqlite-synchronous", "normal", "--log", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("chat-server exited early with {st}");
            }
            if TcpStream::connect(addr).is_ok() {
                return child;
            }
            assert!(
                Instant::now() < deadline,
                "chat-server did not listen on {addr} in time"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `chat` client fed through stdin, its stdout read line by line.
pub struct Client {
    who: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// The thread copying stderr; it ends when the client's stderr closes.
    stderr_reader: Option<thread::JoinHandle<()>>,
}

impl Client {
    pub fn start(who: &str, addr: &str, state_dir: &Path) -> Client {
        Client::start_with(who, addr, state_dir, &[])
    }

    pub fn start_with(who: &str, addr: &str, state_dir: &Path, extra: &[&str]) -> Client {
        let mut child = Command::new(chat_exe())
            .arg(addr)
            .args(extra)
            .env("CHAT_STATE_DIR", state_dir)
            .env_remove("CHAT_SERVER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start chat");
        let mut err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Client {
            who: who.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\n--- {} printed ---\n{}\n--- and on stderr ---\n{}",
            self.who,
            self.who,
            self.seen.join("\n"),
            self.stderr()
        )
    }

    /// Every stdout line read so far, one text.
    pub fn seen_text(&self) -> String {
        self.seen.join("\n")
    }

    /// What the client wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Reads lines up to and including the first that contains `needle`.
    pub fn until(&mut self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    let hit = line.contains(needle);
                    got.push(line);
                    if hit {
                        return got;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("timed out waiting for {needle:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("exited while waiting for {needle:?}"))
                }
            }
        }
    }

    /// The first line that contains `needle` (earlier lines are skipped).
    pub fn expect(&mut self, needle: &str) -> String {
        self.until(needle).pop().unwrap()
    }

    /// Registers through the menu; returns the new user id.
    pub fn register(&mut self, name: &str, password: &str) -> i64 {
        self.expect("3. quit");
        self.send("2");
        self.send(name);
        self.send(password);
        let line = self.expect("your id is");
        let id = line
            .split("your id is ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| self.fail(&format!("no id in {line:?}")));
        assert!(line.contains(name), "{line}");
        id
    }

    /// Logs in through the menu (the menu must be showing).
    pub fn login(&mut self, id: i64, password: &str, name: &str) {
        self.send("1");
        self.send(&id.to_string());
        self.send(password);
        self.expect(&format!("logged in as {name}({id})"));
        self.expect("type help");
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Everything it printed is read before anyone looks: the
                // copier ends at the pipe's end, which exit closed.
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return st;
            }
            if Instant::now() > deadline {
                self.fail("did not exit in time");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
