//! Detection quality on a labelled corpus: synthetic values from a fixed seed inside
//! realistic agent traffic (JSON tool results, SQL rows, logs, code, chat text), plus hard
//! negatives (UUIDs, hashes, order numbers, timestamps, versions, `C4`, `S3`, `EKS`,
//! Luhn-invalid card-like numbers, key-like names with dull values). Prints precision and
//! recall per detector and fails below the goals: checksummed types and vendor-prefixed
//! secrets precision ≥ 0.99 and recall ≥ 0.98; phone and generic secrets ≥ 0.90 each; every
//! other detector ≥ 0.95. Needs no privileges.

use std::collections::BTreeMap;

use gateway_user::mask::{Masker, Strategy, detectors};

/// xorshift64*: a fixed seed gives the same corpus on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
    fn chars(&mut self, n: usize, alphabet: &[u8]) -> String {
        (0..n)
            .map(|_| char::from(alphabet[self.below(alphabet.len() as u64) as usize]))
            .collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const HEX: &[u8] = b"0123456789abcdef";
const NAMES: &[&str] = &[
    "alice",
    "bob",
    "carol",
    "dmitri",
    "eve",
    "fatima",
    "li.wei",
    "o.brien",
    "j_smith",
    "maria-jose",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "corp.io",
    "mail.example.org",
    "uni.ac.uk",
    "shop.de",
    "startup.ai",
];

fn luhn_complete(prefix: &str, len: usize, rng: &mut Rng) -> String {
    let mut digits: Vec<u32> = prefix.chars().map(|c| c.to_digit(10).unwrap()).collect();
    while digits.len() < len - 1 {
        digits.push(rng.below(10) as u32);
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    digits.push((10 - sum % 10) % 10);
    digits
        .iter()
        .map(|d| char::from_digit(*d, 10).unwrap())
        .collect()
}

fn group(number: &str, sep: &str, sizes: &[usize]) -> String {
    let mut out = Vec::new();
    let mut at = 0;
    for size in sizes {
        out.push(&number[at..(at + size).min(number.len())]);
        at += size;
    }
    out.join(sep)
}

fn iban(rng: &mut Rng) -> String {
    let (country, len) = [("GB", 22), ("DE", 22), ("FR", 27), ("NL", 18)][rng.below(4) as usize];
    let bban: String = if country == "GB" || country == "NL" {
        format!(
            "{}{}",
            rng.chars(4, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            rng.digits(len - 8)
        )
    } else {
        rng.digits(len - 4)
    };
    let rearranged = format!("{bban}{country}00");
    let mut remainder = 0u32;
    for c in rearranged.chars() {
        let v = c.to_digit(36).unwrap();
        remainder = if v >= 10 {
            (remainder * 100 + v) % 97
        } else {
            (remainder * 10 + v) % 97
        };
    }
    let check = 98 - remainder;
    let compact = format!("{country}{check:02}{bban}");
    if rng.below(2) == 0 {
        compact
    } else {
        compact
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A value of `detector`, with the context before and after it in the text.
fn value(detector: &str, rng: &mut Rng) -> (String, String, String) {
    let (before, value) = value_in(detector, rng);
    if detector == "password_in_url" {
        return (before, value, "@db.internal:5432/app".to_string());
    }
    (before, value, String::new())
}

fn value_in(detector: &str, rng: &mut Rng) -> (String, String) {
    let none = String::new();
    match detector {
        "email" => (
            none,
            format!(
                "{}{}@{}",
                rng.pick(NAMES),
                rng.below(100),
                rng.pick(DOMAINS)
            ),
        ),
        "phone" => {
            if rng.below(2) == 0 {
                let cc = rng.pick(&["1", "44", "49", "33", "81"]);
                (
                    none,
                    format!(
                        "+{cc} {} {} {}",
                        rng.digits(3),
                        rng.digits(3),
                        rng.digits(4)
                    ),
                )
            } else {
                let word = rng.pick(&["phone: ", "Tel ", "call me at ", "mobile ", "Contact: "]);
                let n = format!(
                    "({}) {}-{}",
                    200 + rng.below(700),
                    rng.digits(3),
                    rng.digits(4)
                );
                (word.to_string(), n)
            }
        }
        "credit_card" => {
            let (prefix, len, sizes): (&str, usize, &[usize]) = match rng.below(4) {
                0 => ("4", 16, &[4, 4, 4, 4]),
                1 => ("5", 16, &[4, 4, 4, 4]),
                2 => ("37", 15, &[4, 6, 5]),
                _ => ("6011", 16, &[4, 4, 4, 4]),
            };
            let prefix = if prefix == "5" {
                format!("5{}", 1 + rng.below(5))
            } else {
                prefix.to_string()
            };
            let number = luhn_complete(&prefix, len, rng);
            let sep = rng.pick(&[" ", "-", ""]);
            (none, group(&number, sep, sizes))
        }
        "us_ssn" => {
            let mut area = 1 + rng.below(899);
            if area == 666 {
                area = 667;
            }
            (
                none,
                format!(
                    "{area:03}-{:02}-{:04}",
                    1 + rng.below(99),
                    1 + rng.below(9999)
                ),
            )
        }
        "iban" => (none, iban(rng)),
        "ipv4" => (
            none,
            format!(
                "{}.{}.{}.{}",
                1 + rng.below(223),
                rng.below(256),
                rng.below(256),
                1 + rng.below(254)
            ),
        ),
        "ipv6" => {
            let groups: Vec<String> = (0..8)
                .map(|_| format!("{:x}", rng.below(0x10000)))
                .collect();
            if rng.below(2) == 0 {
                (none, groups.join(":"))
            } else {
                (none, format!("{}:{}::{}", groups[0], groups[1], groups[7]))
            }
        }
        "mac" => {
            let sep = rng.pick(&[":", "-"]);
            let parts: Vec<String> = (0..6).map(|_| rng.chars(2, HEX)).collect();
            (none, parts.join(sep))
        }
        "aws_access_key" => (none, format!("AKIA{}", rng.chars(16, UPPER_DIGITS))),
        "aws_secret_key" => (
            rng.pick(&[
                "aws_secret_access_key = ",
                "AWS_SECRET_ACCESS_KEY=",
                "\"aws_secret_key\": \"",
            ])
            .to_string(),
            rng.chars(40, B64),
        ),
        "github_token" => (none, format!("ghp_{}", rng.chars(36, ALNUM))),
        "openai_key" => (none, format!("sk-proj-{}", rng.chars(48, ALNUM))),
        "anthropic_key" => (none, format!("sk-ant-api03-{}", rng.chars(80, ALNUM))),
        "slack_token" => (
            none,
            format!(
                "xoxb-{}-{}-{}",
                rng.digits(11),
                rng.digits(12),
                rng.chars(24, ALNUM)
            ),
        ),
        "stripe_key" => (none, format!("sk_live_{}", rng.chars(24, ALNUM))),
        "jwt" => (
            none,
            format!(
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{}.{}",
                rng.chars(40, B64URL),
                rng.chars(43, B64URL)
            ),
        ),
        "private_key" => {
            let body: Vec<String> = (0..6).map(|_| rng.chars(64, B64)).collect();
            (
                none,
                format!(
                    "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----",
                    body.join("\n")
                ),
            )
        }
        "bearer_token" => (
            rng.pick(&[
                "Authorization: Bearer ",
                "authorization: bearer ",
                "-H 'Authorization: Bearer ",
            ])
            .to_string(),
            rng.chars(32, ALNUM),
        ),
        "password_in_url" => (
            format!(
                "{}://{}:",
                rng.pick(&["postgres", "mysql", "https", "redis"]),
                rng.pick(NAMES).replace('.', "")
            ),
            format!("{}!{}", rng.chars(10, ALNUM), rng.digits(2)),
        ),
        "generic_secret" => (
            rng.pick(&[
                "client_secret = \"",
                "DB_PASSWORD=",
                "\"api_key\": \"",
                "webhook_token: ",
            ])
            .to_string(),
            rng.chars(24, ALNUM),
        ),
        other => panic!("no generator for {other}"),
    }
}

/// Values that look like something and are not.
fn negative(rng: &mut Rng) -> String {
    match rng.below(14) {
        0 => format!(
            "{}-{}-4{}-a{}-{}",
            rng.chars(8, HEX),
            rng.chars(4, HEX),
            rng.chars(3, HEX),
            rng.chars(3, HEX),
            rng.chars(12, HEX)
        ),
        1 => rng.chars(64, HEX),
        2 => rng.chars(40, HEX),
        3 => format!("order ORD-{}-{}", 2020 + rng.below(7), rng.digits(6)),
        4 => format!(
            "2026-{:02}-{:02}T{:02}:{:02}:{:02}.{}Z",
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60),
            rng.digits(3)
        ),
        5 => format!("v{}.{}.{}", rng.below(20), rng.below(40), rng.below(100)),
        6 => rng
            .pick(&[
                "C4 model",
                "stored in S3",
                "EKS 1.29",
                "the C4 diagram",
                "S3 bucket",
                "on EKS",
            ])
            .to_string(),
        7 => {
            // Luhn-invalid card-like number.
            let valid = luhn_complete("4", 16, rng);
            let last = valid.chars().last().unwrap().to_digit(10).unwrap();
            format!("{}{}", &valid[..15], (last + 1) % 10)
        }
        8 => format!("tracking number {}", rng.digits(12)),
        9 => format!(
            "max_tokens={} temperature=0.{}",
            256 * (1 + rng.below(16)),
            rng.below(10)
        ),
        10 => format!("password_policy: min_length={}", 8 + rng.below(8)),
        11 => format!("token_count: {}", rng.digits(5)),
        12 => format!(
            "build {}.{}.{}.{}",
            rng.below(10),
            rng.below(10),
            rng.below(10),
            rng.below(10)
        ),
        _ => format!(
            "invoice INV{} total {}.{} EUR",
            rng.digits(8),
            rng.digits(4),
            rng.digits(2)
        ),
    }
}

const DETECTORS: &[&str] = &[
    "email",
    "phone",
    "credit_card",
    "us_ssn",
    "iban",
    "ipv4",
    "ipv6",
    "mac",
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "openai_key",
    "anthropic_key",
    "slack_token",
    "stripe_key",
    "jwt",
    "private_key",
    "bearer_token",
    "password_in_url",
    "generic_secret",
];

/// Texts around values: JSON tool results, SQL rows, logs, code, chat.
fn wrap(kind: u64, context: &str, negative: &str) -> (String, String) {
    match kind {
        0 => (
            format!(
                "{{\"tool\":\"crm.lookup\",\"result\":{{\"id\":4211,\"note\":\"{negative}\",\"field\":\"{context}"
            ),
            "\"},\"took_ms\":12}\n".to_string(),
        ),
        1 => (
            format!(" 4211 | Jordan Lee | {negative} | {context}"),
            " | active\n".to_string(),
        ),
        2 => (
            format!("2026-11-21T10:42:17Z INFO worker-3 {negative} detail={context}"),
            " status=200\n".to_string(),
        ),
        3 => (
            format!("    # {negative}\n    config = load(\"{context}"),
            "\")\n".to_string(),
        ),
        _ => (
            format!("User: I checked {negative}. Please use {context}"),
            " for this, thanks!\n".to_string(),
        ),
    }
}

#[test]
fn precision_and_recall_per_detector() {
    let mut rng = Rng(0x5EED_CAFE_F00D_0001);
    let mut text = String::new();
    let mut labels: Vec<(usize, usize, &str)> = Vec::new();
    for round in 0..300 {
        for &detector in DETECTORS {
            let (context, value, suffix) = value(detector, &mut rng);
            let (before, after) = wrap(rng.below(5), &context, &negative(&mut rng));
            text.push_str(&before);
            labels.push((text.len(), text.len() + value.len(), detector));
            text.push_str(&value);
            text.push_str(&suffix);
            text.push_str(&after);
        }
        // Pure hard negatives between rounds.
        for _ in 0..(5 + round % 5) {
            text.push_str(&negative(&mut rng));
            text.push('\n');
        }
    }
    let mut all = detectors::expand("pii");
    all.extend(detectors::expand("secrets"));
    let masker = Masker::new(all, Strategy::Redact, Vec::new());
    let found = masker.find(text.as_bytes());

    let mut tp: BTreeMap<&str, u64> = BTreeMap::new();
    let mut fp: BTreeMap<&str, u64> = BTreeMap::new();
    let mut matched = vec![false; labels.len()];
    let mut examples: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for finding in &found {
        let name = masker.detectors()[finding.detector].name.as_str();
        let name = DETECTORS.iter().find(|d| **d == name).copied().unwrap();
        let hit = labels
            .iter()
            .position(|&(start, end, d)| d == name && finding.start < end && start < finding.end);
        match hit {
            Some(i) => {
                matched[i] = true;
                *tp.entry(name).or_default() += 1;
            }
            None => {
                *fp.entry(name).or_default() += 1;
                let list = examples.entry(name).or_default();
                if list.len() < 3 {
                    let from = finding.start.saturating_sub(20);
                    list.push(format!(
                        "FP {:?}",
                        &text[from..(finding.end + 10).min(text.len())]
                    ));
                }
            }
        }
    }
    let mut failures = Vec::new();
    println!(
        "{:<16} {:>9} {:>9} {:>6} {:>6} {:>6}",
        "detector", "precision", "recall", "tp", "fp", "fn"
    );
    for &detector in DETECTORS {
        let tp = tp.get(detector).copied().unwrap_or(0);
        let fp = fp.get(detector).copied().unwrap_or(0);
        let missed: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i].2 == detector && !matched[i])
            .collect();
        for &i in missed.iter().take(3) {
            let (start, end, _) = labels[i];
            examples
                .entry(detector)
                .or_default()
                .push(format!("FN {:?}", &text[start.saturating_sub(20)..end]));
        }
        let fn_ = missed.len() as u64;
        let precision = if tp + fp == 0 {
            1.0
        } else {
            tp as f64 / (tp + fp) as f64
        };
        let recall = if tp + fn_ == 0 {
            1.0
        } else {
            tp as f64 / (tp + fn_) as f64
        };
        println!("{detector:<16} {precision:>9.4} {recall:>9.4} {tp:>6} {fp:>6} {fn_:>6}");
        let (p_goal, r_goal) = match detector {
            "credit_card" | "iban" | "us_ssn" | "aws_access_key" | "github_token"
            | "openai_key" | "anthropic_key" | "slack_token" | "stripe_key" => (0.99, 0.98),
            "phone" | "generic_secret" => (0.90, 0.90),
            _ => (0.95, 0.95),
        };
        if precision < p_goal || recall < r_goal {
            failures.push(format!(
                "{detector}: precision {precision:.4} (goal {p_goal}), recall {recall:.4} (goal {r_goal}); {:?}",
                examples.get(detector)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "below the goals:\n{}",
        failures.join("\n")
    );
}
