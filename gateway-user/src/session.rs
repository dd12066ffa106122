//! The session model: one governed connection, as recorded and as shown by
//! `sessions list --json` (the contract in DESIGN.md).

use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use serde::{Deserialize, Serialize};

/// Sortable unique id (ULID).
pub fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// `2026-11-21T17:00:00.123Z`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

pub fn now() -> String {
    timestamp(SystemTime::now())
}

/// Who opened the connection, as attested by the kernel (`exe` read from `/proc` on accept).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub cgroup: Option<String>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub exe: Option<String>,
    /// The task's command name, for connects the kernel refused (the process is often gone
    /// before its `exe` can be read). Extra field.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub comm: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
    pub host: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TlsLeg {
    pub version: Option<String>,
    pub cipher: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tls {
    pub client: Option<TlsLeg>,
    pub upstream: Option<TlsLeg>,
}

/// Protocol of a session (contract values).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Https,
    Http,
    Postgres,
    Tcp,
    TlsPassthrough,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::Http => "http",
            Self::Postgres => "postgres",
            Self::Tcp => "tcp",
            Self::TlsPassthrough => "tls-passthrough",
        }
    }
}

/// Outcome of a session (contract values).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Blocked,
    Denied,
    TlsRejected,
    ApprovalDenied,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Blocked => "blocked",
            Self::Denied => "denied",
            Self::TlsRejected => "tls_rejected",
            Self::ApprovalDenied => "approval_denied",
            Self::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
    }
}

/// One session, as in the `sessions list --json` contract. `ended_at` and `outcome` are
/// `null` while the session is still running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub identity: Identity,
    pub destination: Destination,
    pub target: Option<String>,
    pub protocol: Protocol,
    pub tls: Option<Tls>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub outcome: Option<Outcome>,
    pub rules: Vec<String>,
    pub masked: BTreeMap<String, u64>,
    /// Why the session ended in `error` (not part of the contract's minimum; extra field).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Version (hash) of the policy the session ran under (extra field).
    #[serde(default)]
    pub policy_version: Option<String>,
}

impl Session {
    /// A new, open session of `identity` to `destination` under `policy`.
    pub fn open(
        identity: Identity,
        destination: std::net::SocketAddr,
        policy: &crate::policy::Policy,
    ) -> Self {
        Self {
            id: new_id(),
            started_at: now(),
            ended_at: None,
            identity,
            destination: Destination {
                ip: destination.ip(),
                port: destination.port(),
                host: None,
            },
            target: None,
            protocol: Protocol::Tcp,
            tls: None,
            bytes_up: 0,
            bytes_down: 0,
            outcome: None,
            rules: Vec::new(),
            masked: BTreeMap::new(),
            error: None,
            policy_version: Some(policy.version.clone()),
        }
    }
}

/// One event inside a session (`sessions show`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub at: String,
    pub kind: String,
    #[serde(flatten)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    pub fn new(kind: &str, data: serde_json::Value) -> Self {
        let data = match data {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        Self {
            at: now(),
            kind: kind.to_string(),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_json_matches_the_contract() {
        let session = Session {
            id: new_id(),
            started_at: now(),
            ended_at: Some(now()),
            identity: Identity {
                cgroup: Some("/react-gateway/agent-1".into()),
                pid: Some(4242),
                uid: Some(1000),
                gid: Some(1000),
                exe: Some("/usr/bin/python3.11".into()),
                comm: None,
            },
            destination: Destination {
                ip: "127.0.0.2".parse().unwrap(),
                port: 8443,
                host: None,
            },
            target: None,
            protocol: Protocol::TlsPassthrough,
            tls: None,
            bytes_up: 1,
            bytes_down: 2,
            outcome: Some(Outcome::TlsRejected),
            rules: vec![],
            masked: BTreeMap::new(),
            error: None,
            policy_version: Some("0123456789ab".into()),
        };
        let json = serde_json::to_value(&session).unwrap();
        for key in [
            "id",
            "started_at",
            "ended_at",
            "identity",
            "destination",
            "target",
            "protocol",
            "tls",
            "bytes_up",
            "bytes_down",
            "outcome",
            "rules",
            "masked",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["protocol"], "tls-passthrough");
        assert_eq!(json["outcome"], "tls_rejected");
        assert_eq!(json["destination"]["ip"], "127.0.0.2");
        assert_eq!(json["identity"]["pid"], 4242);
        assert!(json["started_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(json.get("error"), None);
        assert_eq!(
            Outcome::parse("approval_denied"),
            Some(Outcome::ApprovalDenied)
        );
        assert_eq!(Outcome::parse("nope"), None);
    }
}
