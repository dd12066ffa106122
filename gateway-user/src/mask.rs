//! Masking: finds sensitive values with the detectors of [`detectors`] and rewrites them with
//! a [`Strategy`]. Pure: bytes in, bytes and counts out, no I/O.
//!
//! The daemon and `policy test` both call [`mask_body`], so a policy's test cases exercise the
//! code that runs on the data path.

pub mod detectors;
pub mod eventstream;
pub mod json;
pub mod sse;
pub mod stream;
mod trigger;

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::{Arc, LazyLock},
};

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
    /// Where each detector's matches can start (`mask/trigger.rs`).
    triggers: trigger::Triggers,
    /// Each thread's scratch space for the detectors' searches. Shared scratch space would
    /// go through a pool whose owner flag every search reads, and with two workers masking
    /// many small values that cache line bounced (~15% of masking time).
    local: thread_local::ThreadLocal<Local>,
    pub strategy: Strategy,
    pub json_paths: Vec<JsonPath>,
    /// Bytes a stream must hold back: the longest match plus one byte of look-ahead.
    holdback: usize,
    /// The hold-back that needs no anchor found: detectors without anchors hold back their
    /// longest match, the others an anchor not fully arrived yet.
    partial_keep: usize,
    /// The rule this masker belongs to, for the session's counts per rule.
    rule: Option<String>,
}

/// One thread's scratch space for a masker's searches (see `Masker::local`).
#[derive(Debug)]
struct Local {
    searches: std::cell::RefCell<Vec<Scratch>>,
}

/// Scratch space for one detector's search.
#[derive(Debug)]
struct Scratch {
    cache: regex_automata::meta::Cache,
    captures: regex_automata::util::captures::Captures,
}

impl Detector {
    /// The leftmost match starting in `at..=span.hi`, if there is one, as (whole match,
    /// value). The search stops at `span.end`, which no match starting there passes, while
    /// look-around (`\b`) still sees the bytes beyond: it finds what a search of all of `hay`
    /// would. `anchored` (or one start left): only a match starting at `at`.
    fn find(
        &self,
        hay: &[u8],
        at: usize,
        span: &trigger::Span,
        anchored: bool,
        scratch: &mut Scratch,
    ) -> Option<((usize, usize), (usize, usize))> {
        use regex_automata::{Anchored, Input};
        let anchored = if anchored || at == span.hi {
            Anchored::Yes
        } else {
            Anchored::No
        };
        let end = span.end.max(at);
        if let Some(matcher) = self.matcher {
            // The leftmost start with a match, as the regex would find it; only starts in the
            // span are tried (the regex's later ones are dropped by the caller anyway).
            let whole = if anchored == Anchored::Yes {
                matcher(hay, at, end).map(|found| (at, found))
            } else {
                (at..=span.hi.min(end.saturating_sub(1)))
                    .find_map(|start| matcher(hay, start, end).map(|found| (start, found)))
            }?;
            return Some((whole, self.value_in(hay, whole)));
        }
        let input = Input::new(hay).span(at..end).anchored(anchored);
        // Capture groups cost a slower engine: only detectors with context whose value is
        // not found by hand ask for them.
        if self.value == detectors::Value::Group && self.search.captures_len() > 1 {
            let captures = &mut scratch.captures;
            self.search
                .search_captures_with(&mut scratch.cache, &input, captures);
            let whole = captures.get_match()?;
            let value = (1..captures.group_len())
                .rev()
                .find_map(|g| captures.get_group(g))
                .unwrap_or(whole.span());
            Some(((whole.start(), whole.end()), (value.start, value.end)))
        } else {
            let whole = self.search.search_with(&mut scratch.cache, &input)?;
            let whole = (whole.start(), whole.end());
            Some((whole, self.value_in(hay, whole)))
        }
    }

    /// The value's range in the match `whole` of `hay`, found by hand (see `Value`).
    fn value_in(&self, hay: &[u8], whole: (usize, usize)) -> (usize, usize) {
        self.value
            .locate(&hay[whole.0..whole.1])
            .map_or(whole, |(start, end)| (whole.0 + start, whole.0 + end))
    }
}

/// A value found in a text: the value's byte range (what is replaced; context such as
/// `Bearer ` is not part of it) and the detector index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub detector: usize,
}

/// A candidate match of one detector.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    match_start: usize,
    match_end: usize,
    start: usize,
    end: usize,
}

/// Per-session masking state: the HMAC key, counts per detector and the tokenize vault.
#[derive(Debug, Clone)]
pub struct MaskContext {
    key: Arc<[u8]>,
    pub counts: BTreeMap<String, u64>,
    /// Masked values per rule (`rule:NAME`).
    pub by_rule: BTreeMap<String, u64>,
    /// Placeholder → original, for `tokenize`; lives only in memory for the session.
    vault: Vec<(String, Vec<u8>)>,
    /// What masking had to fall back on (recorded with the session, never with values).
    pub notes: std::collections::BTreeSet<&'static str>,
}

impl MaskContext {
    pub fn new(key: Arc<[u8]>) -> Self {
        Self {
            key,
            counts: BTreeMap::new(),
            by_rule: BTreeMap::new(),
            vault: Vec::new(),
            notes: std::collections::BTreeSet::new(),
        }
    }

    pub fn note(&mut self, note: &'static str) {
        self.notes.insert(note);
    }

    /// The session's `masking` event: counts per detector and per rule, and the notes;
    /// `None` when nothing was masked or noted.
    pub fn summary(&self) -> Option<serde_json::Value> {
        (!self.counts.is_empty() || !self.notes.is_empty()).then(|| {
            serde_json::json!({
                "masked": self.counts,
                "by_rule": self.by_rule,
                "notes": self.notes,
            })
        })
    }

    /// Whether `tokenize` has put anything in the vault (then responses are restored).
    pub fn has_tokens(&self) -> bool {
        !self.vault.is_empty()
    }

    /// The original behind a placeholder of this session.
    pub fn original(&self, placeholder: &[u8]) -> Option<&[u8]> {
        self.vault
            .iter()
            .find(|(p, _)| p.as_bytes() == placeholder)
            .map(|(_, original)| original.as_slice())
    }

    /// The inverse of restoring, for recordings: every original of the vault in `bytes` is
    /// replaced by its placeholder again (longest originals first).
    pub fn retokenize(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let mut vault: Vec<_> = self.vault.iter().filter(|(_, o)| !o.is_empty()).collect();
        vault.sort_by_key(|(_, o)| std::cmp::Reverse(o.len()));
        for (placeholder, original) in vault {
            if memchr::memmem::find(&out, original).is_none() {
                continue;
            }
            let mut next = Vec::with_capacity(out.len());
            let mut at = 0;
            for i in memchr::memmem::find_iter(&out, original) {
                if i < at {
                    continue;
                }
                next.extend_from_slice(&out[at..i]);
                next.extend_from_slice(placeholder.as_bytes());
                at = i + original.len();
            }
            next.extend_from_slice(&out[at..]);
            out = next;
        }
        out
    }

    /// Puts tokenized originals back into text coming back to the agent.
    pub fn restore<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match restore_bytes(text.as_bytes(), self) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }
}

/// `[TOKEN:EMAIL:12]`: what `tokenize` writes, and what comes back to be restored.
pub static PLACEHOLDER: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
    regex::bytes::Regex::new(r"(?-u)\[TOKEN:[A-Z0-9_]{1,64}:[0-9]{1,9}\]")
        .expect("the placeholder pattern compiles")
});

/// Longest placeholder plus one byte.
pub const PLACEHOLDER_HOLDBACK: usize = 82;

/// Replaces this session's placeholders in `text` by their originals.
pub fn restore_bytes<'a>(text: &'a [u8], ctx: &MaskContext) -> Cow<'a, [u8]> {
    if !ctx.has_tokens() || memchr::memmem::find(text, b"[TOKEN:").is_none() {
        return Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    for found in PLACEHOLDER.find_iter(text) {
        if let Some(original) = ctx.original(found.as_bytes()) {
            out.extend_from_slice(&text[at..found.start()]);
            out.extend_from_slice(original);
            at = found.end();
        }
    }
    if at == 0 {
        return Cow::Borrowed(text);
    }
    out.extend_from_slice(&text[at..]);
    Cow::Owned(out)
}

/// Adds `n` to `key`'s count, allocating the key only the first time.
fn count(counts: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    match counts.get_mut(key) {
        Some(total) => *total += n,
        None => {
            counts.insert(key.to_string(), n);
        }
    }
}

/// For a detector whose matches start at word boundaries: how many boundaries of a span are
/// tried by anchored searches first, and again after a rejected match, before one unanchored
/// search takes over (see `Masker::candidate`). Measured on the dense corpus: a match nearly
/// always starts at the first boundary of its span (trying 2–4 first was slower, the chains
/// of digits of a card number being no SSN at any of theirs), while after a rejection in a
/// key name the next boundaries are few.
const FIRST_AT_BOUNDARIES: usize = 1;
const RETRY_AT_BOUNDARIES: usize = 4;

impl Masker {
    pub fn new(
        detectors: Vec<Arc<Detector>>,
        strategy: Strategy,
        json_paths: Vec<JsonPath>,
    ) -> Self {
        let triggers = trigger::Triggers::new(&detectors);
        let holdback = detectors.iter().map(|d| d.max_len).max().unwrap_or(0) + 1;
        let partial_keep = detectors
            .iter()
            .map(|d| {
                let need = d.max_len + 1;
                if d.anchors.is_empty() {
                    return need;
                }
                d.anchors
                    .iter()
                    .map(|&(anchor, before)| anchor.len() - 1 + usize::from(before))
                    .max()
                    .unwrap_or(0)
                    .min(need)
            })
            .max()
            .unwrap_or(0);
        Self {
            partial_keep,
            detectors,
            triggers,
            local: thread_local::ThreadLocal::new(),
            strategy,
            json_paths,
            holdback,
            rule: None,
        }
    }

    /// Names the rule this masker belongs to (its counts go under `rule:NAME` too).
    #[must_use]
    pub fn named(mut self, rule: &str) -> Self {
        self.rule = Some(format!("rule:{rule}"));
        self
    }

    pub fn detectors(&self) -> &[Arc<Detector>] {
        &self.detectors
    }

    /// How many trailing bytes of a stream's window must wait for more input, given the
    /// window's `spans`: for each detector, from the earliest position where a match could
    /// still be in progress. That is the detector's longest match (plus a byte of
    /// look-ahead), or, for detectors with anchors, only as far back as an anchor in the tail
    /// (or a part of one at the end) allows: no match can start before that without being
    /// complete already. The trigger pass finds those anchors, so this costs no search of
    /// its own (a search of the tail per push was 5% of masking clean text in 16 KiB chunks).
    fn holdback(&self, spans: &trigger::Spans) -> usize {
        spans
            .anchors_keep()
            .max(self.partial_keep)
            .min(self.holdback)
    }

    /// Scans a stream's window `hay[from..]` (text before `from` is context): all of it when
    /// `last`, else all but its [`Self::holdback`], with `known` spans of the window if a
    /// pass already found them. Returns the offset up to which the text is settled (`None`:
    /// all of the window must wait for more input) and the spans of the window, if any pass
    /// was needed.
    pub(crate) fn scan_window(
        &self,
        hay: &[u8],
        from: usize,
        last: bool,
        known: Option<trigger::Spans>,
        report: &mut impl FnMut(Finding),
    ) -> (Option<usize>, Option<trigger::Spans>) {
        let window = hay.len() - from;
        // No window shorter than the least hold-back settles anything: no pass for it (a
        // stream of LLM tokens pushes a few bytes at a time).
        if !last && window <= self.partial_keep.min(self.holdback) {
            return (None, None);
        }
        let spans =
            known.unwrap_or_else(|| self.triggers.stream_spans(self.detectors.len(), hay, from));
        let settle = if last {
            hay.len()
        } else {
            let keep = self.holdback(&spans);
            if window <= keep {
                return (None, Some(spans));
            }
            hay.len() - keep
        };
        let settled = self.scan_in(hay, from, settle, &spans, report);
        (Some(settled), Some(spans))
    }

    /// The longest hold-back a stream may ask for.
    pub fn max_holdback(&self) -> usize {
        self.holdback
    }

    /// This thread's scratch space for each detector's search.
    fn local(&self) -> &Local {
        self.local.get_or(|| Local {
            searches: std::cell::RefCell::new(
                self.detectors
                    .iter()
                    .map(|d| Scratch {
                        cache: d.search.create_cache(),
                        captures: d.search.create_captures(),
                    })
                    .collect(),
            ),
        })
    }

    /// The leftmost valid match of detector `index` starting at or after `from`, searched only
    /// in the detector's `spans` from `*cursor` on (spans wholly before `from` are passed for
    /// good: `from` only grows during a scan).
    fn candidate(
        &self,
        index: usize,
        hay: &[u8],
        from: usize,
        spans: &[trigger::Span],
        cursor: &mut usize,
        scratch: &mut Scratch,
    ) -> Option<Candidate> {
        let detector = &self.detectors[index];
        while let Some(span) = spans.get(*cursor) {
            if span.hi < from {
                *cursor += 1;
                continue;
            }
            let mut at = span.lo.max(from);
            // Every match starting in the span ends by `span.end`.
            if detector.min_digits > 0
                && hay[at..span.end]
                    .iter()
                    .filter(|b| b.is_ascii_digit())
                    .count()
                    < detector.min_digits
            {
                *cursor += 1;
                continue;
            }
            // A detector whose matches start at a word boundary is searched anchored at the
            // span's first boundary, and after a rejected match at the next few (then by one
            // unanchored search again). An anchored search needs no reverse pass for the
            // start and fails within a few bytes where no match starts, while an unanchored
            // one that finds nothing scans on to `span.end`: after a rejected value in a key
            // name such as `AWS_ACCESS_KEY_ID=…`, hundreds of bytes. Both find the leftmost
            // match (`retries_at_word_boundaries_find_what_plain_retries_find`).
            let mut boundaries = if detector.word_start {
                FIRST_AT_BOUNDARIES
            } else {
                0
            };
            while at <= span.hi {
                let anchored = boundaries > 0;
                if anchored {
                    let Some(next) = (at..=span.hi).find(|&i| detectors::boundary(hay, i)) else {
                        break;
                    };
                    at = next;
                    boundaries -= 1;
                }
                let Some((whole, value)) = detector.find(hay, at, span, anchored, scratch) else {
                    if anchored {
                        // No match starts at this boundary; one may at a later place.
                        at += 1;
                        continue;
                    }
                    break;
                };
                if whole.0 > span.hi {
                    break;
                }
                if value.1 > value.0 && detector.validator.accepts_in(hay, value.0, value.1) {
                    return Some(Candidate {
                        match_start: whole.0,
                        match_end: whole.1,
                        start: value.0,
                        end: value.1,
                    });
                }
                // A rejected match: the next one may start inside it.
                at = whole.0 + 1;
                if detector.word_start {
                    boundaries = RETRY_AT_BOUNDARIES;
                }
            }
            *cursor += 1;
        }
        None
    }

    /// Scans `hay[from..]` and reports each finding whose match starts before `settle`:
    /// the leftmost value first, the longest on a tie, then the detector listed first (so a
    /// vendor-prefixed key beats `generic_secret`), and every detector resumes after the end
    /// of the match kept. Returns the offset up to which the text is settled (no
    /// later input can change anything before it). Text before `from` is context only.
    ///
    /// The findings depend only on the bytes around each position, never on where `hay`
    /// was cut, which is what makes the streaming masker chunking-invariant.
    fn scan(
        &self,
        hay: &[u8],
        from: usize,
        settle: usize,
        report: &mut impl FnMut(Finding),
    ) -> usize {
        let spans = self.triggers.spans(self.detectors.len(), hay, from);
        self.scan_in(hay, from, settle, &spans, report)
    }

    /// [`Self::scan`] with the spans already found.
    fn scan_in(
        &self,
        hay: &[u8],
        from: usize,
        settle: usize,
        spans: &trigger::Spans,
        report: &mut impl FnMut(Finding),
    ) -> usize {
        if spans.is_empty() {
            return from.max(settle);
        }
        // Per detector: its candidate (none yet; none left, from the start for a detector
        // without spans; one) and the first of its spans not passed for good. The loop below
        // runs once per finding over every detector, so it reads the spans only to search.
        let mut cache: Vec<(Option<Option<Candidate>>, usize)> = (0..self.detectors.len())
            .map(|index| (spans.of(index).is_empty().then_some(None), 0))
            .collect();
        let mut scratch = self.local().searches.borrow_mut();
        let mut pos = from;
        loop {
            let mut best: Option<(usize, Candidate)> = None;
            for (index, (slot, cursor)) in cache.iter_mut().enumerate() {
                let stale = match slot {
                    None => true,
                    Some(Some(c)) => c.match_start < pos,
                    Some(None) => false,
                };
                if stale {
                    let mine = spans.of(index);
                    *slot =
                        Some(self.candidate(index, hay, pos, mine, cursor, &mut scratch[index]));
                }
                if let Some(Some(c)) = slot {
                    let better = best.is_none_or(|(_, b)| {
                        (c.start, std::cmp::Reverse(c.end - c.start))
                            < (b.start, std::cmp::Reverse(b.end - b.start))
                    });
                    if better {
                        best = Some((index, *c));
                    }
                }
            }
            match best {
                Some((detector, c)) if c.match_start < settle => {
                    report(Finding {
                        start: c.start,
                        end: c.end,
                        detector,
                    });
                    pos = c.match_end;
                }
                _ => {
                    // Keep every live candidate for the next scan: none starts before this.
                    let live = cache
                        .iter()
                        .filter_map(|(slot, _)| slot.flatten())
                        .map(|c| c.match_start)
                        .min()
                        .unwrap_or(settle);
                    return pos.max(settle.min(live));
                }
            }
        }
    }

    /// Where a match may start in `hay`, as `lo..=hi` ranges sorted by `lo`: a match found
    /// in any piece of `hay` (a JSON string value, scanned on its own) starts inside one of
    /// them. Every match holds its trigger (an anchor, a shape of digits, …), and a trigger
    /// inside a piece is found where that piece stands in the whole.
    fn trigger_starts(&self, hay: &[u8]) -> (trigger::Spans, Vec<(usize, usize)>) {
        let spans = self.triggers.spans(self.detectors.len(), hay, 0);
        let mut starts: Vec<(usize, usize)> = spans.starts().collect();
        starts.sort_unstable();
        (spans, starts)
    }

    /// Masks `hay[piece]` as [`Self::mask_bytes`] masks it on its own, with `spans`, those of
    /// a trigger pass over all of `hay` (`cursors`: where the previous piece left each
    /// detector's; pieces come in order). Each span clipped to the piece holds every start
    /// the piece's own pass would give (a trigger inside the piece is found where it stands,
    /// and no trigger reaches across the quotes around a JSON string), so the findings are
    /// the same without a second pass over the piece's bytes.
    fn mask_piece<'a>(
        &self,
        hay: &'a [u8],
        piece: std::ops::Range<usize>,
        spans: &trigger::Spans,
        cursors: &mut [usize],
        ctx: &mut MaskContext,
    ) -> Cow<'a, [u8]> {
        let text = &hay[piece.clone()];
        let spans = spans.clipped(piece, cursors);
        let mut findings = Vec::new();
        self.scan_in(text, 0, text.len(), &spans, &mut |f| findings.push(f));
        self.replaced(text, &findings, ctx)
    }

    /// `text` with every one of `findings` replaced.
    fn replaced<'a>(
        &self,
        text: &'a [u8],
        findings: &[Finding],
        ctx: &mut MaskContext,
    ) -> Cow<'a, [u8]> {
        if findings.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = Vec::with_capacity(text.len());
        let at = self.apply(text, 0, findings, ctx, &mut out);
        out.extend_from_slice(&text[at..]);
        Cow::Owned(out)
    }

    /// Findings in the whole of `text`.
    pub fn find(&self, text: &[u8]) -> Vec<Finding> {
        let mut found = Vec::new();
        self.scan(text, 0, text.len(), &mut |f| found.push(f));
        found
    }

    /// Masks every finding in `text` (any bytes; invalid UTF-8 passes through).
    pub fn mask_bytes<'a>(&self, text: &'a [u8], ctx: &mut MaskContext) -> Cow<'a, [u8]> {
        let findings = self.find(text);
        self.replaced(text, &findings, ctx)
    }

    /// Writes `text[from..]` up to the last finding with each finding replaced; returns where
    /// it stopped.
    fn apply(
        &self,
        text: &[u8],
        from: usize,
        findings: &[Finding],
        ctx: &mut MaskContext,
        out: &mut Vec<u8>,
    ) -> usize {
        let mut at = from;
        // Counted per detector here and added to the session's map once: a map lookup per
        // finding compared detector names, 4% of masking dense text.
        let detectors = if findings.is_empty() {
            0
        } else {
            self.detectors.len()
        };
        let mut tally = vec![0; detectors];
        for finding in findings {
            out.extend_from_slice(&text[at..finding.start]);
            let detector = &self.detectors[finding.detector];
            let value = &text[finding.start..finding.end];
            if self.strategy == Strategy::Redact {
                out.extend_from_slice(b"[REDACTED:");
                out.extend_from_slice(detector.label.as_bytes());
                out.push(b']');
            } else {
                out.extend_from_slice(self.replacement(detector, value, ctx).as_bytes());
            }
            tally[finding.detector] += 1;
            at = finding.end;
        }
        for (detector, n) in self.detectors.iter().zip(tally) {
            if n > 0 {
                count(&mut ctx.counts, &detector.name, n);
            }
        }
        if let Some(rule) = self.rule.as_ref().filter(|_| !findings.is_empty()) {
            count(&mut ctx.by_rule, rule, findings.len() as u64);
        }
        at
    }

    /// Masks every finding in `text`.
    /// `text` with every finding replaced by `[REDACTED:LABEL]`, whatever the strategy, and
    /// nothing counted: for values that are only recorded (headers, request lines), where a
    /// token or a hash would stand for nothing the agent or upstream saw.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let findings = self.find(text.as_bytes());
        if findings.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings {
            // Findings are byte ranges of UTF-8 text; a range cut inside a character (a
            // byte-level detector) widens to the character boundaries around it.
            let mut start = f.start;
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = f.end;
            while !text.is_char_boundary(end) {
                end += 1;
            }
            if start < at {
                continue;
            }
            out.push_str(&text[at..start]);
            out.push_str("[REDACTED:");
            out.push_str(&self.detectors[f.detector].label);
            out.push(']');
            at = end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    pub fn mask_text<'a>(&self, text: &'a str, ctx: &mut MaskContext) -> Cow<'a, str> {
        match self.mask_bytes(text.as_bytes(), ctx) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }),
        }
    }

    fn replacement(&self, detector: &Detector, value: &[u8], ctx: &mut MaskContext) -> String {
        let label = &detector.label;
        match self.strategy {
            Strategy::Redact => format!("[REDACTED:{label}]"),
            Strategy::Partial => {
                let value = String::from_utf8_lossy(value);
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
                mac.update(value);
                let digest = mac.finalize().into_bytes();
                format!("[{label}:{}]", crate::hex(&digest[..8]))
            }
            Strategy::Tokenize => {
                if let Some((placeholder, _)) = ctx.vault.iter().find(|(_, v)| v == value) {
                    return placeholder.clone();
                }
                let placeholder = format!("[TOKEN:{label}:{}]", ctx.vault.len() + 1);
                ctx.vault.push((placeholder.clone(), value.to_vec()));
                placeholder
            }
        }
    }

    /// Masks the string values of a JSON document (object keys and numbers stay), restricted
    /// to `json_paths` when given.
    pub fn mask_json(&self, value: &mut Value, ctx: &mut MaskContext) {
        if self.json_paths.is_empty() {
            self.walk_all(value, ctx);
        } else {
            let mut at = Vec::new();
            self.walk(value, &mut at, ctx);
        }
    }

    /// [`Masker::walk`] without `json_paths`: every string, no path kept (no key copies).
    fn walk_all(&self, value: &mut Value, ctx: &mut MaskContext) {
        match value {
            Value::String(text) => {
                if let Cow::Owned(masked) = self.mask_text(text, ctx) {
                    *text = masked;
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.walk_all(item, ctx);
                }
            }
            Value::Object(fields) => {
                for item in fields.values_mut() {
                    self.walk_all(item, ctx);
                }
            }
            _ => {}
        }
    }

    /// Whether `json_paths` selects the value at `at` (no paths: everything).
    pub fn selects(&self, at: &[PathStep]) -> bool {
        self.json_paths.is_empty() || self.json_paths.iter().any(|p| p.selects(at))
    }

    fn walk(&self, value: &mut Value, at: &mut Vec<PathStep>, ctx: &mut MaskContext) {
        match value {
            Value::String(text) => {
                if self.selects(at)
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

/// Masks a whole body with `steps` in order. JSON bodies (by content type, or by shape when
/// the type is missing) are masked value by value and stay valid JSON (placeholders are
/// restored inside their strings); a body that claims to be JSON and does not parse is masked
/// as text, and the context notes it. Other bodies are masked as bytes (invalid UTF-8 passes
/// through untouched). `None` means nothing changed.
pub fn mask_body(
    steps: &[stream::Step],
    content_type: Option<&str>,
    body: &[u8],
    ctx: &mut MaskContext,
) -> Option<Vec<u8>> {
    if steps.is_empty() {
        return None;
    }
    // A stream read whole (a `policy test` case) is masked as the daemon masks it streaming.
    let essence = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    let events = match essence.as_deref() {
        Some("text/event-stream") => Some(sse::SseMasker::new(steps.to_vec())),
        Some(essence) if sse::is_ndjson_type(essence) => {
            Some(sse::SseMasker::ndjson(steps.to_vec()))
        }
        _ => None,
    };
    if let Some(mut events) = events {
        let mut out = events.push(body, ctx);
        out.extend(events.finish(ctx));
        return (out != body).then_some(out);
    }
    let json_type = content_type.is_some_and(is_json_type);
    let looks_json = content_type.is_none()
        && body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'{' | b'['));
    if json_type || looks_json {
        if is_chunk_array(body)
            && let Some(masked) = mask_chunk_array(steps, body, ctx)
        {
            return masked;
        }
        if let Some(masked) = mask_json_in_place(steps, body, ctx, true) {
            return masked;
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(mut value) => {
                let before: u64 = ctx.counts.values().sum();
                let mut restored = false;
                for step in steps {
                    match step {
                        stream::Step::Mask(masker) => masker.mask_json(&mut value, ctx),
                        stream::Step::Restore => {
                            restored = true;
                            sse::restore_json(&mut value, ctx);
                        }
                    }
                }
                let masked = ctx.counts.values().sum::<u64>() != before;
                // A masked answer's token log probabilities would repeat what was masked,
                // a token at a time.
                if masked && sse::strip_token_logprobs(&mut value) {
                    ctx.note(sse::LOGPROBS_NOTE);
                }
                if !restored && !masked {
                    return None;
                }
                return serde_json::to_vec(&value).ok();
            }
            Err(_) if json_type => ctx.note("json body did not parse: masked as text"),
            Err(_) => {}
        }
    }
    let mut text = stream::StreamMasker::new(steps.iter().cloned());
    let mut out = text.push(body, ctx);
    out.extend(text.finish(ctx));
    (out != body).then_some(out)
}

/// Whether a JSON body is Gemini's `streamGenerateContent` answer without `alt=sse`: one
/// array of response chunks (`[{"candidates": …`), the text spread over its elements as over
/// the events of a stream. Looks at the first key only, so other documents pay nothing.
pub fn is_chunk_array(body: &[u8]) -> bool {
    let Some(rest) = body.trim_ascii_start().strip_prefix(b"[") else {
        return false;
    };
    let Some(rest) = rest.trim_ascii_start().strip_prefix(b"{") else {
        return false;
    };
    rest.trim_ascii_start().starts_with(b"\"candidates\"")
}

/// Masks an array of LLM response chunks (see [`is_chunk_array`]) as the stream it was: each
/// element is an event of the SSE masker, so a value split over elements is found. `None`
/// when the body is not such an array after all; `Some(None)` when nothing changed.
#[expect(
    clippy::option_option,
    reason = "\"not applicable\" differs from \"unchanged\""
)]
fn mask_chunk_array(
    steps: &[stream::Step],
    body: &[u8],
    ctx: &mut MaskContext,
) -> Option<Option<Vec<u8>>> {
    let chunks: Vec<Value> = serde_json::from_slice(body).ok()?;
    let (counts, notes) = (ctx.counts.values().sum::<u64>(), ctx.notes.len());
    let mut events = sse::SseMasker::ndjson(steps.to_vec());
    let mut lines = Vec::with_capacity(body.len() + 64);
    for chunk in &chunks {
        let mut line = serde_json::to_vec(chunk).ok()?;
        line.push(b'\n');
        lines.extend(events.push(&line, ctx));
    }
    lines.extend(events.finish(ctx));
    let restores = steps.iter().any(|s| matches!(s, stream::Step::Restore));
    if !restores && ctx.counts.values().sum::<u64>() == counts && ctx.notes.len() == notes {
        return Some(None);
    }
    let mut out = Vec::with_capacity(lines.len() + 2);
    out.push(b'[');
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(line);
    }
    out.push(b']');
    Some(Some(out))
}

/// [`mask_body`] for a JSON body when every step masks without `json_paths`: each string
/// value is masked where it stands, and the rest of the document (keys, numbers, layout) is
/// copied as it came, without building a tree. `None` when this does not apply (other steps,
/// or a body that is not valid JSON); `Some(None)` when nothing changed.
#[expect(
    clippy::option_option,
    reason = "\"not applicable\" differs from \"unchanged\""
)]
fn mask_json_in_place(
    steps: &[stream::Step],
    body: &[u8],
    ctx: &mut MaskContext,
    prefilter: bool,
) -> Option<Option<Vec<u8>>> {
    let maskers: Vec<&Masker> = steps
        .iter()
        .map(|step| match step {
            stream::Step::Mask(masker) if masker.json_paths.is_empty() => Some(&**masker),
            _ => None,
        })
        .collect::<Option<_>>()?;
    // A JSON document is UTF-8. Checked once here (mostly ASCII: the fast path), a value's
    // text is a slice of it.
    let doc = std::str::from_utf8(body).ok()?;
    // Checking the document's grammar also gives where its string values are.
    let (strings, logprobs) = json::scan(body)?;
    if logprobs {
        return None; // read as a tree by `mask_body`, which removes token log probabilities
    }
    // One trigger pass over the whole document instead of one per string: a string value
    // (without escapes, so its bytes are its text) is masked only when a trigger falls in
    // it; any other is one no masker would change.
    let (spans, triggers): (Vec<trigger::Spans>, Vec<Vec<(usize, usize)>>) = if prefilter {
        maskers.iter().map(|m| m.trigger_starts(body)).unzip()
    } else {
        (Vec::new(), Vec::new())
    };
    let mut cursors = vec![0; triggers.len()];
    // Each masker's place in its spans, per detector (see `Masker::mask_piece`).
    let mut span_cursors: Vec<Vec<usize>> =
        maskers.iter().map(|m| vec![0; m.detectors.len()]).collect();
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    for (open, close, escaped) in strings {
        let at = close + 1;
        if prefilter && !escaped && !triggered(&triggers, &mut cursors, open + 1..close) {
            continue;
        }
        let original: Cow<'_, str> = if escaped {
            Cow::Owned(serde_json::from_str(doc.get(open..at)?).ok()?)
        } else {
            // The quotes are ASCII, so they are character boundaries.
            Cow::Borrowed(doc.get(open + 1..close)?)
        };
        let mut text = original;
        let mut changed = false;
        for (i, masker) in maskers.iter().enumerate() {
            let masked = if prefilter && !escaped && !changed {
                // The value's bytes are the document's: the document's spans serve.
                match masker.mask_piece(body, open + 1..close, &spans[i], &mut span_cursors[i], ctx)
                {
                    Cow::Borrowed(_) => None,
                    Cow::Owned(bytes) => Some(
                        String::from_utf8(bytes)
                            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    ),
                }
            } else {
                match masker.mask_text(&text, ctx) {
                    Cow::Borrowed(_) => None,
                    Cow::Owned(masked) => Some(masked),
                }
            };
            if let Some(masked) = masked {
                text = Cow::Owned(masked);
                changed = true;
            }
        }
        if changed {
            let out = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 64));
            out.extend_from_slice(&body[copied..open]);
            serde_json::to_writer(&mut *out, &*text).ok()?;
            copied = at;
        }
    }
    Some(out.map(|mut out| {
        out.extend_from_slice(&body[copied..]);
        out
    }))
}

/// Whether a trigger of any masker may start inside `piece`. Pieces come in order of
/// position, so each masker's sorted ranges are walked forward once (`cursors`): a range
/// ending before this piece ends before every later one too.
fn triggered(
    triggers: &[Vec<(usize, usize)>],
    cursors: &mut [usize],
    piece: std::ops::Range<usize>,
) -> bool {
    let mut hit = false;
    for (starts, cursor) in triggers.iter().zip(cursors.iter_mut()) {
        while starts.get(*cursor).is_some_and(|&(_, hi)| hi < piece.start) {
            *cursor += 1;
        }
        // The range at the cursor reaches the piece (or lies past it): the scan stops there
        // or soon after.
        hit = hit
            || starts[*cursor..]
                .iter()
                .take_while(|&&(lo, _)| lo < piece.end)
                .any(|&(_, hi)| hi >= piece.start);
    }
    hit
}

/// `application/json`, `application/problem+json`, `text/json`, …
pub fn is_json_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/json")
        || essence.to_ascii_lowercase().ends_with("+json")
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
    fn redact_for_the_record_ignores_the_strategy_and_counts_nothing() {
        let m = masker(&["email"], Strategy::Tokenize, &[]);
        assert_eq!(
            m.redact("/users?contact=bob@example.com&x=1"),
            "/users?contact=[REDACTED:EMAIL]&x=1"
        );
        assert!(matches!(m.redact("nothing here"), Cow::Borrowed(_)));
        // Multi-byte text around a value stays intact.
        assert_eq!(m.redact("é bob@example.com ü"), "é [REDACTED:EMAIL] ü");
    }

    #[test]
    fn json_paths_restrict_and_output_stays_json() {
        let m = masker(&["email"], Strategy::Partial, &["$.messages[*].content"]);
        let body =
            br#"{"user":"a@b.io","messages":[{"role":"user","content":"to \"x@example.com\""}]}"#;
        let steps = [stream::Step::Mask(Arc::new(m))];
        let out = mask_body(&steps, Some("application/json"), body, &mut ctx()).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["user"], "a@b.io");
        assert_eq!(value["messages"][0]["content"], "to \"*********.com\"");
    }

    /// A completion's token log probabilities repeat its text a token at a time, where no
    /// detector sees a value: when a value was masked they go, and the session says so.
    /// Numbers under a `logprobs` key that name no token stay.
    #[test]
    fn token_logprobs_leave_a_masked_json_answer() {
        let m = masker(&["credit_card"], Strategy::Redact, &[]);
        let steps = [stream::Step::Mask(Arc::new(m))];
        let tokens: Vec<Value> = ["4111", " 1111", " 1111", " 1111"]
            .iter()
            .map(|t| {
                serde_json::json!({"token": t, "logprob": -0.5, "bytes": t.as_bytes(),
                "top_logprobs": [{"token": t, "logprob": -0.5}]})
            })
            .collect();
        let body = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant",
            "content": "4111 1111 1111 1111"}, "logprobs": {"content": tokens}}]})
        .to_string();
        let mut c = ctx();
        let out = mask_body(&steps, Some("application/json"), body.as_bytes(), &mut c).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value["choices"][0]["message"]["content"],
            "[REDACTED:CREDIT_CARD]"
        );
        assert_eq!(value["choices"][0]["logprobs"], Value::Null);
        assert!(!String::from_utf8(out).unwrap().contains("1111"));
        assert!(c.notes.contains(sse::LOGPROBS_NOTE), "{:?}", c.notes);
        // Nothing masked: the tokens are the text, and hold nothing either; they stay.
        let plain = body.replace("4111 1111 1111 1111", "hello");
        assert!(
            mask_body(
                &steps,
                Some("application/json"),
                plain.as_bytes(),
                &mut ctx()
            )
            .is_none()
        );
        let scores = br#"{"label": "spam", "logprobs": [-0.1, -2.3]}"#;
        assert!(mask_body(&steps, Some("application/json"), scores, &mut ctx()).is_none());
    }

    /// Gemini's stream without `alt=sse` is one JSON array of chunks: masked as the stream it
    /// is, a value split over elements found, the array still an array of the same chunks.
    #[test]
    fn a_json_array_of_stream_chunks_is_masked_as_a_stream() {
        let m = masker(&["email", "credit_card"], Strategy::Redact, &[]);
        let steps = [stream::Step::Mask(Arc::new(m))];
        let chunk = |text: &str, finish: bool| {
            let mut v = serde_json::json!({"candidates": [{"content": {"parts": [{"text": text}],
                "role": "model"}, "index": 0}]});
            if finish {
                v["candidates"][0]["finishReason"] = "STOP".into();
            }
            v
        };
        let pieces = ["mail bob@exa", "mple.com, pay 4111 1111 1111 111", "1."];
        let chunks: Vec<Value> = pieces
            .iter()
            .enumerate()
            .map(|(i, t)| chunk(t, i == pieces.len() - 1))
            .collect();
        let body = serde_json::to_string_pretty(&chunks).unwrap();
        assert!(is_chunk_array(body.as_bytes()));
        let mut c = ctx();
        let out = mask_body(&steps, Some("application/json"), body.as_bytes(), &mut c).unwrap();
        let back: Vec<Value> = serde_json::from_slice(&out).expect("still a JSON array");
        let text: String = back
            .iter()
            .filter_map(|v| v["candidates"][0]["content"]["parts"][0]["text"].as_str())
            .collect();
        assert_eq!(text, "mail [REDACTED:EMAIL], pay [REDACTED:CREDIT_CARD].");
        assert_eq!(back.len(), 3);
        assert_eq!(back[2]["candidates"][0]["finishReason"], "STOP");
        // Nothing to mask: left as it came. Other arrays are not looked at as streams.
        let clean = body.replace("bob@exa", "bob").replace("4111", "x");
        assert!(
            mask_body(
                &steps,
                Some("application/json"),
                clean.as_bytes(),
                &mut ctx()
            )
            .is_none()
        );
        assert!(!is_chunk_array(br#"[{"id": 1, "candidates": []}]"#));
        assert!(!is_chunk_array(br#"{"candidates": []}"#));
    }

    #[test]
    fn json_masked_in_place_equals_the_tree_walk() {
        let m = Arc::new(masker(&["pii", "secrets"], Strategy::Redact, &[]));
        let steps = [stream::Step::Mask(Arc::clone(&m))];
        let body = br#"{ "a@b.io" : "mail \"x@example.com\"\n",
            "n": [1.50, -2e3, true, null, "card 4111 1111 1111 1111", {"k": "\u0041KIAIOSFODNN7EXAMPLE"}],
            "plain": "nothing here", "esc": "tab\tonly" }"#;
        let out = mask_body(&steps, Some("application/json"), body, &mut ctx()).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        // Keys, numbers and layout stay as they came; only masked strings are rewritten.
        assert!(text.starts_with(r#"{ "a@b.io" : "mail \"[REDACTED:EMAIL]\"\n","#));
        assert!(text.contains("[1.50, -2e3, true, null,"));
        assert!(text.contains(r#""plain": "nothing here", "esc": "tab\tonly" }"#));
        // The same values as masking the parsed tree.
        let mut tree: Value = serde_json::from_slice(body).unwrap();
        m.mask_json(&mut tree, &mut ctx());
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), tree);
        // Unchanged: nothing to write. Not JSON: masked as text.
        assert!(mask_body(&steps, Some("application/json"), br#"{"a": 1}"#, &mut ctx()).is_none());
        let mut c = ctx();
        let out = mask_body(
            &steps,
            Some("application/json"),
            b"{\"a\": \"b@c.io",
            &mut c,
        );
        assert_eq!(out.unwrap(), b"{\"a\": \"[REDACTED:EMAIL]");
        assert!(c.notes.contains("json body did not parse: masked as text"));
    }

    /// The spans of one trigger pass over the document serve each triggered value: custom
    /// (whole-window) and built-in detectors, empty values, and a second rule masking what
    /// the first one left.
    #[test]
    fn document_spans_serve_each_value_as_its_own_pass_would() {
        let custom = detectors::Detector::custom(
            "emp_id",
            r"(?-u)\bEMP-\d{6}\b",
            detectors::Validator::None,
        )
        .unwrap();
        let first = Arc::new(masker(&["pii", "secrets"], Strategy::Redact, &[]));
        let second = Arc::new(Masker::new(
            vec![Arc::new(custom)],
            Strategy::Redact,
            Vec::new(),
        ));
        let steps = [
            stream::Step::Mask(Arc::clone(&first)),
            stream::Step::Mask(Arc::clone(&second)),
        ];
        let body = br#"{"": "", "id": "EMP-123456", "e": "", "k": "x@example.com EMP-654321",
            "n": ["4111 1111 1111 1111", "", "EMP-1", "key=EMP-000001"], "m": "00:1a:2b:3c:4d:5e"}"#;
        let out = mask_body(&steps, Some("application/json"), body, &mut ctx()).unwrap();
        let mut tree: Value = serde_json::from_slice(body).unwrap();
        first.mask_json(&mut tree, &mut ctx());
        second.mask_json(&mut tree, &mut ctx());
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), tree);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(r#""[REDACTED:EMAIL] [REDACTED:EMP_ID]""#),
            "{text}"
        );
        assert!(text.contains(r#""id": "[REDACTED:EMP_ID]""#), "{text}");
        assert!(text.contains(r#""m": "[REDACTED:MAC]""#), "{text}");
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

    /// A stream read whole is masked per event, as the daemon masks it streaming: a value
    /// split over two events is found (as text it would not be).
    #[test]
    fn a_stream_read_whole_is_masked_per_event() {
        let steps = [stream::Step::Mask(Arc::new(masker(
            &["email"],
            Strategy::Redact,
            &[],
        )))];
        let chunk = |text: &str| {
            let v = serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]});
            format!("data: {v}\n\n")
        };
        let sse = format!(
            "{}{}data: [DONE]\n\n",
            chunk("mail bob@exa"),
            chunk("mple.com")
        );
        let ollama = concat!(
            r#"{"message":{"role":"assistant","content":"mail bob@exa"},"done":false}"#,
            "\n",
            r#"{"message":{"role":"assistant","content":"mple.com"},"done":true}"#,
            "\n"
        );
        for (content_type, body) in [
            ("text/event-stream; charset=utf-8", sse.as_str()),
            ("application/x-ndjson", ollama),
        ] {
            let mut c = ctx();
            let out = mask_body(&steps, Some(content_type), body.as_bytes(), &mut c).unwrap();
            let out = String::from_utf8(out).unwrap();
            assert!(
                out.contains("[REDACTED:EMAIL]") && !out.contains("exa"),
                "{out}"
            );
            assert_eq!(c.counts["email"], 1, "{content_type}");
        }
    }

    #[test]
    fn json_path_syntax() {
        assert!(JsonPath::parse("$.a[*].b['c d'][2]").is_ok());
        assert!(JsonPath::parse("a.b").is_err());
        assert!(JsonPath::parse("$..a").is_err());
        assert!(JsonPath::parse("$[x]").is_err());
    }
}
