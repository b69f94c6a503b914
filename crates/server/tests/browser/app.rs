//! What a person does in the web client (register, log in, find, befriend,
//! open a conversation, type), as steps on a [`Browser`], each of which
//! waits for the page to show its result.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::harness::Browser;

/// Counts the messages in the open conversation whose text is `arguments[0]`.
const COUNT_TEXT: &str = "const t = arguments[0];
    return [...document.querySelectorAll('#messages li[data-testid=message]')]
        .filter((li) => li.querySelector('.text').textContent === t).length;";

impl Browser {
    /// The page's answer to `js` as an integer.
    pub async fn int(&self, js: &str, args: Vec<Value>) -> i64 {
        let v = self.js(js, args).await;
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("expected a number from the page, got {v}"))
    }

    /// Waits until the banner says the page is online (and is hidden).
    pub async fn wait_online(&self) {
        self.until(
            "the banner to say online",
            "const b = document.getElementById('banner');
             return b.dataset.state === 'online' && b.hidden;",
            vec![],
        )
        .await;
    }

    /// Registers through the form; returns the new id.
    pub async fn register(&self, name: &str, password: &str) -> i64 {
        self.fill("#reg-name", name).await;
        self.fill("#reg-password", password).await;
        self.click("#reg-submit").await;
        self.el("#reg-result").await;
        let id = self
            .int(
                "return document.getElementById('reg-id').textContent;",
                vec![],
            )
            .await;
        let text = self.el("#reg-result").await.text().await.expect("text");
        assert!(text.starts_with(&format!("Your id is {id}.")), "{text}");
        let data = self
            .js(
                "return document.getElementById('reg-result').dataset.id;",
                vec![],
            )
            .await;
        assert_eq!(data, json!(id.to_string()));
        id
    }

    /// Logs in through the form with id and password, and waits for the
    /// chat view of that user.
    pub async fn log_in(&self, id: i64, password: &str) {
        self.fill("#login-id", &id.to_string()).await;
        self.fill("#login-password", password).await;
        self.click("#login-submit").await;
        self.wait_me(id).await;
    }

    /// Waits for the chat view logged in as `id`, online.
    pub async fn wait_me(&self, id: i64) {
        self.el("#chat-view").await;
        self.until(
            "the logged-in user",
            "return document.getElementById('me').dataset.id === String(arguments[0])
                && document.getElementById('auth-view').hidden;",
            vec![json!(id)],
        )
        .await;
        self.wait_online().await;
    }

    /// Opens the web client at `http` and waits until it is connected.
    pub async fn open_online(&self, http: SocketAddr) {
        self.open(http).await;
        self.wait_online().await;
    }

    /// A new browser with the web client at `http` logged in as `id`
    /// through the form.
    pub async fn logged_in(
        (chromium, driver): &(PathBuf, PathBuf),
        http: SocketAddr,
        id: i64,
        password: &str,
    ) -> Browser {
        let b = Browser::start(chromium, driver).await;
        b.open_online(http).await;
        b.log_in(id, password).await;
        b
    }

    /// Opens the web client, registers `name` and logs in; returns the id.
    pub async fn sign_up(&self, http: SocketAddr, name: &str, password: &str) -> i64 {
        self.open_online(http).await;
        let id = self.register(name, password).await;
        // Registering fills in the id for the login form.
        let filled = self
            .js("return document.getElementById('login-id').value;", vec![])
            .await;
        assert_eq!(filled, json!(id.to_string()));
        self.log_in(id, password).await;
        id
    }

    /// Finds `name` by its exact name; returns its id.
    pub async fn find(&self, name: &str) -> i64 {
        self.fill("#find-name", name).await;
        self.click("#find-submit").await;
        self.until(
            "the find result",
            "const r = document.getElementById('find-result');
             return !r.hidden && r.querySelector('.name').textContent === arguments[0];",
            vec![json!(name)],
        )
        .await;
        self.int(
            "return document.getElementById('find-result').dataset.id;",
            vec![],
        )
        .await
    }

    /// Finds `name` and adds them as a friend; returns their id once they
    /// are in the friend list.
    pub async fn add_friend(&self, name: &str) -> i64 {
        let id = self.find(name).await;
        self.click("#find-add-friend").await;
        self.contact("friend", id).await;
        id
    }

    /// Creates a group through the form; returns its id.
    pub async fn create_group(&self, name: &str, desc: &str) -> i64 {
        self.fill("#group-name", name).await;
        self.fill("#group-desc", desc).await;
        self.click("#group-create").await;
        self.el("#group-status")
            .await
            .attr("data-id")
            .await
            .expect("read data-id")
            .expect("#group-status has data-id")
            .parse()
            .expect("a group id")
    }

    /// Waits until the open conversation's history is loaded back to its
    /// first message.
    pub async fn wait_history(&self) {
        self.until(
            "the history to load",
            "return document.getElementById('history-status').textContent.includes('beginning');",
            vec![],
        )
        .await;
    }

    /// Waits for the sidebar entry of this kind (friend, group, user) and id.
    pub async fn contact(&self, kind: &str, id: i64) -> fantoccini::elements::Element {
        self.el(&contact_css(kind, id)).await
    }

    /// Opens the conversation of a sidebar entry and waits for it.
    pub async fn open_contact(&self, kind: &str, id: i64) {
        self.contact(kind, id)
            .await
            .click()
            .await
            .expect("click contact");
        self.until(
            "the conversation to open",
            "const c = document.getElementById('conversation');
             const e = document.querySelector(arguments[0]);
             return !c.hidden && c.dataset.id === String(arguments[1])
                 && e && e.getAttribute('aria-current') === 'true';",
            vec![json!(contact_css(kind, id)), json!(id)],
        )
        .await;
    }

    /// A sidebar entry's unread count.
    pub async fn unread(&self, kind: &str, id: i64) -> i64 {
        self.int(
            "const u = document.querySelector(arguments[0] + ' .unread');
             return u.hidden ? 0 : Number(u.dataset.count);",
            vec![json!(contact_css(kind, id))],
        )
        .await
    }

    /// Waits until a sidebar entry shows `n` unread messages.
    pub async fn wait_unread(&self, kind: &str, id: i64, n: i64) {
        self.until(
            &format!("{n} unread on {kind} {id}"),
            "const u = document.querySelector(arguments[0] + ' .unread');
             return u && !u.hidden && u.dataset.count === String(arguments[1]) && u.textContent === String(arguments[1]);",
            vec![json!(contact_css(kind, id)), json!(n)],
        )
        .await;
    }

    /// Waits until a friend or user entry shows `online`.
    pub async fn wait_presence(&self, kind: &str, id: i64, online: bool) {
        self.until(
            &format!("{kind} {id} to show online={online}"),
            "const p = document.querySelector(arguments[0] + ' .presence');
             return p && p.dataset.online === String(arguments[1]);",
            vec![json!(contact_css(kind, id)), json!(online)],
        )
        .await;
    }

    /// Types `text` into the composer and presses Enter.
    pub async fn type_enter(&self, text: &str) {
        self.fill("#composer", text).await;
        self.el("#composer")
            .await
            .send_keys("\u{E007}")
            .await
            .expect("press Enter");
    }

    /// Types `text` into the composer and clicks Send.
    pub async fn type_send(&self, text: &str) {
        self.fill("#composer", text).await;
        self.click("#send").await;
    }

    /// Sends `text` (Enter) and waits until the server acknowledged it.
    pub async fn say(&self, text: &str) {
        self.type_enter(text).await;
        self.wait_own(text, "sent").await;
    }

    /// Waits until the own message `text` is shown in `state`.
    pub async fn wait_own(&self, text: &str, state: &str) {
        self.until(
            &format!("own message {text:?} to be {state}"),
            "return [...document.querySelectorAll('#messages li[data-own=true]')].some((li) =>
                 li.querySelector('.text').textContent === arguments[0] && li.dataset.state === arguments[1]);",
            vec![json!(text), json!(state)],
        )
        .await;
    }

    /// How many messages in the open conversation read `text`.
    pub async fn count(&self, text: &str) -> i64 {
        self.int(COUNT_TEXT, vec![json!(text)]).await
    }

    /// Waits until `text` is shown in the open conversation, and asserts
    /// it is shown once.
    pub async fn see_once(&self, text: &str) {
        self.until(&format!("message {text:?}"), COUNT_TEXT, vec![json!(text)])
            .await;
        self.assert_once(&[text]).await;
    }

    /// Asserts each of `texts` is shown exactly once in the open conversation.
    pub async fn assert_once(&self, texts: &[&str]) {
        for t in texts {
            let n = self.count(t).await;
            if n != 1 {
                self.fail(&format!("message {t:?} is shown {n} times, not once"))
                    .await;
            }
        }
    }

    /// The sender shown on the message `text`.
    pub async fn sender_of(&self, text: &str) -> String {
        self.js(
            "const li = [...document.querySelectorAll('#messages li[data-testid=message]')]
                 .find((li) => li.querySelector('.text').textContent === arguments[0]);
             return li ? li.querySelector('.sender').textContent : null;",
            vec![json!(text)],
        )
        .await
        .as_str()
        .unwrap_or_else(|| panic!("no message {text:?}"))
        .to_owned()
    }
}

/// The CSS selector of a sidebar entry.
pub fn contact_css(kind: &str, id: i64) -> String {
    format!("button[data-testid=contact][data-kind={kind}][data-id=\"{id}\"]")
}
