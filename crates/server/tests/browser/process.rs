//! Real processes next to the browser: the `chat-server` binary (which a
//! test can kill with SIGKILL and start again on the same ports and
//! database) and the `chat` terminal client fed through pipes.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::harness::WAIT;

/// A free loopback address (free now; the test binds it soon after).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
}

/// Kills `child` (SIGKILL) if it is still running, and reaps it.
fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// The `chat-server` binary on fixed loopback ports and a SQLite file in a
/// temporary directory; killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// The chat protocol's TCP listener.
    pub addr: SocketAddr,
    /// The HTTP listener (web client and WebSocket).
    pub http: SocketAddr,
    dir: tempfile::TempDir,
    runs: usize,
}

impl ServerProcess {
    /// Starts the server and waits for it to say it is ready.
    pub async fn start() -> ServerProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let (addr, http) = (free_addr(), free_addr());
        let child = spawn_server(dir.path(), addr, http, 0).await;
        ServerProcess {
            child,
            addr,
            http,
            dir,
            runs: 1,
        }
    }

    /// Kills the server as a crash would.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same ports and database.
    pub async fn restart(&mut self) {
        kill(&mut self.child);
        self.child = spawn_server(self.dir.path(), self.addr, self.http, self.runs).await;
        self.runs += 1;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

async fn spawn_server(dir: &Path, addr: SocketAddr, http: SocketAddr, run: usize) -> Child {
    let log = dir.join(format!("server-{run}.log"));
    let out = std::fs::File::create(&log).expect("create the server log");
    let err = out.try_clone().expect("clone the log file");
    let mut cmd = chat_testkit::server_command(env!("CARGO_BIN_EXE_chat-server"));
    let db = format!("sqlite://{}", dir.join("chat.db").display());
    cmd.env("NO_COLOR", "1")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--http-listen")
        .arg(http.to_string())
        .args(["--database-url", &db, "--log", "info"])
        .args(["--argon2-m-kib", "1024", "--argon2-t", "1"])
        .args(["--max-connections-per-ip", "0", "--reg-per-ip-per-min", "0"])
        .args([
            "--prelogin-per-ip-per-sec",
            "0",
            "--login-failures-per-ip",
            "0",
        ])
        .args(["--shutdown-grace-secs", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let mut child = cmd.spawn().expect("start chat-server");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("clusterchat server ready") {
            return child;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("chat-server exited ({st}) before it was ready:\n{text}");
        }
        if Instant::now() > deadline {
            kill(&mut child);
            panic!("chat-server was not ready within {WAIT:?}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `chat` binary of this build (target/<profile>/chat), or None (after
/// saying so) when it is not built, outside CI. Under CI it must be there.
pub fn chat_binary(test: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/browser-<hash> → target/<profile>/chat
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(format!("chat{}", std::env::consts::EXE_SUFFIX)))
        .expect("the target directory");
    if bin.is_file() {
        return Some(bin);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: the chat terminal client is missing at {}; build it first: \
             cargo build -p chat-client",
            bin.display()
        );
    }
    println!(
        "{test}: the chat terminal client is not built ({}), so its part is skipped; \
         build it with: cargo build -p chat-client",
        bin.display()
    );
    None
}

/// A `chat` process reading commands from a pipe and printing one line per
/// event; killed when dropped.
pub struct Terminal {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
    _state: tempfile::TempDir,
}

impl Terminal {
    /// Starts `chat ADDR` with a fresh state directory.
    pub fn start(bin: &Path, addr: SocketAddr) -> Terminal {
        let state = tempfile::tempdir().expect("state dir");
        let mut child = Command::new(bin)
            .arg(addr.to_string())
            .env("CHAT_STATE_DIR", state.path())
            .env_remove("CHAT_SERVER")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chat");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Terminal {
            stdin: child.stdin.take().expect("stdin"),
            child,
            lines,
            seen: Vec::new(),
            _state: state,
        }
    }

    /// Writes one line to its stdin.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to chat");
        self.stdin.flush().expect("flush chat's stdin");
    }

    /// Waits (on a blocking thread) for the first line containing `needle`.
    pub async fn expect(&mut self, needle: &str) -> String {
        tokio::task::block_in_place(|| {
            let deadline = Instant::now() + WAIT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok(line) => {
                        self.seen.push(line.clone());
                        if line.contains(needle) {
                            return line;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => self.fail(&format!("no {needle:?}")),
                    Err(RecvTimeoutError::Disconnected) => {
                        self.fail(&format!("chat exited before printing {needle:?}"))
                    }
                }
            }
        })
    }

    /// Every line printed so far that contains `needle`.
    pub fn seen_with(&self, needle: &str) -> usize {
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }

    fn fail(&self, why: &str) -> ! {
        panic!("chat: {why}\n--- it printed ---\n{}", self.seen.join("\n"))
    }

    /// Registers through the menu; returns the new id.
    pub async fn register(&mut self, name: &str, password: &str) -> i64 {
        self.expect("3. quit").await;
        self.send("2");
        self.send(name);
        self.send(password);
        let line = self.expect("your id is").await;
        line.split("your id is ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| self.fail(&format!("no id in {line:?}")))
    }

    /// Logs in through the menu.
    pub async fn log_in(&mut self, id: i64, password: &str, name: &str) {
        self.expect("3. quit").await;
        self.send("1");
        self.send(&id.to_string());
        self.send(password);
        self.expect(&format!("logged in as {name}({id})")).await;
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
