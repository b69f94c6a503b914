//! The `chat-server` command line, driven through the real binary: every
//! limit has a flag whose help says its default (taken from
//! `Config::default()`), and a bad value fails with a clear message before
//! anything starts.

use std::process::Output;

use clusterchat::Config;

/// Runs `chat-server` with `args` and only `env` from the CHAT_* variables.
fn chat_server(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = chat_testkit::server_command(env!("CARGO_BIN_EXE_chat-server"));
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("run chat-server")
}

/// The help text of one flag: from its name to the next flag.
fn flag_help<'a>(help: &'a str, flag: &str) -> &'a str {
    let start = help
        .find(&format!("{flag} "))
        .unwrap_or_else(|| panic!("--help does not list {flag}:\n{help}"));
    let rest = &help[start..];
    let end = rest[2..].find("\n  -").map_or(rest.len(), |i| i + 2);
    &rest[..end]
}

#[test]
fn help_lists_every_limit_with_its_default_and_env() {
    let out = chat_server(&["--help"], &[]);
    assert!(out.status.success(), "--help failed: {out:?}");
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    let d = Config::default();
    for (flag, default) in [
        ("--max-inflight", d.max_inflight.to_string()),
        ("--commit-queue", d.commit_queue.to_string()),
        ("--commit-batch", d.commit_batch.to_string()),
        ("--backlog-page", d.backlog_page.to_string()),
        ("--backlog-reads", d.backlog_reads.to_string()),
        ("--l1-offline-in-ack", d.l1_offline_in_ack.to_string()),
        (
            "--login-block-max-secs",
            d.login_block_max.as_secs().to_string(),
        ),
        ("--argon2-queue", d.hash.queue.to_string()),
        ("--argon2-concurrency", d.hash.concurrency.to_string()),
        ("--max-connections", d.max_connections.to_string()),
        ("--outbound-queue", d.outbound_queue.to_string()),
    ] {
        // --max-inflight reads CHAT_MAX_INFLIGHT, and so on.
        let env = format!("CHAT_{}", flag[2..].to_uppercase().replace('-', "_"));
        let text = flag_help(&help, flag);
        assert!(
            text.contains(&format!("[env: {env}")),
            "{flag} names no {env}: {text}"
        );
        assert!(
            text.contains(&format!("[default: {default}]")),
            "{flag} does not show the default {default} of Config::default(): {text}"
        );
    }
}

#[test]
fn a_bad_limit_fails_with_a_clear_error() {
    for (args, env, says) in [
        (&["--commit-queue", "0"][..], &[][..], "must be at least 1"),
        (&["--max-inflight", "lots"][..], &[][..], "invalid digit"),
        (
            &[][..],
            &[("CHAT_BACKLOG_PAGE", "0")][..],
            "must be at least 1",
        ),
        (&["--backlog-reads=-3"][..], &[][..], "--backlog-reads"),
    ] {
        let out = chat_server(args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} {env:?} should be refused as a usage error: {err}"
        );
        assert!(
            err.contains(says),
            "{args:?} {env:?}: error does not say {says:?}: {err}"
        );
        assert!(
            err.contains("invalid value"),
            "{args:?} {env:?}: not clap's invalid-value error: {err}"
        );
    }
}

#[test]
fn tls_files_that_cannot_be_used_fail_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, "not a certificate\n").unwrap();
    std::fs::write(&key, "").unwrap();
    let db = format!("sqlite://{}", dir.path().join("chat.db").display());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let base = ["--listen", "127.0.0.1:0", "--http-listen", "off"];
    let out = chat_server(
        &[
            &base[..],
            &["--database-url", &db, "--tls-cert", cert, "--tls-key", key],
        ]
        .concat(),
        &[],
    );
    assert!(!out.status.success(), "started with a bad certificate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no certificate") && err.contains(cert),
        "{err}"
    );
    assert!(
        !dir.path().join("chat.db").exists(),
        "the database was opened"
    );

    // One of the pair alone is a usage error.
    let out = chat_server(&[&base[..], &["--tls-cert", cert]].concat(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-key"), "{err}");
}
