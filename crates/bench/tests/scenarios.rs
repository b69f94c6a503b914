//! Every scenario, tiny, through the real binary: against an in-process
//! clusterchat node and the ceiling (`--ceiling`), at both levels, and over
//! the node's WebSocket (`--transport ws`, server only). Each run must
//! complete, report 0 errors, and lose nothing. No timing is asserted.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{real_server, BENCH};

/// Runs chat-bench with `--ceiling --json --strict` and returns its JSON
/// lines: the server's, then the ceiling's.
async fn bench(server: &str, args: &[&str]) -> Vec<Value> {
    let lines = run_bench(server, &["--ceiling"], args).await;
    assert_eq!(
        lines.len(),
        2,
        "one line for the server, one for the ceiling"
    );
    assert_eq!(lines[0]["target"], "server");
    assert_eq!(lines[1]["target"], "ceiling");
    assert!(lines[0]["vs_ceiling"].is_object(), "{}", lines[0]);
    lines
}

/// Runs chat-bench with `--json --strict` and `global` options; every JSON
/// line it prints must report 0 errors.
async fn run_bench(server: &str, global: &[&str], args: &[&str]) -> Vec<Value> {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(BENCH)
            .args(["--server", server, "--json", "--quiet", "--strict"])
            .args(global)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chat-bench did not finish within 90 s")
    .expect("run chat-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chat-bench {args:?} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    for l in &lines {
        assert_eq!(l["errors"], 0, "{l}");
    }
    lines
}

/// Tiny load runs: flags after the scenario's own.
const LOAD: [&str; 6] = ["--duration", "0.4", "--warmup", "0.1", "--drain", "5"];

/// `direct`, 3 pairs, window 4, at `level`.
fn direct_args(level: &str) -> Vec<&str> {
    let mut a = vec![
        "--level",
        level,
        "direct",
        "--register",
        "--pairs",
        "3",
        "--window",
        "4",
    ];
    a.extend(LOAD);
    a
}

/// `group` of `members`, 2 senders, window 4, at `level`.
fn group_args<'a>(level: &'a str, members: &'a str) -> Vec<&'a str> {
    let mut a = vec![
        "--level",
        level,
        "group",
        "--register",
        "--members",
        members,
        "--senders",
        "2",
        "--window",
        "4",
    ];
    a.extend(LOAD);
    a
}

/// `idle` of `n` token logins over two worker processes; `users` says where
/// the users come from.
fn idle_args<'a>(n: &'a str, users: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["idle", "-n", n];
    a.extend(users);
    a.extend(["--tokens", "--workers", "2", "--hold", "0.1"]);
    a
}

fn check_load(lines: &[Value]) {
    for l in lines {
        assert!(l["sent"].as_u64().unwrap() > 0, "{l}");
        assert_eq!(l["lost"], 0, "{l}");
        assert_eq!(l["delivered"], l["expected"], "{l}");
        assert!(l["samples"].as_u64().unwrap() > 0, "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_clean_against_server_and_ceiling() {
    let real = real_server().await;
    let addr = real.addr.to_string();

    for level in ["1", "2"] {
        check_load(&bench(&addr, &direct_args(level)).await);
        let lines = bench(&addr, &group_args(level, "6")).await;
        check_load(&lines);
        assert_eq!(lines[0]["online"], 6);
    }
    let mut a = vec!["direct", "--register", "--pairs", "2", "--rate", "100"];
    a.extend(LOAD);
    check_load(&bench(&addr, &a).await);

    let dir = tempfile::tempdir().expect("temp dir");
    let users = dir.path().join("users.txt");
    let users = users.to_str().expect("utf-8 path");
    let lines = bench(
        &addr,
        &["setup", "12", "--out", users, "--concurrency", "4"],
    )
    .await;
    assert_eq!(lines[0]["users"], 12);
    let saved = std::fs::read_to_string(users).expect("users file");
    assert_eq!(saved.lines().count(), 12);

    // Token logins over two worker processes; the fresh tokens are saved,
    // so a second run logs in by token again.
    for _ in 0..2 {
        let lines = bench(&addr, &idle_args("10", &["--users", users])).await;
        for l in &lines {
            assert_eq!(l["logged_in"], 10, "{l}");
            assert_eq!(l["alive_after_hold"], 10, "{l}");
        }
        // The ceiling is a child process, so its RSS is always measured.
        assert!(lines[1]["rss_hold_kib"].as_u64().unwrap() > 0);
    }
    let saved = std::fs::read_to_string(users).expect("users file");
    assert!(saved
        .lines()
        .take(10)
        .all(|l| l.split_whitespace().count() == 4));

    let lines = bench(
        &addr,
        &["--level", "1", "idle", "-n", "5", "--users", users],
    )
    .await;
    assert_eq!(lines[0]["logged_in"], 5);
    real.stop().await;
}

/// `--transport ws`: the same scenarios over the node's WebSocket (its HTTP
/// listener's `/ws`); the ceiling is TCP only, so the server runs alone, and
/// asking for both is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_run_clean_over_websocket() {
    let real = real_server().await;
    let http = real.http.to_string();
    let ws = ["--transport", "ws"];

    for level in ["1", "2"] {
        let lines = run_bench(&http, &ws, &direct_args(level)).await;
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["transport"], "ws");
        check_load(&lines);
    }
    let lines = run_bench(&http, &ws, &group_args("2", "5")).await;
    check_load(&lines);
    assert_eq!(lines[0]["online"], 5);

    let lines = run_bench(&http, &ws, &idle_args("8", &["--register"])).await;
    assert_eq!(lines[0]["logged_in"], 8, "{}", lines[0]);
    assert_eq!(lines[0]["alive_after_hold"], 8, "{}", lines[0]);

    let out = tokio::process::Command::new(BENCH)
        .args([
            "--server",
            &http,
            "--transport",
            "ws",
            "--ceiling",
            "--quiet",
        ])
        .args(["direct", "--register", "--pairs", "1"])
        .output()
        .await
        .expect("run chat-bench");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TCP only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    real.stop().await;
}
