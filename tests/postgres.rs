//! The `PostgreSQL` data path with real clients (`psql`, Python `psycopg`) in a governed
//! cgroup, against a real `PostgreSQL` server started by the test: statements blocked by rule
//! with the connection still usable, result columns and values masked (text and binary
//! results), the SQL text and bound parameters masked before they reach the server, and the
//! session recorded (statements, results as the agent saw them) without a raw value.
//!
//! Needs root (cgroups, eBPF) and the Debian `postgresql` package (`cargo xtask setup`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use react_gateway_tests::{Gateway, Postgres, db_policy, privileged, session_show};
use serde_json::Value;

const EMAIL: &str = "ada.lovelace@analytical-engines.co.uk";
const SSN: &str = "219-09-9999";
const CARD: &str = "4111 1111 1111 1111";
/// Sent by the agent in an INSERT: masked before the server stores it.
const AGENT_EMAIL: &str = "bob.agent@northwind-traders.com";

const BLOCK_DESTRUCTIVE: &str = r#"
[[rule]]
name = "no-destructive-sql"
target = "crm-db"
action = "block"
[rule.match]
sql_statement = ["drop", "truncate", "delete_without_where"]
"#;

fn policy(port: u16) -> String {
    let rules = format!(
        r#"{BLOCK_DESTRUCTIVE}
[[rule]]
name = "mask-customer-pii"
target = "crm-db"
direction = "response"
action = "mask"
columns = ["ssn"]
detectors = ["email", "credit_card"]

[[rule]]
name = "mask-outgoing-email"
target = "crm-db"
direction = "request"
action = "mask"
detectors = ["email"]
"#
    );
    db_policy(port, "", &rules)
}

fn psql(gateway: &Gateway, pg: &Postgres, commands: &[&str]) -> Output {
    let port = pg.port.to_string();
    let mut args = vec![
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
    ];
    for c in commands {
        args.extend(["-c", c]);
    }
    gateway.exec("agent", &args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn sql_is_blocked_masked_and_recorded_with_psql_and_psycopg() {
    if !privileged() {
        return;
    }
    let pg = Postgres::start("pgpath");
    pg.psql(&format!(
        "CREATE TABLE customers (id int, name text, email text, ssn text, note varchar(80));
         INSERT INTO customers VALUES (1, 'Ada', '{EMAIL}', '{SSN}', 'card {CARD} on file'),
                                      (2, 'Alan', NULL, NULL, 'no card');
         CREATE TABLE notes (body text);"
    ));
    let gateway = Gateway::start_with_policy("pgpath", &[("db.toml", &policy(pg.port))], &[]);

    // psql (simple protocol): a masked result; a refused DROP, after which the same
    // connection answers the next statement; an INSERT whose e-mail the server never gets.
    let out = psql(
        &gateway,
        &pg,
        &[
            "SELECT name, email, ssn, note FROM customers ORDER BY id",
            "DROP TABLE customers",
            "SELECT count(*) FROM customers",
            &format!("INSERT INTO notes VALUES ('reach {AGENT_EMAIL}')"),
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.starts_with(
            "Ada|[REDACTED:EMAIL]|[REDACTED:SSN]|card [REDACTED:CREDIT_CARD] on file\nAlan|||no card\n"
        ),
        "psql printed:\n{stdout}\n{stderr}\n{}",
        gateway.log()
    );
    assert!(
        stderr.contains("blocked by policy (rule no-destructive-sql)"),
        "psql said: {stderr}"
    );
    assert!(
        stdout.contains("\n2\nINSERT 0 1\n"),
        "the connection did not go on after the refusal: {stdout}"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM customers"), "2\n");
    assert_eq!(
        pg.psql("SELECT body FROM notes"),
        "reach [REDACTED:EMAIL]\n",
        "the server got the agent's e-mail"
    );

    // psycopg (extended protocol: Parse/Bind/Execute), text and binary results; a refused
    // statement in a pipeline of its own; a bound parameter masked before it leaves.
    let out = gateway.python(
        "agent",
        r#"
import sys, psycopg
port = sys.argv[1]
with psycopg.connect(host="127.0.0.1", port=port, user="gateway", dbname="audit", autocommit=True) as conn:
    cur = conn.cursor()
    cur.execute("SELECT email, ssn, note FROM customers WHERE name = %s", ("Ada",))
    print("text", cur.fetchone())
    cur = conn.cursor(binary=True)
    cur.execute("SELECT email, note FROM customers WHERE id = %s", (1,))
    print("binary", cur.fetchone())
    try:
        conn.execute("TRUNCATE customers")
        print("not refused")
    except psycopg.Error as e:
        print("refused", e.sqlstate, str(e).splitlines()[0])
    print("count", conn.execute("SELECT count(*) FROM customers WHERE id > %s", (0,)).fetchone()[0])
    # Pipeline mode: the refusal must come back after a Flush, before any Sync (the alarm
    # turns a wait for it into a failure instead of a hang).
    import signal
    signal.alarm(10)
    try:
        with conn.pipeline():
            conn.execute("DROP TABLE customers")
            conn.execute("SELECT 2").fetchone()
        print("pipeline not refused")
    except psycopg.Error as e:
        print("pipeline refused", e.sqlstate)
    signal.alarm(0)
    print("after", conn.execute("SELECT 40 + %s", (2,)).fetchone()[0])
    conn.execute("INSERT INTO notes VALUES (%s)", (sys.argv[2],))
"#,
        &[&pg.port.to_string(), &format!("write to {AGENT_EMAIL}")],
    );
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {out}"))
            .to_string()
    };
    assert_eq!(
        line("text"),
        "text ('[REDACTED:EMAIL]', '[REDACTED:SSN]', 'card [REDACTED:CREDIT_CARD] on file')"
    );
    assert_eq!(
        line("binary"),
        "binary ('[REDACTED:EMAIL]', 'card [REDACTED:CREDIT_CARD] on file')"
    );
    assert_eq!(
        line("refused"),
        "refused 42501 react-gateway: blocked by policy (rule no-destructive-sql)"
    );
    assert_eq!(line("count"), "count 2");
    assert_eq!(line("pipeline"), "pipeline refused 42501");
    assert_eq!(line("after"), "after 42");
    assert_eq!(
        pg.psql("SELECT body FROM notes ORDER BY body"),
        "reach [REDACTED:EMAIL]\nwrite to [REDACTED:EMAIL]\n"
    );

    // The record: two blocked sessions of protocol postgres, their statements and results
    // as the agent saw them, and no raw value anywhere in the store.
    let sessions = gateway.ended_sessions(2, std::time::Duration::from_secs(10));
    let pg_sessions: Vec<&Value> = sessions
        .iter()
        .filter(|s| s["protocol"] == "postgres")
        .collect();
    assert_eq!(pg_sessions.len(), 2, "{sessions:#?}");
    for s in &pg_sessions {
        assert_eq!(s["outcome"], "blocked", "{s:#}");
        assert_eq!(s["target"], "crm-db");
        assert!(
            s["rules"]
                .as_array()
                .is_some_and(|r| r.contains(&Value::from("no-destructive-sql"))),
            "{s:#}"
        );
        assert!(s["masked"]["email"].as_u64().unwrap_or(0) >= 2, "{s:#}");
    }
    let psql_session = pg_sessions
        .iter()
        .find(|s| {
            s["identity"]["exe"]
                .as_str()
                .is_some_and(|e| e.contains("psql"))
        })
        .expect("the psql session");
    let shown = session_show(&gateway, psql_session["id"].as_str().unwrap());
    let events = shown["events"].as_array().expect("events");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in ["pg_startup", "sql", "sql_result", "blocked", "masking"] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }
    let result = events
        .iter()
        .find(|e| e["kind"] == "sql_result" && e["command"] == "SELECT 2")
        .expect("the SELECT's result");
    assert_eq!(
        result["columns"],
        serde_json::json!(["name", "email", "ssn", "note"])
    );
    assert_eq!(
        result["data"][0],
        serde_json::json!([
            "Ada",
            "[REDACTED:EMAIL]",
            "[REDACTED:SSN]",
            "card [REDACTED:CREDIT_CARD] on file"
        ])
    );
    let blocked = events.iter().find(|e| e["kind"] == "blocked").unwrap();
    assert_eq!(blocked["sql"], "DROP TABLE customers");

    let replay = gateway
        .cli()
        .args(["sessions", "replay", psql_session["id"].as_str().unwrap()])
        .output()
        .expect("replay");
    let replay = text(&replay.stdout);
    assert!(
        replay.contains(
            "! blocked by no-destructive-sql (blocked by policy): sql DROP TABLE customers"
        ) && replay
            .contains("< Ada|[REDACTED:EMAIL]|[REDACTED:SSN]|card [REDACTED:CREDIT_CARD] on file"),
        "{replay}"
    );
    let verify = gateway
        .cli()
        .args(["sessions", "verify", "--all"])
        .output()
        .expect("verify");
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    gateway.assert_not_in_store(&[EMAIL, SSN, CARD, AGENT_EMAIL]);

    // A refusal inside a transaction fails it as a server error would: its COMMIT rolls back,
    // so the INSERT before the refused DROP is not kept.
    let out = psql(
        &gateway,
        &pg,
        &[
            "BEGIN",
            "INSERT INTO notes VALUES ('in the refused transaction')",
            "DROP TABLE customers",
            "SELECT 1",
            "COMMIT",
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(stdout, "BEGIN\nINSERT 0 1\nROLLBACK\n", "{stderr}");
    assert!(
        stderr.contains("blocked by policy (rule no-destructive-sql)")
            && stderr.contains("current transaction is aborted"),
        "{stderr}"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM notes WHERE body LIKE 'in the refused%'"),
        "0\n"
    );
}

#[test]
fn garbage_on_a_postgres_connection_ends_that_session_only() {
    if !privileged() {
        return;
    }
    let pg = Postgres::start("pgbad");
    let gateway = Gateway::start_with_policy("pgbad", &[("db.toml", &policy(pg.port))], &[]);
    // A valid startup, then a message whose length runs past any sane size, then one that
    // lies about its length: each connection gets a FATAL error and is closed.
    let out = gateway.python(
        "agent",
        r#"
import socket, struct, sys
port = int(sys.argv[1])
def startup():
    params = b"user\0gateway\0database\0audit\0\0"
    return struct.pack("!II", 8 + len(params), 196608) + params
def read_until_ready(s):
    data = b""
    while b"Z\0\0\0\x05" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
for garbage in [b"Q" + struct.pack("!I", 1 << 30), b"D\0\0\0\x02", b"Q\0\0\0\x09abcd\xff"]:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(startup())
    read_until_ready(s)
    s.sendall(garbage)
    s.settimeout(10)
    answer = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    except OSError as e:
        answer += repr(e).encode()
    print("answer", answer[:1] == b"E", b"FATAL" in answer)
    s.close()
"#,
        &[&pg.port.to_string()],
    );
    assert_eq!(
        out.lines().filter(|l| *l == "answer True True").count(),
        3,
        "{out}\n{}",
        gateway.log()
    );
    // The daemon still serves other sessions.
    let out = psql(&gateway, &pg, &["SELECT 40 + 2"]);
    assert_eq!(text(&out.stdout), "42\n", "{}", text(&out.stderr));
}

/// A CA and a leaf for 127.0.0.1 made with `openssl` in `dir`: (ca.pem, server.pem, server.key).
fn server_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            text(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=pg test CA",
            "-days",
            "2",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

fn tls_policy(port: u16, tls: &str) -> String {
    db_policy(port, tls, BLOCK_DESTRUCTIVE)
}

/// What the server says about the connection it got: `t` when it is TLS.
const SERVER_SIDE_TLS: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[test]
fn postgres_legs_are_encrypted_and_the_server_verified() {
    if !privileged() {
        return;
    }
    let pg = Postgres::start("pgtls");
    let (ca, cert, key) = server_certificate(&pg.dir);
    pg.give(&cert);
    pg.give(&key);
    for setting in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_string(),
    ] {
        pg.psql(&setting);
    }
    pg.psql("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let verified = format!("[target.tls]\nupstream_ca = \"{}\"", ca.display());
    let gateway = Gateway::start_with_policy(
        "pgtls",
        &[("db.toml", &tls_policy(pg.port, &verified))],
        &[],
    );
    let port = pg.port.to_string();
    let psql = |sslmode: &str, sql: &str| {
        let conninfo =
            format!("host=127.0.0.1 port={port} user=gateway dbname=audit sslmode={sslmode}");
        gateway.exec("agent", &["psql", &conninfo, "-At", "-c", sql])
    };

    // An agent that asks for TLS gets it (a leaf of the node CA), and so does the server's
    // leg; a clear-text agent's connection is upgraded on the way out. Both are still read:
    // the DROP is refused.
    for sslmode in ["require", "disable"] {
        let out = psql(sslmode, SERVER_SIDE_TLS);
        assert_eq!(
            text(&out.stdout),
            "t\n",
            "sslmode={sslmode}: {}\n{}",
            text(&out.stderr),
            gateway.log()
        );
        let out = psql(sslmode, "DROP TABLE IF EXISTS x");
        assert!(
            text(&out.stderr).contains("blocked by policy"),
            "{}",
            text(&out.stderr)
        );
    }
    let sessions = gateway.ended_sessions(4, std::time::Duration::from_secs(10));
    let legs: Vec<(bool, bool)> = sessions
        .iter()
        .filter(|s| s["protocol"] == "postgres")
        .map(|s| {
            (
                s["tls"]["client"]["version"].is_string(),
                s["tls"]["upstream"]["version"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("TLSv1.")),
            )
        })
        .collect();
    assert_eq!(
        legs.iter().filter(|l| **l == (true, true)).count(),
        2,
        "{sessions:#?}"
    );
    assert_eq!(
        legs.iter().filter(|l| **l == (false, true)).count(),
        2,
        "{sessions:#?}"
    );

    // A server whose certificate the target does not trust is refused, with the reason.
    gateway.set_policy_file(
        "db.toml",
        Some(&tls_policy(pg.port, "[target.tls]\nmode = \"intercept\"")),
    );
    let out = psql("disable", "SELECT 1");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("TLS with PostgreSQL server"),
        "{}",
        text(&out.stderr)
    );

    // `passthrough`: an agent's TLS goes end to end, unread (the DROP is not seen, so it is
    // not refused: the table it names does not exist and the server says so).
    gateway.set_policy_file(
        "db.toml",
        Some(&tls_policy(pg.port, "[target.tls]\nmode = \"passthrough\"")),
    );
    let out = psql("require", SERVER_SIDE_TLS);
    assert_eq!(text(&out.stdout), "t\n", "{}", text(&out.stderr));
    let out = psql("require", "DROP TABLE IF EXISTS x");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sessions = gateway.ended_sessions(7, std::time::Duration::from_secs(10));
    assert_eq!(
        sessions
            .iter()
            .filter(|s| s["protocol"] == "tls-passthrough")
            .count(),
        2,
        "{sessions:#?}"
    );

    // A target that requires TLS never falls back to clear text.
    gateway.set_policy_file("db.toml", Some(&tls_policy(pg.port, &verified)));
    pg.psql("ALTER SYSTEM SET ssl = off");
    pg.psql("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = psql("disable", "SELECT 1");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("does not offer TLS, which the target requires"),
        "{}",
        text(&out.stderr)
    );
    // Without `[target.tls]`, TLS is preferred: clear text when the server has none.
    gateway.set_policy_file("db.toml", Some(&tls_policy(pg.port, "")));
    let out = psql("prefer", SERVER_SIDE_TLS);
    assert_eq!(text(&out.stdout), "f\n", "{}", text(&out.stderr));
}

#[test]
fn tokenized_values_come_back_to_their_own_session_only() {
    if !privileged() {
        return;
    }
    let pg = Postgres::start("pgtok");
    pg.psql("CREATE TABLE notes (body text)");
    let tokenize = r#"
[[rule]]
name = "tokenize-outgoing-email"
target = "crm-db"
direction = "request"
action = "mask"
detectors = ["email"]
strategy = "tokenize"
"#;
    let policy = db_policy(pg.port, "", tokenize);
    let gateway = Gateway::start_with_policy("pgtok", &[("db.toml", &policy)], &[]);
    // The server stores a placeholder; the session that wrote it reads the original back.
    let out = psql(
        &gateway,
        &pg,
        &[
            &format!("INSERT INTO notes VALUES ('reach {AGENT_EMAIL}')"),
            "SELECT body FROM notes",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        format!("INSERT 0 1\nreach {AGENT_EMAIL}\n"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(pg.psql("SELECT body FROM notes"), "reach [TOKEN:EMAIL:1]\n");
    // Another session has no vault: it sees the placeholder.
    let out = psql(&gateway, &pg, &["SELECT body FROM notes"]);
    assert_eq!(text(&out.stdout), "reach [TOKEN:EMAIL:1]\n");
    gateway.ended_sessions(2, std::time::Duration::from_secs(10));
    gateway.assert_not_in_store(&[AGENT_EMAIL]);
}
