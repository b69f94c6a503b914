//! `chat-server admin ...`, run as a real process against the SQLite file of
//! a running server: each command takes effect on the live server (sessions
//! closed within the poll interval, logins refused or allowed), and none of
//! them needs it stopped.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// How long a node may take to close a session after an admin change: its
/// poll interval (2 s) with room for a loaded machine.
const KICK_WITHIN: Duration = Duration::from_secs(10);

/// Runs `chat-server admin ARGS` against the database `db`, with `stdin`.
fn admin(db: &Path, args: &[&str], stdin: &str) -> Output {
    let mut cmd = server_command(env!("CARGO_BIN_EXE_chat-server"));
    cmd.arg("admin")
        .args(args)
        // The test server's cheap hashing cost.
        .args(["--argon2-m-kib", "1024", "--argon2-t", "1"])
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run chat-server admin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child
        .wait_with_output()
        .expect("wait for chat-server admin")
}

/// [`admin`] off the async threads.
async fn admin_async(db: &Path, args: &[&str], stdin: &str) -> Output {
    let (db, args, stdin) = (
        db.to_owned(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        stdin.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        admin(&db, &args, &stdin)
    })
    .await
    .expect("admin task")
}

/// [`admin`], asserting success; returns stdout.
async fn admin_ok(db: &Path, args: &[&str], stdin: &str) -> String {
    let out = admin_async(db, args, stdin).await;
    assert!(
        out.status.success(),
        "admin failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A password LOGIN at level 2 on a new connection; the ack whatever its errno.
async fn try_login(srv: &TestServer, id: i64, password: &str) -> Value {
    let mut c = srv.connect().await;
    c.login_raw(json!({"msgid": 1, "id": id, "password": password, "v": 2}))
        .await
}

/// Waits for the server to close `c`, returning the KICKED it sent first.
async fn expect_kicked(c: &mut Client) -> Value {
    let frames = c.drain_to_eof(KICK_WITHIN).await;
    frames
        .into_iter()
        .find(|v| v["msgid"] == 21)
        .expect("KICKED before the close")
}

#[tokio::test]
async fn users_lists_accounts_with_their_state() {
    let srv = TestServer::start().await;
    let alice = srv.register("alice", "pw").await;
    let bob = srv.register("李雷", "pw").await;
    admin_ok(&srv.db, &["disable", "李雷"], "").await;

    let out = admin_ok(&srv.db, &["users"], "").await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID  NAME"), "header: {out}");
    assert!(lines[0].contains("STATE") && lines[0].contains("REGISTERED (UTC)"));
    let row = |id: i64| {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
            .unwrap_or_else(|| panic!("no row for {id}:\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(row(alice)[1..3], ["alice", "enabled"]);
    assert_eq!(row(bob)[1..3], ["李雷", "disabled"]);
    assert!(row(alice)[3].starts_with("20"), "a date: {out}");

    // Pages, by the alias too.
    let out = admin_ok(&srv.db, &["list-users", "--limit", "1"], "").await;
    assert!(out.contains("alice") && !out.contains("李雷"), "{out}");
    assert!(out.contains(&format!("--after {alice}")), "{out}");
    let out = admin_ok(&srv.db, &["users", "--after", &alice.to_string()], "").await;
    assert!(!out.contains("alice") && out.contains("李雷"), "{out}");
    srv.stop().await;
}

#[tokio::test]
async fn disable_kicks_and_refuses_logins_enable_restores_them() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l1(&srv, "bob").await;

    let out = admin_ok(&srv.db, &["disable", &alice.to_string()], "").await;
    assert!(out.contains("disabled"), "{out}");
    let kicked = expect_kicked(&mut a).await;
    assert_eq!(kicked["errmsg"], "your account was disabled");

    let refused = try_login(&srv, alice, "pw").await;
    assert_eq!(refused["errno"], 4, "{refused}");
    assert_eq!(refused["errmsg"], "this account is disabled");
    // A wrong password says nothing about the account.
    assert_eq!(try_login(&srv, alice, "nope").await["errno"], 1);
    // Others are untouched.
    b.send(json!({"msgid": 18})).await;
    b.recv_msgid(19).await;

    let out = admin_ok(&srv.db, &["enable", "alice"], "").await;
    assert!(out.contains("enabled"), "{out}");
    assert_eq!(try_login(&srv, alice, "pw").await["errno"], 0);
    let _ = bob;
    srv.stop().await;
}

#[tokio::test]
async fn disable_revokes_tokens() {
    let srv = TestServer::start().await;
    let alice = srv.register("alice", "pw").await;
    let mut c = srv.connect().await;
    let ack = c.login_l2(alice, "pw").await;
    let token = ack["token"].as_str().expect("token").to_owned();
    admin_ok(&srv.db, &["disable", "alice"], "").await;
    expect_kicked(&mut c).await;
    admin_ok(&srv.db, &["enable", "alice"], "").await;
    let mut t = srv.connect().await;
    let v = t
        .login_raw(json!({"msgid": 1, "id": alice, "token": token, "v": 2}))
        .await;
    assert_eq!(v["errno"], 1, "the token died with the disable: {v}");
    srv.stop().await;
}

#[tokio::test]
async fn reset_password_swaps_the_password_and_ends_the_session() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let out = admin_ok(&srv.db, &["reset-password", "alice"], "n3w pass\n").await;
    assert!(out.contains("reset"), "{out}");
    let kicked = expect_kicked(&mut a).await;
    assert!(
        kicked["errmsg"]
            .as_str()
            .unwrap()
            .contains("password was reset"),
        "{kicked}"
    );
    assert_eq!(try_login(&srv, alice, "pw").await["errno"], 1);
    assert_eq!(try_login(&srv, alice, "n3w pass").await["errno"], 0);

    // An empty password is refused and changes nothing.
    let out = admin_async(&srv.db, &["reset-password", "alice"], "\n").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
    assert_eq!(try_login(&srv, alice, "n3w pass").await["errno"], 0);
    srv.stop().await;
}

#[tokio::test]
async fn delete_user_removes_the_account_and_its_messages() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;
    a.send(json!({"msgid": 6, "toid": bob, "msg": "secret"}))
        .await;
    a.expect_ack(6).await;
    b.recv_msgid(6).await;
    b.send(json!({"msgid": 17, "toid": alice})).await;
    assert_eq!(
        b.expect_ack(17).await["messages"].as_array().unwrap().len(),
        1
    );

    // Without --yes it asks; "n" keeps the user.
    let out = admin_async(&srv.db, &["delete-user", "alice"], "n\n").await;
    assert!(!out.status.success(), "refused without a yes");
    assert_eq!(try_login(&srv, alice, "nope").await["errno"], 1);
    b.send(json!({"msgid": 22, "name": "alice"})).await;
    assert_eq!(b.expect_ack(22).await["user"]["id"], alice);

    let out = admin_ok(&srv.db, &["delete-user", "alice"], "y\n").await;
    assert!(out.contains("deleted"), "{out}");
    let kicked = expect_kicked(&mut a).await;
    assert_eq!(kicked["errmsg"], "your account was deleted");
    assert_eq!(try_login(&srv, alice, "pw").await["errno"], 1);
    b.send(json!({"msgid": 22, "name": "alice"})).await;
    b.expect_error(3).await;
    // Their conversation is gone: HISTORY with them finds no such user.
    b.send(json!({"msgid": 17, "toid": alice})).await;
    b.expect_error(3).await;

    // --yes asks nothing.
    let (carol, _c) = user_l2(&srv, "carol").await;
    admin_ok(&srv.db, &["delete-user", &carol.to_string(), "--yes"], "").await;
    assert_eq!(try_login(&srv, carol, "pw").await["errno"], 1);
    srv.stop().await;
}

#[tokio::test]
async fn unknown_users_fail_clearly() {
    let srv = TestServer::start().await;
    for args in [
        &["disable", "nobody"][..],
        &["enable", "999"][..],
        &["delete-user", "999", "--yes"][..],
    ] {
        let out = admin_async(&srv.db, args, "").await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no user"), "{args:?}: {err}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn backup_copies_the_live_database() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;
    a.send(json!({"msgid": 6, "toid": bob, "msg": "kept in the backup"}))
        .await;
    a.expect_ack(6).await;
    b.recv_msgid(6).await;

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("backup.db");
    let out = admin_ok(&srv.db, &["backup", "--to", copy.to_str().unwrap()], "").await;
    assert!(out.contains("2 users, 1 messages"), "{out}");
    // The server went on running meanwhile.
    b.send(json!({"msgid": 18})).await;
    b.recv_msgid(19).await;

    // Never over an existing file.
    let again = admin_async(&srv.db, &["backup", "--to", copy.to_str().unwrap()], "").await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    // A server on the copy has the users and the message.
    let restored = TestServer::start_on(test_config(), &copy).await;
    let mut c = restored.connect().await;
    c.login_l2(bob, "pw").await;
    // Bob never confirmed it: the backlog brings it again.
    assert_eq!(c.recv_msgid(6).await["msg"], "kept in the backup");
    c.send(json!({"msgid": 17, "toid": alice})).await;
    let h = c.expect_ack(17).await;
    assert_eq!(h["messages"][0]["msg"], "kept in the backup");
    restored.stop().await;
    srv.stop().await;
}

#[test]
fn backup_of_mysql_points_to_its_tools() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-server"));
    cmd.env_remove("DATABASE_URL").args([
        "admin",
        "backup",
        "--to",
        "/nonexistent/x.sql",
        "--database-url",
        "mysql://u:p@127.0.0.1:1/db",
    ]);
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mysqldump") && err.contains("mariadb-backup"),
        "{err}"
    );
}

#[test]
fn admin_help_lists_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["admin", "--help"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "users",
        "reset-password",
        "disable",
        "enable",
        "delete-user",
        "backup",
    ] {
        assert!(help.contains(cmd), "{cmd} missing:\n{help}");
    }
}
