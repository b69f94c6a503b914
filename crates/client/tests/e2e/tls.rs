//! `chat --tls`: the client verifies the server's certificate against
//! `--ca` (or the system's roots) and then works as over plain TCP.

use chat_testkit::TestCerts;

use crate::harness::{Client, Server};

fn tls_server(certs: &TestCerts) -> Server {
    Server::start_with(&[
        "--tls-cert",
        certs.cert.to_str().unwrap(),
        "--tls-key",
        certs.key.to_str().unwrap(),
    ])
}

#[test]
fn two_users_chat_over_tls_with_a_private_ca() {
    let certs = TestCerts::new("chat test CA");
    let server = tls_server(&certs);
    let state = tempfile::tempdir().unwrap();
    let ca = certs.ca.to_str().unwrap();
    // One by the address's IP (the certificate has 127.0.0.1 as a name),
    // one by the name given with --tls-name.
    let mut a = Client::start_with(
        "alice",
        &server.addr,
        &state.path().join("a"),
        &["--tls", "--ca", ca],
    );
    let mut b = Client::start_with(
        "bob",
        &server.addr,
        &state.path().join("b"),
        &["--tls", "--ca", ca, "--tls-name", "localhost"],
    );
    a.expect(&format!("connected to {} (TLS)", server.addr));
    let alice = a.register("alice", "pw-alice");
    let bob = b.register("bob", "pw-bob");
    a.login(alice, "pw-alice", "alice");
    b.expect("3. quit");
    b.login(bob, "pw-bob", "bob");
    a.send(&format!("chat:{bob}:hello over TLS"));
    a.expect(&format!("message sent to user {bob}"));
    let got = b.expect("hello over TLS");
    assert!(
        got.ends_with(&format!("alice({alice}): hello over TLS")),
        "{got}"
    );
    b.send(&format!("chat:{alice}:and back"));
    b.expect("message sent to");
    a.expect("and back");
    a.send("quit");
    a.expect("bye");
    assert!(a.wait_exit().success());
}

#[test]
fn a_certificate_the_client_does_not_trust_is_a_clear_error() {
    let certs = TestCerts::new("the server's CA");
    let other = TestCerts::new("some other CA");
    let server = tls_server(&certs);
    let state = tempfile::tempdir().unwrap();
    let mut c = Client::start_with(
        "mallory",
        &server.addr,
        state.path(),
        &["--tls", "--ca", other.ca.to_str().unwrap()],
    );
    let st = c.wait_exit();
    assert_eq!(st.code(), Some(1), "{}", c.stderr());
    let err = c.stderr();
    assert!(err.contains("TLS handshake with"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A name the certificate does not carry is refused too.
    let mut c = Client::start_with(
        "mallory",
        &server.addr,
        state.path(),
        &[
            "--tls",
            "--ca",
            certs.ca.to_str().unwrap(),
            "--tls-name",
            "chat.example",
        ],
    );
    assert_eq!(c.wait_exit().code(), Some(1), "{}", c.stderr());
    assert!(c.stderr().contains("certificate"), "{}", c.stderr());

    // A --ca that is not there is a bad command line.
    let mut c = Client::start_with(
        "mallory",
        &server.addr,
        state.path(),
        &["--tls", "--ca", "/nonexistent/ca.pem"],
    );
    assert_eq!(c.wait_exit().code(), Some(2), "{}", c.stderr());
    assert!(c.stderr().contains("/nonexistent/ca.pem"), "{}", c.stderr());
}
