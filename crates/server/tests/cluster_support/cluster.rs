//! The cluster: MariaDB, Redis, nodes and maybe nginx, private to one
//! test, with its logs dumped when the test fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use super::bins::{bins_or_skip, server_bin};
use super::mariadb::MariaDb;
use super::nodes::{node_name, Nginx, NodeProc};
use super::process::tail;
use super::redis::Redis;

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
    /// Killed nodes' (chat, HTTP) addresses, for restarts.
    killed: std::collections::HashMap<usize, (SocketAddr, SocketAddr)>,
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
            killed: Default::default(),
            dir: Some(dir),
            path,
            test: test.to_owned(),
        };
        for i in 0..nodes {
            let node = NodeProc::start(
                &bin,
                i,
                &cluster.path,
                &cluster.db_url,
                &cluster.redis.url(),
            )
            .await;
            cluster.nodes.push(Some(node));
        }
        if nginx {
            let nodes: Vec<(SocketAddr, SocketAddr)> = cluster
                .nodes
                .iter()
                .flatten()
                .map(|n| (n.addr, n.http))
                .collect();
            cluster.nginx = Some(Nginx::start(&bins, &cluster.path, &nodes).await);
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

    pub fn node(&self, i: usize) -> SocketAddr {
        self.nodes[i].as_ref().expect("node was killed").addr
    }

    /// Where nginx listens.
    pub fn nginx(&self) -> SocketAddr {
        self.nginx.as_ref().expect("no nginx").addr
    }

    /// Where node `i`'s HTTP listener (web client, WebSocket) listens.
    pub fn node_http(&self, i: usize) -> SocketAddr {
        self.nodes[i].as_ref().expect("node was killed").http
    }

    /// Where nginx's HTTP proxy listens.
    pub fn nginx_http(&self) -> SocketAddr {
        self.nginx.as_ref().expect("no nginx").http
    }

    /// Kills node `i` with SIGKILL.
    pub async fn kill_node(&mut self, i: usize) {
        let mut n = self.nodes[i].take().expect("node already killed");
        n.kill().await;
        self.killed.insert(i, (n.addr, n.http));
    }

    /// Starts killed node `i` again on its old addresses.
    pub async fn restart_node(&mut self, i: usize) {
        let addrs = self.killed.remove(&i).expect("node was not killed");
        let node = NodeProc::start_at(
            &server_bin(),
            i,
            &self.path,
            &self.db_url,
            &self.redis.url(),
            addrs,
        )
        .await;
        self.nodes[i] = Some(node);
    }

    /// Lines of node `i`'s log that contain `needle`.
    pub fn node_log_count(&self, i: usize, needle: &str) -> usize {
        let name = node_name(i);
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
