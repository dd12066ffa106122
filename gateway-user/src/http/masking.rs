//! Masking on the HTTP data path: content codings decoded, request bodies masked whole
//! (structure-aware), response bodies masked as they stream (text, SSE, newline-delimited
//! JSON) or whole (JSON up to [`BODY_LIMIT`], then as text).

use std::{
    io::{Read as _, Write as _},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use hyper::body::Incoming;

use super::{BoxError, ahead::Ahead};
use crate::mask::{
    MaskContext,
    eventstream::{self, EventStreamMasker},
    is_json_type, mask_body,
    sse::{SseMasker, is_ndjson_type},
    stream::{Step, StreamMasker},
};

/// Largest body read whole: a request with `body` conditions or mask rules (past it: 413), a
/// JSON response being masked (past it: masked as text), a zstd body.
pub const BODY_LIMIT: usize = 8 << 20;
/// Largest output one compressed chunk of a streamed body may inflate to: past it the body
/// fails as a decompression bomb. Decoders write through a [`Sink`] that refuses the byte past
/// the limit, so a bomb is stopped having produced at most this much, never held whole.
const INFLATE_LIMIT: usize = 64 << 20;

/// Content codings the gateway can decode.
pub const CODINGS: &[&str] = &["gzip", "x-gzip", "deflate", "br", "zstd"];
/// The codings decoded as they stream, which a request may keep asking for: zstd is decoded
/// only whole (a streamed answer in zstd would reach the agent at its end), so the gateway
/// does not ask for it, and decodes it only when an upstream sends it unasked.
pub const STREAMED_CODINGS: &[&str] = &["gzip", "x-gzip", "deflate", "br"];

/// Where a decoder writes its output: at most `room` bytes, then an error (and `over`).
/// The decoders hand it their output in pieces of their buffer's size (32 KiB for gzip and
/// deflate, 16 KiB for brotli), so what a compressed input inflates to is refused as it
/// grows, not after it has been allocated.
#[derive(Default)]
struct Sink {
    out: Vec<u8>,
    room: usize,
    over: bool,
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.room {
            self.over = true;
            return Err(std::io::Error::other("inflate limit reached"));
        }
        self.room -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Coding {
    Gzip(flate2::write::MultiGzDecoder<Sink>),
    Zlib(flate2::write::ZlibDecoder<Sink>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Sink>>),
    /// zstd frames are decoded whole, from at most [`BODY_LIMIT`] compressed bytes.
    Zstd(Vec<u8>),
}

impl Coding {
    fn sink(&mut self) -> Option<&mut Sink> {
        match self {
            Self::Gzip(d) => Some(d.get_mut()),
            Self::Zlib(d) => Some(d.get_mut()),
            Self::Brotli(d) => Some(d.get_mut()),
            Self::Zstd(_) => None,
        }
    }
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A coding the gateway cannot decode, or bytes that are not of their coding.
    #[error("{0}")]
    Broken(String),
    /// The body inflates past the limit (a decompression bomb, or a body too large to be
    /// checked whole).
    #[error("{0}")]
    TooLarge(String),
}

/// A push decoder for one content coding, its output bounded: per chunk pushed
/// ([`Decoder::for_encoding`], a streamed body), or in all ([`decode_all`], a body read whole).
pub struct Decoder {
    coding: Coding,
    /// The most output one push (and `finish`) may give, or the whole body if `whole`.
    limit: usize,
    whole: bool,
}

impl Decoder {
    /// The decoder of a `Content-Encoding` value, for a streamed body (each pushed chunk may
    /// inflate to [`INFLATE_LIMIT`]): `None` for identity, an error for codings the gateway
    /// cannot decode (several stacked, or unknown).
    pub fn for_encoding(headers: &HeaderMap) -> Result<Option<Self>, String> {
        Self::bounded(headers, INFLATE_LIMIT, false).map_err(|e| e.to_string())
    }

    /// The decoder of a coding named as in `Content-Encoding`, for a streamed body.
    pub fn for_coding(coding: &str) -> Result<Option<Self>, String> {
        Self::of(coding, INFLATE_LIMIT, false).map_err(|e| e.to_string())
    }

    fn bounded(
        headers: &HeaderMap,
        limit: usize,
        whole: bool,
    ) -> Result<Option<Self>, DecodeError> {
        match headers.get(http::header::CONTENT_ENCODING) {
            Some(value) => Self::of(value.to_str().unwrap_or(""), limit, whole),
            None => Ok(None),
        }
    }

    fn of(coding: &str, limit: usize, whole: bool) -> Result<Option<Self>, DecodeError> {
        let value = coding.trim().to_ascii_lowercase();
        let sink = Sink {
            room: limit,
            ..Sink::default()
        };
        let coding = match value.as_str() {
            "" | "identity" => return Ok(None),
            "gzip" | "x-gzip" => Coding::Gzip(flate2::write::MultiGzDecoder::new(sink)),
            "deflate" => Coding::Zlib(flate2::write::ZlibDecoder::new(sink)),
            "br" => Coding::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(
                sink,
                16 << 10,
            ))),
            "zstd" => Coding::Zstd(Vec::new()),
            other => {
                return Err(DecodeError::Broken(format!(
                    "content encoding `{other}` cannot be decoded for masking"
                )));
            }
        };
        Ok(Some(Self {
            coding,
            limit,
            whole,
        }))
    }

    fn too_large(&self) -> DecodeError {
        DecodeError::TooLarge(if self.whole {
            format!(
                "body over {} bytes once decoded cannot be checked or masked",
                self.limit
            )
        } else {
            format!(
                "a compressed chunk inflates past {} MiB: refused as a decompression bomb",
                self.limit >> 20
            )
        })
    }

    /// What the bytes of a write inflated to, or why they did not.
    fn taken(&mut self, written: std::io::Result<()>) -> Result<Vec<u8>, DecodeError> {
        let whole = self.whole;
        let limit = self.limit;
        let Some(sink) = self.coding.sink() else {
            return Ok(Vec::new());
        };
        let over = sink.over;
        let out = std::mem::take(&mut sink.out);
        if !whole {
            sink.room = limit;
        }
        match written {
            Ok(()) => Ok(out),
            Err(_) if over => Err(self.too_large()),
            Err(e) => Err(DecodeError::Broken(format!("broken compressed body: {e}"))),
        }
    }

    pub fn push(&mut self, input: &[u8]) -> Result<Vec<u8>, String> {
        self.push_bounded(input).map_err(|e| e.to_string())
    }

    fn push_bounded(&mut self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        // flate2 keeps what the last write inflated until the next write: flushed here, a
        // streamed event reaches the agent with its own chunk, not with the next one.
        let written = match &mut self.coding {
            Coding::Gzip(d) => d.write_all(input).and_then(|()| d.flush()),
            Coding::Zlib(d) => d.write_all(input).and_then(|()| d.flush()),
            Coding::Brotli(d) => d.write_all(input),
            Coding::Zstd(buf) => {
                if buf.len() + input.len() > BODY_LIMIT {
                    return Err(DecodeError::TooLarge(format!(
                        "zstd body over {BODY_LIMIT} bytes cannot be masked"
                    )));
                }
                buf.extend_from_slice(input);
                return Ok(Vec::new());
            }
        };
        self.taken(written)
    }

    pub fn finish(self) -> Result<Vec<u8>, String> {
        self.finish_bounded().map_err(|e| e.to_string())
    }

    fn finish_bounded(mut self) -> Result<Vec<u8>, DecodeError> {
        let written = match &mut self.coding {
            Coding::Gzip(d) => d.try_finish(),
            Coding::Zlib(d) => d.try_finish(),
            Coding::Brotli(d) => d.close(),
            Coding::Zstd(buf) => {
                let broken = |e: &dyn std::fmt::Display| {
                    DecodeError::Broken(format!("broken compressed body: {e}"))
                };
                let mut decoder = ruzstd::decoding::StreamingDecoder::new(buf.as_slice())
                    .map_err(|e| broken(&e))?;
                let mut out = Vec::new();
                (&mut decoder)
                    .take(self.limit as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| broken(&e))?;
                if out.len() > self.limit {
                    return Err(self.too_large());
                }
                return Ok(out);
            }
        };
        self.taken(written)
    }
}

/// Decodes a whole body, to at most `limit` bytes.
pub fn decode_all(
    headers: &HeaderMap,
    body: Bytes,
    limit: usize,
) -> Result<(Bytes, bool), DecodeError> {
    match Decoder::bounded(headers, limit, true)? {
        None => Ok((body, false)),
        Some(mut decoder) => {
            let mut out = decoder.push_bounded(&body)?;
            out.extend(decoder.finish_bounded()?);
            Ok((Bytes::from(out), true))
        }
    }
}

/// Content types never masked: media and archives (rewriting bytes would break them).
pub fn is_binary_type(content_type: Option<&str>) -> bool {
    let Some(essence) = content_type.and_then(|t| t.split(';').next()) else {
        return false;
    };
    let essence = essence.trim().to_ascii_lowercase();
    ["image/", "audio/", "video/", "font/"]
        .iter()
        .any(|p| essence.starts_with(p))
        || matches!(
            essence.as_str(),
            "application/octet-stream"
                | "application/zip"
                | "application/gzip"
                | "application/pdf"
                | "application/x-tar"
                | "application/wasm"
        )
}

enum Transform {
    Text(StreamMasker),
    Sse(SseMasker),
    /// Amazon Bedrock's streamed answers: binary frames with CRCs around JSON events.
    EventStream(EventStreamMasker),
    Json(Vec<u8>),
}

/// A response body masked on its way to the agent.
pub struct MaskedBody {
    inner: Ahead<Incoming>,
    decoder: Option<Decoder>,
    transform: Transform,
    steps: Vec<Step>,
    content_type: Option<String>,
    ctx: Arc<Mutex<MaskContext>>,
    errors: Arc<Mutex<Vec<String>>>,
    trailers: Option<HeaderMap>,
    done: bool,
}

impl MaskedBody {
    pub fn new(
        inner: Ahead<Incoming>,
        decoder: Option<Decoder>,
        steps: Vec<Step>,
        content_type: Option<String>,
        ctx: Arc<Mutex<MaskContext>>,
        errors: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        let essence = content_type
            .as_deref()
            .and_then(|t| t.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase());
        let transform = match essence.as_deref() {
            Some("text/event-stream") => Transform::Sse(SseMasker::new(steps.clone())),
            Some(essence) if is_ndjson_type(essence) => {
                Transform::Sse(SseMasker::ndjson(steps.clone()))
            }
            Some(eventstream::CONTENT_TYPE) => {
                Transform::EventStream(EventStreamMasker::new(steps.clone()))
            }
            _ if content_type.as_deref().is_some_and(is_json_type) => Transform::Json(Vec::new()),
            _ => Transform::Text(StreamMasker::new(steps.iter().cloned())),
        };
        Self {
            inner,
            decoder,
            transform,
            steps,
            content_type,
            ctx,
            errors,
            trailers: None,
            done: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, String> {
        let decoded;
        let chunk = match &mut self.decoder {
            Some(decoder) => {
                decoded = decoder.push(chunk)?;
                decoded.as_slice()
            }
            None => chunk,
        };
        let mut ctx = crate::lock(&self.ctx);
        Ok(match &mut self.transform {
            Transform::Text(stream) => stream.push(chunk, &mut ctx),
            Transform::Sse(sse) => sse.push(chunk, &mut ctx),
            Transform::EventStream(frames) => frames.push(chunk, &mut ctx)?,
            Transform::Json(buf) => {
                if buf.len() + chunk.len() <= BODY_LIMIT {
                    buf.extend_from_slice(chunk);
                    return Ok(Vec::new());
                }
                ctx.note("json response over 8 MiB: masked as text");
                let mut stream = StreamMasker::new(self.steps.iter().cloned());
                let mut out = stream.push(&std::mem::take(buf), &mut ctx);
                out.extend(stream.push(chunk, &mut ctx));
                self.transform = Transform::Text(stream);
                out
            }
        })
    }

    fn finish(&mut self) -> Result<Vec<u8>, String> {
        let tail = match self.decoder.take() {
            Some(decoder) => decoder.finish()?,
            None => Vec::new(),
        };
        let mut out = if tail.is_empty() {
            Vec::new()
        } else {
            self.push(&tail)?
        };
        let mut ctx = crate::lock(&self.ctx);
        match &mut self.transform {
            Transform::Text(stream) => out.extend(stream.finish(&mut ctx)),
            Transform::Sse(sse) => out.extend(sse.finish(&mut ctx)),
            Transform::EventStream(frames) => out.extend(frames.finish(&mut ctx)?),
            Transform::Json(buf) => {
                let body = std::mem::take(buf);
                match mask_body(&self.steps, self.content_type.as_deref(), &body, &mut ctx) {
                    Some(masked) => out.extend(masked),
                    None => out.extend(body),
                }
            }
        }
        Ok(out)
    }

    fn fail(&self, error: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        crate::lock(&self.errors).push(error.clone());
        Poll::Ready(Some(Err(error.into())))
    }
}

impl http_body::Body for MaskedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(error))) => {
                    return self.fail(format!("upstream body: {error}"));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => match self.push(&data) {
                        Ok(out) if out.is_empty() => {}
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(error) => return self.fail(error),
                    },
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    match self.finish() {
                        Ok(out) if out.is_empty() => {}
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(error) => return self.fail(error),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(coding: &str, body: &[u8]) -> (HeaderMap, Bytes) {
        let data = match coding {
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(body).unwrap();
                e.finish().unwrap()
            }
            "deflate" => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(body).unwrap();
                e.finish().unwrap()
            }
            _ => body.to_vec(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_ENCODING, coding.parse().unwrap());
        (headers, Bytes::from(data))
    }

    #[test]
    fn codings_decode_and_broken_ones_fail() {
        for coding in ["gzip", "deflate"] {
            let (headers, data) = encoded(coding, b"mail bob@example.com");
            let (body, decoded) = decode_all(&headers, data.clone(), BODY_LIMIT).unwrap();
            assert!(decoded);
            assert_eq!(&body[..], b"mail bob@example.com");
            let truncated = data.slice(..data.len() / 2);
            let error = decode_all(&headers, truncated, BODY_LIMIT).unwrap_err();
            assert!(
                matches!(&error, DecodeError::Broken(m) if m.contains("broken")),
                "{error}"
            );
        }
        let (headers, _) = encoded("compress", b"");
        assert!(
            decode_all(&headers, Bytes::new(), BODY_LIMIT)
                .unwrap_err()
                .to_string()
                .contains("compress")
        );
        let (headers, _) = encoded("zstd", b"");
        assert!(decode_all(&headers, Bytes::from_static(b"not zstd"), BODY_LIMIT).is_err());
    }

    /// Bodies that inflate past the limit fail having produced at most the limit: read whole
    /// (a request), as too large to check; streamed, each push gives at most
    /// [`INFLATE_LIMIT`], and a chunk that would give more fails.
    #[test]
    fn bombs_are_stopped_at_the_limit() {
        // 96 MiB of zeros in under 1 MiB: gzip as 96 members of 1 MiB each, deflate whole.
        let member = encoded("gzip", &vec![0; 1 << 20]).1;
        let gzip: Vec<u8> = std::iter::repeat_n(&member[..], 96)
            .flatten()
            .copied()
            .collect();
        let deflate = encoded("deflate", &vec![0; 96 << 20]).1;
        for (coding, bomb) in [("gzip", Bytes::from(gzip)), ("deflate", deflate)] {
            assert!(bomb.len() < 1 << 20, "{coding}: {}", bomb.len());
            let headers = encoded(coding, b"").0;
            let error = decode_all(&headers, bomb.clone(), BODY_LIMIT).unwrap_err();
            assert!(
                matches!(&error, DecodeError::TooLarge(m) if m.contains("once decoded")),
                "{coding}: {error}"
            );
            // Under the limit, the same body decodes whole.
            let (body, _) = decode_all(&headers, bomb.clone(), 96 << 20).unwrap();
            assert_eq!(body.len(), 96 << 20);
            assert!(body.iter().all(|&b| b == 0));

            // Streamed in chunks of 1 KiB and of the whole body.
            let mut decoder = Decoder::for_encoding(&headers).unwrap().unwrap();
            let mut total = 0;
            for chunk in bomb.chunks(1 << 10) {
                let out = decoder.push(chunk).unwrap();
                assert!(out.len() <= INFLATE_LIMIT);
                total += out.len();
            }
            total += decoder.finish().unwrap().len();
            assert_eq!(total, 96 << 20, "{coding}");
            let mut decoder = Decoder::for_encoding(&headers).unwrap().unwrap();
            let error = decoder.push(&bomb).unwrap_err();
            assert!(error.contains("decompression bomb"), "{coding}: {error}");
        }
    }

    /// A compressed stream flushed after each event (as a server streaming SSE does) gives
    /// each event out of the chunk that carried it.
    #[test]
    fn each_chunk_inflates_at_once() {
        use flate2::write::{GzEncoder, ZlibEncoder};
        // Each event written and sync-flushed, then the stream's end: four chunks.
        fn chunks<E: std::io::Write>(
            mut encoder: E,
            out: fn(&mut E) -> &mut Vec<u8>,
            finish: fn(E) -> std::io::Result<Vec<u8>>,
            events: &[&str],
        ) -> Vec<Vec<u8>> {
            let mut chunks = Vec::new();
            for event in events {
                encoder.write_all(event.as_bytes()).unwrap();
                encoder.flush().unwrap();
                chunks.push(std::mem::take(out(&mut encoder)));
            }
            chunks.push(finish(encoder).unwrap());
            chunks
        }
        let events = [
            "data: {\"a\": 1}\n\n",
            "data: {\"b\": 2}\n\n",
            "data: [DONE]\n\n",
        ];
        let level = flate2::Compression::fast();
        for coding in ["gzip", "deflate"] {
            let chunks = if coding == "gzip" {
                let e = GzEncoder::new(Vec::new(), level);
                chunks(e, GzEncoder::get_mut, GzEncoder::finish, &events)
            } else {
                let e = ZlibEncoder::new(Vec::new(), level);
                chunks(e, ZlibEncoder::get_mut, ZlibEncoder::finish, &events)
            };
            let headers = encoded(coding, b"").0;
            let mut decoder = Decoder::for_encoding(&headers).unwrap().unwrap();
            for (chunk, event) in chunks.iter().zip(events) {
                assert_eq!(decoder.push(chunk).unwrap(), event.as_bytes(), "{coding}");
            }
            assert_eq!(decoder.push(&chunks[3]).unwrap(), b"", "{coding}");
            assert_eq!(decoder.finish().unwrap(), b"", "{coding}");
        }
    }

    #[test]
    fn binary_types() {
        assert!(is_binary_type(Some("image/png")));
        assert!(is_binary_type(Some("application/octet-stream; x=1")));
        assert!(!is_binary_type(Some("application/json")));
        assert!(!is_binary_type(None));
    }
}
