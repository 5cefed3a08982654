//! The dashboard as a person uses it: a real master and worker, real HTTP on the
//! master's port, and a real headless Chromium clicking through the pages. It signs
//! in, sees a worker appear, submits a task, watches it complete without a reload,
//! opens its output, runs console commands, retries and deletes a dead letter, is refused
//! without a session and with a wrong CSRF token, and drains the device. A second
//! test runs a master whose reads need the token too, as from another machine.
//!
//! It takes a screenshot of each page. With `RETIRE_UPDATE_SCREENSHOTS=1` they are
//! written to `docs/screenshots/` (the README shows them); otherwise to a temp dir,
//! so an ordinary run leaves the work tree as it was.

use super::browser::{Browser, DESKTOP, PHONE};
use protocol::{Message, TaskSpec, TaskSubmit};
use serde_json::{json, Value};
use std::path::PathBuf;
use tests::{retire, tokens_for, Client, MasterProcess, WorkerProcess};

/// Set to `1` to write the screenshots into `docs/screenshots/`.
const UPDATE_SCREENSHOTS: &str = "RETIRE_UPDATE_SCREENSHOTS";

/// WebDriver's code for the Enter key.
const ENTER: &str = "\u{E007}";

/// The id of the task that ends as a dead letter.
const DEAD: &str = "dash-dead-letter";

/// Where the screenshots of this run go.
struct Screenshots {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Screenshots {
    fn new() -> Screenshots {
        if std::env::var(UPDATE_SCREENSHOTS).as_deref() == Ok("1") {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
            std::fs::create_dir_all(&dir).expect("create docs/screenshots");
            Screenshots { dir, _temp: None }
        } else {
            let temp = tempfile::tempdir().expect("a temp dir for screenshots");
            Screenshots {
                dir: temp.path().to_path_buf(),
                _temp: Some(temp),
            }
        }
    }

    /// Saves what the browser shows now as `NAME.png`.
    fn take(&self, browser: &Browser, name: &str) {
        let png = browser.screenshot();
        std::fs::write(self.dir.join(format!("{name}.png")), png).expect("write a screenshot");
    }
}

/// The device's status as the master's own protocol reports it (the CLI's
/// `devices --json`), not as the page shows it.
fn device_status(master: &MasterProcess, id: &str) -> String {
    device_field(master, id, "status")
}

/// A field of the device's view as the CLI's `devices --json` shows it.
fn device_field(master: &MasterProcess, id: &str, field: &str) -> String {
    let output = retire(master.addr, &["--json", "devices"]);
    assert!(output.status.success(), "retire devices failed");
    let page: Value = serde_json::from_slice(&output.stdout).expect("devices --json is JSON");
    page["devices"]
        .as_array()
        .and_then(|devices| devices.iter().find(|d| d["device_id"] == id))
        .and_then(|device| device[field].as_str())
        .unwrap_or_else(|| panic!("{id} is not listed: {page}"))
        .to_string()
}

/// The HTTP status a request from the page's own context gets: a `fetch` with the
/// page's cookies (same origin) and the given headers.
fn fetch_status(browser: &Browser, method: &str, url: &str, headers: Value) -> u64 {
    let status = browser.execute_async(
        "const done = arguments[arguments.length - 1];
         fetch(arguments[0], { method: arguments[1], headers: arguments[2], credentials: 'same-origin' })
           .then((response) => done(response.status), (error) => done(String(error)));",
        json!([url, method, headers]),
    );
    status
        .as_u64()
        .unwrap_or_else(|| panic!("fetch {method} {url} failed: {status}"))
}

fn sign_in(browser: &Browser, token: &str) {
    browser.click("#signin-open");
    browser.type_into("#token", token);
    browser.click("#signin-submit");
    browser.wait_for(
        "the page to be signed in",
        "return document.body.dataset.signedIn === 'yes';",
        json!([]),
    );
}

/// Waits for the device's row to show `status`.
fn wait_device(browser: &Browser, id: &str, status: &str) {
    browser.wait_for(
        &format!("{id}'s row to say {status}"),
        "const row = document.querySelector(`#devices tr[data-device-id=\"${CSS.escape(arguments[0])}\"]`);
         return row !== null && row.dataset.status === arguments[1];",
        json!([id, status]),
    );
}

/// Submits a task of `task_type` with the form of the tasks page, and returns the
/// id the master gave it.
fn submit_from_page(browser: &Browser, task_type: &str, input: &str) -> String {
    browser.execute(
        "delete document.body.dataset.lastSubmitted; return true;",
        json!([]),
    );
    browser.click(&format!("#submit-type option[value='{task_type}']"));
    browser.type_into("#submit-input", input);
    browser.click("#submit-button");
    browser
        .wait_for(
            &format!("the {task_type} task's id"),
            "return document.body.dataset.lastSubmitted || null;",
            json!([]),
        )
        .as_str()
        .expect("a task id")
        .to_string()
}

fn open_page(browser: &Browser, page: &str) {
    browser.click(&format!("#nav a[data-page='{page}']"));
    browser.wait_for(
        &format!("the {page} page"),
        "return document.body.dataset.page === arguments[0];",
        json!([page]),
    );
}

#[test]
fn a_person_signs_in_watches_a_task_complete_live_and_drains_a_device() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let master = MasterProcess::start(dir.path());
    let admin = tokens_for(master.addr).expect("the master's tokens").admin;
    let base = format!("http://{}", master.addr);
    let drain_url = format!("{base}/api/v1/devices/dash-pi/drain");
    let shots = Screenshots::new();
    let browser = Browser::start();

    // The dashboard, served by the master on its own port, with the event stream open.
    browser.goto(&format!("{base}/#/devices"));
    browser.wait_for(
        "the page to start, signed out, with live updates",
        "return document.body.dataset.signedIn === 'no'
             && document.getElementById('live').classList.contains('on');",
        json!([]),
    );
    // A reload would wipe this, so it proves that everything below arrived live.
    browser.execute("window.notReloaded = true; return true;", json!([]));

    // A wrong token does not sign in.
    browser.click("#signin-open");
    browser.type_into("#token", "rc-admin-0000");
    browser.click("#signin-submit");
    browser.wait_for(
        "the sign-in to be refused",
        "const e = document.getElementById('signin-error'); return !e.hidden && e.textContent;",
        json!([]),
    );
    shots.take(&browser, "sign-in");
    browser.click("#signin-cancel");
    sign_in(&browser, &admin);

    // A worker starts and appears in the device table by itself.
    let _worker = WorkerProcess::start(master.addr, "dash-pi", 2, &[]);
    wait_device(&browser, "dash-pi", "online");
    // Its CPU and memory arrive with its heartbeats, through the device stream.
    browser.wait_for(
        "the worker's metrics",
        "const row = document.querySelector('#devices tr[data-device-id=\"dash-pi\"]');
         return row !== null && row.querySelector('td[data-label=\"CPU\"] .meter') !== null;",
        json!([]),
    );
    // Its sandbox level, as the worker reported it (it depends on the kernel).
    let sandbox = device_field(&master, "dash-pi", "sandbox");
    assert!(
        ["full", "partial", "none"].contains(&sandbox.as_str()),
        "{sandbox}"
    );
    assert_eq!(
        browser.text("#devices tr[data-device-id=\"dash-pi\"] td[data-label=\"Sandbox\"]"),
        sandbox
    );
    shots.take(&browser, "devices");

    // A task submitted from the page completes, and the table says so without a reload.
    open_page(&browser, "tasks");
    let task_id = submit_from_page(
        &browser,
        "shell",
        "echo hello from the dashboard; echo a warning >&2",
    );
    let row = format!("#tasks tr[data-task-id=\"{task_id}\"]");
    browser.wait_for(
        "the task's row to say completed",
        "const row = document.querySelector(arguments[0]);
         return row !== null && row.dataset.state === 'completed';",
        json!([row]),
    );
    assert_eq!(
        browser.execute("return window.notReloaded === true;", json!([])),
        json!(true),
        "the page was reloaded"
    );
    shots.take(&browser, "tasks");

    // Its detail: payload, output, errors, exit code.
    browser.click(&row);
    browser.wait_for(
        "the task's output",
        "return document.getElementById('detail-stdout').textContent.includes('hello from the dashboard');",
        json!([]),
    );
    assert!(browser.text("#detail-stderr").contains("a warning"));
    assert!(browser
        .text("#detail-payload")
        .contains("echo hello from the dashboard"));
    let facts = browser.text("#detail-facts");
    assert!(facts.contains("Exit code\n0"), "{facts}");
    assert!(facts.contains("dash-pi"), "{facts}");
    shots.take(&browser, "task");
    browser.click("#detail-close");

    // The state filter and the search narrow the table.
    browser.click("#filter-state option[value='failed']");
    browser.wait_for(
        "no failed task",
        "return !document.getElementById('tasks-empty').hidden;",
        json!([]),
    );
    browser.click("#filter-state option[value='completed']");
    browser.wait_for(
        "the completed task",
        "return document.querySelector(arguments[0]) !== null;",
        json!([row]),
    );
    browser.type_into("#filter-search", "no-such-task");
    browser.wait_for(
        "nothing to match the search",
        "return !document.getElementById('tasks-empty').hidden;",
        json!([]),
    );
    browser.type_into("#filter-search", &task_id[..task_id.len() - 2]);
    browser.wait_for(
        "the task found again",
        "return document.querySelector(arguments[0]) !== null;",
        json!([row]),
    );
    browser.click("#filter-state option[value='']");
    browser.type_into("#filter-search", "");

    // A long task is cancelled from its detail, which follows it live.
    let sleeper = submit_from_page(&browser, "sleep", "60");
    let sleeper_row = format!("#tasks tr[data-task-id=\"{sleeper}\"]");
    browser.wait_for(
        "the sleeping task to be given to the worker",
        "const row = document.querySelector(arguments[0]);
         return row !== null && ['assigned', 'running'].includes(row.dataset.state);",
        json!([sleeper_row]),
    );
    browser.click(&sleeper_row);
    browser.click("#detail-cancel");
    browser.wait_for(
        "the detail to say cancelled",
        "return document.getElementById('detail-facts').dataset.state === 'cancelled';",
        json!([]),
    );
    browser.click("#detail-close");

    // The overview counts it.
    open_page(&browser, "overview");
    browser.wait_for(
        "the overview's counts",
        "return document.getElementById('devices-online').textContent === '1'
             && document.querySelector('#states a[data-state=\"completed\"] b')?.textContent === '1';",
        json!([]),
    );
    shots.take(&browser, "overview");

    // The console runs the older design's text commands.
    open_page(&browser, "console");
    let answered = "const outs = document.querySelectorAll('#terminal-output pre:not(.err)');
         return outs.length > 0 && outs[outs.length - 1].textContent.includes(arguments[0]);";
    browser.type_into("#terminal-input", &format!("cluster status{ENTER}"));
    browser.wait_for("cluster status", answered, json!(["NODES: 1/1 online"]));
    browser.type_into("#terminal-input", &format!("tasks list{ENTER}"));
    let line = format!("{task_id}|completed|shell|dash-pi");
    browser.wait_for("tasks list", answered, json!([line]));
    shots.take(&browser, "console");

    // A task that fails twice (one retry) becomes a dead letter; the page shows it
    // live and retries it, which runs it twice more.
    open_page(&browser, "dead");
    let mut spec = TaskSpec::new("shell", json!({ "command": "echo giving up >&2; exit 3" }));
    spec.task_id = Some(DEAD.to_string());
    spec.max_retries = Some(1);
    Client::connect(master.addr)
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![spec],
            batch: false,
        }))
        .expect("submit the failing task");
    let attempts = "const cell = document.querySelector(
             `#dead tr[data-task-id=\"${arguments[0]}\"] td[data-label=\"Attempts\"]`);
         return cell !== null && cell.textContent === arguments[1];";
    browser.wait_for("the dead letter", attempts, json!([DEAD, "2"]));
    shots.take(&browser, "dead-letters");
    browser.click(&format!("#dead tr[data-task-id=\"{DEAD}\"] button.retry"));
    browser.wait_for("the retried dead letter", attempts, json!([DEAD, "4"]));
    // Deleted for good, once confirmed: gone from the page and from the master.
    browser.click(&format!("#dead tr[data-task-id=\"{DEAD}\"] button.delete"));
    browser.accept_prompt();
    browser.wait_for(
        "the deleted dead letter to leave the page",
        "return document.querySelector(`#dead tr[data-task-id=\"${arguments[0]}\"]`) === null;",
        json!([DEAD]),
    );
    assert!(!retire(master.addr, &["task", DEAD]).status.success());

    // Signed in, a change without the CSRF token or with a wrong one is refused.
    let wrong = json!({ "X-CSRF-Token": "00".repeat(32) });
    assert_eq!(fetch_status(&browser, "POST", &drain_url, wrong), 403);
    assert_eq!(fetch_status(&browser, "POST", &drain_url, json!({})), 403);
    assert_eq!(device_status(&master, "dash-pi"), "online");

    // Signed out, the page still reads (loopback may read without a token) but the
    // drain button is refused.
    open_page(&browser, "devices");
    browser.click("#signout");
    browser.wait_for(
        "the page to be signed out",
        "return document.body.dataset.signedIn === 'no';",
        json!([]),
    );
    browser.click("#devices tr[data-device-id=\"dash-pi\"] button.drain");
    browser.wait_for(
        "the drain to be refused",
        "const n = document.getElementById('notice'); return !n.hidden && n.textContent.includes('401');",
        json!([]),
    );
    assert_eq!(fetch_status(&browser, "POST", &drain_url, json!({})), 401);
    assert_eq!(device_status(&master, "dash-pi"), "online");

    // Signed in again, the drain goes through and the row follows.
    sign_in(&browser, &admin);
    browser.click("#devices tr[data-device-id=\"dash-pi\"] button.drain");
    wait_device(&browser, "dash-pi", "draining");
    assert_eq!(device_status(&master, "dash-pi"), "draining");

    // And on a phone's screen.
    browser.resize(PHONE);
    browser.goto(&format!("{base}/#/devices"));
    wait_device(&browser, "dash-pi", "draining");
    shots.take(&browser, "phone");
    browser.resize(DESKTOP);
}

/// With `--read-only-from none` (every visitor is like one from another machine),
/// a page that has not signed in can read nothing, and signing in opens everything,
/// the event stream included.
#[test]
fn without_a_read_only_network_the_page_reads_only_once_signed_in() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let master =
        MasterProcess::start_with(dir.path(), "127.0.0.1:0", &["--read-only-from", "none"]);
    let admin = tokens_for(master.addr).expect("the master's tokens").admin;
    let base = format!("http://{}", master.addr);
    let browser = Browser::start();

    // The page itself needs nothing; what it asks for does.
    browser.goto(&format!("{base}/#/devices"));
    browser.wait_for(
        "the device listing to be refused",
        "const n = document.getElementById('notice'); return !n.hidden && n.textContent.includes('devices');",
        json!([]),
    );
    assert_eq!(
        fetch_status(&browser, "GET", &format!("{base}/api/v1/tasks"), json!({})),
        401
    );

    sign_in(&browser, &admin);
    let _worker = WorkerProcess::start(master.addr, "dash-far", 1, &[]);
    // The listing works now, and the worker's arrival comes over the event stream,
    // which the page opened again once signed in.
    wait_device(&browser, "dash-far", "online");
    browser.wait_for(
        "live updates",
        "return document.getElementById('live').classList.contains('on');",
        json!([]),
    );
    assert_eq!(
        fetch_status(&browser, "GET", &format!("{base}/api/v1/tasks"), json!({})),
        200
    );

    // Signed out, reads are refused again.
    browser.click("#signout");
    browser.wait_for(
        "the page to be signed out",
        "return document.body.dataset.signedIn === 'no';",
        json!([]),
    );
    assert_eq!(
        fetch_status(&browser, "GET", &format!("{base}/api/v1/tasks"), json!({})),
        401
    );
}
