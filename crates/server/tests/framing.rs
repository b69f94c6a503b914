//! Framing over real TCP: glued and split frames, NUL/LF/CRLF terminators,
//! empty frames, the frame size limit, and malformed frames that must not
//! close the connection.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// A PING frame padded with a string field to exactly `len` bytes of JSON.
fn ping_of_len(len: usize) -> Vec<u8> {
    let base = br#"{"msgid":18,"pad":""}"#.len();
    assert!(len >= base);
    format!(r#"{{"msgid":18,"pad":"{}"}}"#, "x".repeat(len - base)).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glued_frames_with_mixed_terminators_are_all_answered_in_order() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(br#"{"msgid":4,"name":"glue","password":"pw"}"#);
    bytes.push(0);
    bytes.extend_from_slice(br#"{"msgid":18,"reqid":1}"#);
    bytes.push(b'\n');
    bytes.extend_from_slice(br#"{"msgid":18,"reqid":2}"#);
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(br#"{"msgid":1,"id":1,"password":"pw"}"#);
    bytes.push(0);
    bytes.extend_from_slice(br#"{"msgid":18,"reqid":3}"#);
    bytes.push(0);
    c.send_raw(&bytes).await;
    assert_eq!(c.recv_msgid(5).await["errno"], 0);
    assert_eq!(c.recv().await, json!({"msgid": 19, "reqid": 1}));
    assert_eq!(c.recv().await, json!({"msgid": 19, "reqid": 2}));
    assert_eq!(c.recv_msgid(2).await["errno"], 0);
    assert_eq!(c.recv().await, json!({"msgid": 19, "reqid": 3}));
    c.expect_silence(200).await;

    // Many pipelined requests of different kinds: replies keep request order.
    let mut bytes = Vec::new();
    for i in 0..40 {
        let f = match i % 4 {
            0 => json!({"msgid": 18, "reqid": i}),
            1 => json!({"msgid": 17, "toid": 1, "reqid": i}),
            2 => json!({"msgid": 99, "reqid": i}),
            _ => json!({"msgid": 6, "toid": 12345, "msg": "x", "reqid": i}),
        };
        bytes.extend_from_slice(&serde_json::to_vec(&f).unwrap());
        bytes.push(if i % 2 == 0 { b'\n' } else { 0 });
    }
    c.send_raw(&bytes).await;
    for i in 0..40 {
        let v = c.recv().await;
        assert_eq!(v["reqid"], i, "reply out of order: {v}");
        let kind = match i % 4 {
            0 => 19,
            1 => 12,
            _ => 11,
        };
        assert_eq!(v["msgid"], kind, "{v}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_split_byte_by_byte_is_reassembled() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    // A name with multi-byte UTF-8, so characters are split too.
    let req = json!({"msgid": 4, "name": "你好 wörld", "password": "pässwörd"});
    let mut bytes = serde_json::to_vec(&req).unwrap();
    bytes.push(0);
    for b in &bytes {
        c.send_raw(std::slice::from_ref(b)).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let v = c.recv_msgid(5).await;
    assert_eq!(v["errno"], 0, "{v}");
    let id = v["id"].as_i64().unwrap();

    // Two frames split at odd places, terminator alone in the last segment.
    let login = format!(r#"{{"msgid":1,"id":{id},"password":"pässwörd"}}"#);
    let mut bytes = login.into_bytes();
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(br#"{"msgid":18}"#);
    bytes.push(b'\n');
    for chunk in [&bytes[..3], &bytes[3..20], &bytes[20..bytes.len() - 1]] {
        c.send_raw(chunk).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ack = c.recv_msgid(2).await;
    assert_eq!(ack["name"], "你好 wörld");
    c.expect_silence(100).await; // the PING is not complete yet
    c.send_raw(b"\n").await;
    c.recv_msgid(19).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_frames_and_bare_crlf_are_skipped() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.send_raw(b"\0\0\n\n\r\n\0\r\n").await;
    c.expect_silence(200).await;
    c.send_raw(b"\n\n{\"msgid\":18}\0\0\n\r\n").await;
    c.recv_msgid(19).await;
    c.expect_silence(200).await;
    // Server frames end with a bare LF.
    c.send_raw(b"{\"msgid\":18}\r\n").await;
    let t = c.recv_text().await;
    assert_eq!(t, r#"{"msgid":19}"#);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_errno_6_and_the_connection_stays_open() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let bad: [&[u8]; 12] = [
        b"{not json",
        b"[1,2,3]",
        b"\"a string\"",
        b"42",
        b"null",
        b"{}",
        b"{\"msgid\":\"18\"}",
        b"{\"msgid\":18.5}",
        b"{\"msgid\":null}",
        b"{\"msgid\":99999999999999999999}",
        b"{\"msgid\":18,\"x\":\"\xff\xfe\"}",
        b"\xc3\x28",
    ];
    for f in bad {
        let mut b = f.to_vec();
        b.push(b'\n');
        c.send_raw(&b).await;
        let e = c.expect_error(6).await;
        assert!(e.get("re").is_none(), "no msgid, so no re: {e}");
    }
    // reqid survives when the frame is an object with a bad msgid.
    c.send_raw(b"{\"msgid\":\"x\",\"reqid\":\"r\"}\n").await;
    assert_eq!(c.expect_error(6).await["reqid"], "r");
    // A reqid of the wrong type is itself malformed.
    c.send_raw(b"{\"msgid\":18,\"reqid\":[1]}\n").await;
    c.expect_error(6).await;
    c.send_raw(b"{\"msgid\":18}\n").await;
    c.recv_msgid(19).await;
    // Still usable for real work.
    let id = c.register("still-open", "pw").await;
    c.login_l2(id, "pw").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_at_the_limit_passes_and_one_byte_more_closes_with_errno_8() {
    let srv = TestServer::start().await; // default limit, 64 KiB
    let max = chat_protocol::limits::MAX_FRAME;
    let mut c = srv.connect().await;
    let mut f = ping_of_len(max);
    f.push(b'\n');
    c.send_raw(&f).await;
    c.recv_msgid(19).await;
    let mut f = ping_of_len(max);
    f.extend_from_slice(b"\r\n"); // the CR does not count
    c.send_raw(&f).await;
    c.recv_msgid(19).await;
    let mut f = ping_of_len(max);
    f.push(0);
    c.send_raw(&f).await;
    c.recv_msgid(19).await;

    let mut f = ping_of_len(max + 1);
    f.push(b'\n');
    c.try_send_raw(&f).await;
    let e = c.expect_error(8).await;
    assert!(e.get("re").is_none(), "{e}");
    c.expect_eof().await;

    // Other connections are unaffected.
    let mut d = srv.connect().await;
    d.send(json!({"msgid": 18})).await;
    d.recv_msgid(19).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_without_terminator_is_refused() {
    let cfg = clusterchat::Config {
        max_frame: 256,
        ..test_config()
    };
    let srv = TestServer::start_with(cfg).await;
    let mut c = srv.connect().await;
    let mut f = ping_of_len(256);
    f.push(b'\n');
    c.send_raw(&f).await;
    c.recv_msgid(19).await;
    // A peer that never sends a terminator cannot make the server buffer more.
    c.try_send_raw(&vec![b'{'; 4096]).await;
    c.expect_error(8).await;
    c.expect_eof().await;

    // A logged-in session is closed the same way, after its earlier replies.
    let mut c = srv.connect().await;
    let id = c.register("big", "pw").await;
    c.login_l2(id, "pw").await;
    let mut bytes = br#"{"msgid":18,"reqid":"before"}"#.to_vec();
    bytes.push(b'\n');
    bytes.extend_from_slice(&ping_of_len(300));
    bytes.push(b'\n');
    bytes.extend_from_slice(br#"{"msgid":18,"reqid":"after"}"#);
    bytes.push(b'\n');
    c.try_send_raw(&bytes).await;
    assert_eq!(c.recv().await, json!({"msgid": 19, "reqid": "before"}));
    c.expect_error(8).await;
    c.expect_eof().await;
    srv.stop().await;
}
