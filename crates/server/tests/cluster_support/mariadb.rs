//! A private MariaDB server: installed into a temporary directory, started,
//! stopped, killed like a crash, and driven with the `mariadb` client.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::bins::{running_as_root, Bins};
use super::process::{blocking, free_port, port_open, tail, Proc};

/// A private MariaDB server (data directory, socket and logs in `dir`).
pub struct MariaDb {
    bins: Bins,
    dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    pub(super) proc: Option<Proc>,
}

impl MariaDb {
    fn sock(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    pub(super) fn log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    pub(super) async fn install(bins: &Bins, dir: PathBuf) -> MariaDb {
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
        let log = self.log();
        p.wait_up(
            Duration::from_secs(60),
            Duration::from_millis(100),
            &[&log],
            async || self.try_sql("SELECT 1").await.is_ok() && port_open(self.port).await,
        )
        .await;
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

    /// Runs `sql` as root through the mariadb client; its output, or why not.
    pub async fn try_sql(&self, sql: &str) -> Result<String, String> {
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
