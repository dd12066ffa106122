//! WebSocket messages masked in both directions (RFC 6455), for upgraded connections to a
//! target with mask rules (or recorded in full): realtime LLM APIs and other tool APIs speak
//! JSON events over a WebSocket, and relaying its bytes as they are would pass every value
//! unmasked and record none. The text messages sent are handed to the session's recording
//! ([`relay`]'s `record`).
//!
//! Frames are read as they come. A text message (a text frame and its continuations, at most
//! [`MESSAGE_LIMIT`] bytes) is handed to an SSE masker as one event, so JSON events are masked
//! value by value and the text a model streams over many events (`response.*.delta`) is
//! followed across them, as in an SSE stream; what comes back is sent as text messages of one
//! frame each (frames towards the upstream masked with a fresh key, as a client's must be).
//! Binary messages and control frames (ping, pong, close) go through as they came; before a
//! close, what the masker still holds goes out. Compression (`permessage-deflate`) is not
//! offered upstream, so every frame's payload is its text; an upstream that turns it on
//! anyway, a reserved bit, an unknown opcode or an over-long message ends the connection.

use std::sync::{Arc, Mutex};

use ring::rand::{SecureRandom as _, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::mask::{
    MaskContext,
    sse::{self, SseMasker},
    stream::Step,
};

/// Largest text message masked (and so buffered); a longer one ends the connection.
pub const MESSAGE_LIMIT: usize = 8 << 20;

/// Largest frame read: a binary message's frame may be larger than a text message (it is
/// not buffered past its frame), but not without bound.
const FRAME_LIMIT: usize = 16 << 20;

const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;

/// One frame read from a buffer: its header fields, its payload unmasked, and its length.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
    pub len: usize,
}

/// The frame at the start of `buf`, once all of it is there (also the mock upstream's).
pub fn parse(buf: &[u8]) -> Result<Option<Frame>, String> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(
            "WebSocket frame with a reserved bit set (an extension nobody agreed on)".into(),
        );
    }
    let (len, mut at) = match second & 0x7f {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let len = u64::from_be_bytes(buf[2..10].try_into().unwrap_or_default());
            (usize::try_from(len).unwrap_or(usize::MAX), 10)
        }
        126 | 127 => return Ok(None),
        len => (usize::from(len), 2),
    };
    if len > FRAME_LIMIT {
        return Err(format!(
            "WebSocket frame of {len} bytes (limit {FRAME_LIMIT})"
        ));
    }
    let key = if second & 0x80 != 0 {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    let Some(payload) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let mut payload = payload.to_vec();
    if let Some(key) = key {
        apply_key(&mut payload, key);
    }
    Ok(Some(Frame {
        fin: first & 0x80 != 0,
        opcode: first & 0x0f,
        payload,
        len: at + len,
    }))
}

fn apply_key(payload: &mut [u8], key: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// A whole message in one frame, masked with `key` when it goes to the upstream (also the
/// mock upstream's).
pub fn encode(opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let masked = if key.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(masked | u8::try_from(len).unwrap_or(125)),
        len @ 126..=0xffff => {
            out.push(masked | 0x7e);
            out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
        }
        len => {
            out.push(masked | 0x7f);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if let Some(key) = key {
        out.extend_from_slice(&key);
    }
    let body = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = key {
        apply_key(&mut out[body..], key);
    }
    out
}

/// The masking of one direction's messages.
pub struct MessageMasker {
    events: SseMasker,
    steps: Vec<Step>,
    /// The text message being put together from its frames.
    text: Option<Vec<u8>>,
    /// Frames towards the upstream are masked with a key (RFC 6455, section 5.3).
    to_upstream: bool,
    rng: SystemRandom,
    /// The text messages sent, as sent, kept for the recording when it wants them.
    sent: Option<Vec<Vec<u8>>>,
}

impl MessageMasker {
    pub fn new(steps: Vec<Step>, to_upstream: bool) -> Self {
        Self {
            events: SseMasker::new(steps.clone()),
            steps,
            text: None,
            to_upstream,
            rng: SystemRandom::new(),
            sent: None,
        }
    }

    /// Keeps the text messages sent for [`Self::take_sent`].
    #[must_use]
    pub fn recording(mut self) -> Self {
        self.sent = Some(Vec::new());
        self
    }

    /// The text messages sent since the last call (after masking: what crossed).
    pub fn take_sent(&mut self) -> Vec<Vec<u8>> {
        self.sent.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// What to send for the frames completed in `buf` (consumed from it).
    pub fn push(&mut self, buf: &mut Vec<u8>, ctx: &mut MaskContext) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut at = 0;
        let result = loop {
            match parse(&buf[at..]) {
                Ok(Some(frame)) => {
                    let raw = &buf[at..at + frame.len];
                    if let Err(error) = self.frame(&frame, raw, ctx, &mut out) {
                        break Err(error);
                    }
                    at += frame.len;
                }
                Ok(None) => break Ok(out),
                Err(error) => break Err(error),
            }
        };
        buf.drain(..at);
        result
    }

    fn frame(
        &mut self,
        frame: &Frame,
        raw: &[u8],
        ctx: &mut MaskContext,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        match (frame.opcode, &mut self.text) {
            (TEXT, None) => {
                let mut text = frame.payload.clone();
                if frame.fin {
                    self.message(&text, ctx, out);
                } else {
                    text.reserve(frame.payload.len());
                    self.text = Some(text);
                }
            }
            (CONTINUATION, Some(text)) => {
                if text.len() + frame.payload.len() > MESSAGE_LIMIT {
                    return Err(format!(
                        "WebSocket text message over {MESSAGE_LIMIT} bytes: cannot be masked"
                    ));
                }
                text.extend_from_slice(&frame.payload);
                if frame.fin {
                    let text = self.text.take().unwrap_or_default();
                    self.message(&text, ctx, out);
                }
            }
            (TEXT, Some(_)) => return Err("WebSocket text frame inside a text message".into()),
            // A binary message and its continuations, pings and pongs: as they came.
            (CONTINUATION | BINARY | 0x9 | 0xa, _) => out.extend_from_slice(raw),
            (CLOSE, _) => {
                out.extend(self.finish(ctx));
                out.extend_from_slice(raw);
            }
            (opcode, _) => return Err(format!("WebSocket frame with opcode {opcode:#x}")),
        }
        Ok(())
    }

    /// A whole text message: masked as an event of the stream of messages.
    fn message(&mut self, text: &[u8], ctx: &mut MaskContext, out: &mut Vec<u8>) {
        // The SSE masker reads `\r` as a line end; such a message is masked on its own.
        if text.contains(&b'\r') {
            let masked = crate::mask::mask_body(&self.steps, None, text, ctx);
            let masked = masked.as_deref().unwrap_or(text);
            out.extend(self.encode_text(masked));
            if let Some(sent) = &mut self.sent {
                sent.push(masked.to_vec());
            }
            return;
        }
        let mut event = Vec::with_capacity(text.len() + 16);
        for line in text.split(|&b| b == b'\n') {
            event.extend_from_slice(b"data: ");
            event.extend_from_slice(line);
            event.push(b'\n');
        }
        event.push(b'\n');
        let masked = self.events.push(&event, ctx);
        self.send(&masked, out);
    }

    /// What the masker still holds (streams not ended), as text messages.
    pub fn finish(&mut self, ctx: &mut MaskContext) -> Vec<u8> {
        let mut out = Vec::new();
        let rest = self.events.finish(ctx);
        self.send(&rest, &mut out);
        out
    }

    fn send(&mut self, written: &[u8], out: &mut Vec<u8>) {
        for (_, data) in sse::written_events(written) {
            out.extend(self.encode_text(&data));
            if let Some(sent) = &mut self.sent {
                sent.push(data);
            }
        }
    }

    fn encode_text(&self, text: &[u8]) -> Vec<u8> {
        let key = self.to_upstream.then(|| {
            let mut key = [0; 4];
            // The OS's generator does not fail on Linux; a zero key is still a valid frame.
            let _ = self.rng.fill(&mut key);
            key
        });
        encode(TEXT, text, key)
    }
}

/// A text message as it crossed: towards the upstream (`true`) or the client, and its text.
pub type Sent = (bool, Vec<u8>);

/// Relays an upgraded WebSocket connection, masking text messages with `up` (towards the
/// upstream) and `down` (towards the client) steps; a direction without steps is copied as
/// it is, unless `record` wants every text message sent (then it is read as frames too).
/// Returns the bytes sent each way, or why the connection was ended.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    up: Vec<Step>,
    down: Vec<Step>,
    ctx: Arc<Mutex<MaskContext>>,
    record: Option<tokio::sync::mpsc::Sender<Sent>>,
) -> Result<(u64, u64), String>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let ups = pump(
        client_read,
        upstream_write,
        up,
        true,
        Arc::clone(&ctx),
        record.clone(),
    );
    let downs = pump(upstream_read, client_write, down, false, ctx, record);
    let (ups, downs) = tokio::join!(ups, downs);
    Ok((ups?, downs?))
}

/// One direction: frames read from `from`, masked, written to `to`, until the end of `from`.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    steps: Vec<Step>,
    to_upstream: bool,
    ctx: Arc<Mutex<MaskContext>>,
    record: Option<tokio::sync::mpsc::Sender<Sent>>,
) -> Result<u64, String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let result = if steps.is_empty() && record.is_none() {
        tokio::io::copy(&mut from, &mut to).await
    } else {
        let mut masker = MessageMasker::new(steps, to_upstream);
        if record.is_some() {
            masker = masker.recording();
        }
        masked_copy(&mut from, &mut to, masker, &ctx, record.as_ref()).await
    };
    // Whichever way this direction ended, the other side learns it (else a client waiting
    // for the server to close would wait for its own timeout).
    let _ = to.shutdown().await;
    match result {
        Ok(sent) => Ok(sent),
        // A TLS peer that closes without `close_notify`: the end, not a failure.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(error) => Err(format!("WebSocket relay: {error}")),
    }
}

async fn masked_copy<R, W>(
    from: &mut R,
    to: &mut W,
    mut masker: MessageMasker,
    ctx: &Mutex<MaskContext>,
    record: Option<&tokio::sync::mpsc::Sender<Sent>>,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(16 << 10);
    let mut sent = 0u64;
    loop {
        let read = from.read_buf(&mut buf).await?;
        let out = if read == 0 {
            masker.finish(&mut crate::lock(ctx))
        } else {
            let pushed = masker.push(&mut buf, &mut crate::lock(ctx));
            pushed.map_err(std::io::Error::other)?
        };
        to.write_all(&out).await?;
        sent += out.len() as u64;
        if let Some(record) = record {
            for text in masker.take_sent() {
                // A recording that went away (the session ended) takes nothing more.
                let _ = record.send((masker.to_upstream, text)).await;
            }
        }
        if read == 0 {
            return Ok(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::Strategy;

    fn steps() -> Vec<Step> {
        crate::mask::sse::tests::steps(Strategy::Redact)
    }

    fn ctx() -> MaskContext {
        MaskContext::new(Arc::from(&b"k"[..]))
    }

    /// Every message of `bytes` (frames), unmasked: (opcode, payload), continuations joined.
    fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut open = false;
        while let Some(frame) = parse(bytes).unwrap() {
            bytes = &bytes[frame.len..];
            if frame.opcode == CONTINUATION && open {
                out.last_mut().unwrap().1.extend(frame.payload);
            } else {
                out.push((frame.opcode, frame.payload));
            }
            open = !frame.fin;
        }
        assert!(bytes.is_empty(), "a frame left over");
        out
    }

    fn delta(text: &str) -> String {
        serde_json::json!({"type": "response.output_text.delta", "item_id": "item_1",
            "content_index": 0, "delta": text})
        .to_string()
    }

    /// The Realtime API's text deltas from the upstream: a value split over messages is
    /// masked, each message stays one JSON event, any split of the bytes gives the same
    /// frames; pings and binary messages go through; the held rest goes out before a close.
    #[test]
    fn text_streamed_over_messages_is_masked() {
        let mut body = Vec::new();
        for piece in ["Mail bob@exa", "mple.com, card 4111 1111 1111 111"] {
            body.extend(encode(TEXT, delta(piece).as_bytes(), None));
        }
        body.extend(encode(0x9, b"ping", None));
        body.extend(encode(BINARY, &[0, 1, 2, 0xff], None));
        // The last delta in two frames.
        let last = delta("1 now");
        let (a, b) = last.as_bytes().split_at(10);
        body.extend_from_slice(&[0x01, u8::try_from(a.len()).unwrap()]);
        body.extend_from_slice(a);
        body.extend_from_slice(&[0x80, u8::try_from(b.len()).unwrap()]);
        body.extend_from_slice(b);
        body.extend(encode(CLOSE, &[0x03, 0xe8], None));
        let mut outs = Vec::new();
        for size in [1, 5, body.len()] {
            let mut masker = MessageMasker::new(steps(), false);
            let mut c = ctx();
            let (mut buf, mut out) = (Vec::new(), Vec::new());
            for chunk in body.chunks(size) {
                buf.extend_from_slice(chunk);
                out.extend(masker.push(&mut buf, &mut c).unwrap());
            }
            assert!(buf.is_empty());
            outs.push(out);
        }
        assert!(
            outs.windows(2).all(|w| w[0] == w[1]),
            "chunking changed the output"
        );
        let messages = messages(&outs[0]);
        let text: String = messages
            .iter()
            .filter(|(op, _)| *op == TEXT)
            .map(|(_, p)| {
                let v: serde_json::Value = serde_json::from_slice(p).expect("each message JSON");
                v["delta"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            text,
            "Mail [REDACTED:EMAIL], card [REDACTED:CREDIT_CARD] now"
        );
        assert!(messages.contains(&(0x9, b"ping".to_vec())));
        assert!(messages.contains(&(BINARY, vec![0, 1, 2, 0xff])));
        assert_eq!(messages.last().unwrap(), &(CLOSE, vec![0x03, 0xe8]));
    }

    /// Towards the upstream, frames are masked with a key (the upstream unmasks them), and
    /// a message that is not JSON is masked as text.
    #[test]
    fn frames_to_the_upstream_carry_a_key() {
        let mut masker = MessageMasker::new(steps(), true);
        let key = [7, 1, 2, 3];
        let mut buf = encode(TEXT, b"hello bob@example.com", Some(key));
        let out = masker.push(&mut buf, &mut ctx()).unwrap();
        assert_eq!(out[1] & 0x80, 0x80, "masked");
        assert_eq!(messages(&out), [(TEXT, b"hello [REDACTED:EMAIL]".to_vec())]);
    }

    /// Without masking steps (a direction read only to be recorded), messages go through
    /// unchanged and are kept as sent.
    #[test]
    fn a_direction_without_steps_is_passed_and_kept() {
        let mut masker = MessageMasker::new(Vec::new(), false).recording();
        let mut buf = encode(TEXT, delta("mail bob@example.com").as_bytes(), None);
        buf.extend(encode(TEXT, b"plain", None));
        let out = masker.push(&mut buf, &mut ctx()).unwrap();
        let sent = masker.take_sent();
        assert_eq!(
            sent,
            [
                delta("mail bob@example.com").into_bytes(),
                b"plain".to_vec()
            ]
        );
        assert_eq!(
            messages(&out),
            sent.into_iter().map(|t| (TEXT, t)).collect::<Vec<_>>()
        );
    }

    /// A reserved bit (compression nobody agreed on), an unknown opcode, a text message
    /// over the limit: the connection ends, nothing passes unmasked.
    #[test]
    fn frames_that_cannot_be_masked_end_the_connection() {
        let mut masker = MessageMasker::new(steps(), false);
        let mut buf = encode(TEXT, b"bob@example.com", None);
        buf[0] |= 0x40;
        assert!(
            masker
                .push(&mut buf, &mut ctx())
                .unwrap_err()
                .contains("reserved")
        );
        let mut buf = encode(0x3, b"x", None);
        assert!(
            masker
                .push(&mut buf, &mut ctx())
                .unwrap_err()
                .contains("opcode")
        );

        let mut masker = MessageMasker::new(steps(), false);
        let chunk = vec![b'a'; 1 << 20];
        let mut buf = vec![0x01, 127];
        buf.extend_from_slice(&(chunk.len() as u64).to_be_bytes());
        buf.extend_from_slice(&chunk);
        for _ in 0..8 {
            buf.extend_from_slice(&[0x00, 127]);
            buf.extend_from_slice(&(chunk.len() as u64).to_be_bytes());
            buf.extend_from_slice(&chunk);
        }
        assert!(
            masker
                .push(&mut buf, &mut ctx())
                .unwrap_err()
                .contains("over")
        );
    }
}
