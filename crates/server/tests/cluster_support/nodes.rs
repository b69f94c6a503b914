//! The processes a cluster serves with: `chat-server` nodes and nginx in
//! front of them, built from the shipped `deploy/nginx/clusterchat.conf`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::process::Command;
use std::time::{Duration, Instant};

use super::bins::Bins;
use super::process::{free_port, port_open, Proc};
use super::LEASE_SECS;

/// The node id of node `i`: node-a, node-b, ...
pub fn node_name(i: usize) -> String {
    format!("node-{}", (b'a' + i as u8) as char)
}

/// One `chat-server` process.
pub struct NodeProc {
    /// Its node id.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its HTTP listener (web client, WebSocket) listens.
    pub http: SocketAddr,
    log: PathBuf,
    proc: Proc,
}

impl NodeProc {
    /// Starts node `i` of a cluster whose files are in `dir`, and waits
    /// (bounded) until it is ready and subscribed to Redis.
    pub async fn start(
        bin: &Path,
        i: usize,
        dir: &Path,
        db_url: &str,
        redis_url: &str,
    ) -> NodeProc {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_at(bin, i, dir, db_url, redis_url, (addr, http)).await
    }

    /// [`NodeProc::start`] on given (chat, HTTP) addresses: a restart
    /// takes its old ones, which nginx knows.
    pub async fn start_at(
        bin: &Path,
        i: usize,
        dir: &Path,
        db_url: &str,
        redis_url: &str,
        (addr, http): (SocketAddr, SocketAddr),
    ) -> NodeProc {
        let name = node_name(i);
        let log = dir.join(format!("{name}.log"));
        // The log is appended to across restarts: wait for one more line.
        let seen = |needle: &str| {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches(needle)
                .count()
        };
        let (ready_before, redis_before) =
            (seen("clusterchat server ready"), seen("connected to Redis"));
        let mut cmd = Command::new(bin);
        cmd.env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("NO_COLOR", "1")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--http-listen")
            .arg(http.to_string())
            .arg("--database-url")
            .arg(db_url)
            .arg("--redis-url")
            .arg(redis_url)
            .arg("--node-id")
            .arg(&name)
            .arg("--presence-lease-secs")
            .arg(LEASE_SECS.to_string())
            .args(["--argon2-m-kib", "1024", "--argon2-t", "1"])
            .args(["--shutdown-grace-secs", "1"])
            // nginx connects from 127.0.0.2 with a PROXY header
            // (deploy/nginx/clusterchat.conf); test clients from 127.0.0.1.
            .args(["--trusted-proxies", "127.0.0.2"])
            .args(["--log", "info"]);
        let mut proc = Proc::spawn(&name, cmd, &log);
        proc.wait_up(
            Duration::from_secs(30),
            Duration::from_millis(50),
            &[&log],
            async || seen("clusterchat server ready") > ready_before,
        )
        .await;
        // Ready means listening; also wait for its Redis subscriber.
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen("connected to Redis") <= redis_before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        NodeProc {
            name,
            addr,
            http,
            log,
            proc,
        }
    }

    /// Kills it with SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        self.proc.kill().await;
    }

    /// Its resident memory in KiB (Linux), or None once it is gone.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

/// nginx in the foreground, with the config from the repository.
pub struct Nginx {
    /// Where chat clients connect (the stream proxy).
    pub addr: SocketAddr,
    /// Where browsers connect (the HTTP proxy).
    pub http: SocketAddr,
    dir: PathBuf,
    proc: Proc,
}

impl Nginx {
    /// Starts nginx in front of `nodes` (two of them, with their chat and
    /// HTTP addresses), with its files in `dir`/nginx, and waits (bounded)
    /// until it listens.
    pub async fn start(bins: &Bins, dir: &Path, nodes: &[(SocketAddr, SocketAddr)]) -> Nginx {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("logs")).expect("mkdir nginx");
        let port = free_port();
        let http_port = free_port();
        let mut conf = String::new();
        if let Some(m) = &bins.stream_module {
            conf.push_str(&format!("load_module {};\n", m.display()));
        }
        conf.push_str(&format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log info;\nevents {{ worker_connections 1024; }}\n",
            d = dir.display()
        ));
        conf.push_str(&nginx_conf(port, http_port, nodes));
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut cmd = Command::new(&bins.nginx);
        cmd.arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("logs/error.log"));
        let mut proc = Proc::spawn("nginx", cmd, &dir.join("logs/stdout.log"));
        proc.wait_up(
            Duration::from_secs(15),
            Duration::from_millis(50),
            &[&dir.join("logs/stdout.log"), &dir.join("logs/error.log")],
            async || port_open(port).await && port_open(http_port).await,
        )
        .await;
        Nginx {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            http: format!("127.0.0.1:{http_port}").parse().unwrap(),
            dir,
            proc,
        }
    }
}

/// The shipped nginx config with its example addresses replaced: nodes
/// 127.0.0.1:6000 and :6002 (web :6001 and :6003), the stream listener
/// 127.0.0.1:8000 and the HTTP one 127.0.0.1:8080.
fn nginx_conf(listen: u16, http: u16, nodes: &[(SocketAddr, SocketAddr)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/clusterchat.conf");
    let conf = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let examples = [
        "127.0.0.1:6000",
        "127.0.0.1:6002",
        "127.0.0.1:6001",
        "127.0.0.1:6003",
        "listen 127.0.0.1:8000",
        "listen 127.0.0.1:8080",
    ];
    assert!(
        nodes.len() == 2 && examples.iter().all(|e| conf.contains(e)),
        "deploy/nginx/clusterchat.conf no longer names all of {examples:?}; update the cluster \
         test harness"
    );
    conf.replace("127.0.0.1:6000", &nodes[0].0.to_string())
        .replace("127.0.0.1:6002", &nodes[1].0.to_string())
        .replace("127.0.0.1:6001", &nodes[0].1.to_string())
        .replace("127.0.0.1:6003", &nodes[1].1.to_string())
        .replace(
            "listen 127.0.0.1:8000",
            &format!("listen 127.0.0.1:{listen}"),
        )
        .replace("listen 127.0.0.1:8080", &format!("listen 127.0.0.1:{http}"))
}
