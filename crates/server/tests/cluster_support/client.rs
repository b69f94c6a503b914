//! The cluster tests' client (the test kit's line client, with PRESENCE
//! pushes set aside because their timing across nodes is not
//! deterministic) and the set-up steps built on it.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::{Deref, DerefMut};

use serde_json::{json, Value};

/// The test kit's line client with PRESENCE pushes set aside in
/// `presence`; everything else is the kit's.
pub struct Client(chat_testkit::Client);

impl Client {
    /// Connects, or panics within the kit's timeout.
    pub async fn connect(addr: SocketAddr) -> Client {
        Client(chat_testkit::Client::connect(addr).await.presence_aside())
    }

    /// Connects over a WebSocket to an HTTP listener, as the web client does.
    pub async fn connect_ws(http: SocketAddr) -> Client {
        Client(
            chat_testkit::Client::connect_ws(http)
                .await
                .presence_aside(),
        )
    }

    /// Connects from a chosen loopback address, to tell clients apart by
    /// address behind nginx.
    pub async fn connect_from(addr: SocketAddr, local: Ipv4Addr) -> Client {
        Client(
            chat_testkit::Client::connect_from(addr, local)
                .await
                .presence_aside(),
        )
    }

    /// This client, returning ROSTER pushes like any other frame.
    pub fn with_roster(self) -> Client {
        Client(self.0.with_roster())
    }

    /// Connects, or says why not.
    pub async fn try_connect(addr: SocketAddr) -> Result<Client, String> {
        let c = chat_testkit::Client::try_connect(addr).await?;
        Ok(Client(c.presence_aside()))
    }
}

impl Deref for Client {
    type Target = chat_testkit::Client;

    fn deref(&self) -> &chat_testkit::Client {
        &self.0
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut chat_testkit::Client {
        &mut self.0
    }
}

/// Registers a user on a throwaway connection.
pub async fn register(addr: SocketAddr, name: &str) -> i64 {
    let mut c = Client::connect(addr).await;
    c.register(name, "pw").await
}

/// On a new connection: a level-2 login of `user`, `req`, its ACK and a
/// LOGINOUT; returns the ACK.
pub async fn as_user(addr: SocketAddr, user: i64, req: Value) -> Value {
    let re = req["msgid"].as_i64().expect("request msgid");
    let mut c = Client::connect(addr).await;
    c.login_l2(user, "pw").await;
    c.send(req).await;
    let ack = c.expect_ack(re).await;
    c.send(json!({"msgid": 3})).await;
    c.expect_ack(3).await;
    ack
}

/// Makes each pair friends (ADD_FRIEND as the first, see [`as_user`]).
pub async fn befriend(addr: SocketAddr, pairs: &[(i64, i64)]) {
    for &(a, b) in pairs {
        as_user(addr, a, json!({"msgid": 7, "friendid": b})).await;
    }
}

/// Creates a group of `creator` and `members` (each joins with ADD_GROUP,
/// see [`as_user`]); returns its id.
pub async fn make_group(addr: SocketAddr, name: &str, creator: i64, members: &[i64]) -> i64 {
    let ack = as_user(addr, creator, json!({"msgid": 8, "groupname": name})).await;
    let gid = ack["groupid"].as_i64().expect("groupid");
    for &m in members {
        as_user(addr, m, json!({"msgid": 9, "groupid": gid})).await;
    }
    gid
}

/// The `state` of friend `id` in a level-2 login ack.
pub fn friend_state(ack: &Value, id: i64) -> String {
    ack["friends"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["id"] == id))
        .and_then(|f| f["state"].as_str())
        .unwrap_or_else(|| panic!("friend {id} not in login ack {ack}"))
        .to_owned()
}
