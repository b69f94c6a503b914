//! `/metrics`, `/healthz` and `/readyz` on the HTTP listener: the metrics
//! move as traffic flows, and readiness turns 503 when storage goes away.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// `GET path`: (status, body).
async fn get(http: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = http_get(http, path).await;
    (r.status, r.text())
}

/// The value of the sample `name{labels}` (labels exactly as exposed, in
/// order), or 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_traffic_flows() {
    let srv = TestServer::start().await;
    let (status, before) = get(srv.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        before.contains("# TYPE chat_commit_duration_seconds histogram"),
        "{before}"
    );
    assert!(
        before.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );

    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;
    let mut web = srv.connect_ws().await;
    let carol = web.register("carol", "pw").await;
    web.login_l1(carol, "pw").await;
    for i in 0..3 {
        a.send(json!({"msgid": 6, "toid": bob, "msg": format!("m{i}")}))
            .await;
        a.expect_ack(6).await;
        b.recv_msgid(6).await;
    }
    // A failed login, an unknown msgid, and a malformed frame.
    let mut x = srv.connect().await;
    x.send(json!({"msgid": 1, "id": alice, "password": "wrong"}))
        .await;
    x.recv_msgid(2).await;
    x.send(json!({"msgid": 999})).await;
    x.expect_error(6).await;
    x.send_raw(b"not json\n").await;
    x.expect_error(6).await;

    let (_, m) = get(srv.http, "/metrics").await;
    let has = |series: &str, at_least: f64| {
        let v = sample(&m, series);
        assert!(v >= at_least, "{series} = {v}, want >= {at_least}\n{m}");
    };
    has(r#"chat_messages_stored_total{kind="direct"}"#, 3.0);
    has(r#"chat_pushes_total{kind="chat"}"#, 3.0);
    has(r#"chat_requests_total{msgid="6"}"#, 3.0);
    has(r#"chat_logins_total{result="ok",method="password"}"#, 3.0);
    has(
        r#"chat_logins_total{result="bad_credentials",method="password"}"#,
        1.0,
    );
    has(r#"chat_request_errors_total{msgid="999",errno="6"}"#, 1.0);
    has(r#"chat_request_errors_total{msgid="-1",errno="6"}"#, 1.0);
    has(r#"chat_connections{transport="tcp",level="2"}"#, 2.0);
    has(r#"chat_connections{transport="ws",level="1"}"#, 1.0);
    has("chat_commit_batch_writes_count", 3.0);
    has("chat_commit_duration_seconds_count", 3.0);
    assert_eq!(sample(&m, "chat_store_errors_total"), 0.0);

    // Closed connections leave the gauges.
    drop((a, b, web));
    let mut left = false;
    for _ in 0..100 {
        let (_, m) = get(srv.http, "/metrics").await;
        if sample(&m, r#"chat_connections{transport="tcp",level="2"}"#) == 0.0
            && sample(&m, r#"chat_connections{transport="ws",level="1"}"#) == 0.0
        {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left, "closed connections still counted");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_when_storage_goes_away() {
    let srv = TestServer::start().await;
    assert_eq!(get(srv.http, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(get(srv.http, "/readyz").await.0, 200);

    let (alice, _a) = user_l2(&srv, "alice").await;
    srv.store.close().await;
    let (status, body) = get(srv.http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage"), "{body}");
    // Alive all the same.
    assert_eq!(get(srv.http, "/healthz").await.0, 200);

    // Requests storage fails are counted.
    let mut c = srv.connect().await;
    c.send(json!({"msgid": 1, "id": alice, "password": "pw", "v": 2}))
        .await;
    assert_eq!(c.recv_msgid(2).await["errno"], 10);
    let (_, m) = get(srv.http, "/metrics").await;
    assert!(sample(&m, "chat_store_errors_total") >= 1.0, "{m}");
}

/// The shipped Grafana dashboard and Prometheus alerts name only metrics the
/// server exports (so a rename cannot leave them silently empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_dashboard_and_alerts_use_real_metric_names() {
    let srv = TestServer::start().await;
    // Families with labels appear once they have a series: a login, a
    // request and an error make them.
    let (_, mut c) = user_l2(&srv, "alice").await;
    c.send(json!({"msgid": 999})).await;
    c.expect_error(6).await;
    let (_, exported) = get(srv.http, "/metrics").await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut used = std::collections::BTreeSet::new();
    for f in [
        "grafana/clusterchat.json",
        "prometheus/clusterchat-alerts.yml",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("chat_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            used.insert(name);
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        // A histogram's series are name_bucket/_sum/_count; a counter's
        // name ends in _total: all appear in the exposition once used.
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .or_else(|| name.strip_suffix("_total"))
            .unwrap_or(name);
        assert!(
            exported.contains(&format!("# TYPE {family} ")),
            "{name} is used in deploy/ but /metrics has no {family}"
        );
    }
    srv.stop().await;
}
