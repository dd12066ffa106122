//! Streaming masking: an incremental masker over chunks of a body.
//!
//! Each stage keeps back only the bytes a match still in progress could need (the longest
//! match of its detectors, or less when matches start with a literal that is absent), cuts
//! only at UTF-8 boundaries, and gives byte-identical output for every way the same input is
//! split into chunks: what it finds depends only on the bytes around each position (see
//! `Masker::scan`), never on where a chunk ended.

use std::sync::Arc;

use super::{Finding, MaskContext, Masker, PLACEHOLDER, PLACEHOLDER_HOLDBACK, trigger::Spans};

/// Bytes kept before the unsettled text, for look-behind (`\b`, validators) at its start.
const CONTEXT: usize = crate::mask::detectors::LOOK_BEHIND + 4;

/// One step of a stream.
#[derive(Debug, Clone)]
pub enum Step {
    /// Mask with one rule's detectors and strategy.
    Mask(Arc<Masker>),
    /// Put back the originals of this session's `tokenize` placeholders.
    Restore,
}

#[derive(Debug)]
struct Stage {
    step: Step,
    buf: Vec<u8>,
    /// Where the unsettled text begins in `buf`; before it, context only.
    start: usize,
    /// The spans of a `Mask` step's last trigger pass, and how many bytes of `buf` were
    /// drained since: while no input arrives they still hold for what is left.
    spans: Option<(Spans, usize)>,
}

impl Stage {
    /// The bytes a `Restore` step keeps back: a placeholder that may not have fully arrived.
    fn restore_keep(&self) -> usize {
        let window = &self.buf[self.start..];
        let tail = &window[window.len().saturating_sub(PLACEHOLDER_HOLDBACK)..];
        memchr::memchr(b'[', tail).map_or(0, |at| tail.len() - at)
    }

    fn push(&mut self, input: &[u8], last: bool, ctx: &mut MaskContext, out: &mut Vec<u8>) {
        self.buf.extend_from_slice(input);
        let end = self.buf.len();
        let mut findings = Vec::new();
        let settled = match &self.step {
            Step::Mask(masker) => {
                // At the end of a stream the held-back text is what the last pass saw (less
                // what settled): its spans, clipped, serve instead of a pass of their own.
                let known = match self.spans.take() {
                    Some((spans, drained)) if last && input.is_empty() => Some(spans.clipped(
                        drained..drained + end,
                        &mut vec![0; masker.detectors().len()],
                    )),
                    _ => None,
                };
                let report = &mut |f| findings.push(f);
                let (settled, spans) =
                    masker.scan_window(&self.buf, self.start, last, known, report);
                self.spans = spans.filter(|_| !last).map(|spans| (spans, 0));
                settled
            }
            Step::Restore => {
                let keep = if last { 0 } else { self.restore_keep() };
                (end - self.start > keep)
                    .then(|| restore_scan(&self.buf, self.start, end - keep, ctx, &mut findings))
            }
        };
        let Some(mut settled) = settled else {
            return;
        };
        // Cut at a character boundary (the text after the last finding is plain).
        let floor = findings.last().map_or(self.start, |f| f.end);
        while !last && settled > floor && is_continuation(self.buf.get(settled)) {
            settled -= 1;
        }
        let at = match &self.step {
            Step::Mask(masker) => masker.apply(&self.buf, self.start, &findings, ctx, out),
            Step::Restore => {
                let mut at = self.start;
                for f in &findings {
                    out.extend_from_slice(&self.buf[at..f.start]);
                    if let Some(original) = ctx.original(&self.buf[f.start..f.end]) {
                        out.extend_from_slice(original);
                    }
                    at = f.end;
                }
                at
            }
        };
        out.extend_from_slice(&self.buf[at..settled]);
        let context = settled.min(CONTEXT);
        self.buf.drain(..settled - context);
        self.start = context;
        if let Some((_, drained)) = &mut self.spans {
            *drained = settled - context;
        }
    }
}

fn is_continuation(byte: Option<&u8>) -> bool {
    byte.is_some_and(|b| b & 0xC0 == 0x80)
}

/// Placeholders of this session starting before `settle`; returns the settled offset.
fn restore_scan(
    hay: &[u8],
    from: usize,
    settle: usize,
    ctx: &MaskContext,
    findings: &mut Vec<Finding>,
) -> usize {
    let mut pos = from;
    if ctx.has_tokens() {
        while let Some(found) = PLACEHOLDER.find_at(hay, pos) {
            if found.start() >= settle {
                break;
            }
            if ctx.original(found.as_bytes()).is_some() {
                findings.push(Finding {
                    start: found.start(),
                    end: found.end(),
                    detector: 0,
                });
            }
            pos = found.end();
        }
    }
    pos.max(settle)
}

/// Masks a body chunk by chunk through its steps in order.
#[derive(Debug)]
pub struct StreamMasker {
    stages: Vec<Stage>,
}

impl StreamMasker {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            stages: steps
                .into_iter()
                .map(|step| Stage {
                    step,
                    buf: Vec::new(),
                    start: 0,
                    spans: None,
                })
                .collect(),
        }
    }

    /// Feeds a chunk; returns what is now settled (possibly nothing).
    pub fn push(&mut self, chunk: &[u8], ctx: &mut MaskContext) -> Vec<u8> {
        self.run(chunk, false, ctx)
    }

    /// Ends the stream; returns the rest.
    pub fn finish(&mut self, ctx: &mut MaskContext) -> Vec<u8> {
        self.run(&[], true, ctx)
    }

    /// Bytes held back, waiting for more input.
    pub fn pending(&self) -> usize {
        self.stages.iter().map(|s| s.buf.len() - s.start).sum()
    }

    fn run(&mut self, chunk: &[u8], last: bool, ctx: &mut MaskContext) -> Vec<u8> {
        // The chunk itself feeds the first stage: no copy of it is made.
        let mut input: Option<Vec<u8>> = None;
        for stage in &mut self.stages {
            let from = input.as_deref().unwrap_or(chunk);
            let mut out = Vec::with_capacity(from.len() + 64);
            stage.push(from, last, ctx, &mut out);
            input = Some(out);
        }
        input.unwrap_or_else(|| chunk.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{Strategy, detectors};

    fn masker(names: &[&str], strategy: Strategy) -> Arc<Masker> {
        let detectors = names.iter().flat_map(|n| detectors::expand(n)).collect();
        Arc::new(Masker::new(detectors, strategy, Vec::new()))
    }

    fn ctx() -> MaskContext {
        MaskContext::new(Arc::from(&b"k"[..]))
    }

    fn run(steps: &[Step], chunks: &[&[u8]], ctx: &mut MaskContext) -> Vec<u8> {
        let mut stream = StreamMasker::new(steps.iter().cloned());
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(stream.push(chunk, ctx));
        }
        out.extend(stream.finish(ctx));
        out
    }

    #[test]
    fn a_value_split_across_chunks_is_masked() {
        let steps = [Step::Mask(masker(&["pii"], Strategy::Redact))];
        let out = run(
            &steps,
            &[
                b"mail bob@exa",
                b"mple.com or card 4111 11",
                b"11 1111 1111 now",
            ],
            &mut ctx(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "mail [REDACTED:EMAIL] or card [REDACTED:CREDIT_CARD] now"
        );
    }

    #[test]
    fn holds_back_a_window_not_the_stream() {
        let m = masker(&["email"], Strategy::Redact);
        let mut stream = StreamMasker::new([Step::Mask(Arc::clone(&m))]);
        let mut c = ctx();
        let text = "plain words ".repeat(200);
        let out = stream.push(text.as_bytes(), &mut c);
        assert_eq!(out.len() + stream.pending(), text.len());
        assert!(stream.pending() <= m.max_holdback());
        // A PEM header alone makes the private-key detector hold back from it.
        let k = masker(&["private_key"], Strategy::Redact);
        let mut stream = StreamMasker::new([Step::Mask(k)]);
        let out = stream.push(text.as_bytes(), &mut c);
        assert!(stream.pending() < 16, "{}", stream.pending());
        assert!(!out.is_empty());
    }

    #[test]
    fn tokens_are_restored_across_chunks() {
        let m = masker(&["email"], Strategy::Tokenize);
        let mut c = ctx();
        let sent = m.mask_text("to a@b.io", &mut c).into_owned();
        assert_eq!(sent, "to [TOKEN:EMAIL:1]");
        let out = run(
            &[Step::Restore],
            &[b"sent to [TOK", b"EN:EMAIL:", b"1] and [TOKEN:EMAIL:9]"],
            &mut c,
        );
        assert_eq!(out, b"sent to a@b.io and [TOKEN:EMAIL:9]");
    }

    #[test]
    fn cuts_at_character_boundaries() {
        let steps = [Step::Mask(masker(&["email"], Strategy::Redact))];
        let mut c = ctx();
        let mut stream = StreamMasker::new(steps.iter().cloned());
        let text = "é".repeat(1000);
        for chunk in text.as_bytes().chunks(7) {
            let out = stream.push(chunk, &mut c);
            assert!(std::str::from_utf8(&out).is_ok());
        }
    }
}

#[cfg(test)]
mod chunking {
    //! The streaming masker's promise: any split of the input gives byte-identical output
    //! to the unsplit input.

    use std::sync::Arc;

    use proptest::prelude::*;

    use super::{Step, StreamMasker};
    use crate::mask::{MaskContext, Masker, Strategy as How, detectors};

    /// Pieces that make values, near-values and boundaries likely to meet at a cut.
    const PIECES: &[&str] = &[
        "bob@example.com",
        "a.b@c",
        "@",
        ".io",
        " ",
        "\n",
        "4111 1111 1111 1111",
        "4111",
        "1111",
        "-",
        "+1 415 555 0100",
        "phone: ",
        "(555) 123-4567",
        "219-09-9998",
        "10.0.0.1",
        ".",
        "fe80::1",
        ":",
        "GB82 WEST 1234 5698 7654 32",
        "AKIAIOSFODNN7EXAMPLE",
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        "Bearer ",
        "abcdefghijklmnop0123",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
        "-----BEGIN ",
        "postgres://u:pw0rd!x@db",
        "api_key=",
        "Q8zr3kP0vX7mW2tLq9",
        "é",
        "日本",
        "[TOKEN:EMAIL:1]",
        "[TOKEN:",
        "x",
        "12",
        "00:1a:2b:3c:4d:5e",
    ];

    /// One masker with the whole catalogue per strategy, built once.
    static MASKERS: std::sync::LazyLock<Vec<Arc<Masker>>> = std::sync::LazyLock::new(|| {
        [How::Redact, How::Partial, How::Hash, How::Tokenize]
            .into_iter()
            .map(|how| {
                let mut all = detectors::expand("pii");
                all.extend(detectors::expand("secrets"));
                Arc::new(Masker::new(all, how, Vec::new()))
            })
            .collect()
    });

    fn input() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(PIECES).prop_map(|p| p.as_bytes().to_vec()),
                1 => prop::collection::vec(any::<u8>(), 0..4),
            ],
            0..40,
        )
        .prop_map(|parts| parts.concat())
    }

    /// `text` cut at the given places.
    fn split<'a>(text: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(text.len() + 1)).collect();
        at.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for cut in at {
            chunks.push(&text[from..cut]);
            from = cut;
        }
        chunks.push(&text[from..]);
        chunks
    }

    fn run(steps: &[Step], chunks: &[&[u8]], key: &Arc<[u8]>) -> Vec<u8> {
        let mut ctx = MaskContext::new(Arc::clone(key));
        // A session that already tokenized the first e-mail address.
        let seed = Masker::new(detectors::expand("email"), How::Tokenize, Vec::new());
        let _ = seed.mask_text("bob@example.com", &mut ctx);
        let mut stream = StreamMasker::new(steps.iter().cloned());
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(stream.push(chunk, &mut ctx));
        }
        out.extend(stream.finish(&mut ctx));
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn any_split_gives_the_same_output(
            text in input(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            strategy in prop::sample::select(&[How::Redact, How::Partial, How::Hash, How::Tokenize][..]),
        ) {
            let steps = [Step::Restore, Step::Mask(Arc::clone(&MASKERS[strategy as usize]))];
            let key: Arc<[u8]> = Arc::from(&b"k"[..]);
            let whole = run(&steps, &[&text], &key);
            prop_assert_eq!(run(&steps, &split(&text, &cuts), &key), whole);
            // And byte by byte.
            let bytes: Vec<&[u8]> = text.chunks(1).collect();
            prop_assert_eq!(run(&steps, &bytes, &key), run(&steps, &[&text], &key));
        }

        /// However a text is cut, a stream masks it as masking all of it at once does (the
        /// end of a stream reuses its last trigger pass; this holds it to a pass of its own).
        #[test]
        fn a_stream_masks_what_the_whole_text_masked_at_once_gives(
            text in input(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            strategy in prop::sample::select(&[How::Redact, How::Partial, How::Hash][..]),
        ) {
            let masker = &MASKERS[strategy as usize];
            let key: Arc<[u8]> = Arc::from(&b"k"[..]);
            let whole = masker.mask_bytes(&text, &mut MaskContext::new(Arc::clone(&key))).into_owned();
            let mut ctx = MaskContext::new(key);
            let mut stream = StreamMasker::new([Step::Mask(Arc::clone(masker))]);
            let mut out = Vec::new();
            for chunk in split(&text, &cuts) {
                out.extend(stream.push(chunk, &mut ctx));
            }
            out.extend(stream.finish(&mut ctx));
            prop_assert_eq!(out, whole);
        }
    }
}
