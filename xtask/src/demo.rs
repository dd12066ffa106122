//! `cargo xtask demo`: the main job, end to end on this machine.
//!
//! Starts the daemon with a temporary state dir and its own governed cgroup, starts mock tool
//! servers on 127.0.0.2 and [::1], runs unmodified `curl` and a Python agent inside the
//! governed cgroup, prints what was intercepted and recorded, governs an `openai` agent's LLM
//! calls and `psql`'s SQL (a PostgreSQL server of its own), shows fail-closed behaviour with
//! the daemon killed, and stops and removes everything it started.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{Postgres, daemon_bin, free_port, mock_upstream, workspace_root};

struct Demo {
    state: PathBuf,
    cgroup: String,
    port: u16,
    daemon: Option<Child>,
}

impl Demo {
    fn cli(&self) -> Command {
        let mut cmd = Command::new(daemon_bin());
        cmd.arg("--state-dir").arg(&self.state);
        cmd
    }

    fn policy_dir(&self) -> PathBuf {
        self.state.join("policies")
    }

    fn start(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.policy_dir())?;
        let log = std::fs::File::create(self.state.with_extension("log"))?;
        let child = self
            .cli()
            .args([
                "run",
                "--cgroup",
                &self.cgroup,
                "--listen-port",
                &self.port.to_string(),
                "--policy-dir",
            ])
            .arg(self.policy_dir())
            // The real LLM API key: only the daemon holds it (policy `${env:OPENAI_API_KEY}`).
            .env("OPENAI_API_KEY", DEMO_KEY)
            .stderr(log)
            .spawn()
            .context("cannot start react-gateway")?;
        let child = self.daemon.insert(child);
        crate::util::wait_daemon(&self.state, child).with_context(|| {
            format!(
                "log: {}",
                std::fs::read_to_string(self.state.with_extension("log")).unwrap_or_default()
            )
        })
    }

    /// Waits until the daemon enforces a policy loaded from a file whose name contains `file`.
    fn wait_for_policy_with(&self, file: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.cli().args(["--json", "status"]).output()?;
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let loaded = status["policy"]["files"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|p| p.as_str().is_some_and(|p| p.contains(file)))
            });
            if status["policy"]["mode"] == "enforcing" && loaded {
                println!(
                    "  status: policy {} enforcing ({} reload)",
                    status["policy"]["version"].as_str().unwrap_or("?"),
                    status["policy"]["reloads"]
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the daemon did not load {file}: {status}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.daemon.take() {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn exec(&self, sub: &str, command: &[&str]) -> Result<std::process::Output> {
        self.cli()
            .args(["exec", "--cgroup", sub, "--"])
            .args(command)
            .output()
            .context("react-gateway exec")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop("-TERM");
        // Remove the pins (programs detach), the cgroups and the state dir we made.
        remove_instance(&self.state, &self.cgroup);
        let _ = std::fs::remove_file(self.state.with_extension("log"));
    }
}

pub fn run() -> Result<()> {
    let id = std::process::id();
    let mut demo = Demo {
        state: std::env::temp_dir().join(format!("react-gateway-demo-{id}")),
        cgroup: format!("react-gateway-demo-{id}"),
        port: free_port()?,
        daemon: None,
    };
    let tools_v4 = mock_tools("127.0.0.2:0".parse()?)?;
    let tools_v6 = mock_tools("[::1]:0".parse()?)?;

    section("1. start the daemon (record-only: its policy directory is still empty)");
    demo.start()?;
    let status = demo.cli().arg("status").output()?;
    print!("{}", String::from_utf8_lossy(&status.stdout));

    section("2. unmodified clients in the governed cgroup");
    let url = format!("http://{tools_v4}/v1/tools/weather?city=Paris");
    println!("$ react-gateway exec --cgroup agent-1 -- curl -sS {url}");
    let out = demo.exec("agent-1", &["curl", "-sS", "-w", "\\n", &url])?;
    print!("  curl: {}", String::from_utf8_lossy(&out.stdout));
    let agent = workspace_root().join("xtask/assets/agent.py");
    println!("$ react-gateway exec --cgroup agent-2 -- python3 agent.py");
    let out = demo.exec(
        "agent-2",
        &[
            "python3",
            &agent.to_string_lossy(),
            &tools_v4.to_string(),
            &tools_v6.to_string(),
        ],
    )?;
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("the demo agent failed");
    }

    section("3. what was intercepted and recorded");
    thread::sleep(Duration::from_millis(300));
    let out = demo.cli().args(["sessions", "list"]).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let json = demo
        .cli()
        .args(["--json", "sessions", "list", "--limit", "1"])
        .output()?;
    println!(
        "\nthe newest session as JSON (`sessions list --json`):\n{}",
        String::from_utf8_lossy(&json.stdout)
    );

    section("4. install a policy: the daemon reloads it, denied destinations fail at connect()");
    let policy = workspace_root().join("policies/demo/demo.toml");
    println!("$ react-gateway policy check {}", policy.display());
    let out = demo.cli().args(["policy", "check"]).arg(&policy).output()?;
    print!("  {}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "the demo policy does not check: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "$ cp {} <policy dir>/  (the daemon notices within half a second)",
        policy.display()
    );
    std::fs::copy(&policy, demo.policy_dir().join("demo.toml"))?;
    demo.wait_for_policy_with("demo.toml")?;
    let out = demo.exec(
        "agent-1",
        &["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", &url],
    )?;
    println!(
        "  curl {url} (target mock-tools): HTTP {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let outside = mock_tools("127.0.0.9:0".parse()?)?;
    let denied_url = format!("http://{outside}/v1/exfiltrate");
    let out = demo.exec("agent-1", &["curl", "-sS", "--max-time", "3", &denied_url])?;
    println!(
        "  curl {denied_url} (no target): exit {} — {}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    if out.status.success() {
        bail!("a connection the policy denies got through");
    }
    thread::sleep(Duration::from_millis(300));
    println!("$ react-gateway sessions list --outcome denied");
    let out = demo
        .cli()
        .args(["sessions", "list", "--outcome", "denied"])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    section("5. encryption in transit: an unmodified openai agent, the key held by the gateway");
    llm_demo(&demo)?;

    section("6. a database tool: unmodified psql, its SQL governed on the wire");
    db_demo(&demo)?;

    section("7. fail closed: kill -9 the daemon, then try again");
    demo.stop("-KILL");
    let out = demo.exec("agent-1", &["curl", "-sS", "--max-time", "3", &url])?;
    println!(
        "  curl with the daemon dead: exit {} — {}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    if out.status.success() {
        bail!("a governed connection got through with the daemon dead");
    }
    demo.start()?;
    let out = demo.exec(
        "agent-1",
        &["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", &url],
    )?;
    println!(
        "  curl after restart: HTTP {}",
        String::from_utf8_lossy(&out.stdout)
    );

    section("8. the audit trail: replay a session, verify the chains, re-scan for leaks");
    audit_demo(&demo)?;

    section("done: stopping the daemon and removing the demo cgroups, pins and state");
    Ok(())
}

/// Replays the openai agent's streamed call, then `audit verify` and `sessions verify --all`
/// (both must pass: the chains are intact and no recording holds a value the policy masks).
fn audit_demo(demo: &Demo) -> Result<()> {
    let out = demo
        .cli()
        .args(["--json", "sessions", "list", "--target", "llm-api"])
        .output()?;
    let sessions: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let Some(id) = sessions.last().and_then(|s| s["id"].as_str()) else {
        bail!("no recorded session of the llm-api target");
    };
    println!("$ react-gateway sessions replay {id}");
    let out = demo.cli().args(["sessions", "replay", id]).output()?;
    let replay = String::from_utf8_lossy(&out.stdout);
    print!("{replay}");
    if !out.status.success() || !replay.contains("> POST /v1/chat/completions") {
        bail!("replay failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    if replay.contains("jane.doe@example.com") {
        bail!("the recording holds a value the policy masks");
    }
    for args in [&["audit", "verify"][..], &["sessions", "verify", "--all"]] {
        println!("$ react-gateway {}", args.join(" "));
        let out = demo.cli().args(args).output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let out = demo.cli().args(["audit", "public-key"]).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

const DB_EMAIL: &str = "ada.lovelace@analytical-engines.co.uk";
const DB_CARD: &str = "4111 1111 1111 1111";

/// A PostgreSQL server of the demo's own on 127.0.0.5 with a `customers` table, a policy for
/// it (destructive SQL blocked, personal columns and values masked in results), and
/// unmodified `psql` in the governed cgroup: a masked result, a refused `DROP` on the same
/// connection, and the session's replay.
fn db_demo(demo: &Demo) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("react-gateway-demo-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shown = Postgres::start(&dir, "127.0.0.5").and_then(|pg| db_agent(demo, &pg));
    let _ = std::fs::remove_dir_all(&dir);
    shown
}

fn db_agent(demo: &Demo, pg: &Postgres) -> Result<()> {
    pg.psql(&format!(
        "CREATE TABLE customers (id int, name text, email text, ssn text, note text);
         INSERT INTO customers VALUES
           (1, 'Ada', '{DB_EMAIL}', '219-09-9999', 'card {DB_CARD} on file'),
           (2, 'Alan', 'alan@bletchley.example.org', '078-05-1121', 'prefers phone')"
    ))?;
    let policy = format!(
        r#"# Rendered by `cargo xtask demo`: the customer database, governed statement by statement.
version = 1

[[target]]
name = "crm-db"
addresses = ["127.0.0.5/32"]
ports = [{port}]
protocol = "postgres"

[[rule]]
name = "no-destructive-sql"
target = "crm-db"
action = "block"
[rule.match]
sql_statement = ["drop", "truncate", "delete_without_where", "update_without_where"]

[[rule]]
name = "updates-need-approval"
target = "crm-db"
action = "approve"
[rule.match]
sql_statement = ["update"]
[rule.approval]
timeout = "30s"

[[rule]]
name = "record-db-results"
target = "crm-db"
action = "record"

[[rule]]
name = "mask-customer-pii"
target = "crm-db"
direction = "response"
action = "mask"
columns = ["ssn"]
detectors = ["email", "credit_card"]
"#,
        port = pg.port
    );
    std::fs::write(demo.policy_dir().join("crm-db.toml"), policy)?;
    println!(
        "$ cat <policy dir>/crm-db.toml   (target crm-db: DROP/TRUNCATE blocked, UPDATE held for approval, ssn column and e-mails/cards masked)"
    );
    demo.wait_for_policy_with("crm-db")?;
    let port = pg.port;
    println!(
        "$ react-gateway exec --cgroup agent-4 -- psql -h 127.0.0.5 -p {port} -U gateway -c 'SELECT * FROM customers' -c 'DROP TABLE customers' -c 'SELECT count(*) FROM customers'"
    );
    let psql = psql_command(pg);
    let mut command: Vec<&str> = psql.iter().map(String::as_str).collect();
    command.extend([
        "-c",
        "SELECT * FROM customers ORDER BY id",
        "-c",
        "DROP TABLE customers",
        "-c",
        "SELECT count(*) FROM customers",
    ]);
    let out = demo.exec("agent-4", &command)?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    for line in stdout.lines().chain(stderr.lines()) {
        println!("  {line}");
    }
    if stdout.contains(DB_EMAIL) || stdout.contains(DB_CARD) || stdout.contains("219-09-9999") {
        bail!("the database's PII reached the agent");
    }
    if !stderr.contains("blocked by policy") || pg.psql("SELECT count(*) FROM customers")? != "2\n"
    {
        bail!("the DROP was not refused");
    }
    db_approval(demo, pg)?;
    thread::sleep(Duration::from_millis(300));
    let json = demo
        .cli()
        .args(["--json", "sessions", "list", "--target", "crm-db"])
        .output()?;
    let sessions: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout)?;
    // The session whose DROP was refused.
    let Some(id) = sessions
        .iter()
        .rev()
        .find(|s| s["outcome"] == "blocked")
        .and_then(|s| s["id"].as_str())
    else {
        bail!("no recorded session of the crm-db target");
    };
    println!("$ react-gateway sessions replay {id}");
    let out = demo.cli().args(["sessions", "replay", id]).output()?;
    let replay = String::from_utf8_lossy(&out.stdout);
    print!("{replay}");
    if !out.status.success() || !replay.contains("! blocked by no-destructive-sql") {
        bail!(
            "the database session's replay failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `psql` connecting to the demo's server on 127.0.0.5 (the agent's view of the database).
fn psql_command(pg: &Postgres) -> Vec<String> {
    let psql = pg.bin("psql").to_string_lossy().into_owned();
    let port = pg.port.to_string();
    [
        &psql,
        "-h",
        "127.0.0.5",
        "-p",
        &port,
        "-U",
        "gateway",
        "-d",
        "postgres",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// An `UPDATE` held for a person: `approvals list` shows it, `approvals approve` lets it run.
fn db_approval(demo: &Demo, pg: &Postgres) -> Result<()> {
    let port = pg.port;
    let update = "UPDATE customers SET note = 'called back' WHERE id = 2";
    println!(
        "$ react-gateway exec --cgroup agent-4 -- psql -h 127.0.0.5 -p {port} -U gateway -c \"{update}\" &"
    );
    let agent = demo
        .cli()
        .args(["exec", "--cgroup", "agent-4", "--"])
        .args(psql_command(pg))
        .args(["-c", update])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let id = loop {
        let out = demo.cli().args(["--json", "approvals", "list"]).output()?;
        let held: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(id) = held.first().and_then(|h| h["id"].as_str()) {
            break id.to_owned();
        }
        if std::time::Instant::now() > deadline {
            bail!("the UPDATE was not held for approval");
        }
        thread::sleep(Duration::from_millis(100));
    };
    println!("$ react-gateway approvals list   (the UPDATE waits, unsent)");
    let out = demo.cli().args(["approvals", "list"]).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if pg.psql("SELECT note FROM customers WHERE id = 2")? != "prefers phone\n" {
        bail!("a held UPDATE reached the server");
    }
    println!("$ react-gateway approvals approve {id}");
    let out = demo.cli().args(["approvals", "approve", &id]).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let out = agent.wait_with_output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    if pg.psql("SELECT note FROM customers WHERE id = 2")? != "called back\n" {
        bail!(
            "the approved UPDATE did not run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// An OpenAI-compatible mock API over HTTPS (its own CA) on 127.0.0.3; a policy that
/// intercepts it, verifies it against that CA and injects the real key; the `openai` agent.
fn llm_demo(demo: &Demo) -> Result<()> {
    let port = free_port()?;
    let dir = demo.state.join("llm-mock");
    let mock = mock_upstream(&dir, &[format!("https@127.0.0.3:{port}")], Some(DEMO_KEY))?;
    let policy = format!(
        r#"# Rendered by `cargo xtask demo`: the mock LLM API, intercepted and re-encrypted.
version = 1

[[target]]
name = "llm-api"
addresses = ["127.0.0.3/32"]
ports = [{port}]
protocol = "https"

[target.tls]
mode = "intercept"
min_version = "1.2"
upstream_ca = "{ca}"

[target.credentials]
header = "Authorization"
value = "Bearer ${{env:OPENAI_API_KEY}}"

[[rule]]
name = "record-llm-calls"
target = "llm-api"
action = "record"

# Prompts leave the node without e-mail addresses or card numbers.
[[rule]]
name = "mask-prompts"
target = "llm-api"
direction = "request"
action = "mask"
detectors = ["email", "credit_card"]
json_paths = ["$.messages[*].content"]
strategy = "redact"

# Answers reach the agent without PII, also when it is split over streamed events.
[[rule]]
name = "mask-answers"
target = "llm-api"
direction = "response"
action = "mask"
detectors = ["pii"]
strategy = "redact"
"#,
        ca = dir.join("ca.pem").display()
    );
    std::fs::write(demo.policy_dir().join("llm-api.toml"), policy)?;
    println!(
        "$ cat <policy dir>/llm-api.toml   (target llm-api: intercept, upstream_ca, credentials, mask rules)"
    );
    demo.wait_for_policy_with("llm-api")?;
    let base = format!("https://127.0.0.3:{port}/v1");
    let agent = workspace_root().join("xtask/assets/llm_agent.py");
    println!("$ react-gateway exec --cgroup agent-3 -- python3 llm_agent.py {base}");
    let out = demo.exec("agent-3", &["python3", &agent.to_string_lossy(), &base])?;
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("the openai agent failed");
    }
    thread::sleep(Duration::from_millis(300));
    let json = demo
        .cli()
        .args(["--json", "sessions", "list", "--target", "llm-api"])
        .output()?;
    let sessions: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap_or_default();
    for session in sessions.as_array().into_iter().flatten() {
        let leg = |name: &str| {
            format!(
                "{} {}",
                session["tls"][name]["version"].as_str().unwrap_or("-"),
                session["tls"][name]["cipher"].as_str().unwrap_or("-")
            )
        };
        println!(
            "  session {}: agent leg {} | upstream leg {} (verified against the mock's CA) | {}",
            session["id"].as_str().unwrap_or("?"),
            leg("client"),
            leg("upstream"),
            session["outcome"].as_str().unwrap_or("?")
        );
    }
    let seen = std::fs::read_to_string(dir.join("requests.jsonl")).unwrap_or_default();
    for line in seen.lines() {
        let request: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let body: serde_json::Value =
            serde_json::from_str(request["body"].as_str().unwrap_or("")).unwrap_or_default();
        if let Some(content) = body["messages"][0]["content"].as_str() {
            println!("  mock LLM receives:    {content}");
        }
    }
    let agent_out = String::from_utf8_lossy(&out.stdout);
    for session in sessions.as_array().into_iter().flatten() {
        if let Some(masked) = session["masked"].as_object().filter(|m| !m.is_empty()) {
            println!(
                "  masked in session {}: {}",
                session["id"].as_str().unwrap_or("?"),
                serde_json::Value::Object(masked.clone())
            );
        }
    }
    if seen.contains("jane.doe@example.com") || seen.contains("4111 1111 1111 1111") {
        bail!("the prompt's PII reached the mock LLM");
    }
    if agent_out.contains("carol.jones@example.org") || agent_out.contains("5555 5555 5555 4444") {
        bail!("the mock LLM's PII reached the agent");
    }
    let real = seen.matches(DEMO_KEY).count();
    let mut leaked = 0;
    for file in [
        demo.state.join("gateway.db"),
        demo.state.join("gateway.db-wal"),
        demo.state.with_extension("log"),
    ] {
        let bytes = std::fs::read(file).unwrap_or_default();
        leaked += bytes
            .windows(DEMO_KEY.len())
            .filter(|w| *w == DEMO_KEY.as_bytes())
            .count();
    }
    println!(
        "  the mock API received the real key on {real} request(s), the placeholder on {}; the key appears {leaked} time(s) in the store and the daemon log",
        seen.matches("sk-placeholder").count()
    );
    if real == 0 || leaked > 0 {
        bail!("credential injection did not behave");
    }
    drop(mock);
    Ok(())
}

/// The real key of the demo's mock LLM API: the daemon has it (environment), the agent not.
pub const DEMO_KEY: &str = "sk-demo-real-key-held-by-the-gateway";

fn section(title: &str) {
    println!("\n=== {title}");
}

/// A tiny HTTP tool server on a loopback address; answers every request with JSON that names
/// the path it was asked for. Runs until the demo process exits.
fn mock_tools(addr: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || answer(stream));
        }
    });
    Ok(local)
}

fn answer(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; content_length.min(1 << 20)];
    let _ = std::io::Read::read_exact(&mut reader, &mut body);
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let reply = format!(
        "{{\"tool\":\"{}\",\"result\":\"ok\"}}",
        path.split('?').next().unwrap_or("/")
    );
    let _ = write!(
        &stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// Removes what a daemon instance we started leaves behind: its bpffs pins (the programs
/// detach), its cgroup tree and its state dir.
pub fn remove_instance(state: &Path, cgroup: &str) {
    if let Ok(text) = std::fs::read_to_string(state.join("instance.json"))
        && let Some(pin_dir) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("\"pin_dir\": \""))
            .map(|p| p.trim_end_matches(['"', ',']))
    {
        let _ = std::fs::remove_dir_all(pin_dir);
        // `react-gateway/` itself, unless another instance still has pins in it.
        if let Some(root) = Path::new(pin_dir).parent() {
            let _ = std::fs::remove_dir(root);
        }
    }
    if let Some(mount) = cgroup2_mount() {
        remove_cgroup_tree(&mount.join(cgroup));
    }
    let _ = std::fs::remove_dir_all(state);
}

/// Removes a cgroup and its children, deepest first (cgroup dirs are removed with rmdir).
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
