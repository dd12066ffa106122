//! `policy test`: case files (TOML) of identity + destination + operation → expected
//! verdict, acting rules and masked output, run through the same [`Policy`] evaluation and
//! masking functions the daemon calls on the data path.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, path::Path, sync::Arc};

use serde::Deserialize;

use super::{ConnVerdict, Operation, Policy, Verdict, Who};
use crate::mask::MaskContext;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub identity: CaseIdentity,
    pub destination: CaseDestination,
    pub request: Option<CaseRequest>,
    pub response: Option<CaseResponse>,
    pub sql: Option<String>,
    pub row: Option<CaseRow>,
    pub expect: Expect,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseIdentity {
    pub cgroup: Option<String>,
    pub uid: Option<u32>,
    pub exe: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseDestination {
    pub address: IpAddr,
    pub port: u16,
    pub host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "root")]
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

fn get() -> String {
    "GET".into()
}

fn root() -> String {
    "/".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseResponse {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

fn ok() -> u16 {
    200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRow {
    pub columns: Vec<String>,
    pub values: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// allow | mask | block | approve | deny
    pub verdict: Option<String>,
    pub target: Option<String>,
    pub rules: Option<Vec<String>>,
    /// Exact masked output (body, SQL text, or the row's values joined by `|`).
    pub output: Option<String>,
    #[serde(default)]
    pub must_contain: Vec<String>,
    #[serde(default)]
    pub must_not_contain: Vec<String>,
    /// Counts of masked values per detector.
    pub masked: Option<BTreeMap<String, u64>>,
}

/// What the engine did with one case.
#[derive(Debug, Default)]
pub struct Outcome {
    pub verdict: String,
    pub target: Option<String>,
    pub rules: Vec<String>,
    pub output: Option<String>,
    pub masked: BTreeMap<String, u64>,
}

/// One case's result.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    pub failures: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {message}")]
    Parse {
        path: String,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{path}: case `{case}`: give at most one of request, response, sql, row")]
    TwoOperations { path: String, case: String },
    #[error(
        "{path}: case `{case}`: unknown verdict `{verdict}` (allow, mask, block, approve, deny)"
    )]
    Verdict {
        path: String,
        case: String,
        verdict: String,
    },
    #[error("{path}: no [[case]] in the file")]
    Empty { path: String },
}

pub fn load(path: &Path) -> Result<Vec<Case>, CaseError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CaseError::Read {
        path: name.clone(),
        source,
    })?;
    let file: CaseFile = toml::from_str(&text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start).min(text.len());
        let before = &text[..text.floor_char_boundary(offset)];
        CaseError::Parse {
            path: name.clone(),
            line: before.matches('\n').count() + 1,
            col: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
            message: e.message().to_string(),
        }
    })?;
    if file.cases.is_empty() {
        return Err(CaseError::Empty { path: name });
    }
    for case in &file.cases {
        let operations = usize::from(case.request.is_some())
            + usize::from(case.response.is_some())
            + usize::from(case.sql.is_some())
            + usize::from(case.row.is_some());
        if operations > 1 {
            return Err(CaseError::TwoOperations {
                path: name,
                case: case.name.clone(),
            });
        }
        if let Some(verdict) = &case.expect.verdict
            && !["allow", "mask", "block", "approve", "deny"].contains(&verdict.as_str())
        {
            return Err(CaseError::Verdict {
                path: name,
                case: case.name.clone(),
                verdict: verdict.clone(),
            });
        }
    }
    Ok(file.cases)
}

/// Runs one case through the engine.
pub fn evaluate(policy: &Policy, case: &Case, key: &Arc<[u8]>) -> Outcome {
    let who = Who {
        cgroup: case.identity.cgroup.as_deref(),
        uid: case.identity.uid,
        exe: case.identity.exe.as_deref(),
    };
    let ids = policy.identities_of(&who);
    let dst = &case.destination;
    let resolution = policy.resolve(dst.address, dst.port, dst.host.as_deref());
    let mut outcome = Outcome {
        target: resolution.target.map(|t| policy.targets[t].name.clone()),
        ..Outcome::default()
    };
    let target = match policy.connection(ids, resolution) {
        ConnVerdict::Deny { rule } => {
            outcome.verdict = "deny".into();
            outcome.rules = rule
                .map(|r| policy.rules[r].name.clone())
                .into_iter()
                .collect();
            return outcome;
        }
        ConnVerdict::Allow { target, .. } => target,
    };
    let header = |headers: &BTreeMap<String, String>, name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let (op, content_type) = if let Some(r) = &case.request {
        (
            Some(Operation::HttpRequest {
                method: &r.method,
                path: &r.path,
                body: r.body.as_bytes(),
            }),
            header(&r.headers, "content-type"),
        )
    } else if let Some(r) = &case.response {
        (
            Some(Operation::HttpResponse {
                status: r.status,
                body: r.body.as_bytes(),
            }),
            header(&r.headers, "content-type"),
        )
    } else if let Some(text) = &case.sql {
        (Some(Operation::Sql { text }), Some("text/plain".into()))
    } else if let Some(row) = &case.row {
        (
            Some(Operation::Row {
                columns: &row.columns,
                values: &row.values,
            }),
            None,
        )
    } else {
        (None, None)
    };
    let Some(op) = op else {
        outcome.verdict = "allow".into();
        return outcome;
    };
    let decision = policy.evaluate(ids, target, &op);
    outcome.rules = policy.rule_names(&decision.acting);
    outcome.verdict = match decision.verdict {
        Verdict::Block(_) => "block",
        Verdict::Approve(_) => "approve",
        Verdict::Allow if !decision.masks.is_empty() => "mask",
        Verdict::Allow => "allow",
    }
    .into();
    if matches!(decision.verdict, Verdict::Block(_)) {
        return outcome;
    }
    let mut ctx = MaskContext::new(Arc::clone(key));
    outcome.output = Some(match op {
        Operation::HttpRequest { body, .. } | Operation::HttpResponse { body, .. } => {
            let masked = policy.mask_body(&decision, content_type.as_deref(), body, &mut ctx);
            String::from_utf8_lossy(masked.as_deref().unwrap_or(body)).into_owned()
        }
        Operation::Sql { text } => {
            let masked = policy.mask_body(&decision, Some("text/plain"), text.as_bytes(), &mut ctx);
            masked.map_or_else(
                || text.to_string(),
                |m| String::from_utf8_lossy(&m).into_owned(),
            )
        }
        Operation::Row { columns, values } => policy
            .mask_row(&decision, columns, values, &mut ctx)
            .join("|"),
    });
    outcome.masked = ctx.counts;
    outcome
}

/// Compares an outcome with the case's expectations; empty = pass.
pub fn check(case: &Case, outcome: &Outcome) -> Vec<String> {
    let mut failures = Vec::new();
    let expect = &case.expect;
    if let Some(verdict) = &expect.verdict
        && *verdict != outcome.verdict
    {
        failures.push(format!(
            "verdict: expected {verdict}, got {}",
            outcome.verdict
        ));
    }
    if let Some(target) = &expect.target
        && Some(target) != outcome.target.as_ref()
    {
        failures.push(format!(
            "target: expected {target}, got {}",
            outcome.target.as_deref().unwrap_or("(none)")
        ));
    }
    if let Some(rules) = &expect.rules
        && *rules != outcome.rules
    {
        failures.push(format!(
            "rules: expected {rules:?}, got {:?}",
            outcome.rules
        ));
    }
    let output = outcome.output.as_deref().unwrap_or("");
    if let Some(expected) = &expect.output
        && expected != output
    {
        let mut diff = String::from("output differs:");
        let (want, got): (Vec<&str>, Vec<&str>) =
            (expected.lines().collect(), output.lines().collect());
        for i in 0..want.len().max(got.len()) {
            match (want.get(i), got.get(i)) {
                (Some(w), Some(g)) if w == g => {}
                (w, g) => {
                    if let Some(w) = w {
                        let _ = write!(diff, "\n  - {w}");
                    }
                    if let Some(g) = g {
                        let _ = write!(diff, "\n  + {g}");
                    }
                }
            }
        }
        failures.push(diff);
    }
    for needle in &expect.must_contain {
        if !output.contains(needle.as_str()) {
            failures.push(format!("output must contain {needle:?}: {output:?}"));
        }
    }
    for needle in &expect.must_not_contain {
        if output.contains(needle.as_str()) {
            failures.push(format!("output must not contain {needle:?}: {output:?}"));
        }
    }
    if let Some(masked) = &expect.masked
        && *masked != outcome.masked
    {
        failures.push(format!(
            "masked: expected {masked:?}, got {:?}",
            outcome.masked
        ));
    }
    failures
}

/// Runs every case.
pub fn run(policy: &Policy, cases: &[Case], key: &Arc<[u8]>) -> Vec<CaseResult> {
    cases
        .iter()
        .map(|case| CaseResult {
            name: case.name.clone(),
            failures: check(case, &evaluate(policy, case, key)),
        })
        .collect()
}
