//! Where a detector's matches can start, found without running its regex.
//!
//! Running every detector's regex over every byte caps masking at a few hundred MB/s, while
//! most text holds no value at all. Every match of a detector contains its [`Trigger`]: one of
//! its anchor literals, or a shape of digits and separators. One pass over a window finds the
//! triggers (the anchors with a SIMD literal search over a lower-cased copy, the shapes with a
//! scanner that reads sixteen bytes at a time into masks of digits and of `:` / `-`), and each
//! trigger becomes a span of positions where a match may start, with a bound on where such a
//! match ends. The regex then runs only there.
//!
//! A span must hold the start of every match the trigger stands for; a span holding more is
//! only slower. That keeps the findings exactly what a search of the whole window gives, which
//! is what the streaming masker's chunking invariance rests on.

use std::ops::Range;

use aho_corasick::{AhoCorasick, packed};

use super::detectors::{Detector, Trigger, is_word};

thread_local! {
    /// The lower-cased copy of a window the anchors are searched in, reused.
    static LOWER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Positions `lo..=hi` where a match of `detector` may start; every such match ends at or
/// before `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub detector: usize,
    pub lo: usize,
    pub hi: usize,
    pub end: usize,
}

/// The anchors of two bytes or more, longest first: a leftmost-first search then reports the
/// longest anchor at a position, and every other anchor there is a prefix of it.
#[derive(Debug)]
enum Keywords {
    /// Teddy (SIMD), when the CPU has it.
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

impl Keywords {
    fn new(keywords: &[&[u8]]) -> Self {
        packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(keywords)
            .build()
            .map_or_else(
                || {
                    Self::Automaton(
                        AhoCorasick::builder()
                            .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                            .build(keywords)
                            .expect("anchor literals build an automaton"),
                    )
                },
                Self::Packed,
            )
    }

    /// The leftmost anchor at or after `at` (the longest one there): (position, pattern).
    fn find(&self, hay: &[u8], at: usize) -> Option<(usize, usize)> {
        match self {
            Self::Packed(searcher) => searcher
                .find_in(hay, aho_corasick::Span::from(at..hay.len()))
                .map(|m| (m.start(), m.pattern().as_usize())),
            Self::Automaton(automaton) => automaton
                .find(aho_corasick::Input::new(hay).span(at..hay.len()))
                .map(|m| (m.start(), m.pattern().as_usize())),
        }
    }
}

/// A masker's detectors grouped by trigger, built once with the masker.
#[derive(Debug)]
pub struct Triggers {
    /// Anchors of two bytes or more, lower-case, searched in a lower-cased copy.
    keywords: Option<Keywords>,
    /// Pattern index of `keywords` → every (detector, most bytes before the anchor in a
    /// match) whose anchor is that pattern or a prefix of it.
    keyword_owners: Vec<Vec<(usize, usize)>>,
    /// Each detector's longest match.
    max_len: Vec<usize>,
    /// Each detector's bytes between a match's start and its anchor.
    lead: Vec<fn(u8) -> bool>,
    /// One-byte anchors: (byte, detector, bytes before it).
    single: Vec<(u8, usize, usize)>,
    /// (detector, digits, dots) of `Trigger::Chain` detectors.
    chains: Vec<(usize, usize, usize)>,
    /// The fewest digits any of `chains` needs.
    chain_digits: usize,
    country: Vec<usize>,
    hex_pairs: Vec<usize>,
    hex_colons: Vec<usize>,
    window: Vec<usize>,
}

impl Triggers {
    pub fn new(detectors: &[std::sync::Arc<Detector>]) -> Self {
        let mut keywords: Vec<(Vec<u8>, usize, usize)> = Vec::new();
        let mut triggers = Self {
            keywords: None,
            keyword_owners: Vec::new(),
            max_len: detectors.iter().map(|d| d.max_len).collect(),
            lead: detectors.iter().map(|d| d.lead).collect(),
            single: Vec::new(),
            chains: Vec::new(),
            chain_digits: usize::MAX,
            country: Vec::new(),
            hex_pairs: Vec::new(),
            hex_colons: Vec::new(),
            window: Vec::new(),
        };
        for (index, detector) in detectors.iter().enumerate() {
            match detector.trigger {
                Trigger::Anchors if detector.anchors.is_empty() => triggers.window.push(index),
                Trigger::Anchors => {
                    for &(anchor, before) in detector.anchors {
                        let before = usize::from(before);
                        match anchor.as_bytes() {
                            &[byte] => {
                                triggers
                                    .single
                                    .push((byte.to_ascii_lowercase(), index, before));
                                if byte.is_ascii_alphabetic() {
                                    triggers.single.push((
                                        byte.to_ascii_uppercase(),
                                        index,
                                        before,
                                    ));
                                }
                            }
                            bytes => keywords.push((bytes.to_ascii_lowercase(), index, before)),
                        }
                    }
                }
                Trigger::Chain { digits, dots } => {
                    let digits = usize::from(digits);
                    triggers.chains.push((index, digits, usize::from(dots)));
                    triggers.chain_digits = triggers.chain_digits.min(digits);
                }
                Trigger::CountryCode => triggers.country.push(index),
                Trigger::HexPairs => triggers.hex_pairs.push(index),
                Trigger::HexColons => triggers.hex_colons.push(index),
                Trigger::Window => triggers.window.push(index),
            }
        }
        // Case-sensitive over a lower-cased copy: that keeps the SIMD literal search, which
        // ASCII case insensitivity gives up.
        let mut patterns: Vec<&[u8]> = keywords.iter().map(|(k, ..)| k.as_slice()).collect();
        patterns.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        patterns.dedup();
        triggers.keyword_owners = patterns
            .iter()
            .map(|pattern| {
                keywords
                    .iter()
                    .filter(|(k, ..)| pattern.starts_with(k))
                    .map(|&(_, detector, before)| (detector, before))
                    .collect()
            })
            .collect();
        triggers.keywords = (!patterns.is_empty()).then(|| Keywords::new(&patterns));
        triggers
    }

    fn shapes(&self) -> bool {
        !(self.chains.is_empty()
            && self.country.is_empty()
            && self.hex_pairs.is_empty()
            && self.hex_colons.is_empty())
    }

    /// Every span of `hay[from..]` where a match may start, grouped by detector in order of
    /// position and merged; `by_detector[d]` is detector `d`'s part of the spans.
    pub fn spans(&self, detectors: usize, hay: &[u8], from: usize) -> Spans {
        self.spans_keeping::<false>(detectors, hay, from)
    }

    /// [`Self::spans`] with [`Spans::anchors_keep`] known, for a stream's window.
    pub fn stream_spans(&self, detectors: usize, hay: &[u8], from: usize) -> Spans {
        self.spans_keeping::<true>(detectors, hay, from)
    }

    /// The hold-back costs a look at each anchor found (2% of masking a JSON chat body),
    /// spent only where a stream needs it.
    fn spans_keeping<const KEEP: bool>(&self, detectors: usize, hay: &[u8], from: usize) -> Spans {
        let window = &hay[from..];
        if window.is_empty() {
            return Spans::default();
        }
        // Room for a typical window's spans without growing.
        let mut spans = Vec::with_capacity(32);
        let last = hay.len() - 1;
        let mut keep = 0;
        let mut anchored = |detector: usize, at: usize, before: usize| {
            // A match holding this anchor may run past the window's end: a stream keeps
            // back everything from where such a match could start.
            let need = self.max_len[detector] + 1;
            if KEEP && at + need >= hay.len() {
                keep = keep.max((hay.len() - at + before).min(need));
            }
            let limit = at.saturating_sub(before).max(from);
            let lead = self.lead[detector];
            let lo = at
                - hay[limit..at]
                    .iter()
                    .rev()
                    .take_while(|b| lead(**b))
                    .count();
            spans.push(Span {
                detector,
                lo,
                hi: at,
                end: (at + self.max_len[detector]).min(hay.len()),
            });
        };
        if let Some(keywords) = &self.keywords {
            LOWER.with_borrow_mut(|lower| {
                lower.clear();
                lower.extend(window.iter().map(u8::to_ascii_lowercase));
                let mut at = 0;
                // Resuming one byte on finds anchors that overlap the one found.
                while let Some((found, pattern)) = keywords.find(lower, at) {
                    for &(detector, before) in &self.keyword_owners[pattern] {
                        anchored(detector, from + found, before);
                    }
                    at = found + 1;
                }
                // A window of a large body does not keep its copy around.
                if lower.capacity() > 64 << 10 {
                    *lower = Vec::new();
                }
            });
        }
        for &(byte, detector, before) in &self.single {
            for at in memchr::memchr_iter(byte, window) {
                anchored(detector, from + at, before);
            }
        }
        for &detector in &self.window {
            spans.push(Span {
                detector,
                lo: from,
                hi: last,
                end: hay.len(),
            });
        }
        if self.shapes() {
            self.scan_shapes(hay, from, &mut spans);
        }
        Spans {
            keep,
            ..Spans::new(spans, detectors)
        }
    }

    /// The shape triggers in one pass: digit chains, country codes, hex pairs, hex-colon runs.
    /// Only digits, `:` and `-` need a look: each 16 bytes become a mask of digits and one of
    /// separators, and a run of digits is handled at once.
    fn scan_shapes(&self, hay: &[u8], from: usize, spans: &mut Vec<Span>) {
        let mut shapes = Shapes {
            triggers: self,
            hay,
            from,
            chain: Chain::default(),
            colons_seen: from,
            spans,
        };
        let mut at = from;
        while let Some(chunk) = hay.get(at..at + 16) {
            let (mut digits, mut separators) = classify(chunk);
            if separators != 0 {
                // Separators that can start no address are dropped; bits whose neighbours
                // lie outside the chunk are always looked at. A colon with neither neighbour
                // a hex digit or `:` starts no MAC or IPv6 address (a JSON key's colon). A
                // dash belongs only to a MAC address (`00-1a-2b-…`), so it needs a hex digit
                // on each side and another separator three bytes on (a dash in a date, a
                // UUID or prose has not).
                let (hex, colons) = hex_and_colons(chunk);
                let joins = hex | colons;
                let dashes = separators & !colons;
                separators = (colons & ((joins << 1) | (joins >> 1) | 0x8001))
                    | (dashes
                        & ((hex << 1) | 0x0001)
                        & ((hex >> 1) | 0x8000)
                        & ((separators >> 3) | 0xE000));
            }
            // A run of digits is one step: its first digit starts or extends the chain, the
            // others extend it.
            while digits != 0 {
                let first = digits.trailing_zeros();
                let len = (digits >> first).trailing_ones();
                shapes.digit_run(at + first as usize, len as usize);
                digits &= !(((1u32 << len) - 1) << first);
            }
            while separators != 0 {
                shapes.separator(at + separators.trailing_zeros() as usize);
                separators &= separators - 1;
            }
            at += 16;
        }
        for i in at..hay.len() {
            shapes.byte(i);
        }
        if shapes.chain.digits >= self.chain_digits {
            shapes.chain_ended();
        }
    }
}

/// The state of one pass of [`Triggers::scan_shapes`].
struct Shapes<'a> {
    triggers: &'a Triggers,
    hay: &'a [u8],
    from: usize,
    /// The digit chain being read (none yet: no digits).
    chain: Chain,
    /// Colons before this belong to a hex-colon run already looked at.
    colons_seen: usize,
    spans: &'a mut Vec<Span>,
}

impl Shapes<'_> {
    #[expect(
        clippy::inline_always,
        reason = "a call per flagged byte was half of the scan time"
    )]
    #[inline(always)]
    fn byte(&mut self, at: usize) {
        let byte = self.hay[at];
        match byte {
            b'0'..=b'9' if !self.extends_chain(at) => self.chain_starts(at),
            b':' | b'-' => self.separator(at),
            _ => {}
        }
    }

    /// The `len` digits from `at` on (a run: no other byte between them).
    #[expect(
        clippy::inline_always,
        reason = "called for every digit run on the scan's hot path"
    )]
    #[inline(always)]
    fn digit_run(&mut self, at: usize, len: usize) {
        if !self.extends_chain(at) {
            self.chain_starts(at);
        }
        self.chain.digits += len - 1;
        self.chain.last = at + len - 1;
    }

    /// Whether the digit at `at` is the next of the chain: right after its last digit or after
    /// one separator.
    #[expect(
        clippy::inline_always,
        reason = "a call per flagged byte was half of the scan time"
    )]
    #[inline(always)]
    fn extends_chain(&mut self, at: usize) -> bool {
        let c = &mut self.chain;
        if c.digits == 0 {
            return false;
        }
        if c.last + 1 == at {
            c.digits += 1;
        } else if c.last + 2 == at && matches!(self.hay[at - 1], b' ' | b'.' | b'-') {
            c.digits += 1;
            c.dots += usize::from(self.hay[at - 1] == b'.');
        } else {
            return false;
        }
        c.last = at;
        true
    }

    #[expect(
        clippy::inline_always,
        reason = "a call per flagged byte was half of the scan time"
    )]
    #[inline(always)]
    fn chain_starts(&mut self, at: usize) {
        if self.chain.digits >= self.triggers.chain_digits {
            self.chain_ended();
        }
        self.chain.start = at;
        self.chain.last = at;
        self.chain.digits = 1;
        self.chain.dots = 0;
        if at >= self.from + 2 && self.hay[at - 1].is_ascii_uppercase() {
            self.country_code(at);
        }
    }

    #[inline(never)]
    fn country_code(&mut self, at: usize) {
        if country_code(self.hay, self.from, at) {
            self.push(&self.triggers.country, at - 2, at - 2, None);
        }
    }

    #[inline(never)]
    fn separator(&mut self, at: usize) {
        let (hay, from) = (self.hay, self.from);
        if hex_pairs(hay, from, at) {
            self.push(&self.triggers.hex_pairs, at - 2, at - 2, None);
        }
        if hay[at] == b':' && at >= self.colons_seen && !self.triggers.hex_colons.is_empty() {
            let part = |b: &u8| b.is_ascii_hexdigit() || *b == b':';
            let joined = (at > from && part(&hay[at - 1])) || hay.get(at + 1).is_some_and(part);
            if !joined {
                // A colon alone (a JSON key's, a label's): its run is itself, no address.
                self.colons_seen = at + 1;
                return;
            }
            let run = hex_colon_run(hay, from, at);
            self.colons_seen = run.end;
            if ipv6_shaped(&hay[run.clone()]) {
                // An IPv6 address is made of the run's bytes only.
                self.push(
                    &self.triggers.hex_colons,
                    run.start,
                    run.end - 1,
                    Some(run.end),
                );
            }
        }
    }

    #[inline(never)]
    fn chain_ended(&mut self) {
        let chain = self.chain;
        for &(detector, digits, dots) in &self.triggers.chains {
            if chain.digits >= digits && chain.dots >= dots {
                // A card number, SSN or IPv4 address is made of the chain's bytes only.
                self.spans.push(Span {
                    detector,
                    lo: chain.start,
                    hi: chain.last,
                    end: chain.last + 1,
                });
            }
        }
    }

    /// A span for each of `detectors`; without `end`, matches end within their longest
    /// length.
    fn push(&mut self, detectors: &[usize], lo: usize, hi: usize, end: Option<usize>) {
        for &detector in detectors {
            let end = end.unwrap_or((lo + self.triggers.max_len[detector]).min(self.hay.len()));
            self.spans.push(Span {
                detector,
                lo,
                hi,
                end,
            });
        }
    }
}

/// A digit chain being read.
#[derive(Debug, Clone, Copy, Default)]
struct Chain {
    start: usize,
    /// The last digit.
    last: usize,
    digits: usize,
    dots: usize,
}

/// Up to this many spans, [`Spans::new`] sorts them; more are grouped by a counting sort.
const FEW_SPANS: usize = 64;

/// `spans` grouped by detector, each detector's part ordered by `lo`: a counting sort, then
/// a sort of a part only where it is not in order already. Each trigger pass reports in order
/// of position, so a part mostly is (a comparison sort of all the spans was 6% of the time on
/// dense text).
fn group_by_detector(spans: Vec<Span>, detectors: usize) -> Vec<Span> {
    let mut first = vec![0; detectors + 1];
    for span in &spans {
        first[span.detector + 1] += 1;
    }
    for d in 1..first.len() {
        first[d] += first[d - 1];
    }
    let mut next = first.clone();
    let mut grouped = spans.clone();
    for span in spans {
        grouped[next[span.detector]] = span;
        next[span.detector] += 1;
    }
    for d in 0..detectors {
        let part = &mut grouped[first[d]..first[d + 1]];
        if !part.is_sorted_by_key(|s| s.lo) {
            part.sort_unstable_by_key(|s| s.lo);
        }
    }
    grouped
}

/// The spans of one window, grouped by detector.
#[derive(Debug, Default)]
pub struct Spans {
    merged: Vec<Span>,
    by_detector: Vec<Range<usize>>,
    /// The trailing bytes of the window that a match holding one of its anchors may still
    /// be running in (known only from [`Triggers::stream_spans`]).
    keep: usize,
}

impl Spans {
    fn new(spans: Vec<Span>, detectors: usize) -> Self {
        if spans.is_empty() {
            return Self::default();
        }
        let grouped = if spans.len() <= FEW_SPANS {
            let mut spans = spans;
            spans.sort_unstable_by_key(|s| (s.detector, s.lo));
            spans
        } else {
            group_by_detector(spans, detectors)
        };
        // Merged in place: each span joins the last one kept or is kept after it.
        let mut merged = grouped;
        let mut kept = 0;
        for i in 1..merged.len() {
            let span = merged[i];
            let last = &mut merged[kept];
            if last.detector == span.detector && span.lo <= last.hi + 1 {
                last.hi = last.hi.max(span.hi);
                last.end = last.end.max(span.end);
            } else {
                kept += 1;
                merged[kept] = span;
            }
        }
        merged.truncate(kept + 1);
        let mut by_detector = vec![0..0; detectors];
        let mut start = 0;
        while start < merged.len() {
            let detector = merged[start].detector;
            let end = start
                + merged[start..]
                    .iter()
                    .take_while(|s| s.detector == detector)
                    .count();
            by_detector[detector] = start..end;
            start = end;
        }
        Self {
            merged,
            by_detector,
            keep: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.merged.is_empty()
    }

    /// How many trailing bytes of the window a stream must keep for the anchors found in
    /// it: for each anchor whose detector's longest match (and a byte of look-ahead) would
    /// reach the end, from the earliest start such a match may have.
    pub fn anchors_keep(&self) -> usize {
        self.keep
    }

    /// Every span's possible starts `lo..=hi`, whatever its detector (unordered).
    pub fn starts(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.merged.iter().map(|s| (s.lo, s.hi))
    }

    /// The spans reaching into `piece`, clipped to it and in its coordinates. `cursors` holds,
    /// per detector, the first span not wholly before an earlier piece: pieces come in order,
    /// and a detector's spans, merged, are in order of both `lo` and `hi`.
    pub fn clipped(&self, piece: Range<usize>, cursors: &mut [usize]) -> Self {
        if piece.is_empty() {
            return Self::default();
        }
        let mut clipped = Vec::new();
        for (detector, cursor) in cursors.iter_mut().enumerate() {
            let mine = self.of(detector);
            while mine.get(*cursor).is_some_and(|s| s.hi < piece.start) {
                *cursor += 1;
            }
            for span in mine[*cursor..].iter().take_while(|s| s.lo < piece.end) {
                clipped.push(Span {
                    detector,
                    lo: span.lo.max(piece.start) - piece.start,
                    hi: span.hi.min(piece.end - 1) - piece.start,
                    end: span.end.min(piece.end) - piece.start,
                });
            }
        }
        Self::new(clipped, self.by_detector.len())
    }

    /// Detector `detector`'s spans, in order of position.
    pub fn of(&self, detector: usize) -> &[Span] {
        self.by_detector
            .get(detector)
            .map_or(&[], |range| &self.merged[range.clone()])
    }
}

/// Two masks of a 16-byte `chunk`, bit `i` standing for `chunk[i]`: ASCII digits; `:` and `-`.
#[cfg(target_arch = "x86_64")]
fn classify(chunk: &[u8]) -> (u32, u32) {
    use sse2::{bits, digits, equal, load, or};
    let v = load(chunk);
    (bits(digits(v)), bits(or(equal(v, b':'), equal(v, b'-'))))
}

/// Two masks of a 16-byte `chunk`: hex digits; `:` (what a separator of a MAC or IPv6
/// address has beside it).
#[cfg(target_arch = "x86_64")]
fn hex_and_colons(chunk: &[u8]) -> (u32, u32) {
    use sse2::{bits, digits, equal, hex_letters, load, or};
    let v = load(chunk);
    (bits(or(digits(v), hex_letters(v))), bits(equal(v, b':')))
}

/// Byte classes of 16 bytes at once with SSE2, which every x86-64 CPU has: a lane is all ones
/// where the byte is in the class. Also the JSON scanner's (`mask::json`).
#[cfg(target_arch = "x86_64")]
pub(super) mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_max_epu8,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    /// The first 16 bytes of `chunk`.
    pub fn load(chunk: &[u8]) -> __m128i {
        assert!(chunk.len() >= 16);
        // SAFETY: an unaligned load of 16 bytes that `chunk` holds.
        unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) }
    }

    /// `'0'..='9'`: moved to the bottom of the signed range (-128..=-119) and compared.
    pub fn digits(v: __m128i) -> __m128i {
        // SAFETY: SSE2 is part of every x86-64 target (here and below).
        unsafe { _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8(0x50)), _mm_set1_epi8(-118)) }
    }

    /// `'a'..='f'` and `'A'..='F'` (lower-cased by the 0x20 bit), moved to -128..=-123.
    pub fn hex_letters(v: __m128i) -> __m128i {
        // SAFETY: SSE2.
        unsafe {
            let lower = _mm_or_si128(v, _mm_set1_epi8(0x20));
            _mm_cmplt_epi8(
                _mm_add_epi8(lower, _mm_set1_epi8(0x1F)),
                _mm_set1_epi8(-122),
            )
        }
    }

    pub fn equal(v: __m128i, byte: u8) -> __m128i {
        // SAFETY: SSE2.
        unsafe { _mm_cmpeq_epi8(v, _mm_set1_epi8(i8::from_ne_bytes([byte]))) }
    }

    /// Bytes up to `byte` (unsigned): `max(v, byte) == byte` exactly there.
    pub fn at_most(v: __m128i, byte: u8) -> __m128i {
        // SAFETY: SSE2.
        unsafe {
            let bound = _mm_set1_epi8(i8::from_ne_bytes([byte]));
            _mm_cmpeq_epi8(_mm_max_epu8(v, bound), bound)
        }
    }

    pub fn or(a: __m128i, b: __m128i) -> __m128i {
        // SAFETY: SSE2.
        unsafe { _mm_or_si128(a, b) }
    }

    /// One bit per lane, lane `i` at bit `i` (the low 16 bits).
    pub fn bits(v: __m128i) -> u32 {
        // SAFETY: SSE2.
        unsafe { _mm_movemask_epi8(v) }.cast_unsigned()
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn classify(chunk: &[u8]) -> (u32, u32) {
    let (digits, separators, ..) = classify_bytes(chunk);
    (digits, separators)
}

#[cfg(not(target_arch = "x86_64"))]
fn hex_and_colons(chunk: &[u8]) -> (u32, u32) {
    let (.., hex, colons) = classify_bytes(chunk);
    (hex, colons)
}

/// [`classify`] and [`hex_and_colons`] byte by byte.
#[cfg_attr(
    target_arch = "x86_64",
    allow(dead_code, reason = "the tests compare with it")
)]
fn classify_bytes(chunk: &[u8]) -> (u32, u32, u32, u32) {
    let mask = |class: fn(&u8) -> bool| {
        chunk[..16]
            .iter()
            .enumerate()
            .filter(|(_, b)| class(b))
            .fold(0, |mask, (i, _)| mask | 1 << i)
    };
    (
        mask(u8::is_ascii_digit),
        mask(|b| matches!(b, b':' | b'-')),
        mask(u8::is_ascii_hexdigit),
        mask(|b| *b == b':'),
    )
}

/// Whether a word starts two bytes before `at`: a word boundary, then two capitals, then the
/// digit at `at` and another.
fn country_code(hay: &[u8], from: usize, at: usize) -> bool {
    at >= from + 2
        && hay[at - 2].is_ascii_uppercase()
        && hay[at - 1].is_ascii_uppercase()
        && hay.get(at + 1).is_some_and(u8::is_ascii_digit)
        && (at == 2 || !is_word(hay[at - 3]))
}

/// Whether the separator at `at` is the first of a MAC address: a hex pair starting a word
/// before it, a hex pair after it and another separator.
fn hex_pairs(hay: &[u8], from: usize, at: usize) -> bool {
    at >= from + 2
        && hay.len() > at + 3
        && hay[at - 2].is_ascii_hexdigit()
        && hay[at - 1].is_ascii_hexdigit()
        && hay[at + 1].is_ascii_hexdigit()
        && hay[at + 2].is_ascii_hexdigit()
        && matches!(hay[at + 3], b':' | b'-')
        && (at == 2 || !is_word(hay[at - 3]))
}

/// The run of hex digits and colons around the colon at `at`, not before `from`.
fn hex_colon_run(hay: &[u8], from: usize, at: usize) -> Range<usize> {
    let part = |b: &u8| b.is_ascii_hexdigit() || *b == b':';
    let start = at - hay[from..at].iter().rev().take_while(|b| part(b)).count();
    let end = at + hay[at..].iter().take_while(|b| part(b)).count();
    start..end
}

/// Whether a run of hex digits and colons can hold an IPv6 address that parses: without a
/// dotted tail, one has `::` or eight groups (seven colons). Seven colons without two
/// together take 13 bytes, so a shorter run (a JSON key's colon before a number) is not
/// counted.
fn ipv6_shaped(run: &[u8]) -> bool {
    run.windows(2).any(|pair| pair == b"::")
        || (run.len() >= 13 && memchr::memchr_iter(b':', run).count() >= 7)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::mask::{Masker, Strategy, detectors};

    /// Pieces of values, near-values and the shapes the triggers look for.
    const PIECES: &[&str] = &[
        "0",
        "1",
        "7",
        "12",
        "4111",
        "1111 ",
        "-",
        " ",
        ".",
        ":",
        "::",
        "a",
        "f",
        "Z",
        "GB",
        "82",
        "AB",
        "_",
        "=",
        "\"",
        "'",
        "\n",
        "key",
        "Key=",
        "token: ",
        "secret=",
        "@",
        "bob",
        "example.com",
        "+1",
        "+44 ",
        "phone ",
        "call ",
        "tel:",
        "sk-",
        "sk-ant-api03-",
        "ghp_",
        "github_pat_",
        "AKIA",
        "ABCDEFGHIJKLMNOP",
        "aws",
        "bearer ",
        "eyJ",
        "eyJhbGciOiJIUzI1NiJ9",
        "://",
        "postgres://",
        "u:p@",
        "xoxb-",
        "sk_live_",
        "-----BEGIN ",
        "PRIVATE KEY-----",
        "-----END ",
        "é",
        "9f1c2e7a",
        "fe80",
        "1.2.3.4",
        "10.20.30.",
        "00:1a:2b:3c:4d:5e",
        "ab-cd-ef-",
        "219-09-9998",
        "v1.",
        "qwertyuiopASDFGHJK1234567890",
        "4111 1111 1111 1111",
        "4111111111111111",
        "GB82 WEST 1234 5698 7654 32",
        "bob@example.com",
        "+1 415 555 0134",
        "call me at (415) 555-0134",
        "10.20.30.40",
        "fe80::1",
        "2001:db8::8a2e:370:7334",
        "AKIAIOSFODNN7EXAMPLE",
        "api_key = 'q8Zr3kP0vX7mW2tL'",
    ];

    /// The catalogue with every trigger replaced by the whole window.
    /// The hold-back of a lower-cased window by its definition: for each detector, its
    /// longest match plus a byte, or, for a detector with anchors, only back to its leftmost
    /// anchor within that reach (or to an anchor not fully arrived at the end).
    fn holdback_per_detector(masker: &Masker, lower: &[u8]) -> usize {
        let mut keep = 0;
        for detector in masker.detectors() {
            let need = detector.max_len + 1;
            if detector.anchors.is_empty() {
                keep = keep.max(need);
                continue;
            }
            let region = &lower[lower.len().saturating_sub(need)..];
            let mut from_end = 0;
            for &(anchor, before) in detector.anchors {
                let before = usize::from(before);
                from_end = from_end.max(anchor.len() - 1 + before);
                if let Some(at) = memchr::memmem::find(region, anchor.as_bytes()) {
                    from_end = from_end.max(region.len() - at + before);
                }
            }
            keep = keep.max(from_end.min(need));
        }
        keep.min(masker.max_holdback())
    }

    fn untriggered() -> Masker {
        let all = detectors::CATALOGUE
            .iter()
            .map(|d| {
                let mut plain = Detector::custom(&d.name, &d.pattern, d.validator)
                    .expect("built-in patterns are bounded");
                plain.trigger = Trigger::Window;
                // The reference retries with plain unanchored searches.
                plain.word_start = false;
                Arc::new(plain)
            })
            .collect();
        Masker::new(all, Strategy::Redact, Vec::new())
    }

    /// After a rejected match, a detector whose matches start at word boundaries retries with
    /// anchored searches there (then one unanchored search): the findings are those of plain
    /// unanchored retries.
    #[test]
    fn retries_at_word_boundaries_find_what_plain_retries_find() {
        let triggered = Masker::new(detectors::CATALOGUE.clone(), Strategy::Redact, Vec::new());
        let plain = untriggered();
        let secret = |text: &str| {
            let found = triggered.find(text.as_bytes());
            assert_eq!(found, plain.find(text.as_bytes()), "{text}");
            found
                .iter()
                .map(|f| &text[f.start..f.end])
                .collect::<Vec<_>>()
                .join(" ")
        };
        // The key name's value is rejected (low entropy); no boundary is left in the name.
        assert_eq!(
            secret("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE token ghp_"),
            "AKIAIOSFODNN7EXAMPLE"
        );
        // Rejected from the first key word, taken from the second, which starts at a later
        // boundary inside the first match.
        assert_eq!(
            secret("password=token=aaaaaaaaaaaaaaaaaaaaa token=Zx9Qr2Lm8Tn4Vb6Kp1Ws7Yd3"),
            "Zx9Qr2Lm8Tn4Vb6Kp1Ws7Yd3"
        );
        // More boundaries in the span than anchored retries, before the valid match.
        assert_eq!(
            secret(
                "a.b.c.d.e.f.g.h.secret=aaaaaaaaaaaaaaaa x-y-z-api-key: Zx9Qr2Lm8Tn4Vb6Kp1Ws7Yd3"
            ),
            "Zx9Qr2Lm8Tn4Vb6Kp1Ws7Yd3"
        );
        // A Luhn-invalid card number, then a valid one in the same chain of digits.
        assert_eq!(
            secret("4111 1111 1111 1112 4111 1111 1111 1111"),
            "4111 1111 1111 1111"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The spans never lose a match: the findings are those of every regex run over the
        /// whole text.
        #[test]
        fn triggers_find_what_whole_text_search_finds(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..60)
        ) {
            static PLAIN: std::sync::LazyLock<Masker> = std::sync::LazyLock::new(untriggered);
            let triggered = Masker::new(detectors::CATALOGUE.clone(), Strategy::Redact, Vec::new());
            let text = pieces.concat();
            prop_assert_eq!(triggered.find(text.as_bytes()), PLAIN.find(text.as_bytes()));
        }

        /// The counting sort groups spans by detector, each part ordered by `lo`, and keeps
        /// every span.
        #[test]
        fn spans_grouped_by_counting_are_sorted_and_complete(
            raw in proptest::collection::vec((0usize..5, 0usize..300, 0usize..4), 0..300)
        ) {
            let spans: Vec<Span> = raw
                .iter()
                .map(|&(detector, lo, width)| Span { detector, lo, hi: lo + width, end: lo + 40 })
                .collect();
            let grouped = group_by_detector(spans.clone(), 5);
            prop_assert!(grouped.is_sorted_by_key(|s| (s.detector, s.lo)));
            let key = |s: &Span| (s.detector, s.lo, s.hi, s.end);
            let (mut a, mut b) = (spans, grouped);
            a.sort_unstable_by_key(key);
            b.sort_unstable_by_key(key);
            prop_assert_eq!(a, b);
        }

        /// The hold-back a stream takes from a window's trigger pass equals the one found by
        /// searching the window's tail for each detector's anchors, wherever the window
        /// starts.
        #[test]
        fn holdback_from_the_trigger_pass_equals_holdback_per_detector(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..60)
        ) {
            static ALL: std::sync::LazyLock<Masker> = std::sync::LazyLock::new(|| {
                Masker::new(detectors::CATALOGUE.clone(), Strategy::Redact, Vec::new())
            });
            let hay = pieces.concat().into_bytes();
            for from in 0..=hay.len() {
                let spans = ALL.triggers.stream_spans(ALL.detectors.len(), &hay, from);
                prop_assert_eq!(
                    ALL.holdback(&spans),
                    holdback_per_detector(&ALL, &hay[from..].to_ascii_lowercase())
                );
            }
        }

        /// A JSON document masked in place gives the same bytes whether its string values
        /// are chosen by one trigger pass over the whole document or all masked one by one.
        #[test]
        fn one_trigger_pass_over_a_json_document_masks_what_every_string_would(
            values in proptest::collection::vec(
                (
                    proptest::sample::select(KEYS),
                    proptest::collection::vec(proptest::sample::select(PIECES), 0..12),
                    0u8..5,
                ),
                0..24,
            )
        ) {
            static STEPS: std::sync::LazyLock<Vec<crate::mask::stream::Step>> =
                std::sync::LazyLock::new(|| {
                    vec![crate::mask::stream::Step::Mask(Arc::new(Masker::new(
                        detectors::CATALOGUE.clone(),
                        Strategy::Redact,
                        Vec::new(),
                    )))]
                });
            // Objects, arrays and numbers around the strings; keys that are key words.
            let mut doc = Vec::new();
            for (key, pieces, shape) in values {
                let mut text = pieces.concat();
                if shape == 4 {
                    // Escapes: this value's bytes in the document are not its text.
                    let mid = (0..=text.len() / 2)
                        .rev()
                        .find(|&i| text.is_char_boundary(i))
                        .unwrap_or(0);
                    text.insert_str(mid, "\"q\\\n");
                }
                let text = serde_json::Value::String(text);
                doc.push(match shape {
                    0 => serde_json::json!({ key: text }),
                    1 => serde_json::json!([text, 4111, "1111 1111", key]),
                    2 => serde_json::json!({ key: { "n": 219, "v": text } }),
                    _ => text,
                });
            }
            for body in [
                serde_json::to_vec(&doc).unwrap(),
                serde_json::to_vec_pretty(&doc).unwrap(),
            ] {
                let mut a = crate::mask::MaskContext::new(Arc::from(&b"k"[..]));
                let mut b = crate::mask::MaskContext::new(Arc::from(&b"k"[..]));
                let filtered = crate::mask::mask_json_in_place(&STEPS, &body, &mut a, true);
                let each = crate::mask::mask_json_in_place(&STEPS, &body, &mut b, false);
                prop_assert_eq!(filtered, each);
                prop_assert_eq!(a.counts, b.counts);
            }
        }
    }

    /// Keys of the documents above: plain names and key words that gate detectors.
    const KEYS: &[&str] = &[
        "content", "password", "api_key", "phone", "ip", "secret", "AKIA", "x",
    ];

    #[test]
    fn classify_is_exact() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut chunk = [0u8; 16];
        for round in 0..100_000 {
            for b in &mut chunk {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let [low, ..] = state.to_le_bytes();
                // Every other round near the bounds: '-' .. ':' and 'A'..'F' / 'a'..'f', in
                // either half of the byte range.
                *b = match round % 4 {
                    0 => low,
                    1 => 0x2B + low % 17,
                    2 => 0x3F + low % 10 + (low & 0x20),
                    _ => (0x3F + low % 10 + (low & 0x20)) | 0x80,
                };
            }
            let (digits, separators, hex, colons) = classify_bytes(&chunk);
            assert_eq!(classify(&chunk), (digits, separators), "{chunk:x?}");
            assert_eq!(hex_and_colons(&chunk), (hex, colons), "{chunk:x?}");
        }
    }

    #[test]
    fn shapes() {
        assert!(ipv6_shaped(b"fe80::1"));
        assert!(ipv6_shaped(b"2001:db8:85a3:0:0:8a2e:370:7334"));
        assert!(!ipv6_shaped(b"10:42:17"));
        assert!(ipv6_shaped(b"1:2:3:4:5:6:7:8"));
        assert!(!ipv6_shaped(b"1:2:3:4:5:6:78"));
        assert!(hex_pairs(b" 00:1a:2b:3c:4d:5e", 0, 3));
        assert!(!hex_pairs(b"x00:1a:2b:3c:4d:5e", 0, 3));
        assert!(country_code(b"to GB82 WEST", 0, 5));
        assert!(!country_code(b"toGB82 WEST", 0, 4));
    }
}
