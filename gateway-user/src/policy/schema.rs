//! The policy file schema (DESIGN.md "Policy files", a contract) as serde types.
//!
//! Every value an error may point at is [`Spanned`], so that validation can report
//! `file:line:col`. Unknown keys are rejected by serde (`deny_unknown_fields`); enumerated
//! strings are checked later by the compiler, which can collect all such errors at once.

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

/// One policy file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub version: Option<S<i64>>,
    pub defaults: Option<Defaults>,
    #[serde(default)]
    pub identity: Vec<IdentityDef>,
    #[serde(default)]
    pub target: Vec<TargetDef>,
    #[serde(default)]
    pub rule: Vec<RuleDef>,
    #[serde(default)]
    pub detector: Vec<DetectorDef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub unmatched: Option<S<String>>,
    pub record: Option<S<String>>,
    pub tls_min_version: Option<S<String>>,
    pub on_record_failure: Option<S<String>>,
    pub retention: Option<S<String>>,
    pub record_body_limit: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityDef {
    pub name: S<String>,
    pub cgroup: Option<S<String>>,
    pub uid: Option<Vec<S<u32>>>,
    pub exe: Option<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDef {
    pub name: S<String>,
    pub hosts: Option<Vec<S<String>>>,
    pub addresses: Option<Vec<S<String>>>,
    pub ports: Option<Vec<S<u16>>>,
    pub protocol: Option<S<String>>,
    pub tls: Option<TlsDef>,
    pub credentials: Option<CredentialsDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsDef {
    pub mode: Option<S<String>>,
    pub min_version: Option<S<String>>,
    pub cipher_suites: Option<Vec<S<String>>>,
    pub upstream_ca: Option<S<String>>,
    pub upstream_port: Option<S<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsDef {
    pub header: S<String>,
    pub value: S<String>,
}

/// `target = "a"` or `target = ["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<&String> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many.iter().collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub name: S<String>,
    pub target: S<OneOrMany>,
    pub identities: Option<Vec<S<String>>>,
    pub direction: Option<S<String>>,
    pub action: S<String>,
    pub detectors: Option<Vec<S<String>>>,
    pub json_paths: Option<Vec<S<String>>>,
    pub columns: Option<Vec<S<String>>>,
    pub strategy: Option<S<String>>,
    #[serde(rename = "match")]
    pub matches: Option<S<MatchDef>>,
    pub approval: Option<S<ApprovalDef>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchDef {
    pub sql_statement: Option<Vec<S<String>>>,
    pub sql: Option<Vec<S<String>>>,
    pub http_method: Option<Vec<S<String>>>,
    pub http_path: Option<Vec<S<String>>>,
    pub body: Option<Vec<S<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDef {
    pub timeout: Option<S<String>>,
    pub grant: Option<S<String>>,
    pub approvers: Option<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorDef {
    pub name: S<String>,
    pub regex: S<String>,
    pub validator: Option<S<String>>,
}
