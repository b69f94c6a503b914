//! Bench accounts: the users file (`id password name [token]` per line) and
//! registering many accounts with bounded concurrency.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::client::{Conn, Transport};
use crate::report::Hist;

/// One account the bench can log in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Server-assigned user id.
    pub id: i64,
    /// Its password.
    pub password: String,
    /// Its name.
    pub name: String,
    /// A level-2 login token, when one was saved.
    pub token: Option<String>,
}

/// Reads a users file.
pub fn load(path: &Path) -> anyhow::Result<Vec<User>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read users file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(id), Some(password), Some(name)) = (it.next(), it.next(), it.next()) else {
            bail!("{}:{}: expected `id password name`", path.display(), n + 1);
        };
        out.push(User {
            id: id
                .parse()
                .with_context(|| format!("{}:{}: bad id", path.display(), n + 1))?,
            password: password.to_owned(),
            name: name.to_owned(),
            token: it.next().map(str::to_owned),
        });
    }
    Ok(out)
}

/// Writes a users file atomically (temp file, then rename).
pub fn save(path: &Path, users: &[User]) -> anyhow::Result<()> {
    let mut text = String::with_capacity(users.len() * 48);
    for u in users {
        text.push_str(&format!("{} {} {}", u.id, u.password, u.name));
        if let Some(t) = &u.token {
            text.push(' ');
            text.push_str(t);
        }
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The first `n` users of a file, or an error saying how many are missing.
pub fn take(path: &Path, n: usize) -> anyhow::Result<Vec<User>> {
    let mut all = load(path)?;
    if all.len() < n {
        bail!(
            "{} holds {} users, the scenario needs {n} (run `chat-bench setup {n} --out {}`)",
            path.display(),
            all.len(),
            path.display()
        );
    }
    all.truncate(n);
    Ok(all)
}

/// Outcome of [`register_many`].
pub struct Registered {
    /// Accounts created, in index order (failed ones are missing).
    pub users: Vec<User>,
    /// Failed registrations (timeouts, refusals, broken connections).
    pub errors: u64,
    /// REG round-trip times.
    pub latency: Hist,
    /// First error seen, for the report.
    pub first_error: Option<String>,
}

/// Registers `n` users named `{prefix}-{i}` over `concurrency` connections
/// spread across `servers`. `done` counts progress.
pub async fn register_many(
    transport: Transport,
    servers: &[SocketAddr],
    n: usize,
    prefix: &str,
    concurrency: usize,
    timeout: Duration,
    done: Arc<AtomicU64>,
) -> Registered {
    let next = Arc::new(AtomicUsize::new(0));
    let slots: Arc<Mutex<Vec<Option<User>>>> = Arc::new(Mutex::new(vec![None; n]));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for w in 0..concurrency.clamp(1, n.max(1)) {
        let addr = servers[w % servers.len()];
        let (next, slots, errors, first_error, done) = (
            next.clone(),
            slots.clone(),
            errors.clone(),
            first_error.clone(),
            done.clone(),
        );
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut hist = Hist::new();
            let mut conn: Option<Conn> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let name = format!("{prefix}-{i}");
                let password = format!("pw{prefix}{i}");
                let t0 = std::time::Instant::now();
                let r = async {
                    if conn.is_none() {
                        conn = Some(Conn::connect(transport, addr, timeout).await?);
                    }
                    let c = conn.as_mut().expect("just connected");
                    c.register(&name, &password, timeout).await
                }
                .await;
                match r {
                    Ok(id) => {
                        hist.record(t0.elapsed());
                        slots.lock().expect("slots")[i] = Some(User {
                            id,
                            password,
                            name,
                            token: None,
                        });
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .expect("first error")
                            .get_or_insert_with(|| format!("{e:#}"));
                        conn = None;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            hist
        }));
    }
    let mut latency = Hist::new();
    for t in tasks {
        match t.await {
            Ok(h) => latency.merge(&h),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let users = std::mem::take(&mut *slots.lock().expect("slots"))
        .into_iter()
        .flatten()
        .collect();
    let first_error = first_error.lock().expect("first error").take();
    Registered {
        users,
        errors: errors.load(Ordering::Relaxed),
        latency,
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("chat-bench-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("u.txt");
        let users = vec![
            User {
                id: 1,
                password: "a".into(),
                name: "n1".into(),
                token: None,
            },
            User {
                id: 2,
                password: "b".into(),
                name: "n2".into(),
                token: Some("tok".into()),
            },
        ];
        save(&p, &users).unwrap();
        assert_eq!(load(&p).unwrap(), users);
        assert_eq!(take(&p, 1).unwrap().len(), 1);
        assert!(take(&p, 3).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
