//! The server's logs, from the real binary at its most verbose: with
//! `--log-format json` every line is one JSON object with a field per key,
//! and no password or login token ever appears, at any level.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The server process, killed however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_at_trace_level_never_show_a_password_or_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = server_command(env!("CARGO_BIN_EXE_chat-server"));
    let db = format!("sqlite://{}", dir.path().join("chat.db").display());
    let child = cmd
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--database-url",
            &db,
        ])
        .args(["--log", "trace", "--log-format", "json"])
        .args(["--argon2-m-kib", "1024", "--argon2-t", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chat-server");
    let mut child = KillOnDrop(child);
    // Every line, read on a thread of its own; the listen address from the
    // ready line.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("no ready line within 60 s");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        if v["message"] == "clusterchat server ready" {
            break v["listen"].as_str().expect("listen field").parse().unwrap();
        }
    };

    let password = "Hunter2-sekrit-pw";
    let wrong = "Wrong-guess-Qx7";
    let mut c = Client::connect(addr).await;
    let id = c.register("alice", password).await;
    let bob = c.register("bob", password).await;
    let ack = c.login_l2(id, password).await;
    let t1 = ack["token"].as_str().unwrap().to_owned();
    // Dropped without LOGINOUT, which would revoke the token.
    drop(c);
    let mut c = Client::connect(addr).await;
    let ack = c
        .login_raw(json!({"msgid": 1, "id": id, "token": t1, "v": 2}))
        .await;
    assert_eq!(ack["errno"], 0, "{ack}");
    let t2 = ack["token"].as_str().unwrap().to_owned();
    c.send(json!({"msgid": 6, "toid": bob, "msg": "hello"}))
        .await;
    c.expect_ack(6).await;
    let mut x = Client::connect(addr).await;
    let bad = x
        .login_raw(json!({"msgid": 1, "id": id, "password": wrong}))
        .await;
    assert_eq!(bad["errno"], 1);
    let bad = x
        .login_raw(json!({"msgid": 1, "id": id, "token": "f".repeat(64), "v": 2}))
        .await;
    assert_eq!(bad["errno"], 1, "a bad token is refused");
    drop((c, x));
    tokio::time::sleep(Duration::from_millis(300)).await;

    drop(child);
    let lines = reader.join().unwrap();
    assert!(
        lines.len() > 20,
        "trace level logged only {} lines",
        lines.len()
    );
    let mut keys = std::collections::BTreeSet::new();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {l}"));
        assert!(
            o.contains_key("level") && o.contains_key("timestamp"),
            "{l}"
        );
        keys.extend(o.keys().cloned());
        for secret in [password, wrong, t1.as_str(), t2.as_str()] {
            assert!(!l.contains(secret), "a secret is in the log: {l}");
        }
    }
    for k in ["user", "peer", "msgid", "errno"] {
        assert!(
            keys.contains(k),
            "no log line has a {k:?} field; fields seen: {keys:?}"
        );
    }
}
