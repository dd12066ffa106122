//! Recording, audit trail and replay, on both backends: `SQLite` under the state dir and a
//! real PostgreSQL server started by the test (Debian `postgresql`). Real daemon, real kernel,
//! unmodified Python clients in governed cgroups, the `mock-upstream` tool server. Run with
//! `cargo xtask test` (as root).
//!
//! * sessions and events round-trip with the contract's JSON; bodies are recorded after
//!   masking; replay, `sessions verify --all` and `audit export` work;
//! * no masked value and no injected credential is anywhere in the store;
//! * altering a body, deleting an event, deleting a session, reordering events and truncating
//!   the ledger each make `audit verify` fail naming the session;
//! * kill -9 during a load of 1,000 sessions loses none that ended before the documented
//!   window;
//! * PostgreSQL restarted during a run: new sessions are refused while records cannot be
//!   written (`on_record_failure = "block"`), the daemon reconnects and catches up;
//! * record levels, and retention that keeps the ledger verifiable.

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead as _, BufReader},
    process::Stdio,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use react_gateway_tests::{Gateway, MockUpstream, Postgres, free_port, privileged, session_show};
use serde_json::{Value, value::RawValue};

const MOCK: &str = env!("CARGO_BIN_EXE_mock-upstream");
const EMAIL: &str = "jane.doe@example.com";
const SECRET: &str = "sk-live-injected-credential-7f3a9c2e51";

/// Where a test records: the state dir's `SQLite` file, or its own PostgreSQL server.
enum Backend {
    Sqlite,
    Postgres(Postgres),
}

impl Backend {
    fn postgres(name: &str) -> Self {
        Self::Postgres(Postgres::start(name))
    }

    fn url(&self) -> Option<String> {
        match self {
            Self::Sqlite => None,
            Self::Postgres(pg) => Some(pg.url()),
        }
    }

    /// Runs SQL against the store (the daemon stopped, for tampering).
    fn sql(&self, gateway: &Gateway, sql: &str) -> String {
        match self {
            Self::Postgres(pg) => pg.psql(sql),
            Self::Sqlite => {
                let code = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nrows = c.execute(sys.argv[2]).fetchall()\nc.commit()\nprint('\\n'.join('|'.join(str(v) for v in r) for r in rows))";
                let out = std::process::Command::new("python3")
                    .args(["-c", code])
                    .arg(gateway.state.join("gateway.db"))
                    .arg(sql)
                    .output()
                    .expect("python3 sqlite3");
                assert!(
                    out.status.success(),
                    "{sql}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        }
    }

    /// A session's stored events, each as its exact JSON text, in order (its event blocks
    /// flattened).
    fn events(&self, gateway: &Gateway, id: &str) -> Vec<String> {
        let blocks = self.sql(
            gateway,
            &format!("SELECT data FROM event_blocks WHERE session_id = '{id}' ORDER BY seq"),
        );
        let mut events = Vec::new();
        for block in blocks.lines().filter(|l| !l.is_empty()) {
            let block: Vec<Box<RawValue>> = serde_json::from_str(block).expect(block);
            events.extend(block.iter().map(|e| e.get().to_string()));
        }
        events
    }

    /// Stores `events` as the session's only block of events.
    fn set_events(&self, gateway: &Gateway, id: &str, events: &[String]) {
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        let data = format!("[{}]", events.join(",")).replace('\'', "''");
        self.sql(
            gateway,
            &format!("DELETE FROM event_blocks WHERE session_id = '{id}'"),
        );
        self.sql(
            gateway,
            &format!(
                "INSERT INTO event_blocks (session_id, seq, events, data) VALUES ('{id}', {}, {}, '{data}')",
                first["seq"],
                events.len()
            ),
        );
    }

    /// Every byte the store holds: the `SQLite` files (WAL included) or a PostgreSQL dump.
    fn dump(&self, gateway: &Gateway) -> Vec<u8> {
        match self {
            Self::Sqlite => {
                let mut all = Vec::new();
                for suffix in ["", "-wal", "-shm"] {
                    all.extend(
                        std::fs::read(gateway.state.join(format!("gateway.db{suffix}")))
                            .unwrap_or_default(),
                    );
                }
                assert!(!all.is_empty(), "no SQLite store");
                all
            }
            Self::Postgres(pg) => pg.dump(),
        }
    }
}

fn policy(mock: &MockUpstream, port: u16, defaults: &str) -> String {
    let key = mock.dir.join("tool-key");
    std::fs::write(&key, SECRET).expect("key file");
    format!(
        r#"
version = 1
[defaults]
unmatched = "deny"
{defaults}

[[target]]
name = "tools"
addresses = ["127.0.0.2/32"]
ports = [{port}]
protocol = "http"
[target.tls]
mode = "none"
[target.credentials]
header = "X-Api-Key"
value = "${{file:{key}}}"

[[rule]]
name = "mask-emails"
target = "tools"
direction = "both"
action = "mask"
detectors = ["email"]
"#,
        key = key.display(),
    )
}

/// One governed Python agent: `n` POSTs, each on its own connection (its own session).
fn post_sessions(gateway: &Gateway, port: u16, n: usize) {
    let code = format!(
        r#"
import http.client, json, sys
for i in range({n}):
    c = http.client.HTTPConnection("127.0.0.2", {port}, timeout=10)
    body = json.dumps({{"note": "contact {EMAIL} please", "i": i}})
    c.request("POST", f"/tool/{{i}}?contact={EMAIL}", body=body, headers={{"Content-Type": "application/json", "X-Api-Key": "agent-placeholder", "X-Customer": "{EMAIL}"}})
    r = c.getresponse()
    assert r.status == 200, r.status
    r.read()
    c.close()
"#
    );
    gateway.python("agent", &code, &[]);
}

fn cli_ok(gateway: &Gateway, args: &[&str]) -> (bool, String) {
    let out = gateway.cli().args(args).output().expect("cli");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs the CLI with its stdout a pipe whose reader is gone before anything is written (a
/// `| head` that has had enough): its exit code and stderr.
fn cli_into_closed_pipe(gateway: &Gateway, args: &[&str]) -> (Option<i32>, String) {
    let mut child = gateway
        .cli()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cli");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("cli");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn round_trip_and_tamper(name: &str, backend: &Backend) {
    let port = free_port();
    let mock = MockUpstream::start(MOCK, name, &[format!("http@127.0.0.2:{port}")]);
    let mut gateway = Gateway::start_with_store(
        name,
        &[("tools.toml", &policy(&mock, port, ""))],
        &[],
        backend.url(),
    );
    post_sessions(&gateway, port, 6);
    let sessions = gateway.ended_sessions(6, Duration::from_secs(20));
    assert_eq!(sessions.len(), 6, "{sessions:?}\n{}", gateway.log());

    // The contract's JSON, and events in order with bodies recorded after masking.
    for s in &sessions {
        assert_eq!(s["outcome"], "ok", "{s}");
        assert_eq!(s["target"], "tools");
        assert_eq!(s["protocol"], "http");
        assert_eq!(s["masked"]["email"], 1, "{s}");
        assert!(s["identity"]["pid"].as_u64().is_some());
        let shown = session_show(&gateway, s["id"].as_str().unwrap());
        let events = shown["events"].as_array().unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        // One event per message: the body (after masking) joins its request or response.
        assert_eq!(&kinds[..2], ["http_request", "http_response"], "{kinds:?}");
        let body = events[0]["body"].as_str().unwrap();
        assert!(body.contains("[REDACTED:EMAIL]"), "{body}");
        assert_eq!(events[0]["body_size"].as_u64(), Some(body.len() as u64));
        assert_eq!(events[0]["body_sha256"].as_str().map(str::len), Some(64));
        assert_eq!(events[0]["headers"]["x-api-key"], "[REDACTED]");
        // The request line and headers pass unchanged; their record is masked.
        assert_eq!(events[0]["headers"]["x-customer"], "[REDACTED:EMAIL]");
        let path = events[0]["path"].as_str().unwrap();
        assert!(path.ends_with("?contact=[REDACTED:EMAIL]"), "{path}");
        assert_eq!(events[1]["status"], 200);
        assert!(events[1]["body_size"].as_u64().is_some(), "{}", events[1]);
    }
    let first = sessions[0]["id"].as_str().unwrap().to_string();
    let (ok, replay) = cli_ok(&gateway, &["sessions", "replay", &first[..20]]);
    assert!(ok, "{replay}");
    let request = replay.find("> POST /tool/").expect(&replay);
    let masked = replay.find("[REDACTED:EMAIL]").expect(&replay);
    let response = replay.find("< 200").expect(&replay);
    assert!(request < masked && masked < response, "{replay}");
    // Piped into a reader that has gone (`| head`), the commands end quietly, and the checks
    // still give their verdict.
    for args in [
        &["sessions", "replay", &first][..],
        &["sessions", "show", &first],
        &["sessions", "list"],
        &["--json", "sessions", "list"],
        &["audit", "export"],
        &["audit", "verify"],
        &["sessions", "verify", "--all"],
    ] {
        let (code, stderr) = cli_into_closed_pipe(&gateway, args);
        assert!(
            code == Some(0) && !stderr.contains("panicked"),
            "{args:?}: {code:?} {stderr}"
        );
    }

    // `sessions list` filters, on this backend: a cgroup matches its subtree and nothing
    // that merely shares its prefix; uid and exe match exactly; a limit keeps the newest.
    let list = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["--json", "sessions", "list"];
        all.extend_from_slice(args);
        let out = gateway.cli().args(&all).output().expect("cli");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    };
    let identity = &sessions[0]["identity"];
    let cgroup = identity["cgroup"].as_str().unwrap();
    let parent = &cgroup[..cgroup.rfind('/').unwrap()];
    let uid = format!("uid:{}", identity["uid"]);
    let exe = identity["exe"].as_str().unwrap();
    assert_eq!(list(&["--identity", cgroup]).len(), 6);
    assert_eq!(
        list(&["--identity", parent]).len(),
        6,
        "{parent} is the subtree"
    );
    assert_eq!(list(&["--identity", &format!("{parent}/")]).len(), 6);
    assert_eq!(list(&["--identity", &cgroup[..cgroup.len() - 1]]).len(), 0);
    assert_eq!(list(&["--identity", &format!("{parent}_")]).len(), 0);
    assert_eq!(list(&["--identity", &uid, "--target", "tools"]).len(), 6);
    assert_eq!(list(&["--identity", exe, "--since", "1h"]).len(), 6);
    assert_eq!(list(&["--target", "other"]).len(), 0);
    let newest: Vec<Value> = list(&["--target", "tools", "--limit", "2"]);
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = list(&["--target", "tools"]);
    assert_eq!(
        ids(&newest),
        ids(&all[all.len() - 2..]),
        "the newest two, oldest first"
    );

    let (ok, verify) = cli_ok(&gateway, &["audit", "verify"]);
    assert!(ok, "{verify}");
    assert!(verify.contains("OK"), "{verify}");
    let (ok, leaks) = cli_ok(&gateway, &["sessions", "verify", "--all"]);
    assert!(ok, "{leaks}");
    let (ok, export) = cli_ok(
        &gateway,
        &["audit", "export", "--since", "1h", "--format", "jsonl"],
    );
    assert!(ok, "{export}");
    let lines: Vec<Value> = export
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("jsonl"))
        .collect();
    assert_eq!(lines.iter().filter(|l| l["type"] == "session").count(), 6);
    // A request and a response event per session, each with its body.
    assert!(lines.iter().filter(|l| l["type"] == "event").count() >= 12);

    // The upstream got the credential; the recordings never hold it, nor the masked value.
    let requests = mock.requests();
    assert!(
        requests.iter().all(|r| r["headers"]["x-api-key"] == SECRET),
        "{requests:?}"
    );
    // Headers pass unchanged (only their record is masked).
    assert!(
        requests.iter().all(|r| r["headers"]["x-customer"] == EMAIL),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| !r["body"].as_str().unwrap().contains(EMAIL))
    );
    gateway.stop(libc::SIGTERM);
    let dump = backend.dump(&gateway);
    for raw in [EMAIL, SECRET, "agent-placeholder"] {
        assert!(
            memmem(&dump, raw.as_bytes()).is_none(),
            "{raw} is in the store"
        );
    }

    // Tampering, one kind per session; the last session of the ledger loses its entry.
    let last = backend
        .sql(
            &gateway,
            "SELECT session_id FROM ledger ORDER BY seq DESC LIMIT 1",
        )
        .trim()
        .to_string();
    let ids: Vec<String> = sessions
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .filter(|id| *id != last)
        .collect();
    let [altered, deleted_event, deleted, reordered, clean] = ids.as_slice() else {
        panic!("{ids:?}");
    };
    backend.sql(&gateway, &format!("UPDATE event_blocks SET data = replace(data, 'REDACTED', 'EDITED') WHERE session_id = '{altered}'"));
    let mut events = backend.events(&gateway, deleted_event);
    assert!(events.len() >= 3, "{events:?}");
    events.remove(1);
    backend.set_events(&gateway, deleted_event, &events);
    backend.sql(
        &gateway,
        &format!("DELETE FROM event_blocks WHERE session_id = '{deleted}'"),
    );
    backend.sql(
        &gateway,
        &format!("DELETE FROM sessions WHERE id = '{deleted}'"),
    );
    // The first two events change places, each taking the other's seq.
    let mut events = backend.events(&gateway, reordered);
    let (first, second) = (
        events[1].replacen("{\"seq\":1,", "{\"seq\":0,", 1),
        events[0].replacen("{\"seq\":0,", "{\"seq\":1,", 1),
    );
    assert!(first.starts_with("{\"seq\":0,") && second.starts_with("{\"seq\":1,"));
    events[0] = first;
    events[1] = second;
    backend.set_events(&gateway, reordered, &events);
    backend.sql(
        &gateway,
        &format!("DELETE FROM ledger WHERE session_id = '{last}'"),
    );
    let (ok, report) = cli_ok(&gateway, &["audit", "verify"]);
    assert!(!ok, "tampering went unnoticed:\n{report}");
    assert_eq!(
        cli_into_closed_pipe(&gateway, &["audit", "verify"]).0,
        Some(1),
        "the verdict, with no reader left for the report"
    );
    for (id, what) in [
        (altered, "altered"),
        (deleted_event, "missing"),
        (deleted, "deleted"),
        (reordered, "reordered"),
        (&last, "not in any ledger"),
    ] {
        let line = report
            .lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not named:\n{report}"));
        assert!(line.contains(what), "{line}\n{report}");
    }
    assert!(report.contains("ledger truncated"), "{report}");
    assert!(!report.contains(clean.as_str()), "{report}");
}

#[test]
fn sqlite_round_trip_no_leaks_and_tamper_evidence() {
    if !privileged() {
        return;
    }
    round_trip_and_tamper("rec-sqlite", &Backend::Sqlite);
}

#[test]
fn postgres_round_trip_no_leaks_and_tamper_evidence() {
    if !privileged() {
        return;
    }
    let backend = Backend::postgres("rec-pg");
    round_trip_and_tamper("rec-pg", &backend);
}

/// kill -9 during a load of 1,000 sessions: every session whose client saw its answer more
/// than the documented window (1 s) before the kill is in the store, ended and `ok`.
/// Processes that keep every CPU busy at normal priority until dropped (killed by PID).
struct BusyCpus(Vec<std::process::Child>);

impl BusyCpus {
    fn start() -> Self {
        let cpus = thread::available_parallelism().map_or(2, usize::from);
        Self(
            (0..cpus)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("sh")
                })
                .collect(),
        )
    }
}

impl Drop for BusyCpus {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `busy`: other processes keep every CPU busy, so the recorder's batches, which start at
/// `SCHED_IDLE` when the recorder keeps up, get no idle CPU and rely on the guard that raises
/// them.
fn kill_under_load(name: &str, backend: &Backend, busy: bool) {
    let port = free_port();
    let mock = MockUpstream::start(MOCK, name, &[format!("http@127.0.0.2:{port}")]);
    let mut gateway = Gateway::start_with_store(
        name,
        &[("tools.toml", &policy(&mock, port, ""))],
        &[],
        backend.url(),
    );
    let code = format!(
        r#"
import http.client, sys, time
for i in range(1000):
    try:
        c = http.client.HTTPConnection("127.0.0.2", {port}, timeout=5)
        c.request("GET", f"/load/{{i}}")
        c.getresponse().read()
        c.close()
    except Exception as e:
        print("failed", i, e, flush=True)
        break
    print(i, time.time(), flush=True)
    time.sleep(0.004)  # ~200 sessions/s: the load is still running when the kill comes
"#
    );
    let mut child = gateway
        .cli()
        .args(["exec", "--cgroup", "load", "--", "python3", "-c", &code])
        .stdout(Stdio::piped())
        .spawn()
        .expect("load");
    let done: Arc<Mutex<Vec<(usize, f64)>>> = Arc::default();
    let reader = {
        let done = Arc::clone(&done);
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut parts = line.split(' ');
                if let (Some(Ok(i)), Some(Ok(at))) = (
                    parts.next().map(str::parse::<usize>),
                    parts.next().map(str::parse::<f64>),
                ) {
                    done.lock().unwrap().push((i, at));
                }
            }
        })
    };
    // The kill comes 2.5 s into the load.
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "load did not start:\n{}",
            gateway.log()
        );
        thread::sleep(Duration::from_millis(5));
    }
    let hogs = busy.then(BusyCpus::start);
    thread::sleep(Duration::from_millis(2500));
    if hogs.is_some() {
        // Not asserted: an idle-policy thread still gets a sliver of a busy CPU, and a small
        // batch may finish within the guard on it. What must hold is the window, below.
        eprintln!(
            "batches raised by the guard while every CPU was busy: {}",
            gateway.status()["recorder"]["raised_batches"]
        );
    }
    let killed_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    gateway.stop(libc::SIGKILL);
    let _ = child.wait();
    reader.join().unwrap();
    drop(hogs);
    let done = done.lock().unwrap().clone();
    assert!(done.len() < 1000, "the kill came after the load");

    // The restarted daemon closes what the dead one left open, into the ledger.
    gateway.spawn();
    let (ok, export) = cli_ok(&gateway, &["audit", "export", "--format", "jsonl"]);
    assert!(ok, "{export}");
    let mut outcome: HashMap<String, String> = HashMap::new();
    let mut path_of: HashMap<String, String> = HashMap::new();
    for line in export.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).unwrap();
        let id = v["id"]
            .as_str()
            .or(v["session"].as_str())
            .unwrap()
            .to_string();
        if v["type"] == "session" {
            outcome.insert(id, v["outcome"].as_str().unwrap_or("open").to_string());
        } else if v["kind"] == "http_request" {
            path_of.insert(id, v["path"].as_str().unwrap().to_string());
        }
    }
    let recorded: HashSet<&String> = path_of
        .iter()
        .filter(|(id, _)| outcome.get(*id).map(String::as_str) == Some("ok"))
        .map(|(_, path)| path)
        .collect();
    let before_window: Vec<usize> = done
        .iter()
        .filter(|(_, at)| *at < killed_at - 1.0)
        .map(|(i, _)| *i)
        .collect();
    assert!(
        before_window.len() > 100,
        "{} sessions before the window",
        before_window.len()
    );
    let lost: Vec<&usize> = before_window
        .iter()
        .filter(|i| !recorded.contains(&format!("/load/{i}")))
        .collect();
    assert!(lost.is_empty(), "sessions lost by kill -9: {lost:?}");
    let (ok, verify) = cli_ok(&gateway, &["audit", "verify"]);
    assert!(ok, "{verify}");
    eprintln!(
        "kill -9 after {} sessions: all {} that ended >1 s before it are recorded",
        done.len(),
        before_window.len()
    );
}

#[test]
fn sqlite_kill_9_under_load_loses_no_ended_session() {
    if !privileged() {
        return;
    }
    kill_under_load("kill-sqlite", &Backend::Sqlite, false);
}

#[test]
fn sqlite_kill_9_with_every_cpu_busy_loses_no_ended_session() {
    if !privileged() {
        return;
    }
    kill_under_load("kill-busy", &Backend::Sqlite, true);
}

#[test]
fn postgres_kill_9_under_load_loses_no_ended_session() {
    if !privileged() {
        return;
    }
    let backend = Backend::postgres("kill-pg");
    kill_under_load("kill-pg", &backend, false);
}

/// PostgreSQL stopped during a run: the daemon refuses new sessions while it cannot record
/// them, keeps the records of the sessions it accepted, reconnects and catches up.
#[test]
fn postgres_restart_blocks_new_sessions_then_catches_up() {
    if !privileged() {
        return;
    }
    let Backend::Postgres(mut pg) = Backend::postgres("restart-pg") else {
        unreachable!()
    };
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "restart-pg", &[format!("http@127.0.0.2:{port}")]);
    let gateway = Gateway::start_with_store(
        "restart-pg",
        &[("tools.toml", &policy(&mock, port, ""))],
        &[],
        Some(pg.url()),
    );
    post_sessions(&gateway, port, 2);
    assert_eq!(gateway.ended_sessions(2, Duration::from_secs(10)).len(), 2);

    pg.pause();
    // Accepted while the store is down: held in the queue, not lost.
    post_sessions(&gateway, port, 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway.status()["recorder"]["failing"] != true {
        assert!(Instant::now() < deadline, "{}", gateway.status());
        thread::sleep(Duration::from_millis(100));
    }
    let status = gateway.status();
    assert!(
        status["recorder"]["backlog"].as_u64().unwrap() > 0,
        "{status}"
    );
    let refused = gateway.exec(
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.2:{port}/refused"),
        ],
    );
    assert!(!refused.status.success(), "a session ran unrecorded");
    assert!(
        gateway.status()["recorder"]["refused_sessions"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(mock.requests().iter().all(|r| r["path"] != "/refused"));

    pg.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = gateway.status();
        if status["recorder"]["failing"] == false && status["recorder"]["backlog"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no catch-up: {status}\n{}",
            gateway.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    post_sessions(&gateway, port, 1);
    let sessions = gateway.ended_sessions(4, Duration::from_secs(10));
    assert_eq!(sessions.len(), 4, "{sessions:?}");
    assert!(sessions.iter().all(|s| s["outcome"] == "ok"));
    let (ok, verify) = cli_ok(&gateway, &["audit", "verify"]);
    assert!(ok, "{verify}");
}

/// `record = "metadata"` keeps no bodies; `record = "off"` keeps only the session row.
#[test]
fn record_levels() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "levels", &[format!("http@127.0.0.2:{port}")]);
    let gateway = Gateway::start_with_policy(
        "levels",
        &[("tools.toml", &policy(&mock, port, "record = \"metadata\""))],
        &[],
    );
    post_sessions(&gateway, port, 1);
    let s = gateway.ended_sessions(1, Duration::from_secs(10));
    let shown = session_show(&gateway, s[0]["id"].as_str().unwrap());
    let kinds: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"http_request") && kinds.contains(&"http_response"),
        "{kinds:?}"
    );
    assert!(!kinds.iter().any(|k| k.ends_with("_body")), "{kinds:?}");
    assert!(
        shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e.get("body").is_none() && e.get("body_size").is_none()),
        "{shown}"
    );

    gateway.set_policy_file("tools.toml", Some(&policy(&mock, port, "record = \"off\"")));
    post_sessions(&gateway, port, 1);
    let s = gateway.ended_sessions(2, Duration::from_secs(10));
    assert_eq!(s.len(), 2);
    let shown = session_show(&gateway, s[1]["id"].as_str().unwrap());
    assert_eq!(shown["events"].as_array().map(Vec::len), Some(0), "{shown}");
    assert_eq!(shown["outcome"], "ok");
    let (ok, verify) = cli_ok(&gateway, &["audit", "verify"]);
    assert!(ok, "{verify}");
}

fn memmem(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Retention prunes a prefix of the ledger with a signed checkpoint: what is left still
/// verifies, and removing the checkpoint is caught. (Store and recorder as a library.)
#[test]
fn retention_prunes_and_the_ledger_still_verifies() {
    use gateway_user::{
        audit::{Signer, anchor_path},
        policy::Policy,
        record::{Chain, Recorder},
        session::{Identity, Outcome, Record, Session, timestamp},
        store::{Store, Write},
    };
    let dir = std::env::temp_dir().join(format!("rg-retention-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("gateway.db").display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pruned = runtime.block_on(async {
        let store = Store::open(&url).await.unwrap();
        let signer = Arc::new(Signer::load_or_create(&dir).unwrap());
        let (chain, _) = Chain::resume(&store, Arc::clone(&signer), anchor_path(&dir))
            .await
            .unwrap();
        let (recorder, writer) = Recorder::spawn(store.clone(), chain);
        let policy = Policy::record_only();
        let day = Duration::from_secs(86_400);
        for i in 0..10u32 {
            let age = if i < 6 { day * 40 } else { Duration::ZERO };
            let at = timestamp(SystemTime::now() - age);
            let mut s = Session::open(
                Identity::default(),
                "127.0.0.2:80".parse().unwrap(),
                &policy,
            );
            s.started_at.clone_from(&at);
            recorder.write(Write::Session(Box::new(s.clone()))).await;
            let mut event = Record::new(
                "http_request",
                &serde_json::json!({"path": format!("/{i}")}),
            );
            event.at.clone_from(&at);
            recorder
                .write(Write::Event {
                    session: s.id.clone(),
                    event,
                })
                .await;
            s.ended_at = Some(at);
            s.outcome = Some(Outcome::Ok);
            recorder.write(Write::Session(Box::new(s))).await;
        }
        recorder.close();
        writer.await.unwrap();
        let cutoff = timestamp(SystemTime::now() - day * 30);
        // The writer closed its pool on exit.
        let store = Store::open(&url).await.unwrap();
        store.prune(&signer, &cutoff).await.unwrap()
    });
    assert_eq!(pruned, 6);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(react_gateway_tests::bin())
            .arg("--state-dir")
            .arg(&dir)
            .args(["--store", &url])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, list) = cli(&["--json", "sessions", "list"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Vec<Value>>(&list).unwrap().len(), 4);
    let (ok, report) = cli(&["audit", "verify"]);
    assert!(ok, "{report}");
    let py = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute(\"DELETE FROM checkpoints WHERE kind = 'prune'\")\nc.commit()";
    let status = std::process::Command::new("python3")
        .args(["-c", py])
        .arg(dir.join("gateway.db"))
        .status()
        .unwrap();
    assert!(status.success());
    let (ok, report) = cli(&["audit", "verify"]);
    assert!(!ok, "{report}");
    assert!(
        report.contains("ledger entries 1..6 are missing"),
        "{report}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
