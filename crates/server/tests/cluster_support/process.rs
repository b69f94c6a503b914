//! Child processes and loopback ports: a child in a process group of its
//! own, killed with its group when dropped, and the small waits around it.

use std::fs::OpenOptions;
use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// A free loopback port below the kernel's ephemeral range, so that no
/// outgoing connection takes it while a restarted server is away from it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768);
    if low > 12_000 {
        let seed = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
        let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
        let span = u64::from(low - 10_000);
        for _ in 0..500 {
            // A multiplicative walk: consecutive calls land far apart.
            let n = NEXT.fetch_add(0x2545_F491_4F6C_DD1D, Ordering::Relaxed);
            let port = 10_000 + ((n >> 17) % span) as u16;
            if StdListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// ---------------------------------------------------------------------------
// Processes

/// A child process in a process group of its own, killed (with its group)
/// when dropped.
pub struct Proc {
    name: String,
    child: Child,
    reaped: bool,
}

impl Proc {
    pub(super) fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_owned(),
            child,
            reaped: false,
        }
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the process group. Only while the leader is unreaped,
    /// so the group id cannot belong to anyone else.
    fn signal(&self, sig: &str) {
        if self.reaped {
            return;
        }
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), "--", &format!("-{}", self.pid())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Whether it has exited (reaps it if so).
    pub fn exited(&mut self) -> bool {
        if self.reaped {
            return true;
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            self.reaped = true;
        }
        self.reaped
    }

    async fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.exited() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.exited()
    }

    /// Polls `up` every `every` until it holds. Fails the test, with the
    /// tail of each of `logs`, if the process exits first or `within` passes.
    pub(super) async fn wait_up(
        &mut self,
        within: Duration,
        every: Duration,
        logs: &[&Path],
        mut up: impl AsyncFnMut() -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !up().await {
            let tails = || {
                logs.iter()
                    .map(|l| tail(l, 30))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert!(
                !self.exited(),
                "{} exited at startup:\n{}",
                self.name,
                tails()
            );
            assert!(
                Instant::now() < deadline,
                "{} not up within {within:?}:\n{}",
                self.name,
                tails()
            );
            tokio::time::sleep(every).await;
        }
    }

    /// SIGKILL to the group, then waits (bounded) for the leader.
    pub async fn kill(&mut self) {
        self.signal("KILL");
        assert!(
            self.wait_exit(Duration::from_secs(10)).await,
            "{} did not die after SIGKILL",
            self.name
        );
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        self.signal("TERM");
        if !self.wait_exit(grace).await {
            eprintln!("{} ignored SIGTERM for {grace:?}; killing", self.name);
            self.kill().await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal("KILL");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub(super) fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})"));
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

pub(super) async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}
