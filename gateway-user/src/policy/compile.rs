//! Validation and compilation: policy files → [`Policy`]. Every problem is collected (not
//! just the first) with its `file:line:col`, so `policy check` shows them all at once; a
//! policy with any error is never returned, so nothing is ever half-applied.

use std::{
    collections::HashMap,
    fmt::Write as _,
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
};

use globset::GlobBuilder;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::{
    Action, Approval, Conditions, Credentials, Defaults, Diagnostic, Direction, HostPattern, IdSet,
    Identity, MAX_FILE_BYTES, MAX_FILES, MAX_IDENTITIES, MAX_RECORD_BODY_LIMIT, OnRecordFailure,
    Policy, PolicyError, RecordLevel, Rule, Severity, Target, TargetProtocol, TargetTls, TlsMode,
    TlsVersion, Unmatched,
    schema::{self, PolicyFile, S},
};
use crate::{
    mask::{Detector, JsonPath, Masker, Strategy, Validator, detectors},
    sql,
};

/// One policy file's text.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// TLS cipher suites a policy may name (rustls' names).
pub const CIPHER_SUITES: &[&str] = &[
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Reads a policy: a single `.toml` file, or every `*.toml` file of a directory in file-name
/// order. A directory without policy files gives no sources (record-only mode).
pub fn load_sources(path: &Path) -> Result<Vec<Source>, PolicyError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| PolicyError::io(path, format!("cannot read policy path: {e}")))?;
    let mut paths = Vec::new();
    if meta.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| PolicyError::io(path, format!("cannot list policy directory: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| PolicyError::io(path, e.to_string()))?;
            let file = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Editors' temporary files (`.foo.toml.swp`, `#foo.toml#`) are not policy.
            if file.extension().is_some_and(|e| e == "toml") && !name.starts_with('.') {
                paths.push(file);
            }
        }
        paths.sort();
        if paths.len() > MAX_FILES {
            return Err(PolicyError::io(
                path,
                format!("{} policy files; at most {MAX_FILES} are read", paths.len()),
            ));
        }
    } else {
        paths.push(path.to_path_buf());
    }
    let mut sources = Vec::new();
    for file in paths {
        let size = std::fs::metadata(&file).map_or(0, |m| m.len());
        if size > MAX_FILE_BYTES {
            return Err(PolicyError::io(
                &file,
                format!("file is {size} bytes; policy files are limited to {MAX_FILE_BYTES} bytes"),
            ));
        }
        let bytes = std::fs::read(&file)
            .map_err(|e| PolicyError::io(&file, format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| PolicyError::io(&file, format!("not UTF-8: {e}")))?;
        sources.push(Source { path: file, text });
    }
    Ok(sources)
}

/// Reads and compiles the policy at `path`; no files gives the record-only policy.
pub fn load(path: &Path) -> Result<Arc<Policy>, PolicyError> {
    let sources = load_sources(path)?;
    if sources.is_empty() {
        return Ok(Policy::record_only());
    }
    compile(&sources).map(Arc::new)
}

/// Compiles parsed sources; `Err` holds every error (and the warnings).
pub fn compile(sources: &[Source]) -> Result<Policy, PolicyError> {
    let mut compiler = Compiler {
        sources,
        diagnostics: Vec::new(),
        file: 0,
    };
    let mut files = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        compiler.file = index;
        match toml::from_str::<PolicyFile>(&source.text) {
            Ok(file) => files.push((index, file)),
            Err(error) => {
                let (message, hint) = parse_message(error.message());
                compiler.push(Severity::Error, error.span().unwrap_or(0..0), message, hint);
            }
        }
    }
    let policy = compiler.compile(&files);
    let (errors, warnings): (Vec<_>, Vec<_>) = compiler
        .diagnostics
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    if !errors.is_empty() {
        let mut all = errors;
        all.extend(warnings);
        return Err(PolicyError(all));
    }
    let mut policy = policy;
    policy.warnings = warnings;
    Ok(policy)
}

fn parse_message(message: &str) -> (String, Option<String>) {
    let message = message.trim().to_string();
    let hint = if message.starts_with("unknown field") {
        Some("check the spelling against policies/README.md; unknown keys are errors".into())
    } else if message.contains("invalid type") {
        Some("check the value's type (string, integer, list) against policies/README.md".into())
    } else if message.starts_with("missing field") {
        Some("this key is required".into())
    } else {
        None
    };
    (message, hint)
}

struct Compiler<'a> {
    sources: &'a [Source],
    diagnostics: Vec<Diagnostic>,
    file: usize,
}

/// Where a named item is defined: file index and span.
type Origin = (usize, Range<usize>);

impl Compiler<'_> {
    fn push(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        message: String,
        hint: Option<String>,
    ) {
        let (line, col) = self.line_col(self.file, span.start);
        self.diagnostics.push(Diagnostic {
            file: self.sources[self.file].path.clone(),
            line,
            col,
            severity,
            message,
            hint,
        });
    }

    fn error<T>(&mut self, at: &S<T>, message: impl Into<String>, hint: Option<&str>) {
        self.push(
            Severity::Error,
            at.span(),
            message.into(),
            hint.map(str::to_string),
        );
    }

    fn line_col(&self, file: usize, offset: usize) -> (usize, usize) {
        let text = &self.sources[file].text;
        let offset = offset.min(text.len());
        let before = &text[..text.floor_char_boundary(offset)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn origin_text(&self, origin: &Origin) -> String {
        let (line, col) = self.line_col(origin.0, origin.1.start);
        format!("{}:{line}:{col}", self.sources[origin.0].path.display())
    }

    #[expect(
        clippy::too_many_lines,
        reason = "two passes over all items, in schema order"
    )]
    fn compile(&mut self, files: &[(usize, PolicyFile)]) -> Policy {
        let mut defaults = Defaults::default();
        // Pass 1: names, so that references may point forwards and across files.
        let mut identity_names: HashMap<String, (usize, Origin)> = HashMap::new();
        let mut target_names: HashMap<String, (usize, Origin)> = HashMap::new();
        let mut detector_names: HashMap<String, (usize, Origin)> = HashMap::new();
        let mut rule_names: HashMap<String, Origin> = HashMap::new();
        let mut custom: Vec<Arc<Detector>> = Vec::new();
        for (file, policy) in files {
            self.file = *file;
            if let Some(version) = &policy.version
                && *version.get_ref() != 1
            {
                self.error(
                    version,
                    format!("unsupported policy version {}", version.get_ref()),
                    Some("this react-gateway reads `version = 1`"),
                );
            }
            if let Some(d) = &policy.defaults {
                self.defaults(d, &mut defaults);
            }
            for identity in &policy.identity {
                let index = identity_names.len();
                self.define(&mut identity_names, &identity.name, index, "identity");
            }
            for target in &policy.target {
                let index = target_names.len();
                self.define(&mut target_names, &target.name, index, "target");
            }
            for rule in &policy.rule {
                let name = rule.name.get_ref();
                if let Some(first) = rule_names.get(name).cloned() {
                    let first = self.origin_text(&first);
                    self.error(
                        &rule.name,
                        format!("duplicate rule `{name}`, first defined at {first}"),
                        Some("rule names must be unique across all policy files"),
                    );
                } else {
                    rule_names.insert(name.clone(), (*file, rule.name.span()));
                }
            }
            for detector in &policy.detector {
                if let Some(d) = self.custom_detector(detector, &detector_names) {
                    detector_names.insert(
                        detector.name.get_ref().clone(),
                        (custom.len(), (*file, detector.name.span())),
                    );
                    custom.push(Arc::new(d));
                }
            }
        }
        if identity_names.len() > MAX_IDENTITIES {
            self.file = files.first().map_or(0, |f| f.0);
            self.push(
                Severity::Error,
                0..0,
                format!(
                    "{} identities; at most {MAX_IDENTITIES} are supported",
                    identity_names.len()
                ),
                None,
            );
        }

        // Pass 2: the items themselves.
        let mut identities = Vec::new();
        let mut targets = Vec::new();
        let mut target_origins = Vec::new();
        let mut rules = Vec::new();
        for (file, policy) in files {
            self.file = *file;
            for identity in &policy.identity {
                identities.push(self.identity(identity));
            }
            for target in &policy.target {
                targets.push(self.target(target, defaults.tls_min_version));
                target_origins.push((*file, target.name.span()));
            }
            for rule in &policy.rule {
                if let Some(rule) = self.rule(
                    rule,
                    &identity_names,
                    &target_names,
                    &detector_names,
                    &custom,
                ) {
                    rules.push(rule);
                }
            }
        }
        // Keep indexes consistent even when some items failed (the policy is discarded then).
        identities.truncate(identity_names.len());
        targets.truncate(target_names.len());

        let mut rules_by_target = vec![Vec::new(); targets.len()];
        for (index, rule) in rules.iter().enumerate() {
            for &target in &rule.targets {
                if let Some(list) = rules_by_target.get_mut(target) {
                    list.push(index);
                }
            }
        }
        // Shadowing is only meaningful for a policy whose targets all compiled.
        if !self
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
        {
            self.unreachable(&targets, &target_origins, &rules);
        }

        let version = version_of(self.sources);
        let identity_index = super::eval::IdentityIndex::build(&identities);
        Policy {
            version,
            sources: self.sources.iter().map(|s| s.path.clone()).collect(),
            defaults,
            identities,
            targets,
            rules,
            rules_by_target,
            identity_index,
            warnings: Vec::new(),
        }
    }

    fn define(
        &mut self,
        names: &mut HashMap<String, (usize, Origin)>,
        name: &S<String>,
        index: usize,
        what: &str,
    ) {
        let text = name.get_ref();
        if text.trim().is_empty() {
            self.error(name, format!("{what} name is empty"), None);
            return;
        }
        if let Some((_, first)) = names.get(text).cloned() {
            let first = self.origin_text(&first);
            self.error(
                name,
                format!("duplicate {what} `{text}`, first defined at {first}"),
                Some("names must be unique across all policy files"),
            );
            return;
        }
        names.insert(text.clone(), (index, (self.file, name.span())));
    }

    fn defaults(&mut self, d: &schema::Defaults, into: &mut Defaults) {
        if let Some(v) = &d.unmatched {
            match v.get_ref().as_str() {
                "deny" => into.unmatched = Unmatched::Deny,
                "allow" => into.unmatched = Unmatched::Allow,
                "record" => into.unmatched = Unmatched::Record,
                other => self.error(
                    v,
                    format!("unknown unmatched `{other}`"),
                    Some("one of deny, allow, record"),
                ),
            }
        }
        if let Some(v) = &d.record {
            match parse_record(v.get_ref()) {
                Some(level) => into.record = level,
                None => self.error(
                    v,
                    format!("unknown record level `{}`", v.get_ref()),
                    Some("one of full, metadata, off"),
                ),
            }
        }
        if let Some(v) = &d.tls_min_version
            && let Some(version) = self.tls_version(v)
        {
            into.tls_min_version = version;
        }
        if let Some(v) = &d.on_record_failure {
            match v.get_ref().as_str() {
                "block" => into.on_record_failure = OnRecordFailure::Block,
                "allow" => into.on_record_failure = OnRecordFailure::Allow,
                other => self.error(
                    v,
                    format!("unknown on_record_failure `{other}`"),
                    Some("block (refuse new sessions while they cannot be recorded) or allow"),
                ),
            }
        }
        if let Some(v) = &d.retention {
            match humantime::parse_duration(v.get_ref()) {
                Ok(d) if d >= std::time::Duration::from_secs(60) => into.retention = Some(d),
                Ok(_) => self.error(
                    v,
                    String::from("retention must be at least 1m"),
                    Some("e.g. \"30d\""),
                ),
                Err(e) => self.error(
                    v,
                    format!("bad retention `{}`: {e}", v.get_ref()),
                    Some("a duration such as \"30d\" or \"12h\""),
                ),
            }
        }
        if let Some(v) = &d.record_body_limit {
            if *v.get_ref() > MAX_RECORD_BODY_LIMIT {
                self.error(
                    v,
                    format!(
                        "record_body_limit {} is above the maximum {MAX_RECORD_BODY_LIMIT}",
                        v.get_ref()
                    ),
                    None,
                );
            } else {
                into.record_body_limit = *v.get_ref();
            }
        }
    }

    fn tls_version(&mut self, v: &S<String>) -> Option<TlsVersion> {
        let parsed = TlsVersion::parse(v.get_ref());
        if parsed.is_none() {
            let hint = if matches!(v.get_ref().as_str(), "1.0" | "1.1") {
                "TLS 1.0 and 1.1 are broken and not offered; use \"1.2\" or \"1.3\""
            } else {
                "\"1.2\" or \"1.3\""
            };
            self.error(
                v,
                format!("unsupported TLS version `{}`", v.get_ref()),
                Some(hint),
            );
        }
        parsed
    }

    fn glob(
        &mut self,
        pattern: &S<String>,
        literal_separator: bool,
        what: &str,
    ) -> Option<globset::GlobMatcher> {
        match GlobBuilder::new(pattern.get_ref())
            .literal_separator(literal_separator)
            .backslash_escape(true)
            .build()
        {
            Ok(glob) => Some(glob.compile_matcher()),
            Err(e) => {
                self.error(
                    pattern,
                    format!("invalid {what} glob `{}`: {}", pattern.get_ref(), e.kind()),
                    Some(
                        "globs use `*` (within a path segment), `**` (any depth), `?` and `[a-z]`",
                    ),
                );
                None
            }
        }
    }

    fn identity(&mut self, def: &schema::IdentityDef) -> Identity {
        let cgroup = def.cgroup.as_ref().and_then(|pattern| {
            let text = pattern.get_ref();
            if !text.starts_with('/') {
                self.error(pattern, format!("cgroup pattern `{text}` is not absolute"), Some("cgroup paths are relative to the cgroup2 mount and start with `/`, e.g. \"/react-gateway/*\""));
                return None;
            }
            self.glob(pattern, true, "cgroup").map(|g| (text.clone(), g))
        });
        let exe = def
            .exe
            .iter()
            .flatten()
            .filter_map(|pattern| {
                self.glob(pattern, true, "exe")
                    .map(|g| (pattern.get_ref().clone(), g))
            })
            .collect();
        if def.cgroup.is_none() && def.uid.is_none() && def.exe.is_none() {
            self.push(
                Severity::Warning,
                def.name.span(),
                format!(
                    "identity `{}` has no condition and matches every governed process",
                    def.name.get_ref()
                ),
                Some("add cgroup, uid or exe".into()),
            );
        }
        Identity {
            name: def.name.get_ref().clone(),
            cgroup,
            uids: def.uid.iter().flatten().map(|u| *u.get_ref()).collect(),
            exe,
        }
    }

    fn target(&mut self, def: &schema::TargetDef, floor: TlsVersion) -> Target {
        let mut hosts = Vec::new();
        for host in def.hosts.iter().flatten() {
            let text = host.get_ref().trim().to_ascii_lowercase();
            let pattern = if text == "*" {
                HostPattern::Any
            } else if let Some(suffix) = text.strip_prefix("*.") {
                HostPattern::Subdomains(format!(".{suffix}"))
            } else {
                HostPattern::Exact(text.clone())
            };
            let body = match &pattern {
                HostPattern::Exact(name) => name.as_str(),
                HostPattern::Subdomains(suffix) => &suffix[1..],
                HostPattern::Any => "x",
            };
            let valid = !body.is_empty()
                && body.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if valid {
                hosts.push(pattern);
            } else {
                self.error(host, format!("invalid host pattern `{}`", host.get_ref()), Some("a DNS name, `*.domain` for its subdomains, or `*`; IP addresses go in `addresses`"));
            }
        }
        let mut addresses = Vec::new();
        for address in def.addresses.iter().flatten() {
            let text = address.get_ref();
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => addresses.push(net.trunc()),
                Err(_) => self.error(
                    address,
                    format!("invalid address `{text}`"),
                    Some("an IP address or CIDR, e.g. \"127.0.0.2/32\" or \"fd00::/8\""),
                ),
            }
        }
        let mut ports = Vec::new();
        for port in def.ports.iter().flatten() {
            if *port.get_ref() == 0 {
                self.error(port, "port 0 is not a destination port", None);
            } else {
                ports.push(*port.get_ref());
            }
        }
        let protocol = match def.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "auto")) => TargetProtocol::Auto,
            Some((_, "https")) => TargetProtocol::Https,
            Some((_, "http")) => TargetProtocol::Http,
            Some((_, "postgres")) => TargetProtocol::Postgres,
            Some((_, "tcp")) => TargetProtocol::Tcp,
            Some((p, other)) => {
                self.error(
                    p,
                    format!("unknown protocol `{other}`"),
                    Some("one of https, http, postgres, tcp, auto"),
                );
                TargetProtocol::Auto
            }
        };
        if hosts.is_empty() && addresses.is_empty() && ports.is_empty() {
            self.push(
                Severity::Warning,
                def.name.span(),
                format!(
                    "target `{}` has no hosts, addresses or ports and matches every destination",
                    def.name.get_ref()
                ),
                None,
            );
        }
        let tls = def.tls.as_ref().map(|tls| self.target_tls(tls, floor));
        let credentials = def.credentials.as_ref().and_then(|c| self.credentials(c));
        Target {
            name: def.name.get_ref().clone(),
            hosts,
            addresses,
            ports,
            protocol,
            tls,
            credentials,
        }
    }

    fn target_tls(&mut self, def: &schema::TlsDef, floor: TlsVersion) -> TargetTls {
        let mode = match def.mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
            None | Some((_, "intercept")) => TlsMode::Intercept,
            Some((_, "passthrough")) => TlsMode::Passthrough,
            Some((_, "originate")) => TlsMode::Originate,
            Some((_, "none")) => TlsMode::None,
            Some((m, other)) => {
                self.error(
                    m,
                    format!("unknown tls mode `{other}`"),
                    Some("one of intercept, passthrough, originate, none"),
                );
                TlsMode::Intercept
            }
        };
        let min_version = match &def.min_version {
            Some(v) => {
                let version = self.tls_version(v).unwrap_or(floor);
                if version < floor {
                    self.error(
                        v,
                        format!(
                            "min_version {} is below the policy floor defaults.tls_min_version",
                            v.get_ref()
                        ),
                        Some("a target may raise the floor, never lower it"),
                    );
                }
                version.max(floor)
            }
            None => floor,
        };
        let mut cipher_suites = Vec::new();
        for suite in def.cipher_suites.iter().flatten() {
            let name = suite.get_ref().to_ascii_uppercase();
            if CIPHER_SUITES.contains(&name.as_str()) {
                cipher_suites.push(name);
            } else {
                self.error(
                    suite,
                    format!("unknown cipher suite `{}`", suite.get_ref()),
                    Some(&format!("one of {}", CIPHER_SUITES.join(", "))),
                );
            }
        }
        if let Some(first) = def.cipher_suites.as_ref().and_then(|s| s.first())
            && !cipher_suites.is_empty()
            && min_version == TlsVersion::V1_3
            && !cipher_suites.iter().any(|s| s.starts_with("TLS13_"))
        {
            self.error(
                first,
                "no TLS 1.3 cipher suite is allowed but min_version is 1.3",
                Some("add a TLS13_* suite or lower min_version"),
            );
        }
        if let Some(ca) = &def.upstream_ca
            && !Path::new(ca.get_ref()).is_absolute()
        {
            self.error(
                ca,
                format!("upstream_ca `{}` is not an absolute path", ca.get_ref()),
                None,
            );
        }
        if let Some(port) = &def.upstream_port {
            if *port.get_ref() == 0 {
                self.error(port, "upstream_port 0 is not a port", None);
            }
            if mode != TlsMode::Originate {
                self.push(
                    Severity::Warning,
                    port.span(),
                    "upstream_port only applies to tls.mode = \"originate\"".into(),
                    None,
                );
            }
        }
        TargetTls {
            mode,
            min_version,
            cipher_suites,
            upstream_ca: def.upstream_ca.as_ref().map(|c| PathBuf::from(c.get_ref())),
            upstream_port: def.upstream_port.as_ref().map(|p| *p.get_ref()),
        }
    }

    fn credentials(&mut self, def: &schema::CredentialsDef) -> Option<Credentials> {
        let header = def.header.get_ref();
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            self.error(&def.header, format!("invalid header name `{header}`"), None);
            return None;
        }
        if let Err(message) = super::template_parts(def.value.get_ref()) {
            self.error(
                &def.value,
                message,
                Some("write ${env:NAME} or ${file:/absolute/path}"),
            );
            return None;
        }
        Some(Credentials {
            header: header.clone(),
            value: def.value.get_ref().clone(),
        })
    }

    fn custom_detector(
        &mut self,
        def: &schema::DetectorDef,
        seen: &HashMap<String, (usize, Origin)>,
    ) -> Option<Detector> {
        let name = def.name.get_ref();
        if !detectors::expand(name).is_empty() || detectors::GROUPS.contains(&name.as_str()) {
            self.error(
                &def.name,
                format!("detector `{name}` is built in"),
                Some("choose another name for a custom detector"),
            );
            return None;
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            self.error(
                &def.name,
                format!("invalid detector name `{name}`"),
                Some("letters, digits and `_`"),
            );
            return None;
        }
        if let Some((_, first)) = seen.get(name) {
            let first = self.origin_text(first);
            self.error(
                &def.name,
                format!("duplicate detector `{name}`, first defined at {first}"),
                None,
            );
            return None;
        }
        let regex = self.bytes_regex(&def.regex)?;
        let validator = match &def.validator {
            None => Validator::None,
            Some(v) => {
                if let Some(validator) = Validator::parse(v.get_ref()) {
                    validator
                } else {
                    self.error(
                        v,
                        format!("unknown validator `{}`", v.get_ref()),
                        Some(&format!("one of {}", Validator::NAMES.join(", "))),
                    );
                    return None;
                }
            }
        };
        match Detector::custom(name, regex.as_str(), validator) {
            Ok(detector) => Some(detector),
            Err(detectors::CustomError::Regex(error)) => {
                self.error(&def.regex, format!("invalid regex: {error}"), None);
                None
            }
            Err(detectors::CustomError::Unbounded) => {
                self.error(
                    &def.regex,
                    format!(
                        "detector `{name}` can match more than {} bytes; streaming masking needs a bound",
                        detectors::MAX_MATCH_LEN
                    ),
                    Some("bound every repetition: `\\d{6,12}` rather than `\\d+`"),
                );
                None
            }
        }
    }

    fn regex(&mut self, pattern: &S<String>) -> Option<regex::Regex> {
        match regex::RegexBuilder::new(pattern.get_ref())
            .size_limit(detectors::REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(regex) => Some(regex),
            Err(e) => {
                self.regex_error(pattern, &e);
                None
            }
        }
    }

    fn bytes_regex(&mut self, pattern: &S<String>) -> Option<regex::bytes::Regex> {
        match regex::bytes::RegexBuilder::new(pattern.get_ref())
            .size_limit(detectors::REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(regex) => Some(regex),
            Err(e) => {
                self.regex_error(pattern, &e);
                None
            }
        }
    }

    fn regex_error(&mut self, pattern: &S<String>, error: &regex::Error) {
        let (message, hint) = match error {
            regex::Error::CompiledTooBig(limit) => (
                format!("regex is too large once compiled (limit {limit} bytes)"),
                "simplify it: bounded repetitions like {1,1000} of classes multiply its size",
            ),
            _ => (
                format!(
                    "invalid regex: {}",
                    error
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim()
                        .trim_start_matches("error: ")
                ),
                "Rust regex syntax (no look-around, no backreferences); see policies/README.md",
            ),
        };
        self.error(pattern, message, Some(hint));
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one validation step per rule key, in schema order"
    )]
    fn rule(
        &mut self,
        def: &schema::RuleDef,
        identity_names: &HashMap<String, (usize, Origin)>,
        target_names: &HashMap<String, (usize, Origin)>,
        detector_names: &HashMap<String, (usize, Origin)>,
        custom: &[Arc<Detector>],
    ) -> Option<Rule> {
        let name = def.name.get_ref().clone();
        let mut ok = true;
        let mut targets = Vec::new();
        let target_items = def.target.get_ref().items();
        if target_items.is_empty() {
            self.error(&def.target, format!("rule `{name}` names no target"), None);
            ok = false;
        }
        for target in target_items {
            if let Some((index, _)) = target_names.get(target) {
                targets.push(*index);
            } else {
                let known: Vec<&str> = target_names.keys().map(String::as_str).collect();
                self.error(
                    &def.target,
                    format!("rule `{name}` names unknown target `{target}`"),
                    Some(&suggest(target, &known, "targets")),
                );
                ok = false;
            }
        }
        let identities = def.identities.as_ref().map(|list| {
            let mut set = IdSet::EMPTY;
            for identity in list {
                if let Some((index, _)) = identity_names.get(identity.get_ref()) {
                    set.insert(*index);
                } else {
                    let known: Vec<&str> = identity_names.keys().map(String::as_str).collect();
                    self.error(
                        identity,
                        format!(
                            "rule `{name}` names unknown identity `{}`",
                            identity.get_ref()
                        ),
                        Some(&suggest(identity.get_ref(), &known, "identities")),
                    );
                    ok = false;
                }
            }
            set
        });
        let direction = match def.direction.as_ref().map(|d| (d, d.get_ref().as_str())) {
            None | Some((_, "both")) => Direction::Both,
            Some((_, "request")) => Direction::Request,
            Some((_, "response")) => Direction::Response,
            Some((d, other)) => {
                self.error(
                    d,
                    format!("unknown direction `{other}`"),
                    Some("one of request, response, both"),
                );
                ok = false;
                Direction::Both
            }
        };
        let action = match def.action.get_ref().as_str() {
            "allow" => Action::Allow,
            "block" => Action::Block,
            "mask" => Action::Mask,
            "approve" => Action::Approve,
            "record" => Action::Record,
            other => {
                self.error(
                    &def.action,
                    format!("unknown action `{other}`"),
                    Some("one of allow, block, mask, approve, record"),
                );
                return None;
            }
        };

        // Masking keys.
        let mut detectors_list: Vec<Arc<Detector>> = Vec::new();
        for detector in def.detectors.iter().flatten() {
            let wanted = detector.get_ref();
            if let Some((index, _)) = detector_names.get(wanted) {
                detectors_list.push(Arc::clone(&custom[*index]));
                continue;
            }
            let found = detectors::expand(wanted);
            if found.is_empty() {
                let mut known: Vec<&str> = detectors::CATALOGUE
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect();
                known.extend(detectors::GROUPS);
                known.extend(detector_names.keys().map(String::as_str));
                self.error(
                    detector,
                    format!("unknown detector `{wanted}`"),
                    Some(&suggest(wanted, &known, "detectors")),
                );
                ok = false;
            }
            for d in found {
                if !detectors_list.iter().any(|have| have.name == d.name) {
                    detectors_list.push(d);
                }
            }
        }
        let mut json_paths = Vec::new();
        for path in def.json_paths.iter().flatten() {
            match JsonPath::parse(path.get_ref()) {
                Ok(parsed) => json_paths.push(parsed),
                Err(e) => {
                    self.error(
                        path,
                        format!("invalid JSON path `{}`: {e}", path.get_ref()),
                        Some("e.g. \"$.messages[*].content\""),
                    );
                    ok = false;
                }
            }
        }
        let strategy = match &def.strategy {
            None => Strategy::Redact,
            Some(s) => Strategy::parse(s.get_ref()).unwrap_or_else(|| {
                self.error(
                    s,
                    format!("unknown strategy `{}`", s.get_ref()),
                    Some(&format!("one of {}", Strategy::NAMES.join(", "))),
                );
                ok = false;
                Strategy::Redact
            }),
        };
        let columns: Vec<String> = def
            .columns
            .iter()
            .flatten()
            .map(|c| c.get_ref().to_ascii_lowercase())
            .collect();
        let masker = if action == Action::Mask {
            if detectors_list.is_empty() && columns.is_empty() {
                self.error(
                    &def.action,
                    format!("mask rule `{name}` has neither detectors nor columns"),
                    Some("add detectors = [\"pii\", \"secrets\"] or columns = [...]"),
                );
                ok = false;
            }
            Some(Arc::new(
                Masker::new(detectors_list, strategy, json_paths).named(&name),
            ))
        } else {
            for (present, key) in [
                (def.detectors.is_some(), "detectors"),
                (def.json_paths.is_some(), "json_paths"),
                (def.columns.is_some(), "columns"),
                (def.strategy.is_some(), "strategy"),
            ] {
                if present {
                    self.push(
                        Severity::Warning,
                        def.action.span(),
                        format!(
                            "`{key}` has no effect on a rule with action = \"{}\"",
                            action.as_str()
                        ),
                        Some("only mask rules use it".into()),
                    );
                }
            }
            None
        };

        let conditions = match &def.matches {
            Some(m) => self.conditions(m.get_ref(), &mut ok),
            None => Conditions::default(),
        };
        if let (Some(m), Direction::Response) = (&def.matches, direction) {
            let m = m.get_ref();
            if m.sql_statement.is_some()
                || m.sql.is_some()
                || m.http_method.is_some()
                || m.http_path.is_some()
            {
                self.push(Severity::Warning, def.name.span(), format!("rule `{name}` matches request properties but has direction = \"response\" and never acts"), None);
            }
        }
        let approval = match (&def.approval, action) {
            (Some(a), Action::Approve) => Some(self.approval(a.get_ref(), &mut ok)),
            (None, Action::Approve) => Some(Approval {
                timeout: std::time::Duration::from_mins(10),
                grant: None,
                approvers: vec!["uid:0".into()],
            }),
            (Some(a), _) => {
                self.push(
                    Severity::Warning,
                    a.span(),
                    "[rule.approval] only applies to action = \"approve\"".into(),
                    None,
                );
                None
            }
            (None, _) => None,
        };
        ok.then(|| {
            let mut origin = String::new();
            let (line, col) = self.line_col(self.file, def.name.span().start);
            let _ = write!(
                origin,
                "{}:{line}:{col}",
                self.sources[self.file].path.display()
            );
            Rule {
                name,
                targets,
                identities,
                direction,
                action,
                masker,
                columns,
                conditions,
                approval,
                origin,
            }
        })
    }

    fn conditions(&mut self, def: &schema::MatchDef, ok: &mut bool) -> Conditions {
        let mut conditions = Conditions::default();
        for kind in def.sql_statement.iter().flatten() {
            let wanted = kind.get_ref().to_ascii_lowercase();
            if let Some(kind) = sql::KINDS.iter().find(|k| **k == wanted) {
                conditions.sql_statement.push(kind);
            } else {
                self.error(
                    kind,
                    format!("unknown SQL statement kind `{}`", kind.get_ref()),
                    Some(&format!("one of {}", sql::KINDS.join(", "))),
                );
                *ok = false;
            }
        }
        for pattern in def.sql.iter().flatten() {
            match self.regex(pattern) {
                Some(regex) => conditions.sql.push(regex),
                None => *ok = false,
            }
        }
        for method in def.http_method.iter().flatten() {
            let text = method.get_ref();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_alphabetic()) {
                self.error(method, format!("invalid HTTP method `{text}`"), None);
                *ok = false;
            } else {
                conditions.http_method.push(text.to_ascii_uppercase());
            }
        }
        for path in def.http_path.iter().flatten() {
            if !path.get_ref().starts_with('/') && path.get_ref() != "*" {
                self.error(
                    path,
                    format!(
                        "HTTP path pattern `{}` does not start with `/`",
                        path.get_ref()
                    ),
                    None,
                );
                *ok = false;
                continue;
            }
            match self.glob(path, false, "HTTP path") {
                Some(glob) => conditions.http_path.push((path.get_ref().clone(), glob)),
                None => *ok = false,
            }
        }
        for pattern in def.body.iter().flatten() {
            match self.bytes_regex(pattern) {
                Some(regex) => conditions.body.push(regex),
                None => *ok = false,
            }
        }
        conditions
    }

    fn approval(&mut self, def: &schema::ApprovalDef, ok: &mut bool) -> Approval {
        let mut duration =
            |this: &mut Self, value: &Option<S<String>>, default: Option<std::time::Duration>| {
                match value {
                    None => default,
                    Some(text) => match humantime::parse_duration(text.get_ref()) {
                        Ok(d) if !d.is_zero() => Some(d),
                        Ok(_) | Err(_) => {
                            this.error(
                                text,
                                format!("invalid duration `{}`", text.get_ref()),
                                Some("e.g. \"10m\", \"1h 30m\", \"45s\""),
                            );
                            *ok = false;
                            default
                        }
                    },
                }
            };
        let timeout = duration(self, &def.timeout, Some(std::time::Duration::from_mins(10)))
            .unwrap_or_default();
        let grant = duration(self, &def.grant, None);
        let mut approvers = Vec::new();
        for approver in def.approvers.iter().flatten() {
            let text = approver.get_ref();
            let valid = match text.split_once(':') {
                Some(("uid", n)) => n.parse::<u32>().is_ok(),
                Some(("user" | "group", name)) => !name.is_empty(),
                _ => false,
            };
            if valid {
                approvers.push(text.clone());
            } else {
                self.error(
                    approver,
                    format!("invalid approver `{text}`"),
                    Some("uid:N, user:NAME or group:NAME"),
                );
                *ok = false;
            }
        }
        if approvers.is_empty() {
            approvers.push("uid:0".into());
        }
        Approval {
            timeout,
            grant,
            approvers,
        }
    }

    /// Warns about targets that can never be resolved because an earlier target matches
    /// everything they match (targets resolve first-match in policy order), and about rules
    /// that name only such targets.
    fn unreachable(&mut self, targets: &[Target], origins: &[Origin], rules: &[Rule]) {
        let mut shadowed = vec![None; targets.len()];
        for (j, later) in targets.iter().enumerate() {
            if let Some(i) = (0..j).find(|&i| covers(&targets[i], later)) {
                shadowed[j] = Some(i);
                let first = self.origin_text(&origins[i]);
                let file = self.file;
                self.file = origins[j].0;
                self.push(Severity::Warning, origins[j].1.clone(), format!("target `{}` is unreachable: every destination it matches is matched first by target `{}` ({first})", later.name, targets[i].name), Some("targets resolve first-match in file order; move the narrower target first".into()));
                self.file = file;
            }
        }
        for rule in rules {
            if !rule.targets.is_empty()
                && rule
                    .targets
                    .iter()
                    .all(|t| shadowed.get(*t).copied().flatten().is_some())
            {
                let message = format!(
                    "rule `{}` ({}) is unreachable: all its targets are shadowed by earlier targets",
                    rule.name, rule.origin
                );
                let (file, span) = origins[rule.targets[0]].clone();
                let saved = self.file;
                self.file = file;
                self.push(Severity::Warning, span, message, None);
                self.file = saved;
            }
        }
    }
}

fn parse_record(text: &str) -> Option<RecordLevel> {
    match text {
        "full" => Some(RecordLevel::Full),
        "metadata" => Some(RecordLevel::Metadata),
        "off" => Some(RecordLevel::Off),
        _ => None,
    }
}

/// Whether every destination `later` matches is matched by `earlier`.
fn covers(earlier: &Target, later: &Target) -> bool {
    let addresses = earlier.addresses.is_empty()
        || (!later.addresses.is_empty()
            && later
                .addresses
                .iter()
                .all(|l| earlier.addresses.iter().any(|e| e.contains(l))));
    let ports = earlier.ports.is_empty()
        || (!later.ports.is_empty() && later.ports.iter().all(|p| earlier.ports.contains(p)));
    let hosts = earlier.hosts.is_empty()
        || (!later.hosts.is_empty()
            && later
                .hosts
                .iter()
                .all(|l| earlier.hosts.iter().any(|e| e.covers(l))));
    addresses && ports && hosts
}

/// "did you mean `x`?" for the closest known name, else the list.
fn suggest(wanted: &str, known: &[&str], what: &str) -> String {
    let close = known
        .iter()
        .map(|k| (edit_distance(wanted, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min();
    match close {
        Some((_, name)) => format!("did you mean `{name}`?"),
        None if known.is_empty() => format!("no {what} are defined"),
        None => {
            let mut sorted = known.to_vec();
            sorted.sort_unstable();
            format!("known {what}: {}", sorted.join(", "))
        }
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            prev = current;
        }
    }
    row[b.len()]
}

/// The policy version: a hash over file names and contents, 12 hex digits.
fn version_of(sources: &[Source]) -> String {
    let mut hasher = Sha256::new();
    for source in sources {
        if let Some(name) = source.path.file_name() {
            hasher.update(name.as_encoded_bytes());
        }
        hasher.update([0]);
        hasher.update(source.text.as_bytes());
        hasher.update([0]);
    }
    crate::hex(&hasher.finalize()[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostics(text: &str) -> Vec<String> {
        let source = Source {
            path: PathBuf::from("p.toml"),
            text: text.to_string(),
        };
        match compile(&[source]) {
            Ok(policy) => policy.warnings.iter().map(ToString::to_string).collect(),
            Err(PolicyError(all)) => all.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_error_is_reported_with_its_position() {
        let found = diagnostics(
            "[[target]]\nname = \"t\"\nports = [0]\n\n[[rule]]\nname = \"r\"\ntarget = [\"t\", \"u\"]\naction = \"mask\"\nstrategy = \"shred\"\n",
        );
        assert!(
            found
                .iter()
                .any(|d| d.starts_with("p.toml:3:10: error: port 0")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|d| d.starts_with("p.toml:7:10: error: rule `r` names unknown target `u`")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|d| d.starts_with("p.toml:9:12: error: unknown strategy `shred`")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|d| d.contains("has neither detectors nor columns")),
            "{found:?}"
        );
    }

    #[test]
    fn duplicates_across_files_name_the_first_definition() {
        let sources = [
            Source {
                path: PathBuf::from("a.toml"),
                text: "[[identity]]\nname = \"x\"\nuid = [1]\n".into(),
            },
            Source {
                path: PathBuf::from("b.toml"),
                text: "\n[[identity]]\nname = \"x\"\nuid = [2]\n".into(),
            },
        ];
        let Err(PolicyError(all)) = compile(&sources) else {
            panic!("duplicate accepted")
        };
        assert_eq!(
            all[0].to_string(),
            "b.toml:3:8: error: duplicate identity `x`, first defined at a.toml:2:8 (hint: names must be unique across all policy files)"
        );
    }

    #[test]
    fn shadowed_targets_and_their_rules_are_warned_about() {
        let found = diagnostics(
            "[[target]]\nname = \"all-https\"\nports = [443]\n[[target]]\nname = \"api\"\nhosts = [\"api.x\"]\nports = [443]\n[[rule]]\nname = \"r\"\ntarget = \"api\"\naction = \"allow\"\n",
        );
        assert!(
            found
                .iter()
                .any(|d| d.contains("warning: target `api` is unreachable")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|d| d.contains("warning: rule `r`") && d.contains("unreachable")),
            "{found:?}"
        );
    }

    #[test]
    fn versions_are_content_hashes() {
        let a = compile(&[Source {
            path: "p.toml".into(),
            text: "version = 1\n".into(),
        }])
        .unwrap();
        let b = compile(&[Source {
            path: "p.toml".into(),
            text: "version = 1\n\n".into(),
        }])
        .unwrap();
        assert_eq!(a.version.len(), 12);
        assert_ne!(a.version, b.version);
        let bad = diagnostics("version = 2\n");
        assert!(
            bad[0].starts_with("p.toml:1:11: error: unsupported policy version 2"),
            "{bad:?}"
        );
    }
}
