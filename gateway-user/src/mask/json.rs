//! Where a JSON document's string values are, found while its grammar is checked.
//!
//! Masking a JSON body in place needs two things of it: that it is valid JSON (else it is
//! masked as text, so that nothing outside a string can hold an unmasked value), and where
//! its string values are. `serde_json` gives both, but reads every number, key and string as
//! a value, a third of the time of masking an API's list of records. This scanner only
//! checks the grammar of RFC 8259: strings are skipped sixteen bytes at a time up to a `"`,
//! `\` or control character, numbers and literals are read by their bytes, and containers
//! are kept on a stack instead of recursion (so any depth is read).
//!
//! It may accept a document `serde_json` rejects only where the grammar is met and a value is
//! out of `serde_json`'s range (a number like `1e999`, a nesting deeper than 128): such a
//! document is still JSON, and masked as JSON. A string's escapes are checked for their
//! shape here; the masker decodes an escaped value with `serde_json`, and a document whose
//! escape does not decode falls back to the tree walk, and from it to text.

/// A string value (not a key): its opening and closing quote, and whether it has escapes
/// (so its bytes are not its text).
pub type StringValue = (usize, usize, bool);

/// The string values of `body` in order, or `None` if it is not one JSON value (with
/// optional whitespace around it).
pub fn string_values(body: &[u8]) -> Option<Vec<StringValue>> {
    scan(body).map(|(strings, _)| strings)
}

/// [`string_values`], and whether the document has a key naming an LLM's token log
/// probabilities (`logprobs`, Gemini's `logprobsResult`): masking must look at those
/// whole (see `sse::strip_token_logprobs`), not string by string.
pub fn scan(body: &[u8]) -> Option<(Vec<StringValue>, bool)> {
    let mut logprobs = false;
    // A guess that saves most regrowing: a value string every 40 bytes.
    let mut found = Vec::with_capacity(body.len() / 40 + 1);
    // The open containers, innermost last: `true` for an object.
    let mut open: Vec<bool> = Vec::new();
    let mut at = whitespace(body, 0);
    'value: loop {
        // A value starts at `at`.
        match *body.get(at)? {
            b'"' => {
                let (close, escaped) = string(body, at)?;
                found.push((at, close, escaped));
                at = close + 1;
            }
            b'{' => {
                at = whitespace(body, at + 1);
                if body.get(at) == Some(&b'}') {
                    at += 1;
                } else {
                    open.push(true);
                    at = key(body, at, &mut logprobs)?;
                    continue 'value;
                }
            }
            b'[' => {
                at = whitespace(body, at + 1);
                if body.get(at) == Some(&b']') {
                    at += 1;
                } else {
                    open.push(false);
                    continue 'value;
                }
            }
            b't' => at = literal(body, at, b"true")?,
            b'f' => at = literal(body, at, b"false")?,
            b'n' => at = literal(body, at, b"null")?,
            b'-' | b'0'..=b'9' => at = number(body, at)?,
            _ => return None,
        }
        // After a value: the next one of its container, or the container's end.
        loop {
            at = whitespace(body, at);
            let Some(&object) = open.last() else {
                return (at == body.len()).then_some((found, logprobs));
            };
            match (*body.get(at)?, object) {
                (b',', true) => {
                    at = key(body, whitespace(body, at + 1), &mut logprobs)?;
                    continue 'value;
                }
                (b',', false) => {
                    at = whitespace(body, at + 1);
                    continue 'value;
                }
                (b'}', true) | (b']', false) => {
                    open.pop();
                    at += 1;
                }
                _ => return None,
            }
        }
    }
}

/// Past JSON whitespace from `at`.
fn whitespace(body: &[u8], mut at: usize) -> usize {
    while body
        .get(at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

/// A key, its colon and the whitespace after them, from `at`: where its value starts.
/// `logprobs` is set when the key names token log probabilities.
fn key(body: &[u8], at: usize, logprobs: &mut bool) -> Option<usize> {
    if body.get(at) != Some(&b'"') {
        return None;
    }
    let (close, _) = string(body, at)?;
    *logprobs |= matches!(&body[at + 1..close], b"logprobs" | b"logprobsResult");
    let colon = whitespace(body, close + 1);
    (body.get(colon) == Some(&b':')).then(|| whitespace(body, colon + 1))
}

/// The string opening at `open`: its closing quote, and whether it has escapes.
fn string(body: &[u8], open: usize) -> Option<(usize, bool)> {
    let mut at = open + 1;
    let mut escaped = false;
    loop {
        let stop = special(body, at)?;
        match body[stop] {
            b'"' => return Some((stop, escaped)),
            b'\\' => {
                escaped = true;
                at = stop + 1 + escape(&body[stop + 1..])?;
            }
            // A control character must be escaped (RFC 8259, section 7).
            _ => return None,
        }
    }
}

/// The first `"`, `\` or control character (below 0x20) from `at` on: what ends a string's
/// plain run. Sixteen bytes at a time, because most strings are short and a general search
/// costs its setup again for each (`memchr2` was a fifth of masking a list of records).
fn special(body: &[u8], mut at: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = body.get(at..at + 16) {
        use super::trigger::sse2::{at_most, bits, equal, load, or};
        let v = load(chunk);
        let found = bits(or(or(equal(v, b'"'), equal(v, b'\\')), at_most(v, 0x1F)));
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize);
        }
        at += 16;
    }
    body[at.min(body.len())..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

/// The length of the escape after a `\` at the start of `rest`.
fn escape(rest: &[u8]) -> Option<usize> {
    match *rest.first()? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(1),
        b'u' => rest
            .get(1..5)
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .map(|_| 5),
        _ => None,
    }
}

/// `true`, `false` or `null` at `at`: where it ends.
fn literal(body: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    body[at..].starts_with(word).then_some(at + word.len())
}

/// A number at `at`: `-`? (`0` | [1-9][0-9]*) (`.` [0-9]+)? ([eE] [+-]? [0-9]+)?; where it
/// ends.
fn number(body: &[u8], mut at: usize) -> Option<usize> {
    let digits = |from: usize| {
        from + body[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    if body[at] == b'-' {
        at += 1;
    }
    match body.get(at)? {
        b'0' => at += 1,
        b'1'..=b'9' => at = digits(at),
        _ => return None,
    }
    if body.get(at) == Some(&b'.') {
        let end = digits(at + 1);
        if end == at + 1 {
            return None;
        }
        at = end;
    }
    if matches!(body.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(body.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let end = digits(at);
        if end == at {
            return None;
        }
        at = end;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The string values by `serde_json`: a tree, then its strings found by a walk over
    /// the bytes of a valid document (every `"` outside a string opens one; a string followed
    /// by `:` is a key).
    fn by_serde(body: &[u8]) -> Option<Vec<StringValue>> {
        serde_json::from_slice::<serde_json::Value>(body).ok()?;
        let mut strings = Vec::new();
        let mut at = 0;
        while let Some(found) = memchr::memchr(b'"', &body[at..]) {
            let open = at + found;
            let mut close = open + 1;
            let mut escaped = false;
            loop {
                close += memchr::memchr2(b'"', b'\\', &body[close..])?;
                if body[close] == b'"' {
                    break;
                }
                escaped = true;
                close += 2;
            }
            at = close + 1;
            let is_key = body[at..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b':');
            if !is_key {
                strings.push((open, close, escaped));
            }
        }
        Some(strings)
    }

    /// Tokens that make documents, valid or nearly so.
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        " ",
        "\n",
        "\t",
        "\"",
        "\"a\"",
        "\"k\":",
        "\"v w\"",
        "\"x\\\"y\"",
        "\"\\u00e9\"",
        "\"\\uZZ\"",
        "\"\\q\"",
        "\"\u{1}\"",
        "\"é\"",
        "0",
        "-0",
        "01",
        "1.5",
        "1.",
        ".5",
        "-",
        "1e5",
        "1E+5",
        "2e-",
        "123",
        "-7.25e3",
        "true",
        "false",
        "null",
        "tru",
        "nul",
        "x",
        "\\",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// On documents made of JSON's tokens, valid or not, the scanner accepts exactly what
        /// `serde_json` accepts and finds the same string values.
        #[test]
        fn string_values_are_those_serde_json_finds(
            tokens in proptest::collection::vec(proptest::sample::select(TOKENS), 0..24)
        ) {
            let body = tokens.concat().into_bytes();
            // A number out of `serde_json`'s range (`1e5` `123`) is still JSON.
            prop_assume!(!serde_json::from_slice::<serde_json::Value>(&body)
                .is_err_and(|e| e.to_string().starts_with("number out of range")));
            prop_assert_eq!(string_values(&body), by_serde(&body), "{}", tokens.concat());
        }

        /// Valid documents (any shape `serde_json` writes, compact or pretty): the same.
        #[test]
        fn valid_documents_give_serde_json_s_values(value in json_value(), pretty: bool) {
            let body = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            prop_assert!(string_values(&body).is_some());
            prop_assert_eq!(string_values(&body), by_serde(&body));
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e6f64..1e6).prop_map(serde_json::Value::from),
            "[ -~é\"\\\\\n\u{1}]{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z:\" ]{0,6}", inner, 0..6)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn grammar() {
        let ok = |doc: &str| string_values(doc.as_bytes()).is_some();
        assert!(ok(
            r#" {"a":"x","b":[1,"y",{"c":"z"}],"d":null,"e":"","f":true} "#
        ));
        assert!(ok("[-0.5e-3,0,1E+2]"));
        assert!(ok(r#""\u00e9\n\/""#));
        // Deeper than serde_json's recursion limit: still JSON.
        assert!(ok(&format!("{}{}", "[".repeat(1000), "]".repeat(1000))));
        for bad in [
            "",
            " ",
            "{",
            "[1,]",
            "[,1]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{1:2}",
            "01",
            "1.",
            ".5",
            "-",
            "+1",
            "1e",
            "tru",
            "nulls",
            "[1] [2]",
            "\"a",
            "\"\u{1}\"",
            "\"\\x\"",
            "\"\\u12\"",
            "[1}",
            "{\"a\":1]",
        ] {
            assert!(!ok(bad), "{bad:?}");
        }
        assert_eq!(
            string_values(br#"{"a":"x\"y","b":"plain"}"#),
            Some(vec![(5, 10, true), (16, 22, false)])
        );
    }
}
