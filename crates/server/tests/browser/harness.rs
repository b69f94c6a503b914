//! Headless Chromium over WebDriver (chromedriver + fantoccini), and helpers
//! that wait for the page instead of sleeping.
//!
//! Without Chromium or chromedriver the tests print "skipped" and pass,
//! unless the environment variable `CI` is set: then they fail.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long a page gets to show what a test waits for.
pub const WAIT: Duration = Duration::from_secs(15);

/// One test's browsers run one at a time across the test binary: Chromium is
/// heavy, and the machine may have two cores.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Chromium and chromedriver, or None (after saying so) when missing outside
/// CI. Under CI a missing browser fails the test.
pub fn programs(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find_program(&["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        _ if std::env::var_os("CI").is_some() => panic!(
            "{test}: CI is set but Chromium or chromedriver is missing; install the Debian \
             packages chromium and chromium-driver (scripts/test.sh does)"
        ),
        _ => {
            println!("{test}: skipped (Chromium or chromedriver not installed)");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver, stopped when dropped: first its session ends (which quits
/// that Chromium; killing chromedriver alone would leave it running), then
/// chromedriver is killed.
struct Driver {
    child: Child,
    port: u16,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(id) = &self.session {
            end_session(self.port, id);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DELETE /session/{id}` to the chromedriver on `port`, blocking (bounded):
/// this runs in `Drop`, also while a failed test unwinds, when the client's
/// own asynchronous shutdown would never get to run.
fn end_session(port: u16, id: &str) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_ok() {
        let _ = s.read_to_end(&mut Vec::new());
    }
}

/// One headless Chromium window with a profile of its own (so its
/// localStorage is its own: two browsers are two people).
pub struct Browser {
    pub c: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium session.
    pub async fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut driver = Driver {
            child,
            port,
            session: None,
        };
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1200,820",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = String::new();
        for _ in 0..100 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => {
                    driver.session = c.session_id().await.ok().flatten();
                    return Browser {
                        c,
                        _driver: driver,
                        _profile: profile,
                    };
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not start a Chromium session through chromedriver: {last}");
    }

    /// Opens the web client served at `http`.
    pub async fn open(&self, http: SocketAddr) {
        self.c
            .goto(&format!("http://{http}/"))
            .await
            .expect("open the web client");
    }

    /// Waits for the first element matching `css` to be displayed.
    pub async fn el(&self, css: &str) -> Element {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(e) = self.c.find(Locator::Css(css)).await {
                if e.is_displayed().await.unwrap_or(false) {
                    return e;
                }
            }
            if tokio::time::Instant::now() > deadline {
                self.fail(&format!("no visible element {css} within {WAIT:?}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the field `css` (cleared first).
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.el(css).await;
        e.clear().await.expect("clear field");
        e.send_keys(text).await.expect("type into field");
    }

    /// Clicks the element `css` once it is visible.
    pub async fn click(&self, css: &str) {
        self.el(css).await.click().await.expect("click");
    }

    /// Runs `js` (a function body that may `return`) in the page.
    pub async fn js(&self, js: &str, args: Vec<Value>) -> Value {
        self.c.execute(js, args).await.expect("run script in page")
    }

    /// Waits until `js` (a function body) returns something truthy, and
    /// returns it.
    pub async fn until(&self, what: &str, js: &str, args: Vec<Value>) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.js(js, args.clone()).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                self.fail(&format!("timed out waiting for {what}")).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a screenshot of the page to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.c.screenshot().await.expect("screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Fails the test with `why` and what the page shows.
    pub async fn fail(&self, why: &str) -> ! {
        let text = self
            .c
            .execute(
                "return document.body ? document.body.innerText : ''",
                vec![],
            )
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        panic!("{why}\n---- the page shows ----\n{text:.3000}");
    }
}
