//! `chat-server admin ...`: the operator commands. Each opens the database
//! that `--database-url` names (as a server would, migrating it if needed),
//! does one thing, and exits; servers may run meanwhile.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chat_protocol::time::{format_utc, unix_now};

use crate::config::{Config, HashCost};
use crate::password::Passwords;
use crate::store::{self, Store, StoreError, StoreOptions, UserId, UserSummary};

/// The operator commands.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// List accounts: id, name, enabled or disabled, when registered (UTC).
    ///
    /// Presence is not stored in the database (each node and Redis hold
    /// it), so this cannot say who is online.
    #[command(visible_alias = "list-users")]
    Users {
        /// Accounts to list at most.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        /// List accounts with an id above this one (the next page).
        #[arg(long, value_name = "ID", default_value_t = 0)]
        after: i64,
    },
    /// Set a new password, read from stdin (one line; at a terminal it is
    /// asked for and not shown). Revokes the account's login tokens and
    /// closes its sessions.
    ResetPassword {
        /// The account: its id, or its name exactly as registered.
        user: String,
        /// Read the password from stdin even at a terminal, without asking.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an account: it cannot log in (errno 4, "this account is
    /// disabled"), its login tokens are revoked, and its session is closed
    /// within a few seconds on every node.
    Disable {
        /// The account: its id, or its name exactly as registered.
        user: String,
    },
    /// Enable a disabled account again (it logs in with its password).
    Enable {
        /// The account: its id, or its name exactly as registered.
        user: String,
    },
    /// Delete an account with its messages, friendships and group
    /// memberships; groups it created are disbanded. Its session is closed.
    /// Asks first, unless --yes.
    DeleteUser {
        /// The account: its id, or its name exactly as registered.
        user: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Copy the SQLite database to a new file while servers run (VACUUM
    /// INTO). For MySQL/MariaDB use mysqldump or mariadb-backup.
    Backup {
        /// The file to create; an existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
}

/// Runs one command against the database at `url`; `hash` is the argon2id
/// cost for a new password (the server's flags and defaults).
pub async fn run(cmd: AdminCommand, url: &str, hash: HashCost) -> anyhow::Result<()> {
    if let AdminCommand::Backup { to } = &cmd {
        return backup(url, to).await;
    }
    // The servers do the upkeep; this process only runs one command.
    let opts = StoreOptions {
        background: false,
        ..StoreOptions::default()
    };
    let store = store::open(url, &opts).await?;
    let res = run_on(&*store, cmd, hash).await;
    store.close().await;
    res
}

async fn run_on(store: &dyn Store, cmd: AdminCommand, hash: HashCost) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        AdminCommand::Users { limit, after } => {
            let users = store.list_users(after, limit).await?;
            write!(out, "{}", users_table(&users))?;
            if users.len() as i64 == limit {
                if let Some(last) = users.last() {
                    writeln!(out, "(more: --after {})", last.id)?;
                }
            }
        }
        AdminCommand::ResetPassword {
            user,
            password_stdin,
        } => {
            let (id, name) = resolve(store, &user).await?;
            let password = read_password(&name, password_stdin)?;
            let hashed = Passwords::new(&hash)?
                .hash(password)
                .await
                .map_err(|e| anyhow::anyhow!("cannot hash the password: {}", e.msg))?;
            store
                .set_password(id, &hashed)
                .await
                .map_err(|e| gone(e, id))?;
            writeln!(
                out,
                "password of {name} (id {id}) reset; its login tokens are revoked and its session is closed"
            )?;
        }
        AdminCommand::Disable { user } => {
            let (id, name) = resolve(store, &user).await?;
            if store
                .set_disabled(id, true, unix_now())
                .await
                .map_err(|e| gone(e, id))?
            {
                writeln!(
                    out,
                    "{name} (id {id}) disabled; its login tokens are revoked and its session is closed"
                )?;
            } else {
                writeln!(out, "{name} (id {id}) was disabled already")?;
            }
        }
        AdminCommand::Enable { user } => {
            let (id, name) = resolve(store, &user).await?;
            if store
                .set_disabled(id, false, unix_now())
                .await
                .map_err(|e| gone(e, id))?
            {
                writeln!(
                    out,
                    "{name} (id {id}) enabled; it logs in with its password"
                )?;
            } else {
                writeln!(out, "{name} (id {id}) was not disabled")?;
            }
        }
        AdminCommand::DeleteUser { user, yes } => {
            let (id, name) = resolve(store, &user).await?;
            if !yes && !confirm(&format!(
                "Delete {name} (id {id}), every message they sent, their friendships, group memberships and the groups they created? [y/N] "
            ))? {
                bail!("not deleted");
            }
            let d = store.delete_user(id).await.map_err(|e| gone(e, id))?;
            writeln!(
                out,
                "{name} (id {id}) deleted: {} messages, {} groups disbanded{}",
                d.messages,
                d.groups.len(),
                if d.pending > 0 {
                    format!(
                        "; {} messages not yet delivered to others stay stored until they are, out of every history",
                        d.pending
                    )
                } else {
                    String::new()
                }
            )?;
        }
        AdminCommand::Backup { .. } => unreachable!("handled before opening the store"),
    }
    Ok(())
}

/// The account that `who` names: an id if it is a number, else a name
/// exactly as registered.
async fn resolve(store: &dyn Store, who: &str) -> anyhow::Result<(UserId, String)> {
    if let Ok(id) = who.trim().parse::<UserId>() {
        return match store.find_user(id).await? {
            Some(u) => Ok((u.id, u.name)),
            None => bail!("no user with id {id}"),
        };
    }
    match store.find_user_by_name(who).await? {
        Some(p) => Ok((p.id, p.name)),
        None => bail!("no user named {who:?} (names are matched exactly, as registered)"),
    }
}

/// A store error for a user that [`resolve`] found, worded for operators.
fn gone(e: StoreError, id: UserId) -> anyhow::Error {
    match e {
        StoreError::NotFound => anyhow::anyhow!("no user with id {id} (deleted meanwhile?)"),
        e => e.into(),
    }
}

/// The accounts as a table, with a header.
pub fn users_table(users: &[UserSummary]) -> String {
    let id_w = users
        .iter()
        .map(|u| u.id.to_string().len())
        .max()
        .unwrap_or(0)
        .max(2);
    let name_w = users
        .iter()
        .map(|u| u.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut s = format!(
        "{:>id_w$}  {:<name_w$}  {:<8}  {:<19}  DISABLED AT (UTC)\n",
        "ID", "NAME", "STATE", "REGISTERED (UTC)"
    );
    for u in users {
        let pad = name_w.saturating_sub(u.name.chars().count());
        s.push_str(&format!(
            "{:>id_w$}  {}{}  {:<8}  {:<19}  {}\n",
            u.id,
            u.name,
            " ".repeat(pad),
            if u.disabled_at.is_some() {
                "disabled"
            } else {
                "enabled"
            },
            format_utc(u.created_at),
            u.disabled_at.map(format_utc).unwrap_or_else(|| "-".into()),
        ));
    }
    if users.is_empty() {
        s.push_str("(no users)\n");
    }
    s
}

/// The new password: one line of stdin. At a terminal (unless
/// `from_stdin`) it is asked for twice, not shown.
fn read_password(name: &str, from_stdin: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() && !from_stdin {
        let first = prompt_hidden(&format!("New password for {name}: "))?;
        let again = prompt_hidden("Again: ")?;
        if first != again {
            bail!("the passwords differ; nothing changed");
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    let max = Config::default().limits.password_bytes;
    if password.is_empty() {
        bail!("the password is empty; nothing changed");
    }
    if password.len() > max {
        bail!("the password is longer than {max} bytes; nothing changed");
    }
    Ok(password)
}

/// Asks on stderr and reads a line from the terminal with echo off (`stty`).
fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    let hidden = stty("-echo");
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if hidden {
        stty("echo");
    }
    eprintln!();
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Asks a yes/no question on stderr; a line starting with y is yes.
fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(
        line.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// `admin backup`: SQLite's `VACUUM INTO`, a consistent copy taken in one
/// read transaction while servers go on writing.
async fn backup(url: &str, to: &Path) -> anyhow::Result<()> {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;

    if !url.starts_with("sqlite:") {
        bail!(
            "admin backup copies SQLite databases only; for MySQL/MariaDB use \
             `mysqldump --single-transaction` or `mariadb-backup --backup`"
        );
    }
    if to.exists() {
        bail!("{} exists already; choose a new file", to.display());
    }
    let target = to
        .to_str()
        .with_context(|| format!("{} is not UTF-8", to.display()))?
        .to_owned();
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(false)
        .busy_timeout(std::time::Duration::from_secs(10));
    let mut conn = opts
        .connect()
        .await
        .with_context(|| format!("cannot open {url}"))?;
    let res = sqlx::query("VACUUM INTO ?")
        .bind(&target)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    res.with_context(|| format!("backup to {} failed", to.display()))?;
    // Check the copy before calling it a backup.
    let mut copy = SqliteConnectOptions::new()
        .filename(to)
        .read_only(true)
        .connect()
        .await?;
    let check: String = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_one(&mut copy)
        .await?;
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&mut copy)
        .await?;
    let messages: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
        .fetch_one(&mut copy)
        .await?;
    let _ = copy.close().await;
    if check != "ok" {
        bail!("the copy at {} fails its check: {check}", to.display());
    }
    let bytes = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    println!(
        "backed up to {} ({bytes} bytes: {users} users, {messages} messages)",
        to.display()
    );
    Ok(())
}
