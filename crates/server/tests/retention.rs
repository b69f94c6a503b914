//! Background pruning on a running server: confirmed delivery rows go, and
//! with a retention, old messages leave HISTORY once everyone has them;
//! a message still waiting for its recipient stays.

mod common;

use std::time::Duration;

use clusterchat::store::Conversation;
use clusterchat::Config;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_rows_are_pruned_and_old_messages_expire() {
    let cfg = Config {
        prune_every: Duration::from_millis(200),
        retention: Some(Duration::from_secs(1)),
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (bob, mut b) = user_l2(&srv, "bob").await;
    let carol = srv.register("carol", "pw").await;
    for i in 0..3 {
        a.send(json!({"msgid": 6, "toid": bob, "msg": format!("m{i}")}))
            .await;
        a.expect_ack(6).await;
        let f = b.recv_msgid(6).await;
        b.send(json!({"msgid": 16, "seq": f["seq"]})).await;
    }
    srv.wait_acked(bob, 3).await;
    // Carol is away: her message must survive retention.
    a.send(json!({"msgid": 6, "toid": carol, "msg": "for later"}))
        .await;
    a.expect_ack(6).await;

    // The pruner removes bob's confirmed rows (nothing left for it to do),
    // and after a second the delivered messages leave history.
    let mut gone = false;
    for _ in 0..100 {
        let (left, _) = srv.store.prune_delivered(0, 1000, 1000).await.unwrap();
        let h = srv
            .store
            .history(Conversation::Direct(alice, bob), None, 50)
            .await
            .unwrap();
        if left == 0 && h.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "confirmed rows or expired messages were not pruned");
    // HISTORY over the wire says nothing of them.
    b.send(json!({"msgid": 17, "toid": alice, "reqid": 1}))
        .await;
    let page = b.expect_ack(17).await;
    assert_eq!(page["messages"], json!([]), "{page}");

    // Carol's message waits for her, and arrives at her login.
    let mut c = srv.connect().await;
    c.login_l2(carol, "pw").await;
    assert_eq!(c.recv_msgid(6).await["msg"], "for later");
    srv.stop().await;
}
