//! Arbitrary bytes → the streaming masker (whole catalogue, every strategy), the SSE and
//! NDJSON maskers, the AWS event-stream masker and its recording's rendering, the content
//! decoders (gzip, deflate, br, zstd), and the replay's reading of a recorded stream: none may
//! panic, whatever the bytes
//! (invalid UTF-8, unbounded lines, broken JSON), and the streaming masker must give the same
//! output for two splits of the input.
//! The same bytes → the JSON scanner, which must accept a document exactly when `serde_json`
//! does (except where `serde_json` rejects what the grammar allows: see `mask::json`).
#![no_main]

use std::sync::{Arc, LazyLock};

use gateway_user::http::masking::Decoder;
use gateway_user::mask::{
    MaskContext, Masker, Strategy, detectors, eventstream, json,
    sse::{self, SseMasker},
    stream::{Step, StreamMasker},
};
use libfuzzer_sys::fuzz_target;

static MASKER: LazyLock<Arc<Masker>> = LazyLock::new(|| {
    let mut all = detectors::expand("pii");
    all.extend(detectors::expand("secrets"));
    Arc::new(Masker::new(all, Strategy::Tokenize, Vec::new()))
});

fn ctx() -> MaskContext {
    MaskContext::new(Arc::from(&b"fuzz"[..]))
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let steps = vec![Step::Mask(Arc::clone(&MASKER)), Step::Restore];
    let run = |chunks: &[&[u8]]| {
        let mut ctx = ctx();
        let mut stream = StreamMasker::new(steps.iter().cloned());
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(stream.push(chunk, &mut ctx));
        }
        out.extend(stream.finish(&mut ctx));
        out
    };
    let cut = usize::from(split) * data.len() / 256;
    assert_eq!(run(&[data]), run(&[&data[..cut], &data[cut..]]), "chunking changed the output");

    let mut ctx = ctx();
    let mut sse = SseMasker::new(steps.clone());
    for chunk in data.chunks(usize::from(split).max(1)) {
        let _ = sse.push(chunk, &mut ctx);
    }
    let _ = sse.finish(&mut ctx);
    let mut ndjson = SseMasker::ndjson(steps.clone());
    for chunk in data.chunks(usize::from(split).max(1)) {
        let _ = ndjson.push(chunk, &mut ctx);
    }
    let _ = ndjson.finish(&mut ctx);
    // Bedrock's frames: an error (a bad CRC or length) or output, never a panic.
    let mut frames = eventstream::EventStreamMasker::new(steps.clone());
    let pushed = data
        .chunks(usize::from(split).max(1))
        .try_for_each(|chunk| frames.push(chunk, &mut ctx).map(drop));
    if pushed.is_ok() {
        let _ = frames.finish(&mut ctx);
    }
    let _ = eventstream::render_sse(data);

    // The same bytes as a compressed body, in chunks: an error or output, never a panic.
    for coding in ["gzip", "deflate", "br", "zstd"] {
        if let Ok(Some(mut decoder)) = Decoder::for_coding(coding) {
            let pushed = data
                .chunks(usize::from(split).max(1))
                .try_for_each(|chunk| decoder.push(chunk).map(drop));
            if pushed.is_ok() {
                let _ = decoder.finish();
            }
        }
    }

    if let Ok(text) = std::str::from_utf8(data) {
        // A recorded event stream read back by `sessions replay` (store contents can be
        // anything).
        let _ = sse::reassemble(text);
        let scanned = json::string_values(data);
        match serde_json::from_slice::<serde_json::Value>(data) {
            Ok(_) => assert!(scanned.is_some(), "valid JSON rejected"),
            Err(e) => {
                let message = e.to_string();
                // Out of serde_json's range, or a `\u` escape that does not decode (the
                // masker decodes escaped values with serde_json and falls back if one fails).
                let range = ["number out of range", "recursion limit exceeded", "surrogate"]
                    .iter()
                    .any(|m| message.contains(m));
                assert!(range || scanned.is_none(), "invalid JSON accepted: {message}");
            }
        }
    }
});
