//! Users for a scenario (from a users file, or registered on the spot) and
//! logging many of them in at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;

use chat_protocol::Secret;

use crate::client::Conn;
use crate::context::{Ctx, Endpoint};
use crate::progress;
use crate::users::{self, User};

/// Where users come from for a scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct UserSource {
    /// Users file written by `setup` (first N lines are used).
    #[arg(long)]
    pub users: Option<PathBuf>,
    /// Register fresh users on the server instead of reading a file.
    #[arg(long)]
    pub register: bool,
}

/// `n` users for `ep`: from the file for the real server, or registered
/// (always so on the ceiling, which starts empty).
pub async fn obtain_users(
    ctx: &Ctx,
    ep: &Endpoint,
    n: usize,
    src: &UserSource,
    tag: &str,
) -> anyhow::Result<Vec<User>> {
    if !ep.is_ceiling() && !src.register {
        let Some(path) = &src.users else {
            bail!("give --users FILE (from `chat-bench setup`) or --register");
        };
        return users::take(path, n);
    }
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress::Progress::start(
        ctx,
        "register",
        progress::Kind::Count(n as u64),
        done.clone(),
    );
    let prefix = format!("b{:x}{}{tag}", ctx.run_id, &ep.name[..1]);
    let reg =
        users::register_many(ctx.transport, &ep.addrs, n, &prefix, 16, ctx.timeout, done).await;
    bar.finish();
    if reg.users.len() < n {
        bail!(
            "registered only {} of {n} users on the {}: {}",
            reg.users.len(),
            ep.name,
            reg.first_error.unwrap_or_default()
        );
    }
    Ok(reg.users)
}

/// A successful login.
pub struct LoggedIn {
    /// The connection, logged in.
    pub conn: Conn,
    /// The level-2 token the ack carried.
    pub token: Option<String>,
    /// Connect plus login time.
    pub took: Duration,
}

/// Outcome of [`login_all`].
pub struct Logins {
    /// One slot per request, `None` where it failed.
    pub conns: Vec<Option<LoggedIn>>,
    /// Failures.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
}

/// Connects and logs each `(address, user)` in, `concurrency` at a time.
/// With `by_token`, users log in with their saved token.
pub async fn login_all(
    ctx: &Ctx,
    items: Vec<(SocketAddr, User)>,
    by_token: bool,
    concurrency: usize,
    done: Option<Arc<AtomicU64>>,
) -> Logins {
    let n = items.len();
    let timeout = ctx.timeout;
    let transport = ctx.transport;
    let level = ctx.level;
    let results: Vec<(usize, anyhow::Result<LoggedIn>)> =
        futures_util::stream::iter(items.into_iter().enumerate())
            .map(|(i, (addr, u))| {
                let done = done.clone();
                async move {
                    let t0 = Instant::now();
                    let r = async {
                        let mut conn = Conn::connect(transport, addr, timeout).await?;
                        let secret = match (&u.token, by_token) {
                            (Some(t), true) => Secret::Token(t),
                            (None, true) => bail!("user {} has no saved token", u.id),
                            _ => Secret::Password(&u.password),
                        };
                        let ack = conn
                            .login(u.id, secret, level, timeout)
                            .await
                            .with_context(|| format!("login of user {}", u.id))?;
                        Ok(LoggedIn {
                            conn,
                            token: ack.token,
                            took: t0.elapsed(),
                        })
                    }
                    .await;
                    if let Some(d) = &done {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                    (i, r)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let mut out = Logins {
        conns: (0..n).map(|_| None).collect(),
        errors: 0,
        first_error: None,
    };
    for (i, r) in results {
        match r {
            Ok(l) => out.conns[i] = Some(l),
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    out
}
