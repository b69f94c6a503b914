//! The web client in a real browser: headless Chromium (through
//! chromedriver) loads the page from a real server and a test drives it the
//! way a person would: it types into the forms, presses Enter, clicks the
//! sidebar, reloads the page, and lives through a server crash. The other
//! side of each conversation is another browser, the `chat` terminal client
//! or a TCP client of the test kit, so the page is checked against every
//! kind of client.
//!
//! Every test waits for what the page shows (see `harness.rs`), never for a
//! fixed time. Without Chromium the tests print "skipped" and pass, except
//! under CI (the environment variable `CI` set), where they fail.
//!
//! With `CLUSTERCHAT_SCREENSHOTS=1`, `screenshots_of_the_main_views` writes
//! the pictures in docs/screenshots/ (login, chat, group, mobile).

mod app;
mod harness;
mod peer;
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chat_testkit::{Client, TestServer};
use harness::{programs, Browser, ONE_AT_A_TIME};
use peer::Peer;
use process::{chat_binary, ServerProcess, Terminal};
use serde_json::json;
use tokio::sync::MutexGuard;

/// Two people, each in a browser of their own, register, find each other by
/// name, become friends and chat both ways; presence follows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_register_befriend_and_chat() {
    let Some(((chromium, driver), _turn)) = turn("two_browsers_register_befriend_and_chat").await
    else {
        return;
    };
    let srv = TestServer::start().await;
    let a = Browser::start(&chromium, &driver).await;
    let b = Browser::start(&chromium, &driver).await;

    let alice = a.sign_up(srv.http, "alice", "alice-secret").await;
    let bob = b.sign_up(srv.http, "bob", "bob-secret").await;
    assert_ne!(alice, bob);
    assert_eq!(
        a.js(
            "return document.getElementById('me-name').textContent;",
            vec![]
        )
        .await,
        json!("alice")
    );

    // Alice finds bob by his exact name and adds him; bob is told.
    assert_eq!(a.add_friend("bob").await, bob);
    b.contact("friend", alice).await;
    a.wait_presence("friend", bob, true).await;
    b.wait_presence("friend", alice, true).await;

    // Alice writes (Enter sends); bob sees an unread count, then the text.
    a.open_contact("friend", bob).await;
    a.say("hi bob! lunch at noon?").await;
    b.wait_unread("friend", alice, 1).await;
    b.open_contact("friend", alice).await;
    b.see_once("hi bob! lunch at noon?").await;
    assert_eq!(b.sender_of("hi bob! lunch at noon?").await, "alice");
    assert_eq!(b.unread("friend", alice).await, 0);

    // Bob answers with the Send button, then with Enter.
    b.type_send("sure, the usual place?").await;
    b.wait_own("sure, the usual place?", "sent").await;
    a.see_once("sure, the usual place?").await;
    assert_eq!(a.sender_of("sure, the usual place?").await, "bob");
    b.say("see you there").await;
    a.see_once("see you there").await;
    // Alice has the conversation open: nothing counts as unread.
    assert_eq!(a.unread("friend", bob).await, 0);
    a.say("great").await;
    b.see_once("great").await;
    // The emptied composer is one line again, without a scrollbar.
    let fits = a
        .js(
            "const c = document.getElementById('composer');
             return c.value === '' && c.scrollHeight <= c.clientHeight;",
            vec![],
        )
        .await;
    assert_eq!(fits, json!(true), "the composer overflows its box");

    // Both show the whole conversation once, in order.
    let order = "return [...document.querySelectorAll('#messages li[data-testid=message] .text')]
                     .map((e) => e.textContent);";
    let want = json!([
        "hi bob! lunch at noon?",
        "sure, the usual place?",
        "see you there",
        "great"
    ]);
    assert_eq!(a.js(order, vec![]).await, want);
    assert_eq!(b.js(order, vec![]).await, want);

    // Bob logs out: alice sees him go offline.
    b.click("#logout").await;
    b.el("#login-form").await;
    a.wait_presence("friend", bob, false).await;
}

/// A group of three kinds of client: alice in the browser, bob in the
/// `chat` terminal client and carol on a level-1 (classic) TCP connection.
/// Each sees the others' group messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_a_browser_a_terminal_and_a_classic_client() {
    let test = "a_group_of_a_browser_a_terminal_and_a_classic_client";
    let Some(((chromium, driver), _turn)) = turn(test).await else {
        return;
    };
    let chat = chat_binary(test);
    let srv = TestServer::start().await;
    let a = Browser::start(&chromium, &driver).await;
    let alice = a.sign_up(srv.http, "alice", "alice-secret").await;

    // Alice creates the group in the page.
    let group = a.create_group("trail crew", "hikes on weekends").await;
    a.open_contact("group", group).await;

    // Carol, level 1: the classic protocol, no ACKs, no mids.
    let mut carol = Client::connect(srv.addr).await;
    let carol_id = carol.register("carol", "pw").await;
    carol.login_l1(carol_id, "pw").await;
    carol.send(json!({"msgid": 9, "groupid": group})).await;
    carol.barrier().await;

    // Bob, the terminal client, through its menu and commands.
    let mut bob = None;
    if let Some(bin) = &chat {
        let mut t = Terminal::start(bin, srv.addr);
        let id = t.register("bob", "bob-secret").await;
        t.log_in(id, "bob-secret", "bob").await;
        t.send(&format!("addgroup:{group}"));
        t.expect(&format!("joined group {group}")).await;
        bob = Some((id, t));
    }
    // The page hears of the members joining.
    let members = if bob.is_some() { 3 } else { 2 };
    a.until(
        "the group to count its members",
        "return document.getElementById('conv-sub').textContent.includes(arguments[0] + ' members');",
        vec![json!(members)],
    )
    .await;

    // The browser writes: carol and bob get it.
    a.say("hello from the browser").await;
    let got = carol.recv_msgid(10).await;
    assert_eq!(
        (&got["groupid"], &got["id"], &got["msg"]),
        (
            &json!(group),
            &json!(alice),
            &json!("hello from the browser")
        )
    );
    assert!(got.get("mid").is_none(), "level 1 gets no mid: {got}");
    if let Some((_, t)) = &mut bob {
        let line = t.expect("hello from the browser").await;
        assert!(
            line.starts_with(&format!("[group {group} \"trail crew\"]"))
                && line.ends_with(&format!("alice({alice}): hello from the browser")),
            "{line}"
        );
    }

    // Carol writes: the browser and bob get it.
    carol
        .send(json!({"msgid": 10, "groupid": group, "msg": "hello from the classic client"}))
        .await;
    a.see_once("hello from the classic client").await;
    assert_eq!(a.sender_of("hello from the classic client").await, "carol");
    if let Some((_, t)) = &mut bob {
        let line = t.expect("hello from the classic client").await;
        assert!(
            line.ends_with(&format!("carol({carol_id}): hello from the classic client")),
            "{line}"
        );
    }

    // Bob writes: the browser and carol get it.
    if let Some((bob_id, t)) = &mut bob {
        t.send(&format!("groupchat:{group}:hello from the terminal"));
        t.expect(&format!("group message sent to group {group}"))
            .await;
        a.see_once("hello from the terminal").await;
        assert_eq!(a.sender_of("hello from the terminal").await, "bob");
        let got = carol.recv_msgid(10).await;
        assert_eq!(
            (&got["id"], &got["msg"]),
            (&json!(*bob_id), &json!("hello from the terminal"))
        );
        // Nobody got anything twice.
        assert_eq!(t.seen_with("hello from the browser"), 1);
        assert_eq!(t.seen_with("hello from the classic client"), 1);
    }
    carol.barrier().await;
    a.assert_once(&["hello from the browser", "hello from the classic client"])
        .await;
}

/// A message sent to someone who is not logged in waits for them: they log
/// in with id and password in the page and see it once, and not again at
/// the next login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_message_is_waiting_at_login() {
    let Some((chrome, _turn)) = turn("an_offline_message_is_waiting_at_login").await else {
        return;
    };
    let srv = TestServer::start().await;
    let dana = srv.register("dana", "dana-secret").await;
    let (erin, mut e) = chat_testkit::user_l1(&srv, "erin").await;
    let texts = ["are you there?", "call me when you land"];
    for t in texts {
        e.send(json!({"msgid": 6, "toid": dana, "msg": t})).await;
    }
    e.barrier().await;

    let b = Browser::logged_in(&chrome, srv.http, dana, "dana-secret").await;
    // Erin is not a friend: the conversation is under "Other people".
    b.wait_unread("user", erin, 2).await;
    b.open_contact("user", erin).await;
    for t in texts {
        b.see_once(t).await;
    }
    assert_eq!(b.sender_of(texts[0]).await, "erin");
    assert_eq!(b.unread("user", erin).await, 0);
    // History has loaded (and found the same two): still once each.
    b.wait_history().await;
    b.assert_once(&texts).await;
    srv.wait_acked(dana, 2).await;

    // Log out and in again: the messages are read, nothing comes again.
    b.click("#logout").await;
    b.log_in(dana, "dana-secret").await;
    b.open_contact("user", erin).await;
    b.wait_history().await;
    b.assert_once(&texts).await;
    assert_eq!(b.unread("user", erin).await, 0);
}

/// A reload in the middle of a conversation logs in again with the saved
/// token (no password typed), and loses or doubles nothing: not a message
/// typed just before the reload, not those the other side sent meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_resumes_the_session_and_loses_nothing() {
    let Some((chrome, _turn)) = turn("a_reload_resumes_the_session_and_loses_nothing").await else {
        return;
    };
    let srv = TestServer::start().await;
    let (alice, mut bob) = alice_and_bob(srv.addr).await;

    let a = Browser::logged_in(&chrome, srv.http, alice, "alice-secret").await;
    a.open_contact("friend", bob.id).await;
    bob.say(alice, "did you read my mail?").await;
    a.see_once("did you read my mail?").await;
    a.say("not yet, opening it now").await;
    bob.until_msg("not yet, opening it now").await;
    // The page has confirmed what it got (and saved that).
    a.until(
        "the page to save its last seq",
        "return Number(localStorage.getItem('clusterchat.seq.' + arguments[0])) >= 1;",
        vec![json!(alice)],
    )
    .await;

    // Alice presses Enter and reloads at once; bob writes twice as soon as
    // her presence changes: she went offline (or, should the new page log
    // in before the server saw the old one go, came online again).
    a.type_enter("typed just before the reload").await;
    let during = ["sent during the reload", "and another one"];
    let (reloaded, ()) = tokio::join!(a.c.refresh(), async {
        bob.until("alice's presence to change", |v| {
            v["msgid"] == 20 && v["id"] == alice
        })
        .await;
        for t in during {
            bob.say(alice, t).await;
        }
    });
    reloaded.expect("reload the page");

    // Back in, with the token: the login form is never shown filled.
    a.wait_me(alice).await;
    let pw = a
        .js(
            "return document.getElementById('login-password').value;",
            vec![],
        )
        .await;
    assert_eq!(pw, json!(""));
    // No conversation is open after a reload: bob's two count as unread.
    let hidden = a
        .js(
            "return document.getElementById('conversation').hidden;",
            vec![],
        )
        .await;
    assert_eq!(hidden, json!(true));
    a.wait_unread("friend", bob.id, 2).await;
    a.open_contact("friend", bob.id).await;
    a.wait_own("typed just before the reload", "sent").await;
    let all = [
        "did you read my mail?",
        "not yet, opening it now",
        "typed just before the reload",
        during[0],
        during[1],
    ];
    for t in all {
        a.see_once(t).await;
    }
    assert_eq!(a.unread("friend", bob.id).await, 0);

    // Bob got the message typed before the reload once, and it is stored once.
    a.say("all caught up").await;
    bob.until_msg("all caught up").await;
    assert_eq!(bob.received("typed just before the reload"), 1);
    assert_eq!(bob.stored(alice, "typed just before the reload").await, 1);
    a.assert_once(&all).await;
}

/// The server is killed (SIGKILL) and started again while the page is open:
/// the banner says so, the page reconnects by itself, the message typed
/// while offline goes out once, and the one sent to it meanwhile arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lives_through_a_server_restart() {
    let Some((chrome, _turn)) = turn("the_page_lives_through_a_server_restart").await else {
        return;
    };
    let mut srv = ServerProcess::start().await;
    let (alice, mut bob) = alice_and_bob(srv.addr).await;

    let a = Browser::logged_in(&chrome, srv.http, alice, "alice-secret").await;
    a.open_contact("friend", bob.id).await;
    bob.say(alice, "is the server up?").await;
    a.see_once("is the server up?").await;

    srv.kill();
    a.until(
        "the banner to show the page is offline",
        "const b = document.getElementById('banner');
         return !b.hidden && ['offline', 'reconnecting'].includes(b.dataset.state);",
        vec![],
    )
    .await;
    // Typed while offline: it waits, shown as sending.
    a.type_enter("typed while the server was down").await;
    a.wait_own("typed while the server was down", "sending")
        .await;
    let status = a
        .js(
            "return document.querySelector('#messages li[data-state=sending] .status').textContent;",
            vec![],
        )
        .await;
    assert!(
        status
            .as_str()
            .unwrap_or_default()
            .contains("waiting for the connection"),
        "{status}"
    );
    // Wait until the page's next try is a few seconds away, so the server
    // can come back and bob can write before the page is back.
    a.until(
        "the page to wait seconds before its next try",
        "const m = /reconnecting in (\\d+)s/.exec(document.getElementById('banner-text').textContent);
         return m && Number(m[1]) >= 3;",
        vec![],
    )
    .await;
    srv.restart().await;
    bob.reconnect(srv.addr).await;
    bob.say(alice, "sent while you were offline").await;
    let still_offline = a
        .js(
            "return document.getElementById('banner').dataset.state !== 'online';",
            vec![],
        )
        .await;
    if still_offline != json!(true) {
        println!("note: the page was back before bob's message was sent (a slow machine?)");
    }

    // The page reconnects on its own and logs in with its token.
    a.wait_online().await;
    a.wait_own("typed while the server was down", "sent").await;
    a.see_once("sent while you were offline").await;
    bob.until_msg("typed while the server was down").await;
    a.say("back online").await;
    bob.until_msg("back online").await;
    assert_eq!(bob.received("typed while the server was down"), 1);
    assert_eq!(
        bob.stored(alice, "typed while the server was down").await,
        1
    );
    assert_eq!(bob.stored(alice, "sent while you were offline").await, 1);
    a.assert_once(&[
        "is the server up?",
        "typed while the server was down",
        "sent while you were offline",
        "back online",
    ])
    .await;
}

/// Message text is text: markup in it is shown as typed, never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_messages_is_shown_as_text() {
    let Some((chrome, _turn)) = turn("markup_in_messages_is_shown_as_text").await else {
        return;
    };
    let srv = TestServer::start().await;
    let (alice, mut bob) = alice_and_bob(srv.addr).await;
    let a = Browser::logged_in(&chrome, srv.http, alice, "alice-secret").await;
    a.open_contact("friend", bob.id).await;

    let img = "<img src=x onerror=window.__pwned=1>";
    let script = "<script>window.__pwned=2</script>";
    let own = "<img src=y onerror=window.__pwned=3><b>bold?</b>";
    bob.say(alice, img).await;
    bob.say(alice, script).await;
    a.say(own).await;
    bob.until_msg(own).await;
    for t in [img, script, own] {
        a.see_once(t).await;
    }
    let v = a
        .js(
            "return {
                 pwned: typeof window.__pwned,
                 tags: document.querySelectorAll('#messages img, #messages script, #messages b').length,
             };",
            vec![],
        )
        .await;
    assert_eq!(v, json!({"pwned": "undefined", "tags": 0}));
    // Rendered again from history, after a reload: still text.
    a.say(img).await;
    a.c.refresh().await.expect("reload the page");
    a.wait_me(alice).await;
    a.open_contact("friend", bob.id).await;
    a.wait_history().await;
    let n = a.count(img).await;
    assert_eq!(n, 2, "bob's and alice's own copy of the img text");
    for t in [script, own] {
        a.see_once(t).await;
    }
    let v = a
        .js(
            "return typeof window.__pwned + ' ' + document.querySelectorAll('#messages img, #messages script').length;",
            vec![],
        )
        .await;
    assert_eq!(v, json!("undefined 0"));
}

/// A realistic scene, with pictures of the main views: the login page,
/// a conversation among friends (presence, an unread count), a group, and
/// the narrow (phone) layout. The pictures go to docs/screenshots/ with
/// `CLUSTERCHAT_SCREENSHOTS=1`, else to a temporary directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_the_main_views() {
    let Some(((chromium, driver), _turn)) = turn("screenshots_of_the_main_views").await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = if std::env::var_os("CLUSTERCHAT_SCREENSHOTS").is_some_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
    } else {
        tmp.path().to_owned()
    };
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let srv = TestServer::start().await;
    let alice = srv.register("alice", "alice-secret").await;
    let mut bob = Peer::new(srv.addr, "bob").await;
    let mut carol = Peer::new(srv.addr, "carol").await;
    let mut dave = Peer::new(srv.addr, "dave").await;
    for p in [&mut bob, &mut carol, &mut dave] {
        p.befriend(alice).await;
    }

    let a = Browser::start(&chromium, &driver).await;
    a.open_online(srv.http).await;
    a.el("#login-form").await;
    shot(&a, &dir, "login.png").await;

    a.log_in(alice, "alice-secret").await;
    a.wait_presence("friend", bob.id, true).await;

    // The group: alice creates it, bob and carol join and talk.
    let group = a
        .create_group("Weekend hike", "Saturday 8:00 at the north trailhead")
        .await;
    a.open_contact("group", group).await;
    bob.join(group).await;
    carol.join(group).await;
    bob.say_group(group, "Forecast says sunny all day. Who is in?")
        .await;
    a.see_once("Forecast says sunny all day. Who is in?").await;
    carol
        .say_group(group, "Me! I can bring the first aid kit and snacks.")
        .await;
    a.see_once("Me! I can bring the first aid kit and snacks.")
        .await;
    a.say("Great, I'll drive. There is room for three more.")
        .await;
    bob.say_group(group, "Count me in. Coffee at 7:30 before we leave?")
        .await;
    a.see_once("Count me in. Coffee at 7:30 before we leave?")
        .await;
    shot(&a, &dir, "group.png").await;

    // Carol goes offline; a conversation with bob; dave writes meanwhile.
    let carol_id = carol.id;
    drop(carol);
    a.wait_presence("friend", carol_id, false).await;
    a.open_contact("friend", bob.id).await;
    bob.say(alice, "Hey Alice, did you get the slides for Monday?")
        .await;
    a.see_once("Hey Alice, did you get the slides for Monday?")
        .await;
    a.say("Yes, just finished them. Sending you the link in a minute.")
        .await;
    bob.say(alice, "Thanks! Could you add the Q3 numbers too?")
        .await;
    a.see_once("Thanks! Could you add the Q3 numbers too?")
        .await;
    a.say("Sure, I'll have them ready tonight.").await;
    bob.say(alice, "Perfect, see you at the standup.").await;
    a.see_once("Perfect, see you at the standup.").await;
    dave.say(alice, "Are we still on for chess on Thursday?")
        .await;
    dave.say(alice, "I found a new opening to try.").await;
    a.wait_unread("friend", dave.id, 2).await;
    a.wait_presence("friend", dave.id, true).await;
    shot(&a, &dir, "chat.png").await;

    // A phone: the conversation fills the screen.
    a.c.set_window_size(390, 844).await.expect("resize");
    a.until(
        "the narrow layout to show the conversation",
        "return document.getElementById('chat-view').dataset.pane === 'conversation'
             && getComputedStyle(document.getElementById('sidebar')).display === 'none';",
        vec![],
    )
    .await;
    shot(&a, &dir, "mobile.png").await;
}

/// Chromium and chromedriver for `test` (None: skipped), and this test's
/// turn to use them, held until the guard drops.
async fn turn(test: &str) -> Option<((PathBuf, PathBuf), MutexGuard<'static, ()>)> {
    let chrome = programs(test)?;
    Some((chrome, ONE_AT_A_TIME.lock().await))
}

/// Alice (password "alice-secret"), and bob on TCP as her friend.
async fn alice_and_bob(addr: SocketAddr) -> (i64, Peer) {
    let alice = Client::connect(addr)
        .await
        .register("alice", "alice-secret")
        .await;
    let mut bob = Peer::new(addr, "bob").await;
    bob.befriend(alice).await;
    (alice, bob)
}

/// Saves a picture of the page (without notices or a focus ring) as
/// `dir/name`, and checks it is a PNG.
async fn shot(a: &Browser, dir: &Path, name: &str) {
    let path = dir.join(name);
    a.js(
        "document.getElementById('notice').hidden = true; document.activeElement.blur();",
        vec![],
    )
    .await;
    a.screenshot(&path).await;
    let png = std::fs::read(&path).expect("read the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
}
