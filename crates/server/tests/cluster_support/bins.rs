//! Finding the external programs a cluster needs (MariaDB, Redis, nginx
//! and its stream module) and the `chat-server` binary under test; skipping,
//! or under CI failing, when some are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The external programs a cluster needs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub(super) mariadbd: PathBuf,
    pub(super) install_db: PathBuf,
    pub(super) mariadb: PathBuf,
    pub(super) redis: PathBuf,
    pub(super) nginx: PathBuf,
    /// The dynamic stream module, when nginx does not have it built in.
    pub(super) stream_module: Option<PathBuf>,
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
pub(super) fn server_bin() -> PathBuf {
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

pub(super) fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
