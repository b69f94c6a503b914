//! A private Redis server without persistence, on a fixed port across
//! restarts so that nodes reconnect to it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::bins::Bins;
use super::process::{free_port, Proc};

/// A private Redis server without persistence.
pub struct Redis {
    bin: PathBuf,
    dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    pub(super) proc: Option<Proc>,
}

impl Redis {
    pub(super) fn new(bins: &Bins, dir: PathBuf) -> Redis {
        std::fs::create_dir_all(&dir).expect("mkdir redis");
        Redis {
            bin: bins.redis.clone(),
            dir,
            port: free_port(),
            proc: None,
        }
    }

    pub(super) fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The URL nodes use.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts Redis (on the same port every time) and waits for PONG.
    pub async fn start(&mut self) {
        assert!(self.proc.is_none(), "Redis already running");
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir);
        let mut p = Proc::spawn("redis-server", cmd, &self.log());
        let log = self.log();
        p.wait_up(
            Duration::from_secs(15),
            Duration::from_millis(50),
            &[&log],
            async || self.ping().await,
        )
        .await;
        self.proc = Some(p);
    }

    async fn ping(&self) -> bool {
        let r = tokio::time::timeout(Duration::from_secs(1), async {
            let mut s = TcpStream::connect(("127.0.0.1", self.port)).await?;
            s.write_all(b"PING\r\n").await?;
            let mut b = [0u8; 16];
            let n = s.read(&mut b).await?;
            Ok::<bool, std::io::Error>(b[..n].starts_with(b"+PONG"))
        })
        .await;
        matches!(r, Ok(Ok(true)))
    }

    /// Kills Redis with SIGKILL: every connection to it breaks at once.
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill().await;
        }
    }
}
