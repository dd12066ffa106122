//! Policies end to end: the shipped examples and their case files, `policy check|explain` on
//! bad and good input, and a running daemon enforcing, reloading and recording denials with
//! real clients in real cgroups. Run with `cargo xtask test` (as root).

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use react_gateway_tests::{Gateway, Upstream, bin, privileged, workspace};
use serde_json::Value;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env(
            "REACT_GATEWAY_STATE_DIR",
            std::env::temp_dir().join("rg-policy-cli-none"),
        )
        .output()
        .expect("react-gateway")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every example policy checks clean and passes every case file shipped with it, so the
/// examples can never rot.
#[test]
fn shipped_examples_check_clean_and_pass_their_cases() {
    let examples = workspace().join("policies/examples");
    let out = cli(&["policy", "check", examples.to_str().unwrap()]);
    assert!(out.status.success(), "policy check: {}", text(&out));
    assert!(text(&out).contains("0 warning(s)"), "{}", text(&out));

    let mut case_files: Vec<_> = std::fs::read_dir(examples.join("tests"))
        .expect("policies/examples/tests")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    case_files.sort();
    assert!(
        case_files.len() >= 3,
        "a case file per example: {case_files:?}"
    );
    for cases in &case_files {
        let out = cli(&[
            "policy",
            "test",
            examples.to_str().unwrap(),
            "--cases",
            cases.to_str().unwrap(),
        ]);
        let output = text(&out);
        assert!(out.status.success(), "{}: {output}", cases.display());
        assert!(!output.contains("FAIL"), "{output}");
        assert!(output.contains(" 0 failed"), "{output}");
    }
    // The demo policy too.
    let demo = workspace().join("policies/demo");
    let out = cli(&["policy", "check", demo.to_str().unwrap()]);
    assert!(out.status.success(), "demo policy: {}", text(&out));
}

#[test]
fn policy_test_reports_failures_with_a_diff_and_exits_1() {
    let dir = tempdir("cases");
    std::fs::write(
        dir.join("p.toml"),
        r#"
[[target]]
name = "api"
addresses = ["127.0.0.2/32"]
[[rule]]
name = "mask"
target = "api"
action = "mask"
detectors = ["email"]
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("cases.toml"),
        r#"
[[case]]
name = "right"
destination = { address = "127.0.0.2", port = 80 }
request = { method = "POST", path = "/", body = "mail a@b.io" }
expect = { verdict = "mask", output = "mail [REDACTED:EMAIL]" }

[[case]]
name = "wrong"
destination = { address = "127.0.0.2", port = 80 }
request = { method = "POST", path = "/", body = "mail a@b.io" }
expect = { verdict = "block", output = "mail a@b.io" }
"#,
    )
    .unwrap();
    let out = cli(&[
        "policy",
        "test",
        dir.join("p.toml").to_str().unwrap(),
        "--cases",
        dir.join("cases.toml").to_str().unwrap(),
    ]);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(1), "{output}");
    assert!(output.contains("PASS  right"), "{output}");
    assert!(output.contains("FAIL  wrong"), "{output}");
    assert!(
        output.contains("verdict: expected block, got mask"),
        "{output}"
    );
    assert!(
        output.contains("- mail a@b.io") && output.contains("+ mail [REDACTED:EMAIL]"),
        "{output}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn policy_check_reports_every_error_at_once_with_file_line_col() {
    let dir = tempdir("check");
    std::fs::write(
        dir.join("a.toml"),
        r#"version = 1
[defaults]
unmatched = "maybe"

[[target]]
name = "api"
addresses = ["10.0.0.0/33"]

[[rule]]
name = "r1"
target = "apii"
action = "mask"
detectors = ["emial"]
[rule.match]
body = ["(unclosed"]
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("b.toml"),
        "[[rule]]\nname = \"r2\"\ntarget = \"api\"\naction = \"allow\"\ncolour = \"red\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("c.toml"), "this is not toml [").unwrap();
    let out = cli(&["policy", "check", dir.to_str().unwrap()]);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(1), "{output}");
    let a = dir.join("a.toml").display().to_string();
    let b = dir.join("b.toml").display().to_string();
    let c = dir.join("c.toml").display().to_string();
    for expected in [
        format!("{a}:3:13: error: unknown unmatched `maybe`"),
        format!("{a}:7:14: error: invalid address `10.0.0.0/33`"),
        format!(
            "{a}:11:10: error: rule `r1` names unknown target `apii` (hint: did you mean `api`?)"
        ),
        format!("{a}:13:14: error: unknown detector `emial` (hint: did you mean `email`?)"),
        format!("{a}:15:9: error: invalid regex"),
        format!("{b}:5:1: error: unknown field `colour`"),
        format!("{c}:1:"),
    ] {
        assert!(
            output.contains(&expected),
            "missing {expected:?} in:\n{output}"
        );
    }

    // Huge files and catastrophic regexes are refused with a reason, never a panic.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("huge.toml"), "#".repeat(2 << 20)).unwrap();
    let out = cli(&["policy", "check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("policy files are limited to"),
        "{}",
        text(&out)
    );
    std::fs::write(
        dir.join("huge.toml"),
        "[[detector]]\nname = \"x\"\nregex = \"\\\\w{1000}{1000}\"\n",
    )
    .unwrap();
    let out = cli(&["policy", "check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("too large once compiled"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn policy_explain_shows_identity_target_and_each_rule() {
    let examples = workspace().join("policies/examples");
    let out = cli(&[
        "policy",
        "explain",
        examples.to_str().unwrap(),
        "--identity",
        "cgroup=/react-gateway/agent-1,uid=1000,exe=/usr/bin/psql",
        "--dest",
        "127.0.0.3:5432",
    ]);
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    assert!(output.contains("✓ db-agents"), "{output}");
    assert!(
        output.contains("→ crm-db: address and port match"),
        "{output}"
    );
    assert!(
        output.contains("connection: allowed, target crm-db"),
        "{output}"
    );
    assert!(
        output.contains("no-destructive-sql")
            && output.contains("APPLIES to requests and responses when SQL statement is one of"),
        "{output}"
    );
    assert!(
        output.contains("mask-prompts") && output.contains("for other targets (llm-api)"),
        "{output}"
    );

    let out = cli(&[
        "policy",
        "explain",
        examples.to_str().unwrap(),
        "--dest",
        "127.0.0.9:80",
    ]);
    assert!(
        text(&out).contains("connection: DENIED — no target matches"),
        "{}",
        text(&out)
    );
    let out = cli(&[
        "policy",
        "explain",
        examples.to_str().unwrap(),
        "--dest",
        "nonsense",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

const ALLOW_LOCAL: &str = r#"
version = 1
[defaults]
unmatched = "deny"

[[identity]]
name = "python"
exe = ["/usr/bin/python3*", "**/python3*"]

[[target]]
name = "local-tools"
addresses = ["127.0.0.2/32"]

[[rule]]
name = "no-tools-for-python"
target = "local-tools"
identities = ["python"]
action = "block"
"#;

const PY_CONNECT: &str = r"
import socket, sys, time
t = time.monotonic()
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(b'GET / HTTP/1.0\r\n\r\n')
    data = s.recv(100)
    print('connected', repr(data), time.monotonic() - t)
except OSError as e:
    print('error', e.errno, type(e).__name__, time.monotonic() - t)
";

#[test]
fn denied_destinations_fail_at_once_and_are_recorded() {
    if !privileged() {
        return;
    }
    let upstream = Upstream::http("127.0.0.2:0");
    let elsewhere = Upstream::http("127.0.0.9:0");
    let gw = Gateway::start_with_policy("deny", &[("policy.toml", ALLOW_LOCAL)], &[]);
    assert_eq!(gw.status()["policy"]["mode"], "enforcing");

    // Allowed target: served.
    let ok = gw.curl("agent-1", &format!("http://127.0.0.2:{}/", upstream.port()));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // No target matches 127.0.0.9: refused in the kernel at connect(), immediately.
    let started = Instant::now();
    let denied = gw.curl(
        "agent-1",
        &format!("http://127.0.0.9:{}/", elsewhere.port()),
    );
    assert_eq!(denied.status.code(), Some(7), "curl: couldn't connect");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "immediate error, not a timeout"
    );
    let py = gw.python("agent-2", PY_CONNECT, &["127.0.0.9", &elsewhere.port()]);
    assert!(
        py.starts_with("error 1 PermissionError"),
        "EPERM from connect(): {py}"
    );
    assert_eq!(
        elsewhere.accepted(),
        0,
        "nothing reached the denied destination"
    );

    // An identity-specific block (python on local-tools) is enforced by the proxy on accept.
    let py = gw.python("agent-2", PY_CONNECT, &["127.0.0.2", &upstream.port()]);
    assert!(!py.contains("hello from upstream"), "{py}");
    assert_eq!(
        upstream.accepted(),
        1,
        "only curl reached the allowed upstream"
    );

    let sessions = gw.ended_sessions(4, Duration::from_secs(10));
    let version = gw.status()["policy"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let denied: Vec<&Value> = sessions
        .iter()
        .filter(|s| s["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 3, "{sessions:#?}");
    let kernel: Vec<&&Value> = denied
        .iter()
        .filter(|s| s["destination"]["ip"] == "127.0.0.9")
        .collect();
    assert_eq!(kernel.len(), 2);
    for s in &kernel {
        assert_eq!(s["destination"]["port"], elsewhere.addr.port());
        assert!(s["identity"]["pid"].as_u64().is_some_and(|p| p > 1));
        assert!(
            s["identity"]["cgroup"]
                .as_str()
                .unwrap()
                .starts_with(&format!("/{}/agent-", gw.cgroup))
        );
        assert_eq!(s["target"], Value::Null);
        assert_eq!(s["bytes_up"], 0);
        assert_eq!(s["policy_version"], version.as_str());
    }
    // The process is often gone before its exe can be read; the kernel's comm always names it.
    assert!(
        kernel.iter().any(|s| s["identity"]["comm"] == "curl"),
        "{kernel:#?}"
    );
    let by_rule = denied
        .iter()
        .find(|s| s["destination"]["ip"] == "127.0.0.2")
        .expect("proxy denial");
    assert_eq!(by_rule["rules"], serde_json::json!(["no-tools-for-python"]));
    assert_eq!(by_rule["target"], "local-tools");
    assert!(
        by_rule["identity"]["exe"]
            .as_str()
            .unwrap()
            .contains("python")
    );
    let ok = sessions
        .iter()
        .find(|s| s["outcome"] == "ok")
        .expect("allowed session");
    assert_eq!(ok["target"], "local-tools");
    assert_eq!(gw.status()["kernel"]["denied"], 2);

    // Listing by outcome works for denied sessions.
    let out = gw
        .cli()
        .args(["--json", "sessions", "list", "--outcome", "denied"])
        .output()
        .unwrap();
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 3);
}

#[test]
fn reload_applies_to_new_sessions_and_a_broken_policy_keeps_the_old_one() {
    if !privileged() {
        return;
    }
    let upstream = Upstream::echo("127.0.0.2:0");
    let other = Upstream::echo("127.0.0.3:0");
    let allow_2 = "[defaults]\nunmatched = \"deny\"\n[[target]]\nname = \"two\"\naddresses = [\"127.0.0.2/32\"]\n";
    let allow_3 = "[defaults]\nunmatched = \"deny\"\n[[target]]\nname = \"three\"\naddresses = [\"127.0.0.3/32\"]\n";
    let gw = Gateway::start_with_policy("reload", &[("p.toml", allow_2)], &[]);
    let v1 = gw.status()["policy"]["version"]
        .as_str()
        .unwrap()
        .to_string();

    // A session opened under v1 stays open across the reload.
    let mut held = gw
        .cli()
        .args([
            "exec",
            "--cgroup",
            "held",
            "--",
            "python3",
            "-c",
            HOLD,
            "127.0.0.2",
            &upstream.port(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut held_out = std::io::BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut held_out, &mut line).unwrap();
    assert_eq!(line.trim(), "echo 1", "held connection works under v1");

    let status = gw.set_policy_file("p.toml", Some(allow_3));
    let v2 = status["version"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    assert_eq!(status["reloads"], 1);
    assert!(
        !gw.curl_ok("127.0.0.2", &upstream.port()),
        "new sessions use v2: .2 is denied now"
    );
    assert!(gw.curl_ok("127.0.0.3", &other.port()), "and .3 is allowed");

    // The session that started under v1 still relays.
    std::io::Write::write_all(held.stdin.as_mut().unwrap(), b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut held_out, &mut line).unwrap();
    assert_eq!(
        line.trim(),
        "echo 2",
        "in-flight session keeps running after the reload"
    );
    drop(held.stdin.take());
    assert!(held.wait().unwrap().success());

    // A broken file: the old policy stays in force and status says where the error is.
    let status = gw.set_policy_file(
        "q.toml",
        Some("[[target]]\nname = \"x\"\nports = [\"https\"]\n"),
    );
    assert_eq!(status["version"], v2.as_str(), "v2 stays in force");
    let errors = status["last_error"].as_array().expect("last_error").clone();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("q.toml:3:")),
        "{errors:?}"
    );
    assert!(gw.curl_ok("127.0.0.3", &other.port()), "still enforcing v2");
    assert!(!gw.curl_ok("127.0.0.2", &upstream.port()));
    let human = gw.cli().arg("status").output().unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("POLICY ERROR"));

    // Fixed: applied, error cleared.
    let status = gw.set_policy_file("q.toml", None);
    assert_eq!(status["version"], v2.as_str());
    assert_eq!(status["last_error"], Value::Null);

    // Sessions carry the version they ran under.
    let sessions = gw.ended_sessions(4, Duration::from_secs(10));
    let held_session = sessions
        .iter()
        .find(|s| {
            s["identity"]["cgroup"]
                .as_str()
                .is_some_and(|c| c.ends_with("/held"))
        })
        .expect("held session");
    assert_eq!(held_session["policy_version"], v1.as_str());
    assert_eq!(held_session["outcome"], "ok");
    assert!(
        sessions
            .iter()
            .filter(|s| s["identity"]["cgroup"]
                .as_str()
                .is_some_and(|c| c.ends_with("/curl")))
            .all(|s| s["policy_version"] == v2.as_str())
    );
}

#[test]
fn sighup_reloads_when_polling_is_off() {
    if !privileged() {
        return;
    }
    let upstream = Upstream::http("127.0.0.2:0");
    let gw = Gateway::start_with_policy("sighup", &[], &["--policy-poll", "0s"]);
    assert_eq!(gw.status()["policy"]["mode"], "record-only");
    std::fs::write(
        gw.policy_dir().join("p.toml"),
        "[defaults]\nunmatched = \"deny\"\n[[target]]\nname = \"t\"\naddresses = [\"127.0.0.3/32\"]\n",
    )
    .unwrap();
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(gw.status()["policy"]["mode"], "record-only", "no polling");
    assert!(gw.curl_ok("127.0.0.2", &upstream.port()));
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(i32::try_from(gw.pid()).unwrap(), libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.status()["policy"]["mode"] != "enforcing" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !gw.curl_ok("127.0.0.2", &upstream.port()),
        "the reloaded policy denies .2"
    );
}

const HOLD: &str = r"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
for i in (1, 2):
    if i == 2:
        sys.stdin.readline()
    s.sendall(b'echo %d\n' % i)
    print(s.recv(100).decode().strip(), flush=True)
";

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rg-policy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
