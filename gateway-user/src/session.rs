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

/// The current time as [`timestamp`] writes it. Formatting is done once per millisecond and
/// thread: the recorder stamps every event, tens of thousands a second.
pub fn now() -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(u128, String)> = const {
            std::cell::RefCell::new((0, String::new()))
        };
    }
    let at = SystemTime::now();
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    LAST.with_borrow_mut(|(last, text)| {
        if *last != millis || text.is_empty() {
            *last = millis;
            *text = timestamp(at);
        }
        text.clone()
    })
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

/// An event on its way to the store. Its data is encoded where the event happens, once, as
/// the JSON object the store keeps ([`JsonObject`]); the recorder chains and stores that text
/// as it is. (Reading gives an [`Event`] back.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub at: String,
    pub kind: &'static str,
    /// A JSON object.
    pub data: String,
}

impl Record {
    /// A record of `data` (an object; anything else records as `{}`).
    pub fn new(kind: &'static str, data: &serde_json::Value) -> Self {
        let data = if data.is_object() {
            data.to_string()
        } else {
            "{}".to_string()
        };
        Self::encoded(kind, data)
    }

    /// A record of an object already encoded ([`JsonObject::finish`]).
    pub fn encoded(kind: &'static str, data: String) -> Self {
        Self {
            at: now(),
            kind,
            data,
        }
    }
}

/// A JSON object written field by field into one buffer: no map, no value per field.
/// Keys are the recorder's own names (plain ASCII, nothing to escape); values are escaped.
pub struct JsonObject {
    buf: Vec<u8>,
    /// No field yet in the object being written (no comma before the next key).
    first: bool,
}

impl Default for JsonObject {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonObject {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(512);
        buf.push(b'{');
        Self { buf, first: true }
    }

    /// Opens a finished object again to add fields at its end.
    pub fn reopen(object: String) -> Self {
        let mut buf = object.into_bytes();
        if buf.last() == Some(&b'}') {
            buf.pop();
        }
        if buf.is_empty() {
            buf.push(b'{');
        }
        let first = buf.len() == 1;
        Self { buf, first }
    }

    /// Writes `"prefix" "key":` (after a comma unless it is the first field).
    pub fn key(&mut self, prefix: &str, key: &str) -> &mut Self {
        debug_assert!(
            !prefix.contains(['"', '\\']) && !key.contains(['"', '\\']),
            "keys are plain names"
        );
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(prefix.as_bytes());
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
        self
    }

    /// Writes a value (after [`Self::key`]).
    pub fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> &mut Self {
        if serde_json::to_writer(&mut self.buf, value).is_err() {
            // Writing into memory cannot fail; if a value could not be encoded, the
            // object stays valid.
            self.buf.extend_from_slice(b"null");
        }
        self
    }

    pub fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> &mut Self {
        self.key("", key).value(value)
    }

    /// Writes `"key":{…}`, the inner object's fields written by `fill`.
    pub fn object(&mut self, key: &str, fill: impl FnOnce(&mut Self)) -> &mut Self {
        self.key("", key);
        self.buf.push(b'{');
        self.first = true;
        fill(self);
        self.buf.push(b'}');
        self.first = false;
        self
    }

    pub fn finish(mut self) -> String {
        self.buf.push(b'}');
        String::from_utf8(self.buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_the_current_millisecond() {
        for _ in 0..1_000 {
            let before = SystemTime::now();
            let text = now();
            let after = SystemTime::now();
            let at = humantime::parse_rfc3339(&text).unwrap();
            let millisecond = std::time::Duration::from_millis(1);
            assert!(at <= after && at + millisecond > before, "{text}");
            assert_eq!(text.len(), "2026-11-22T06:52:31.123Z".len(), "{text}");
        }
    }

    #[test]
    fn json_objects_are_written_as_serde_json_writes_them() {
        let mut data = JsonObject::new();
        data.field("method", "POST")
            .field("path", "/a?q=\"x\"\\\n\u{1}é")
            .field("host", &None::<String>)
            .object("headers", |h| {
                h.field("x-one", "1");
                h.field("x-two", "2");
            })
            .object("empty", |_| {});
        let text = data.finish();
        let expect = serde_json::json!({
            "method": "POST",
            "path": "/a?q=\"x\"\\\n\u{1}é",
            "host": null,
            "headers": {"x-one": "1", "x-two": "2"},
            "empty": {},
        });
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            expect
        );
        // Reopened, fields go on at the end; an empty object takes no comma.
        let mut more = JsonObject::reopen(text);
        more.key("body_", "size").value(&3u64);
        let text = more.finish();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["body_size"], 3);
        assert_eq!(value["headers"]["x-two"], "2");
        let mut empty = JsonObject::reopen(JsonObject::new().finish());
        empty.field("a", &true);
        assert_eq!(empty.finish(), r#"{"a":true}"#);
        assert_eq!(Record::new("k", &serde_json::json!([1])).data, "{}");
    }

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
