//! Masking: finds sensitive values with the detectors of [`detectors`] and rewrites them with
//! a [`Strategy`]. Pure: bytes in, bytes and counts out, no I/O.
//!
//! The daemon and `policy test` both call [`mask_body`], so a policy's test cases exercise the
//! code that runs on the data path.

pub mod detectors;

use std::{borrow::Cow, collections::BTreeMap, fmt::Write as _, sync::Arc};

use aho_corasick::AhoCorasick;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

pub use detectors::{Detector, Kind, Validator};

/// How a found value is rewritten (DESIGN.md "Policy files").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// `[REDACTED:EMAIL]`.
    Redact,
    /// Keeps the last 4 characters: `************1111`.
    Partial,
    /// `[EMAIL:3f9a…]`, a keyed HMAC-SHA256 (never an unsalted hash).
    Hash,
    /// A placeholder goes out; the original comes back in the response of the same session.
    Tokenize,
}

impl Strategy {
    pub const NAMES: &[&str] = &["redact", "partial", "hash", "tokenize"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "redact" => Some(Self::Redact),
            "partial" => Some(Self::Partial),
            "hash" => Some(Self::Hash),
            "tokenize" => Some(Self::Tokenize),
            _ => None,
        }
    }
}

/// A step of a `json_paths` entry: `$.messages[*].content`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    Key(String),
    Index(usize),
    Any,
}

/// A parsed `json_paths` entry. It selects the value at the path and everything below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<PathStep>);

impl JsonPath {
    /// Parses `$`, `.key`, `.*`, `[*]`, `[N]`, `["key"]` / `['key']`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix('$')
            .ok_or("a JSON path starts with `$`")?;
        let mut steps = Vec::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            match c {
                '.' => {
                    if chars.peek().is_some_and(|(_, c)| *c == '.') {
                        return Err("recursive descent `..` is not supported".into());
                    }
                    let mut key = String::new();
                    while let Some(&(_, c)) = chars.peek() {
                        if c == '.' || c == '[' {
                            break;
                        }
                        key.push(c);
                        chars.next();
                    }
                    match key.as_str() {
                        "" => return Err("empty key after `.`".into()),
                        "*" => steps.push(PathStep::Any),
                        _ => steps.push(PathStep::Key(key)),
                    }
                }
                '[' => {
                    let mut inner = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == ']' {
                            closed = true;
                            break;
                        }
                        inner.push(c);
                    }
                    if !closed {
                        return Err("unclosed `[`".into());
                    }
                    let quoted = |q: char| {
                        inner
                            .strip_prefix(q)
                            .and_then(|s| s.strip_suffix(q))
                            .map(str::to_string)
                    };
                    if inner == "*" {
                        steps.push(PathStep::Any);
                    } else if let Some(key) = quoted('"').or_else(|| quoted('\'')) {
                        steps.push(PathStep::Key(key));
                    } else if let Ok(index) = inner.parse() {
                        steps.push(PathStep::Index(index));
                    } else {
                        return Err(format!(
                            "`[{inner}]` is neither `[*]`, an index nor a quoted key"
                        ));
                    }
                }
                other => return Err(format!("unexpected `{other}`")),
            }
        }
        Ok(Self(steps))
    }

    fn selects(&self, at: &[PathStep]) -> bool {
        self.0.len() <= at.len()
            && self.0.iter().zip(at).all(|(want, have)| match want {
                PathStep::Any => true,
                _ => want == have,
            })
    }
}

/// One mask rule compiled: which detectors, where, and how.
#[derive(Debug)]
pub struct Masker {
    detectors: Vec<Arc<Detector>>,
    /// Keywords of all detectors; a detector with keywords runs only if one occurs.
    prefilter: Option<AhoCorasick>,
    /// Pattern index of `prefilter` → detector index.
    keyword_owner: Vec<usize>,
    pub strategy: Strategy,
    pub json_paths: Vec<JsonPath>,
}

/// A value found in a text: byte range and detector index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub detector: usize,
}

/// Per-session masking state: the HMAC key, counts per detector and the tokenize vault.
#[derive(Debug, Clone)]
pub struct MaskContext {
    key: Arc<[u8]>,
    pub counts: BTreeMap<String, u64>,
    /// Placeholder → original, for `tokenize`; lives only in memory for the session.
    vault: Vec<(String, String)>,
}

impl MaskContext {
    pub fn new(key: Arc<[u8]>) -> Self {
        Self {
            key,
            counts: BTreeMap::new(),
            vault: Vec::new(),
        }
    }

    /// Puts tokenized originals back into text coming back to the agent.
    pub fn restore<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.vault.is_empty() || !text.contains("[TOKEN:") {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for (placeholder, original) in &self.vault {
            out = out.replace(placeholder, original);
        }
        Cow::Owned(out)
    }
}

impl Masker {
    pub fn new(
        detectors: Vec<Arc<Detector>>,
        strategy: Strategy,
        json_paths: Vec<JsonPath>,
    ) -> Self {
        let mut keywords = Vec::new();
        let mut keyword_owner = Vec::new();
        for (index, detector) in detectors.iter().enumerate() {
            for keyword in detector.keywords {
                keywords.push(*keyword);
                keyword_owner.push(index);
            }
        }
        let prefilter = (!keywords.is_empty()).then(|| {
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(&keywords)
                .expect("keyword literals build an automaton")
        });
        Self {
            detectors,
            prefilter,
            keyword_owner,
            strategy,
            json_paths,
        }
    }

    pub fn detectors(&self) -> &[Arc<Detector>] {
        &self.detectors
    }

    /// Non-overlapping findings in `text`, leftmost first; of overlapping candidates the
    /// longest wins.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let mut wanted = vec![false; self.detectors.len()];
        for (index, detector) in self.detectors.iter().enumerate() {
            wanted[index] = detector.keywords.is_empty();
        }
        if let Some(prefilter) = &self.prefilter {
            for hit in prefilter.find_overlapping_iter(text) {
                wanted[self.keyword_owner[hit.pattern().as_usize()]] = true;
            }
        }
        let mut found = Vec::new();
        for (index, detector) in self.detectors.iter().enumerate() {
            if !wanted[index] {
                continue;
            }
            for captures in detector.regex.captures_iter(text) {
                let Some(value) = captures.get(detector.group).or_else(|| captures.get(0)) else {
                    continue;
                };
                if detector.validator.accepts(value.as_str()) {
                    found.push(Finding {
                        start: value.start(),
                        end: value.end(),
                        detector: index,
                    });
                }
            }
        }
        found.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
        let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
        for finding in found {
            if kept.last().is_none_or(|last| finding.start >= last.end) {
                kept.push(finding);
            }
        }
        kept
    }

    /// Masks every finding in `text`.
    pub fn mask_text<'a>(&self, text: &'a str, ctx: &mut MaskContext) -> Cow<'a, str> {
        let findings = self.find(text);
        if findings.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for finding in findings {
            out.push_str(&text[at..finding.start]);
            let detector = &self.detectors[finding.detector];
            let value = &text[finding.start..finding.end];
            out.push_str(&self.replacement(detector, value, ctx));
            *ctx.counts.entry(detector.name.clone()).or_default() += 1;
            at = finding.end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    fn replacement(&self, detector: &Detector, value: &str, ctx: &mut MaskContext) -> String {
        let label = detector.label();
        match self.strategy {
            Strategy::Redact => format!("[REDACTED:{label}]"),
            Strategy::Partial => {
                let count = value.chars().count();
                let keep = if count > 8 { 4 } else { 0 };
                let mut out: String = "*".repeat(count - keep);
                out.extend(value.chars().skip(count - keep));
                out
            }
            Strategy::Hash => {
                let mut mac = Hmac::<Sha256>::new_from_slice(&ctx.key)
                    .expect("HMAC accepts keys of any length");
                mac.update(detector.name.as_bytes());
                mac.update(&[0]);
                mac.update(value.as_bytes());
                let digest = mac.finalize().into_bytes();
                let mut hex = String::with_capacity(16);
                for byte in &digest[..8] {
                    let _ = write!(hex, "{byte:02x}");
                }
                format!("[{label}:{hex}]")
            }
            Strategy::Tokenize => {
                if let Some((placeholder, _)) = ctx.vault.iter().find(|(_, v)| v == value) {
                    return placeholder.clone();
                }
                let placeholder = format!("[TOKEN:{label}:{}]", ctx.vault.len() + 1);
                ctx.vault.push((placeholder.clone(), value.to_string()));
                placeholder
            }
        }
    }

    /// Masks the string values of a JSON document (object keys and numbers stay), restricted
    /// to `json_paths` when given.
    pub fn mask_json(&self, value: &mut Value, ctx: &mut MaskContext) {
        let mut at = Vec::new();
        self.walk(value, &mut at, ctx);
    }

    fn walk(&self, value: &mut Value, at: &mut Vec<PathStep>, ctx: &mut MaskContext) {
        match value {
            Value::String(text) => {
                if (self.json_paths.is_empty() || self.json_paths.iter().any(|p| p.selects(at)))
                    && let Cow::Owned(masked) = self.mask_text(text, ctx)
                {
                    *text = masked;
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter_mut().enumerate() {
                    at.push(PathStep::Index(index));
                    self.walk(item, at, ctx);
                    at.pop();
                }
            }
            Value::Object(fields) => {
                for (key, item) in fields.iter_mut() {
                    at.push(PathStep::Key(key.clone()));
                    self.walk(item, at, ctx);
                    at.pop();
                }
            }
            _ => {}
        }
    }
}

/// Applies `maskers` in order to a body. JSON bodies (by content type, or by shape when the
/// type is missing) are masked value by value and stay valid JSON; other UTF-8 bodies are
/// masked as text; binary bodies are returned unchanged. `None` means nothing was masked.
pub fn mask_body(
    maskers: &[&Masker],
    content_type: Option<&str>,
    body: &[u8],
    ctx: &mut MaskContext,
) -> Option<Vec<u8>> {
    if maskers.is_empty() {
        return None;
    }
    let json_type = content_type.is_some_and(|t| t.to_ascii_lowercase().contains("json"));
    let looks_json = content_type.is_none()
        && body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'{' | b'['));
    let before: u64 = ctx.counts.values().sum();
    if (json_type || looks_json)
        && let Ok(mut value) = serde_json::from_slice::<Value>(body)
    {
        for masker in maskers {
            masker.mask_json(&mut value, ctx);
        }
        if ctx.counts.values().sum::<u64>() == before {
            return None;
        }
        return serde_json::to_vec(&value).ok();
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut current = Cow::Borrowed(text);
    for masker in maskers {
        if let Cow::Owned(masked) = masker.mask_text(&current, ctx) {
            current = Cow::Owned(masked);
        }
    }
    match current {
        Cow::Borrowed(_) => None,
        Cow::Owned(masked) => Some(masked.into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(names: &[&str], strategy: Strategy, paths: &[&str]) -> Masker {
        let detectors = names.iter().flat_map(|n| detectors::expand(n)).collect();
        let paths = paths.iter().map(|p| JsonPath::parse(p).unwrap()).collect();
        Masker::new(detectors, strategy, paths)
    }

    fn ctx() -> MaskContext {
        MaskContext::new(Arc::from(&b"test-key"[..]))
    }

    #[test]
    fn redacts_text_and_counts() {
        let m = masker(&["email", "credit_card"], Strategy::Redact, &[]);
        let mut c = ctx();
        let out = m.mask_text("mail bob@example.com card 4111 1111 1111 1111.", &mut c);
        assert_eq!(out, "mail [REDACTED:EMAIL] card [REDACTED:CREDIT_CARD].");
        assert_eq!(c.counts["email"], 1);
        assert_eq!(c.counts["credit_card"], 1);
    }

    #[test]
    fn json_paths_restrict_and_output_stays_json() {
        let m = masker(&["email"], Strategy::Partial, &["$.messages[*].content"]);
        let body =
            br#"{"user":"a@b.io","messages":[{"role":"user","content":"to \"x@example.com\""}]}"#;
        let out = mask_body(&[&m], Some("application/json"), body, &mut ctx()).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["user"], "a@b.io");
        assert_eq!(value["messages"][0]["content"], "to \"*********.com\"");
    }

    #[test]
    fn hash_is_keyed_and_tokenize_restores() {
        let m = masker(&["email"], Strategy::Hash, &[]);
        let a = m.mask_text("a@b.io", &mut ctx()).into_owned();
        let other = MaskContext::new(Arc::from(&b"other"[..]));
        let b = m.mask_text("a@b.io", &mut other.clone()).into_owned();
        assert!(a.starts_with("[EMAIL:") && a != b);

        let m = masker(&["email"], Strategy::Tokenize, &[]);
        let mut c = ctx();
        let out = m
            .mask_text("write to a@b.io and a@b.io", &mut c)
            .into_owned();
        assert_eq!(out, "write to [TOKEN:EMAIL:1] and [TOKEN:EMAIL:1]");
        assert_eq!(c.restore("sent to [TOKEN:EMAIL:1]"), "sent to a@b.io");
    }

    #[test]
    fn json_path_syntax() {
        assert!(JsonPath::parse("$.a[*].b['c d'][2]").is_ok());
        assert!(JsonPath::parse("a.b").is_err());
        assert!(JsonPath::parse("$..a").is_err());
        assert!(JsonPath::parse("$[x]").is_err());
    }
}
