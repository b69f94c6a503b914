//! End to end: the real `chat-server` binary on a free loopback port with a
//! temporary SQLite database, driven by real `chat` processes through their
//! stdin and stdout (pipes, so the client reads and prints plain lines; see
//! [`harness`]) or through a pseudo-terminal (so it runs its line editor; see
//! [`term`]). Every read has a timeout, and every child is killed on drop.

mod harness;
mod term;
mod tls;

use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use harness::{chat_exe, free_port, Client, Server};
use term::Term;

#[test]
fn two_users_chat_befriend_and_share_a_group() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut a = Client::start("alice", &server.addr, &state.path().join("a"));
    let mut b = Client::start("bob", &server.addr, &state.path().join("b"));
    a.expect(&format!("connected to {}", server.addr));

    let alice = a.register("alice", "pw-alice");
    let bob = b.register("bob", "pw-bob");
    assert_ne!(alice, bob);

    a.login(alice, "pw-alice", "alice");
    b.expect("3. quit");
    b.login(bob, "pw-bob", "bob");

    // One to one, both ways; the text keeps its colons.
    a.send(&format!("chat:{bob}:hello bob: it is 10:30"));
    a.expect(&format!(
        "you → user {bob}: hello bob: it is 10:30 (sending…)"
    ));
    a.expect(&format!("message sent to user {bob}"));
    let got = b.expect("hello bob");
    assert!(
        got.ends_with(&format!("alice({alice}): hello bob: it is 10:30")),
        "{got}"
    );
    assert!(got.starts_with("[20"), "a timestamp comes first: {got}");
    // A live message gets no "while you were away" marker.
    assert!(
        !b.seen_text().contains("while you were away"),
        "{}",
        b.seen_text()
    );
    b.send(&format!("chat:{alice}:hi alice"));
    b.expect(&format!("message sent to alice({alice})"));
    let got = a.expect("hi alice");
    assert!(got.ends_with(&format!("bob({bob}): hi alice")), "{got}");

    // Errors are explained, and the session goes on.
    a.send("chat:999999:anyone?");
    a.expect("chat to 999999 failed: no such user");
    a.send("dance");
    a.expect("unknown command \"dance\"; type help");
    a.send("help");
    a.expect("groupchat:ID:TEXT");

    // Friends.
    a.send(&format!("addfriend:{bob}"));
    a.expect(&format!("bob({bob}) is now your friend"));
    a.send(&format!("addfriend:{bob}"));
    a.expect(&format!("addfriend {bob} failed: already friends"));
    a.send("friends");
    a.expect("friends (1):");
    a.expect(&format!("bob({bob})"));

    // A group: alice creates it, bob joins, both talk in it.
    a.send("creategroup:team:the team: all of us");
    let group = group_id(&a.expect("group \"team\" created (id "));
    b.send(&format!("addgroup:{group}"));
    b.expect(&format!("joined group {group}"));
    b.send(&format!("groupchat:{group}:hello team"));
    b.expect(&format!("group message sent to group {group}"));
    let got = a.expect("hello team");
    assert!(
        got.starts_with(&format!("[group {group} \"team\"] [20")),
        "{got}"
    );
    assert!(got.ends_with(&format!("bob({bob}): hello team")), "{got}");
    a.send(&format!("groupchat:{group}:welcome bob"));
    a.expect("group message sent");
    let got = b.expect("welcome bob");
    assert!(
        got.ends_with(&format!("alice({alice}): welcome bob")),
        "{got}"
    );
    a.send("groups");
    a.expect("groups (1):");
    a.expect("group");

    // History, oldest first.
    a.send(&format!("history:{bob}"));
    a.expect(&format!("--- history with bob({bob}): 2 messages ---"));
    let h = a.until("--- end of history");
    assert_eq!(h.len(), 3, "{h:?}");
    assert!(h[0].contains("hello bob: it is 10:30"), "{h:?}");
    assert!(h[1].contains("hi alice"), "{h:?}");
    b.send(&format!("ghistory:{group}"));
    b.expect("history of group");
    let h = b.until("--- end of history");
    assert!(h[0].contains("hello team"), "{h:?}");
    assert!(h[1].contains("welcome bob"), "{h:?}");

    // Bob's friend list came from the server only at login; alice's
    // addfriend is mutual, and PRESENCE tells alice when bob leaves and comes back.
    b.send("loginout");
    b.expect(&format!("bob({bob}) logged out"));
    a.expect(&format!("bob({bob}) is now offline"));
    b.expect("3. quit");
    b.login(bob, "pw-bob", "bob");
    a.expect(&format!("bob({bob}) is now online"));
    b.send("friends");
    b.expect(&format!("alice({alice}) online"));
    b.send("groups");
    b.expect(&format!("group {group} \"team\": the team: all of us"));

    // Group management: only the creator may disband; bob may quit.
    b.send(&format!("disband:{group}"));
    b.expect(&format!("disband {group} failed: "));
    b.send(&format!("quitgroup:{group}"));
    b.expect(&format!("left group {group}"));
    a.send(&format!("delfriend:{bob}"));
    a.expect(&format!("bob({bob}) is no longer your friend"));
    a.send(&format!("disband:{group}"));
    a.expect(&format!("group {group} \"team\" disbanded"));

    // quit exits cleanly.
    a.send("quit");
    a.expect("bye");
    assert!(a.wait_exit().success());
    b.close_stdin();
    b.expect("bye");
    assert!(b.wait_exit().success());
}

#[test]
fn offline_messages_arrive_at_next_login_once() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let bob_state = state.path().join("b");
    let mut a = Client::start("alice", &server.addr, &state.path().join("a"));
    let mut b = Client::start("bob", &server.addr, &bob_state);
    let alice = a.register("alice", "pw-a");
    let bob = b.register("bob", "pw-b");
    a.expect("3. quit");
    a.login(alice, "pw-a", "alice");

    // Bob is not logged in: the message waits for him.
    a.send(&format!("chat:{bob}:are you there?"));
    a.expect("message sent");
    a.send(&format!("chat:{bob}:second: still here"));
    a.expect("message sent");
    // The backlog is what was written before the login's second.
    thread::sleep(Duration::from_millis(1100));

    b.expect("3. quit");
    b.login(bob, "pw-b", "bob");
    let seen = b.until("are you there?");
    assert_eq!(
        seen[seen.len() - 2],
        "--- while you were away ---",
        "{seen:?}"
    );
    let first = seen[seen.len() - 1].clone();
    assert!(
        first.ends_with(&format!("alice({alice}): are you there?")),
        "{first}"
    );
    b.expect("second: still here");

    // Live messages still arrive after the backlog.
    a.send(&format!("chat:{bob}:live now"));
    b.expect("live now");

    // Bob quits without logging out (keeping his saved session), then comes
    // back with a new process: nothing is replayed, and an empty password
    // resumes the saved session with the token.
    b.send("quit");
    b.expect("bye");
    assert!(b.wait_exit().success());
    let file = bob_state
        .join(server.addr.replace(':', "_"))
        .join(format!("user-{bob}.json"));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["last_seq"], 3, "{saved}");
    assert!(
        saved["token"].as_str().is_some_and(|t| !t.is_empty()),
        "{saved}"
    );
    let mut b = Client::start("bob again", &server.addr, &bob_state);
    b.expect("3. quit");
    b.send("1");
    b.send(&bob.to_string());
    b.send("");
    let seen = b.until("type help");
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("logged in as bob({bob})"))),
        "{seen:?}"
    );
    // History replies come after any replayed message: a marker.
    b.send(&format!("history:{alice}"));
    let seen = b.until("--- end of history");
    let header = seen
        .iter()
        .position(|l| l.starts_with("--- history with"))
        .unwrap();
    for l in &seen[..header] {
        assert!(
            !l.contains("are you there?") && !l.contains("live now"),
            "delivered messages came again: {seen:?}"
        );
    }
    assert!(seen[header].contains("3 messages"), "{seen:?}");

    // After loginout the token is revoked, so Enter alone no longer works
    // and the password is asked for.
    b.send("loginout");
    b.expect("logged out");
    b.expect("3. quit");
    a.send(&format!("chat:{bob}:while you were out"));
    a.expect("message sent");
    b.send("1");
    b.send(&bob.to_string());
    b.send("pw-b");
    b.expect(&format!("logged in as bob({bob})"));
    b.expect("while you were out");

    // DELIVERED alone tells the server: with the state file gone (so LOGIN
    // carries no last_seq), nothing comes again.
    b.send("quit");
    b.expect("bye");
    assert!(b.wait_exit().success());
    std::fs::remove_dir_all(&bob_state).unwrap();
    let mut b = Client::start("bob, fresh state", &server.addr, &bob_state);
    b.expect("3. quit");
    b.login(bob, "pw-b", "bob");
    b.send(&format!("history:{alice}"));
    let seen = b.until("--- end of history");
    assert!(
        !seen[0].contains("while you were out") && seen[0].starts_with("--- history with"),
        "delivered messages came again: {seen:?}"
    );
    assert!(seen[0].contains("4 messages"), "{seen:?}");
}

#[test]
fn a_script_sees_the_replies_before_quit_exits() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut a = Client::start("script", &server.addr, state.path());
    let id = a.register("erin", "pw");
    // Everything at once, as `printf ... | chat` would send it.
    a.send(&format!(
        "1\n{id}\npw\nchat:{id}:note to self\naddfriend:999999\nquit"
    ));
    a.close_stdin();
    let seen = a.until("bye");
    let sent = seen
        .iter()
        .position(|l| l.starts_with("message sent to "))
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("] erin({id}): note to self"))),
        "{seen:?}"
    );
    assert!(
        seen[sent..]
            .iter()
            .any(|l| l.starts_with("addfriend 999999 failed: no such user")),
        "{seen:?}"
    );
    assert!(a.wait_exit().success());
}

/// Runs `chat ADDR` with `input` on stdin, as `printf ... | chat` would.
fn script(addr: &str, state: &std::path::Path, input: &str) -> std::process::Output {
    let mut child = Command::new(chat_exe())
        .arg(addr)
        .env("CHAT_STATE_DIR", state)
        .env_remove("CHAT_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The client may stop reading early; a broken pipe is fine.
    let _ = std::io::Write::write_all(&mut stdin, input.as_bytes());
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn a_script_stops_at_a_refused_login_or_registration_with_status_3() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut a = Client::start("erin", &server.addr, state.path());
    let id = a.register("erin", "pw");
    let cases = [
        (
            "wrong password",
            format!("1\n{id}\nwrong\n2\nmore\npw\nquit\n"),
            "login failed: ",
        ),
        (
            "taken name",
            "2\nerin\nwhatever\n1\nquit\n".to_owned(),
            "register failed: ",
        ),
        (
            "not an id",
            "1\nerin\npw\nquit\n".to_owned(),
            "is not a user id",
        ),
        (
            "not a choice",
            "hello\n1\nquit\n".to_owned(),
            "invalid choice",
        ),
    ];
    for (what, input, says) in cases {
        let out = script(&server.addr, state.path(), &input);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{what}: {stdout}\n{stderr}");
        assert!(
            stderr.starts_with("chat: ") && stderr.contains(says),
            "{what}: {stderr}"
        );
        // Nothing after the failure was read as a menu choice.
        assert!(!stdout.contains("registered more"), "{what}: {stdout}");
        assert!(!stdout.contains("bye"), "{what}: {stdout}");
        assert_eq!(stdout.matches("3. quit").count(), 1, "{what}: {stdout}");
    }
}

#[test]
fn a_script_whose_connection_drops_exits_with_status_4() {
    let mut server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut a = Client::start("frank", &server.addr, state.path());
    let id = a.register("frank", "pw");
    a.expect("3. quit");
    a.login(id, "pw", "frank");
    server.crash_and_restart();
    a.expect("connection to the server lost");
    let st = a.wait_exit();
    assert_eq!(st.code(), Some(4), "{}", a.stderr());
    assert!(
        a.stderr().contains("chat: connection to the server lost"),
        "{}",
        a.stderr()
    );
}

#[test]
fn a_script_kicked_by_a_newer_login_exits_with_status_4() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut a = Client::start("first", &server.addr, &state.path().join("1"));
    let id = a.register("carol", "pw");
    a.expect("3. quit");
    a.login(id, "pw", "carol");
    let mut b = Client::start("second", &server.addr, &state.path().join("2"));
    b.expect("3. quit");
    b.login(id, "pw", "carol");
    a.expect("kicked by the server");
    assert_eq!(a.wait_exit().code(), Some(4), "{}", a.stderr());
    assert!(
        a.stderr().contains("chat: kicked by the server"),
        "{}",
        a.stderr()
    );
    // The newer session goes on.
    b.send(&format!("chat:{id}:still here"));
    b.expect("message sent");
}

#[test]
fn heartbeat_pings_are_answered_quietly() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut a = Client::start_with(
        "dave",
        &server.addr,
        state.path(),
        &["--heartbeat-secs", "1"],
    );
    let id = a.register("dave", "pw");
    a.expect("3. quit");
    a.login(id, "pw", "dave");
    // Several heartbeat periods pass. A PING left unanswered would end the
    // session ("no reply to PING"); answered ones print nothing.
    thread::sleep(Duration::from_millis(3500));
    a.send("friends");
    let seen = a.until("no friends yet");
    assert_eq!(seen.len(), 1, "unexpected output: {seen:?}");
}

#[test]
fn a_refused_connection_is_a_clear_error() {
    let port = free_port();
    let out = Command::new(chat_exe())
        .arg(format!("127.0.0.1:{port}"))
        .env_remove("CHAT_SERVER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to 127.0.0.1:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// How long a terminal test waits for the reply to a line typed in one
/// burst. Far longer than the client needs; a line left waiting for another
/// key press never gets a reply at all.
const BURST_REPLY: Duration = Duration::from_secs(10);

#[test]
fn a_line_typed_in_one_burst_is_handled_without_another_key() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut t = Term::start("terminal", &server.addr, state.path());
    // Each line (its text and Enter) is one write, as `tmux send-keys`, a
    // script, or an input method committing a whole phrase sends it.
    for (prompt, line) in [
        ("choice: ", "2"),
        ("name: ", "中文输入法"),
        ("password: ", "bobpw"),
    ] {
        t.expect(prompt);
        t.type_in(&format!("{line}\r"));
    }
    if !t.wait_for("registered 中文输入法: your id is ", BURST_REPLY) {
        t.fail("the burst was not handled without another key");
    }
    t.expect(";");
    let text = t.text();
    let id = text
        .rsplit("your id is ")
        .next()
        .and_then(|r| r.split(';').next())
        .unwrap_or_default()
        .to_owned();
    t.expect("choice: ");
    t.type_in("1\r");
    t.expect("id: ");
    t.type_in(&format!("{id}\r"));
    t.expect("password: ");
    t.type_in("bobpw\r");
    if !t.wait_for(&format!("logged in as 中文输入法({id})"), BURST_REPLY) {
        t.fail("the login burst was not handled without another key");
    }
}

#[test]
fn a_message_over_the_limit_is_refused_and_the_session_goes_on() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut a = Client::start("gina", &server.addr, state.path());
    let id = a.register("gina", "pw");
    a.expect("3. quit");
    a.login(id, "pw", "gina");
    // Over the frame limit (64 KiB): the server would close the connection.
    a.send(&format!("chat:{id}:{}", "x".repeat(70_000)));
    let line = a.expect("not sent");
    assert!(line.contains("16 KiB"), "{line}");
    // Over the message limit only.
    a.send(&format!("groupchat:1:{}", "y".repeat(16 * 1024 + 1)));
    a.expect("the limit is 16 KiB");
    a.send(&format!("chat:{id}:{}", "z".repeat(16 * 1024)));
    a.expect("message sent");
    a.send("quit");
    a.expect("bye");
    assert!(a.wait_exit().success());
}

#[test]
fn at_a_terminal_a_kicked_session_hands_over_to_the_menu_and_its_prompt() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut c = Client::start("other device", &server.addr, &state.path().join("c"));
    let id = c.register("hana", "pw");
    let mut t = Term::start("hana", &server.addr, &state.path().join("t"));
    t.login(id, "pw", "hana");

    // A newer login elsewhere kicks the terminal's session. What is typed
    // next at the old `hana> ` prompt is not read as a menu choice.
    c.expect("3. quit");
    c.login(id, "pw", "hana");
    t.expect("kicked by the server");
    t.expect("press Enter for the login menu");
    t.type_in("chat:1:hello\r");
    t.expect("not sent, you are logged out: chat:1:hello");
    t.login(id, "pw", "hana");
    assert!(!t.text().contains("invalid choice"), "{}", t.text());
}

#[test]
fn at_a_terminal_the_client_reconnects_and_delivers_unconfirmed_messages_once() {
    let mut server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut c = Client::start("setup", &server.addr, &state.path().join("c"));
    let ivan = c.register("ivan", "pw-i");
    let hana = c.register("hana", "pw-h");
    drop(c);
    let mut t = Term::start_with(
        "hana",
        &server.addr,
        &state.path().join("t"),
        &["--heartbeat-secs", "1"],
    );
    t.login(hana, "pw-h", "hana");

    // The server hangs: the message gets no ACK, the heartbeat notices, and
    // the client keeps the message and logs back in by itself.
    server.freeze(true);
    t.type_in(&format!("chat:{ivan}:sent while frozen\r"));
    t.expect("connection to the server lost");
    t.expect("reconnecting…");
    server.freeze(false);
    t.expect("back online; sending 1 unconfirmed message again");
    t.expect("message sent");

    // The server is down for a while: what is typed meanwhile is kept, and
    // goes out after the restart.
    server.kill();
    t.expect("reconnecting…");
    t.type_in(&format!("chat:{ivan}:typed offline\r"));
    t.expect("goes out when the client is back online");
    server.start_again();
    t.expect("back online; sending 1 unconfirmed message again");
    t.expect("message sent");
    t.type_in(&format!("chat:{ivan}:live again\r"));
    t.expect("message sent");

    // Each message arrived once.
    let mut i = Client::start("ivan", &server.addr, &state.path().join("i"));
    i.expect("3. quit");
    i.login(ivan, "pw-i", "ivan");
    i.expect("live again");
    i.send(&format!("history:{hana}"));
    let h = i.until("--- end of history").join("\n");
    for text in ["sent while frozen", "typed offline", "live again"] {
        assert_eq!(h.matches(text).count(), 1, "{text:?} not once in {h}");
    }
}

/// The group id in "group \"NAME\" created (id N)".
fn group_id(line: &str) -> i64 {
    line.rsplit("(id ")
        .next()
        .and_then(|r| r.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no group id in {line:?}"))
}

/// alice (password "pw-a") and a second user named `b_name` (password
/// "pw-b"), each registered with their own client and state directory; only
/// alice is logged in, the other is at the menu: (alice's client, her id,
/// the other's client, their id).
fn registered_pair(
    server: &Server,
    state: &std::path::Path,
    b_name: &str,
) -> (Client, i64, Client, i64) {
    let mut a = Client::start("alice", &server.addr, &state.join("a"));
    let mut b = Client::start(b_name, &server.addr, &state.join("b"));
    let alice = a.register("alice", "pw-a");
    let bob = b.register(b_name, "pw-b");
    a.expect("3. quit");
    a.login(alice, "pw-a", "alice");
    b.expect("3. quit");
    (a, alice, b, bob)
}

/// [`registered_pair`] with both logged in.
fn logged_in_pair(
    server: &Server,
    state: &std::path::Path,
    b_name: &str,
) -> (Client, i64, Client, i64) {
    let (a, alice, mut b, bob) = registered_pair(server, state, b_name);
    b.login(bob, "pw-b", b_name);
    (a, alice, b, bob)
}

/// Sends `cmd` until a line of its output contains both `who` and `want`
/// (for lists that a push updates a moment after a reply).
fn eventually(c: &mut Client, cmd: &str, who: &str, want: &str) {
    for _ in 0..50 {
        c.send(cmd);
        c.send("help");
        let seen = c.until("show this list");
        if seen.iter().any(|l| l.contains(who) && l.contains(want)) {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    c.fail(&format!("{cmd} never showed {who} with {want:?}"));
}

#[test]
fn friend_and_group_lists_follow_what_others_do() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let (mut a, alice, mut b, bob) = logged_in_pair(&server, state.path(), "bob");

    // Alice befriends bob: bob is told, and his list has her at once.
    a.send(&format!("addfriend:{bob}"));
    a.expect(&format!("bob({bob}) is now your friend"));
    b.expect(&format!("alice({alice}) added you as a friend (online)"));
    b.send("friends");
    b.expect("friends (1):");
    b.expect(&format!("alice({alice}) online"));
    // Alice sees bob's state, not "state unknown".
    eventually(&mut a, "friends", &format!("bob({bob})"), "online");

    // Groups: joins and leaves are told to the members, with the group's name.
    a.send("creategroup:team:all of us");
    let group = group_id(&a.expect("group \"team\" created (id "));
    b.send(&format!("addgroup:{group}"));
    a.expect(&format!("bob({bob}) joined group {group} \"team\""));
    b.send(&format!("groupchat:{group}:hi team"));
    let got = a.expect("hi team");
    assert!(
        got.starts_with(&format!("[group {group} \"team\"] [20")),
        "{got}"
    );
    a.send("groups");
    a.expect("groups (1):");
    a.expect(&format!("bob({bob}) normal online"));
    b.send(&format!("quitgroup:{group}"));
    a.expect(&format!("bob({bob}) left group {group} \"team\""));
    b.send(&format!("addgroup:{group}"));
    a.expect(&format!("bob({bob}) joined group {group}"));
    a.send(&format!("disband:{group}"));
    b.expect(&format!(
        "group {group} \"team\" was disbanded by alice({alice})"
    ));
    b.send("groups");
    b.expect("no groups yet");
    // A ':' in a group name works when the name is quoted.
    a.send("creategroup:\"10:30 club\":we meet: daily");
    a.expect("group \"10:30 club\" created (id ");

    // Unfriending is told too, and the list follows.
    a.send(&format!("delfriend:{bob}"));
    b.expect(&format!("alice({alice}) removed you from their friends"));
    b.send("friends");
    b.expect("no friends yet");
}

#[test]
fn a_second_login_of_a_friend_is_announced_once() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let (mut a, alice, mut b, bob) = registered_pair(&server, state.path(), "bob");
    a.send(&format!("addfriend:{bob}"));
    a.expect("is now your friend");
    // Bob is offline, as alice knows from the friend list.
    a.send(&format!("chat:{bob}:see you"));
    a.expect(&format!(
        "message sent to bob({bob}) (offline: stored for later)"
    ));
    b.login(bob, "pw-b", "bob");
    a.expect("is now online");

    // Bob logs in again elsewhere; he never went offline.
    let mut b2 = Client::start("bob again", &server.addr, &state.path().join("b2"));
    b2.expect("3. quit");
    b2.login(bob, "pw-b", "bob");
    b2.send(&format!("chat:{alice}:from my phone"));
    let seen = a.until("from my phone");
    a.send("help");
    let mut seen2 = a.until("show this list");
    seen2.extend(seen);
    assert!(
        !seen2.iter().any(|l| l.contains("is now online")),
        "announced twice: {seen2:?}"
    );
}

#[test]
fn find_looks_people_up_by_exact_name() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let (mut a, alice, mut b, bob) = registered_pair(&server, state.path(), "李雷");
    a.send("find:李雷");
    a.expect(&format!("李雷: user id {bob}, offline"));
    b.login(bob, "pw-b", "李雷");
    a.send("find:李雷");
    a.expect(&format!("李雷: user id {bob}, online"));
    a.send("find:李");
    a.expect("no user is called \"李\"");
    a.send("find:alice");
    a.expect(&format!("alice: user id {alice}, online"));
}

#[test]
fn chat_and_addfriend_take_a_name_for_the_id() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let (mut a, alice, mut b, bob) = logged_in_pair(&server, state.path(), "李雷");
    // Not known to alice yet: the client asks the server for the id.
    a.send("chat:李雷:你好: 10:30");
    a.expect("message sent");
    b.expect(&format!("alice({alice}): 你好: 10:30"));
    a.send("addfriend:李雷");
    a.expect(&format!("李雷({bob}) is now your friend"));
    b.send("chat:alice:hi");
    a.expect(&format!("李雷({bob}): hi"));
    a.send("history:李雷:1");
    a.expect("--- history with 李雷");
    a.send("chat:nobody:hi");
    a.expect("no user is called \"nobody\"");
}

#[test]
fn passwords_are_not_shown_at_a_terminal() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut t = Term::start("terminal", &server.addr, state.path());
    t.expect("choice: ");
    t.type_in("2\r");
    t.expect("name: ");
    t.type_in("vera\r");
    t.expect("password: ");
    // Typed key by key, as a person does, and as a whole line.
    for c in "s3cret-".chars() {
        t.type_in(&c.to_string());
        thread::sleep(Duration::from_millis(20));
    }
    t.type_in("pw\r");
    t.expect("registered vera: your id is 1");
    t.login(1, "s3cret-pw", "vera");
    let screen = t.text();
    for shown in ["s3cret", "cret-pw", "-pw"] {
        assert!(!screen.contains(shown), "the password shows: {screen}");
    }
}

#[test]
fn tab_completes_commands_and_names_at_a_terminal() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let mut c = Client::start("setup", &server.addr, &state.path().join("c"));
    let lei = c.register("李雷", "pw-l");
    let vera = c.register("vera", "pw-v");
    drop(c);
    let mut t = Term::start("vera", &server.addr, &state.path().join("t"));
    t.login(vera, "pw-v", "vera");
    t.type_in("frie\t");
    thread::sleep(Duration::from_millis(200));
    t.type_in("\r");
    t.expect("no friends yet");
    t.type_in("find:李雷\r");
    t.expect(&format!("李雷: user id {lei}"));
    t.type_in("chat:李\t");
    thread::sleep(Duration::from_millis(200));
    t.type_in("hi from tab\r");
    t.expect(&format!("message sent to 李雷({lei})"));
}

#[test]
fn history_pages_back_with_more() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let (mut a, _alice, _b, bob) = logged_in_pair(&server, state.path(), "bob");
    for n in 1..=3 {
        a.send(&format!("chat:{bob}:note {n}"));
        a.expect("message sent");
    }
    a.send(&format!("history:{bob}:2"));
    let page = a.until("--- end of history");
    assert!(page[page.len() - 3].contains("note 2"), "{page:?}");
    assert!(page[page.len() - 2].contains("note 3"), "{page:?}");
    assert!(page[page.len() - 1].contains("type more"), "{page:?}");
    a.send("more");
    let page = a.until("--- end of history");
    assert!(page[page.len() - 2].contains("note 1"), "{page:?}");
    assert!(page[page.len() - 1].contains("nothing older"), "{page:?}");
    a.send("more");
    a.expect("nothing older to show");
}
