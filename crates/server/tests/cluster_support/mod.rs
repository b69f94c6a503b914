//! Harness for the cluster tests: real processes, each on free loopback ports
//! in a temporary directory, each killed when its handle drops.
//!
//! - [`Cluster`]: a private MariaDB and Redis, N `chat-server` nodes and
//!   optionally nginx built from the shipped `deploy/nginx/clusterchat.conf`.
//! - [`Client`]: a line client whose every read has a timeout.
//! - [`Agent`]: a level-2 chat client that sends with `cmid`, retries what was
//!   not acknowledged, reconnects when told, confirms delivery, and records
//!   everything in a shared [`Ledger`] so a test can count sent, acknowledged,
//!   received, lost and duplicated messages, pushes out of `seq` order, and
//!   delivery latency.
//!
//! Every child runs in its own process group, so a kill reaches the
//! processes it forked too (nginx workers), and nothing else.

#![allow(dead_code)] // not every test uses every helper

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a single expected frame may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The presence lease the nodes run with, in seconds (the server's minimum).
pub const LEASE_SECS: u64 = 3;

// ---------------------------------------------------------------------------
// Binaries

/// The external programs a cluster needs.
#[derive(Debug, Clone)]
pub struct Bins {
    mariadbd: PathBuf,
    install_db: PathBuf,
    mariadb: PathBuf,
    redis: PathBuf,
    nginx: PathBuf,
    /// The dynamic stream module, when nginx does not have it built in.
    stream_module: Option<PathBuf>,
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for d in ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(d));
    }
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

fn find_bins() -> Result<Bins, String> {
    let mut missing = Vec::new();
    let mut get = |names: &[&str], pkg: &str| {
        let p = which(names);
        if p.is_none() {
            missing.push(format!("{} ({pkg})", names[0]));
        }
        p.unwrap_or_default()
    };
    let mariadbd = get(&["mariadbd", "mysqld"], "mariadb-server");
    let install_db = get(
        &["mariadb-install-db", "mysql_install_db"],
        "mariadb-server",
    );
    let mariadb = get(&["mariadb", "mysql"], "mariadb-client");
    let redis = get(&["redis-server"], "redis-server");
    let nginx = get(&["nginx"], "nginx");
    let mut stream_module = None;
    if missing.is_empty() {
        let m = PathBuf::from("/usr/lib/nginx/modules/ngx_stream_module.so");
        if m.is_file() {
            stream_module = Some(m);
        } else {
            let v = Command::new(&nginx).arg("-V").output();
            let built_in = v.is_ok_and(|o| {
                String::from_utf8_lossy(&o.stderr).contains("--with-stream ")
                    || String::from_utf8_lossy(&o.stderr).ends_with("--with-stream")
            });
            if !built_in {
                missing.push("the nginx stream module (libnginx-mod-stream)".into());
            }
        }
    }
    if missing.is_empty() {
        Ok(Bins {
            mariadbd,
            install_db,
            mariadb,
            redis,
            nginx,
            stream_module,
        })
    } else {
        Err(missing.join(", "))
    }
}

/// The programs, or `None` (after printing why) when some are missing and
/// this is not CI. Under CI (env `CI` set) a missing program fails the test.
pub fn bins_or_skip(test: &str) -> Option<Bins> {
    match find_bins() {
        Ok(b) => Some(b),
        Err(missing) if std::env::var_os("CI").is_some() => {
            panic!("{test}: CI is set but these are missing: {missing}; install mariadb-server, redis-server, nginx and libnginx-mod-stream")
        }
        Err(missing) => {
            println!("skipped: {test}: missing {missing}");
            None
        }
    }
}

/// The `chat-server` binary cargo built for these tests.
fn server_bin() -> PathBuf {
    let p = match option_env!("CARGO_BIN_EXE_chat-server") {
        Some(p) => PathBuf::from(p),
        None => {
            // target/debug/deps/cluster-HASH -> target/debug/chat-server
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("chat-server"))
                .unwrap_or_default()
        }
    };
    assert!(
        p.is_file(),
        "chat-server binary not found at {}: build it first (`cargo test --workspace` or `cargo build --bin chat-server`)",
        p.display()
    );
    p
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

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
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
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

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})"));
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}

// ---------------------------------------------------------------------------
// MariaDB

/// A private MariaDB server (data directory, socket and logs in `dir`).
pub struct MariaDb {
    bins: Bins,
    dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    proc: Option<Proc>,
}

impl MariaDb {
    fn sock(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    async fn install(bins: &Bins, dir: PathBuf) -> MariaDb {
        std::fs::create_dir_all(&dir).expect("mkdir mariadb");
        let log = dir.join("install.log");
        // Twice at most: under heavy parallel load (several clusters
        // installing at once) a first attempt has been seen to fail.
        for attempt in 1..=2 {
            let _ = std::fs::remove_dir_all(dir.join("data"));
            let mut cmd = Command::new(&bins.install_db);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", dir.join("data").display()))
                .arg("--auth-root-authentication-method=socket")
                .arg("--skip-test-db");
            if running_as_root() {
                cmd.arg("--user=root");
            }
            let out = File::create(&log).expect("install log");
            cmd.stdout(Stdio::from(out.try_clone().unwrap()))
                .stderr(Stdio::from(out))
                .stdin(Stdio::null());
            let status = blocking(move || cmd.status()).await;
            if status.as_ref().is_ok_and(|s| s.success()) {
                break;
            }
            let msg = format!(
                "mariadb-install-db failed ({status:?}):\n{}",
                tail(&log, 30)
            );
            assert!(attempt < 2, "{msg}");
            eprintln!("{msg}\nretrying once");
        }
        MariaDb {
            bins: bins.clone(),
            dir,
            port: free_port(),
            proc: None,
        }
    }

    /// Starts the server and waits until it answers.
    pub async fn start(&mut self) {
        assert!(self.proc.is_none(), "MariaDB already running");
        let mut cmd = Command::new(&self.bins.mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.sock().display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mariadb.pid").display()
            ))
            .arg(format!("--log-error={}", self.log().display()))
            .arg("--character-set-server=utf8mb4")
            .arg("--collation-server=utf8mb4_bin")
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=32M");
        if running_as_root() {
            cmd.arg("--user=root");
        }
        let mut p = Proc::spawn("mariadbd", cmd, &self.dir.join("stdout.log"));
        // Generous: after a SIGKILL, InnoDB runs crash recovery before it
        // accepts connections, and this machine has two cores for everything.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.try_sql("SELECT 1").await.is_ok() && port_open(self.port).await {
                break;
            }
            assert!(
                !p.exited(),
                "mariadbd exited at startup:\n{}",
                tail(&self.log(), 30)
            );
            assert!(
                Instant::now() < deadline,
                "MariaDB did not come up within 60 s:\n{}",
                tail(&self.log(), 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.proc = Some(p);
    }

    /// Stops the server the polite way (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(30)).await;
        }
    }

    /// Kills the server with SIGKILL, as a crash would: no connection is
    /// closed politely, and the next [`MariaDb::start`] runs crash recovery.
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill().await;
        }
    }

    async fn try_sql(&self, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(&self.bins.mariadb);
        cmd.arg("--no-defaults")
            .arg("-uroot")
            .arg(format!("--socket={}", self.sock().display()))
            .arg("--batch")
            .arg("--skip-column-names")
            .arg("-e")
            .arg(sql)
            .stdin(Stdio::null());
        let out = blocking(move || cmd.output())
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL as root over the socket; panics on failure.
    pub async fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .await
            .unwrap_or_else(|e| panic!("SQL failed: {sql}\n{e}"))
    }

    /// Creates database `db` and user chat/chat with access to it; returns
    /// the URL the nodes use.
    pub async fn create_database(&self, db: &str) -> String {
        self.sql(&format!(
            "CREATE DATABASE {db} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin; \
             CREATE USER IF NOT EXISTS 'chat'@'127.0.0.1' IDENTIFIED BY 'chat'; \
             GRANT ALL PRIVILEGES ON {db}.* TO 'chat'@'127.0.0.1';"
        ))
        .await;
        format!("mysql://chat:chat@127.0.0.1:{}/{db}", self.port)
    }
}

// ---------------------------------------------------------------------------
// Redis

/// A private Redis server without persistence.
pub struct Redis {
    bin: PathBuf,
    dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    proc: Option<Proc>,
}

impl Redis {
    fn new(bins: &Bins, dir: PathBuf) -> Redis {
        std::fs::create_dir_all(&dir).expect("mkdir redis");
        Redis {
            bin: bins.redis.clone(),
            dir,
            port: free_port(),
            proc: None,
        }
    }

    fn log(&self) -> PathBuf {
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
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.ping().await {
            assert!(
                !p.exited(),
                "redis-server exited at startup:\n{}",
                tail(&self.log(), 20)
            );
            assert!(
                Instant::now() < deadline,
                "Redis did not answer within 15 s:\n{}",
                tail(&self.log(), 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

// ---------------------------------------------------------------------------
// Nodes and nginx

/// One `chat-server` process.
pub struct NodeProc {
    /// Its node id.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
    proc: Proc,
}

impl NodeProc {
    /// Kills it with SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        self.proc.kill().await;
    }
}

/// nginx in the foreground, with the stream config from the repository.
pub struct Nginx {
    /// Where clients connect.
    pub addr: SocketAddr,
    dir: PathBuf,
    proc: Proc,
}

/// The shipped nginx config with its example addresses replaced: nodes
/// 127.0.0.1:6000, :6002 and the listener 127.0.0.1:8000.
fn nginx_stream_conf(listen: u16, nodes: &[SocketAddr]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/clusterchat.conf");
    let conf = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        nodes.len() == 2
            && conf.contains("127.0.0.1:6000")
            && conf.contains("127.0.0.1:6002")
            && conf.contains("listen 127.0.0.1:8000"),
        "deploy/nginx/clusterchat.conf no longer names nodes 127.0.0.1:6000 and :6002 and \
         listens on 127.0.0.1:8000; update the cluster test harness"
    );
    conf.replace("127.0.0.1:6000", &nodes[0].to_string())
        .replace("127.0.0.1:6002", &nodes[1].to_string())
        .replace(
            "listen 127.0.0.1:8000",
            &format!("listen 127.0.0.1:{listen}"),
        )
}

// ---------------------------------------------------------------------------
// The cluster

/// MariaDB, Redis, nodes and maybe nginx, all private to one test.
pub struct Cluster {
    // Dropped in this order: nginx first, the temporary directory last.
    /// nginx, when asked for.
    pub nginx: Option<Nginx>,
    /// The nodes; `None` once killed.
    pub nodes: Vec<Option<NodeProc>>,
    /// Redis.
    pub redis: Redis,
    /// MariaDB.
    pub db: MariaDb,
    /// The database URL the nodes use.
    pub db_url: String,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    test: String,
}

impl Cluster {
    /// Starts MariaDB, Redis, `nodes` nodes and (with `nginx`, which needs
    /// two nodes) nginx. `None` when the programs are missing outside CI.
    pub async fn start(test: &str, nodes: usize, nginx: bool) -> Option<Cluster> {
        let bins = bins_or_skip(test)?;
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("clusterchat-test-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_owned();
        let started = Instant::now();
        // Install MariaDB while Redis starts.
        let mut db = MariaDb::install(&bins, path.join("mariadb")).await;
        db.start().await;
        let db_url = db.create_database("clusterchat").await;
        let mut redis = Redis::new(&bins, path.join("redis"));
        redis.start().await;
        let mut cluster = Cluster {
            nginx: None,
            nodes: Vec::new(),
            redis,
            db,
            db_url,
            dir: Some(dir),
            path,
            test: test.to_owned(),
        };
        for i in 0..nodes {
            let node = cluster.start_node(&bin, i).await;
            cluster.nodes.push(Some(node));
        }
        if nginx {
            cluster.start_nginx(&bins).await;
        }
        println!(
            "{test}: cluster up in {:.1} s ({nodes} nodes, MariaDB :{}, Redis :{}{}) in {}",
            started.elapsed().as_secs_f64(),
            cluster.db.port,
            cluster.redis.port,
            cluster
                .nginx
                .as_ref()
                .map(|n| format!(", nginx {}", n.addr))
                .unwrap_or_default(),
            cluster.path.display()
        );
        Some(cluster)
    }

    async fn start_node(&self, bin: &Path, i: usize) -> NodeProc {
        let name = format!("node-{}", (b'a' + i as u8) as char);
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = self.path.join(format!("{name}.log"));
        let mut cmd = Command::new(bin);
        cmd.env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("NO_COLOR", "1")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--database-url")
            .arg(&self.db_url)
            .arg("--redis-url")
            .arg(self.redis.url())
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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("clusterchat server ready") {
                break;
            }
            assert!(
                !proc.exited(),
                "{name} exited at startup:\n{}",
                tail(&log, 30)
            );
            assert!(
                Instant::now() < deadline,
                "{name} not ready within 30 s:\n{}",
                tail(&log, 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Ready means listening; also wait for its Redis subscriber.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("connected to Redis")
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        NodeProc {
            name,
            addr,
            log,
            proc,
        }
    }

    async fn start_nginx(&mut self, bins: &Bins) {
        let dir = self.path.join("nginx");
        std::fs::create_dir_all(dir.join("logs")).expect("mkdir nginx");
        let port = free_port();
        let nodes: Vec<SocketAddr> = self.nodes.iter().flatten().map(|n| n.addr).collect();
        let mut conf = String::new();
        if let Some(m) = &bins.stream_module {
            conf.push_str(&format!("load_module {};\n", m.display()));
        }
        conf.push_str(&format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log info;\nevents {{ worker_connections 1024; }}\n",
            d = dir.display()
        ));
        conf.push_str(&nginx_stream_conf(port, &nodes));
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
        let deadline = Instant::now() + Duration::from_secs(15);
        while !port_open(port).await {
            assert!(
                !proc.exited(),
                "nginx exited at startup:\n{}\n{}",
                tail(&dir.join("logs/stdout.log"), 20),
                tail(&dir.join("logs/error.log"), 20)
            );
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.nginx = Some(Nginx {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            dir,
            proc,
        });
    }

    /// Where node `i` listens.
    pub fn node(&self, i: usize) -> SocketAddr {
        self.nodes[i].as_ref().expect("node was killed").addr
    }

    /// Where nginx listens.
    pub fn nginx(&self) -> SocketAddr {
        self.nginx.as_ref().expect("no nginx").addr
    }

    /// Kills node `i` with SIGKILL.
    pub async fn kill_node(&mut self, i: usize) {
        let mut n = self.nodes[i].take().expect("node already killed");
        n.kill().await;
    }

    /// Lines of node `i`'s log that contain `needle`.
    pub fn node_log_count(&self, i: usize, needle: &str) -> usize {
        let name = format!("node-{}", (b'a' + i as u8) as char);
        std::fs::read_to_string(self.path.join(format!("{name}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// nginx's error log so far.
    pub fn nginx_error_log(&self) -> String {
        std::fs::read_to_string(self.path.join("nginx/logs/error.log")).unwrap_or_default()
    }

    fn dump_logs(&self) {
        eprintln!("---- {}: logs from {} ----", self.test, self.path.display());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "log"))
        {
            eprintln!("== {} ==\n{}", f.display(), tail(f, 60));
        }
        for f in [
            self.db.log(),
            self.redis.log(),
            self.path.join("nginx/logs/error.log"),
        ] {
            eprintln!("== {} ==\n{}", f.display(), tail(&f, 25));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if std::env::var_os("CLUSTER_TEST_KEEP").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("{}: keeping {}", self.test, d.keep().display());
            }
        }
        // Processes die in field order; the temporary directory goes last.
        self.nginx.take();
        self.nodes.clear();
        self.redis.proc.take();
        self.db.proc.take();
    }
}

// ---------------------------------------------------------------------------
// A line client

/// What one read produced.
#[derive(Debug)]
pub enum Read {
    /// A frame, parsed.
    Frame(Value),
    /// The peer closed or reset the connection.
    Eof,
    /// Nothing within the wait.
    Timeout,
}

/// A client speaking LF-terminated JSON; every read has a timeout.
pub struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    /// PRESENCE frames that [`Client::recv`] skipped, in arrival order.
    pub presence: Vec<(i64, String)>,
}

impl Client {
    /// Connects, or panics within [`READ_TIMEOUT`].
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::try_connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Connects from a chosen loopback address (127.0.0.0/8 all works), to
    /// tell clients apart by address behind nginx.
    pub async fn connect_from(addr: SocketAddr, local: std::net::Ipv4Addr) -> Client {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind(SocketAddr::new(local.into(), 0)).expect("bind");
        let sock = tokio::time::timeout(READ_TIMEOUT, s.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        let _ = sock.set_nodelay(true);
        Client {
            sock,
            buf: Vec::new(),
            eof: false,
            presence: Vec::new(),
        }
    }

    /// Connects, or says why not.
    pub async fn try_connect(addr: SocketAddr) -> Result<Client, String> {
        let sock = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let _ = sock.set_nodelay(true);
        Ok(Client {
            sock,
            buf: Vec::new(),
            eof: false,
            presence: Vec::new(),
        })
    }

    /// Sends one LF-terminated request; false if the connection is gone.
    pub async fn try_send(&mut self, v: &Value) -> bool {
        let mut b = serde_json::to_vec(v).expect("serialise");
        b.push(b'\n');
        matches!(
            tokio::time::timeout(READ_TIMEOUT, self.sock.write_all(&b)).await,
            Ok(Ok(()))
        )
    }

    /// Sends one request; panics if the connection is gone.
    pub async fn send(&mut self, v: Value) {
        assert!(self.try_send(&v).await, "send failed: {v}");
    }

    /// Reads one frame, waiting at most `wait`. Cancel-safe.
    pub async fn read(&mut self, wait: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let v = serde_json::from_slice(&line[..line.len() - 1]).unwrap_or_else(|e| {
                    panic!(
                        "server sent bad JSON {:?}: {e}",
                        String::from_utf8_lossy(&line)
                    )
                });
                return Read::Frame(v);
            }
            if self.eof {
                return Read::Eof;
            }
            self.buf.reserve(16 * 1024);
            match tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.buf)).await {
                Err(_) => return Read::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next frame, PRESENCE included; panics on timeout or EOF.
    pub async fn recv_any(&mut self) -> Value {
        match self.read(READ_TIMEOUT).await {
            Read::Frame(v) => v,
            Read::Eof => panic!("expected a frame, but the connection closed"),
            Read::Timeout => panic!("expected a frame within {READ_TIMEOUT:?}, got none"),
        }
    }

    /// The next frame that is not PRESENCE (those are kept in `presence`).
    pub async fn recv(&mut self) -> Value {
        loop {
            let v = self.recv_any().await;
            if v["msgid"] == 20 {
                self.presence.push((
                    v["id"].as_i64().expect("PRESENCE id"),
                    v["state"].as_str().expect("PRESENCE state").to_owned(),
                ));
                continue;
            }
            return v;
        }
    }

    /// The next non-PRESENCE frame, which must have this msgid.
    pub async fn recv_msgid(&mut self, msgid: i64) -> Value {
        let v = self.recv().await;
        assert_eq!(v["msgid"], msgid, "expected msgid {msgid}, got {v}");
        v
    }

    /// The next non-PRESENCE frame, which must be an ACK for `re`.
    pub async fn expect_ack(&mut self, re: i64) -> Value {
        let v = self.recv().await;
        assert!(
            v["msgid"] == 12 && v["re"] == re && v["errno"] == 0,
            "expected ACK for {re}, got {v}"
        );
        v
    }

    /// Waits (bounded) until a PRESENCE for `id` with `state` has arrived.
    pub async fn expect_presence(&mut self, id: i64, state: &str) {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if self.presence.iter().any(|(i, s)| *i == id && s == state) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await {
                Read::Frame(v) if v["msgid"] == 20 => self.presence.push((
                    v["id"].as_i64().unwrap_or(0),
                    v["state"].as_str().unwrap_or("").to_owned(),
                )),
                Read::Frame(v) => panic!("waiting for PRESENCE {id} {state}, got {v}"),
                Read::Eof => panic!("waiting for PRESENCE {id} {state}, connection closed"),
                Read::Timeout => panic!(
                    "no PRESENCE {id} {state} within {READ_TIMEOUT:?} (had {:?})",
                    self.presence
                ),
            }
        }
    }

    /// Asserts the server closes the connection next (PRESENCE aside).
    pub async fn expect_eof(&mut self) {
        loop {
            match self.read(READ_TIMEOUT).await {
                Read::Eof => return,
                Read::Frame(v) if v["msgid"] == 20 => continue,
                Read::Frame(v) => panic!("expected the connection to close, got {v}"),
                Read::Timeout => panic!("connection not closed within {READ_TIMEOUT:?}"),
            }
        }
    }

    /// Reads whatever arrives within `ms` (PRESENCE goes to `presence`).
    pub async fn drain(&mut self, ms: u64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_millis(ms);
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await {
                Read::Frame(v) if v["msgid"] == 20 => self.presence.push((
                    v["id"].as_i64().unwrap_or(0),
                    v["state"].as_str().unwrap_or("").to_owned(),
                )),
                Read::Frame(v) => out.push(v),
                Read::Eof | Read::Timeout => return out,
            }
        }
    }

    /// Replies leave in request order: once this PONG arrives, every earlier
    /// request has been answered. Returns the frames that came before it.
    pub async fn barrier(&mut self) -> Vec<Value> {
        self.send(json!({"msgid": 18, "reqid": "barrier"})).await;
        let mut before = Vec::new();
        loop {
            let v = self.recv().await;
            if v["msgid"] == 19 && v["reqid"] == "barrier" {
                return before;
            }
            before.push(v);
        }
    }

    /// REG; returns the new id.
    pub async fn register(&mut self, name: &str, password: &str) -> i64 {
        self.send(json!({"msgid": 4, "name": name, "password": password}))
            .await;
        let v = self.recv_msgid(5).await;
        assert_eq!(v["errno"], 0, "REG {name:?} failed: {v}");
        v["id"].as_i64().expect("REG_ACK id")
    }

    /// A LOGIN request; returns the LOGIN_ACK whatever its errno.
    pub async fn login_raw(&mut self, req: Value) -> Value {
        self.send(req).await;
        self.recv_msgid(2).await
    }

    /// Level-2 password LOGIN; asserts success and returns the ack.
    pub async fn login_l2(&mut self, id: i64, password: &str) -> Value {
        let v = self
            .login_raw(json!({"msgid": 1, "id": id, "password": password, "v": 2}))
            .await;
        assert_eq!(v["errno"], 0, "level-2 LOGIN of {id} failed: {v}");
        v
    }

    /// Level-1 LOGIN; asserts success and returns the ack.
    pub async fn login_l1(&mut self, id: i64, password: &str) -> Value {
        let v = self
            .login_raw(json!({"msgid": 1, "id": id, "password": password}))
            .await;
        assert_eq!(v["errno"], 0, "level-1 LOGIN of {id} failed: {v}");
        v
    }
}

/// Registers a user on a throwaway connection.
pub async fn register(addr: SocketAddr, name: &str) -> i64 {
    let mut c = Client::connect(addr).await;
    c.register(name, "pw").await
}

/// Makes each pair friends (level-2 login of the first, ADD_FRIEND, LOGINOUT).
pub async fn befriend(addr: SocketAddr, pairs: &[(i64, i64)]) {
    for &(a, b) in pairs {
        let mut c = Client::connect(addr).await;
        c.login_l2(a, "pw").await;
        c.send(json!({"msgid": 7, "friendid": b})).await;
        c.expect_ack(7).await;
        c.send(json!({"msgid": 3})).await;
        c.expect_ack(3).await;
    }
}

/// Creates a group of `creator` and `members` (each joins with a level-2
/// login, ADD_GROUP and LOGINOUT); returns its id.
pub async fn make_group(addr: SocketAddr, name: &str, creator: i64, members: &[i64]) -> i64 {
    let mut c = Client::connect(addr).await;
    c.login_l2(creator, "pw").await;
    c.send(json!({"msgid": 8, "groupname": name})).await;
    let gid = c.expect_ack(8).await["groupid"].as_i64().expect("groupid");
    c.send(json!({"msgid": 3})).await;
    c.expect_ack(3).await;
    for &m in members {
        let mut c = Client::connect(addr).await;
        c.login_l2(m, "pw").await;
        c.send(json!({"msgid": 9, "groupid": gid})).await;
        c.expect_ack(9).await;
        c.send(json!({"msgid": 3})).await;
        c.expect_ack(3).await;
    }
    gid
}

/// The `state` of friend `id` in a level-2 login ack.
pub fn friend_state(ack: &Value, id: i64) -> String {
    ack["friends"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["id"] == id))
        .and_then(|f| f["state"].as_str())
        .unwrap_or_else(|| panic!("friend {id} not in login ack {ack}"))
        .to_owned()
}

// ---------------------------------------------------------------------------
// Level-2 agents and their ledger

/// One message an agent sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Sender.
    pub from: i64,
    /// Who must receive it: the peer, or every other group member.
    pub recipients: Vec<i64>,
    /// When first sent.
    pub at: Instant,
}

/// Everything the agents of one test did, for counting at the end.
#[derive(Debug, Default)]
pub struct Ledger {
    /// By cmid (also the message text).
    pub sent: BTreeMap<String, Sent>,
    /// cmid -> mid from the ACK.
    pub acked: BTreeMap<String, i64>,
    /// When each cmid was acknowledged.
    pub acked_at: BTreeMap<String, Instant>,
    /// (recipient, mid) -> (text, times pushed).
    pub received: HashMap<(i64, i64), (String, u32)>,
    /// Per (recipient, mid), from the message's first send to its first push.
    pub latency: HashMap<(i64, i64), Duration>,
    /// Pushes whose seq skipped past the one the connection expected.
    pub jumped: u64,
    /// Pushes of a never-seen seq below the one the connection expected:
    /// late fills of an earlier gap.
    pub reordered: u64,
    /// The first few jumps, e.g. "u12: seq 211 after 208".
    pub jump_examples: Vec<String>,
    /// The first few reorders, e.g. "u12: seq 209 late, after 211".
    pub reorder_examples: Vec<String>,
    /// ACKs for one cmid that named different mids, and other protocol faults.
    pub faults: Vec<String>,
    /// ERROR errno 10 replies to chats.
    pub busy: u64,
    /// Sends of a cmid after its first (after errno 10 or a lost connection).
    pub resent: u64,
    /// Connections an agent saw end.
    pub disconnects: u64,
    /// Successful logins after the first.
    pub reconnects: u64,
    /// LOGIN_ACKs with errno 10.
    pub login_busy: u64,
}

/// The counts a fault test prints and asserts on. A group message is one
/// message and one delivery per other member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Distinct messages sent.
    pub sent: usize,
    /// Distinct messages acknowledged.
    pub acked: usize,
    /// Deliveries the acknowledged messages owe (message x recipient).
    pub deliveries: usize,
    /// Of those, how many arrived (after dedupe by mid).
    pub received: usize,
    /// Of those, how many never arrived.
    pub lost: usize,
    /// Pushes beyond the first of each delivery (before dedupe by mid).
    pub duplicated: usize,
    /// Pushes that match no acknowledged message for that recipient.
    pub unexpected: usize,
    /// Pushes that skipped ahead of the next seq on their connection.
    pub jumped: u64,
    /// Pushes that filled an earlier gap late.
    pub reordered: u64,
    /// From first send to first push, over all deliveries that arrived.
    pub latency: Latency,
}

/// Percentiles of the delivery latency (zero when nothing arrived).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

impl Latency {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Latency {
        let mut v: Vec<Duration> = samples.into_iter().collect();
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_unstable();
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Latency {
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

impl Ledger {
    /// Deliveries of acknowledged messages that have not (yet) arrived:
    /// (cmid, recipient, mid).
    pub fn missing(&self) -> Vec<(String, i64, i64)> {
        let mut out = Vec::new();
        for (cmid, mid) in &self.acked {
            for &r in &self.sent[cmid].recipients {
                if !self.received.contains_key(&(r, *mid)) {
                    out.push((cmid.clone(), r, *mid));
                }
            }
        }
        out
    }

    /// Counts, and checks that each received message is the one acked.
    pub fn counts(&self) -> Counts {
        let acked_mids: HashMap<i64, &String> = self.acked.iter().map(|(c, m)| (*m, c)).collect();
        let mut unexpected = 0;
        for ((to, mid), (text, _)) in &self.received {
            match acked_mids.get(mid) {
                Some(c) if *c == text && self.sent[*c].recipients.contains(to) => {}
                _ => unexpected += 1,
            }
        }
        let deliveries: usize = self
            .acked
            .keys()
            .map(|c| self.sent[c].recipients.len())
            .sum();
        let lost = self.missing().len();
        Counts {
            sent: self.sent.len(),
            acked: self.acked.len(),
            deliveries,
            received: deliveries - lost,
            lost,
            duplicated: self
                .received
                .values()
                .map(|(_, n)| (*n as usize).saturating_sub(1))
                .sum(),
            unexpected,
            jumped: self.jumped,
            reordered: self.reordered,
            latency: Latency::of(self.latency.values().copied()),
        }
    }
}

/// Shared handle on a test's ledger.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// Where an agent's messages go.
#[derive(Debug, Clone)]
pub enum Dest {
    /// One-to-one, to this user.
    User(i64),
    /// To this group, whose members (the sender among them) are listed.
    Group(i64, Vec<i64>),
}

/// What an agent does.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The agent's user.
    pub id: i64,
    /// Whom it chats with.
    pub dest: Dest,
    /// How many messages it sends.
    pub count: usize,
    /// Pause between sends.
    pub pace: Duration,
    /// Where it connects first.
    pub home: SocketAddr,
    /// Label for logs.
    pub label: String,
}

/// How a test steers its agents.
#[derive(Clone)]
pub struct AgentCtl {
    /// Where to reconnect after a lost connection; `None`: wait.
    pub reconnect_to: watch::Receiver<Option<SocketAddr>>,
    /// Ends the agent (after the test saw everything arrive).
    pub stop: CancellationToken,
    /// Where the agent records what it did.
    pub ledger: SharedLedger,
}

const SEND_WINDOW: usize = 4;
const RETRY_AFTER: Duration = Duration::from_millis(300);

struct Inflight {
    /// When to send again; `None` while waiting for the reply.
    retry_at: Option<Instant>,
    /// Times sent so far.
    sends: u32,
}

/// A level-2 client that keeps chatting through faults.
pub struct Agent {
    spec: AgentSpec,
    ctl: AgentCtl,
    conn: Option<Client>,
    token: Option<String>,
    next: usize,
    next_send: Instant,
    inflight: BTreeMap<String, Inflight>,
    /// Every seq received, on any connection.
    seqs: BTreeSet<i64>,
    /// seq -> the mid it carried, to catch one seq naming two messages.
    seq_mids: HashMap<i64, i64>,
    contiguous: i64,
    /// The seq the next push on this connection must carry.
    expect: i64,
    logins: u64,
}

/// Final state of an agent, for the test's assertions.
#[derive(Debug)]
pub struct AgentReport {
    /// The spec it ran.
    pub label: String,
    /// Messages it finished (acked).
    pub done: usize,
    /// Its highest contiguous seq.
    pub contiguous: i64,
}

impl Agent {
    /// An agent that connects to its home node and logs in (panics if that fails).
    pub async fn start(spec: AgentSpec, ctl: AgentCtl) -> Agent {
        let mut a = Agent {
            next_send: Instant::now(),
            spec,
            ctl,
            conn: None,
            token: None,
            next: 0,
            inflight: BTreeMap::new(),
            seqs: BTreeSet::new(),
            seq_mids: HashMap::new(),
            contiguous: 0,
            expect: 1,
            logins: 0,
        };
        let home = a.spec.home;
        assert!(
            a.connect(home).await,
            "{}: first login on {home} failed",
            a.spec.label
        );
        a
    }

    fn cmid(&self, i: usize) -> String {
        format!("{}#{i}", self.spec.label)
    }

    /// Connects and logs in (token first, password as fallback).
    async fn connect(&mut self, addr: SocketAddr) -> bool {
        let Ok(mut c) = Client::try_connect(addr).await else {
            return false;
        };
        let mut req = json!({"msgid": 1, "id": self.spec.id, "v": 2, "last_seq": self.contiguous});
        match &self.token {
            Some(t) => req["token"] = t.clone().into(),
            None => req["password"] = "pw".into(),
        }
        if !c.try_send(&req).await {
            return false;
        }
        let ack = loop {
            match c.read(Duration::from_secs(15)).await {
                Read::Frame(v) if v["msgid"] == 2 => break v,
                Read::Frame(v) => {
                    self.fault(format!("frame before LOGIN_ACK: {v}"));
                }
                Read::Eof | Read::Timeout => return false,
            }
        };
        match ack["errno"].as_i64() {
            Some(0) => {}
            Some(1) if self.token.is_some() => {
                // Used up (the connection died after it was spent): use the password.
                self.token = None;
                return false;
            }
            Some(10) => {
                self.ctl.ledger.lock().unwrap().login_busy += 1;
                return false;
            }
            _ => {
                self.fault(format!("LOGIN failed: {ack}"));
                return false;
            }
        }
        self.token = ack["token"].as_str().map(str::to_owned);
        // The login confirmed up to `contiguous`: the server replays from the next.
        self.expect = self.contiguous + 1;
        self.logins += 1;
        if self.logins > 1 {
            self.ctl.ledger.lock().unwrap().reconnects += 1;
        }
        self.conn = Some(c);
        // Whatever was unanswered goes again, with the same cmid.
        let now = Instant::now();
        for f in self.inflight.values_mut() {
            f.retry_at = Some(now);
        }
        true
    }

    fn fault(&self, what: String) {
        eprintln!("{}: {what}", self.spec.label);
        self.ctl
            .ledger
            .lock()
            .unwrap()
            .faults
            .push(format!("{}: {what}", self.spec.label));
    }

    async fn send_chat(&mut self, cmid: &str) {
        let req = match &self.spec.dest {
            Dest::User(to) => {
                json!({"msgid": 6, "toid": to, "msg": cmid, "cmid": cmid, "reqid": cmid})
            }
            Dest::Group(g, _) => {
                json!({"msgid": 10, "groupid": g, "msg": cmid, "cmid": cmid, "reqid": cmid})
            }
        };
        let ok = match &mut self.conn {
            Some(c) => c.try_send(&req).await,
            None => false,
        };
        if let Some(f) = self.inflight.get_mut(cmid) {
            f.retry_at = None;
            f.sends += 1;
            if f.sends > 1 {
                self.ctl.ledger.lock().unwrap().resent += 1;
            }
        }
        if !ok {
            self.lost_connection();
        }
    }

    fn lost_connection(&mut self) {
        if self.conn.take().is_some() {
            self.ctl.ledger.lock().unwrap().disconnects += 1;
        }
    }

    async fn on_frame(&mut self, v: Value) {
        match v["msgid"].as_i64() {
            Some(6) | Some(10) => {
                let (Some(mid), Some(seq), Some(text)) =
                    (v["mid"].as_i64(), v["seq"].as_i64(), v["msg"].as_str())
                else {
                    return self.fault(format!("push without mid/seq/msg: {v}"));
                };
                let arrived = Instant::now();
                {
                    let mut l = self.ctl.ledger.lock().unwrap();
                    let e = l
                        .received
                        .entry((self.spec.id, mid))
                        .or_insert_with(|| (text.to_owned(), 0));
                    e.1 += 1;
                    // The text is the cmid, so this works before the sender's ACK.
                    if e.1 == 1 {
                        if let Some(at) = l.sent.get(text).map(|s| s.at) {
                            l.latency.insert((self.spec.id, mid), arrived - at);
                        }
                    }
                }
                self.check_order(seq, mid);
                self.seqs.insert(seq);
                let before = self.contiguous;
                while self.seqs.contains(&(self.contiguous + 1)) {
                    self.contiguous += 1;
                }
                if self.contiguous > before {
                    let d = json!({"msgid": 16, "seq": self.contiguous});
                    let ok = match &mut self.conn {
                        Some(c) => c.try_send(&d).await,
                        None => true,
                    };
                    if !ok {
                        self.lost_connection();
                    }
                }
            }
            Some(12) => {
                let (Some(cmid), Some(mid)) = (v["reqid"].as_str(), v["mid"].as_i64()) else {
                    return self.fault(format!("unexpected ACK {v}"));
                };
                if self.inflight.remove(cmid).is_some() || self.cmid_known(cmid) {
                    let mut l = self.ctl.ledger.lock().unwrap();
                    match l.acked.get(cmid) {
                        Some(m) if *m != mid => {
                            let f = format!("{cmid} acked as mid {m} and again as {mid}");
                            l.faults.push(f);
                        }
                        Some(_) => {}
                        None => {
                            l.acked.insert(cmid.to_owned(), mid);
                            l.acked_at.insert(cmid.to_owned(), Instant::now());
                        }
                    }
                }
            }
            Some(11) => {
                let cmid = v["reqid"].as_str().map(str::to_owned);
                match (cmid, v["errno"].as_i64()) {
                    (Some(c), Some(10)) if self.inflight.contains_key(&c) => {
                        self.ctl.ledger.lock().unwrap().busy += 1;
                        if let Some(f) = self.inflight.get_mut(&c) {
                            f.retry_at = Some(Instant::now() + RETRY_AFTER);
                        }
                    }
                    _ => self.fault(format!("unexpected ERROR {v}")),
                }
            }
            Some(20) | Some(19) => {}
            Some(21) => self.fault(format!("KICKED: {v}")),
            _ => self.fault(format!("unexpected frame {v}")),
        }
    }

    /// Checks a push's seq against the one this connection expects next, and
    /// that a seq never names two messages. Call before recording `seq`.
    fn check_order(&mut self, seq: i64, mid: i64) {
        if let Some(m) = self.seq_mids.insert(seq, mid).filter(|m| *m != mid) {
            self.fault(format!("second mid for seq {seq}: {m}, then {mid}"));
        }
        let label = &self.spec.label;
        let last = self.expect - 1;
        if seq == self.expect {
            self.expect += 1;
        } else if seq > self.expect {
            self.expect = seq + 1;
            let mut l = self.ctl.ledger.lock().unwrap();
            l.jumped += 1;
            if l.jump_examples.len() < 10 {
                l.jump_examples
                    .push(format!("{label}: seq {seq} after {last}"));
            }
        } else if !self.seqs.contains(&seq) {
            let mut l = self.ctl.ledger.lock().unwrap();
            l.reordered += 1;
            if l.reorder_examples.len() < 10 {
                l.reorder_examples
                    .push(format!("{label}: seq {seq} late, after {last}"));
            }
        }
        // Otherwise a duplicate, counted by mid in `received`.
    }

    fn cmid_known(&self, cmid: &str) -> bool {
        self.ctl.ledger.lock().unwrap().sent.contains_key(cmid)
    }

    /// Runs until the test stops it; returns what it did.
    pub async fn run(mut self) -> AgentReport {
        let stop = self.ctl.stop.clone();
        while !stop.is_cancelled() {
            if self.conn.is_none() {
                let target = *self.ctl.reconnect_to.borrow();
                match target {
                    Some(addr) => {
                        if !self.connect(addr).await {
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            }
                        }
                    }
                    None => {
                        let mut rx = self.ctl.reconnect_to.clone();
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = rx.changed() => {}
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                }
                continue;
            }
            // Resend what is due.
            let now = Instant::now();
            let due: Vec<String> = self
                .inflight
                .iter()
                .filter(|(_, f)| f.retry_at.is_some_and(|t| t <= now))
                .map(|(c, _)| c.clone())
                .collect();
            for c in due {
                self.send_chat(&c).await;
            }
            if self.conn.is_none() {
                continue;
            }
            // A new message when its time has come and the window has room.
            if self.next < self.spec.count
                && self.inflight.len() < SEND_WINDOW
                && Instant::now() >= self.next_send
            {
                let cmid = self.cmid(self.next);
                self.next += 1;
                self.next_send = Instant::now() + self.spec.pace;
                self.ctl.ledger.lock().unwrap().sent.insert(
                    cmid.clone(),
                    Sent {
                        from: self.spec.id,
                        recipients: match &self.spec.dest {
                            Dest::User(u) => vec![*u],
                            Dest::Group(_, members) => members
                                .iter()
                                .copied()
                                .filter(|m| *m != self.spec.id)
                                .collect(),
                        },
                        at: Instant::now(),
                    },
                );
                self.inflight.insert(
                    cmid.clone(),
                    Inflight {
                        retry_at: None,
                        sends: 0,
                    },
                );
                self.send_chat(&cmid).await;
                continue;
            }
            let wait = Duration::from_millis(50);
            let r = {
                let c = self.conn.as_mut().expect("connected");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = c.read(wait) => r,
                }
            };
            match r {
                Read::Frame(v) => self.on_frame(v).await,
                Read::Eof => self.lost_connection(),
                Read::Timeout => {}
            }
        }
        AgentReport {
            label: self.spec.label.clone(),
            done: self.next - self.inflight.len(),
            contiguous: self.contiguous,
        }
    }
}

/// Waits (bounded) until every agent sent everything and got every ACK, and
/// every acknowledged message reached its recipient. Returns whether it did.
pub async fn wait_settled(ledger: &SharedLedger, total: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        {
            let l = ledger.lock().unwrap();
            if l.sent.len() == total && l.acked.len() == total && l.missing().is_empty() {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the counts under a heading, and the first out-of-order pushes.
pub fn print_counts(test: &str, c: &Counts, l: &Ledger) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{test}: messages sent={} acknowledged={}; deliveries owed={} received={} lost={} duplicated={} (before dedupe by mid); \
         jumped={} reordered={}; latency p50={:.1}ms p99={:.1}ms max={:.1}ms; \
         unexpected={} errno10-replies={} resent={} login-errno10={} disconnects={} reconnects={}",
        c.sent,
        c.acked,
        c.deliveries,
        c.received,
        c.lost,
        c.duplicated,
        c.jumped,
        c.reordered,
        ms(c.latency.p50),
        ms(c.latency.p99),
        ms(c.latency.max),
        c.unexpected,
        l.busy,
        l.resent,
        l.login_busy,
        l.disconnects,
        l.reconnects
    );
    if !l.jump_examples.is_empty() {
        println!("{test}: first jumps: {}", l.jump_examples.join("; "));
    }
    if !l.reorder_examples.is_empty() {
        println!("{test}: first reorders: {}", l.reorder_examples.join("; "));
    }
}
