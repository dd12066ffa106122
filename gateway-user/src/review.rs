//! Reading recordings back: the replay transcript of a session, the leak re-scan of
//! `sessions verify` (recorded payloads against the current detectors), and the JSON lines of
//! `audit export`.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use serde_json::Value;

use crate::{
    mask::{Masker, Strategy, detectors, sse},
    policy::{Direction, Policy},
    session::{Event, Session},
};

/// Milliseconds between two RFC 3339 timestamps (0 when either does not parse).
fn millis_between(from: &str, to: &str) -> u128 {
    match (
        humantime::parse_rfc3339_weak(from),
        humantime::parse_rfc3339_weak(to),
    ) {
        (Ok(a), Ok(b)) => b.duration_since(a).unwrap_or(Duration::ZERO).as_millis(),
        _ => 0,
    }
}

/// A body as recorded, pretty-printed when it is JSON.
fn pretty_body(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(value @ (Value::Object(_) | Value::Array(_))) => {
            serde_json::to_string_pretty(&value).unwrap_or_else(|_| body.to_string())
        }
        _ => body.to_string(),
    }
}

fn indent(text: &str, by: &str) -> String {
    text.lines().fold(String::new(), |mut out, line| {
        let _ = writeln!(out, "{by}{line}");
        out
    })
}

/// A recorded body under its message's line: size, hash and the text, pretty-printed (or as
/// recorded when `raw`). The summary fields are `{prefix}size`, `{prefix}sha256`, …, the text
/// is `body`.
fn body_lines(
    line: &mut String,
    arrow: char,
    d: &serde_json::Map<String, Value>,
    prefix: &str,
    raw: bool,
) {
    let field = |k: &str| d.get(&format!("{prefix}{k}"));
    let Some(size) = field("size").and_then(Value::as_u64) else {
        return;
    };
    let truncated = field("truncated").and_then(Value::as_bool) == Some(true);
    let cut = field("complete").and_then(Value::as_bool) == Some(false);
    if !line.is_empty() {
        line.push_str("\n          "); // under its message's line
    }
    let _ = write!(
        line,
        "{arrow} body {size} bytes{}{}{}",
        if truncated { ", truncated" } else { "" },
        if cut { ", cut" } else { "" },
        field("sha256")
            .and_then(Value::as_str)
            .map(|h| format!(", sha256 {}", &h[..h.len().min(16)]))
            .unwrap_or_default()
    );
    let Some(body) = d.get("body").and_then(Value::as_str) else {
        return;
    };
    let streamed = reassembled(field("content_type").and_then(Value::as_str), body)
        .filter(|_| !raw)
        .map(|(text, unit)| stream_text(&text, unit));
    let shown = match streamed {
        Some(text) => text,
        None if raw => body.to_string(),
        None => pretty_body(body),
    };
    line.push('\n');
    line.push_str(indent(&shown, "      | ").trim_end());
}

/// A recorded body that is an LLM's stream (SSE, Ollama's newline-delimited JSON, Bedrock's
/// event stream recorded as SSE text, Gemini's array of chunks) read back as the text of its
/// streams, with what its events are called.
fn reassembled(content_type: Option<&str>, body: &str) -> Option<(sse::Reassembled, &'static str)> {
    let essence = content_type?.split(';').next()?.trim().to_ascii_lowercase();
    match essence.as_str() {
        "text/event-stream" => sse::reassemble(body).map(|t| (t, "events")),
        ndjson if sse::is_ndjson_type(ndjson) => sse::reassemble_lines(body).map(|t| (t, "lines")),
        // Recorded as the SSE text of its frames (`body_rendered: "sse"`).
        crate::mask::eventstream::CONTENT_TYPE => sse::reassemble(body).map(|t| (t, "frames")),
        // Gemini's stream without `alt=sse`: one JSON array of chunks, read as their lines.
        json if crate::mask::is_json_type(json) && crate::mask::is_chunk_array(body.as_bytes()) => {
            let chunks: Vec<Value> = serde_json::from_str(body).ok()?;
            let lines: String = chunks.iter().map(|c| c.to_string() + "\n").collect();
            sse::reassemble_lines(&lines).map(|t| (t, "chunks"))
        }
        _ => None,
    }
}

/// An LLM's event stream as what it streamed: each text stream whole, then the events that
/// carried no text (`--raw` shows them all).
fn stream_text(text: &sse::Reassembled, unit: &str) -> String {
    let mut out = format!(
        "event stream: {} {unit}{}, the text of each stream joined (--raw: as recorded)\n",
        text.events,
        match text.unreadable {
            0 => String::new(),
            n => format!(" ({n} not JSON: cut by the recording limit?)"),
        }
    );
    for (label, streamed) in &text.streams {
        let _ = writeln!(out, "[{label}]");
        out.push_str(&indent(streamed, "  "));
    }
    if !text.other.is_empty() || text.done {
        let other: Vec<String> = text
            .other
            .iter()
            .map(|(name, n)| match n {
                1 => name.clone(),
                n => format!("{name} ×{n}"),
            })
            .chain(text.done.then(|| "[DONE]".to_string()))
            .collect();
        let _ = writeln!(out, "other events: {}", other.join(", "));
    }
    out
}

/// `sessions replay`: the transcript in order, with the time of each event relative to the
/// session's start and bodies pretty-printed (an LLM's event stream as the text it streamed),
/// or as recorded when `raw`.
pub fn replay(session: &Session, events: &[Event], raw: bool) -> String {
    let mut out = String::new();
    let who = session
        .identity
        .exe
        .as_deref()
        .or(session.identity.comm.as_deref())
        .unwrap_or("-");
    let _ = writeln!(
        out,
        "session {}  {} (pid {}, uid {}) {} -> {}:{}{}  target {}",
        session.id,
        who,
        session.identity.pid.map_or("-".into(), |p| p.to_string()),
        session.identity.uid.map_or("-".into(), |u| u.to_string()),
        session.identity.cgroup.as_deref().unwrap_or("-"),
        session.destination.ip,
        session.destination.port,
        session
            .destination
            .host
            .as_ref()
            .map(|h| format!(" ({h})"))
            .unwrap_or_default(),
        session.target.as_deref().unwrap_or("-"),
    );
    let _ = writeln!(out, "started {}", session.started_at);
    for event in events {
        let at = millis_between(&session.started_at, &event.at);
        let d = &event.data;
        let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("");
        let line = match event.kind.as_str() {
            "http_request" => {
                let mut line = format!("> {} {} (host {})", s("method"), s("path"), s("host"));
                body_lines(&mut line, '>', d, "body_", raw);
                line
            }
            "http_response" => {
                let mut line = format!(
                    "< {}",
                    d.get("status")
                        .map_or_else(String::new, ToString::to_string)
                );
                body_lines(&mut line, '<', d, "body_", raw);
                line
            }
            // A body recorded apart from its message (it outlived the queue, or an older
            // recording).
            "request_body" | "response_body" => {
                let mut line = String::new();
                let arrow = if event.kind == "request_body" {
                    '>'
                } else {
                    '<'
                };
                body_lines(&mut line, arrow, d, "", raw);
                line
            }
            "ws_message" => ws_message(d, raw),
            "blocked" if d.contains_key("sql") => {
                format!(
                    "! blocked by {} ({}): sql {}",
                    s("rule"),
                    s("reason"),
                    s("sql")
                )
            }
            "blocked" => format!("! blocked by {} {} {}", s("rule"), s("method"), s("path")),
            "pg_startup" => format!(
                "> postgres startup user {} database {}",
                s("user"),
                s("database")
            ),
            "sql_result" => sql_result(d),
            "sql_error" => format!("< sql error {} {}", s("code"), s("message")),
            "denied" => format!("! denied: {}", s("reason")),
            "approval" => approval(d),
            "sql" => format!("> sql {}", s("text")),
            "masking" => {
                let mut line = format!(
                    "* masked {}",
                    d.get("masked")
                        .map_or_else(String::new, ToString::to_string)
                );
                // What the masker had to fall back on (JSON that did not parse, …).
                for note in d
                    .get("notes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let note = note
                        .as_str()
                        .map_or_else(|| note.to_string(), str::to_string);
                    let _ = write!(line, "\n          * {note}");
                }
                line
            }
            "tls_client_hello" => client_hello(d),
            "upstream_error" => format!("! upstream error: {}", s("error")),
            _ => format!("* {} {}", event.kind, Value::Object(d.clone())),
        };
        let _ = writeln!(out, "+{:>7.3}s {line}", at as f64 / 1000.0);
    }
    let _ = writeln!(
        out,
        "ended {} outcome {}{}  ({} bytes up, {} down)",
        session.ended_at.as_deref().unwrap_or("(open)"),
        session.outcome.map_or("open", |o| o.as_str()),
        session
            .error
            .as_ref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default(),
        session.bytes_up,
        session.bytes_down
    );
    out
}

/// `! approved by uid 0 after 2.1 s (rule …): POST /refunds` and the like.
fn approval(d: &serde_json::Map<String, Value>) -> String {
    let s = |key: &str| d.get(key).and_then(Value::as_str).unwrap_or("");
    let what = match d.get("sql").and_then(Value::as_str) {
        Some(sql) => format!("sql {sql}"),
        None => format!("{} {}", s("method"), s("path")),
    };
    let waited =
        std::time::Duration::from_millis(d.get("waited_ms").and_then(Value::as_u64).unwrap_or(0))
            .as_secs_f64();
    let by = d
        .get("by_uid")
        .and_then(Value::as_u64)
        .map_or_else(String::new, |uid| format!(" by uid {uid}"));
    let how = match s("decision") {
        "approved" => format!("approved{by} after {waited:.1} s"),
        "granted" => format!("passed on a grant until {}", s("grant_until")),
        other => format!("{other}{by} after {waited:.1} s: {}", s("reason")),
    };
    format!("! {how} (rule {}): {what}", s("rule"))
}

/// A `PostgreSQL` result: its command tag, and the rows as the agent got them (`record =
/// "full"`), one line each, columns separated by `|` as `psql -A` prints them.
fn sql_result(d: &serde_json::Map<String, Value>) -> String {
    let rows = d.get("rows").and_then(Value::as_u64).unwrap_or(0);
    let mut line = format!(
        "< {} ({rows} row{})",
        d.get("command").and_then(Value::as_str).unwrap_or(""),
        if rows == 1 { "" } else { "s" }
    );
    let cell = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    if let Some(columns) = d.get("columns").and_then(Value::as_array) {
        let names: Vec<String> = columns.iter().map(cell).collect();
        let _ = write!(line, "\n          < {}", names.join("|"));
    }
    for row in d
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let cells: Vec<String> = row.as_array().into_iter().flatten().map(cell).collect();
        let _ = write!(line, "\n          < {}", cells.join("|"));
    }
    if d.get("data_complete") == Some(&Value::Bool(false)) {
        line.push_str("\n          < … (more rows than the recording keeps)");
    }
    line
}

/// A WebSocket message as it crossed (after masking), its text shown as a body is.
fn ws_message(d: &serde_json::Map<String, Value>, raw: bool) -> String {
    let arrow = if d.get("direction").and_then(Value::as_str) == Some("request") {
        '>'
    } else {
        '<'
    };
    let mut line = format!(
        "{arrow} ws message {} bytes{}",
        d.get("size").map_or_else(String::new, ToString::to_string),
        if d.get("truncated") == Some(&Value::Bool(true)) {
            ", truncated"
        } else {
            ""
        }
    );
    if let Some(text) = d.get("text").and_then(Value::as_str) {
        let shown = if raw {
            text.to_string()
        } else {
            pretty_body(text)
        };
        line.push('\n');
        line.push_str(indent(&shown, "      | ").trim_end());
    }
    line
}

/// What a client offered in its `ClientHello`, in a line (the whole offer is in `sessions show`).
fn client_hello(d: &serde_json::Map<String, Value>) -> String {
    let list = |k: &str| {
        let items: Vec<&str> = d
            .get(k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(", ")
        }
    };
    let suites = d
        .get("cipher_suites")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    format!(
        "* TLS ClientHello: sni {}, versions {}, {suites} cipher suites, alpn {}",
        d.get("sni").and_then(Value::as_str).unwrap_or("-"),
        list("versions"),
        list("alpn"),
    )
}

/// One value in a recording that the detectors say should have been masked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Leak {
    pub session: String,
    /// Index of the event in its session.
    pub event: usize,
    pub kind: String,
    /// Where in the event (`body`, `path`, `headers.x-api-key`, …).
    pub field: String,
    pub detector: String,
    /// The value with all but its first and last character hidden: the report must not
    /// become a leak of its own.
    pub preview: String,
}

fn preview(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let chars: Vec<char> = text.chars().collect();
    match chars.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [first, middle @ .., last] => format!("{first}{}{last}", "*".repeat(middle.len().min(12))),
    }
}

/// The detectors `sessions verify` scans with.
pub struct LeakScanner {
    /// Per policy target name: the detectors of its request- and response-direction mask
    /// rules; `fallback` for the rest.
    by_target: std::collections::HashMap<String, [Arc<Masker>; 2]>,
    fallback: Arc<Masker>,
}

/// Which way an event's payload went: 0 to the upstream, 1 back to the agent; `None` for
/// events without payload (summaries, TLS offers).
fn direction_of(kind: &str) -> Option<usize> {
    match kind {
        "http_request" | "request_body" | "sql" | "blocked" | "denied" | "approval" => Some(0),
        "http_response" | "response_body" | "sql_result" | "sql_error" => Some(1),
        _ => None,
    }
}

impl LeakScanner {
    /// With a policy: each session is scanned with the detectors of its target's mask rules
    /// (sessions of targets without mask rules, and unmatched ones, with `fallback`).
    pub fn new(policy: Option<&Policy>, fallback: &[String]) -> Result<Self, String> {
        let mut fallback_detectors = Vec::new();
        for name in fallback {
            let found = detectors::expand(name);
            if found.is_empty() {
                return Err(format!("unknown detector or group `{name}`"));
            }
            fallback_detectors.extend(found);
        }
        let mut by_target = std::collections::HashMap::new();
        if let Some(policy) = policy {
            for (t, target) in policy.targets.iter().enumerate() {
                let mut found: [Vec<Arc<detectors::Detector>>; 2] = [Vec::new(), Vec::new()];
                for &r in &policy.rules_by_target[t] {
                    let rule = &policy.rules[r];
                    let Some(masker) = &rule.masker else { continue };
                    let ways: &[usize] = match rule.direction {
                        Direction::Request => &[0],
                        Direction::Response => &[1],
                        Direction::Both => &[0, 1],
                    };
                    for &way in ways {
                        for d in masker.detectors() {
                            if !found[way].iter().any(|f| f.name == d.name) {
                                found[way].push(Arc::clone(d));
                            }
                        }
                    }
                }
                if found.iter().any(|f| !f.is_empty()) {
                    let [request, response] = found;
                    by_target.insert(
                        target.name.clone(),
                        [request, response]
                            .map(|d| Arc::new(Masker::new(d, Strategy::Redact, Vec::new()))),
                    );
                }
            }
        }
        Ok(Self {
            by_target,
            fallback: Arc::new(Masker::new(
                fallback_detectors,
                Strategy::Redact,
                Vec::new(),
            )),
        })
    }

    /// Every leak in one session's recording.
    pub fn scan(&self, session: &Session, events: &[Event]) -> Vec<Leak> {
        let maskers = session.target.as_ref().and_then(|t| self.by_target.get(t));
        let mut leaks = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let Some(way) = direction_of(&event.kind) else {
                continue;
            };
            let masker = maskers.map_or(&self.fallback, |m| &m[way]);
            if masker.detectors().is_empty() {
                continue;
            }
            let mut fields = Vec::new();
            collect_strings(
                &Value::Object(event.data.clone()),
                String::new(),
                &mut fields,
            );
            // A streamed body is also read as the text of its streams: a value a model
            // spread over several events is one value there (reported once, where it is
            // whole).
            let body = event.data.get("body").and_then(Value::as_str);
            let content_type = ["body_content_type", "content_type"]
                .iter()
                .find_map(|k| event.data.get(*k)?.as_str());
            if let Some((text, _)) = body.and_then(|b| reassembled(content_type, b)) {
                fields.extend(
                    text.streams
                        .into_iter()
                        .map(|(label, text)| (format!("body ({label})"), text)),
                );
            }
            let mut seen: Vec<&[u8]> = Vec::new();
            for (field, text) in &fields {
                for finding in masker.find(text.as_bytes()) {
                    let value = &text.as_bytes()[finding.start..finding.end];
                    if seen.contains(&value) {
                        continue;
                    }
                    seen.push(value);
                    leaks.push(Leak {
                        session: session.id.clone(),
                        event: index,
                        kind: event.kind.clone(),
                        field: field.clone(),
                        detector: masker.detectors()[finding.detector].name.to_string(),
                        preview: preview(value),
                    });
                }
            }
        }
        leaks
    }
}

/// Every string in a JSON value with its dotted path (strings that are JSON are not parsed:
/// detectors see the text as recorded).
fn collect_strings(value: &Value, path: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => out.push((path, s.clone())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_strings(item, format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                // Hashes are not payload; the host is the destination (in the session row).
                if matches!(k.as_str(), "sha256" | "body_sha256" | "host" | ":authority") {
                    continue;
                }
                let next = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                collect_strings(v, next, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Destination, Identity, Protocol};

    fn session() -> Session {
        Session {
            id: "01TEST".into(),
            started_at: "2026-11-21T17:00:00.000Z".into(),
            ended_at: Some("2026-11-21T17:00:01.500Z".into()),
            identity: Identity::default(),
            destination: Destination {
                ip: "127.0.0.1".parse().unwrap(),
                port: 80,
                host: Some("api.test".into()),
            },
            target: None,
            protocol: Protocol::Http,
            tls: None,
            bytes_up: 1,
            bytes_down: 2,
            outcome: Some(crate::session::Outcome::Ok),
            rules: vec![],
            masked: std::collections::BTreeMap::new(),
            error: None,
            policy_version: None,
        }
    }

    fn event(at: &str, kind: &str, data: Value) -> Event {
        let mut e = Event::new(kind, data);
        e.at = at.into();
        e
    }

    #[test]
    fn replay_is_in_order_with_relative_time_and_pretty_bodies() {
        let events = [
            event(
                "2026-11-21T17:00:00.250Z",
                "http_request",
                serde_json::json!({"method": "POST", "path": "/v1/x", "host": "api.test",
                    "body": "{\"a\":[1]}", "body_size": 9, "body_truncated": false}),
            ),
            event(
                "2026-11-21T17:00:01.000Z",
                "http_response",
                serde_json::json!({"status": 200}),
            ),
            // A body recorded apart from its message.
            event(
                "2026-11-21T17:00:01.200Z",
                "response_body",
                serde_json::json!({"size": 4000, "truncated": true, "body": "tail"}),
            ),
        ];
        let text = replay(&session(), &events, false);
        let request = text.find("> POST /v1/x").unwrap();
        let size = text.find("> body 9 bytes").unwrap();
        let body = text.find("|   \"a\": [").unwrap();
        let response = text.find("< 200").unwrap();
        let apart = text.find("< body 4000 bytes, truncated").unwrap();
        assert!(
            request < size && size < body && body < response && response < apart,
            "{text}"
        );
        assert!(text.contains("+  0.250s > POST"), "{text}");
        assert!(text.contains("+  1.000s < 200"), "{text}");
        assert!(text.contains("+  1.200s < body 4000"), "{text}");
    }

    #[test]
    fn replay_shows_an_event_stream_as_its_text_and_raw_as_recorded() {
        let chunk = |content: &str| {
            let v = serde_json::json!({"choices": [{"index": 0, "delta": {"content": content},
                "finish_reason": null}]});
            format!("data: {v}\n\n")
        };
        let body = format!(
            "{}{}data: [DONE]\n\n",
            chunk("Reach [REDACTED:"),
            chunk("EMAIL] now")
        );
        let events = [event(
            "2026-11-21T17:00:00.300Z",
            "http_response",
            serde_json::json!({"status": 200, "body": body, "body_size": body.len(),
                "body_content_type": "text/event-stream; charset=utf-8"}),
        )];
        let text = replay(&session(), &events, false);
        assert!(
            text.contains(concat!(
                "      | event stream: 3 events, the text of each stream joined",
                " (--raw: as recorded)\n",
                "      | [choice 0]\n",
                "      |   Reach [REDACTED:EMAIL] now\n",
                "      | other events: [DONE]\n"
            )),
            "{text}"
        );
        let raw = replay(&session(), &events, true);
        assert!(raw.contains("      | data: {\"choices\""), "{raw}");
        assert!(!raw.contains("event stream:"), "{raw}");
        // The same body under another content type is not read as a stream.
        let mut plain = events[0].clone();
        plain.data["body_content_type"] = "text/plain".into();
        assert!(!replay(&session(), &[plain], false).contains("event stream:"));
    }

    /// Gemini's stream without `alt=sse` (one JSON array of chunks) replays as its text too.
    #[test]
    fn replay_reads_a_json_array_of_chunks_as_a_stream() {
        let chunk = |text: &str| {
            serde_json::json!({"candidates": [{"content": {"parts": [{"text": text}],
                "role": "model"}, "index": 0}]})
        };
        let body = serde_json::to_string_pretty(&[chunk("Reach [REDACTED:"), chunk("EMAIL] now")])
            .unwrap();
        let events = [event(
            "2026-11-21T17:00:00.300Z",
            "http_response",
            serde_json::json!({"status": 200, "body": body, "body_size": body.len(),
                "body_content_type": "application/json; charset=UTF-8"}),
        )];
        let text = replay(&session(), &events, false);
        assert!(
            text.contains("event stream: 2 chunks")
                && text.contains("[candidate 0]\n      |   Reach [REDACTED:EMAIL] now"),
            "{text}"
        );
    }

    #[test]
    fn replay_shows_websocket_messages_as_they_crossed() {
        let events = [
            event(
                "2026-11-21T17:00:00.100Z",
                "ws_message",
                serde_json::json!({"direction": "request", "size": 27,
                    "text": r#"{"type":"response.create"}"#}),
            ),
            event(
                "2026-11-21T17:00:00.200Z",
                "ws_message",
                serde_json::json!({"direction": "response", "size": 9000}),
            ),
        ];
        let text = replay(&session(), &events, false);
        assert!(
            text.contains(
                "> ws message 27 bytes\n      | {\n      |   \"type\": \"response.create\""
            ) && text.contains("< ws message 9000 bytes\n"),
            "{text}"
        );
    }

    #[test]
    fn replay_says_tls_offers_masking_notes_and_upstream_errors_in_a_line() {
        let events = [
            event(
                "2026-11-21T17:00:00.000Z",
                "tls_client_hello",
                serde_json::json!({"sni": "api.test", "versions": ["TLSv1.3", "TLSv1.2"],
                    "cipher_suites": ["TLS13_AES_128_GCM_SHA256", "0x009f"],
                    "alpn": ["h2", "http/1.1"]}),
            ),
            event(
                "2026-11-21T17:00:00.100Z",
                "masking",
                serde_json::json!({"masked": {"email": 1},
                    "notes": ["a response body did not parse as JSON; masked as text"]}),
            ),
            event(
                "2026-11-21T17:00:00.200Z",
                "upstream_error",
                serde_json::json!({"error": "connection refused"}),
            ),
        ];
        let text = replay(&session(), &events, false);
        assert!(
            text.contains(concat!(
                "+  0.000s * TLS ClientHello: sni api.test, versions TLSv1.3, TLSv1.2,",
                " 2 cipher suites, alpn h2, http/1.1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(concat!(
                "+  0.100s * masked {\"email\":1}\n",
                "          * a response body did not parse as JSON; masked as text\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("+  0.200s ! upstream error: connection refused\n"),
            "{text}"
        );
    }

    #[test]
    fn leaks_are_found_and_never_printed_whole() {
        let scanner = LeakScanner::new(None, &["pii".into()]).unwrap();
        let events = [event(
            "2026-11-21T17:00:00.250Z",
            "http_request",
            serde_json::json!({"body": "mail jane.doe@example.com and [REDACTED:EMAIL]",
                "body_sha256": "4155aa", "body_size": 47}),
        )];
        let leaks = scanner.scan(&session(), &events);
        assert_eq!(leaks.len(), 1, "{leaks:?}");
        assert_eq!(leaks[0].detector, "email");
        assert_eq!(leaks[0].field, "body");
        assert!(!leaks[0].preview.contains("jane.doe"));
        assert!(LeakScanner::new(None, &["nope".into()]).is_err());
    }

    /// A value a model streamed over several events is a leak of the stream's text; one in
    /// a single event is reported once, not again for the stream.
    #[test]
    fn leaks_split_over_streamed_events_are_found() {
        let scanner = LeakScanner::new(None, &["pii".into()]).unwrap();
        let chunk = |text: &str| {
            let v = serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]});
            format!("data: {v}\n\n")
        };
        let body: String = ["Mail bob", "@exam", "ple.com, or carol@example.org"]
            .iter()
            .map(|t| chunk(t))
            .collect();
        let events = [event(
            "2026-11-21T17:00:00.250Z",
            "http_response",
            serde_json::json!({"body": body, "body_content_type": "text/event-stream"}),
        )];
        let leaks = scanner.scan(&session(), &events);
        let found: Vec<(&str, &str)> = leaks
            .iter()
            .map(|l| (l.field.as_str(), l.detector.as_str()))
            .collect();
        assert_eq!(
            found,
            [("body", "email"), ("body (choice 0)", "email")],
            "{leaks:?}"
        );
        assert!(!leaks[1].preview.contains("bob@example"), "{leaks:?}");
    }
}
