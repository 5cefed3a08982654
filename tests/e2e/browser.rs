//! A real headless Chromium driven through `chromedriver` (Debian's `chromium` and
//! `chromium-driver`), speaking W3C WebDriver's JSON over HTTP with `ureq`.
//!
//! A test that needs the browser fails, and says how to install it, when it is
//! missing: it never passes without having run. Every wait is on a condition in the
//! page, with [`PATIENCE`] as the bound of a broken run, never a fixed sleep.

use base64::Engine as _;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tests::PATIENCE;

/// What installs the browser and its driver.
const INSTALL_SCRIPT: &str = "scripts/install-test-deps";

/// Debian's Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's WebDriver server for it (package `chromium-driver`).
const CHROMEDRIVER: &str = "chromedriver";

/// What chromedriver prints once it listens, followed by its port.
const STARTED: &str = "ChromeDriver was started successfully on port ";

/// How often a wait looks at the page again.
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// The key W3C WebDriver gives an element reference under.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The window a desktop screenshot is taken in.
pub const DESKTOP: (u32, u32) = (1280, 860);

/// The window a phone screenshot is taken in (a common phone's CSS pixels).
pub const PHONE: (u32, u32) = (390, 844);

/// One headless Chromium with its chromedriver; both end with it.
pub struct Browser {
    driver: Child,
    agent: ureq::Agent,
    session: String,
    _profile: tempfile::TempDir,
}

/// An element of the page, as WebDriver names it.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on a port of its choosing and a headless Chromium under
    /// it, with a profile in a temp dir. Panics, naming the install script, when
    /// either is missing.
    pub fn start() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing (Debian package `chromium`): run {INSTALL_SCRIPT} \
             (as root), which installs what the tests need"
        );
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start {CHROMEDRIVER} ({err}; Debian package `chromium-driver`): \
                     run {INSTALL_SCRIPT} (as root), which installs what the tests need"
                )
            });
        let port = driver_port(&mut driver);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(PATIENCE))
            .build()
            .into();
        let profile = tempfile::tempdir().expect("a temp dir for Chromium's profile");
        let mut browser = Browser {
            driver,
            agent,
            session: format!("http://127.0.0.1:{port}"),
            _profile: profile,
        };
        let (width, height) = DESKTOP;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // The tests run as root in CI, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            },
        }}});
        let created = browser.call("POST", "/session", Some(capabilities));
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {created}"))
            .to_string();
        browser.session = format!("{}/session/{id}", browser.session);
        browser
    }

    /// One WebDriver command; returns its `value`, or panics with WebDriver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// One WebDriver command; its `value`, or WebDriver's error as text.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        // Before the session exists, `self.session` is the driver's base URL.
        let url = format!("{}{path}", self.session);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let mut response = response.map_err(|err| format!("WebDriver {method} {path}: {err}"))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|err| panic!("WebDriver {method} {path}: reading the answer: {err}"));
        let answer: Value = serde_json::from_str(&text)
            .map_err(|_| format!("WebDriver {method} {path}: not JSON: {text}"))?;
        if !status.is_success() {
            return Err(format!(
                "WebDriver {method} {path}: {status}: {}",
                answer["value"]
            ));
        }
        Ok(answer["value"].clone())
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Sets the window's size (in CSS pixels: the scale factor is 1).
    pub fn resize(&self, (width, height): (u32, u32)) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// Runs `script` in the page (a function body; `arguments` holds `args`) and
    /// returns what it returns.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Runs an asynchronous `script`: it calls `arguments[arguments.length - 1]`
    /// with its answer.
    pub fn execute_async(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Waits until `script` (a function body returning a value) returns something
    /// other than `null`, `false` or `""`, and returns it. Panics after
    /// [`PATIENCE`], naming `what` and showing what the page last said.
    pub fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.execute(script, args.clone());
            let done =
                !matches!(&value, Value::Null | Value::Bool(false)) && value.as_str() != Some("");
            if done {
                return value;
            }
            if Instant::now() > deadline {
                let notice = self.execute(
                    "const n = document.getElementById('notice'); return n ? n.textContent : null;",
                    json!([]),
                );
                panic!("waited {PATIENCE:?} for {what}; the page's notice: {notice}");
            }
            std::thread::sleep(LOOK_EVERY);
        }
    }

    /// Waits for an element matching `css` to be in the page, and returns it.
    pub fn wait_element(&self, css: &str) -> Element {
        self.wait_for(
            &format!("an element {css}"),
            "return document.querySelector(arguments[0]) !== null;",
            json!([css]),
        );
        let found = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        Element(
            found[ELEMENT_KEY]
                .as_str()
                .unwrap_or_else(|| panic!("no element reference for {css}: {found}"))
                .to_string(),
        )
    }

    /// Clicks what matches `css` once it is there, as a person would (WebDriver
    /// scrolls it into view and clicks its centre).
    /// A live page may draw a row again between finding it and the click
    /// (an event's refresh): then it is found again and clicked, as a person
    /// would click the row now shown.
    pub fn click(&self, css: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let Element(id) = self.wait_element(css);
            match self.try_call("POST", &format!("/element/{id}/click"), None) {
                Ok(_) => return,
                Err(err) if err.contains("stale element") && Instant::now() < deadline => {}
                Err(err) => panic!("{err}"),
            }
        }
    }

    /// Accepts the page's `confirm` dialog (as a person clicking OK), once it
    /// is open.
    pub fn accept_prompt(&self) {
        self.call("POST", "/alert/accept", None);
    }

    /// Types `text` into what matches `css`, key by key.
    pub fn type_into(&self, css: &str, text: &str) {
        let Element(id) = self.wait_element(css);
        self.call("POST", &format!("/element/{id}/clear"), None);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The visible text of what matches `css`.
    pub fn text(&self, css: &str) -> String {
        let Element(id) = self.wait_element(css);
        self.call("GET", &format!("/element/{id}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let encoded = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("WebDriver's screenshot is base64");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot is not a PNG"
        );
        png
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.session.contains("/session/") {
            let _ = self.agent.delete(&self.session).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Reads the port chromedriver chose from its first lines, at most [`PATIENCE`];
/// a thread keeps draining its output afterwards.
fn driver_port(driver: &mut Child) -> u16 {
    let stdout = driver
        .stdout
        .take()
        .expect("chromedriver's stdout is piped");
    let (found, port) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(STARTED) {
                let _ = found.send(rest.trim_end_matches('.').trim().to_string());
            }
        }
    });
    let text = port
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|err| panic!("chromedriver did not say its port: {err}"));
    text.parse()
        .unwrap_or_else(|_| panic!("chromedriver printed a bad port {text:?}"))
}
