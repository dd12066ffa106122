//! The detector catalogue: each detector is an optional literal prefilter, a regex and a
//! validator, under a stable name used in policies. Validators keep precision: a 16-digit
//! number is a card only if it passes Luhn and has an issuer prefix, an IBAN only if mod-97
//! holds, and so on.

use std::sync::{Arc, LazyLock};

use regex::Regex;

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

    pub fn accepts(self, value: &str) -> bool {
        match self {
            Self::None => true,
            Self::Luhn => card_number(value),
            Self::Mod97 => iban(value),
            Self::UsSsn => us_ssn(value),
            Self::Ipv4 => value.parse::<std::net::Ipv4Addr>().is_ok(),
            Self::Ipv6 => value.contains("::") || value.matches(':').count() == 7,
            Self::Phone => {
                let digits = value.bytes().filter(u8::is_ascii_digit).count();
                (7..=15).contains(&digits)
            }
            Self::Entropy => high_entropy(value),
        }
    }
}

/// One detector.
#[derive(Debug)]
pub struct Detector {
    pub name: String,
    pub kind: Kind,
    pub regex: Regex,
    /// Capture group holding the value to mask (0 = the whole match), for detectors that need
    /// context around the value (`bearer_token`, `aws_secret_key`, …).
    pub group: usize,
    pub validator: Validator,
    /// Lower-case literals of which at least one must occur for the regex to run.
    pub keywords: &'static [&'static str],
}

impl Detector {
    /// A custom detector from a policy's `[[detector]]`.
    pub fn custom(name: &str, regex: Regex, validator: Validator) -> Self {
        Self {
            name: name.to_string(),
            kind: Kind::Pii,
            regex,
            group: 0,
            validator,
            keywords: &[],
        }
    }

    /// `[REDACTED:EMAIL]`: the name in upper snake case.
    pub fn label(&self) -> String {
        self.name.to_ascii_uppercase().replace('-', "_")
    }
}

/// Compiled-program size limit for every detector regex, built-in or from a policy.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

struct Spec {
    name: &'static str,
    kind: Kind,
    pattern: &'static str,
    group: usize,
    validator: Validator,
    keywords: &'static [&'static str],
}

const SPECS: &[Spec] = &[
    Spec {
        name: "email",
        kind: Kind::Pii,
        pattern: r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24}\b",
        group: 0,
        validator: Validator::None,
        keywords: &["@"],
    },
    Spec {
        // E.164 (+ and 7–15 digits) anywhere; national formats only after a phone-ish word,
        // which keeps order numbers and dates out.
        name: "phone",
        kind: Kind::Pii,
        pattern: r"(?i)(\+[1-9](?:[ .-]?\d){6,14}\b|(?:phone|tel|mobile|cell|call|fax|contact)\b[^0-9\n]{0,16}(\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4})\b)",
        group: 0,
        validator: Validator::Phone,
        keywords: &[],
    },
    Spec {
        name: "credit_card",
        kind: Kind::Pii,
        pattern: r"\b(?:\d[ -]?){12,18}\d\b",
        group: 0,
        validator: Validator::Luhn,
        keywords: &[],
    },
    Spec {
        name: "us_ssn",
        kind: Kind::Pii,
        pattern: r"\b\d{3}-\d{2}-\d{4}\b",
        group: 0,
        validator: Validator::UsSsn,
        keywords: &["-"],
    },
    Spec {
        name: "iban",
        kind: Kind::Pii,
        pattern: r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
        group: 0,
        validator: Validator::Mod97,
        keywords: &[],
    },
    Spec {
        name: "ipv4",
        kind: Kind::Pii,
        pattern: r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
        group: 0,
        validator: Validator::Ipv4,
        keywords: &["."],
    },
    Spec {
        name: "ipv6",
        kind: Kind::Pii,
        pattern: r"(?i)(?:\b[0-9a-f]{1,4}|)(?::[0-9a-f]{0,4}){2,7}\b",
        group: 0,
        validator: Validator::Ipv6,
        keywords: &[":"],
    },
    Spec {
        name: "mac",
        kind: Kind::Pii,
        pattern: r"(?i)\b[0-9a-f]{2}(?:[:-][0-9a-f]{2}){5}\b",
        group: 0,
        validator: Validator::None,
        keywords: &[],
    },
    Spec {
        name: "aws_access_key",
        kind: Kind::Secret,
        pattern: r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
        group: 0,
        validator: Validator::None,
        keywords: &["akia", "asia", "abia", "acca"],
    },
    Spec {
        name: "aws_secret_key",
        kind: Kind::Secret,
        pattern: r#"(?i)aws.{0,20}?(?:secret|key).{0,20}?['"=:\s]\s*([A-Za-z0-9/+=]{40})\b"#,
        group: 1,
        validator: Validator::None,
        keywords: &["aws"],
    },
    Spec {
        name: "github_token",
        kind: Kind::Secret,
        pattern: r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
        group: 0,
        validator: Validator::None,
        keywords: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
    },
    Spec {
        name: "openai_key",
        kind: Kind::Secret,
        pattern: r"\bsk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}|[A-Za-z0-9]{20,})",
        group: 0,
        validator: Validator::None,
        keywords: &["sk-"],
    },
    Spec {
        name: "anthropic_key",
        kind: Kind::Secret,
        pattern: r"\bsk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{20,}",
        group: 0,
        validator: Validator::None,
        keywords: &["sk-ant-"],
    },
    Spec {
        name: "slack_token",
        kind: Kind::Secret,
        pattern: r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
        group: 0,
        validator: Validator::None,
        keywords: &["xox"],
    },
    Spec {
        name: "stripe_key",
        kind: Kind::Secret,
        pattern: r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b",
        group: 0,
        validator: Validator::None,
        keywords: &["_live_", "_test_"],
    },
    Spec {
        name: "jwt",
        kind: Kind::Secret,
        pattern: r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
        group: 0,
        validator: Validator::None,
        keywords: &["eyj"],
    },
    Spec {
        name: "private_key",
        kind: Kind::Secret,
        pattern: r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
        group: 0,
        validator: Validator::None,
        keywords: &["private key-----"],
    },
    Spec {
        name: "bearer_token",
        kind: Kind::Secret,
        pattern: r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{16,}=*)",
        group: 1,
        validator: Validator::None,
        keywords: &["bearer"],
    },
    Spec {
        name: "password_in_url",
        kind: Kind::Secret,
        pattern: r"(?i)\b[a-z][a-z0-9+.-]*://[^\s:/@]+:([^\s/@]+)@",
        group: 1,
        validator: Validator::None,
        keywords: &["://"],
    },
    Spec {
        name: "generic_secret",
        kind: Kind::Secret,
        pattern: r#"(?i)\b[a-z0-9_.-]*(?:secret|token|passw(?:or)?d|api[_-]?key|access[_-]?key|private[_-]?key)[a-z0-9_.-]*["']?\s*[:=]\s*["']?([A-Za-z0-9/+=_.@!#$%^&*-]{12,})"#,
        group: 1,
        validator: Validator::Entropy,
        keywords: &["secret", "token", "passw", "key"],
    },
];

/// The built-in detectors, compiled once.
pub static CATALOGUE: LazyLock<Vec<Arc<Detector>>> = LazyLock::new(|| {
    SPECS
        .iter()
        .map(|spec| {
            Arc::new(Detector {
                name: spec.name.to_string(),
                kind: spec.kind,
                regex: regex::RegexBuilder::new(spec.pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .expect("built-in detector regexes compile"),
                group: spec.group,
                validator: spec.validator,
                keywords: spec.keywords,
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

fn card_number(value: &str) -> bool {
    let digits: Vec<u32> = value.chars().filter_map(|c| c.to_digit(10)).collect();
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
    issuer && luhn(&digits)
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

fn iban(value: &str) -> bool {
    let compact: Vec<u8> = value.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
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
fn us_ssn(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let [area, group, serial] = parts[..] else {
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
fn high_entropy(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    if STOP_WORDS.iter().any(|w| lower.contains(w)) {
        return false;
    }
    let mut counts = [0u32; 256];
    for b in value.bytes() {
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
        assert!(card_number("4111 1111 1111 1111"));
        assert!(!card_number("4111 1111 1111 1112"));
        assert!(!card_number("1234567812345670")); // Luhn-valid, no issuer
        assert!(iban("GB82 WEST 1234 5698 7654 32"));
        assert!(!iban("GB82 WEST 1234 5698 7654 33"));
        assert!(us_ssn("219-09-9998"));
        for bad in ["000-12-3456", "666-12-3456", "900-12-3456", "078-05-1120"] {
            assert!(!us_ssn(bad), "{bad}");
        }
        assert!(high_entropy("q8Zr3kP0vX7mW2tL"));
        assert!(!high_entropy("changeme-changeme"));
    }

    #[test]
    fn groups_expand() {
        assert!(expand("secrets").iter().all(|d| d.kind == Kind::Secret));
        assert!(expand("pii").iter().any(|d| d.name == "email"));
        assert!(expand("nope").is_empty());
        assert_eq!(expand("jwt").len(), 1);
    }
}
