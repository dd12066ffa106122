//! `mock-upstream DIR SPEC…`: the loopback servers the TLS/HTTP tests, the demo and the HTTP
//! benchmark talk to. Each SPEC is `KIND@ADDR:PORT`:
//!
//! * `http` — plain HTTP/1.1 (and HTTP/2 with prior knowledge);
//! * `https` — TLS (1.2/1.3, ALPN h2 and http/1.1) with a certificate from the test CA in
//!   `DIR/ca.pem`, valid for `localhost`, `*.example.test` and 127.0.0.0/8 addresses used here;
//! * `https-wrongname` — the test CA, but a certificate for `wrong.invalid` only;
//! * `https-unknownca` — a certificate from a CA nobody trusts (`DIR/other-ca.pem`).
//!
//! Endpoints: `/bytes/N` streams N bytes; `/v1/chat/completions` answers like an
//! OpenAI-compatible API (SSE with `"stream": true`), checking `Authorization` against
//! `MOCK_OPENAI_KEY` when set; a WebSocket upgrade gets a server like the Realtime API of OpenAI
//! (see `realtime`); a request with another `Upgrade` gets `101` and an echo of its bytes;
//! `/api/chat` streams `LEAK` like Ollama (a line of JSON per 3 characters);
//! `…:streamGenerateContent` streams it like Gemini (SSE, 4 characters a chunk, the last
//! chunk with `finishReason`); `/model/ID/converse-stream` and
//! `/model/ID/invoke-with-response-stream` stream it like Amazon Bedrock (AWS event-stream
//! frames; Converse events, or Anthropic's base64 in `chunk` frames); chat completions add
//! token `logprobs` when asked;
//! `/bomb.br` is 1 GiB of zeros as ~1 KiB of brotli; anything else gets a JSON echo (method,
//! path, version, TLS, body length). Every request's headers are appended to
//! `DIR/requests.jsonl`, so tests see what reached the upstream.
//! Prints `ready` once every listener is bound. `DIR/server.pem` + `DIR/server.key` are a
//! certificate from the test CA for the same names, for other servers (the benchmark's nginx).

use std::{
    collections::HashMap,
    convert::Infallible,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use bytes::Bytes;
use gateway_user::mask::eventstream::event_frame;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{Request, Response, body::Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, Infallible>;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn ca(name: &str, dir: &Path, file: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("ca");
    std::fs::write(dir.join(file), cert.pem()).expect("write ca");
    Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf for `names` from `ca`: (certificate DER, PKCS#8 key DER, chain PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str]) -> (CertificateDer<'static>, Vec<u8>, String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*n).try_into().expect("dns name")),
        })
        .collect();
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf");
    (
        cert.der().clone(),
        key.serialize_der(),
        cert.pem(),
        key.serialize_pem(),
    )
}

fn server_config(ca: &Ca, names: &[&str]) -> Arc<rustls::ServerConfig> {
    let (cert, key, _, _) = leaf(ca, names);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert, ca.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .expect("cert");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

struct Server {
    log: Mutex<std::fs::File>,
    tls: bool,
}

async fn serve(
    server: Arc<Server>,
    mut request: Request<hyper::body::Incoming>,
    alpn: Option<String>,
    peer: SocketAddr,
) -> Response<Body> {
    // The client's address tells connections apart (the gateway's pool reuses them).
    let peer = peer.to_string();
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let version = format!("{:?}", request.version());
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let websocket = request
        .headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if let (true, Some(key)) = (websocket, request.headers().get("sec-websocket-key")) {
        // RFC 6455's handshake, then a Realtime-API-like server (see `websocket`).
        let mut accepted = key.as_bytes().to_vec();
        accepted.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &accepted);
        let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        let upgrade = hyper::upgrade::on(&mut request);
        let extensions = headers.get("sec-websocket-extensions").cloned();
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                realtime(TokioIo::new(upgraded), &path, extensions, &server.log).await;
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full(Bytes::new()))
            .expect("response");
    }
    if request.headers().contains_key(hyper::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(full(Bytes::new()))
            .expect("response");
    }
    let body = request
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    {
        let record = serde_json::json!({
            "method": method, "path": path, "version": version, "tls": server.tls,
            "peer": peer, "headers": headers, "body": String::from_utf8_lossy(&body),
        });
        let mut log = server.log.lock().expect("log");
        let _ = writeln!(log, "{record}");
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_stream(total, chunk);
        return Response::builder()
            .header("content-type", "application/octet-stream")
            .body(StreamBody::new(stream).boxed_unsync())
            .expect("response");
    }
    if let Some(n) = path.strip_prefix("/json/") {
        // An API answer of about N bytes: customer records of prose, ids, dates and versions;
        // one record in eight carries an e-mail address (what masking finds).
        // Made once per size: the mock must not be what a benchmark measures.
        static DOCUMENTS: std::sync::LazyLock<Mutex<HashMap<usize, Bytes>>> =
            std::sync::LazyLock::new(Mutex::default);
        let size: usize = n.parse().unwrap_or(0).min(16 << 20);
        let body = DOCUMENTS
            .lock()
            .expect("documents")
            .entry(size)
            .or_insert_with(|| Bytes::from(react_gateway_tests::records::json_document(size)))
            .clone();
        return Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(body).boxed_unsync())
            .expect("response");
    }
    if path == "/bomb.br" {
        // 1 GiB of zeros in about a kilobyte: what the gateway must not inflate whole.
        return Response::builder()
            .header("content-type", "text/plain")
            .header("content-encoding", "br")
            .body(full(react_gateway_tests::bombs::brotli_zeros(64)))
            .expect("response");
    }
    if let Some(kind) = path.strip_prefix("/pii") {
        // Personal data in 7-byte frames, as text, JSON or gzip-compressed text.
        let text = LEAK.repeat(4);
        let (body, content_type, encoding) = match kind {
            ".json" => (
                serde_json::json!({"customer": {"note": text, "id": 42}})
                    .to_string()
                    .into_bytes(),
                "application/json",
                None,
            ),
            ".gz" => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let _ = gz.write_all(text.as_bytes());
                (gz.finish().unwrap_or_default(), "text/plain", Some("gzip"))
            }
            _ => (text.into_bytes(), "text/plain; charset=utf-8", None),
        };
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = body
            .chunks(7)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let mut response = Response::builder().header("content-type", content_type);
        if let Some(encoding) = encoding {
            response = response.header("content-encoding", encoding);
        }
        return response
            .body(StreamBody::new(Iter(frames.into_iter())).boxed_unsync())
            .expect("response");
    }
    if path == "/api/chat" {
        // Ollama's native streaming answer: a line of JSON per 3 characters, each in its own
        // frame, then a last line with `"done": true`.
        let chars: Vec<char> = LEAK.trim_end().chars().collect();
        let mut lines: Vec<String> = chars
            .chunks(3)
            .map(|piece| {
                let piece: String = piece.iter().collect();
                serde_json::json!({"model": "mock", "created_at": "2026-12-07T10:00:00Z",
                    "message": {"role": "assistant", "content": piece}, "done": false})
                .to_string()
            })
            .collect();
        lines.push(
            serde_json::json!({"model": "mock", "created_at": "2026-12-07T10:00:01Z",
                "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop"})
            .to_string(),
        );
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = lines
            .into_iter()
            .map(|l| Ok(Frame::data(Bytes::from(l + "\n"))))
            .collect();
        return Response::builder()
            .header("content-type", "application/x-ndjson")
            .body(StreamBody::new(Iter(frames.into_iter())).boxed_unsync())
            .expect("response");
    }
    if path.starts_with("/model/") && path.ends_with("/converse-stream") {
        // Amazon Bedrock's `ConverseStream`: AWS event-stream frames, `LEAK` 5 characters a
        // `contentBlockDelta`, each frame in its own body frame.
        let mut frames = vec![event_frame(
            "messageStart",
            br#"{"role":"assistant","p":"abcd"}"#,
        )];
        let chars: Vec<char> = LEAK.chars().collect();
        for piece in chars.chunks(5) {
            let piece: String = piece.iter().collect();
            let v =
                serde_json::json!({"contentBlockIndex": 0, "delta": {"text": piece}, "p": "xy"});
            frames.push(event_frame("contentBlockDelta", v.to_string().as_bytes()));
        }
        frames.push(event_frame(
            "contentBlockStop",
            br#"{"contentBlockIndex":0,"p":"q"}"#,
        ));
        frames.push(event_frame(
            "messageStop",
            br#"{"stopReason":"end_turn","p":"r"}"#,
        ));
        frames.push(event_frame(
            "metadata",
            br#"{"usage":{"inputTokens":1,"outputTokens":2,"totalTokens":3},"metrics":{"latencyMs":9},"p":"s"}"#,
        ));
        return event_stream(frames);
    }
    if path.starts_with("/model/") && path.ends_with("/invoke-with-response-stream") {
        // `InvokeModelWithResponseStream` of an Anthropic model: its events, base64 in
        // `chunk` frames.
        let chunk = |event: serde_json::Value| {
            let bytes = base64::engine::general_purpose::STANDARD.encode(event.to_string());
            event_frame(
                "chunk",
                serde_json::json!({"bytes": bytes}).to_string().as_bytes(),
            )
        };
        let mut frames = vec![chunk(serde_json::json!({"type": "message_start",
            "message": {"id": "msg_mock", "role": "assistant", "content": []}}))];
        let chars: Vec<char> = LEAK.chars().collect();
        for piece in chars.chunks(5) {
            let piece: String = piece.iter().collect();
            frames.push(chunk(
                serde_json::json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece}}),
            ));
        }
        frames.push(chunk(
            serde_json::json!({"type": "content_block_stop", "index": 0}),
        ));
        frames.push(chunk(serde_json::json!({"type": "message_stop"})));
        return event_stream(frames);
    }
    if path.ends_with(":streamGenerateContent") {
        // Gemini's stream (`?alt=sse`): a thought, then `LEAK` 4 characters a chunk, each
        // in its own frame; the last chunk carries the end of the card number with
        // `finishReason`, as Gemini sends its last text.
        let chunk = |parts: serde_json::Value, finish: bool| {
            let mut v = serde_json::json!({"candidates": [{"content": {"parts": parts,
                "role": "model"}, "index": 0}], "modelVersion": "mock"});
            if finish {
                v["candidates"][0]["finishReason"] = "STOP".into();
                v["usageMetadata"] =
                    serde_json::json!({"promptTokenCount": 1, "totalTokenCount": 2});
            }
            format!("data: {v}\r\n\r\n")
        };
        let chars: Vec<char> = LEAK.chars().collect();
        let (text, last) = chars.split_at(chars.len() - 6);
        let mut events = vec![chunk(
            serde_json::json!([{"text": "The user wants carol.jones@example.org", "thought": true}]),
            false,
        )];
        for piece in text.chunks(4) {
            let piece: String = piece.iter().collect();
            events.push(chunk(serde_json::json!([{"text": piece}]), false));
        }
        let last: String = last.iter().collect();
        events.push(chunk(serde_json::json!([{"text": last}]), true));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = events
            .into_iter()
            .map(|e| Ok(Frame::data(Bytes::from(e))))
            .collect();
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(StreamBody::new(Iter(frames.into_iter())).boxed_unsync())
            .expect("response");
    }
    if path == "/v1/chat/completions" {
        if let Ok(key) = std::env::var("MOCK_OPENAI_KEY")
            && auth.as_deref() != Some(&format!("Bearer {key}"))
        {
            return Response::builder()
                .status(401)
                .header("content-type", "application/json")
                .body(full(r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#))
                .expect("response");
        }
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let prompt = request["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string();
        let mut answer = format!("You said: {prompt}");
        if prompt.contains("leak") {
            answer.push_str(&format!(" Also {LEAK}"));
        }
        if request["stream"] == true {
            // Pieces of 5 characters: values are split over several events.
            let mut events = String::new();
            let chars: Vec<char> = answer.chars().collect();
            for piece in chars.chunks(5) {
                let piece: String = piece.iter().collect();
                let mut chunk = serde_json::json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "mock",
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
                if request["logprobs"] == true {
                    // One token per piece, as a model's log probabilities repeat its text.
                    chunk["choices"][0]["logprobs"] = serde_json::json!({"content": [{"token": piece,
                        "logprob": -0.1, "bytes": piece.as_bytes(), "top_logprobs": []}]});
                }
                events.push_str(&format!("data: {chunk}\n\n"));
            }
            let end = serde_json::json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "mock",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
            events.push_str(&format!("data: {end}\n\ndata: [DONE]\n\n"));
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(full(events))
                .expect("response");
        }
        let completion = serde_json::json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": "mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(full(completion.to_string()))
            .expect("response");
    }
    let echo = serde_json::json!({
        "method": method, "path": path, "version": version, "tls": server.tls, "alpn": alpn,
        "peer": peer, "body_len": body.len(), "authorized": auth.is_some(),
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(full(echo.to_string()))
        .expect("response")
}

/// A WebSocket server like the Realtime API of OpenAI: each text message received is logged
/// (`path`, `ws_message`, and the extensions offered); `{"type": "response.create"}` is
/// answered with `LEAK` in `response.output_text.delta` events of 5 characters, each in its
/// own frame, then `.done` events; any other message is echoed back in
/// `{"type": "echo", "text": …}`. A close is answered with a close.
async fn realtime<S>(
    io: S,
    path: &str,
    extensions: Option<serde_json::Value>,
    log: &Mutex<std::fs::File>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use gateway_user::http::websocket::{CLOSE, TEXT, encode, parse};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut r, mut w) = tokio::io::split(io);
    let mut buf = Vec::new();
    loop {
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Ok(Some(frame)) = parse(&buf) {
            buf.drain(..frame.len);
            let mut out = Vec::new();
            if frame.opcode == CLOSE {
                let _ = w.write_all(&encode(CLOSE, &frame.payload, None)).await;
                return;
            }
            if frame.opcode != TEXT {
                continue;
            }
            let text = String::from_utf8_lossy(&frame.payload).into_owned();
            {
                let record = serde_json::json!({"path": path, "ws_message": text,
                    "extensions": extensions});
                let _ = writeln!(log.lock().expect("log"), "{record}");
            }
            let request: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if request["type"] == "response.create" {
                let chars: Vec<char> = LEAK.chars().collect();
                for piece in chars.chunks(5) {
                    let piece: String = piece.iter().collect();
                    let event = serde_json::json!({"type": "response.output_text.delta",
                        "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": piece});
                    out.push(encode(TEXT, event.to_string().as_bytes(), None));
                }
                for event in [
                    serde_json::json!({"type": "response.output_text.done", "item_id": "item_1",
                        "output_index": 0, "content_index": 0, "text": LEAK}),
                    serde_json::json!({"type": "response.done", "response": {"status": "completed"}}),
                ] {
                    out.push(encode(TEXT, event.to_string().as_bytes(), None));
                }
            } else {
                let echo = serde_json::json!({"type": "echo", "text": text});
                out.push(encode(TEXT, echo.to_string().as_bytes(), None));
            }
            for frame in out {
                if w.write_all(&frame).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// An AWS event stream (Bedrock) of `frames`, each in its own body frame.
fn event_stream(frames: Vec<Vec<u8>>) -> Response<Body> {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = frames
        .into_iter()
        .map(|f| Ok(Frame::data(Bytes::from(f))))
        .collect();
    Response::builder()
        .header("content-type", "application/vnd.amazon.eventstream")
        .body(StreamBody::new(Iter(frames.into_iter())).boxed_unsync())
        .expect("response")
}

/// Personal data the mock volunteers (`/pii*`, and chat prompts that say "leak").
const LEAK: &str = "Reach carol.jones@example.org or +1 415 555 0134, card 5555 5555 5555 4444.\n";

/// Frames from an iterator, as a stream.
struct Iter<I>(I);

impl<I: Iterator<Item = Result<Frame<Bytes>, Infallible>> + Unpin> futures_core::Stream
    for Iter<I>
{
    type Item = Result<Frame<Bytes>, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// `total` bytes in `chunk`-sized frames, produced as the client reads them.
fn futures_stream(
    total: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    struct Chunks {
        left: u64,
        chunk: Bytes,
    }
    impl futures_core::Stream for Chunks {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            let n = self.left.min(self.chunk.len() as u64);
            self.left -= n;
            let data = self.chunk.slice(..usize::try_from(n).unwrap_or(0));
            std::task::Poll::Ready(Some(Ok(Frame::data(data))))
        }
    }
    Chunks { left: total, chunk }
}

async fn connection<S>(server: Arc<Server>, io: S, alpn: Option<String>, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let (server, alpn) = (Arc::clone(&server), alpn.clone());
        async move { Ok::<_, Infallible>(serve(server, request, alpn, peer).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .expect("usage: mock-upstream DIR KIND@ADDR:PORT…"),
    );
    std::fs::create_dir_all(&dir).expect("dir");
    let test_ca = ca("react-gateway test upstream CA", &dir, "ca.pem");
    let other_ca = ca("nobody trusts this CA", &dir, "other-ca.pem");
    let names = [
        "localhost",
        "*.example.test",
        "example.test",
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "::1",
    ];
    let good = server_config(&test_ca, &names);
    let wrong = server_config(&test_ca, &["wrong.invalid"]);
    let unknown = server_config(&other_ca, &names);
    // A certificate and key from the test CA for other servers (the benchmark's nginx).
    let (_, _, chain, key) = leaf(&test_ca, &names);
    std::fs::write(dir.join("server.pem"), chain).expect("server.pem");
    std::fs::write(dir.join("server.key"), key).expect("server.key");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("requests.jsonl"))
        .expect("log");
    let log = Arc::new(Mutex::new(log));
    for spec in &args[1..] {
        let (kind, addr) = spec.split_once('@').expect("KIND@ADDR:PORT");
        let addr: SocketAddr = addr.parse().expect("address");
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let tls = match kind {
            "http" => None,
            "https" => Some(Arc::clone(&good)),
            "https-wrongname" => Some(Arc::clone(&wrong)),
            "https-unknownca" => Some(Arc::clone(&unknown)),
            other => panic!("unknown kind {other}"),
        };
        let server = Arc::new(Server {
            log: Mutex::new(log.lock().expect("log").try_clone().expect("clone")),
            tls: tls.is_some(),
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let server = Arc::clone(&server);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => connection(server, stream, None, peer).await,
                        Some(config) => {
                            if let Ok(stream) =
                                tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                            {
                                let alpn = stream
                                    .get_ref()
                                    .1
                                    .alpn_protocol()
                                    .map(|p| String::from_utf8_lossy(p).into_owned());
                                connection(server, stream, alpn, peer).await;
                            }
                        }
                    }
                });
            }
        });
    }
    println!("ready");
    std::future::pending::<()>().await;
}
