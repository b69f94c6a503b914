//! The other side of a browser's conversation: a level-2 TCP client of the
//! test kit that keeps every frame it read, confirms pushes as a real
//! client does, and counts messages by `mid` (level 2 drops repeats by mid).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use chat_testkit::{Client, Recv};
use serde_json::{json, Value};

use crate::harness::WAIT;

/// A logged-in level-2 TCP user.
pub struct Peer {
    pub id: i64,
    pub name: String,
    c: Client,
    frames: Vec<Value>,
    next_req: i64,
}

impl Peer {
    /// Registers `name` (password "pw") on `addr` and logs in at level 2.
    pub async fn new(addr: SocketAddr, name: &str) -> Peer {
        let mut c = Client::connect(addr).await;
        let id = c.register(name, "pw").await;
        c.login_l2(id, "pw").await;
        Peer {
            id,
            name: name.to_owned(),
            c,
            frames: Vec::new(),
            next_req: 1,
        }
    }

    /// Logs in again on a new connection (after the server restarted).
    pub async fn reconnect(&mut self, addr: SocketAddr) {
        self.c = Client::connect(addr).await;
        self.c.login_l2(self.id, "pw").await;
    }

    /// Reads frames (confirming pushes) until one satisfies `pred`; returns it.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.c.read(left).await {
                Recv::Frame(v) => {
                    if let Some(seq) = v["seq"].as_i64() {
                        self.c.send(json!({"msgid": 16, "seq": seq})).await;
                    }
                    self.frames.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Recv::Eof => panic!("{}: connection closed waiting for {what}", self.name),
                Recv::Timeout => panic!(
                    "{}: no {what} within {WAIT:?}; read {:#?}",
                    self.name, self.frames
                ),
            }
        }
    }

    /// Waits for a pushed message (one-to-one or group) reading `text`.
    pub async fn until_msg(&mut self, text: &str) -> Value {
        self.until(&format!("message {text:?}"), |v| {
            (v["msgid"] == 6 || v["msgid"] == 10) && v["msg"] == text
        })
        .await
    }

    /// Sends a request with a fresh reqid and waits for its ACK.
    pub async fn request(&mut self, mut req: Value) -> Value {
        let reqid = format!("r{}", self.next_req);
        self.next_req += 1;
        req["reqid"] = json!(reqid);
        self.c.send(req).await;
        let re = reqid.clone();
        let v = self
            .until(&format!("the reply to {re}"), move |v| v["reqid"] == re)
            .await;
        assert!(
            v["msgid"] == 12 && v["errno"] == 0,
            "{}: request refused: {v}",
            self.name
        );
        v
    }

    /// Sends `text` to user `to`; returns its mid.
    pub async fn say(&mut self, to: i64, text: &str) -> i64 {
        self.chat(json!({"msgid": 6, "toid": to}), text).await
    }

    /// Sends `text` to group `g`; returns its mid.
    pub async fn say_group(&mut self, g: i64, text: &str) -> i64 {
        self.chat(json!({"msgid": 10, "groupid": g}), text).await
    }

    /// Sends the chat request `req` with `text` and a fresh cmid; returns
    /// the mid of its ACK.
    async fn chat(&mut self, mut req: Value, text: &str) -> i64 {
        req["msg"] = json!(text);
        req["cmid"] = json!(format!("{}-{}", self.name, self.next_req));
        let ack = self.request(req).await;
        ack["mid"].as_i64().expect("ACK without mid")
    }

    /// Adds user `id` as a friend.
    pub async fn befriend(&mut self, id: i64) {
        self.request(json!({"msgid": 7, "friendid": id})).await;
    }

    /// Joins group `g`.
    pub async fn join(&mut self, g: i64) {
        self.request(json!({"msgid": 9, "groupid": g})).await;
    }

    /// How many different messages (by mid) reading `text` were pushed.
    pub fn received(&self, text: &str) -> usize {
        self.frames
            .iter()
            .filter(|v| (v["msgid"] == 6 || v["msgid"] == 10) && v["msg"] == text)
            .map(|v| v["mid"].as_i64().expect("a level-2 push without mid"))
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// How many stored messages with user `with` read `text` (HISTORY).
    pub async fn stored(&mut self, with: i64, text: &str) -> usize {
        let ack = self
            .request(json!({"msgid": 17, "toid": with, "limit": 200}))
            .await;
        ack["messages"]
            .as_array()
            .expect("HISTORY without messages")
            .iter()
            .filter(|m| m["msg"] == text)
            .count()
    }
}
