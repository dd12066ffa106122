//! `react-gateway`: the command-line entry point. Exit codes (DESIGN.md): 0 success, 1 a check
//! failed, 2 usage or environment error with a one-line reason.

use std::{fmt::Write as _, io::Write as _, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use gateway_user::{
    app::{self, AppError, Settings},
    cli::{
        ApprovalsCommand, AuditCommand, CaCommand, Cli, Command, ListArgs, PolicyCommand,
        SessionsCommand,
    },
    control::{self, Request},
    exec,
    policy::{self, Policy, Severity, cases, explain},
    redirect::RedirectError,
    session::{Event, Outcome, Session},
    state::StateDir,
    store::{ListFilter, Store},
};

/// mimalloc: the data path allocates small objects per request on every worker thread, where
/// glibc malloc's arena locking and consolidation cost ~15% of the daemon's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let state = StateDir::new(&cli.state_dir);
    if let Command::Exec(args) = &cli.command {
        // No runtime and no threads: move into the cgroup and exec right away.
        let error = exec::exec(&state, &args.cgroup, &args.command);
        eprintln!("react-gateway exec: {error}");
        return ExitCode::from(2);
    }
    if let Command::Ca(CaCommand::Export) = cli.command {
        return match gateway_user::tls::ca::export(state.root()) {
            Ok(pem) => {
                emit_verdict(&pem);
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!(
                    "react-gateway ca export: {error} (the daemon creates the CA at its first start)"
                );
                ExitCode::from(2)
            }
        };
    }
    if let Command::Policy(command) = cli.command {
        return ExitCode::from(policy_command(command, &state, cli.json));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("react-gateway: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli, state)) {
        Ok(code) => code,
        // The reader of our output went away (`sessions list | head`): not an error of ours;
        // end quietly, as Unix tools do.
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("react-gateway: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes a command's output (with a final newline if it lacks one) to stdout. Unlike
/// `print!`, which panics when the reader went away, this returns the error, which `main`
/// ends on quietly.
fn emit(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// [`emit`] for a report whose command's exit code says the outcome whatever becomes of the
/// output (a check's verdict, `policy explain`): a reader that went away is ignored and any
/// other write error only said.
fn emit_verdict(text: &str) {
    match emit(text) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("react-gateway: cannot write the report: {error}");
        }
        _ => {}
    }
}

/// aya warns at length that the kernel rejects the object's BTF (a known rustc/aya-log naming
/// issue, DESIGN.md "Toolchain facts"); the programs load without it, so that is not news.
const DEFAULT_LOG_FILTER: &str = "info,aya::bpf=error";

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REACT_GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let json = std::env::var("REACT_GATEWAY_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn dispatch(cli: Cli, state: StateDir) -> anyhow::Result<ExitCode> {
    let store_url = cli
        .store
        .clone()
        .unwrap_or_else(|| state.default_store_url());
    match cli.command {
        Command::Run(args) => {
            let settings = Settings::resolve(state, cli.store, args)?;
            match app::run(settings).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(
                    error @ (AppError::Host(_)
                    | AppError::Locked(_)
                    | AppError::Config(_)
                    | AppError::Policy(_)
                    | AppError::Listen(_)
                    | AppError::Redirect(RedirectError::KernelLacks { .. })),
                ) => {
                    eprintln!("react-gateway: {error}");
                    Ok(ExitCode::from(2))
                }
                Err(error) => Err(error.into()),
            }
        }
        Command::Exec(_) | Command::Policy(_) | Command::Ca(_) => {
            unreachable!("handled before the runtime starts")
        }
        Command::Attach { path } => control_call(&state, &Request::Attach { path }, cli.json).await,
        Command::Detach { path } => control_call(&state, &Request::Detach { path }, cli.json).await,
        Command::Status => {
            let data = control::call(&state.control_socket(), &Request::Status).await?;
            if cli.json {
                emit(&serde_json::to_string_pretty(&data)?)?;
            } else {
                emit(&status_text(&data))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approvals(command) => approvals(&state, command, cli.json).await,
        Command::Sessions(SessionsCommand::List(args)) => {
            let store = Store::open_existing(&store_url).await?;
            let filter = list_filter(args, cli.json)?;
            let sessions = store.list(&filter).await?;
            if filter.limit.is_some_and(|l| sessions.len() >= l as usize) {
                eprintln!(
                    "react-gateway: showing the newest {} sessions; --limit N for more (0: all)",
                    sessions.len()
                );
            }
            if cli.json {
                emit(&serde_json::to_string_pretty(&sessions)?)?;
            } else {
                emit(&sessions_table(&sessions))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions(SessionsCommand::Replay { id, raw }) => {
            let store = Store::open_existing(&store_url).await?;
            let Some((session, events)) = find_session(&store, &id).await? else {
                return Ok(ExitCode::from(1));
            };
            emit(&gateway_user::review::replay(&session, &events, raw))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions(SessionsCommand::Verify(args)) => {
            let store = Store::open_existing(&store_url).await?;
            verify_sessions(&store, &state, args, cli.json).await
        }
        Command::Audit(AuditCommand::Verify) => {
            let store = Store::open_existing(&store_url).await?;
            audit_verify(&store, &state, cli.json).await
        }
        Command::Audit(AuditCommand::Export { since, format: _ }) => {
            let store = Store::open_existing(&store_url).await?;
            let since = since.map(|s| parse_since(&s)).transpose()?;
            audit_export(&store, since.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::PublicKey) => {
            let Some(signer) = gateway_user::audit::Signer::load(state.root()) else {
                eprintln!(
                    "react-gateway: no audit key in {} (has a daemon run with this --state-dir?)",
                    state.root().display()
                );
                return Ok(ExitCode::from(2));
            };
            let (node, key) = (signer.node(), gateway_user::hex(signer.public_key()));
            emit(&if cli.json {
                serde_json::json!({"node": node, "public_key": key, "algorithm": "ed25519"})
                    .to_string()
            } else {
                format!("node        {node}\ned25519     {key}")
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions(SessionsCommand::Show { id }) => {
            let store = Store::open_existing(&store_url).await?;
            let Some((session, events)) = find_session(&store, &id).await? else {
                return Ok(ExitCode::from(1));
            };
            if cli.json {
                let mut value = serde_json::to_value(&session)?;
                value["events"] = serde_json::to_value(&events)?;
                emit(&serde_json::to_string_pretty(&value)?)?;
            } else {
                emit(&session_text(&session, &events))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `approvals list|approve|deny`: a decision that the daemon refuses (no such id, not an
/// approver) exits 1 with its reason.
async fn approvals(
    state: &StateDir,
    command: ApprovalsCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // The person behind `sudo`, whom the daemon checks against the rule's approvers.
    let sudo_uid = std::env::var("SUDO_UID").ok().and_then(|v| v.parse().ok());
    let request = match command {
        ApprovalsCommand::List => Request::Approvals,
        ApprovalsCommand::Approve { id, grant } => Request::Approve {
            id,
            grant_secs: grant.map(|d| std::time::Duration::from(d).as_secs().max(1)),
            sudo_uid,
        },
        ApprovalsCommand::Deny { id, reason } => Request::Deny {
            id,
            reason,
            sudo_uid,
        },
    };
    let data = match control::call(&state.control_socket(), &request).await {
        Ok(data) => data,
        Err(control::ControlError::Daemon(reason)) => {
            eprintln!("react-gateway: {reason}");
            return Ok(ExitCode::from(1));
        }
        Err(error) => return Err(error.into()),
    };
    if json {
        emit(&serde_json::to_string_pretty(&data)?)?;
    } else if matches!(request, Request::Approvals) {
        emit(&held_table(&data))?;
    } else if let Some(id) = data["approved"].as_str() {
        let grant = data["grant_until"]
            .as_str()
            .map(|t| {
                format!(
                    "; rule {} granted to the caller until {t}",
                    data["rule"].as_str().unwrap_or("?")
                )
            })
            .unwrap_or_default();
        emit(&format!("approved {id}{grant}"))?;
    } else {
        emit(&format!(
            "denied {} ({})",
            data["denied"].as_str().unwrap_or("?"),
            data["reason"].as_str().unwrap_or("")
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `approvals list` as a table: what waits, for whom, until when.
fn held_table(data: &serde_json::Value) -> String {
    let held = data.as_array().map(Vec::as_slice).unwrap_or_default();
    if held.is_empty() {
        return "nothing is held for approval".into();
    }
    let mut out = String::new();
    for h in held {
        let s = |key: &str| h[key].as_str().unwrap_or("-").to_owned();
        let identity = &h["identity"];
        let _ = writeln!(
            out,
            "{}  rule {}  target {}  held {}  expires {}",
            s("id"),
            s("rule"),
            s("target"),
            s("held_at"),
            s("expires_at")
        );
        let _ = writeln!(
            out,
            "    by {} (pid {}, uid {}, {})  session {}",
            identity["cgroup"].as_str().unwrap_or("-"),
            identity["pid"],
            identity["uid"],
            identity["exe"].as_str().unwrap_or("-"),
            s("session")
        );
        let _ = writeln!(out, "    {}", s("operation"));
    }
    out
}

async fn control_call(state: &StateDir, request: &Request, json: bool) -> anyhow::Result<ExitCode> {
    let data = control::call(&state.control_socket(), request).await?;
    let mut text = String::new();
    if json {
        text = data.to_string();
    } else if let Some(map) = data.as_object() {
        for (key, value) in map {
            let _ = writeln!(
                text,
                "{key}: {}",
                value.as_str().unwrap_or(&value.to_string())
            );
        }
    }
    if !text.is_empty() {
        emit(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A session by id or unique id prefix; says so on stderr when there is none.
async fn find_session(store: &Store, id: &str) -> anyhow::Result<Option<(Session, Vec<Event>)>> {
    let found = match store.resolve(id).await? {
        Some(full) => store.show(&full).await?,
        None => None,
    };
    if found.is_none() {
        eprintln!("react-gateway: no session {id}");
    }
    Ok(found)
}

/// `--since`: a date (midnight UTC), an RFC 3339 time (UTC when it has no offset), or a
/// duration back from now.
fn parse_since(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    let midnight = format!("{text}T00:00:00Z");
    for time in [text, midnight.as_str()] {
        if let Ok(at) = humantime::parse_rfc3339_weak(time) {
            return Ok(gateway_user::session::timestamp(at));
        }
    }
    let back = humantime::parse_duration(text).with_context(|| {
        format!(
            "--since {text:?}: expected a date (2026-12-01), a time (2026-12-01T09:30:00Z) \
             or a duration back from now (90m, 24h, 7d)"
        )
    })?;
    Ok(gateway_user::session::timestamp(
        std::time::SystemTime::now() - back,
    ))
}

/// `audit verify`: every chain, ledger and signature; exit 1 naming what was tampered with.
async fn audit_verify(store: &Store, state: &StateDir, json: bool) -> anyhow::Result<ExitCode> {
    use gateway_user::audit::{Signer, Verifier, anchor_path, read_anchor};
    let started = std::time::Instant::now();
    let local = Signer::load(state.root()).map(|s| {
        (
            s.node().to_string(),
            s.public_key().to_vec(),
            read_anchor(&anchor_path(state.root())),
        )
    });
    let mut verifier = Verifier::new(local);
    for (node, key) in store.nodes().await? {
        let checkpoints = store.checkpoints(&node).await?;
        verifier.begin_node(&node, &key, &checkpoints);
        store
            .each_ledger_entry(&node, |entry| verifier.ledger_entry(entry))
            .await?;
        verifier.end_node();
    }
    store
        .each_session(None, |session| {
            verifier.session(&session);
            Ok(())
        })
        .await?;
    store
        .each_event(None, |event| {
            verifier.event(&event);
            Ok(())
        })
        .await?;
    let report = verifier.finish();
    let elapsed = started.elapsed();
    let mut text = String::new();
    if json {
        text = serde_json::to_string_pretty(&report)?;
    } else {
        let _ = writeln!(
            text,
            "audit verify: {} node(s), {} ledger entries, {} sessions ({} open), {} events in {:.2}s ({:.0} events/s)",
            report.nodes,
            report.ledger_entries,
            report.sessions,
            report.open_sessions,
            report.events,
            elapsed.as_secs_f64(),
            report.events as f64 / elapsed.as_secs_f64().max(1e-9)
        );
        for f in &report.findings {
            let _ = writeln!(
                text,
                "TAMPERED  {}{}: {}",
                f.session
                    .as_deref()
                    .map_or_else(String::new, |s| format!("session {s} ")),
                f.node
                    .as_deref()
                    .map_or_else(String::new, |n| format!("(node {n})")),
                f.problem
            );
        }
        if report.findings.is_empty() {
            text.push_str("OK: every chain and signature verifies\n");
        }
    }
    emit_verdict(&text);
    Ok(if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `audit export --format jsonl`: sessions, then events, one JSON object per line.
async fn audit_export(store: &Store, since: Option<&str>) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    store
        .each_session(since, |session| {
            let mut value = serde_json::to_value(&session).unwrap_or_default();
            value["type"] = "session".into();
            if let Err(e) = writeln!(out, "{value}") {
                failed.get_or_insert(e);
            }
            Ok(())
        })
        .await?;
    store
        .each_event(since, |event| {
            let data: serde_json::Value =
                serde_json::from_str(&event.data).unwrap_or(serde_json::Value::Null);
            let mut value = serde_json::json!({
                "type": "event",
                "session": event.session,
                "seq": event.seq,
                "at": event.at,
                "kind": event.kind,
                "hash": event.hash,
            });
            if let serde_json::Value::Object(map) = data {
                for (k, v) in map {
                    value.as_object_mut().map(|o| o.entry(k).or_insert(v));
                }
            }
            if let Err(e) = writeln!(out, "{value}") {
                failed.get_or_insert(e);
            }
            Ok(())
        })
        .await?;
    out.flush()?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// `sessions verify ID|--all`: recorded payloads against the current detectors.
async fn verify_sessions(
    store: &Store,
    state: &StateDir,
    args: gateway_user::cli::VerifyArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    let policy_dir = args.policy_dir.or_else(|| {
        state
            .read_instance()
            .ok()
            .flatten()
            .and_then(|i| i.policy_dir)
    });
    let policy = match &policy_dir {
        Some(dir) => match policy::compile::load(dir) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("react-gateway: policy {}: {e}", dir.display());
                return Ok(ExitCode::from(2));
            }
        },
        None => None,
    };
    let detectors: Vec<String> = args
        .detectors
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect();
    let scanner = match gateway_user::review::LeakScanner::new(policy.as_deref(), &detectors) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("react-gateway: --detectors: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let ids: Vec<String> = if args.all {
        let mut ids = Vec::new();
        store
            .each_session(None, |s| {
                ids.push(s.id);
                Ok(())
            })
            .await?;
        ids
    } else {
        let id = args.id.unwrap_or_default();
        match store.resolve(&id).await? {
            Some(full) => vec![full],
            None => {
                eprintln!("react-gateway: no session {id}");
                return Ok(ExitCode::from(1));
            }
        }
    };
    let bar = args.all && std::io::stderr().is_terminal();
    let mut leaks = Vec::new();
    let mut last_draw = std::time::Instant::now();
    for (done, id) in ids.iter().enumerate() {
        if let Some((session, events)) = store.show(id).await? {
            leaks.extend(scanner.scan(&session, &events));
        }
        if bar && (last_draw.elapsed().as_millis() > 100 || done + 1 == ids.len()) {
            last_draw = std::time::Instant::now();
            eprint!("\r{}", progress(done + 1, ids.len(), leaks.len()));
        }
    }
    if bar {
        eprintln!();
    }
    let mut text = String::new();
    if json {
        text = serde_json::to_string_pretty(&leaks)?;
    } else {
        for l in &leaks {
            let _ = writeln!(
                text,
                "LEAK  session {} event {} ({}) {}: {} {}",
                l.session, l.event, l.kind, l.field, l.detector, l.preview
            );
        }
        let _ = writeln!(
            text,
            "sessions verify: {} session(s) scanned, {} value(s) that should have been masked{}",
            ids.len(),
            leaks.len(),
            policy_dir
                .map(|d| format!(" (policy {})", d.display()))
                .unwrap_or_default()
        );
    }
    emit_verdict(&text);
    Ok(if leaks.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `sessions verify --all`'s progress bar.
fn progress(done: usize, total: usize, leaks: usize) -> String {
    let width = 40;
    let filled = done * width / total.max(1);
    format!(
        "[{}{}] {done}/{total} sessions, {leaks} leak(s)",
        "#".repeat(filled),
        " ".repeat(width - filled),
    )
}

/// `json`: the contract's `sessions list --json` lists every match unless `--limit` says
/// otherwise; the table shows the newest 1,000 by default.
fn list_filter(args: ListArgs, json: bool) -> anyhow::Result<ListFilter> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let outcome = match args.outcome {
        Some(text) => Some(Outcome::parse(&text).with_context(|| format!("--outcome {text:?}: expected ok, blocked, denied, tls_rejected, approval_denied or error"))?),
        None => None,
    };
    Ok(ListFilter {
        identity: args.identity,
        target: args.target,
        since,
        outcome,
        limit: match args.limit {
            Some(0) => None,
            Some(n) => Some(n),
            None if json => None,
            None => Some(1000),
        },
    })
}

/// `status` as text.
fn status_text(data: &serde_json::Value) -> String {
    let mut out = String::new();
    let get = |path: &str| status_field(data, path);
    let list = |key: &str| {
        data[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "react-gateway {} (pid {}), up {}s",
        get("/version"),
        get("/pid"),
        get("/uptime_secs")
    );
    let _ = writeln!(out, "  listen      {}", list("listen"));
    let _ = writeln!(
        out,
        "  cgroup      {} (attached: {})",
        get("/cgroup"),
        list("attached")
    );
    out.push_str(&policy_status(data));
    let _ = writeln!(
        out,
        "  store       {} (backlog {}, written {}, errors {})",
        get("/store"),
        get("/recorder/backlog"),
        get("/recorder/written"),
        get("/recorder/write_errors")
    );
    let _ = writeln!(
        out,
        "  sessions    {} total, {} active, {} denied on accept, {} upstream errors, {} unattributed",
        get("/proxy/sessions"),
        get("/proxy/active"),
        get("/proxy/denied"),
        get("/proxy/upstream_errors"),
        get("/proxy/unattributed")
    );
    let _ = writeln!(
        out,
        "  approvals   {} held, {} grants",
        get("/approvals/held"),
        get("/approvals/grants")
    );
    let _ = writeln!(
        out,
        "  upstreams   {} connections reused from the pool, {} idle",
        get("/proxy/upstream_reused"),
        get("/proxy/upstream_idle")
    );
    let _ = writeln!(
        out,
        "  kernel      {} redirected, {} excluded, {} denied, {} tracked sockets",
        get("/kernel/redirected"),
        get("/kernel/excluded"),
        get("/kernel/denied"),
        get("/kernel/tracked_sockets")
    );
    out
}

/// A field of `status`'s JSON as text (`-` when absent).
fn status_field(data: &serde_json::Value, path: &str) -> String {
    data.pointer(path).map_or_else(
        || "-".to_string(),
        |v| v.as_str().map_or_else(|| v.to_string(), str::to_string),
    )
}

/// `status`'s policy lines: mode and version, warnings, a failed reload.
fn policy_status(data: &serde_json::Value) -> String {
    let mut out = String::new();
    let get = |path: &str| status_field(data, path);
    let lines = |path: &str| {
        let mut text = String::new();
        for line in data
            .pointer(path)
            .and_then(|w| w.as_array())
            .into_iter()
            .flatten()
        {
            let _ = writeln!(text, "              {}", line.as_str().unwrap_or_default());
        }
        text
    };
    // In record-only mode the version is that word too: said once.
    let (mode, version) = (get("/policy/mode"), get("/policy/version"));
    let _ = writeln!(
        out,
        "  policy      {mode}{} from {} ({} file(s), loaded {}, {} reload(s))",
        Some(format!(" {version}"))
            .filter(|_| version != mode)
            .unwrap_or_default(),
        get("/policy/dir"),
        data.pointer("/policy/files")
            .and_then(|f| f.as_array())
            .map_or(0, Vec::len),
        get("/policy/loaded_at"),
        get("/policy/reloads")
    );
    if mode == "record-only" {
        out.push_str(
            "              no policy files: every governed connection is relayed and recorded\n",
        );
    }
    out.push_str(&lines("/policy/warnings"));
    if data
        .pointer("/policy/last_error")
        .is_some_and(serde_json::Value::is_array)
    {
        let _ = writeln!(
            out,
            "  POLICY ERROR at {}: the last reload failed; the policy above stays in force",
            get("/policy/last_error_at")
        );
        out.push_str(&lines("/policy/last_error"));
    }
    out
}

/// The `sessions list` table: each column as wide as its widest cell, so long cgroup paths
/// and IPv6 destinations do not push the columns after them out of line.
fn sessions_table(sessions: &[Session]) -> String {
    const HEAD: [&str; 9] = [
        "ID",
        "STARTED",
        "IDENTITY",
        "DESTINATION",
        "TARGET",
        "PROTO",
        "OUTCOME",
        "UP",
        "DOWN",
    ];
    let rows: Vec<[String; 9]> = sessions
        .iter()
        .map(|s| {
            let who = format!(
                "{} {}",
                s.identity.cgroup.as_deref().unwrap_or("-"),
                s.identity
                    .exe
                    .as_deref()
                    .and_then(|e| e.rsplit('/').next())
                    .or(s.identity.comm.as_deref())
                    .unwrap_or("-")
            );
            let dst = match s.destination.ip {
                std::net::IpAddr::V6(ip) => format!("[{ip}]:{}", s.destination.port),
                ip @ std::net::IpAddr::V4(_) => format!("{ip}:{}", s.destination.port),
            };
            [
                s.id.clone(),
                s.started_at.get(..23).unwrap_or(&s.started_at).to_string(),
                who,
                dst,
                s.target.clone().unwrap_or_else(|| "-".into()),
                s.protocol.as_str().to_string(),
                s.outcome.map_or("open", Outcome::as_str).to_string(),
                s.bytes_up.to_string(),
                s.bytes_down.to_string(),
            ]
        })
        .collect();
    let mut width = HEAD.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 9]| {
        let start = out.len();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = w - cell.chars().count();
            // Byte counts right-aligned, the rest left-aligned.
            if i >= 7 {
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let end = out[start..].trim_end().len() + start;
        out.truncate(end);
        out.push('\n');
    };
    line(HEAD);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

/// `sessions show` as text: the session's fields, then each event as recorded.
fn session_text(s: &Session, events: &[Event]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "session   {}", s.id);
    let _ = writeln!(out, "started   {}", s.started_at);
    let _ = writeln!(
        out,
        "ended     {}",
        s.ended_at.as_deref().unwrap_or("(open)")
    );
    let _ = writeln!(
        out,
        "identity  cgroup={} pid={} uid={} gid={} exe={}{}",
        s.identity.cgroup.as_deref().unwrap_or("-"),
        s.identity.pid.map_or("-".into(), |v| v.to_string()),
        s.identity.uid.map_or("-".into(), |v| v.to_string()),
        s.identity.gid.map_or("-".into(), |v| v.to_string()),
        s.identity.exe.as_deref().unwrap_or("-"),
        s.identity
            .comm
            .as_deref()
            .map_or(String::new(), |c| format!(" comm={c}"))
    );
    let _ = writeln!(
        out,
        "dest      {} port {}{}",
        s.destination.ip,
        s.destination.port,
        s.destination
            .host
            .as_ref()
            .map(|h| format!(" ({h})"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "protocol  {}", s.protocol.as_str());
    let _ = writeln!(
        out,
        "target    {} (policy {})",
        s.target.as_deref().unwrap_or("-"),
        s.policy_version.as_deref().unwrap_or("-")
    );
    if let Some(tls) = &s.tls {
        let leg = |leg: &Option<gateway_user::session::TlsLeg>| {
            leg.as_ref().map_or_else(
                || "-".to_string(),
                |l| {
                    format!(
                        "{} {}",
                        l.version.as_deref().unwrap_or("-"),
                        l.cipher.as_deref().unwrap_or("-")
                    )
                },
            )
        };
        let _ = writeln!(
            out,
            "tls       agent leg {} | upstream leg {}",
            leg(&tls.client),
            leg(&tls.upstream)
        );
    }
    if !s.rules.is_empty() {
        let _ = writeln!(out, "rules     {}", s.rules.join(", "));
    }
    if !s.masked.is_empty() {
        let counts: Vec<String> = s.masked.iter().map(|(d, n)| format!("{d} {n}")).collect();
        let _ = writeln!(out, "masked    {}", counts.join(", "));
    }
    let _ = writeln!(out, "bytes     up {} / down {}", s.bytes_up, s.bytes_down);
    let _ = writeln!(
        out,
        "outcome   {}{}",
        s.outcome.map_or("open", Outcome::as_str),
        s.error
            .as_ref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    for event in events {
        let _ = writeln!(
            out,
            "  {} {} {}",
            event.at,
            event.kind,
            serde_json::Value::Object(event.data.clone())
        );
    }
    out
}

/// `policy check|test|explain`: exit 0 when all is well, 1 when a check failed, 2 on bad usage.
fn policy_command(command: PolicyCommand, state: &StateDir, json: bool) -> u8 {
    let path = match &command {
        PolicyCommand::Check { path }
        | PolicyCommand::Test { path, .. }
        | PolicyCommand::Explain { path, .. } => path.clone(),
    };
    let loaded = policy::load_sources(&path).and_then(|sources| {
        if sources.is_empty() {
            Err(policy::PolicyError::io(
                &path,
                "no policy files (*.toml) here",
            ))
        } else {
            policy::compile::compile(&sources)
        }
    });
    let policy = match loaded {
        Ok(policy) => policy,
        Err(policy::PolicyError(diagnostics)) => {
            if json && matches!(command, PolicyCommand::Check { .. }) {
                print_diagnostics_json(&diagnostics);
            } else {
                for diagnostic in &diagnostics {
                    eprintln!("{diagnostic}");
                }
                let errors = diagnostics
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .count();
                eprintln!("{errors} error(s): the policy does not load");
            }
            return 1;
        }
    };
    match command {
        PolicyCommand::Check { .. } => {
            if json {
                print_diagnostics_json(&policy.warnings);
            } else {
                let mut text = String::new();
                for warning in &policy.warnings {
                    let _ = writeln!(text, "{warning}");
                }
                let _ = write!(
                    text,
                    "ok: {} file(s), {} identities, {} targets, {} rules, {} warning(s); policy version {}",
                    policy.sources.len(),
                    policy.identities.len(),
                    policy.targets.len(),
                    policy.rules.len(),
                    policy.warnings.len(),
                    policy.version
                );
                emit_verdict(&text);
            }
            0
        }
        PolicyCommand::Test { cases: files, .. } => run_cases(&policy, &files, state),
        PolicyCommand::Explain { identity, dest, .. } => {
            let (who, (ip, port, host)) = match (
                explain::parse_identity(&identity),
                explain::parse_dest(&dest),
            ) {
                (Ok(who), Ok(dest)) => (who, dest),
                (Err(e), _) => {
                    eprintln!("react-gateway: --identity {e}");
                    return 2;
                }
                (_, Err(e)) => {
                    eprintln!("react-gateway: --dest {e}");
                    return 2;
                }
            };
            let who_ref = policy::Who {
                cgroup: who.0.as_deref(),
                uid: who.1,
                exe: who.2.as_deref(),
            };
            emit_verdict(&explain::explain(
                &policy,
                &who_ref,
                ip,
                port,
                host.as_deref(),
            ));
            0
        }
    }
}

fn print_diagnostics_json(diagnostics: &[policy::Diagnostic]) {
    let list: Vec<serde_json::Value> = diagnostics
        .iter()
        .map(|d| {
            serde_json::json!({
                "file": d.file.display().to_string(),
                "line": d.line,
                "col": d.col,
                "severity": match d.severity { Severity::Error => "error", Severity::Warning => "warning" },
                "message": d.message,
                "hint": d.hint,
            })
        })
        .collect();
    emit_verdict(&serde_json::Value::Array(list).to_string());
}

fn run_cases(policy: &Policy, files: &[std::path::PathBuf], state: &StateDir) -> u8 {
    let key = state.mask_key_or_ephemeral();
    let (mut passed, mut failed) = (0, 0);
    let mut out = std::io::stdout().lock();
    for file in files {
        let cases = match cases::load(file) {
            Ok(cases) => cases,
            Err(error) => {
                eprintln!("react-gateway: {error}");
                return 2;
            }
        };
        let _ = writeln!(out, "{}", file.display());
        for result in cases::run(policy, &cases, &key) {
            if result.failures.is_empty() {
                passed += 1;
                let _ = writeln!(out, "  PASS  {}", result.name);
            } else {
                failed += 1;
                let _ = writeln!(out, "  FAIL  {}", result.name);
                for failure in &result.failures {
                    for line in failure.lines() {
                        let _ = writeln!(out, "          {line}");
                    }
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "{} cases: {passed} passed, {failed} failed (policy version {})",
        passed + failed,
        policy.version
    );
    u8::from(failed > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_a_time_or_a_duration() {
        assert_eq!(
            parse_since("2026-12-01").unwrap(),
            "2026-12-01T00:00:00.000Z"
        );
        for time in ["2026-12-01T09:30:00Z", "2026-12-01 09:30:00"] {
            assert_eq!(parse_since(time).unwrap(), "2026-12-01T09:30:00.000Z");
        }
        let day_ago = parse_since("24h").unwrap();
        let now = gateway_user::session::timestamp(std::time::SystemTime::now());
        assert!(
            day_ago < now && day_ago[..10] != now[..10],
            "{day_ago} {now}"
        );
        for bad in ["yesterday", "2026-13-01", "-5d", ""] {
            let error = parse_since(bad).unwrap_err().to_string();
            assert!(error.contains("expected a date"), "{bad}: {error}");
        }
    }

    #[test]
    fn status_says_the_policy_mode_once_and_a_failed_reload() {
        let record_only = serde_json::json!({"listen": ["127.0.0.1:15001", "[::1]:15001"],
            "policy": {"mode": "record-only", "version": "record-only", "files": []}});
        let text = status_text(&record_only);
        assert!(
            text.contains("\n  listen      127.0.0.1:15001, [::1]:15001\n"),
            "{text}"
        );
        assert!(text.contains("\n  policy      record-only from "), "{text}");
        assert!(text.contains("no policy files: every governed connection"));
        let failed = serde_json::json!({"policy": {"mode": "enforcing", "version": "9d003150bb9c",
            "warnings": ["a.toml:3:1: unused identity"],
            "last_error": ["b.toml:1:1: unknown key", "b.toml:2:1: bad glob"],
            "last_error_at": "2026-12-07T13:00:00Z"}});
        let text = status_text(&failed);
        for line in [
            "  policy      enforcing 9d003150bb9c from ",
            "\n              a.toml:3:1: unused identity\n",
            "\n  POLICY ERROR at 2026-12-07T13:00:00Z: the last reload failed",
            "\n              b.toml:1:1: unknown key\n              b.toml:2:1: bad glob\n  store ",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn sessions_show_says_the_tls_legs_and_what_was_masked() {
        let mut s = session_of("/a", "127.0.0.2", Some("llm-api"), 1);
        s.tls = Some(gateway_user::session::Tls {
            client: Some(gateway_user::session::TlsLeg {
                version: Some("TLSv1.3".into()),
                cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
            }),
            upstream: None,
        });
        s.masked.insert("email".into(), 2);
        s.masked.insert("credit_card".into(), 1);
        let text = session_text(&s, &[]);
        assert!(
            text.contains(
                "\ntls       agent leg TLSv1.3 TLS13_AES_128_GCM_SHA256 | upstream leg -\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nmasked    credit_card 1, email 2\n"),
            "{text}"
        );
        // Nothing to say, no line.
        let plain = session_text(&session_of("/a", "127.0.0.2", None, 1), &[]);
        assert!(
            !plain.contains("\ntls ") && !plain.contains("\nmasked "),
            "{plain}"
        );
    }

    fn session_of(cgroup: &str, ip: &str, target: Option<&str>, up: u64) -> Session {
        Session {
            id: gateway_user::session::new_id(),
            started_at: "2026-12-07T13:44:28.569Z".into(),
            ended_at: None,
            identity: gateway_user::session::Identity {
                cgroup: Some(cgroup.into()),
                exe: Some("/usr/bin/python3.11".into()),
                ..Default::default()
            },
            destination: gateway_user::session::Destination {
                ip: ip.parse().unwrap(),
                port: 8443,
                host: None,
            },
            target: target.map(Into::into),
            protocol: gateway_user::session::Protocol::Https,
            tls: None,
            bytes_up: up,
            bytes_down: 7,
            outcome: Some(Outcome::Ok),
            rules: vec![],
            masked: std::collections::BTreeMap::new(),
            error: None,
            policy_version: None,
        }
    }

    #[test]
    fn the_sessions_table_keeps_its_columns_in_line() {
        let table = sessions_table(&[
            session_of("/a", "127.0.0.2", None, 1),
            session_of(
                "/react-gateway/team-with-a-long-name/agent-12345",
                "fd00:1234:5678:9abc::42",
                Some("llm-api"),
                1_234_567_890,
            ),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        // Each column starts where its heading does, in every row.
        for (heading, cell) in [
            (
                "DESTINATION",
                ["127.0.0.2:8443", "[fd00:1234:5678:9abc::42]:8443"],
            ),
            ("TARGET", ["-", "llm-api"]),
            ("PROTO", ["https", "https"]),
        ] {
            let at = lines[0].find(heading).unwrap();
            for (line, cell) in lines[1..].iter().zip(cell) {
                let rest = &line[at..];
                assert!(
                    rest.starts_with(cell) && rest[cell.len()..].starts_with(' '),
                    "{heading}:\n{table}"
                );
            }
        }
        // Byte counts end where their heading ends.
        let end = lines[0].find("UP").unwrap() + 2;
        assert_eq!(&lines[2][end - 10..end], "1234567890", "{table}");
        assert_eq!(&lines[1][end - 1..end], "1", "{table}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
    }
}
