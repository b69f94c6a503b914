//! Store conformance: the behaviour every storage backend must share, written
//! once and run against each backend, so SQLite, MySQL/MariaDB and the
//! in-memory store cannot drift.
//!
//! Each test gets a fresh, empty store: a new memory store, a temporary SQLite file, or (when
//! `CLUSTERCHAT_MYSQL_URL` is set) a uniquely named database created through
//! that URL's account and dropped afterwards. Without the variable the MySQL
//! variants print "skipped: CLUSTERCHAT_MYSQL_URL not set" and pass, unless
//! `CI` is set (non-empty): then they fail, so CI cannot pass them silently
//! (see `scripts/mariadb-test.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterchat::store::{
    self, AccountChange, Appended, Conversation, Fanout, GroupInfo, Member, NewMessage, Person,
    Role, Store, StoreError, StoreOptions, StoredMessage, Target, TokenIssued, TokenRequest,
    UserId, UserRecord, WriteOp, WriteOutcome,
};
use sqlx::Connection as _;

/// No test may take longer than this, whatever the database does.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// A fixed "now" for message times and token expiry.
const NOW: i64 = 1_700_000_000;
/// Enough for every listing in these tests.
const ALL: i64 = 10_000;

// ---------------------------------------------------------------------------
// Fixtures

enum Backend {
    /// The in-memory store: no database to reopen or query around it.
    Memory,
    Sqlite {
        _dir: tempfile::TempDir,
        /// The database file's URL.
        url: String,
    },
    Mysql {
        /// The URL from the environment; its account creates and drops `db`.
        admin_url: String,
        /// This test's scratch database.
        db: String,
        /// `admin_url` pointed at `db`.
        url: String,
    },
}

/// A fresh, empty store plus what it takes to open a second "node" on the
/// same database and to clean up afterwards.
struct Fixture {
    store: Arc<dyn Store>,
    backend: Backend,
    nodes: Mutex<Vec<Arc<dyn Store>>>,
}

impl Fixture {
    fn memory() -> Fixture {
        Fixture {
            store: Arc::new(store::memory::MemoryStore::new()),
            backend: Backend::Memory,
            nodes: Mutex::new(Vec::new()),
        }
    }

    async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("chat.db").display());
        let opts = StoreOptions {
            sqlite_synchronous_full: false,
            ..StoreOptions::default()
        };
        let store = store::open(&url, &opts).await.expect("open sqlite store");
        Fixture {
            store,
            backend: Backend::Sqlite { _dir: dir, url },
            nodes: Mutex::new(Vec::new()),
        }
    }

    /// `None` (after saying so on stderr) when no MySQL URL is configured.
    async fn mysql(test: &str) -> Option<Fixture> {
        let admin_url = match std::env::var("CLUSTERCHAT_MYSQL_URL") {
            Ok(u) if !u.trim().is_empty() => u.trim().to_owned(),
            _ if std::env::var("CI").is_ok_and(|v| !v.is_empty()) => {
                panic!("mysql::{test}: CI is set but CLUSTERCHAT_MYSQL_URL is not (see scripts/mariadb-test.sh)")
            }
            _ => {
                // Straight to stderr: the test harness captures println!.
                let _ = writeln!(
                    std::io::stderr(),
                    "mysql::{test}: skipped: CLUSTERCHAT_MYSQL_URL not set"
                );
                return None;
            }
        };
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let short: String = test.chars().take(32).collect();
        let db = format!(
            "cct_{}_{}_{short}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = admin_conn(&admin_url).await;
        // An identifier cannot be bound; `db` is built here from digits and
        // the test's own name, never from input.
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
            .execute(&mut admin)
            .await
            .expect("drop stale test database");
        sqlx::query(&format!(
            "CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .execute(&mut admin)
        .await
        .expect("create test database");
        let _ = admin.close().await;
        let url = with_database(&admin_url, &db);
        let store = store::open(&url, &StoreOptions::default())
            .await
            .expect("open mysql store");
        Some(Fixture {
            store,
            backend: Backend::Mysql { admin_url, db, url },
            nodes: Mutex::new(Vec::new()),
        })
    }

    /// A second store on the same database, as another server node of a
    /// cluster would open it. SQLite is an embedded, single-node store, so
    /// its "other node" is the same store, used from other tasks; so is the
    /// memory store's.
    async fn another_node(&self) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Memory | Backend::Sqlite { .. } => self.store.clone(),
            Backend::Mysql { url, .. } => {
                let s = store::open(url, &StoreOptions::default())
                    .await
                    .expect("open second node");
                self.nodes.lock().unwrap().push(s.clone());
                s
            }
        }
    }

    /// Runs SQL on the database directly, around the store, and returns the
    /// first column of the rows as integers (none for statements).
    async fn raw_ints(&self, sql: &str) -> Vec<i64> {
        match &self.backend {
            Backend::Memory => panic!("the memory store runs no SQL: {sql}"),
            Backend::Sqlite { url, .. } => {
                let mut c = sqlx::SqliteConnection::connect(url)
                    .await
                    .expect("raw sqlite");
                let out = sqlx::query_scalar(sql).fetch_all(&mut c).await;
                let _ = c.close().await;
                out.unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            Backend::Mysql { url, .. } => {
                let mut c = admin_conn(url).await;
                let out = sqlx::query_scalar(sql).fetch_all(&mut c).await;
                let _ = c.close().await;
                out.unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }

    /// Opens the database again, as a restarted server would.
    async fn reopen(&self) -> Arc<dyn Store> {
        let url = match &self.backend {
            Backend::Memory => panic!("the memory store cannot be reopened"),
            Backend::Sqlite { url, .. } | Backend::Mysql { url, .. } => url,
        };
        let s = store::open(url, &StoreOptions::default())
            .await
            .expect("reopen store");
        self.nodes.lock().unwrap().push(s.clone());
        s
    }

    async fn finish(&self) {
        let nodes: Vec<_> = std::mem::take(&mut *self.nodes.lock().unwrap());
        for n in nodes {
            n.close().await;
        }
        self.store.close().await;
        if let Backend::Mysql { admin_url, db, .. } = &self.backend {
            let mut admin = admin_conn(admin_url).await;
            sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
                .execute(&mut admin)
                .await
                .expect("drop test database");
            let _ = admin.close().await;
        }
    }
}

async fn admin_conn(url: &str) -> sqlx::MySqlConnection {
    let url = match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_owned(),
    };
    sqlx::MySqlConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to CLUSTERCHAT_MYSQL_URL: {e}"))
}

/// `url` with its database path replaced by `db` (query string kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Runs one test body on its own task with a time limit, then cleans the
/// fixture up whether the body passed, panicked or hung.
async fn run<F, Fut>(fx: Fixture, test: F)
where
    F: FnOnce(Arc<Fixture>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let fx = Arc::new(fx);
    let task = tokio::spawn(test(fx.clone()));
    let res = tokio::time::timeout(TEST_TIMEOUT, task).await;
    fx.finish().await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("test task failed: {e}"),
        Err(_) => panic!("test timed out after {TEST_TIMEOUT:?}"),
    }
}

/// Generates one `#[tokio::test]` per backend for every listed test, so
/// every backend always runs the same list. Tests under `sql:` poke the
/// database around the store (rows written before a migration), so they run
/// on the SQL backends only.
macro_rules! conformance {
    (all: [$($name:ident),* $(,)?], sql: [$($sql:ident),* $(,)?]) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(super::Fixture::sqlite().await, super::$name).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $sql() {
                    super::run(super::Fixture::sqlite().await, super::$sql).await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(fx) = super::Fixture::mysql(stringify!($name)).await {
                        super::run(fx, super::$name).await;
                    }
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $sql() {
                    if let Some(fx) = super::Fixture::mysql(stringify!($sql)).await {
                        super::run(fx, super::$sql).await;
                    }
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(super::Fixture::memory(), super::$name).await;
                }
            )*
        }
    };
}

conformance!(all: [
    create_user_ids_grow,
    create_user_name_taken,
    names_unique_by_key,
    find_user_by_exact_name,
    unicode_names_round_trip,
    add_friend_is_mutual,
    remove_friend_both_directions,
    friends_ordered_by_id,
    create_group_makes_creator,
    join_group_rules,
    quit_group_rules,
    disband_group_rules,
    groups_of_lists_members_and_roles,
    empty_batch,
    append_to_user,
    append_to_group,
    failed_ops_do_not_sink_the_batch,
    mids_and_seqs_across_batches,
    concurrent_commits_from_two_nodes,
    cmid_dedupe_across_batches,
    cmid_dedupe_within_batch,
    cmid_dedupe_across_reopen_and_retention,
    ack_cumulative_clamped_monotonic,
    undelivered_pages_in_seq_order,
    history_newest_first,
    unicode_text_round_trips,
    tokens_rotate,
    token_grace_ends,
    tokens_expire,
    token_of_another_user,
    password_login_kills_older_tokens,
    revoke_tokens,
    dead_tokens_are_pruned,
    mixed_batch_keeps_order,
    admin_lists_users_in_pages,
    admin_disable_and_enable,
    admin_reset_password,
    admin_delete_user,
    admin_delete_user_after_their_sender,
    admin_events_in_order,
    confirmed_rows_and_old_messages_are_pruned,
    retention_that_empties_messages_keeps_mids_growing,
], sql: [
    legacy_names_keyed_on_open,
]);

// ---------------------------------------------------------------------------
// Helpers

fn pw(name: &str) -> String {
    format!("$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$hash-of-{name}")
}

/// A name key for tests of the store alone: the store treats keys as opaque
/// text, so any function that differs per name will do. (The server's rules,
/// `names::key`, are tested in `names` and in `tests/names.rs`.)
fn key(name: &str) -> String {
    format!("key of {name}")
}

async fn user(s: &dyn Store, name: &str) -> UserId {
    s.create_user(name, &key(name), &pw(name))
        .await
        .unwrap_or_else(|e| panic!("create_user({name:?}): {e}"))
}

fn sender_name(id: UserId) -> String {
    format!("user-{id}")
}

fn append(sender: UserId, target: Target, body: &str) -> WriteOp {
    append_as(sender, &sender_name(sender), target, body, None)
}

fn append_c(sender: UserId, target: Target, body: &str, cmid: &str) -> WriteOp {
    append_as(sender, &sender_name(sender), target, body, Some(cmid))
}

fn append_as(
    sender: UserId,
    name: &str,
    target: Target,
    body: &str,
    cmid: Option<&str>,
) -> WriteOp {
    WriteOp::Append(NewMessage {
        sender,
        sender_name: name.into(),
        target,
        body: body.into(),
        cmid: cmid.map(str::to_owned),
        time: NOW,
    })
}

async fn commit(s: &dyn Store, ops: Vec<WriteOp>) -> Vec<WriteOutcome> {
    let n = ops.len();
    let out = s.commit(ops).await.expect("commit");
    assert_eq!(out.len(), n, "one outcome per op");
    out
}

/// Commits one append and returns its outcome.
async fn send(s: &dyn Store, op: WriteOp) -> WriteOutcome {
    commit(s, vec![op]).await.remove(0)
}

#[track_caller]
fn appended(o: &WriteOutcome) -> (Arc<StoredMessage>, Vec<(UserId, i64)>) {
    match o {
        WriteOutcome::Append(Ok(Appended::New(Fanout {
            message,
            deliveries,
        }))) => (message.clone(), deliveries.clone()),
        other => panic!("expected Appended, got {other:?}"),
    }
}

#[track_caller]
fn failed(o: &WriteOutcome) -> StoreError {
    match o {
        WriteOutcome::Append(Err(e)) | WriteOutcome::Token(Err(e)) => e.clone(),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[track_caller]
fn duplicate(o: &WriteOutcome) -> i64 {
    match o {
        WriteOutcome::Append(Ok(Appended::Duplicate { mid })) => *mid,
        other => panic!("expected Duplicate, got {other:?}"),
    }
}

#[track_caller]
fn token_user(o: &WriteOutcome) -> UserId {
    match o {
        WriteOutcome::Token(Ok(TokenIssued { user })) => *user,
        other => panic!("expected TokenIssued, got {other:?}"),
    }
}

async fn seqs(s: &dyn Store, u: UserId) -> Vec<i64> {
    s.undelivered(u, 0, ALL)
        .await
        .expect("undelivered")
        .into_iter()
        .map(|(seq, _)| seq)
        .collect()
}

async fn history(s: &dyn Store, conv: Conversation, before: Option<i64>, limit: i64) -> Vec<i64> {
    s.history(conv, before, limit)
        .await
        .expect("history")
        .into_iter()
        .map(|m| m.mid)
        .collect()
}

/// A password login's token: expires at `expires_at`.
fn issue(user: UserId, hash: &str, expires_at: i64) -> WriteOp {
    WriteOp::Token(TokenRequest {
        consume: None,
        user,
        issue: hash.to_owned(),
        expires_at,
        now: NOW,
    })
}

/// A token login by `user` presenting `old`; the new token lives an hour.
fn consume(user: UserId, old: &str, new: &str, now: i64) -> WriteOp {
    WriteOp::Token(TokenRequest {
        consume: Some(old.to_owned()),
        user,
        issue: new.to_owned(),
        expires_at: now + 3600,
        now,
    })
}

/// Asserts that `user` can log in with token `old` at `now` (getting `new`).
#[track_caller]
fn assert_token_ok(o: WriteOutcome, user: UserId, what: &str) {
    match o {
        WriteOutcome::Token(Ok(TokenIssued { user: u })) if u == user => {}
        other => panic!("{what}: expected TokenIssued for {user}, got {other:?}"),
    }
}

#[track_caller]
fn assert_token_bad(o: WriteOutcome, what: &str) {
    match o {
        WriteOutcome::Token(Err(StoreError::BadToken)) => {}
        other => panic!("{what}: expected BadToken, got {other:?}"),
    }
}

fn person(id: UserId, name: &str) -> Person {
    Person {
        id,
        name: name.to_owned(),
    }
}

fn member(id: UserId, name: &str, role: Role) -> Member {
    Member {
        id,
        name: name.to_owned(),
        role,
    }
}

// ---------------------------------------------------------------------------
// Users

async fn create_user_ids_grow(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    assert!(a > 0, "ids are positive");
    assert!(a < b && b < c, "ids grow: {a} {b} {c}");
    assert_eq!(
        s.find_user(b).await.unwrap(),
        Some(UserRecord {
            id: b,
            name: "bob".into(),
            password_hash: pw("bob"),
            disabled: false,
        })
    );
    assert_eq!(s.find_user(c + 1000).await.unwrap(), None);
    assert_eq!(s.find_user(0).await.unwrap(), None);
}

async fn create_user_name_taken(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    assert!(matches!(
        s.create_user("alice", &key("alice"), "other-hash").await,
        Err(StoreError::Exists)
    ));
    // The failed attempt changed nothing.
    assert_eq!(
        s.find_user(a).await.unwrap().unwrap().password_hash,
        pw("alice")
    );
    // The store compares keys, not names: with keys of their own, case and
    // accents make other names.
    let b = user(s, "Alice").await;
    let c = user(s, "alicé").await;
    let d = user(s, "ALICE").await;
    assert!(a < b && b < c && c < d, "ids still grow after a refusal");
    assert_eq!(s.find_user(b).await.unwrap().unwrap().name, "Alice");
}

async fn find_user_by_exact_name(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = s.create_user("Alice", "alice", "h1").await.unwrap();
    let b = s.create_user("李雷", "li lei", "h2").await.unwrap();
    let found = s.find_user_by_name("Alice").await.unwrap().unwrap();
    assert_eq!((found.id, found.name.as_str()), (a, "Alice"));
    assert_eq!(s.find_user_by_name("李雷").await.unwrap().unwrap().id, b);
    // Exact and case-sensitive: no key, no prefix, no look-alike.
    for miss in ["alice", "ALICE", "Alic", "Alice ", "\u{410}lice", "%", ""] {
        assert!(
            s.find_user_by_name(miss).await.unwrap().is_none(),
            "{miss:?} found someone"
        );
    }
}

async fn names_unique_by_key(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = s.create_user("Alice", "alice", "h1").await.unwrap();
    // Another name with a taken key is refused, and changes nothing.
    for name in ["alice", "ALICE", "\u{410}lice"] {
        assert!(
            matches!(
                s.create_user(name, "alice", "h2").await,
                Err(StoreError::Exists)
            ),
            "{name:?}"
        );
    }
    let b = s.create_user("bob", "bob", "h3").await.unwrap();
    assert!(a < b, "ids still grow after refusals");
    assert_eq!(s.find_user(a).await.unwrap().unwrap().name, "Alice");
    assert_eq!(s.find_user(a).await.unwrap().unwrap().password_hash, "h1");
    // Keys of any length fit (NFKC alone can make a key 18 times its name).
    let long = "\u{635}\u{644}\u{649} ".repeat(400);
    let c = s.create_user("carol", &long, "h4").await.unwrap();
    assert!(matches!(
        s.create_user("carol2", &long, "h5").await,
        Err(StoreError::Exists)
    ));
    let longer = format!("{long}x");
    s.create_user("dave", &longer, "h6").await.unwrap();

    // Groups: the same, and disbanding frees the key.
    let g = s.create_group(a, "Team", "team", "").await.unwrap();
    for name in ["team", "TEAM"] {
        assert!(
            matches!(
                s.create_group(b, name, "team", "").await,
                Err(StoreError::Exists)
            ),
            "{name:?}"
        );
    }
    // User and group keys are separate namespaces.
    s.create_group(c, "Alice's", "alice", "").await.unwrap();
    s.disband_group(g, a).await.unwrap();
    let g2 = s.create_group(b, "TEAM", "team", "").await.unwrap();
    assert_eq!(s.groups_of(b).await.unwrap()[0].name, "TEAM");
    assert!(g2 > g);
}

/// Rows written before keys existed (`name_key` NULL) get their keys when
/// the store opens: the oldest of several look-alikes keeps the key, later
/// ones keep their names, and blank-looking ones reserve nothing.
async fn legacy_names_keyed_on_open(fx: Arc<Fixture>) {
    use clusterchat::names;
    for sql in [
        "INSERT INTO users (id, name, password, created_at) VALUES \
         (1, 'Alice', 'h', 0), (2, 'alice', 'h', 0), (3, 'bo\u{200b}b', 'h', 0), \
         (4, '\u{3164}', 'h', 0), (5, 'carol', 'h', 0)",
        "INSERT INTO user_seq (userid) VALUES (1), (2), (3), (4), (5)",
        "INSERT INTO allgroup (id, groupname, groupdesc, creator, created_at) VALUES \
         (1, 'Team', '', 1, 0), (2, 'TEAM', '', 2, 0)",
    ] {
        fx.raw_ints(sql).await;
    }
    let s = fx.reopen().await;
    let keyed = "SELECT id FROM users WHERE name_key IS NOT NULL ORDER BY id";
    assert_eq!(fx.raw_ints(keyed).await, vec![1, 3, 5]);
    let keyed_groups = "SELECT id FROM allgroup WHERE name_key IS NOT NULL ORDER BY id";
    assert_eq!(fx.raw_ints(keyed_groups).await, vec![1]);
    for (name, key) in [("ALICE", "alice"), ("bob", "bob"), ("Carol", "carol")] {
        let key = names::key(key).unwrap();
        assert!(
            matches!(
                s.create_user(name, &key, "h").await,
                Err(StoreError::Exists)
            ),
            "{name:?} should be taken"
        );
    }
    assert!(matches!(
        s.create_group(5, "team", &names::key("team").unwrap(), "")
            .await,
        Err(StoreError::Exists)
    ));
    // Names are untouched.
    assert_eq!(s.find_user(2).await.unwrap().unwrap().name, "alice");
    // Opening again changes nothing and fails on nothing.
    fx.reopen().await;
    assert_eq!(fx.raw_ints(keyed).await, vec![1, 3, 5]);
}

async fn unicode_names_round_trip(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let names = [
        "张三",
        "李四 🐉",
        "😀",
        "👩‍👩‍👧‍👦 family",
        "𝄞 music",
        "Ñandú",
        "é",        // U+00E9
        "e\u{301}", // e + combining acute: another name, byte for byte
        "مرحبا",
        "a\u{200b}b",
    ];
    let mut ids = Vec::new();
    for n in names {
        ids.push(user(s, n).await);
    }
    for (id, n) in ids.iter().zip(names) {
        let rec = s.find_user(*id).await.unwrap().expect("user exists");
        assert_eq!(rec.name, n);
        assert!(matches!(
            s.create_user(n, &key(n), "x").await,
            Err(StoreError::Exists)
        ));
    }
    // Names come back the same way through friends and groups.
    s.add_friend(ids[0], ids[2]).await.unwrap();
    assert_eq!(s.friends(ids[0]).await.unwrap(), vec![person(ids[2], "😀")]);
    let g = s
        .create_group(
            ids[1],
            "龙的传人 🐲",
            &key("龙的传人 🐲"),
            "描述：emoji 🎉 and RTL مرحبا",
        )
        .await
        .unwrap();
    s.join_group(g, ids[3]).await.unwrap();
    assert!(matches!(
        s.create_group(ids[0], "龙的传人 🐲", &key("龙的传人 🐲"), "")
            .await,
        Err(StoreError::Exists)
    ));
    assert_eq!(
        s.groups_of(ids[3]).await.unwrap(),
        vec![GroupInfo {
            id: g,
            name: "龙的传人 🐲".into(),
            desc: "描述：emoji 🎉 and RTL مرحبا".into(),
            members: vec![
                member(ids[1], "李四 🐉", Role::Creator),
                member(ids[3], "👩‍👩‍👧‍👦 family", Role::Normal),
            ],
        }]
    );
}

// ---------------------------------------------------------------------------
// Friends

async fn add_friend_is_mutual(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    s.add_friend(a, b).await.unwrap();
    assert_eq!(s.friends(a).await.unwrap(), vec![person(b, "bob")]);
    assert_eq!(s.friends(b).await.unwrap(), vec![person(a, "alice")]);
    assert_eq!(s.friends(c).await.unwrap(), vec![]);
    assert!(matches!(s.add_friend(a, b).await, Err(StoreError::Exists)));
    assert!(matches!(s.add_friend(b, a).await, Err(StoreError::Exists)));
    assert!(matches!(
        s.add_friend(a, c + 1000).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.friends(a).await.unwrap(), vec![person(b, "bob")]);
}

async fn remove_friend_both_directions(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    s.add_friend(a, b).await.unwrap();
    s.add_friend(c, a).await.unwrap();
    // Removed by the other side: gone for both.
    s.remove_friend(b, a).await.unwrap();
    assert_eq!(s.friends(a).await.unwrap(), vec![person(c, "carol")]);
    assert_eq!(s.friends(b).await.unwrap(), vec![]);
    assert!(matches!(
        s.remove_friend(a, b).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.remove_friend(b, c).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.remove_friend(a, c + 1000).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.friends(c).await.unwrap(), vec![person(a, "alice")]);
    // And they can befriend again.
    s.add_friend(a, b).await.unwrap();
    assert_eq!(
        s.friends(a).await.unwrap(),
        vec![person(b, "bob"), person(c, "carol")]
    );
}

async fn friends_ordered_by_id(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let mut ids = Vec::new();
    for n in ["u1", "u2", "u3", "u4", "u5"] {
        ids.push(user(s, n).await);
    }
    let hub = ids[2];
    for &f in &[ids[4], ids[0], ids[3], ids[1]] {
        if f < hub {
            s.add_friend(f, hub).await.unwrap();
        } else {
            s.add_friend(hub, f).await.unwrap();
        }
    }
    assert_eq!(
        s.friends(hub).await.unwrap(),
        vec![
            person(ids[0], "u1"),
            person(ids[1], "u2"),
            person(ids[3], "u4"),
            person(ids[4], "u5"),
        ]
    );
    assert_eq!(s.friends(ids[4]).await.unwrap(), vec![person(hub, "u3")]);
}

// ---------------------------------------------------------------------------
// Groups

async fn create_group_makes_creator(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let g = s
        .create_group(a, "rustaceans", &key("rustaceans"), "we write rust")
        .await
        .unwrap();
    assert!(g > 0);
    assert_eq!(s.membership(g, a).await.unwrap(), Some(Role::Creator));
    assert_eq!(s.membership(g, b).await.unwrap(), None);
    assert!(matches!(
        s.membership(g + 1000, a).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.create_group(b, "rustaceans", &key("rustaceans"), "another")
            .await,
        Err(StoreError::Exists)
    ));
    let g2 = s
        .create_group(b, "Rustaceans", &key("Rustaceans"), "")
        .await
        .unwrap();
    assert!(g2 > g, "group ids grow");
    assert_eq!(
        s.groups_of(a).await.unwrap(),
        vec![GroupInfo {
            id: g,
            name: "rustaceans".into(),
            desc: "we write rust".into(),
            members: vec![member(a, "alice", Role::Creator)],
        }]
    );
    assert_eq!(s.groups_of(b).await.unwrap()[0].desc, "");
}

async fn join_group_rules(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let g = s.create_group(a, "g", &key("g"), "").await.unwrap();
    assert!(matches!(
        s.join_group(g + 1000, b).await,
        Err(StoreError::NotFound)
    ));
    s.join_group(g, b).await.unwrap();
    assert_eq!(s.membership(g, b).await.unwrap(), Some(Role::Normal));
    assert!(matches!(s.join_group(g, b).await, Err(StoreError::Exists)));
    assert!(matches!(s.join_group(g, a).await, Err(StoreError::Exists)));
    assert_eq!(s.membership(g, a).await.unwrap(), Some(Role::Creator));
}

async fn quit_group_rules(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    let g = s.create_group(a, "g", &key("g"), "").await.unwrap();
    s.join_group(g, b).await.unwrap();
    assert!(matches!(
        s.quit_group(g, a).await,
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        s.quit_group(g, c).await,
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        s.quit_group(g + 1000, b).await,
        Err(StoreError::NotFound)
    ));
    s.quit_group(g, b).await.unwrap();
    assert_eq!(s.membership(g, b).await.unwrap(), None);
    assert_eq!(s.membership(g, a).await.unwrap(), Some(Role::Creator));
    assert!(matches!(
        s.quit_group(g, b).await,
        Err(StoreError::Forbidden)
    ));
    s.join_group(g, b).await.unwrap();
    assert_eq!(s.membership(g, b).await.unwrap(), Some(Role::Normal));
}

async fn disband_group_rules(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    let d = user(s, "dave").await;
    let g = s
        .create_group(b, "book club", &key("book club"), "")
        .await
        .unwrap();
    s.join_group(g, c).await.unwrap();
    s.join_group(g, a).await.unwrap();
    assert!(matches!(
        s.disband_group(g, c).await,
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        s.disband_group(g, d).await,
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        s.disband_group(g + 1000, b).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.disband_group(g, b).await.unwrap(), vec![a, b, c]);
    assert!(matches!(
        s.membership(g, b).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.join_group(g, d).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.disband_group(g, b).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.groups_of(a).await.unwrap(), vec![]);
    assert_eq!(s.groups_of(b).await.unwrap(), vec![]);
    let out = send(s, append(b, Target::Group(g), "anyone?")).await;
    assert_eq!(failed(&out), StoreError::NotFound);
    // The name is free again.
    let g2 = s
        .create_group(d, "book club", &key("book club"), "again")
        .await
        .unwrap();
    assert_ne!(g2, g);
    assert_eq!(s.membership(g2, d).await.unwrap(), Some(Role::Creator));
    assert_eq!(s.membership(g2, b).await.unwrap(), None);
}

async fn groups_of_lists_members_and_roles(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    let d = user(s, "dave").await;
    let e = user(s, "eve").await;
    let g1 = s.create_group(b, "g1", &key("g1"), "first").await.unwrap();
    let g2 = s.create_group(a, "g2", &key("g2"), "second").await.unwrap();
    let g3 = s
        .create_group(c, "g3", &key("g3"), "not alice's")
        .await
        .unwrap();
    s.join_group(g1, c).await.unwrap();
    s.join_group(g1, a).await.unwrap();
    s.join_group(g2, d).await.unwrap();
    s.join_group(g3, d).await.unwrap();
    assert_eq!(
        s.groups_of(a).await.unwrap(),
        vec![
            GroupInfo {
                id: g1,
                name: "g1".into(),
                desc: "first".into(),
                members: vec![
                    member(a, "alice", Role::Normal),
                    member(b, "bob", Role::Creator),
                    member(c, "carol", Role::Normal),
                ],
            },
            GroupInfo {
                id: g2,
                name: "g2".into(),
                desc: "second".into(),
                members: vec![
                    member(a, "alice", Role::Creator),
                    member(d, "dave", Role::Normal),
                ],
            },
        ]
    );
    let of_d: Vec<_> = s.groups_of(d).await.unwrap().iter().map(|g| g.id).collect();
    assert_eq!(of_d, vec![g2, g3]);
    assert_eq!(s.groups_of(e).await.unwrap(), vec![]);
}

// ---------------------------------------------------------------------------
// Messages

async fn empty_batch(fx: Arc<Fixture>) {
    let s = &*fx.store;
    assert!(s.commit(Vec::new()).await.unwrap().is_empty());
    let a = user(s, "alice").await;
    assert_eq!(s.acked_seq(a).await.unwrap(), 0);
    assert!(s.undelivered(a, 0, ALL).await.unwrap().is_empty());
    assert!(history(s, Conversation::Direct(a, a), None, 50)
        .await
        .is_empty());
}

async fn append_to_user(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    let out = commit(
        s,
        vec![
            append(a, Target::User(b), "one"),
            append(c, Target::User(b), "two"),
            append(b, Target::User(a), "three"),
        ],
    )
    .await;
    let (m1, d1) = appended(&out[0]);
    let (m2, d2) = appended(&out[1]);
    let (m3, d3) = appended(&out[2]);
    assert_eq!(d1, vec![(b, 1)]);
    assert_eq!(d2, vec![(b, 2)]);
    assert_eq!(d3, vec![(a, 1)]);
    assert!(
        m1.mid > 0 && m1.mid < m2.mid && m2.mid < m3.mid,
        "mids grow"
    );
    assert_eq!(
        *m1,
        StoredMessage {
            mid: m1.mid,
            sender: a,
            sender_name: sender_name(a).into(),
            target: Target::User(b),
            body: "one".into(),
            time: NOW,
        }
    );
    let (m4, d4) = appended(&send(s, append(a, Target::User(b), "four")).await);
    assert!(m4.mid > m3.mid, "mids grow across batches");
    assert_eq!(d4, vec![(b, 3)]);
    let (_, d5) = appended(&send(s, append(a, Target::User(c), "five")).await);
    assert_eq!(d5, vec![(c, 1)], "every user's seqs start at 1");
    // A message to oneself is an ordinary message.
    let (_, d6) = appended(&send(s, append(a, Target::User(a), "note to self")).await);
    assert_eq!(d6, vec![(a, 2)]);

    assert_eq!(
        s.undelivered(b, 0, ALL).await.unwrap(),
        vec![(1, (*m1).clone()), (2, (*m2).clone()), (3, (*m4).clone())]
    );
    assert_eq!(seqs(s, a).await, vec![1, 2]);
    assert_eq!(s.undelivered(a, 0, ALL).await.unwrap()[0].1, *m3);
    assert_eq!(s.acked_seq(b).await.unwrap(), 0);
}

async fn append_to_group(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    let d = user(s, "dave").await;
    let g = s.create_group(a, "g", &key("g"), "").await.unwrap();
    s.join_group(g, b).await.unwrap();
    s.join_group(g, c).await.unwrap();
    let out = commit(
        s,
        vec![
            append(b, Target::Group(g), "from b"),
            append(a, Target::Group(g), "from a"),
            append(d, Target::Group(g), "outsider"),
            append(a, Target::Group(g + 1000), "nowhere"),
        ],
    )
    .await;
    let (m1, d1) = appended(&out[0]);
    let (m2, d2) = appended(&out[1]);
    assert_eq!(d1, vec![(a, 1), (c, 1)], "the sender gets no copy");
    assert_eq!(d2, vec![(b, 1), (c, 2)]);
    assert_eq!(m1.target, Target::Group(g));
    assert_eq!(m2.sender, a);
    assert_eq!(failed(&out[2]), StoreError::NotMember);
    assert_eq!(failed(&out[3]), StoreError::NotFound);
    assert_eq!(
        s.undelivered(c, 0, ALL).await.unwrap(),
        vec![(1, (*m1).clone()), (2, (*m2).clone())]
    );
    assert_eq!(seqs(s, d).await, Vec::<i64>::new());
    assert_eq!(
        history(s, Conversation::Group(g), None, 50).await,
        vec![m2.mid, m1.mid]
    );
    // A group of one: stored, delivered to nobody.
    let solo = s.create_group(d, "solo", &key("solo"), "").await.unwrap();
    let (m3, d3) = appended(&send(s, append(d, Target::Group(solo), "echo")).await);
    assert!(d3.is_empty());
    assert!(m3.mid > m2.mid);
    assert_eq!(
        history(s, Conversation::Group(solo), None, 50).await,
        vec![m3.mid]
    );
    // After quitting, no more copies and no more sending.
    s.quit_group(g, c).await.unwrap();
    let out = commit(
        s,
        vec![
            append(a, Target::Group(g), "c left"),
            append(c, Target::Group(g), "let me back"),
        ],
    )
    .await;
    assert_eq!(appended(&out[0]).1, vec![(b, 2)]);
    assert_eq!(failed(&out[1]), StoreError::NotMember);
}

async fn failed_ops_do_not_sink_the_batch(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let out = commit(
        s,
        vec![
            append(a, Target::User(b), "x"),
            append(a, Target::User(b + 1000), "to nobody"),
            append(a, Target::Group(12345), "to no group"),
            WriteOp::Ack { user: b, seq: 1 },
            consume(a, "no-such-token", "t-new", NOW),
            append(a, Target::User(b), "y"),
        ],
    )
    .await;
    let (mx, dx) = appended(&out[0]);
    assert_eq!(failed(&out[1]), StoreError::NotFound);
    assert_eq!(failed(&out[2]), StoreError::NotFound);
    assert!(matches!(out[3], WriteOutcome::Acked));
    assert_eq!(failed(&out[4]), StoreError::BadToken);
    let (my, dy) = appended(&out[5]);
    assert_eq!(dx, vec![(b, 1)]);
    assert_eq!(dy, vec![(b, 2)], "failed ops take no seq");
    assert!(my.mid > mx.mid);
    assert_eq!(s.acked_seq(b).await.unwrap(), 1);
    assert_eq!(
        s.undelivered(b, 0, ALL).await.unwrap(),
        vec![(2, (*my).clone())]
    );
    assert_eq!(
        history(s, Conversation::Direct(a, b), None, 50).await,
        vec![my.mid, mx.mid]
    );
}

async fn mids_and_seqs_across_batches(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    let g = s.create_group(a, "g", &key("g"), "").await.unwrap();
    s.join_group(g, b).await.unwrap();
    s.join_group(g, c).await.unwrap();
    let mut mids = Vec::new();
    let mut got: BTreeMap<UserId, Vec<(i64, i64)>> = BTreeMap::new();
    for i in 0..10 {
        let mut ops = vec![append(a, Target::User(b), &format!("d{i}"))];
        for j in 0..i % 4 {
            let from = [a, b, c][j % 3];
            ops.push(append(from, Target::Group(g), &format!("g{i}.{j}")));
        }
        ops.push(append(c, Target::User(a), &format!("r{i}")));
        for o in commit(s, ops).await {
            let (m, ds) = appended(&o);
            mids.push(m.mid);
            for (u, seq) in ds {
                got.entry(u).or_default().push((seq, m.mid));
            }
        }
    }
    assert!(
        mids.windows(2).all(|w| w[0] < w[1]),
        "mids strictly grow in commit order: {mids:?}"
    );
    for u in [a, b, c] {
        let mine = &got[&u];
        let expect: Vec<i64> = (1..=mine.len() as i64).collect();
        let seq_list: Vec<i64> = mine.iter().map(|p| p.0).collect();
        assert_eq!(seq_list, expect, "user {u}: gap-free seqs from 1");
        let stored: Vec<(i64, i64)> = s
            .undelivered(u, 0, ALL)
            .await
            .unwrap()
            .into_iter()
            .map(|(seq, m)| (seq, m.mid))
            .collect();
        assert_eq!(
            &stored, mine,
            "user {u}: the inbox holds what commit reported"
        );
    }
}

async fn concurrent_commits_from_two_nodes(fx: Arc<Fixture>) {
    let s = fx.store.clone();
    let other = fx.another_node().await;
    let a = user(&*s, "alice").await;
    let b = user(&*s, "bob").await;
    let c = user(&*s, "carol").await;
    let d = user(&*s, "dave").await;
    let g = s.create_group(a, "g", &key("g"), "").await.unwrap();
    for u in [b, c, d] {
        s.join_group(g, u).await.unwrap();
    }
    const TASKS: usize = 4;
    const BATCHES: usize = 12;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let node = if t % 2 == 0 { s.clone() } else { other.clone() };
        let users = [a, b, c, d];
        tasks.push(tokio::spawn(async move {
            let me = users[t];
            let mut seen = Vec::new();
            for i in 0..BATCHES {
                let ops = vec![
                    append(
                        me,
                        Target::User(users[(t + 1) % 4]),
                        &format!("{t}/{i} direct"),
                    ),
                    append(me, Target::Group(g), &format!("{t}/{i} group")),
                    append_c(
                        me,
                        Target::User(b),
                        &format!("{t}/{i} to b"),
                        &format!("{t}-{i}"),
                    ),
                    WriteOp::Ack {
                        user: me,
                        seq: i as i64,
                    },
                ];
                let out = node.commit(ops).await.expect("concurrent commit");
                let mut batch = Vec::new();
                for o in &out[..3] {
                    let (m, ds) = appended(o);
                    batch.push((m.mid, ds));
                }
                seen.push(batch);
            }
            seen
        }));
    }
    let mut all_mids = BTreeSet::new();
    let mut got: BTreeMap<UserId, Vec<(i64, i64)>> = BTreeMap::new();
    let mut total = 0;
    for t in tasks {
        let seen = t.await.expect("task");
        let mut last = 0;
        for batch in seen {
            for (mid, ds) in batch {
                assert!(mid > last, "a node's later commits get higher mids");
                last = mid;
                assert!(all_mids.insert(mid), "mid {mid} handed out twice");
                total += 1;
                for (u, seq) in ds {
                    got.entry(u).or_default().push((seq, mid));
                }
            }
        }
    }
    assert_eq!(total, TASKS * BATCHES * 3);
    for (u, mut mine) in got {
        mine.sort_unstable();
        let seq_list: Vec<i64> = mine.iter().map(|p| p.0).collect();
        let expect: Vec<i64> = (1..=mine.len() as i64).collect();
        assert_eq!(seq_list, expect, "user {u}: unique, gap-free seqs");
        assert!(
            mine.windows(2).all(|w| w[0].1 < w[1].1),
            "user {u}: seq order is mid order"
        );
        let stored: Vec<(i64, i64)> = other
            .undelivered(u, 0, ALL)
            .await
            .unwrap()
            .into_iter()
            .map(|(seq, m)| (seq, m.mid))
            .collect();
        // Acks may have confirmed a prefix; what is left must match.
        let acked = s.acked_seq(u).await.unwrap();
        let left: Vec<(i64, i64)> = mine.into_iter().filter(|p| p.0 > acked).collect();
        assert_eq!(stored, left, "user {u}: inbox matches commit outcomes");
    }
    assert_eq!(
        history(&*s, Conversation::Group(g), None, ALL).await.len(),
        TASKS * BATCHES
    );
}

async fn cmid_dedupe_across_batches(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    let (m1, _) = appended(&send(s, append_c(a, Target::User(b), "hi", "c-1")).await);
    // A retry after a lost ACK: the first mid, nothing stored.
    let dup = send(s, append_c(a, Target::User(b), "hi", "c-1")).await;
    assert_eq!(duplicate(&dup), m1.mid);
    // The cmid reused for another text or another target: refused, nothing
    // stored (PROTOCOL.md, "Sending exactly once").
    let reused = send(s, append_c(a, Target::User(b), "hi (edited)", "c-1")).await;
    assert_eq!(failed(&reused), StoreError::CmidReused);
    let reused = send(s, append_c(a, Target::User(c), "hi", "c-1")).await;
    assert_eq!(failed(&reused), StoreError::CmidReused);
    let reused = send(s, append_c(a, Target::Group(b), "hi", "c-1")).await;
    assert_eq!(failed(&reused), StoreError::CmidReused);
    // Another sender's cmid is another message.
    let (m2, d2) = appended(&send(s, append_c(c, Target::User(b), "hi", "c-1")).await);
    assert_eq!(d2, vec![(b, 2)]);
    let (m3, _) = appended(&send(s, append_c(a, Target::User(b), "next", "c-2")).await);
    assert!(m1.mid < m2.mid && m2.mid < m3.mid);
    assert_eq!(seqs(s, b).await, vec![1, 2, 3]);
    assert_eq!(seqs(s, c).await, Vec::<i64>::new());
    let h = s
        .history(Conversation::Direct(a, b), None, 50)
        .await
        .unwrap();
    let bodies: Vec<&str> = h.iter().map(|m| &*m.body).collect();
    assert_eq!(bodies, vec!["next", "hi"]);
    // Still a duplicate in a later batch that mixes in new messages.
    let out = commit(
        s,
        vec![
            append_c(a, Target::User(b), "next", "c-2"),
            append_c(a, Target::User(b), "fresh", "c-3"),
            append_c(a, Target::User(b), "fresh!", "c-3"),
        ],
    )
    .await;
    assert_eq!(duplicate(&out[0]), m3.mid);
    assert_eq!(appended(&out[1]).1, vec![(b, 4)]);
    assert_eq!(
        failed(&out[2]),
        StoreError::CmidReused,
        "within one batch too"
    );
    assert_eq!(seqs(s, b).await, vec![1, 2, 3, 4]);
}

/// A cmid is found however long ago it was stored: after many later
/// messages, by a store opened afterwards (a restarted server, which SQLite
/// serves from its table of indexed cmids rather than memory), and in a
/// batch that both retries and reuses. Retention frees the cmids of the
/// messages it deletes, and only those.
async fn cmid_dedupe_across_reopen_and_retention(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let first = appended(&send(s, append_c(a, Target::User(b), "first", "k-0")).await)
        .0
        .mid;
    for round in 1..=3 {
        let ops = (0..50)
            .map(|i| append_c(a, Target::User(b), "later", &format!("k-{round}-{i}")))
            .collect();
        commit(s, ops).await;
    }
    let again = send(s, append_c(a, Target::User(b), "first", "k-0")).await;
    assert_eq!(duplicate(&again), first);
    let check = move |s: Arc<dyn Store>| async move {
        let out = commit(
            &*s,
            vec![
                append_c(a, Target::User(b), "first", "k-0"),
                append_c(a, Target::User(b), "later", "k-2-7"),
                append_c(a, Target::User(b), "other", "k-3-9"),
            ],
        )
        .await;
        assert_eq!(duplicate(&out[0]), first);
        assert!(duplicate(&out[1]) > first);
        assert_eq!(failed(&out[2]), StoreError::CmidReused);
    };
    check(fx.store.clone()).await;
    if !matches!(fx.backend, Backend::Memory) {
        let other = fx.reopen().await;
        check(other.clone()).await;
        let (m, _) = appended(&send(&*other, append_c(a, Target::User(b), "new", "k-4")).await);
        // The first store sees what the other stored.
        assert_eq!(
            duplicate(&send(s, append_c(a, Target::User(b), "new", "k-4")).await),
            m.mid
        );
    }
    // Bob confirms everything; retention deletes the oldest 51 messages.
    let top = seqs(s, b).await.last().copied().unwrap();
    commit(s, vec![WriteOp::Ack { user: b, seq: top }]).await;
    s.prune_delivered(0, 100, ALL).await.unwrap();
    let later = chat_protocol::time::unix_now() + 10;
    assert_eq!(s.prune_messages(later, 51).await.unwrap(), 51);
    // Their cmids are free: the same key with another text is a new message.
    let (fresh, _) = appended(&send(s, append_c(a, Target::User(b), "reborn", "k-0")).await);
    assert!(fresh.mid > first);
    let (_, _) = appended(&send(s, append_c(a, Target::User(b), "reborn", "k-1-49")).await);
    assert_eq!(
        duplicate(&send(s, append_c(a, Target::User(b), "reborn", "k-0")).await),
        fresh.mid
    );
    // A kept message's cmid still holds.
    assert_eq!(
        failed(&send(s, append_c(a, Target::User(b), "other", "k-2-0")).await),
        StoreError::CmidReused
    );
}

async fn cmid_dedupe_within_batch(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let out = commit(
        s,
        vec![
            append_c(a, Target::User(b), "x", "k"),
            append_c(a, Target::User(b), "x", "k"),
            append(a, Target::User(b), "no cmid"),
            append(a, Target::User(b), "no cmid"),
            append_c(a, Target::User(b + 1000), "lost", "z"),
            append_c(a, Target::User(b), "found", "z"),
        ],
    )
    .await;
    let (m, d) = appended(&out[0]);
    assert_eq!(d, vec![(b, 1)]);
    assert_eq!(duplicate(&out[1]), m.mid);
    let (n1, _) = appended(&out[2]);
    let (n2, _) = appended(&out[3]);
    assert_ne!(n1.mid, n2.mid, "without a cmid nothing is deduplicated");
    // A failed op stores nothing, so its cmid stays free.
    assert_eq!(failed(&out[4]), StoreError::NotFound);
    let (z, dz) = appended(&out[5]);
    assert_eq!(dz, vec![(b, 4)]);
    assert_eq!(seqs(s, b).await, vec![1, 2, 3, 4]);
    let dup = send(s, append_c(a, Target::User(b), "found", "z")).await;
    assert_eq!(duplicate(&dup), z.mid);
}

async fn ack_cumulative_clamped_monotonic(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    for i in 0..3 {
        send(s, append(a, Target::User(b), &format!("m{i}"))).await;
    }
    assert_eq!(s.acked_seq(b).await.unwrap(), 0);
    let out = commit(s, vec![WriteOp::Ack { user: b, seq: 2 }]).await;
    assert!(matches!(out[0], WriteOutcome::Acked));
    assert_eq!(s.acked_seq(b).await.unwrap(), 2);
    assert_eq!(
        seqs(s, b).await,
        vec![3],
        "confirmed messages are delivered"
    );
    commit(s, vec![WriteOp::Ack { user: b, seq: 1 }]).await;
    assert_eq!(s.acked_seq(b).await.unwrap(), 2, "acks never go back");
    commit(s, vec![WriteOp::Ack { user: b, seq: 100 }]).await;
    assert_eq!(s.acked_seq(b).await.unwrap(), 3, "clamped to the last seq");
    let (_, d) = appended(&send(s, append(a, Target::User(b), "m3")).await);
    assert_eq!(d, vec![(b, 4)]);
    assert_eq!(s.acked_seq(b).await.unwrap(), 3);
    assert_eq!(seqs(s, b).await, vec![4]);
    // Several acks in one batch: the highest wins, in any order.
    for _ in 0..2 {
        send(s, append(a, Target::User(b), "more")).await;
    }
    commit(
        s,
        vec![
            WriteOp::Ack { user: b, seq: 5 },
            WriteOp::Ack { user: b, seq: 4 },
        ],
    )
    .await;
    assert_eq!(s.acked_seq(b).await.unwrap(), 5);
    // An ack in the batch that stores the message it confirms.
    let out = commit(
        s,
        vec![
            append(a, Target::User(b), "last"),
            WriteOp::Ack { user: b, seq: 99 },
        ],
    )
    .await;
    assert_eq!(appended(&out[0]).1, vec![(b, 7)]);
    assert_eq!(s.acked_seq(b).await.unwrap(), 7);
    assert!(s.undelivered(b, 0, ALL).await.unwrap().is_empty());
    // A user with no messages cannot confirm any.
    commit(s, vec![WriteOp::Ack { user: a, seq: 10 }]).await;
    assert_eq!(s.acked_seq(a).await.unwrap(), 0);
    commit(s, vec![WriteOp::Ack { user: b, seq: 0 }]).await;
    assert_eq!(s.acked_seq(b).await.unwrap(), 7);
    assert_eq!(s.acked_seq(b + 1000).await.unwrap(), 0);
}

async fn undelivered_pages_in_seq_order(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    let g = s.create_group(c, "g", &key("g"), "").await.unwrap();
    s.join_group(g, b).await.unwrap();
    commit(
        s,
        vec![
            append(a, Target::User(b), "1"),
            append(c, Target::Group(g), "2"),
            append(c, Target::User(b), "3"),
        ],
    )
    .await;
    send(s, append(a, Target::User(b), "4")).await;
    commit(
        s,
        vec![
            append(c, Target::Group(g), "5"),
            append(a, Target::User(c), "not for b"),
            append(a, Target::User(b), "6"),
            append(c, Target::User(b), "7"),
        ],
    )
    .await;
    let page = |after, limit| async move {
        s.undelivered(b, after, limit)
            .await
            .unwrap()
            .into_iter()
            .map(|(seq, m)| (seq, m.body.to_string()))
            .collect::<Vec<_>>()
    };
    let p = |v: &[(i64, &str)]| -> Vec<(i64, String)> {
        v.iter().map(|(s, b)| (*s, b.to_string())).collect()
    };
    assert_eq!(page(0, 3).await, p(&[(1, "1"), (2, "2"), (3, "3")]));
    assert_eq!(page(3, 3).await, p(&[(4, "4"), (5, "5"), (6, "6")]));
    assert_eq!(page(6, 3).await, p(&[(7, "7")]));
    assert_eq!(page(7, 3).await, vec![]);
    assert_eq!(page(0, 0).await, vec![]);
    let all = s.undelivered(b, 0, ALL).await.unwrap();
    assert!(
        all.windows(2).all(|w| w[0].1.mid < w[1].1.mid),
        "seq order is mid order"
    );
    // Confirmed messages are left out whatever `after` says.
    commit(s, vec![WriteOp::Ack { user: b, seq: 4 }]).await;
    assert_eq!(page(0, 10).await, p(&[(5, "5"), (6, "6"), (7, "7")]));
    assert_eq!(page(2, 10).await, p(&[(5, "5"), (6, "6"), (7, "7")]));
    assert_eq!(page(5, 10).await, p(&[(6, "6"), (7, "7")]));
}

async fn confirmed_rows_and_old_messages_are_pruned(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    commit(
        s,
        vec![
            append(a, Target::User(b), "1"),
            append(a, Target::User(b), "2"),
            append(a, Target::User(b), "3"),
            append(a, Target::User(c), "x"),
        ],
    )
    .await;
    commit(s, vec![WriteOp::Ack { user: b, seq: 2 }]).await;
    let hist = |conv| async move {
        let page = s.history(conv, None, 50).await.unwrap();
        page.into_iter()
            .map(|m| m.body.to_string())
            .collect::<Vec<_>>()
    };
    let bodies = |v: Vec<(i64, StoredMessage)>| {
        v.into_iter()
            .map(|(q, m)| (q, m.body.to_string()))
            .collect::<Vec<_>>()
    };
    // Only confirmed rows go; a step is bounded per user.
    assert_eq!(s.prune_delivered(0, 100, 1).await.unwrap(), (1, None));
    assert_eq!(s.prune_delivered(0, 100, 100).await.unwrap(), (1, None));
    assert_eq!(s.prune_delivered(0, 100, 100).await.unwrap(), (0, None));
    assert_eq!(
        bodies(s.undelivered(b, 0, ALL).await.unwrap()),
        vec![(3, "3".to_owned())]
    );
    // Paging through users: a full page names where to go on.
    let (_, next) = s.prune_delivered(0, 1, 100).await.unwrap();
    assert!(next.is_some(), "a full page of users says where it stopped");

    // Retention: nothing older than the cutoff... yet.
    assert_eq!(s.prune_messages(0, 100).await.unwrap(), 0);
    // Everything is old now, but only messages below the oldest unconfirmed
    // one may go: bob's 3 is still waiting, so only 1 and 2 go.
    let later = chat_protocol::time::unix_now() + 10;
    assert_eq!(s.prune_messages(later, 100).await.unwrap(), 2);
    assert_eq!(hist(Conversation::Direct(a, b)).await, vec!["3".to_owned()]);
    commit(s, vec![WriteOp::Ack { user: b, seq: 3 }]).await;
    s.prune_delivered(0, 100, 100).await.unwrap();
    // Carol has not confirmed "x": it stays, and so does all after it.
    assert_eq!(s.prune_messages(later, 100).await.unwrap(), 1);
    assert!(hist(Conversation::Direct(a, b)).await.is_empty());
    assert_eq!(
        bodies(s.undelivered(c, 0, ALL).await.unwrap()),
        vec![(1, "x".to_owned())]
    );
    assert_eq!(hist(Conversation::Direct(a, c)).await, vec!["x".to_owned()]);
    // New messages still get new mids and seqs.
    send(s, append(a, Target::User(b), "4")).await;
    assert_eq!(
        bodies(s.undelivered(b, 0, ALL).await.unwrap()),
        vec![(4, "4".to_owned())]
    );
}

async fn history_newest_first(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    let g = s.create_group(a, "g", &key("g"), "").await.unwrap();
    s.join_group(g, b).await.unwrap();
    let out = commit(
        s,
        vec![
            append(a, Target::User(b), "1"),
            append(b, Target::User(a), "2"),
            append(a, Target::User(c), "x"),
        ],
    )
    .await;
    let m1 = appended(&out[0]).0;
    let m2 = appended(&out[1]).0;
    let mx = appended(&out[2]).0;
    let m3 = appended(&send(s, append(a, Target::User(b), "3")).await).0;
    let gm = appended(&send(s, append(b, Target::Group(g), "group")).await).0;
    let m4 = appended(&send(s, append(b, Target::User(a), "4")).await).0;

    let ab = Conversation::Direct(a, b);
    let full = s.history(ab, None, 50).await.unwrap();
    assert_eq!(
        full,
        vec![(*m4).clone(), (*m3).clone(), (*m2).clone(), (*m1).clone()]
    );
    assert_eq!(
        s.history(Conversation::Direct(b, a), None, 50)
            .await
            .unwrap(),
        full,
        "both directions share one history"
    );
    assert_eq!(history(s, ab, None, 2).await, vec![m4.mid, m3.mid]);
    assert_eq!(history(s, ab, Some(m3.mid), 50).await, vec![m2.mid, m1.mid]);
    assert_eq!(history(s, ab, Some(m3.mid), 1).await, vec![m2.mid]);
    assert_eq!(history(s, ab, Some(m1.mid), 50).await, Vec::<i64>::new());
    assert_eq!(
        history(s, ab, Some(gm.mid), 50).await,
        vec![m3.mid, m2.mid, m1.mid]
    );
    assert_eq!(history(s, ab, None, 0).await, Vec::<i64>::new());
    // Paging with `before` walks the whole conversation once.
    let mut walked = Vec::new();
    let mut before = None;
    loop {
        let page = history(s, ab, before, 3).await;
        if page.is_empty() {
            break;
        }
        before = page.last().copied();
        walked.extend(page);
    }
    assert_eq!(walked, vec![m4.mid, m3.mid, m2.mid, m1.mid]);
    assert_eq!(
        history(s, Conversation::Direct(c, a), None, 50).await,
        vec![mx.mid]
    );
    assert_eq!(
        history(s, Conversation::Direct(b, c), None, 50).await,
        Vec::<i64>::new()
    );
    assert_eq!(
        s.history(Conversation::Group(g), None, 50).await.unwrap(),
        vec![(*gm).clone()]
    );
    assert_eq!(
        history(s, Conversation::Group(g + 1000), None, 50).await,
        Vec::<i64>::new()
    );
}

async fn unicode_text_round_trips(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "小明 🚀").await;
    let b = user(s, "Zoë").await;
    let g = s.create_group(a, "群聊", &key("群聊"), "").await.unwrap();
    s.join_group(g, b).await.unwrap();
    let big: String = "汉字😀é".repeat(16 * 1024 / 12); // 12 bytes each: just under 16 KiB
    let texts = [
        "你好，世界！",
        "emoji 😀👍🏽🇨🇳 and ZWJ 👩‍💻",
        "quotes ' \" \\ ` and %_ wildcards; DROP TABLE users; --",
        "  spaces kept  ",
        "line\nbreaks\tand tabs",
        big.as_str(),
    ];
    let mut ops = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let cmid = format!("{i}-é-😀");
        ops.push(append_as(a, "小明 🚀", Target::User(b), t, Some(&cmid)));
    }
    ops.push(append_as(
        b,
        "Zoë",
        Target::Group(g),
        "组消息 🎉",
        Some("cmid-é-😀"),
    ));
    let out = commit(s, ops).await;
    let stored: Vec<Arc<StoredMessage>> = out.iter().map(|o| appended(o).0).collect();
    let h = s
        .history(Conversation::Direct(a, b), None, 50)
        .await
        .unwrap();
    let mut bodies: Vec<&str> = h.iter().map(|m| &*m.body).collect();
    bodies.reverse();
    assert_eq!(bodies, texts.to_vec());
    assert!(h.iter().all(|m| &*m.sender_name == "小明 🚀"));
    let inbox = s.undelivered(b, 0, ALL).await.unwrap();
    assert_eq!(inbox.len(), texts.len());
    for ((_, m), want) in inbox.iter().zip(&stored) {
        assert_eq!(m, &**want);
    }
    let gh = s.history(Conversation::Group(g), None, 50).await.unwrap();
    assert_eq!(&*gh[0].body, "组消息 🎉");
    assert_eq!(&*gh[0].sender_name, "Zoë");
    // Unicode cmids dedupe exactly.
    let dup = send(
        s,
        append_as(b, "Zoë", Target::Group(g), "组消息 🎉", Some("cmid-é-😀")),
    )
    .await;
    assert_eq!(duplicate(&dup), stored[texts.len()].mid);
    let other = send(
        s,
        append_as(
            b,
            "Zoë",
            Target::Group(g),
            "again",
            Some("cmid-e\u{301}-😀"),
        ),
    )
    .await;
    appended(&other);
}

// ---------------------------------------------------------------------------
// Tokens

async fn tokens_rotate(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let out = commit(
        s,
        vec![issue(a, "h1", NOW + 1000), issue(b, "hb", NOW + 1000)],
    )
    .await;
    assert_eq!(token_user(&out[0]), a);
    assert_eq!(token_user(&out[1]), b);
    // Every token login hands out a new token, to the token's owner.
    assert_token_ok(send(s, consume(a, "h1", "h2", NOW + 1)).await, a, "h1");
    // The ack carrying h2 was lost: h1 still works, within its grace.
    assert_token_ok(
        send(s, consume(a, "h1", "h3", NOW + 2)).await,
        a,
        "h1 again",
    );
    // Using h3 kills everything alice was given before it: h1 and h2.
    assert_token_ok(send(s, consume(a, "h3", "h4", NOW + 3)).await, a, "h3");
    assert_token_bad(send(s, consume(a, "h1", "x", NOW + 4)).await, "h1 after h3");
    assert_token_bad(send(s, consume(a, "h2", "x", NOW + 4)).await, "h2 after h3");
    // h3 is in its grace now; h4 works, and then h3 is gone too.
    assert_token_ok(
        send(s, consume(a, "h3", "h5", NOW + 5)).await,
        a,
        "h3 again",
    );
    assert_token_ok(send(s, consume(a, "h5", "h6", NOW + 6)).await, a, "h5");
    assert_token_bad(send(s, consume(a, "h3", "x", NOW + 7)).await, "h3 after h5");
    assert_token_bad(send(s, consume(a, "h4", "x", NOW + 7)).await, "h4 after h5");
    // None of this touched bob's token.
    assert_token_ok(send(s, consume(b, "hb", "hb2", NOW + 8)).await, b, "hb");
    assert_token_bad(
        send(s, consume(a, "never-issued", "x", NOW)).await,
        "made up",
    );
    // Issue and consume in one batch: ops run in order.
    let out = commit(
        s,
        vec![
            issue(a, "h7", NOW + 1000),
            consume(a, "h7", "h8", NOW + 10),
            consume(a, "h8", "h9", NOW + 10),
            consume(a, "h7", "x", NOW + 10),
        ],
    )
    .await;
    assert_eq!(token_user(&out[0]), a);
    assert_eq!(token_user(&out[1]), a);
    assert_eq!(token_user(&out[2]), a);
    assert_eq!(
        failed(&out[3]),
        StoreError::BadToken,
        "h8 was used after h7"
    );
    assert_token_ok(send(s, consume(a, "h9", "h10", NOW + 11)).await, a, "h9");
}

async fn token_grace_ends(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let g = store::TOKEN_GRACE_SECS;
    send(s, issue(a, "h1", NOW + 10_000)).await;
    assert_token_ok(send(s, consume(a, "h1", "h2", NOW)).await, a, "first use");
    // Presenting it again does not stretch the grace: it runs from the first use.
    assert_token_ok(
        send(s, consume(a, "h1", "h3", NOW + g - 1)).await,
        a,
        "in grace",
    );
    assert_token_bad(send(s, consume(a, "h1", "x", NOW + g)).await, "grace over");
    // The tokens it handed out were never used, so they still work...
    assert_token_ok(send(s, consume(a, "h2", "h4", NOW + g + 1)).await, a, "h2");
    // ...and h3, given after h2, survives h2's use. Using h3 kills h2, and
    // using h4 kills h3.
    assert_token_ok(send(s, consume(a, "h3", "h5", NOW + g + 2)).await, a, "h3");
    assert_token_ok(send(s, consume(a, "h4", "h6", NOW + g + 3)).await, a, "h4");
    assert_token_bad(send(s, consume(a, "h2", "x", NOW + g + 4)).await, "h2");
    assert_token_bad(send(s, consume(a, "h3", "x", NOW + g + 4)).await, "h3");
    // A grace never outlives the token: one 30 s from expiry dies at expiry.
    send(s, issue(a, "e1", NOW + 1000)).await;
    assert_token_ok(send(s, consume(a, "e1", "e2", NOW + 970)).await, a, "e1");
    assert_token_ok(
        send(s, consume(a, "e1", "e3", NOW + 999)).await,
        a,
        "e1 again",
    );
    assert_token_bad(
        send(s, consume(a, "e1", "x", NOW + 1000)).await,
        "e1 expired",
    );
}

async fn tokens_expire(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    commit(s, vec![issue(a, "h1", NOW + 10), issue(b, "h2", NOW + 10)]).await;
    assert_token_bad(
        send(s, consume(a, "h1", "h3", NOW + 10)).await,
        "a token is refused from its expiry time on",
    );
    assert_token_bad(
        send(s, consume(a, "h1", "h3", NOW + 5)).await,
        "a refused expired token is gone",
    );
    assert_token_ok(send(s, consume(b, "h2", "h4", NOW + 9)).await, b, "h2");
    // h4 was issued with an expiry an hour after NOW + 9.
    assert_token_bad(
        send(s, consume(b, "h4", "h6", NOW + 9 + 3600)).await,
        "h4 expired",
    );
}

async fn token_of_another_user(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    commit(
        s,
        vec![issue(a, "ha", NOW + 1000), issue(b, "hb", NOW + 1000)],
    )
    .await;
    // alice's token with bob's id, or an id nobody has: refused, not burned.
    assert_token_bad(send(s, consume(b, "ha", "x1", NOW)).await, "bob with ha");
    assert_token_bad(
        send(s, consume(b + 99, "ha", "x2", NOW)).await,
        "nobody with ha",
    );
    assert_token_bad(
        send(s, consume(b, "x1", "x3", NOW)).await,
        "nothing was issued",
    );
    assert_token_ok(
        send(s, consume(a, "ha", "ha2", NOW)).await,
        a,
        "alice with ha",
    );
    assert_token_ok(
        send(s, consume(b, "hb", "hb2", NOW)).await,
        b,
        "bob with hb",
    );
    // Nor does a token in its grace period work for anyone else.
    assert_token_bad(
        send(s, consume(b, "ha", "x4", NOW + 1)).await,
        "bob with ha again",
    );
    assert_token_ok(
        send(s, consume(a, "ha", "ha3", NOW + 1)).await,
        a,
        "ha in grace",
    );
}

async fn password_login_kills_older_tokens(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    commit(
        s,
        vec![issue(a, "a1", NOW + 1000), issue(b, "b1", NOW + 1000)],
    )
    .await;
    assert_token_ok(send(s, consume(a, "a1", "a2", NOW)).await, a, "a1");
    // A password login: a1 (in its grace) and a2 die, the new a3 works.
    send(s, issue(a, "a3", NOW + 1000)).await;
    assert_token_bad(send(s, consume(a, "a1", "x", NOW + 1)).await, "a1");
    assert_token_bad(send(s, consume(a, "a2", "x", NOW + 1)).await, "a2");
    assert_token_ok(send(s, consume(a, "a3", "a4", NOW + 1)).await, a, "a3");
    assert_token_ok(send(s, consume(b, "b1", "b2", NOW + 1)).await, b, "b1");
}

async fn revoke_tokens(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    commit(
        s,
        vec![issue(a, "a1", NOW + 100), issue(b, "b1", NOW + 100)],
    )
    .await;
    // a1 in its grace, a2 fresh: LOGINOUT kills both.
    assert_token_ok(send(s, consume(a, "a1", "a2", NOW)).await, a, "a1");
    let out = commit(s, vec![WriteOp::RevokeTokens { user: a }]).await;
    assert!(matches!(out[0], WriteOutcome::Revoked));
    assert_token_bad(send(s, consume(a, "a1", "x1", NOW)).await, "a1");
    assert_token_bad(send(s, consume(a, "a2", "x2", NOW)).await, "a2");
    assert_token_ok(send(s, consume(b, "b1", "b2", NOW)).await, b, "b1");
    let out = commit(s, vec![WriteOp::RevokeTokens { user: a }]).await;
    assert!(
        matches!(out[0], WriteOutcome::Revoked),
        "revoking nothing is fine"
    );
    // New tokens work after a revocation.
    commit(s, vec![issue(a, "a3", NOW + 100)]).await;
    assert_token_ok(send(s, consume(a, "a3", "a4", NOW)).await, a, "a3");
}

async fn dead_tokens_are_pruned(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let g = store::TOKEN_GRACE_SECS;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    // A token write prunes its user's dead rows: h2 expires unused, and the
    // next login (with h1, which h2 is newer than) deletes it.
    send(s, issue(a, "h1", NOW + 10_000)).await;
    let short = WriteOp::Token(TokenRequest {
        consume: Some("h1".into()),
        user: a,
        issue: "h2".into(),
        expires_at: NOW + 5,
        now: NOW,
    });
    assert_token_ok(send(s, short).await, a, "h1");
    assert_token_ok(
        send(s, consume(a, "h1", "h3", NOW + 10)).await,
        a,
        "h1 again",
    );
    assert_eq!(
        s.prune_tokens(NOW + 10, ALL).await.unwrap(),
        0,
        "h2 is gone"
    );
    // So does a refused login: bob's expired token goes with it.
    send(s, issue(b, "b1", NOW + 10)).await;
    assert_token_bad(send(s, consume(b, "b1", "x", NOW + 10)).await, "b1 expired");
    assert_eq!(
        s.prune_tokens(NOW + 10, ALL).await.unwrap(),
        0,
        "b1 is gone"
    );

    // The sweep deletes dead rows of anyone, oldest first, at most `limit`
    // a call, and never a live one.
    commit(
        s,
        vec![
            issue(b, "b2", NOW + 100_000),
            issue(c, "c1", NOW + 50),
            consume(c, "c1", "c2", NOW + 1),
        ],
    )
    .await;
    // c1 expired; h1 is in its grace until NOW + g.
    assert_eq!(s.prune_tokens(NOW + g - 1, ALL).await.unwrap(), 1);
    // Two hours on: h1, h3 and c2 are dead.
    let later = NOW + 7200;
    assert_eq!(s.prune_tokens(later, 2).await.unwrap(), 2);
    assert_eq!(s.prune_tokens(later, 2).await.unwrap(), 1);
    assert_eq!(s.prune_tokens(later, 2).await.unwrap(), 0);
    // b2 lives.
    assert_token_bad(send(s, consume(a, "h3", "x", later)).await, "h3");
    assert_token_ok(send(s, consume(b, "b2", "b3", later)).await, b, "b2");
}

async fn mixed_batch_keeps_order(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let out = commit(
        s,
        vec![
            issue(a, "t1", NOW + 100),
            append(a, Target::User(b), "hello"),
            WriteOp::Ack { user: b, seq: 1 },
            consume(a, "t1", "t2", NOW),
            issue(b, "tb", NOW + 100),
            WriteOp::RevokeTokens { user: b },
            append(b, Target::User(a), "hi"),
        ],
    )
    .await;
    assert_eq!(token_user(&out[0]), a);
    assert_eq!(appended(&out[1]).1, vec![(b, 1)]);
    assert!(matches!(out[2], WriteOutcome::Acked));
    assert_eq!(token_user(&out[3]), a);
    assert_eq!(token_user(&out[4]), b);
    assert!(matches!(out[5], WriteOutcome::Revoked));
    assert_eq!(appended(&out[6]).1, vec![(a, 1)]);
    assert_eq!(s.acked_seq(b).await.unwrap(), 1);
    assert_token_bad(send(s, consume(b, "tb", "tb2", NOW)).await, "tb revoked");
    assert_token_ok(send(s, consume(a, "t2", "t3", NOW)).await, a, "t2");
}

// ---------------------------------------------------------------------------
// Operator commands (`chat-server admin`)

/// The kinds of every account event recorded, oldest first.
async fn events(s: &dyn Store) -> Vec<(UserId, Option<AccountChange>)> {
    s.account_events(0, ALL)
        .await
        .expect("account_events")
        .into_iter()
        .map(|e| (e.user, e.change))
        .collect()
}

async fn admin_lists_users_in_pages(fx: Arc<Fixture>) {
    let s = &*fx.store;
    assert_eq!(s.list_users(0, 10).await.unwrap(), vec![]);
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    let first = s.list_users(0, 2).await.unwrap();
    let ids: Vec<_> = first.iter().map(|u| (u.id, u.name.as_str())).collect();
    assert_eq!(ids, vec![(a, "alice"), (b, "bob")]);
    for u in &first {
        assert!(u.created_at > 0, "registration time stored: {u:?}");
        assert_eq!(u.disabled_at, None);
    }
    let rest = s.list_users(b, 10).await.unwrap();
    assert_eq!(rest.iter().map(|u| u.id).collect::<Vec<_>>(), vec![c]);
    assert_eq!(s.list_users(c, 10).await.unwrap(), vec![]);
}

async fn admin_disable_and_enable(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    commit(
        s,
        vec![issue(a, "a1", NOW + 100), issue(b, "b1", NOW + 100)],
    )
    .await;
    assert!(s.set_disabled(a, true, NOW).await.unwrap(), "disables");
    assert!(
        !s.set_disabled(a, true, NOW + 5).await.unwrap(),
        "disabled already"
    );
    assert!(s.find_user(a).await.unwrap().unwrap().disabled);
    assert!(!s.find_user(b).await.unwrap().unwrap().disabled);
    let listed = s.list_users(0, 10).await.unwrap();
    assert_eq!(listed[0].disabled_at, Some(NOW), "the first time is kept");
    assert_eq!(listed[1].disabled_at, None);
    assert_token_bad(send(s, consume(a, "a1", "a2", NOW)).await, "revoked");
    assert_token_ok(send(s, consume(b, "b1", "b2", NOW)).await, b, "b1");
    assert_eq!(events(s).await, vec![(a, Some(AccountChange::Disabled))]);

    assert!(s.set_disabled(a, false, NOW).await.unwrap(), "enables");
    assert!(
        !s.set_disabled(a, false, NOW).await.unwrap(),
        "enabled already"
    );
    assert!(!s.find_user(a).await.unwrap().unwrap().disabled);
    assert_eq!(s.list_users(0, 1).await.unwrap()[0].disabled_at, None);
    assert_eq!(events(s).await.len(), 1, "enabling ends no session");
    assert_eq!(
        s.set_disabled(b + 100, true, NOW).await.unwrap_err(),
        StoreError::NotFound
    );
}

async fn admin_reset_password(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    commit(s, vec![issue(a, "a1", NOW + 100)]).await;
    s.set_password(a, "new-hash").await.unwrap();
    assert_eq!(
        s.find_user(a).await.unwrap().unwrap().password_hash,
        "new-hash"
    );
    assert_token_bad(send(s, consume(a, "a1", "a2", NOW)).await, "revoked");
    assert_eq!(
        events(s).await,
        vec![(a, Some(AccountChange::PasswordReset))]
    );
    assert_eq!(
        s.set_password(a + 100, "x").await.unwrap_err(),
        StoreError::NotFound
    );
}

async fn admin_delete_user(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    s.add_friend(a, b).await.unwrap();
    s.add_friend(b, c).await.unwrap();
    let mine = s
        .create_group(a, "alices", &key("alices"), "")
        .await
        .unwrap();
    s.join_group(mine, b).await.unwrap();
    let theirs = s.create_group(b, "bobs", &key("bobs"), "").await.unwrap();
    s.join_group(theirs, a).await.unwrap();
    s.join_group(theirs, c).await.unwrap();
    commit(s, vec![issue(a, "a1", NOW + 100)]).await;
    // b confirms everything; c confirms nothing.
    send(s, append(a, Target::User(b), "to bob")).await;
    send(s, append(b, Target::User(a), "to alice")).await;
    let kept = send(s, append(b, Target::Group(theirs), "bob in group")).await;
    let kept = appended(&kept).0;
    let in_group = appended(
        &send(
            s,
            append_c(a, Target::Group(theirs), "alice in group", "c1"),
        )
        .await,
    );
    let newest = appended(&send(s, append(a, Target::User(b), "last word")).await).0;
    commit(s, vec![WriteOp::Ack { user: b, seq: ALL }]).await;
    // Alice confirms "to alice" too, and pruning drops the confirmed inbox
    // rows: the messages to alice must still be found.
    commit(s, vec![WriteOp::Ack { user: a, seq: ALL }]).await;
    s.prune_delivered(0, ALL, ALL).await.unwrap();
    let c_before = s.undelivered(c, 0, ALL).await.unwrap();
    assert_eq!(c_before.len(), 2);

    let d = s.delete_user(a).await.unwrap();
    assert_eq!(d.groups, vec![mine]);
    // to bob, to alice, last word; "alice in group" waits for carol.
    assert_eq!((d.messages, d.pending), (3, 1));
    assert_eq!(s.find_user(a).await.unwrap(), None);
    assert_eq!(s.find_user_by_name("alice").await.unwrap(), None);
    assert_eq!(s.friends(b).await.unwrap(), vec![person(c, "carol")]);
    let groups: Vec<_> = s.groups_of(b).await.unwrap();
    assert_eq!(groups.len(), 1, "alice's group is disbanded: {groups:?}");
    assert_eq!(
        groups[0].members,
        vec![
            member(b, "bob", Role::Creator),
            member(c, "carol", Role::Normal)
        ]
    );
    assert_eq!(
        s.membership(mine, b).await.unwrap_err(),
        StoreError::NotFound
    );
    assert!(history(s, Conversation::Direct(a, b), None, ALL)
        .await
        .is_empty());
    assert_eq!(
        history(s, Conversation::Group(theirs), None, ALL).await,
        vec![kept.mid],
        "alice's messages leave every history"
    );
    // Carol still gets what was sent to her, in seq order with no gap.
    assert_eq!(s.undelivered(c, 0, ALL).await.unwrap(), c_before);
    assert_eq!(in_group.1, vec![(b, in_group.1[0].1), (c, 2)]);
    assert_token_bad(send(s, consume(a, "a1", "a2", NOW)).await, "tokens go too");
    assert_eq!(
        events(s).await.last(),
        Some(&(a, Some(AccountChange::Deleted)))
    );
    assert_eq!(s.delete_user(a).await.unwrap_err(), StoreError::NotFound);
    // Appends to the deleted user fail; a mid is never handed out twice,
    // also by a store opened afterwards (another process).
    let out = send(s, append(b, Target::User(a), "anyone there?")).await;
    assert_eq!(failed(&out), StoreError::NotFound);
    let next = appended(&send(s, append(b, Target::User(c), "hi")).await).0;
    assert!(next.mid > newest.mid, "{} after {}", next.mid, newest.mid);
    if !matches!(fx.backend, Backend::Memory) {
        let other = fx.reopen().await;
        let mid = appended(&send(&*other, append(c, Target::User(b), "hey")).await)
            .0
            .mid;
        assert!(mid > next.mid, "{mid} after {}", next.mid);
    }
    // The name is free again; the id is not reused.
    let again = user(s, "alice").await;
    assert!(again > c, "new id {again}");
}

/// A one-to-one message still undelivered when its sender is deleted is
/// hidden, not deleted; deleting its recipient afterwards deletes it.
async fn admin_delete_user_after_their_sender(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let c = user(s, "carol").await;
    send(s, append(a, Target::User(b), "psst")).await;
    send(s, append(c, Target::User(b), "hello")).await;
    let d = s.delete_user(a).await.unwrap();
    assert_eq!((d.messages, d.pending), (0, 1), "undelivered: hidden");
    assert_eq!(s.undelivered(b, 0, ALL).await.unwrap().len(), 2);
    let d = s.delete_user(b).await.unwrap();
    assert_eq!(
        (d.messages, d.pending),
        (2, 0),
        "both messages to bob go with him, the hidden one too"
    );
    assert!(history(s, Conversation::Direct(b, c), None, ALL)
        .await
        .is_empty());
}

async fn admin_events_in_order(fx: Arc<Fixture>) {
    let s = &*fx.store;
    assert_eq!(s.last_account_event().await.unwrap(), 0);
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    s.set_disabled(a, true, NOW).await.unwrap();
    s.set_password(b, "x").await.unwrap();
    s.delete_user(b).await.unwrap();
    let all = s.account_events(0, ALL).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "ids grow: {all:?}"
    );
    assert_eq!(s.last_account_event().await.unwrap(), all[2].id);
    let later = s.account_events(all[0].id, ALL).await.unwrap();
    assert_eq!(later, all[1..].to_vec());
    assert_eq!(
        s.account_events(all[0].id, 1).await.unwrap(),
        all[1..2].to_vec()
    );
    assert_eq!(
        later.iter().map(|e| (e.user, e.change)).collect::<Vec<_>>(),
        vec![
            (b, Some(AccountChange::PasswordReset)),
            (b, Some(AccountChange::Deleted))
        ]
    );
}

/// Retention may delete every message; a mid is still never handed out
/// twice, also by a store opened afterwards, and the new messages are in
/// HISTORY.
async fn retention_that_empties_messages_keeps_mids_growing(fx: Arc<Fixture>) {
    let s = &*fx.store;
    let a = user(s, "alice").await;
    let b = user(s, "bob").await;
    let out = commit(
        s,
        vec![
            append(a, Target::User(b), "1"),
            append(a, Target::User(b), "2"),
        ],
    )
    .await;
    let newest = appended(&out[1]).0.mid;
    commit(s, vec![WriteOp::Ack { user: b, seq: 2 }]).await;
    s.prune_delivered(0, 100, 100).await.unwrap();
    let later = chat_protocol::time::unix_now() + 10;
    assert_eq!(s.prune_messages(later, 100).await.unwrap(), 2);
    let ab = Conversation::Direct(a, b);
    assert!(history(s, ab, None, ALL).await.is_empty());
    let next = appended(&send(s, append(b, Target::User(a), "3")).await)
        .0
        .mid;
    assert!(next > newest, "{next} after {newest}");
    assert_eq!(history(s, ab, None, ALL).await, vec![next]);
    if !matches!(fx.backend, Backend::Memory) {
        // Empty again, then a store opened afterwards (a restart).
        commit(s, vec![WriteOp::Ack { user: a, seq: 1 }]).await;
        s.prune_delivered(0, 100, 100).await.unwrap();
        assert_eq!(s.prune_messages(later, 100).await.unwrap(), 1);
        let other = fx.reopen().await;
        let mid = appended(&send(&*other, append(a, Target::User(b), "4")).await)
            .0
            .mid;
        assert!(mid > next, "{mid} after {next}");
        assert_eq!(history(&*other, ab, None, ALL).await, vec![mid]);
    }
}
