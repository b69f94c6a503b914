//! The ceiling as a process of its own: `chat-bench ceiling` serving on an
//! address, and [`Child`], the bench starting one and stopping it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use super::{Ceiling, Options};

/// `chat-bench ceiling`: binds, prints `listening ADDR` on stdout, serves.
/// With `lifeline`, exits when stdin reaches end of file (its parent died
/// or let go).
pub async fn run(listen: SocketAddr, opts: Options, lifeline: bool) -> anyhow::Result<()> {
    // A deep accept queue, so a login storm is not held up by SYN retries.
    let sock = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let listener = sock.listen(4096)?;
    println!("listening {}", listener.local_addr()?);
    let _ = std::io::stdout().flush();
    let seed = opts.seed.clone();
    let ceiling = Ceiling::new(opts);
    if let Some(path) = seed {
        ceiling.seed(&crate::users::load(&path)?);
    }
    let serve = ceiling.serve(listener);
    if lifeline {
        let mut stdin = tokio::io::stdin();
        let mut sink = [0u8; 64];
        tokio::select! {
            _ = serve => {}
            _ = async { while let Ok(n) = stdin.read(&mut sink).await { if n == 0 { break } } } => {}
        }
    } else {
        serve.await;
    }
    Ok(())
}

/// A ceiling running as a child process of the bench, so that it has its
/// own threads, file descriptors and RSS, like the real server.
pub struct Child {
    child: tokio::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id (for RSS).
    pub pid: u32,
}

impl Child {
    /// Starts `chat-bench ceiling` on a free loopback port.
    pub async fn spawn(opts: &Options) -> anyhow::Result<Child> {
        let exe = std::env::current_exe().context("cannot find the chat-bench executable")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["ceiling", "--listen", "127.0.0.1:0", "--lifeline"])
            .arg("--queue")
            .arg(opts.queue.to_string())
            .args(
                opts.seed
                    .iter()
                    .flat_map(|p| [std::ffi::OsStr::new("--users"), p.as_os_str()]),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the ceiling server")?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("ceiling exited at once"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| anyhow!("the ceiling did not start within 10 s"))??
            .ok_or_else(|| anyhow!("the ceiling exited before listening"))?;
        let addr = line
            .strip_prefix("listening ")
            .ok_or_else(|| anyhow!("unexpected line from the ceiling: {line}"))?
            .parse()?;
        Ok(Child { child, addr, pid })
    }

    /// Stops it (we started it, so we kill it by its handle) and reaps it.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
