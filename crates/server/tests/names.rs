//! Name rules over a real socket (issue 8, item 8: "names allow
//! impersonation"): a name that looks like a registered one, or that hides
//! characters, or that looks blank, is refused at REG with errno 1, and at
//! CREATE_GROUP with errno 5 (taken) or 6 (invalid); the first name is still
//! shown exactly as it was registered.

mod common;

use common::*;
use serde_json::{json, Value};

/// REG that must fail with errno 1; returns the errmsg.
async fn refused_reg(c: &mut Client, name: &str) -> String {
    c.send(json!({"msgid": 4, "name": name, "password": "pw"}))
        .await;
    let v = c.recv_msgid(5).await;
    assert_eq!(v["errno"], 1, "REG {name:?} should be refused: {v}");
    v["errmsg"]
        .as_str()
        .unwrap_or_else(|| panic!("REG_ACK without errmsg: {v}"))
        .to_owned()
}

/// CREATE_GROUP at level 2 that must fail with `errno`.
async fn refused_group(c: &mut Client, name: &str, desc: &str, errno: i64) -> Value {
    c.send(json!({"msgid": 8, "groupname": name, "groupdesc": desc}))
        .await;
    let e = c.expect_error(errno).await;
    assert_eq!(e["re"], 8, "{name:?}: {e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_hidden_and_blank_names_are_refused_and_the_first_name_shows() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let alice = c.register("Alice", "pw").await;
    let cafe = c.register("Caf\u{E9}", "pw").await; // NFC

    // Looks like a registered name: "this name is taken".
    for name in [
        "Alice",
        "alice",
        "ALICE",
        "\u{FF21}lice",                             // fullwidth A
        "\u{0410}lice",                             // Cyrillic capital A
        "\u{0430}\u{04CF}\u{0456}\u{0441}\u{0435}", // all Cyrillic
        "\u{1D400}lice",                            // mathematical bold A
        "Cafe\u{301}",                              // NFD of "Café"
        "CAF\u{C9}",
        "Ali\u{34F}ce",  // combining grapheme joiner: invisible, not Cf
        "Alice\u{FE0F}", // variation selector
        "Ali\u{3164}ce", // Hangul filler inside
    ] {
        let msg = refused_reg(&mut c, name).await;
        assert_eq!(msg, "this name is taken", "{name:?}");
    }

    // Hides characters: invisible and format (Cf), control, separators.
    for name in [
        "A\u{200B}lice",  // zero-width space
        "Ali\u{200D}ce",  // zero-width joiner
        "Alice\u{2060}",  // word joiner
        "\u{202E}ecilA",  // right-to-left override
        "Alice\u{2066}",  // left-to-right isolate
        "\u{FEFF}Alice",  // byte order mark
        "Alice\u{E0041}", // tag character
        "Al\u{AD}ice",    // soft hyphen
        "Ali\u{2028}ce",  // line separator
        "Ali\u{2029}ce",  // paragraph separator
        "Ali\u{1B}ce",    // escape
        "Ali\u{85}ce",    // next line (C1)
    ] {
        let msg = refused_reg(&mut c, name).await;
        assert!(msg.starts_with("names may not contain"), "{name:?}: {msg}");
    }

    // Looks blank, or has blank ends.
    for name in [
        " ",
        "\u{3164}",
        "\u{115F}",
        "\u{1160}",
        "\u{FFA0}",
        "\u{2800}",
        "\u{3000}",
        "\u{3164}\u{2800}\u{3164}",
    ] {
        let msg = refused_reg(&mut c, name).await;
        assert!(msg.contains("something besides spaces"), "{name:?}: {msg}");
    }
    for name in ["Alice\u{3164}", "\u{2800}Alice", "Alice\u{3000}", " Bob"] {
        let msg = refused_reg(&mut c, name).await;
        assert!(msg.contains("start or end"), "{name:?}: {msg}");
    }

    // Different names are still welcome, and names show as registered: in
    // the login ack's own name and in friend lists, at both levels. (Level 1
    // for the friend requests: no push can come between request and barrier.)
    let bob = c.register("Bob \u{1F409}", "pw").await;
    let mut b = srv.connect().await;
    assert_eq!(b.login_l1(bob, "pw").await["name"], "Bob \u{1F409}");
    b.send(json!({"msgid": 7, "friendid": alice})).await;
    b.send(json!({"msgid": 7, "friendid": cafe})).await;
    b.barrier().await;

    let mut a = srv.connect().await;
    let ack = a.login_l1(alice, "pw").await;
    assert_eq!(ack["name"], "Alice");
    let friends: Vec<Value> = ack["friends"]
        .as_array()
        .unwrap()
        .iter()
        .map(decode_str)
        .collect();
    assert_eq!(friends.len(), 1, "{ack}");
    assert_eq!(friends[0]["name"], "Bob \u{1F409}");

    let mut b2 = srv.connect().await;
    let ack = b2.login_l2(bob, "pw").await;
    let names: Vec<(i64, &str)> = ack["friends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["id"].as_i64().unwrap(), f["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, vec![(alice, "Alice"), (cafe, "Caf\u{E9}")]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_names_follow_the_same_rules() {
    let srv = TestServer::start().await;
    let (alice, mut a) = user_l2(&srv, "alice").await;
    let (_, mut b) = user_l2(&srv, "bob").await;
    a.send(json!({"msgid": 8, "groupname": "Team", "groupdesc": "the \u{1F469}\u{200D}\u{1F469}\u{200D}\u{1F467} crew"}))
        .await;
    let g = a.expect_ack(8).await["groupid"].as_i64().unwrap();

    // A look-alike of an existing group name: errno 5, as for the same name.
    for name in [
        "Team",
        "team",
        "TEAM",
        "\u{FF34}eam",
        "T\u{0435}am",
        "Te\u{34F}am",
    ] {
        let e = refused_group(&mut b, name, "", 5).await;
        assert_eq!(e["errmsg"], "a group with this name exists", "{name:?}");
    }
    // Invalid group names: errno 6, as the group-name checks always were.
    for name in [
        "Te\u{200B}am",
        "\u{202E}maeT",
        "\u{FEFF}Team",
        "Team\u{E0041}",
        "Te\u{2028}am",
        "Te\nam",
        " ",
        "\u{3164}",
        "\u{2800}\u{2800}",
        "Team\u{3164}",
        " Team",
    ] {
        let e = refused_group(&mut b, name, "", 6).await;
        assert!(
            e["errmsg"].as_str().unwrap().starts_with("groupname: "),
            "{name:?}: {e}"
        );
    }
    // Descriptions refuse control characters and line separators.
    for desc in ["two\nlines", "\u{1B}[31mred", "a\u{2028}b", "tab\there"] {
        let e = refused_group(&mut b, "Other", desc, 6).await;
        assert!(
            e["errmsg"].as_str().unwrap().starts_with("groupdesc"),
            "{desc:?}: {e}"
        );
    }

    // The group shows as it was created, in the creator's next login ack.
    let mut a2 = srv.connect().await;
    let ack = a2.login_l2(alice, "pw").await;
    let groups = ack["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{ack}");
    assert_eq!(groups[0]["id"], g);
    assert_eq!(groups[0]["groupname"], "Team");
    assert_eq!(
        groups[0]["groupdesc"],
        "the \u{1F469}\u{200D}\u{1F469}\u{200D}\u{1F467} crew"
    );
    srv.stop().await;
}
