//! Masking throughput (`cargo xtask bench mask`): clean text, dense PII, a JSON chat body, a
//! JSON list of API records and an SSE stream at 1 KiB, 64 KiB and 1 MiB, with the full
//! catalogue (`pii` + `secrets`), against a naive baseline run in the same invocation: one
//! `RegexSet` of every detector pattern, then each pattern that matched run over the whole
//! text and its matches replaced (validators applied, as they must be for the output to be
//! comparable).
//!
//! `cargo xtask bench mask` reads criterion's estimates afterwards and prints the ratios.

use std::{hint::black_box, sync::Arc, time::Duration};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway_user::mask::{
    MaskContext, Masker, Strategy, detectors,
    sse::SseMasker,
    stream::{Step, StreamMasker},
};
use regex::bytes::{Regex, RegexSet};

/// Shared with the mock upstream (`tests/src/records.rs`), which the bench cannot depend on.
#[path = "../../tests/src/records.rs"]
mod shared;

const SIZES: &[(usize, &str)] = &[(1 << 10, "1KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];

/// Prose and log lines with numbers, versions, ids and times, and no sensitive value.
fn clean(len: usize) -> Vec<u8> {
    let lines = [
        "The agent planned three steps and called the search tool with the user's question about quarterly revenue.\n",
        "2026-11-21T10:42:17Z INFO worker-3 request_id=9f1c2e7a-5b3d-4c1e-9a2f-0d6b8e4c1a77 latency_ms=42 status=200\n",
        "Version 4.12.1 of the build passed 1287 tests in 93 seconds; order 55231 shipped on Tuesday.\n",
        "def score(items): return sorted(items, key=lambda item: item.weight, reverse=True)[:10]\n",
        "Summary: the cluster in eu-west-1 has 12 nodes; EKS upgrade to 1.29 is scheduled for next week.\n",
    ];
    fill(len, &lines.map(str::to_string))
}

/// Every line carries PII or a secret.
fn dense(len: usize) -> Vec<u8> {
    let lines = [
        "Contact alice.smith@example.com or +1 415 555 0134 about card 4111 1111 1111 1111.\n",
        "Customer 219-09-9998 paid from GB82 WEST 1234 5698 7654 32 at 10.20.30.40.\n",
        "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789\n",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U\n",
        "db = postgres://app:S3cr3t-Pa55@db.internal/app and mac 00:1a:2b:3c:4d:5e, bob@corp.io\n",
    ];
    fill(len, &lines.map(str::to_string))
}

fn fill(len: usize, lines: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 256);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(lines[i % lines.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// A chat-completions request body: messages whose contents mix clean and dense lines.
fn json(len: usize) -> Vec<u8> {
    let text = String::from_utf8(mixed(len)).expect("ASCII");
    let messages: Vec<serde_json::Value> = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": line})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"model": "gpt-4o", "messages": messages}))
        .expect("serialises")
}

/// One line in five carries a value: what an agent's tool results look like.
fn mixed(len: usize) -> Vec<u8> {
    let clean = String::from_utf8(clean(4096)).expect("ASCII");
    let dense = String::from_utf8(dense(4096)).expect("ASCII");
    let mut lines: Vec<String> = clean.lines().take(4).map(|l| format!("{l}\n")).collect();
    lines.extend(dense.lines().take(1).map(|l| format!("{l}\n")));
    fill(len, &lines)
}

/// An OpenAI chat-completions stream of `mixed` text in 4-byte deltas.
fn sse(len: usize) -> Vec<u8> {
    let text = String::from_utf8(mixed(len / 8)).expect("ASCII");
    let mut out = Vec::with_capacity(len + 1024);
    let bytes = text.as_bytes();
    for piece in bytes.chunks(4) {
        let event = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": String::from_utf8_lossy(piece)}, "finish_reason": null}]});
        out.extend_from_slice(format!("data: {event}\n\n").as_bytes());
        if out.len() >= len {
            break;
        }
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn catalogue() -> Arc<Masker> {
    let mut all = detectors::expand("pii");
    all.extend(detectors::expand("secrets"));
    Arc::new(Masker::new(all, Strategy::Redact, Vec::new()))
}

struct Naive {
    set: RegexSet,
    each: Vec<(Regex, detectors::Validator, String)>,
}

impl Naive {
    fn new() -> Self {
        let all: Vec<_> = detectors::CATALOGUE.iter().collect();
        let set = RegexSet::new(all.iter().map(|d| &d.pattern)).expect("set");
        let each = all
            .iter()
            .map(|d| {
                let regex = regex::bytes::RegexBuilder::new(&d.pattern)
                    .size_limit(4 << 20)
                    .build()
                    .expect("built-in patterns compile");
                (regex, d.validator, d.label.clone())
            })
            .collect();
        Self { set, each }
    }

    fn mask(&self, text: &[u8]) -> Vec<u8> {
        let mut current = text.to_vec();
        for index in self.set.matches(text).iter() {
            let (regex, validator, label) = &self.each[index];
            let replacement = format!("[REDACTED:{label}]");
            let mut out = Vec::with_capacity(current.len());
            let mut at = 0;
            for found in regex.find_iter(&current) {
                if validator.accepts(found.as_bytes()) {
                    out.extend_from_slice(&current[at..found.start()]);
                    out.extend_from_slice(replacement.as_bytes());
                    at = found.end();
                }
            }
            out.extend_from_slice(&current[at..]);
            current = out;
        }
        current
    }
}

fn ctx() -> MaskContext {
    MaskContext::new(Arc::from(&b"bench-key"[..]))
}

fn bench(c: &mut Criterion) {
    let masker = catalogue();
    let naive = Naive::new();
    let corpora: [(&str, fn(usize) -> Vec<u8>); 5] = [
        ("clean", clean),
        ("dense", dense),
        ("json", json),
        // An API's list answer, the very document `cargo xtask bench http` masks through
        // the proxy: many short strings, most of them clean.
        ("records", shared::json_document),
        ("sse", sse),
    ];
    for (name, make) in corpora {
        let mut group = c.benchmark_group(name);
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(10);
        for &(size, label) in SIZES {
            let input = make(size);
            group.throughput(Throughput::Bytes(input.len() as u64));
            group.bench_with_input(BenchmarkId::new("engine", label), &input, |b, input| {
                b.iter(|| match name {
                    "json" | "records" => {
                        let mut ctx = ctx();
                        gateway_user::mask::mask_body(
                            &[Step::Mask(Arc::clone(&masker))],
                            Some("application/json"),
                            black_box(input),
                            &mut ctx,
                        )
                    }
                    "sse" => {
                        let mut ctx = ctx();
                        let mut sse = SseMasker::new(vec![Step::Mask(Arc::clone(&masker))]);
                        let mut out = Vec::with_capacity(input.len());
                        for chunk in input.chunks(16 << 10) {
                            out.extend(sse.push(chunk, &mut ctx));
                        }
                        out.extend(sse.finish(&mut ctx));
                        Some(out)
                    }
                    _ => {
                        let mut ctx = ctx();
                        let mut stream = StreamMasker::new([Step::Mask(Arc::clone(&masker))]);
                        let mut out = Vec::with_capacity(input.len());
                        for chunk in input.chunks(16 << 10) {
                            out.extend(stream.push(chunk, &mut ctx));
                        }
                        out.extend(stream.finish(&mut ctx));
                        Some(out)
                    }
                });
            });
            group.bench_with_input(BenchmarkId::new("naive", label), &input, |b, input| {
                b.iter(|| naive.mask(black_box(input)));
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
