//! The detector catalogue: each detector is a trigger (anchor literals, or a shape of digits and
//! separators that every match contains, found without running a regex), a regex and a
//! validator, under a stable name used in policies.
//! Validators keep precision: a 16-digit number is a card only if it passes Luhn and has an
//! issuer prefix, an IBAN only if mod-97 holds, and so on.
//!
//! Every pattern has a bounded match length ([`Detector::max_len`]): that bound is what lets
//! the streaming masker hold back only a window of bytes and still give the same output for
//! any chunking of its input.

use std::sync::{Arc, LazyLock};

/// What a detector finds: personal data or a secret (the `pii` and `secrets` groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pii,
    Secret,
}

/// Checks a candidate match beyond its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validator {
    None,
    Luhn,
    Mod97,
    UsSsn,
    Ipv4,
    Ipv6,
    Phone,
    Entropy,
}

impl Validator {
    /// Names accepted by `[[detector]] validator = "…"` in policies.
    pub const NAMES: &[&str] = &["luhn", "mod97", "entropy"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "luhn" => Some(Self::Luhn),
            "mod97" => Some(Self::Mod97),
            "entropy" => Some(Self::Entropy),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    /// Checks the value at `hay[start..end]`; may look up to [`LOOK_BEHIND`] bytes back.
    pub fn accepts_in(self, hay: &[u8], start: usize, end: usize) -> bool {
        let value = &hay[start..end];
        match self {
            // A dotted quad after `v`, `version`, `build`, … is a version, not an address.
            Self::Ipv4 => {
                let before = &hay[start.saturating_sub(LOOK_BEHIND)..start];
                let signs = before
                    .iter()
                    .rev()
                    .take_while(|b| matches!(b, b' ' | b'=' | b':'))
                    .count();
                let word = &before[..before.len() - signs];
                !(["v", "ver", "version", "build", "release", "rev", "firmware"]
                    .iter()
                    .any(|w| {
                        word.len() >= w.len()
                            && word[word.len() - w.len()..].eq_ignore_ascii_case(w.as_bytes())
                            && !word[..word.len() - w.len()]
                                .last()
                                .is_some_and(u8::is_ascii_alphanumeric)
                    }))
                    && self.accepts(value)
            }
            _ => self.accepts(value),
        }
    }

    pub fn accepts(self, value: &[u8]) -> bool {
        match self {
            Self::None => true,
            Self::Luhn => card_number(value),
            Self::Mod97 => iban(value),
            Self::UsSsn => us_ssn(value),
            Self::Ipv4 => {
                std::str::from_utf8(value).is_ok_and(|v| v.parse::<std::net::Ipv4Addr>().is_ok())
            }
            Self::Ipv6 => std::str::from_utf8(value)
                .is_ok_and(|v| v.parse::<std::net::Ipv6Addr>().is_ok() && v.contains(':')),
            Self::Phone => {
                let digits = value.iter().filter(|b| b.is_ascii_digit()).count();
                (7..=15).contains(&digits)
            }
            Self::Entropy => high_entropy(value),
        }
    }
}

/// How far back a validator may look before a value (the stream keeps that much context).
pub const LOOK_BEHIND: usize = 12;

/// What every match of a detector contains, found by one cheap pass over the text (see
/// `mask/trigger.rs`): the detector's regex runs only around the places a trigger marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// One of the detector's [`Detector::anchors`].
    Anchors,
    /// A chain of digits, each joined to the next by at most one ` `, `-` or `.`, with at
    /// least this many digits and dots: card numbers, SSNs, IPv4 addresses.
    Chain { digits: u16, dots: u16 },
    /// Two capitals and two digits at the start of a word: an IBAN's country and check digits.
    CountryCode,
    /// A hex pair at the start of a word, `:` or `-`, a hex pair and another `:` or `-`: a MAC
    /// address.
    HexPairs,
    /// A run of hex digits and colons holding `::` or seven colons: an IPv6 address that
    /// parses.
    HexColons,
    /// Nothing known: the regex runs over the whole text (custom detectors).
    Window,
}

/// One detector.
#[derive(Debug)]
pub struct Detector {
    pub name: String,
    /// `EMAIL`: the name in upper snake case, as masked values show it.
    pub label: String,
    pub kind: Kind,
    /// The value masked is the last capture group that took part in the match, or the whole
    /// match when the pattern has no group (context like `Bearer ` stays).
    pub pattern: String,
    /// `pattern` compiled as `regex::bytes::Regex` compiles it, on the engine under `regex`:
    /// searches bounded to a span and anchored at a position, with each thread's own scratch
    /// space (see `Masker::scan`).
    pub search: regex_automata::meta::Regex,
    pub validator: Validator,
    pub trigger: Trigger,
    /// Lower-case literals one of which every match contains, each with the most bytes that
    /// can precede it in a match. A window without any of them cannot hold a match (the
    /// detector does not run there), and a stream holds back only from where such a literal
    /// (or a part of one at the very end) occurs, rather than the whole match length.
    pub anchors: &'static [(&'static str, u16)],
    /// The bytes that can come between the start of a match and its anchor: a match starts
    /// within the run of them right before the anchor.
    pub lead: fn(u8) -> bool,
    /// The longest match the pattern can produce, in bytes.
    pub max_len: usize,
    /// ASCII digits every match holds: a span with fewer is skipped without running the
    /// regex (a phone word such as "called" in prose, with no number after it).
    pub min_digits: usize,
    /// Every match starts where an ASCII `\b` holds (the pattern begins with one): a span is
    /// searched anchored at its first such place, and after a rejected match at the next
    /// few (see `Masker::candidate`).
    pub word_start: bool,
    /// Where the value lies in a match.
    pub value: Value,
    /// Finds the pattern's matches by hand (16 of the 20 built-in patterns).
    pub matcher: Option<Matcher>,
}

/// A hand-written matcher for a built-in pattern: the end of the match the pattern has that
/// starts at `at` and ends by `end`, if there is one (its `\b` sees the bytes beyond both, as
/// the regex's does). A regex call costs a tenth of a microsecond or more however short the
/// text: the shape detectors make one for every chain of digits their trigger finds, the
/// others one per value on dense text. Each matcher walks its pattern's syntax with the
/// regex's leftmost-first, greedy semantics; property tests hold each to its pattern at every
/// start and bound (`matchers_find_what_their_patterns_find`) and at its length bounds
/// (`matchers_keep_their_patterns_length_bounds`).
pub type Matcher = fn(hay: &[u8], at: usize, end: usize) -> Option<usize>;

/// A byte of an ASCII word (`\w` without Unicode), what `(?-u:\b)` looks at.
pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `\b` holds before `hay[at]`, a word byte.
fn starts_word(hay: &[u8], at: usize) -> bool {
    at == 0 || !is_word(hay[at - 1])
}

/// Whether `\b` holds at `at`: a word byte on one side of it and not on the other.
pub(crate) fn boundary(hay: &[u8], at: usize) -> bool {
    let word = |i: usize| hay.get(i).is_some_and(|&b| is_word(b));
    at.checked_sub(1).is_some_and(word) != word(at)
}

/// Whether `\b` holds after `hay[at - 1]`, a word byte.
fn ends_word(hay: &[u8], at: usize) -> bool {
    hay.get(at).is_none_or(|b| !is_word(*b))
}

/// `hay[at..at + len]`, if it ends by `end`.
fn fixed(hay: &[u8], at: usize, len: usize, end: usize) -> Option<&[u8]> {
    hay.get(at..at + len).filter(|_| at + len <= end)
}

/// `\b\d{3}-\d{2}-\d{4}\b`
fn ssn_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    let found = fixed(hay, at, 11, end)?;
    let shape = found.iter().enumerate().all(|(i, b)| {
        if i == 3 || i == 6 {
            *b == b'-'
        } else {
            b.is_ascii_digit()
        }
    });
    (shape && starts_word(hay, at) && ends_word(hay, at + 11)).then_some(at + 11)
}

/// `(?i)\b[0-9a-f]{2}(?:[:-][0-9a-f]{2}){5}\b`
fn mac_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    let found = fixed(hay, at, 17, end)?;
    let shape = found.iter().enumerate().all(|(i, b)| {
        if i % 3 == 2 {
            matches!(b, b':' | b'-')
        } else {
            b.is_ascii_hexdigit()
        }
    });
    (shape && starts_word(hay, at) && ends_word(hay, at + 17)).then_some(at + 17)
}

/// `\b(?:\d{1,3}\.){3}\d{1,3}\b`: each group is all the digits there (after a fourth
/// digit the pattern finds neither a `.` nor a boundary, however it backtracks).
fn ipv4_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    let mut i = at;
    for group in 0..4 {
        let digits = hay[i.min(end)..end]
            .iter()
            .take(4)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if !(1..=3).contains(&digits) {
            return None;
        }
        i += digits;
        if group < 3 {
            if i < end && hay[i] == b'.' {
                i += 1;
            } else {
                return None;
            }
        }
    }
    (starts_word(hay, at) && ends_word(hay, i)).then_some(i)
}

/// `\b(?:\d[ -]?){12,18}\d\b`. Which bytes a match takes is forced (a separator is taken
/// when a digit follows it, or the next digit is missing), so the digits from `at` form one
/// chain, and the greedy repetition makes the match the longest prefix of 13 to 19 of them
/// whose last digit ends a word.
fn card_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    if !(at < end && hay[at].is_ascii_digit() && starts_word(hay, at)) {
        return None;
    }
    let digit = |i: usize| i < end && hay[i].is_ascii_digit();
    let mut digits = [at; 19];
    let mut n = 1;
    while n < 19 {
        let last = digits[n - 1];
        digits[n] = if digit(last + 1) {
            last + 1
        } else if digit(last + 2) && matches!(hay[last + 1], b' ' | b'-') {
            last + 2
        } else {
            break;
        };
        n += 1;
    }
    (13..=n)
        .rev()
        .map(|count| digits[count - 1] + 1)
        .find(|&found| ends_word(hay, found))
}

/// `\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b`: as for a card, each step is forced (a space is
/// taken when a capital or digit follows it), and the match is the longest run of 11 to 30
/// steps whose last byte ends a word.
fn iban_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    let head = fixed(hay, at, 4, end)?;
    if !(head[0].is_ascii_uppercase()
        && head[1].is_ascii_uppercase()
        && head[2].is_ascii_digit()
        && head[3].is_ascii_digit()
        && starts_word(hay, at))
    {
        return None;
    }
    let part = |i: usize| i < end && (hay[i].is_ascii_uppercase() || hay[i].is_ascii_digit());
    let mut steps = [0; 30];
    let mut n = 0;
    let mut next = at + 4;
    while n < 30 {
        next = if part(next) {
            next + 1
        } else if hay.get(next) == Some(&b' ') && part(next + 1) {
            next + 2
        } else {
            break;
        };
        steps[n] = next;
        n += 1;
    }
    (11..=n)
        .rev()
        .map(|count| steps[count - 1])
        .find(|&found| ends_word(hay, found))
}

/// The length of the run of `class` bytes at `hay[at..end]`, counting at most `cap`.
fn run(hay: &[u8], at: usize, end: usize, cap: usize, class: fn(u8) -> bool) -> usize {
    hay.get(at..end.min(hay.len()))
        .unwrap_or_default()
        .iter()
        .take(cap)
        .take_while(|b| class(**b))
        .count()
}

/// Whether `hay[at..]` starts with `literal`, ending by `end` (byte by byte: a slice
/// comparison calls `memcmp`, which costs more than these few bytes).
fn literal_at(hay: &[u8], at: usize, end: usize, literal: &[u8]) -> bool {
    fixed(hay, at, literal.len(), end)
        .is_some_and(|found| found.iter().zip(literal).all(|(a, b)| a == b))
}

/// `[A-Za-z0-9]`
fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// `[A-Za-z0-9_-]`: base64url, the alphabet of JWT parts and of several vendors' keys.
fn base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// `[0-9A-Z]`
fn upper_or_digit(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

/// After a prefix ending at `from`, a greedy `class{min,max}`: where it ends. With `word_end`
/// a `\b` follows, and as every byte of the classes used with it is a word byte, only the
/// whole run (no longer than `max`) can end a word.
fn tail(
    hay: &[u8],
    from: usize,
    end: usize,
    (min, max): (usize, usize),
    class: fn(u8) -> bool,
    word_end: bool,
) -> Option<usize> {
    let n = run(hay, from, end, max + usize::from(word_end), class);
    if word_end {
        ((min..=max).contains(&n) && ends_word(hay, from + n)).then_some(from + n)
    } else {
        (n >= min).then_some(from + n)
    }
}

/// `\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b`
fn aws_access_key_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    let head = fixed(hay, at, 4, end)?;
    if !(matches!(head, b"AKIA" | b"ASIA" | b"ABIA" | b"ACCA") && starts_word(hay, at)) {
        return None;
    }
    tail(hay, at + 4, end, (16, 16), upper_or_digit, true)
}

/// `\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b`
fn github_token_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    let head = fixed(hay, at, 4, end)?;
    if !starts_word(hay, at) {
        return None;
    }
    match head {
        [b'g', b'h', b'p' | b'o' | b'u' | b's' | b'r', b'_'] => {
            tail(hay, at + 4, end, (36, 255), alnum, true)
        }
        _ if literal_at(hay, at, end, b"github_pat_") => {
            tail(hay, at + 11, end, (22, 255), is_word, true)
        }
        _ => None,
    }
}

/// `\bsk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,200}|[A-Za-z0-9]{20,200})`
fn openai_key_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    if !(literal_at(hay, at, end, b"sk-") && starts_word(hay, at)) {
        return None;
    }
    let kinds: [&[u8]; 3] = [b"proj-", b"svcacct-", b"admin-"];
    kinds
        .iter()
        .find(|kind| literal_at(hay, at + 3, end, kind))
        .and_then(|kind| tail(hay, at + 3 + kind.len(), end, (20, 200), base64url, false))
        .or_else(|| tail(hay, at + 3, end, (20, 200), alnum, false))
}

/// `\bsk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{20,200}`
fn anthropic_key_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    if !(literal_at(hay, at, end, b"sk-ant-") && starts_word(hay, at)) {
        return None;
    }
    let kind = [&b"api"[..], b"admin"]
        .into_iter()
        .find(|kind| literal_at(hay, at + 7, end, kind))?;
    let digits = at + 7 + kind.len();
    let version = fixed(hay, digits, 3, end)?;
    if !(version[0].is_ascii_digit() && version[1].is_ascii_digit() && version[2] == b'-') {
        return None;
    }
    tail(hay, digits + 3, end, (20, 200), base64url, false)
}

/// `\bxox[abposr]-[A-Za-z0-9-]{10,200}`
fn slack_token_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    let head = fixed(hay, at, 5, end)?;
    if !(head.starts_with(b"xox")
        && b"abposr".contains(&head[3])
        && head[4] == b'-'
        && starts_word(hay, at))
    {
        return None;
    }
    tail(
        hay,
        at + 5,
        end,
        (10, 200),
        |b| alnum(b) || b == b'-',
        false,
    )
}

/// `\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,200}\b`
fn stripe_key_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    let head = fixed(hay, at, 8, end)?;
    if !(matches!(&head[..3], b"sk_" | b"rk_" | b"pk_")
        && matches!(&head[3..], b"live_" | b"test_")
        && starts_word(hay, at))
    {
        return None;
    }
    tail(hay, at + 8, end, (16, 200), alnum, true)
}

/// `\beyJ[A-Za-z0-9_-]{5,1024}\.eyJ[A-Za-z0-9_-]{5,4096}\.[A-Za-z0-9_-]{10,1024}`: each
/// part is the whole run (its class holds no `.`), but the last, which nothing follows.
fn jwt_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    if !(literal_at(hay, at, end, b"eyJ") && starts_word(hay, at)) {
        return None;
    }
    let header = at + 3 + run(hay, at + 3, end, 1025, base64url);
    if !((at + 8..=at + 3 + 1024).contains(&header) && literal_at(hay, header, end, b".eyJ")) {
        return None;
    }
    let payload = header + 4 + run(hay, header + 4, end, 4097, base64url);
    if !((header + 9..=header + 4 + 4096).contains(&payload) && literal_at(hay, payload, end, b"."))
    {
        return None;
    }
    tail(hay, payload + 1, end, (10, 1024), base64url, false)
}

/// `(?i)\b[a-z0-9._%+-]{1,64}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63}){0,4}\.[a-z]{2,24}\b`.
/// The local part and every domain label but the last are whole runs (a `@` or a `.`
/// follows each). The repetition is greedy: with the most labels that can be taken first,
/// the top-level domain is tried after each count down to none, and it is the letters at
/// the start of the label there, when a byte that ends a word follows them.
fn email_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    let local = run(hay, at, end, 65, |b| {
        b.is_ascii_alphanumeric() || b"._%+-".contains(&b)
    });
    if !((1..=64).contains(&local) && literal_at(hay, at + local, end, b"@") && boundary(hay, at)) {
        return None;
    }
    let label = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
    // Where each label after the `@` starts (the first, then one after each `.`), as long
    // as the label before it is 1 to 63 bytes and a `.` follows it.
    let mut starts = [0; 6];
    starts[0] = at + local + 1;
    let mut count = 1;
    while count < 6 {
        let from = starts[count - 1];
        let len = run(hay, from, end, 64, label);
        if !((1..=63).contains(&len) && literal_at(hay, from + len, end, b".")) {
            break;
        }
        starts[count] = from + len + 1;
        count += 1;
    }
    // The top-level domain starts at `starts[k + 1]` after `k` middle labels.
    (1..count).rev().find_map(|tld| {
        let from = starts[tld];
        let letters = run(hay, from, end, 25, |b| b.is_ascii_alphabetic());
        ((2..=24).contains(&letters) && ends_word(hay, from + letters)).then_some(from + letters)
    })
}

/// `(?i)\bbearer\s{1,4}([A-Za-z0-9._~+/-]{16,1024}={0,2})`: the token is the whole run of
/// its class (no `=`) but at most 1,024 bytes, and the padding follows only a whole run.
fn bearer_token_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    let word = fixed(hay, at, 6, end)?;
    if !(word.eq_ignore_ascii_case(b"bearer") && starts_word(hay, at)) {
        return None;
    }
    let spaces = run(hay, at + 6, end, 5, regex_space);
    if !(1..=4).contains(&spaces) {
        return None;
    }
    let from = at + 6 + spaces;
    let token = run(hay, from, end, 1025, |b| {
        b.is_ascii_alphanumeric() || b"._~+/-".contains(&b)
    });
    if token < 16 {
        return None;
    }
    if token > 1024 {
        return Some(from + 1024);
    }
    Some(from + token + run(hay, from + token, end, 2, |b| b == b'='))
}

/// `(?i)\b[a-z][a-z0-9+.-]{0,15}://[^\s:/@]{1,128}:([^\s/@]{1,128})@`: the scheme, the
/// user and the password are each the whole run of their class, as the byte after each is
/// one the class leaves out.
fn password_in_url_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    if !(at < end && hay[at].is_ascii_alphabetic() && starts_word(hay, at)) {
        return None;
    }
    let scheme = at + 1 + run(hay, at + 1, end, 16, scheme);
    if !(scheme <= at + 16 && literal_at(hay, scheme, end, b"://")) {
        return None;
    }
    let user_from = scheme + 3;
    let user = run(hay, user_from, end, 129, |b| {
        !(regex_space(b) || matches!(b, b':' | b'/' | b'@'))
    });
    if !((1..=128).contains(&user) && literal_at(hay, user_from + user, end, b":")) {
        return None;
    }
    let password_from = user_from + user + 1;
    let password = run(hay, password_from, end, 129, |b| {
        !(regex_space(b) || matches!(b, b'/' | b'@'))
    });
    ((1..=128).contains(&password) && literal_at(hay, password_from + password, end, b"@"))
        .then_some(password_from + password + 1)
}

/// The words that open a national phone number in `phone`'s pattern.
const PHONE_WORDS: &[&[u8]] = &[
    b"phone",
    b"tel",
    b"mobile",
    b"cell",
    b"call",
    b"fax",
    b"contact",
    b"whatsapp",
    b"sms",
];

/// `phone`: `(\+[1-9](?:[ .-]?\d){6,14})\b`, or
/// `\b(?:phone|…|sms)[a-z]{0,3}\b[^0-9\n]{0,16}(\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4})\b`
/// (case-insensitive). In the first, as for a card, the digits are one forced chain and the
/// match is the longest of 7 to 15 digits that ends a word. In the second, the word is a
/// whole run of letters; the number starts at the first digit after it when at most 16 bytes
/// come between (the greedy prefix tries that first), or else at a `(` right before it.
fn phone_at(hay: &[u8], at: usize, end: usize) -> Option<usize> {
    if at >= end {
        return None;
    }
    let digit = |i: usize| i < end && hay[i].is_ascii_digit();
    if hay[at] == b'+' {
        if !(at + 1 < end && matches!(hay[at + 1], b'1'..=b'9')) {
            return None;
        }
        let mut digits = [at + 1; 15];
        let mut n = 1;
        while n < 15 {
            let last = digits[n - 1];
            digits[n] = if digit(last + 1) {
                last + 1
            } else if digit(last + 2) && matches!(hay[last + 1], b' ' | b'.' | b'-') {
                last + 2
            } else {
                break;
            };
            n += 1;
        }
        return (7..=n)
            .rev()
            .map(|count| digits[count - 1] + 1)
            .find(|&found| ends_word(hay, found));
    }
    let letters = run(hay, at, end, 12, |b| b.is_ascii_alphabetic());
    let opens = PHONE_WORDS.iter().any(|word| {
        hay[at..at + letters]
            .get(..word.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(word))
            && letters - word.len() <= 3
    });
    if !(opens && starts_word(hay, at) && ends_word(hay, at + letters)) {
        return None;
    }
    let words_end = at + letters;
    // The number: `\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}\b`, each optional byte taken when there.
    let number = |from: usize| -> Option<usize> {
        let digits = |i: usize, n: usize| {
            (i + n <= end && hay[i..i + n].iter().all(u8::is_ascii_digit)).then_some(i + n)
        };
        let optional = |i: usize, bytes: &[u8]| i + usize::from(i < end && bytes.contains(&hay[i]));
        let area = digits(optional(from, b"("), 3)?;
        let exchange = digits(optional(optional(area, b")"), b" .-"), 3)?;
        let line = digits(optional(exchange, b" .-"), 4)?;
        ends_word(hay, line).then_some(line)
    };
    // The bytes up to the first digit, of which the pattern's prefix takes at most 16.
    let gap = run(hay, words_end, end, 18, |b| {
        !b.is_ascii_digit() && b != b'\n'
    });
    let first = words_end + gap;
    let at_digit = (gap <= 16).then(|| number(first)).flatten();
    at_digit.or_else(|| {
        ((1..=17).contains(&gap) && hay[first - 1] == b'(')
            .then(|| number(first - 1))
            .flatten()
    })
}

/// Where the value (what is masked) lies in a match. A capture group costs a slower engine
/// than the match alone: after the DFA has found the match, the bounded backtracker runs
/// over it again (for `generic_secret`, whose key-name repetitions it backtracks through,
/// about 0.5 µs a match, the most of any detector on dense text). Every built-in pattern
/// with a group has it at a place its syntax fixes, found by hand in the match instead (only
/// a custom detector's group is still searched for); a property test holds each to the group
/// (`values_found_by_hand_are_the_groups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// The last capture group that took part, or the whole match when the pattern has none.
    Group,
    /// After the first `:` or `=`, the whitespace after it and one quote: a key's value
    /// (`generic_secret`; neither byte can be part of the key name before it).
    Assigned,
    /// After the first word and the whitespace after it (`Bearer …`).
    AfterWord,
    /// From after the `:` that follows the user in `scheme://user:` to before the final `@`
    /// (the scheme and the user hold no `:`).
    UrlPassword,
    /// The last `n` bytes.
    Last(usize),
    /// `phone`'s: an E.164 number is the whole match; a national one starts at the first
    /// digit after the opening word when at most 16 bytes come between, or else at the `(`
    /// before it (see [`phone_at`]).
    Phone,
}

impl Value {
    /// The value's range in `found`, a whole match; `None` for [`Value::Group`].
    pub fn locate(self, found: &[u8]) -> Option<(usize, usize)> {
        let len = found.len();
        let after = |from: usize, skip: fn(u8) -> bool| {
            from + found[from.min(len)..]
                .iter()
                .take_while(|b| skip(**b))
                .count()
        };
        match self {
            Self::Group => None,
            Self::Assigned => {
                let sign = found.iter().position(|b| matches!(b, b':' | b'='))?;
                let start = after(sign + 1, regex_space);
                let start = if matches!(found.get(start), Some(b'"' | b'\'')) {
                    start + 1
                } else {
                    start
                };
                Some((start.min(len), len))
            }
            Self::AfterWord => {
                let space = found.iter().position(|b| regex_space(*b))?;
                Some((after(space, regex_space), len))
            }
            Self::UrlPassword => {
                let scheme = memchr::memmem::find(found, b"://")? + 3;
                let colon = scheme + memchr::memchr(b':', &found[scheme..])?;
                Some((colon + 1, len.saturating_sub(1).max(colon + 1)))
            }
            Self::Last(n) => Some((len.saturating_sub(n), len)),
            Self::Phone => {
                if found.first() == Some(&b'+') {
                    return Some((0, len));
                }
                let words_end = found.iter().take_while(|b| b.is_ascii_alphabetic()).count();
                let gap = found[words_end..]
                    .iter()
                    .take_while(|b| !b.is_ascii_digit())
                    .count();
                let first = words_end + gap;
                Some((if gap <= 16 { first } else { first - 1 }, len))
            }
        }
    }
}

/// `\s` of a pattern without Unicode: `[\t\n\v\f\r ]` (`u8::is_ascii_whitespace` leaves
/// out `\v`).
fn regex_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ')
}

impl Detector {
    /// A custom detector from a policy's `[[detector]]`: `pattern` must compile within
    /// [`REGEX_SIZE_LIMIT`] and have a bounded match length (`{m,n}` rather than `+` or `*`).
    pub fn custom(name: &str, pattern: &str, validator: Validator) -> Result<Self, CustomError> {
        let search = searcher(pattern, REGEX_SIZE_LIMIT).map_err(CustomError::Regex)?;
        let max_len = max_len(pattern)
            .filter(|len| *len <= MAX_MATCH_LEN)
            .ok_or(CustomError::Unbounded)?;
        Ok(Self {
            name: name.to_string(),
            label: label_of(name),
            kind: Kind::Pii,
            search,
            pattern: pattern.to_string(),
            validator,
            trigger: Trigger::Window,
            anchors: &[],
            lead: any_byte,
            max_len,
            min_digits: 0,
            word_start: starts_at_word_boundary(pattern),
            value: Value::Group,
            matcher: None,
        })
    }
}

/// Why a custom detector was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomError {
    /// The pattern does not compile (syntax, or over the size limit).
    Regex(String),
    /// Its matches have no length bound, or one over [`MAX_MATCH_LEN`].
    Unbounded,
}

/// `pattern` compiled as `regex::bytes::Regex` compiles it (leftmost-first, any bytes).
fn searcher(pattern: &str, size_limit: usize) -> Result<regex_automata::meta::Regex, String> {
    use regex_automata::meta;
    meta::Builder::new()
        .configure(
            meta::Config::new()
                .match_kind(regex_automata::MatchKind::LeftmostFirst)
                .utf8_empty(false)
                .nfa_size_limit(Some(size_limit))
                .hybrid_cache_capacity(2 << 20),
        )
        .syntax(regex_automata::util::syntax::Config::new().utf8(false))
        .build(pattern)
        .map_err(|e| e.to_string())
}

/// Whether every match of `pattern` starts where an ASCII word boundary holds (`\b`, or
/// `\b{start}` / `\b{end}`, which hold only where `\b` does, before any byte is matched).
pub fn starts_at_word_boundary(pattern: &str) -> bool {
    use regex_syntax::hir::Look;
    regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(pattern)
        .is_ok_and(|hir| {
            let prefix = hir.properties().look_set_prefix();
            [Look::WordAscii, Look::WordStartAscii, Look::WordEndAscii]
                .into_iter()
                .any(|look| prefix.contains(look))
        })
}

fn label_of(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// Upper bound, in bytes, of what `pattern` can match; `None` if unbounded or unparsable.
pub fn max_len(pattern: &str) -> Option<usize> {
    regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()?
        .properties()
        .maximum_len()
}

/// Largest length bound accepted for a detector (a custom one beyond it is refused).
pub const MAX_MATCH_LEN: usize = 16 << 10;

/// Compiled-program size limit for detector regexes from a policy.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The built-in ones: long bounded repetitions (PEM bodies, JWT parts) take more room.
const BUILTIN_SIZE_LIMIT: usize = 4 << 20;

struct Spec {
    name: &'static str,
    kind: Kind,
    pattern: &'static str,
    validator: Validator,
    trigger: Trigger,
    anchors: &'static [(&'static str, u16)],
    lead: fn(u8) -> bool,
    /// ASCII digits every match holds (0: none needed).
    min_digits: usize,
    value: Value,
    matcher: Option<Matcher>,
}

fn any_byte(_: u8) -> bool {
    true
}

/// An e-mail address's local part.
fn local_part(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._%+-".contains(&b)
}

/// A key name around `secret`, `api_key`, …
fn key_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.-".contains(&b)
}

/// A URL scheme.
fn scheme(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+.-".contains(&b)
}

const fn chain(digits: u16, dots: u16) -> Trigger {
    Trigger::Chain { digits, dots }
}

// `(?-u:\b)`: ASCII word boundaries keep every pattern on the regex crate's DFA engines
// (a Unicode `\b` makes them give up on non-ASCII text).
const SPECS: &[Spec] = &[
    Spec {
        name: "email",
        kind: Kind::Pii,
        pattern: r"(?i-u)\b[a-z0-9._%+-]{1,64}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63}){0,4}\.[a-z]{2,24}\b",
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[("@", 64)],
        lead: local_part,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(email_at),
    },
    Spec {
        // E.164 (+ and 7–15 digits) anywhere; national formats only after a phone-ish word,
        // which keeps order numbers and dates out.
        name: "phone",
        kind: Kind::Pii,
        pattern: r"(?i-u)(?:(\+[1-9](?:[ .-]?\d){6,14})\b|\b(?:phone|tel|mobile|cell|call|fax|contact|whatsapp|sms)[a-z]{0,3}\b[^0-9\n]{0,16}(\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4})\b)",
        validator: Validator::Phone,
        trigger: Trigger::Anchors,
        anchors: &[
            ("+", 0),
            ("phone", 0),
            ("tel", 0),
            ("mobile", 0),
            ("cell", 0),
            ("call", 0),
            ("fax", 0),
            ("contact", 0),
            ("whatsapp", 0),
            ("sms", 0),
        ],
        lead: any_byte,
        // E.164: + and at least 7 digits; national formats: 10.
        min_digits: 7,
        value: Value::Phone,
        matcher: Some(phone_at),
    },
    Spec {
        name: "credit_card",
        kind: Kind::Pii,
        pattern: r"(?-u)\b(?:\d[ -]?){12,18}\d\b",
        validator: Validator::Luhn,
        trigger: chain(13, 0),
        anchors: &[],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(card_at),
    },
    Spec {
        name: "us_ssn",
        kind: Kind::Pii,
        pattern: r"(?-u)\b\d{3}-\d{2}-\d{4}\b",
        validator: Validator::UsSsn,
        trigger: chain(9, 0),
        anchors: &[],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(ssn_at),
    },
    Spec {
        name: "iban",
        kind: Kind::Pii,
        pattern: r"(?-u)\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
        validator: Validator::Mod97,
        trigger: Trigger::CountryCode,
        anchors: &[],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(iban_at),
    },
    Spec {
        name: "ipv4",
        kind: Kind::Pii,
        pattern: r"(?-u)\b(?:\d{1,3}\.){3}\d{1,3}\b",
        validator: Validator::Ipv4,
        trigger: chain(4, 3),
        anchors: &[],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(ipv4_at),
    },
    Spec {
        name: "ipv6",
        kind: Kind::Pii,
        pattern: r"(?i-u)(?:\b[0-9a-f]{1,4}|)(?::[0-9a-f]{0,4}){2,7}\b",
        validator: Validator::Ipv6,
        trigger: Trigger::HexColons,
        anchors: &[],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: None,
    },
    Spec {
        name: "mac",
        kind: Kind::Pii,
        pattern: r"(?i-u)\b[0-9a-f]{2}(?:[:-][0-9a-f]{2}){5}\b",
        validator: Validator::None,
        trigger: Trigger::HexPairs,
        anchors: &[],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(mac_at),
    },
    Spec {
        name: "aws_access_key",
        kind: Kind::Secret,
        pattern: r"(?-u)\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[("akia", 0), ("asia", 0), ("abia", 0), ("acca", 0)],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(aws_access_key_at),
    },
    Spec {
        name: "aws_secret_key",
        kind: Kind::Secret,
        pattern: r#"(?i-u)aws.{0,20}?(?:secret|key).{0,20}?['"=:\s]\s{0,4}([A-Za-z0-9/+=]{40})"#,
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[("aws", 0)],
        lead: any_byte,
        min_digits: 0,
        value: Value::Last(40),
        matcher: None,
    },
    Spec {
        name: "github_token",
        kind: Kind::Secret,
        pattern: r"(?-u)\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[
            ("ghp_", 0),
            ("gho_", 0),
            ("ghu_", 0),
            ("ghs_", 0),
            ("ghr_", 0),
            ("github_pat_", 0),
        ],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(github_token_at),
    },
    Spec {
        name: "openai_key",
        kind: Kind::Secret,
        pattern: r"(?-u)\bsk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,200}|[A-Za-z0-9]{20,200})",
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[("sk-", 0)],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(openai_key_at),
    },
    Spec {
        name: "anthropic_key",
        kind: Kind::Secret,
        pattern: r"(?-u)\bsk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{20,200}",
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[("sk-ant-", 0)],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(anthropic_key_at),
    },
    Spec {
        name: "slack_token",
        kind: Kind::Secret,
        pattern: r"(?-u)\bxox[abposr]-[A-Za-z0-9-]{10,200}",
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[("xox", 0)],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(slack_token_at),
    },
    Spec {
        name: "stripe_key",
        kind: Kind::Secret,
        pattern: r"(?-u)\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,200}\b",
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[("_live_", 2), ("_test_", 2)],
        lead: |b| b.is_ascii_alphabetic(),
        min_digits: 0,
        value: Value::Group,
        matcher: Some(stripe_key_at),
    },
    Spec {
        name: "jwt",
        kind: Kind::Secret,
        pattern: r"(?-u)\beyJ[A-Za-z0-9_-]{5,1024}\.eyJ[A-Za-z0-9_-]{5,4096}\.[A-Za-z0-9_-]{10,1024}",
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[("eyj", 0)],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: Some(jwt_at),
    },
    Spec {
        name: "private_key",
        kind: Kind::Secret,
        pattern: r"(?-u)-----BEGIN (?:[A-Z0-9]{1,10} ){0,3}PRIVATE KEY-----[A-Za-z0-9+/=:,\s-]{1,4096}?-----END (?:[A-Z0-9]{1,10} ){0,3}PRIVATE KEY-----",
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[("-----begin ", 0)],
        lead: any_byte,
        min_digits: 0,
        value: Value::Group,
        matcher: None,
    },
    Spec {
        name: "bearer_token",
        kind: Kind::Secret,
        pattern: r"(?i-u)\bbearer\s{1,4}([A-Za-z0-9._~+/-]{16,1024}={0,2})",
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[("bearer", 0)],
        lead: any_byte,
        min_digits: 0,
        value: Value::AfterWord,
        matcher: Some(bearer_token_at),
    },
    Spec {
        name: "password_in_url",
        kind: Kind::Secret,
        pattern: r"(?i-u)\b[a-z][a-z0-9+.-]{0,15}://[^\s:/@]{1,128}:([^\s/@]{1,128})@",
        validator: Validator::None,
        trigger: Trigger::Anchors,
        anchors: &[("://", 16)],
        lead: scheme,
        min_digits: 0,
        value: Value::UrlPassword,
        matcher: Some(password_in_url_at),
    },
    Spec {
        name: "generic_secret",
        kind: Kind::Secret,
        pattern: r#"(?i-u)\b[a-z0-9_.-]{0,40}(?:secret|token|passw(?:or)?d|passwd|pwd|api[_-]?key|access[_-]?key|private[_-]?key|credential)[a-z0-9_.-]{0,40}["']?\s{0,4}[:=]\s{0,4}["']?([A-Za-z0-9/+=_.@!#$%^&*~-]{12,256})"#,
        validator: Validator::Entropy,
        trigger: Trigger::Anchors,
        anchors: &[
            ("secret", 40),
            ("token", 40),
            ("passw", 40),
            ("pwd", 40),
            ("key", 48),
            ("credential", 40),
        ],
        lead: key_name,
        min_digits: 0,
        value: Value::Assigned,
        matcher: None,
    },
];

/// The built-in detectors, compiled once.
pub static CATALOGUE: LazyLock<Vec<Arc<Detector>>> = LazyLock::new(|| {
    SPECS
        .iter()
        .map(|spec| {
            Arc::new(Detector {
                name: spec.name.to_string(),
                label: label_of(spec.name),
                kind: spec.kind,
                pattern: spec.pattern.to_string(),
                search: searcher(spec.pattern, BUILTIN_SIZE_LIMIT)
                    .unwrap_or_else(|e| panic!("built-in detector {} compiles: {e}", spec.name)),
                validator: spec.validator,
                trigger: spec.trigger,
                anchors: spec.anchors,
                lead: spec.lead,
                max_len: max_len(spec.pattern).expect("built-in detector patterns are bounded"),
                min_digits: spec.min_digits,
                value: spec.value,
                matcher: spec.matcher,
                word_start: starts_at_word_boundary(spec.pattern),
            })
        })
        .collect()
});

/// Group names that stand for several detectors.
pub const GROUPS: &[&str] = &["pii", "secrets"];

/// Built-in detector names matching `name` (a detector or a group); empty if unknown.
pub fn expand(name: &str) -> Vec<Arc<Detector>> {
    let kind = match name {
        "pii" => Some(Kind::Pii),
        "secrets" => Some(Kind::Secret),
        _ => None,
    };
    CATALOGUE
        .iter()
        .filter(|d| kind.map_or(d.name == name, |kind| d.kind == kind))
        .cloned()
        .collect()
}

fn card_number(value: &[u8]) -> bool {
    let mut buf = [0u32; 19];
    let mut len = 0;
    for b in value.iter().filter(|b| b.is_ascii_digit()) {
        if len == buf.len() {
            return false;
        }
        buf[len] = u32::from(b - b'0');
        len += 1;
    }
    let digits = &buf[..len];
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let prefix = |n: usize| digits[..n].iter().fold(0, |acc, d| acc * 10 + d);
    let issuer = digits[0] == 4
        || (51..=55).contains(&prefix(2))
        || (2221..=2720).contains(&prefix(4))
        || matches!(prefix(2), 34 | 37 | 36 | 38 | 30 | 35 | 65 | 62)
        || prefix(4) == 6011
        || (644..=649).contains(&prefix(3));
    issuer && luhn(digits)
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn iban(value: &[u8]) -> bool {
    let mut buf = [0u8; 34];
    let mut len = 0;
    for &b in value.iter().filter(|b| **b != b' ') {
        if len == buf.len() {
            return false;
        }
        buf[len] = b;
        len += 1;
    }
    let compact = &buf[..len];
    if len < 15 {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder: u32 = 0;
    for &b in rearranged {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// Area 001–899 except 666, group 01–99, serial 0001–9999, and not one of the numbers the SSA
/// lists as never issued (advertising and example numbers).
fn us_ssn(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let mut parts = value.split('-');
    let (Some(area), Some(group), Some(serial), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(a), Ok(g), Ok(s)) = (
        area.parse::<u32>(),
        group.parse::<u32>(),
        serial.parse::<u32>(),
    ) else {
        return false;
    };
    (1..900).contains(&a)
        && a != 666
        && g != 0
        && s != 0
        && !matches!(value, "078-05-1120" | "219-09-9999" | "123-45-6789")
}

const STOP_WORDS: &[&str] = &[
    "example",
    "changeme",
    "placeholder",
    "redacted",
    "xxxxxxxx",
    "your_",
    "dummy",
    "password",
];

/// Shannon entropy of at least 3 bits per character and no stop-word: real secrets, not
/// `password = "changeme-please"`.
fn high_entropy(value: &[u8]) -> bool {
    let lower = String::from_utf8_lossy(value).to_ascii_lowercase();
    if STOP_WORDS.iter().any(|w| lower.contains(w)) {
        return false;
    }
    // `min_length=12` is a setting, not a secret: `=` only as base64 padding.
    let unpadded = value
        .strip_suffix(b"==")
        .or_else(|| value.strip_suffix(b"="))
        .unwrap_or(value);
    if unpadded.contains(&b'=') {
        return false;
    }
    // An identifier (`snake_case_name`) is no secret: a secret mixes digits or capitals in.
    if !value
        .iter()
        .any(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in value {
        counts[usize::from(b)] += 1;
    }
    #[expect(clippy::cast_precision_loss, reason = "lengths are far below 2^52")]
    let len = value.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum();
    entropy >= 3.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators() {
        assert!(card_number(b"4111 1111 1111 1111"));
        assert!(!card_number(b"4111 1111 1111 1112"));
        assert!(!card_number(b"1234567812345670")); // Luhn-valid, no issuer
        assert!(iban(b"GB82 WEST 1234 5698 7654 32"));
        assert!(!iban(b"GB82 WEST 1234 5698 7654 33"));
        assert!(us_ssn(b"219-09-9998"));
        for bad in ["000-12-3456", "666-12-3456", "900-12-3456", "078-05-1120"] {
            assert!(!us_ssn(bad.as_bytes()), "{bad}");
        }
        assert!(!us_ssn(b"219-09-9998-1"));
        assert!(!us_ssn(b"219-099998"));
        assert!(!iban(b"GB82 WEST 1234 5698 7654 32 1111 1111 1"));
        assert!(high_entropy(b"q8Zr3kP0vX7mW2tL"));
        assert!(!high_entropy(b"changeme-changeme"));
        // A dotted quad after a version word is a version (the word may be cut, the bytes
        // before it need not be UTF-8).
        let ipv4 = |text: &[u8]| {
            let at = text.len() - "10.20.30.40".len();
            Validator::Ipv4.accepts_in(text, at, text.len())
        };
        assert!(ipv4(b"at 10.20.30.40"));
        assert!(ipv4(b"10.20.30.40"));
        assert!(ipv4(b"prev 10.20.30.40"));
        assert!(ipv4(b"\xffv2 10.20.30.40"));
        for version in [
            &b"version 10.20.30.40"[..],
            b"Version: 10.20.30.40",
            b"rev=10.20.30.40",
            b"\xffv 10.20.30.40",
            b"our FIRMWARE 10.20.30.40",
            b"v10.20.30.40",
        ] {
            assert!(!ipv4(version), "{}", String::from_utf8_lossy(version));
        }
    }

    #[test]
    fn groups_expand() {
        assert!(expand("secrets").iter().all(|d| d.kind == Kind::Secret));
        assert!(expand("pii").iter().any(|d| d.name == "email"));
        assert!(expand("nope").is_empty());
        assert_eq!(expand("jwt").len(), 1);
    }

    #[test]
    fn every_pattern_is_bounded() {
        for detector in CATALOGUE.iter() {
            assert!(detector.max_len <= MAX_MATCH_LEN, "{}", detector.name);
        }
        assert_eq!(max_len(r"(?-u)\bEMP-\d{6}\b"), Some(10));
        assert_eq!(max_len(r"\d+"), None);
    }

    #[test]
    fn word_start_is_known_only_where_every_match_begins_at_a_boundary() {
        let starts = |name: &str| {
            CATALOGUE
                .iter()
                .find(|d| d.name == name)
                .unwrap()
                .word_start
        };
        assert!(starts("email") && starts("credit_card") && starts("generic_secret"));
        // E.164 needs no boundary before `+`; an IPv6 address may begin with `:`.
        assert!(!starts("phone") && !starts("ipv6") && !starts("private_key"));
        assert!(starts_at_word_boundary(r"(?-u)\b{start}x"));
        assert!(!starts_at_word_boundary(r"(?-u)\b?x"));
        assert!(!starts_at_word_boundary(r"(?-u)x\b"));
        // A Unicode `\b` is not an ASCII one (`é` is a word character to it).
        assert!(!starts_at_word_boundary(r"\bx"));
    }

    /// Bytes around the values of the detectors whose value is found by hand: key names and
    /// signs, whitespace (`\v` too), quotes, URLs with and without a password, values.
    const VALUE_PIECES: &[&str] = &[
        "api_key",
        "Secret",
        "token",
        "PASSWORD",
        "passwd",
        "pwd",
        "access-key",
        "credential",
        "private_key",
        "aws",
        "AWS_SECRET",
        "Key",
        "=",
        "==",
        ":",
        " ",
        "  ",
        "\t",
        "\u{b}",
        "\n",
        "\"",
        "'",
        "q8Zr3kP0vX7mW2tLq9",
        "abcDEF123456789/+=",
        "p@ss",
        "a:b",
        "x",
        "_",
        ".",
        "-",
        "/",
        "Bearer",
        "bearer ",
        "postgres://",
        "https://",
        "u",
        "user",
        "@",
        "host",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "phone",
        "Tel",
        "callers",
        " (",
        "(",
        ")",
        "415",
        "555",
        "0134",
        "+1 415 555 0134",
        "+44",
        "at our office on the first floor",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY=",
        "eyJhbGciOiJIUzI1NiJ9.abcdefghijk",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// For every match, a value found by hand is the pattern's capture group.
        #[test]
        fn values_found_by_hand_are_the_groups(
            pieces in proptest::collection::vec(proptest::sample::select(VALUE_PIECES), 0..40)
        ) {
            let hay = pieces.concat();
            for detector in CATALOGUE.iter().filter(|d| d.value != Value::Group) {
                for found in detector.search.captures_iter(hay.as_bytes()) {
                    let whole = found.get_match().expect("a match");
                    let group = (1..found.group_len())
                        .rev()
                        .find_map(|g| found.get_group(g))
                        .expect("the value group takes part");
                    let (start, end) = detector
                        .value
                        .locate(&hay.as_bytes()[whole.range()])
                        .expect("a value");
                    proptest::prop_assert_eq!(
                        (whole.start() + start, whole.start() + end),
                        (group.start, group.end),
                        "{} in {:?}",
                        detector.name,
                        &hay[whole.range()]
                    );
                }
            }
        }
    }

    /// Bytes around the values of the detectors with a hand-written matcher.
    const SHAPE_PIECES: &[&str] = &[
        "0",
        "1",
        "4",
        "12",
        "123",
        "1234",
        "4111",
        "9998",
        " ",
        "-",
        ".",
        ":",
        "_",
        "a",
        "F",
        "g",
        "Z",
        "GB",
        "82",
        "AB",
        "WEST",
        "00",
        "1a",
        "2B",
        "\n",
        "é",
        "219-09-9998",
        "10.20.30.40",
        "4111 1111 1111 1111",
        "00:1a:2b:3c:4d:5e",
        "ab-cd-ef-01-23-45",
        "GB82 WEST 1234 5698 7654 32",
        " NO93 8601 1117 947.",
        "NO9386011117947",
        " 4111111111111111 ",
        "1.2.3",
        "1234-5678-9012-3456-7890",
        "@",
        "%",
        "+",
        "alice.smith",
        "@example.com",
        "example",
        "com",
        "io",
        "-x",
        "AKIA",
        "IOSFODNN7EXAMPLE",
        "ghp_",
        "github_pat_",
        "aBcDeFgHiJkLmNoPqRsTuVwXyZ",
        "0123456789",
        "sk-",
        "proj-",
        "ant-api03-",
        "xoxb-",
        "sk_live_",
        "rk_test_",
        "eyJ",
        "eyJhbGciOiJIUzI1NiJ9",
        ".eyJzdWIiOiIx",
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "+1 415 555 0134",
        "+44 20.7946-0958",
        "phone",
        "Tel",
        "callers",
        "contact: ",
        "(",
        ")",
        "415",
        "555",
        "(415) 555-0134",
        "a long way before the",
        "Bearer",
        "bearer \t",
        "\u{b}",
        "=",
        "~/",
        "postgres://",
        "https://",
        "app:S3cr3t-Pa55@",
        "user",
        "p:w",
        "/",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// A matcher gives the match its pattern gives, searched anchored at every start,
        /// bounded by the text's end and by an end inside it.
        #[test]
        fn matchers_find_what_their_patterns_find(
            pieces in proptest::collection::vec(proptest::sample::select(SHAPE_PIECES), 0..30),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            use regex_automata::{Anchored, Input};
            let hay = pieces.concat().into_bytes();
            let inner = cut.index(hay.len() + 1);
            for detector in CATALOGUE.iter() {
                let Some(matcher) = detector.matcher else { continue };
                for at in 0..=hay.len() {
                    for end in [hay.len(), inner.max(at)] {
                        let input = Input::new(&hay).span(at..end).anchored(Anchored::Yes);
                        let expected = detector.search.search(&input).map(|m| m.end());
                        proptest::prop_assert_eq!(
                            matcher(&hay, at, end),
                            expected,
                            "{} at {} to {} in {:?}",
                            detector.name,
                            at,
                            end,
                            String::from_utf8_lossy(&hay)
                        );
                    }
                }
            }
        }
    }

    /// The length bounds of the matchers' runs, which random pieces rarely reach: runs of
    /// every length around each bound, followed by what ends them or goes on after them.
    #[test]
    fn matchers_keep_their_patterns_length_bounds() {
        use regex_automata::{Anchored, Input};
        let heads: &[(&str, &str, &str, &[usize])] = &[
            ("aws_access_key", "AKIA", "A", &[16]),
            ("github_token", "ghp_", "A", &[36, 255]),
            ("github_token", "github_pat_", "A", &[22, 255]),
            ("openai_key", "sk-proj-", "A", &[20, 200]),
            ("openai_key", "sk-", "A", &[20, 200]),
            ("anthropic_key", "sk-ant-admin01-", "A", &[20, 200]),
            ("slack_token", "xoxp-", "A", &[10, 200]),
            ("stripe_key", "pk_live_", "A", &[16, 200]),
            ("jwt", "eyJabcde.eyJabcde.", "A", &[10, 1024]),
            ("jwt", "eyJ", "A", &[5, 1024]),
            ("jwt", "eyJabcde.eyJ", "A", &[5, 4096]),
            ("email", "a@b.", "A", &[2, 24]),
            ("email", "", "A", &[1, 64]),
            ("bearer_token", "Bearer ", "A", &[16, 1024]),
            ("password_in_url", "s://", "A", &[128]),
            ("password_in_url", "s://u:", "A", &[128]),
            ("password_in_url", "s", "A", &[15]),
            ("phone", "phone", " ", &[16]),
            ("bearer_token", "Bearer", " ", &[4]),
        ];
        for &(name, head, filler, bounds) in heads {
            let detector = CATALOGUE.iter().find(|d| d.name == name).unwrap();
            let matcher = detector.matcher.unwrap();
            for &bound in bounds {
                for len in [bound - 1, bound, bound + 1] {
                    for after in [
                        "",
                        " ",
                        "_",
                        "9",
                        "===x",
                        ".eyJabcde.0123456789",
                        ".0123456789",
                        "@x.io",
                        ":p@",
                        "://u:p@",
                        "(415) 555-0134",
                        "415.555.0134",
                        "0123456789abcdef0",
                    ] {
                        let hay = format!("{head}{}{after}", filler.repeat(len)).into_bytes();
                        let input = Input::new(&hay).anchored(Anchored::Yes);
                        let expected = detector.search.search(&input).map(|m| m.end());
                        assert_eq!(
                            matcher(&hay, 0, hay.len()),
                            expected,
                            "{name} {head:?} + {len} + {after:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn values_are_found_by_hand_where_the_pattern_fixes_them() {
        let value = |name: &str, text: &str| {
            let detector = CATALOGUE.iter().find(|d| d.name == name).unwrap();
            let found = detector.search.find(text.as_bytes()).expect("a match");
            let (start, end) = detector
                .value
                .locate(&text.as_bytes()[found.range()])
                .unwrap();
            text[found.start() + start..found.start() + end].to_string()
        };
        assert_eq!(
            value("generic_secret", "api_key = 'q8Zr3kP0vX7mW2tL'"),
            "q8Zr3kP0vX7mW2tL"
        );
        assert_eq!(
            value("generic_secret", "token:\u{b}==q8Zr3kP0vX7mW2tL"),
            "==q8Zr3kP0vX7mW2tL"
        );
        // A national number's prefix takes at most 16 bytes: a `(` after more starts it.
        let gap = |n: usize| format!("phone{}(415) 555-0134", " ".repeat(n));
        assert_eq!(value("phone", &gap(15)), "415) 555-0134");
        assert_eq!(value("phone", &gap(16)), "(415) 555-0134");
        assert_eq!(value("phone", "Phone +44 20 7946 0958"), "+44 20 7946 0958");
        assert_eq!(
            value("bearer_token", "Bearer \t abcdefghijklmnop0123"),
            "abcdefghijklmnop0123"
        );
        assert_eq!(
            value("password_in_url", "postgres://app:S3cr:t@db"),
            "S3cr:t"
        );
        assert_eq!(
            value(
                "aws_secret_key",
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
            ),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        );
    }
}
