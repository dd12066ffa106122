//! Policies: operators' declarative rules (DESIGN.md "Policy files", a contract), from TOML
//! files to an immutable compiled [`Policy`] and the pure functions that evaluate it.
//!
//! Three steps, each with its own errors: [`schema`] parses (serde; unknown keys rejected),
//! [`compile`] validates and compiles (regexes once, globs, CIDRs, detector sets) collecting
//! every problem as a `file:line:col` [`Diagnostic`], and [`eval`] answers questions without I/O:
//! which identities a caller has, which target a destination is, which rules act on an
//! operation. The daemon swaps whole policies atomically; the data path only reads them.
//!
//! # Layout
//! * [`schema`] — serde types of a policy file.
//! * [`compile`] — validation and compilation into [`Policy`].
//! * [`eval`] — identity and target resolution, connection verdicts, rule evaluation.
//! * [`cases`] — `policy test` case files and their runner.
//! * [`explain`] — `policy explain`.
//! * [`live`] — the daemon's policy in force and its reloads (the only part doing I/O).

pub mod cases;
pub mod compile;
pub mod eval;
pub mod explain;
pub mod live;
pub mod schema;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;

use crate::mask::Masker;

pub use compile::{load, load_sources};
pub use eval::{ConnVerdict, Decision, IdSet, KernelVerdict, Operation, Resolution, Verdict, Who};

/// Largest policy file accepted.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most policy files in a directory.
pub const MAX_FILES: usize = 256;
/// Most identities in a policy (they are a bitset on the data path).
pub const MAX_IDENTITIES: usize = 128;

/// A compiled policy: immutable, shared by every session that started under it.
#[derive(Debug)]
pub struct Policy {
    /// Hash of the files that made it, recorded with every session.
    pub version: String,
    pub sources: Vec<PathBuf>,
    pub defaults: Defaults,
    pub identities: Vec<Identity>,
    pub targets: Vec<Target>,
    pub rules: Vec<Rule>,
    /// Rule indexes per target index, in policy order.
    pub(crate) rules_by_target: Vec<Vec<usize>>,
    /// Every identity's globs in two sets, so a caller is matched in two passes.
    pub(crate) identity_index: eval::IdentityIndex,
    /// Problems that do not stop the policy from loading (e.g. unreachable rules).
    pub warnings: Vec<Diagnostic>,
}

/// The policy used when the policy directory holds no files: relay and record everything.
impl Policy {
    pub fn record_only() -> Arc<Self> {
        Arc::new(Self {
            version: "record-only".into(),
            sources: Vec::new(),
            defaults: Defaults {
                unmatched: Unmatched::Record,
                ..Defaults::default()
            },
            identities: Vec::new(),
            targets: Vec::new(),
            rules: Vec::new(),
            rules_by_target: Vec::new(),
            identity_index: eval::IdentityIndex::default(),
            warnings: Vec::new(),
        })
    }

    pub fn is_record_only(&self) -> bool {
        self.sources.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub unmatched: Unmatched,
    pub record: RecordLevel,
    pub tls_min_version: TlsVersion,
    /// What happens to new sessions while the store cannot take their records.
    pub on_record_failure: OnRecordFailure,
    /// Sessions older than this are pruned from the store (`None`: kept forever).
    pub retention: Option<std::time::Duration>,
    /// Bytes of each request/response body kept in a `full` recording; the rest is
    /// summarised by size and SHA-256.
    pub record_body_limit: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            unmatched: Unmatched::Deny,
            record: RecordLevel::Full,
            tls_min_version: TlsVersion::V1_2,
            on_record_failure: OnRecordFailure::Block,
            retention: None,
            record_body_limit: DEFAULT_RECORD_BODY_LIMIT,
        }
    }
}

pub const DEFAULT_RECORD_BODY_LIMIT: u64 = 64 * 1024;
/// Upper bound of `record_body_limit` (a recording is not a backup of the traffic).
pub const MAX_RECORD_BODY_LIMIT: u64 = 16 * 1024 * 1024;

/// `on_record_failure`: refuse new sessions (`block`, the default) or run them and record
/// them when the store is back (`allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRecordFailure {
    Block,
    Allow,
}

/// What happens to a governed connection that matches no target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Deny,
    Allow,
    Record,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordLevel {
    Off,
    Metadata,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

impl TlsVersion {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "1.2" => Some(Self::V1_2),
            "1.3" => Some(Self::V1_3),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_2 => "TLS 1.2",
            Self::V1_3 => "TLS 1.3",
        }
    }
}

/// Who a caller is, by policy: all given conditions must hold.
#[derive(Debug)]
pub struct Identity {
    pub name: String,
    pub cgroup: Option<(String, globset::GlobMatcher)>,
    pub uids: Vec<u32>,
    pub exe: Vec<(String, globset::GlobMatcher)>,
}

/// A host pattern: `api.openai.com`, `*.example.test` (any subdomain) or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.test`, stored as `.example.test`.
    Subdomains(String),
    Any,
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        match self {
            Self::Exact(name) => host.eq_ignore_ascii_case(name),
            Self::Subdomains(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
            Self::Any => true,
        }
    }

    /// Whether every host this pattern matches is matched by `self` too.
    pub fn covers(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Any, _) => true,
            (_, Self::Any) | (Self::Exact(_), Self::Subdomains(_)) => false,
            (Self::Exact(a), Self::Exact(b)) => a.eq_ignore_ascii_case(b),
            (Self::Subdomains(_), Self::Exact(b)) => self.matches(b),
            (Self::Subdomains(a), Self::Subdomains(b)) => {
                b.len() >= a.len() && b[b.len() - a.len()..].eq_ignore_ascii_case(a)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Subdomains(suffix) => write!(f, "*{suffix}"),
            Self::Any => f.write_str("*"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetProtocol {
    Https,
    Http,
    Postgres,
    Tcp,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Intercept,
    Passthrough,
    Originate,
    None,
}

#[derive(Debug, Clone)]
pub struct TargetTls {
    pub mode: TlsMode,
    pub min_version: TlsVersion,
    pub cipher_suites: Vec<String>,
    pub upstream_ca: Option<PathBuf>,
    pub upstream_port: Option<u16>,
}

/// `[target.credentials]`: the header the gateway sets; `value` is a template with
/// `${env:NAME}` / `${file:/path}` resolved only when used, never logged.
#[derive(Clone)]
pub struct Credentials {
    pub header: String,
    pub value: String,
}

/// One piece of a credentials template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart<'a> {
    Literal(&'a str),
    Env(&'a str),
    File(&'a str),
}

/// Splits `Bearer ${env:KEY}` into its pieces; the error says what is wrong with a reference
/// (never a value). Used to validate policies and to resolve credentials on the data path.
pub fn template_parts(value: &str) -> Result<Vec<TemplatePart<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(TemplatePart::Literal(&rest[..start]));
        }
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| "unterminated `${` in credentials value".to_string())?;
        let reference = &rest[start + 2..start + end];
        parts.push(match reference.split_once(':') {
            Some(("env", name))
                if !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                TemplatePart::Env(name)
            }
            Some(("file", path)) if Path::new(path).is_absolute() => TemplatePart::File(path),
            _ => {
                return Err(format!(
                    "invalid reference `${{{reference}}}` in credentials value"
                ));
            }
        });
        rest = &rest[start + end + 1..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest));
    }
    Ok(parts)
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// A destination by policy: all given conditions must hold (hosts against SNI or HTTP Host).
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub addresses: Vec<IpNet>,
    pub ports: Vec<u16>,
    pub protocol: TargetProtocol,
    pub tls: Option<TargetTls>,
    pub credentials: Option<Credentials>,
}

impl Target {
    pub fn matches_address(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical(ip);
        (self.addresses.is_empty() || self.addresses.iter().any(|net| net.contains(&ip)))
            && (self.ports.is_empty() || self.ports.contains(&port))
    }
}

/// IPv4-mapped IPv6 addresses are their IPv4 address for matching.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
    Both,
}

/// Rule actions, in increasing precedence order of DESIGN.md (`record` only forces recording).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Record,
    Allow,
    Mask,
    Approve,
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Record => "record",
            Self::Allow => "allow",
            Self::Mask => "mask",
            Self::Approve => "approve",
            Self::Block => "block",
        }
    }
}

/// `[rule.match]`: all given conditions must hold.
#[derive(Debug, Default)]
pub struct Conditions {
    pub sql_statement: Vec<&'static str>,
    pub sql: Vec<regex::Regex>,
    pub http_method: Vec<String>,
    pub http_path: Vec<(String, globset::GlobMatcher)>,
    pub body: Vec<regex::bytes::Regex>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self.sql_statement.is_empty()
            && self.sql.is_empty()
            && self.http_method.is_empty()
            && self.http_path.is_empty()
            && self.body.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Approval {
    pub timeout: Duration,
    pub grant: Option<Duration>,
    pub approvers: Vec<String>,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub targets: Vec<usize>,
    /// `None`: every governed identity.
    pub identities: Option<IdSet>,
    pub direction: Direction,
    pub action: Action,
    pub masker: Option<std::sync::Arc<Masker>>,
    pub columns: Vec<String>,
    pub conditions: Conditions,
    pub approval: Option<Approval>,
    /// Where the rule is defined, for `explain` and messages.
    pub origin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// A problem found in a policy, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// A policy that did not load: every error found, plus warnings.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", summary(.0))]
pub struct PolicyError(pub Vec<Diagnostic>);

fn summary(diagnostics: &[Diagnostic]) -> String {
    let errors: Vec<String> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    errors.join("\n")
}

impl PolicyError {
    pub fn io(path: &Path, message: impl Into<String>) -> Self {
        Self(vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            severity: Severity::Error,
            message: message.into(),
            hint: None,
        }])
    }
}
