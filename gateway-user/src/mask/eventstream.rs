//! Masking of AWS event streams (`application/vnd.amazon.eventstream`): Amazon Bedrock's
//! streamed answers, `ConverseStream` and `InvokeModelWithResponseStream`.
//!
//! The body is a sequence of binary frames: a 12-byte prelude (total length, headers length,
//! CRC-32 of those 8 bytes), headers (`:event-type`, `:content-type`, `:message-type`), a
//! payload and the CRC-32 of everything before it. A client checks both CRCs, so a frame
//! cannot be masked as text (a changed length or byte fails it), and text masking would not
//! see a value split over frames either. Here each `event` frame's JSON payload becomes an
//! event of the SSE masker ([`SseMasker`]), which follows the text streams across frames:
//!
//! * `ConverseStream`: `contentBlockDelta` frames carry `delta.text`, a tool call's
//!   `delta.toolUse.input` or `delta.reasoningContent.text`; `contentBlockStop` and
//!   `messageStop` end them;
//! * `InvokeModelWithResponseStream`: `chunk` frames carry `{"bytes": base64}`, the model
//!   provider's own event (Anthropic's `content_block_delta`…), decoded, masked as that event
//!   and encoded again.
//!
//! What the SSE masker writes back (the event, and before it the flush events of streams it
//! ended) is framed again, each frame with the headers of the frame it came from and new
//! CRCs. A frame that is not an event (`exception`) is masked whole as JSON, one whose
//! payload is not JSON as text. A frame whose length or CRC is wrong fails the body: it
//! cannot be read, so it is not passed on unmasked.

use base64::Engine as _;
use serde_json::Value;

use super::{
    MaskContext,
    sse::{self, SseMasker},
    stream::Step,
};

/// The content type of an AWS event stream.
pub const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// Longest frame accepted: AWS's limits (16 MiB of payload, 128 KiB of headers) and the
/// prelude and CRC.
const MAX_FRAME: usize = (16 << 20) + (128 << 10) + 16;

const PRELUDE: usize = 12;

/// A frame header: its name, value type and encoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    name: Vec<u8>,
    kind: u8,
    value: Vec<u8>,
}

/// The masker of one event-stream body.
pub struct EventStreamMasker {
    buf: Vec<u8>,
    steps: Vec<Step>,
    events: SseMasker,
    /// The stream's events come in `chunk` frames (`InvokeModelWithResponseStream`).
    wrapped: bool,
}

impl EventStreamMasker {
    pub fn new(steps: Vec<Step>) -> Self {
        Self {
            buf: Vec::new(),
            events: SseMasker::new(steps.clone()),
            steps,
            wrapped: false,
        }
    }

    /// Masks the frames completed by `chunk`; an error for a frame that cannot be read.
    pub fn push(&mut self, chunk: &[u8], ctx: &mut MaskContext) -> Result<Vec<u8>, String> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut at = 0;
        let result = loop {
            match frame_len(&buf[at..]) {
                Ok(Some(len)) => {
                    if let Err(error) = self.frame(&buf[at..at + len], ctx, &mut out) {
                        break Err(error);
                    }
                    at += len;
                }
                Ok(None) => break Ok(out),
                Err(error) => break Err(error),
            }
        };
        buf.drain(..at);
        self.buf = buf;
        result
    }

    /// The end of the body: a frame cut short is an error.
    pub fn finish(&mut self, ctx: &mut MaskContext) -> Result<Vec<u8>, String> {
        if !self.buf.is_empty() {
            return Err(format!(
                "event stream ends inside a frame ({} bytes of it)",
                self.buf.len()
            ));
        }
        // Streams still open (a body that ended without `messageStop`) are flushed; what they
        // held goes out as frames of the last shape seen.
        let rest = self.events.finish(ctx);
        let mut out = Vec::new();
        for (name, data) in sse::written_events(&rest) {
            out.extend(if self.wrapped {
                event_frame("chunk", &wrap(&data))
            } else {
                event_frame(&name, &data)
            });
        }
        Ok(out)
    }

    fn frame(
        &mut self,
        frame: &[u8],
        ctx: &mut MaskContext,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let (headers, payload) = parse_frame(frame)?;
        let find = |name: &str| {
            headers
                .iter()
                .find(|h| h.name == name.as_bytes() && h.kind == 7)
                .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        };
        let event_type = find(":event-type").unwrap_or_default();
        if find(":message-type").as_deref() != Some("event") {
            // An exception (throttling, validation) stands alone: masked whole, as JSON.
            match super::mask_body(&self.steps, Some("application/json"), payload, ctx) {
                Some(masked) => out.extend(encode_frame(&headers, &masked)),
                None => out.extend_from_slice(frame),
            }
            return Ok(());
        }
        let Ok(value) = serde_json::from_slice::<Value>(payload) else {
            ctx.note("event stream frame without JSON: masked as text");
            match super::mask_body(&self.steps, None, payload, ctx) {
                Some(masked) => out.extend(encode_frame(&headers, &masked)),
                None => out.extend_from_slice(frame),
            }
            return Ok(());
        };
        // `chunk`: the provider's event, base64 in `bytes`.
        let (name, data, wrapped) = match value.get("bytes").and_then(Value::as_str) {
            Some(encoded) if event_type == "chunk" => {
                let inner = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| format!("event stream chunk: bytes are not base64: {e}"))?;
                let name = serde_json::from_slice::<Value>(&inner)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_string))
                    .unwrap_or_default();
                self.wrapped = true;
                (name, inner, true)
            }
            _ => (event_type.clone(), payload.to_vec(), false),
        };
        let mut event = Vec::with_capacity(data.len() + name.len() + 16);
        event.extend_from_slice(b"event: ");
        event.extend_from_slice(name.as_bytes());
        event.extend_from_slice(b"\ndata: ");
        // One line: the SSE masker reads a newline as the end of a `data:` line.
        if data.contains(&b'\n') {
            match serde_json::from_slice::<Value>(&data) {
                Ok(v) => event.extend(serde_json::to_vec(&v).unwrap_or_default()),
                Err(_) => event.extend(data.iter().map(|&b| if b == b'\n' { b' ' } else { b })),
            }
        } else {
            event.extend_from_slice(&data);
        }
        event.extend_from_slice(b"\n\n");
        let masked = self.events.push(&event, ctx);
        for (out_name, out_data) in sse::written_events(&masked) {
            let mut headers = headers.clone();
            let payload = if wrapped {
                wrap(&out_data)
            } else {
                // A flush event before this frame is of its stream's own type.
                set_header(&mut headers, ":event-type", &out_name);
                out_data
            };
            out.extend(encode_frame(&headers, &payload));
        }
        Ok(())
    }
}

/// A provider's event as the payload of a `chunk` frame.
fn wrap(event: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(event);
    serde_json::to_vec(&serde_json::json!({ "bytes": encoded })).unwrap_or_default()
}

/// The length of the frame at the start of `buf`, once all of it is there.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    if buf.len() < PRELUDE {
        return Ok(None);
    }
    let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let headers = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    let crc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if crc32fast::hash(&buf[..8]) != crc {
        return Err("event stream frame: prelude CRC mismatch".to_string());
    }
    if total < PRELUDE + 4 + headers || total > MAX_FRAME {
        return Err(format!(
            "event stream frame: length {total} with {headers} bytes of headers"
        ));
    }
    Ok((buf.len() >= total).then_some(total))
}

/// A whole frame's headers and payload; its CRCs checked.
fn parse_frame(frame: &[u8]) -> Result<(Vec<Header>, &[u8]), String> {
    let (body, crc) = frame.split_at(frame.len() - 4);
    if crc32fast::hash(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err("event stream frame: message CRC mismatch".to_string());
    }
    let headers_len = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    let mut rest = &body[PRELUDE..PRELUDE + headers_len];
    let payload = &body[PRELUDE + headers_len..];
    let broken = || "event stream frame: broken header".to_string();
    let mut headers = Vec::new();
    while let Some((&name_len, after)) = rest.split_first() {
        let name_len = usize::from(name_len);
        let name = after.get(..name_len).ok_or_else(broken)?.to_vec();
        let (&kind, after) = after
            .get(name_len..)
            .and_then(<[u8]>::split_first)
            .ok_or_else(broken)?;
        let value_len = match kind {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                let len = after.get(..2).ok_or_else(broken)?;
                2 + usize::from(u16::from_be_bytes([len[0], len[1]]))
            }
            _ => return Err(format!("event stream frame: header type {kind}")),
        };
        let value = after.get(..value_len).ok_or_else(broken)?;
        let value = if matches!(kind, 6 | 7) {
            &value[2..]
        } else {
            value
        };
        headers.push(Header {
            name,
            kind,
            value: value.to_vec(),
        });
        rest = &after[value_len..];
    }
    Ok((headers, payload))
}

fn encode_frame(headers: &[Header], payload: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::new();
    for header in headers {
        encoded.push(u8::try_from(header.name.len()).unwrap_or(u8::MAX));
        encoded.extend_from_slice(&header.name[..header.name.len().min(255)]);
        encoded.push(header.kind);
        if matches!(header.kind, 6 | 7) {
            let len = u16::try_from(header.value.len()).unwrap_or(u16::MAX);
            encoded.extend_from_slice(&len.to_be_bytes());
            encoded.extend_from_slice(&header.value[..usize::from(len)]);
        } else {
            encoded.extend_from_slice(&header.value);
        }
    }
    let total = PRELUDE + encoded.len() + payload.len() + 4;
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(
        &u32::try_from(encoded.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&crc32fast::hash(&frame).to_be_bytes());
    frame.extend_from_slice(&encoded);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&crc32fast::hash(&frame).to_be_bytes());
    frame
}

fn string_header(name: &str, value: &str) -> Header {
    Header {
        name: name.as_bytes().to_vec(),
        kind: 7,
        value: value.as_bytes().to_vec(),
    }
}

fn set_header(headers: &mut Vec<Header>, name: &str, value: &str) {
    match headers.iter_mut().find(|h| h.name == name.as_bytes()) {
        Some(header) => *header = string_header(name, value),
        None => headers.push(string_header(name, value)),
    }
}

/// A recorded event stream as the text of its events, in SSE form (`event:` its type, `data:`
/// its JSON on one line; a `chunk`'s provider event decoded), which replay and
/// `sessions verify` read as they read an LLM's SSE stream. Frames are read up to the first
/// one that is cut (the recording's limit) or does not check out.
pub fn render_sse(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Ok(Some(len)) = frame_len(rest) {
        let Ok((headers, payload)) = parse_frame(&rest[..len]) else {
            break;
        };
        rest = &rest[len..];
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.name == name.as_bytes() && h.kind == 7)
                .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        };
        let mut name = header(":event-type")
            .or_else(|| header(":exception-type"))
            .unwrap_or_default();
        let mut data = payload.to_vec();
        if name == "chunk"
            && let Ok(value) = serde_json::from_slice::<Value>(payload)
            && let Some(inner) = value["bytes"]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        {
            if let Ok(event) = serde_json::from_slice::<Value>(&inner) {
                name = event["type"].as_str().unwrap_or("chunk").to_string();
            }
            data = inner;
        }
        // One line of data, as the stream's own SSE would carry it.
        if let Ok(value) = serde_json::from_slice::<Value>(&data) {
            data = serde_json::to_vec(&value).unwrap_or(data);
        }
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend(data.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
        out.extend_from_slice(b"\n\n");
    }
    out
}

/// A frame as Bedrock sends it (for tests and the mock upstream).
pub fn event_frame(event_type: &str, payload: &[u8]) -> Vec<u8> {
    encode_frame(
        &[
            string_header(":event-type", event_type),
            string_header(":content-type", "application/json"),
            string_header(":message-type", "event"),
        ],
        payload,
    )
}

/// The `(event type, payload)` of every frame of a body, CRCs checked (for tests).
pub fn read_frames(mut body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut frames = Vec::new();
    while !body.is_empty() {
        let len = frame_len(body)?.ok_or("event stream ends inside a frame")?;
        let (headers, payload) = parse_frame(&body[..len])?;
        let event_type = headers
            .iter()
            .find(|h| h.name == b":event-type")
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
            .unwrap_or_default();
        frames.push((event_type, payload.to_vec()));
        body = &body[len..];
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mask::Strategy;

    fn steps() -> Vec<Step> {
        crate::mask::sse::tests::steps(Strategy::Redact)
    }

    /// `body` through a masker in chunks of `size`: the output, or the first error.
    fn run(body: &[u8], size: usize) -> Result<Vec<u8>, String> {
        let mut ctx = MaskContext::new(Arc::from(&b"k"[..]));
        let mut masker = EventStreamMasker::new(steps());
        let mut out = Vec::new();
        for chunk in body.chunks(size) {
            out.extend(masker.push(chunk, &mut ctx)?);
        }
        out.extend(masker.finish(&mut ctx)?);
        Ok(out)
    }

    fn converse() -> Vec<u8> {
        let mut body = event_frame("messageStart", br#"{"role":"assistant","p":"abc"}"#);
        for piece in ["Reach bob@exa", "mple.com, card 4111 1111", " 1111 1111."] {
            let v =
                serde_json::json!({"contentBlockIndex": 0, "delta": {"text": piece}, "p": "xyz"});
            body.extend(event_frame("contentBlockDelta", v.to_string().as_bytes()));
        }
        body.extend(event_frame(
            "contentBlockStop",
            br#"{"contentBlockIndex":0,"p":"q"}"#,
        ));
        body.extend(event_frame("messageStop", br#"{"stopReason":"end_turn"}"#));
        body.extend(event_frame(
            "metadata",
            br#"{"usage":{"inputTokens":1,"outputTokens":2,"totalTokens":3},"metrics":{"latencyMs":9}}"#,
        ));
        body
    }

    /// Bedrock's `ConverseStream`: values split over `contentBlockDelta` frames are masked,
    /// every frame written back has valid CRCs, the order of the events stays, and any
    /// split of the body gives the same bytes.
    #[test]
    fn converse_stream_values_split_over_frames() {
        let body = converse();
        let outs: Vec<Vec<u8>> = [1, 7, 100, body.len()]
            .iter()
            .map(|&size| run(&body, size).unwrap())
            .collect();
        assert!(
            outs.windows(2).all(|w| w[0] == w[1]),
            "chunking changed the output"
        );
        let frames = read_frames(&outs[0]).expect("every frame's CRCs hold");
        let text: String = frames
            .iter()
            .filter(|(t, _)| t == "contentBlockDelta")
            .map(|(_, p)| {
                let v: Value = serde_json::from_slice(p).unwrap();
                v["delta"]["text"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(text, "Reach [REDACTED:EMAIL], card [REDACTED:CREDIT_CARD].");
        let types: Vec<&str> = frames.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(types.first(), Some(&"messageStart"));
        assert_eq!(
            types[types.len() - 3..],
            ["contentBlockStop", "messageStop", "metadata"]
        );
        let all = String::from_utf8_lossy(&outs[0]);
        assert!(!all.contains("bob@") && !all.contains("4111"), "{all}");
    }

    /// `InvokeModelWithResponseStream`: Anthropic's events base64 in `chunk` frames, masked
    /// as those events and encoded again.
    #[test]
    fn invoke_model_chunks_are_masked_as_the_providers_events() {
        let chunk = |event: Value| {
            let bytes = base64::engine::general_purpose::STANDARD.encode(event.to_string());
            event_frame(
                "chunk",
                serde_json::json!({"bytes": bytes, "p": "ab"})
                    .to_string()
                    .as_bytes(),
            )
        };
        let mut body = Vec::new();
        for piece in ["mail carol@exam", "ple.org now"] {
            body.extend(chunk(
                serde_json::json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece}}),
            ));
        }
        body.extend(chunk(
            serde_json::json!({"type": "content_block_stop", "index": 0}),
        ));
        body.extend(chunk(serde_json::json!({"type": "message_stop"})));
        let out = run(&body, 5).unwrap();
        assert_eq!(out, run(&body, body.len()).unwrap());
        let events: Vec<Value> = read_frames(&out)
            .unwrap()
            .into_iter()
            .map(|(t, p)| {
                assert_eq!(t, "chunk");
                let v: Value = serde_json::from_slice(&p).unwrap();
                let inner = base64::engine::general_purpose::STANDARD
                    .decode(v["bytes"].as_str().unwrap())
                    .unwrap();
                serde_json::from_slice(&inner).unwrap()
            })
            .collect();
        let text: String = events
            .iter()
            .filter_map(|e| e["delta"]["text"].as_str())
            .collect();
        assert_eq!(text, "mail [REDACTED:EMAIL] now");
        assert_eq!(events.last().unwrap()["type"], "message_stop");
    }

    /// A frame that cannot be read fails the body (never passed on unmasked); an exception
    /// frame is masked whole, a clean one goes through as it came; a payload that is not
    /// JSON is masked as text.
    #[test]
    fn broken_frames_fail_and_exceptions_pass() {
        let body = converse();
        let mut flipped = body.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x20;
        assert!(run(&flipped, 64).unwrap_err().contains("CRC"));
        let cut = &body[..body.len() - 3];
        assert!(run(cut, 64).unwrap_err().contains("inside a frame"));
        let mut huge = body.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(run(&huge, 64).is_err());

        let exception = encode_frame(
            &[
                string_header(":exception-type", "throttlingException"),
                string_header(":content-type", "application/json"),
                string_header(":message-type", "exception"),
            ],
            br#"{"message":"slow down, bob@example.com"}"#,
        );
        let out = run(&exception, 3).unwrap();
        let frames = read_frames(&out).unwrap();
        assert_eq!(
            frames,
            [(
                String::new(),
                br#"{"message":"slow down, [REDACTED:EMAIL]"}"#.to_vec()
            )]
        );
        assert!(out.windows(19).any(|w| w == b"throttlingException"));
        let clean = encode_frame(
            &[string_header(":message-type", "exception")],
            br#"{"message":"slow down"}"#,
        );
        assert_eq!(run(&clean, 3).unwrap(), clean);
        // An event whose payload is not JSON is masked as text.
        let text = event_frame("contentBlockDelta", b"plain bob@example.com");
        assert_eq!(
            read_frames(&run(&text, 3).unwrap()).unwrap(),
            [(
                "contentBlockDelta".to_string(),
                b"plain [REDACTED:EMAIL]".to_vec()
            )]
        );
    }
}
