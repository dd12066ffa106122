//! Masking on the HTTP data path: content codings decoded, request bodies masked whole
//! (structure-aware), response bodies masked as they stream (text, SSE) or whole (JSON up to
//! [`BODY_LIMIT`], then as text).

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
    MaskContext, is_json_type, mask_body,
    sse::SseMasker,
    stream::{Step, StreamMasker},
};

/// Largest body read whole: a request with `body` conditions or mask rules (past it: 413), a
/// JSON response being masked (past it: masked as text), a zstd body.
pub const BODY_LIMIT: usize = 8 << 20;
/// Largest output one compressed chunk may inflate to (a decompression bomb fails instead).
const INFLATE_LIMIT: usize = 64 << 20;

/// Content codings the gateway can decode.
pub const CODINGS: &[&str] = &["gzip", "x-gzip", "deflate", "br", "zstd"];

/// A push decoder for one content coding.
pub enum Decoder {
    Gzip(flate2::write::MultiGzDecoder<Vec<u8>>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
    /// zstd frames are decoded whole, from at most [`BODY_LIMIT`] compressed bytes.
    Zstd(Vec<u8>),
}

impl Decoder {
    /// The decoder of a `Content-Encoding` value: `None` for identity, an error for codings
    /// the gateway cannot decode (several stacked, or unknown).
    pub fn for_encoding(headers: &HeaderMap) -> Result<Option<Self>, String> {
        let Some(value) = headers.get(http::header::CONTENT_ENCODING) else {
            return Ok(None);
        };
        let value = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
        Ok(Some(match value.as_str() {
            "" | "identity" => return Ok(None),
            "gzip" | "x-gzip" => Self::Gzip(flate2::write::MultiGzDecoder::new(Vec::new())),
            "deflate" => Self::Zlib(flate2::write::ZlibDecoder::new(Vec::new())),
            "br" => Self::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(
                Vec::new(),
                16 << 10,
            ))),
            "zstd" => Self::Zstd(Vec::new()),
            other => {
                return Err(format!(
                    "content encoding `{other}` cannot be decoded for masking"
                ));
            }
        }))
    }

    pub fn push(&mut self, input: &[u8]) -> Result<Vec<u8>, String> {
        let out = match self {
            Self::Gzip(d) => d.write_all(input).map(|()| std::mem::take(d.get_mut())),
            Self::Zlib(d) => d.write_all(input).map(|()| std::mem::take(d.get_mut())),
            Self::Brotli(d) => d.write_all(input).map(|()| std::mem::take(d.get_mut())),
            Self::Zstd(buf) => {
                if buf.len() + input.len() > BODY_LIMIT {
                    return Err(format!(
                        "zstd body over {BODY_LIMIT} bytes cannot be masked"
                    ));
                }
                buf.extend_from_slice(input);
                Ok(Vec::new())
            }
        }
        .map_err(|e| format!("broken compressed body: {e}"))?;
        if out.len() > INFLATE_LIMIT {
            return Err(
                "compressed chunk inflates past 64 MiB: refused as a decompression bomb".into(),
            );
        }
        Ok(out)
    }

    pub fn finish(self) -> Result<Vec<u8>, String> {
        let broken = |e: std::io::Error| format!("broken compressed body: {e}");
        match self {
            Self::Gzip(d) => d.finish().map_err(broken),
            Self::Zlib(d) => d.finish().map_err(broken),
            Self::Brotli(mut d) => {
                d.close().map_err(broken)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Self::Zstd(buf) => {
                let mut decoder = ruzstd::decoding::StreamingDecoder::new(buf.as_slice())
                    .map_err(|e| format!("broken compressed body: {e}"))?;
                let mut out = Vec::new();
                (&mut decoder)
                    .take(INFLATE_LIMIT as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(broken)?;
                if out.len() > INFLATE_LIMIT {
                    return Err(
                        "zstd body inflates past 64 MiB: refused as a decompression bomb".into(),
                    );
                }
                Ok(out)
            }
        }
    }
}

/// Decodes a whole body.
pub fn decode_all(headers: &HeaderMap, body: Bytes) -> Result<(Bytes, bool), String> {
    match Decoder::for_encoding(headers)? {
        None => Ok((body, false)),
        Some(mut decoder) => {
            let mut out = decoder.push(&body)?;
            out.extend(decoder.finish()?);
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
            let (body, decoded) = decode_all(&headers, data.clone()).unwrap();
            assert!(decoded);
            assert_eq!(&body[..], b"mail bob@example.com");
            let truncated = data.slice(..data.len() / 2);
            assert!(
                decode_all(&headers, truncated)
                    .unwrap_err()
                    .contains("broken")
            );
        }
        let (headers, _) = encoded("compress", b"");
        assert!(
            decode_all(&headers, Bytes::new())
                .unwrap_err()
                .contains("compress")
        );
        let (headers, _) = encoded("zstd", b"");
        assert!(decode_all(&headers, Bytes::from_static(b"not zstd")).is_err());
    }

    #[test]
    fn binary_types() {
        assert!(is_binary_type(Some("image/png")));
        assert!(is_binary_type(Some("application/octet-stream; x=1")));
        assert!(!is_binary_type(Some("application/json")));
        assert!(!is_binary_type(None));
    }
}
