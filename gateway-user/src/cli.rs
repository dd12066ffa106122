//! The command line (DESIGN.md "Command line", a contract): flags, environment variables and
//! subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::state::{DEFAULT_EXEC_CGROUP, DEFAULT_STATE_DIR};

#[derive(Debug, Parser)]
#[command(
    name = "react-gateway",
    version,
    about = "Govern the network traffic of AI agents on a Linux host"
)]
pub struct Cli {
    /// CA, keys, `SQLite` store, control socket (DIR/control.sock).
    #[arg(long, global = true, env = "REACT_GATEWAY_STATE_DIR", default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Session store: <sqlite://PATH> (default <sqlite://STATE_DIR/gateway.db>) or postgres://…
    #[arg(long, global = true, env = "REACT_GATEWAY_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Machine-readable output for listing commands.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    Run(RunArgs),
    /// Run CMD inside the governed cgroup.
    Exec(ExecArgs),
    /// Govern an existing cgroup (e.g. a systemd slice).
    Attach {
        /// cgroup path, absolute under the cgroup2 mount or relative to it.
        path: String,
    },
    /// Stop governing a cgroup.
    Detach { path: String },
    /// Daemon health, attached cgroups, policy, counters.
    Status,
    /// Browse recorded sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Decide on operations that `approve` rules hold for a person.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Check, test and explain policies before they go live.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The node CA that intercepted TLS is terminated with.
    #[command(subcommand)]
    Ca(CaCommand),
    /// The tamper-evident audit trail: verify it, export it.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every event chain, ledger and signature; names each session that was altered,
    /// reordered, truncated or deleted (exit 1).
    Verify,
    /// One JSON object per session, then per event (for a SIEM).
    Export {
        /// A date (2026-12-01, midnight UTC), an RFC 3339 time or a duration back from now
        /// (24h).
        #[arg(long)]
        since: Option<String>,
        /// Output format.
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
    },
    /// Print this node's id and Ed25519 public key (hex), to verify its ledger elsewhere.
    PublicKey,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// The held operations you may decide on (oldest first).
    List,
    /// Let a held operation go on; its caller may then do the same without asking for the
    /// rule's `grant` (or `--for`).
    Approve {
        /// The held operation's id (a unique prefix is enough).
        id: String,
        /// How long the caller passes this rule without asking again (e.g. 30m).
        #[arg(long = "for", value_name = "DURATION")]
        grant: Option<humantime::Duration>,
    },
    /// Refuse a held operation; the agent gets the reason.
    Deny {
        /// The held operation's id (a unique prefix is enough).
        id: String,
        #[arg(long, value_name = "R")]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the node CA certificate (PEM), e.g. to add it to a trust store.
    Export,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files: every error as <file:line:col>; exit 1 on any error.
    Check {
        /// A policy file or directory.
        path: PathBuf,
    },
    /// Run test cases against a policy: a pass/fail table; exit 1 on any failure.
    Test {
        /// A policy file or directory.
        path: PathBuf,
        /// Case file (TOML), repeatable.
        #[arg(long, required = true, value_name = "FILE")]
        cases: Vec<PathBuf>,
    },
    /// Which identity and target a caller and destination resolve to, and which rules apply.
    Explain {
        /// A policy file or directory.
        path: PathBuf,
        /// cgroup=PATH,uid=N,exe=PATH (each optional).
        #[arg(long, default_value = "")]
        identity: String,
        /// ADDRESS:PORT, optionally HOST@ADDRESS:PORT (e.g. api.example.test@127.0.0.2:443).
        #[arg(long)]
        dest: String,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Daemon configuration file (TOML); command-line flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Policy directory.
    #[arg(long, value_name = "DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Proxy listen port on 127.0.0.1 and `::1` [default: 15001].
    #[arg(long, value_name = "N")]
    pub listen_port: Option<u16>,
    /// Governed parent cgroup, relative to the cgroup2 mount [default: react-gateway].
    #[arg(long, value_name = "NAME")]
    pub cgroup: Option<String>,
    /// Destinations never redirected: CIDR[:PORT], repeatable (e.g. 127.0.0.53/32:53).
    #[arg(long, value_name = "CIDR[:PORT]")]
    pub exclude: Vec<String>,
    /// Remove the programs on exit (default: keep them pinned so governed connects fail closed).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// How long in-flight sessions may run on after SIGTERM [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub shutdown_grace: Option<humantime::Duration>,
    /// How often the policy directory is checked for changes [default: 500ms]; 0s = only on
    /// SIGHUP.
    #[arg(long, value_name = "DURATION")]
    pub policy_poll: Option<humantime::Duration>,
    /// Also relay connections sent here by an iptables REDIRECT (benchmarks; no identity).
    #[arg(long, hide = true)]
    pub accept_iptables_redirect: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Child cgroup of the governed parent to run in (created if missing).
    #[arg(long, default_value = DEFAULT_EXEC_CGROUP, value_name = "SUB")]
    pub cgroup: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions (oldest first).
    List(ListArgs),
    /// One session with its events.
    Show { id: String },
    /// The session's transcript in order, with relative timing and bodies pretty-printed (an
    /// LLM's event stream as the text it streamed).
    Replay {
        id: String,
        /// Show every body as recorded (an event stream event by event, JSON as sent).
        #[arg(long)]
        raw: bool,
    },
    /// Re-scan recorded payloads with the current detectors; exit 1 if any value that should
    /// have been masked is in a recording.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Session id (or a unique prefix).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Every session in the store.
    #[arg(long)]
    pub all: bool,
    /// Policy whose mask rules say what should have been masked [default: the running
    /// daemon's policy dir].
    #[arg(long, value_name = "DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Detectors for sessions whose target has no mask rules (comma-separated names or
    /// groups) [default: none — the policy asks nothing of them; `pii,secrets` when no
    /// policy is found].
    #[arg(long, value_delimiter = ',')]
    pub detectors: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// uid:N, pid:N, a cgroup path (matches its subtree) or an executable path.
    #[arg(long)]
    pub identity: Option<String>,
    /// Policy target name.
    #[arg(long)]
    pub target: Option<String>,
    /// A date (2026-11-21, midnight UTC), an RFC 3339 time (2026-11-21T17:00:00Z) or a
    /// duration back from now (1h, 30m).
    #[arg(long)]
    pub since: Option<String>,
    /// ok | blocked | denied | `tls_rejected` | `approval_denied` | error
    #[arg(long)]
    pub outcome: Option<String>,
    /// Show at most the newest N sessions (0: all) [default: 1000 in the table, all with
    /// --json].
    #[arg(long)]
    pub limit: Option<u32>,
}
