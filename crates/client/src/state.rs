//! What the client keeps between runs, per server and user: `last_seq` (the
//! highest seq below which it holds every message, sent in LOGIN so the
//! server does not replay them) and the level-2 login token.
//!
//! One small JSON file per user, `DIR/<server>/user-<id>.json`, written
//! atomically (temporary file + rename) and readable by the owner only,
//! because the token is a credential. DIR is `--state-dir`, else
//! `$XDG_STATE_HOME/clusterchat`, else `~/.local/state/clusterchat`.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The saved state of one user on one server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserState {
    /// Every message with a seq up to this one is held (and confirmed).
    pub last_seq: i64,
    /// The latest level-2 login token, if any.
    pub token: Option<String>,
}

/// The state files for one server.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// The default state directory from `$XDG_STATE_HOME` (if absolute) or
/// `$HOME`, following the XDG base directory rules.
pub fn default_dir(xdg_state_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    if let Some(x) = xdg_state_home.map(PathBuf::from) {
        if x.is_absolute() {
            return Some(x.join("clusterchat"));
        }
    }
    home.map(PathBuf::from)
        .filter(|h| h.is_absolute())
        .map(|h| h.join(".local").join("state").join("clusterchat"))
}

/// A file-name-safe form of a server address.
pub fn server_key(server: &str) -> String {
    let key: String = server
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() || key.chars().all(|c| c == '.') {
        "_".into()
    } else {
        key
    }
}

impl StateStore {
    /// The store for `server` under `base` (the state directory).
    pub fn new(base: &Path, server: &str) -> StateStore {
        StateStore {
            dir: base.join(server_key(server)),
        }
    }

    /// Where this server's files live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, user: i64) -> PathBuf {
        self.dir.join(format!("user-{user}.json"))
    }

    /// Reads a user's state; a missing or unreadable file gives the default.
    pub fn load(&self, user: i64) -> UserState {
        let Ok(bytes) = fs::read(self.file(user)) else {
            return UserState::default();
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            return UserState::default();
        };
        UserState {
            last_seq: v
                .get("last_seq")
                .and_then(Value::as_i64)
                .filter(|&s| s >= 0)
                .unwrap_or(0),
            token: v
                .get("token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        }
    }

    /// Writes a user's state atomically.
    pub fn save(&self, user: i64, st: &UserState) -> io::Result<()> {
        create_private_dir(&self.dir)?;
        let mut v = json!({ "last_seq": st.last_seq });
        if let Some(t) = &st.token {
            v["token"] = t.clone().into();
        }
        let path = self.file(user);
        let tmp = self
            .dir
            .join(format!(".user-{user}.json.{}.tmp", std::process::id()));
        {
            let mut f = private_file(&tmp)?;
            f.write_all(v.to_string().as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

#[cfg(unix)]
fn private_file(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> io::Result<fs::File> {
    fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_follows_xdg() {
        assert_eq!(
            default_dir(Some("/x/state".into()), Some("/home/a".into())),
            Some(PathBuf::from("/x/state/clusterchat"))
        );
        // A relative XDG_STATE_HOME is ignored, as the spec says.
        assert_eq!(
            default_dir(Some("rel".into()), Some("/home/a".into())),
            Some(PathBuf::from("/home/a/.local/state/clusterchat"))
        );
        assert_eq!(default_dir(None, None), None);
    }

    #[test]
    fn server_keys_are_safe_file_names() {
        assert_eq!(server_key("127.0.0.1:6000"), "127.0.0.1_6000");
        assert_eq!(server_key("[::1]:6000"), "___1__6000");
        assert_eq!(server_key("../../etc"), ".._.._etc");
        assert_eq!(server_key(".."), "_");
        assert_eq!(server_key(""), "_");
    }

    #[test]
    fn save_and_load_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::new(tmp.path(), "127.0.0.1:6000");
        assert_eq!(s.load(5), UserState::default());
        let st = UserState {
            last_seq: 42,
            token: Some("tok".into()),
        };
        s.save(5, &st).unwrap();
        assert_eq!(s.load(5), st);
        assert_eq!(s.load(6), UserState::default());
        s.save(
            5,
            &UserState {
                last_seq: 43,
                token: None,
            },
        )
        .unwrap();
        assert_eq!(
            s.load(5),
            UserState {
                last_seq: 43,
                token: None
            }
        );
        // Another server's state is separate.
        let other = StateStore::new(tmp.path(), "10.0.0.1:6000");
        assert_eq!(other.load(5), UserState::default());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(s.dir().join("user-5.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "state file must be private");
        }
    }

    #[test]
    fn corrupt_files_give_the_default() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::new(tmp.path(), "h:1");
        fs::create_dir_all(s.dir()).unwrap();
        fs::write(s.dir().join("user-1.json"), b"{not json").unwrap();
        assert_eq!(s.load(1), UserState::default());
        fs::write(s.dir().join("user-1.json"), b"{\"last_seq\":-3}").unwrap();
        assert_eq!(s.load(1), UserState::default());
    }
}
