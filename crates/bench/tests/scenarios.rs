//! Every scenario, tiny, through the real binary: against an in-process
//! clusterchat node and the ceiling (`--ceiling`), at both levels. Each run
//! must complete, report 0 errors, and lose nothing. No timing is asserted.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{real_server, BENCH};

/// Runs chat-bench with `--json --strict` and returns its JSON lines.
async fn bench(server: &str, args: &[&str]) -> Vec<Value> {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(BENCH)
            .args([
                "--server",
                server,
                "--ceiling",
                "--json",
                "--quiet",
                "--strict",
            ])
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
    assert_eq!(
        lines.len(),
        2,
        "one line for the server, one for the ceiling"
    );
    assert_eq!(lines[0]["target"], "server");
    assert_eq!(lines[1]["target"], "ceiling");
    for l in &lines {
        assert_eq!(l["errors"], 0, "{l}");
    }
    assert!(lines[0]["vs_ceiling"].is_object(), "{}", lines[0]);
    lines
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
    let load = ["--duration", "0.4", "--warmup", "0.1", "--drain", "5"];

    for level in ["1", "2"] {
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
        a.extend(load);
        check_load(&bench(&addr, &a).await);

        let mut a = vec![
            "--level",
            level,
            "group",
            "--register",
            "--members",
            "6",
            "--senders",
            "2",
            "--window",
            "4",
        ];
        a.extend(load);
        let lines = bench(&addr, &a).await;
        check_load(&lines);
        assert_eq!(lines[0]["online"], 6);
    }
    let mut a = vec!["direct", "--register", "--pairs", "2", "--rate", "100"];
    a.extend(load);
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
        let lines = bench(
            &addr,
            &[
                "idle",
                "-n",
                "10",
                "--users",
                users,
                "--tokens",
                "--workers",
                "2",
                "--hold",
                "0.1",
            ],
        )
        .await;
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
