//! `approve` rules with real clients in a governed cgroup: an HTTP request (`curl`) and a SQL
//! statement (`psql`) wait, unsent, until a person decides with `react-gateway approvals`;
//! an approval lets them go on and leaves a grant, a denial or the rule's timeout answers the
//! agent with the reason; an agent cannot decide on its own request, nor can someone who is not
//! an approver. Every decision is recorded in the session.
//!
//! Needs root (cgroups, eBPF); the statement test needs the Debian `postgresql` package.

use std::{
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use react_gateway_tests::{Gateway, Postgres, Upstream, db_policy, privileged, session_show};
use serde_json::Value;

fn http_policy(port: u16) -> String {
    format!(
        r#"
version = 1

[defaults]
record = "full"

[[target]]
name = "payments"
addresses = ["127.0.0.1/32"]
ports = [{port}]
protocol = "http"

[[rule]]
name = "refunds-need-approval"
target = "payments"
action = "approve"
[rule.match]
http_method = ["POST"]
http_path = ["/refunds"]
[rule.approval]
timeout = "60s"
grant = "10m"

[[rule]]
name = "deletes-need-approval"
target = "payments"
action = "approve"
[rule.match]
http_method = ["DELETE"]
[rule.approval]
timeout = "2s"
"#
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `react-gateway approvals ARGS` (as root, outside the governed cgroup).
fn approvals(gateway: &Gateway, args: &[&str]) -> Output {
    gateway
        .cli()
        .arg("approvals")
        .args(args)
        .output()
        .expect("approvals")
}

/// Waits until `approvals list --json` shows exactly `n` held operations.
fn held(gateway: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = gateway
            .cli()
            .args(["--json", "approvals", "list"])
            .output()
            .expect("approvals list");
        assert!(
            out.status.success(),
            "approvals list: {}",
            text(&out.stderr)
        );
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).expect("approvals JSON");
        if list.len() == n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} held operations, have {list:?}\n{}",
            gateway.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `command` in the governed child cgroup `agent` without waiting for it.
fn spawn_agent(gateway: &Gateway, command: &[&str]) -> Child {
    gateway
        .cli()
        .args(["exec", "--cgroup", "agent", "--"])
        .args(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec")
}

/// `curl` printing the body, then the status code on a line of its own.
fn curl_args<'a>(method: &'a str, url: &'a str) -> Vec<&'a str> {
    vec![
        "curl",
        "-sS",
        "--max-time",
        "30",
        "-X",
        method,
        "-d",
        "{}",
        "-w",
        "\n%{http_code}",
        url,
    ]
}

#[test]
fn held_http_requests_go_on_when_approved_and_are_refused_when_denied_or_late() {
    if !privileged() {
        return;
    }
    let upstream = Upstream::http("127.0.0.1:0");
    let port = upstream.addr.port();
    let gateway = Gateway::start_with_policy("approvals", &[("p.toml", &http_policy(port))], &[]);
    let refunds = format!("http://127.0.0.1:{port}/refunds");

    // A refund waits, unsent, for a person.
    let agent = spawn_agent(&gateway, &curl_args("POST", &refunds));
    let list = held(&gateway, 1);
    let hold = &list[0];
    let id = hold["id"].as_str().expect("id").to_owned();
    assert_eq!(hold["rule"], "refunds-need-approval", "{hold}");
    assert_eq!(hold["target"], "payments", "{hold}");
    assert_eq!(hold["operation"], "POST /refunds", "{hold}");
    assert!(
        hold["identity"]["cgroup"]
            .as_str()
            .is_some_and(|c| c.ends_with("/agent")),
        "{hold}"
    );
    assert!(
        hold["identity"]["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("curl")),
        "{hold}"
    );
    assert_eq!(
        upstream.accepted(),
        0,
        "a held request reached the upstream"
    );
    let shown = text(&approvals(&gateway, &["list"]).stdout);
    assert!(
        shown.contains(&id) && shown.contains("POST /refunds"),
        "{shown}"
    );
    assert_eq!(gateway.status()["approvals"]["held"], 1);

    // The agent cannot approve its own request, nor can someone who is not an approver
    // (root through sudo speaks for the person who ran sudo).
    let state = gateway.state.to_string_lossy().into_owned();
    let bin = react_gateway_tests::bin().to_string_lossy().into_owned();
    let out = gateway.exec(
        "agent",
        &[&bin, "--state-dir", &state, "approvals", "approve", &id],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("governed cgroup"),
        "{}",
        text(&out.stderr)
    );
    let out = gateway
        .cli()
        .env("SUDO_UID", "4321")
        .args(["approvals", "approve", &id])
        .output()
        .expect("approve");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("uid 4321 is not among the approvers"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(upstream.accepted(), 0);

    // Root approves (a prefix of the id is enough): the request goes on.
    let out = approvals(&gateway, &["approve", &id[..12]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!(
            "approved {id}; rule refunds-need-approval granted"
        )),
        "{}",
        text(&out.stdout)
    );
    let out = agent.wait_with_output().expect("curl");
    assert_eq!(
        text(&out.stdout),
        "hello from upstream\n\n200",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(upstream.accepted(), 1);

    // The grant lets the same caller refund again without asking.
    let out = gateway.exec("agent", &curl_args("POST", &refunds));
    assert!(
        text(&out.stdout).ends_with("\n200"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(gateway.status()["approvals"]["grants"], 1);

    // A delete is denied, with a reason the agent reads.
    let agent = spawn_agent(
        &gateway,
        &curl_args("DELETE", &format!("http://127.0.0.1:{port}/orders/7")),
    );
    let id = held(&gateway, 1)[0]["id"].as_str().expect("id").to_owned();
    let out = approvals(
        &gateway,
        &["deny", &id, "--reason", "not during the freeze"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = agent.wait_with_output().expect("curl");
    let answer = text(&out.stdout);
    assert!(answer.ends_with("\n403"), "{answer}");
    assert!(
        answer.contains("approval denied") && answer.contains("not during the freeze"),
        "{answer}"
    );
    // Decided already: a clear error, exit 1.
    let out = approvals(&gateway, &["approve", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no such held operation"),
        "{}",
        text(&out.stderr)
    );

    // An agent that gives up (curl's own 1 s limit) withdraws its request: nobody is asked
    // to approve what no one waits for any more.
    let mut args = curl_args("POST", &refunds);
    args[3] = "1";
    let out = gateway.exec("other", &args);
    assert_eq!(
        out.status.code(),
        Some(28),
        "curl timed out: {}",
        text(&out.stderr)
    );
    held(&gateway, 0);

    // Nobody decides: the rule's timeout (2 s) denies it.
    let started = Instant::now();
    let out = gateway.exec(
        "agent",
        &curl_args("DELETE", &format!("http://127.0.0.1:{port}/orders/8")),
    );
    let answer = text(&out.stdout);
    assert!(
        answer.contains("no decision within 2s") && answer.ends_with("\n403"),
        "{answer}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        upstream.accepted(),
        2,
        "a denied request reached the upstream"
    );
    held(&gateway, 0);

    // Recorded: the decision in each session, the outcome of the denied ones; the withdrawn
    // request's session ends without a decision.
    let sessions = gateway.ended_sessions(5, Duration::from_secs(10));
    let outcomes: Vec<&str> = sessions
        .iter()
        .map(|s| s["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        outcomes,
        ["ok", "ok", "approval_denied", "ok", "approval_denied"],
        "{sessions:?}"
    );
    let decision = |s: &Value| {
        let shown = session_show(&gateway, s["id"].as_str().expect("id"));
        shown["events"]
            .as_array()
            .expect("events")
            .iter()
            .find(|e| e["kind"] == "approval")
            .cloned()
    };
    assert!(
        sessions[3]["identity"]["cgroup"]
            .as_str()
            .is_some_and(|c| c.ends_with("/other"))
    );
    assert_eq!(decision(&sessions[3]), None, "withdrawn, nobody decided");
    let decisions: Vec<Value> = [0, 1, 2, 4]
        .iter()
        .map(|&i| {
            decision(&sessions[i]).unwrap_or_else(|| panic!("no approval event: {}", sessions[i]))
        })
        .collect();
    assert_eq!(decisions[0]["decision"], "approved");
    assert_eq!(decisions[0]["by_uid"], 0);
    assert_eq!(decisions[0]["path"], "/refunds");
    assert_eq!(decisions[1]["decision"], "granted");
    assert_eq!(decisions[2]["decision"], "denied");
    assert_eq!(decisions[2]["reason"], "not during the freeze");
    assert_eq!(decisions[3]["reason"], "no decision within 2s");
    assert!(decisions[3]["by_uid"].is_null());
    let replay = gateway
        .cli()
        .args([
            "sessions",
            "replay",
            sessions[0]["id"].as_str().expect("id"),
        ])
        .output()
        .expect("replay");
    let replay = text(&replay.stdout);
    assert!(
        replay.contains("! approved by uid 0 after")
            && replay.contains("(rule refunds-need-approval): POST /refunds"),
        "{replay}"
    );
}

#[test]
fn held_sql_statements_run_only_when_approved() {
    if !privileged() {
        return;
    }
    let pg = Postgres::start("approvals");
    pg.psql("CREATE TABLE orders (id int, customer text); INSERT INTO orders VALUES (1, 'a'), (2, 'b'), (3, 'c');");
    let rules = r#"
[[rule]]
name = "deletes-need-approval"
target = "crm-db"
action = "approve"
[rule.match]
sql_statement = ["delete"]

[[rule]]
name = "mask-emails"
target = "crm-db"
direction = "request"
action = "mask"
detectors = ["email"]
"#;
    let policy = db_policy(pg.port, "", rules);
    let gateway = Gateway::start_with_policy("pgapprovals", &[("db.toml", &policy)], &[]);
    let port = pg.port.to_string();
    let psql = |sql: &str| -> Child {
        spawn_agent(
            &gateway,
            &[
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "gateway",
                "-d",
                "audit",
                "-At",
                "-c",
                "SELECT 'before'",
                "-c",
                sql,
                "-c",
                "SELECT count(*) FROM orders",
            ],
        )
    };

    // Approved: the statement runs, and the connection goes on.
    let agent = psql("DELETE FROM orders WHERE customer = 'ann@example.com' OR id = 1");
    let hold = held(&gateway, 1).remove(0);
    assert_eq!(hold["rule"], "deletes-need-approval");
    assert_eq!(
        hold["operation"], "DELETE FROM orders WHERE customer = '[REDACTED:EMAIL]' OR id = 1",
        "the approver sees the statement as it is recorded: {hold}"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM orders"),
        "3\n",
        "a held statement ran"
    );
    let out = approvals(&gateway, &["approve", hold["id"].as_str().expect("id")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = agent.wait_with_output().expect("psql");
    assert_eq!(
        text(&out.stdout),
        "before\nDELETE 1\n2\n",
        "{}",
        text(&out.stderr)
    );

    // Denied: the agent gets the reason as an error, the server never sees the statement,
    // and the same connection answers the next one.
    let agent = psql("DELETE FROM orders");
    let hold = held(&gateway, 1).remove(0);
    let out = approvals(
        &gateway,
        &[
            "deny",
            hold["id"].as_str().expect("id"),
            "--reason",
            "use a WHERE",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = agent.wait_with_output().expect("psql");
    assert_eq!(text(&out.stdout), "before\n2\n", "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("react-gateway: approval denied: use a WHERE (rule deletes-need-approval)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(pg.psql("SELECT count(*) FROM orders"), "2\n");

    // An agent that hangs up while its statement is held withdraws it: it never runs.
    let mut agent = psql("DELETE FROM orders WHERE id = 2");
    held(&gateway, 1);
    agent.kill().expect("kill psql");
    let _ = agent.wait();
    held(&gateway, 0);
    assert_eq!(pg.psql("SELECT count(*) FROM orders"), "2\n");

    let sessions = gateway.ended_sessions(3, Duration::from_secs(10));
    let outcomes: Vec<&str> = sessions
        .iter()
        .map(|s| s["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(outcomes, ["ok", "approval_denied", "ok"], "{sessions:?}");
    let replay = gateway
        .cli()
        .args([
            "sessions",
            "replay",
            sessions[1]["id"].as_str().expect("id"),
        ])
        .output()
        .expect("replay");
    let replay = text(&replay.stdout);
    assert!(
        replay.contains("! denied by uid 0 after")
            && replay
                .contains(": use a WHERE (rule deletes-need-approval): sql DELETE FROM orders"),
        "{replay}"
    );
    gateway.assert_not_in_store(&["ann@example.com"]);
}

/// The command line of `approvals` outside a daemon: a clear error, exit 2 is for the
/// environment (no daemon answering).
#[test]
fn approvals_without_a_daemon_say_so() {
    let dir = std::env::temp_dir().join(format!("rg-approvals-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = Command::new(react_gateway_tests::bin())
        .arg("--state-dir")
        .arg(&dir)
        .args(["approvals", "list"])
        .output()
        .expect("approvals");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no daemon is answering"),
        "{}",
        text(&out.stderr)
    );
}
