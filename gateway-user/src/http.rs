//! The HTTP data path (hyper): HTTP/1.1 (keep-alive, chunked, upgrades) and HTTP/2 from the
//! agent, relayed to the upstream over one connection at a time per session, plain or TLS,
//! taken from the daemon's pool of idle upstream connections when one fits ([`pool`]).
//!
//! Each request is resolved to its target (by `Host` when the connection alone did not say),
//! evaluated against the policy (`block` answers 403 with a JSON body and never reaches the
//! upstream), gets the target's credential header set by the gateway, and is recorded as an
//! event with secret-bearing headers redacted. Bodies stream through with hyper's bounded
//! buffers; a request matching `body` conditions or mask rules is read first, up to
//! [`INSPECT_LIMIT`] (past that it is refused with 413, never passed unchecked), and masked
//! whole; responses are masked as they stream ([`masking`]).
//! Upgrades are relayed after the `101`, byte for byte, except a WebSocket to a target with
//! mask rules, whose text messages are masked both ways ([`websocket`]); the session lasts
//! until the upgraded connection ends.

pub mod ahead;
pub mod masking;
pub mod pool;
pub mod tap;
pub mod websocket;

use std::{
    borrow::Cow,
    collections::BTreeSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    mask::{MaskContext, stream::Step},
    policy::{
        Credentials, IdSet, Operation, Policy, RecordLevel, TemplatePart, Verdict, template_parts,
    },
    proxy::ProxyContext,
    session::{JsonObject, Record, TlsLeg},
    store::Write,
    tls::LegPolicy,
};

/// Largest request body read for `body` conditions or masking (past it: 413).
pub const INSPECT_LIMIT: usize = masking::BODY_LIMIT;
/// How long a client may take to send a request's headers (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON error answered by the gateway itself.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Writes a session's events that are ready (none of their predecessors waits for a body).
async fn write_ready(ctx: &ProxyContext, session: &str, queue: &tap::Pending) {
    let ready = crate::lock(queue).ready();
    for event in ready {
        ctx.recorder
            .write(Write::Event {
                session: session.to_string(),
                event,
            })
            .await;
    }
}

/// The recording of a WebSocket's text messages, as they crossed (after masking).
struct WsMessages {
    ctx: Arc<ProxyContext>,
    session: String,
    queue: tap::Pending,
    /// Restored placeholders are put back before a message towards the agent is recorded.
    mask: Arc<Mutex<MaskContext>>,
    limit: usize,
    /// `record = "full"`: the text (up to `limit`); else the size only.
    full: bool,
}

impl WsMessages {
    /// Records each message received on `rx`, until the relay ends.
    async fn record(self, mut rx: tokio::sync::mpsc::Receiver<websocket::Sent>) {
        while let Some((up, text)) = rx.recv().await {
            let mut data = JsonObject::new();
            data.field("direction", if up { "request" } else { "response" });
            data.field("size", &text.len());
            if self.full {
                let text = {
                    let mask = crate::lock(&self.mask);
                    if !up && mask.has_tokens() {
                        mask.retokenize(&text)
                    } else {
                        text
                    }
                };
                let kept = &text[..text.len().min(self.limit)];
                let kept = match std::str::from_utf8(kept) {
                    Ok(kept) => kept,
                    // Cut inside a character at the limit: the valid prefix.
                    Err(e) => std::str::from_utf8(&kept[..e.valid_up_to()]).unwrap_or_default(),
                };
                data.field("text", kept);
                if kept.len() < text.len() {
                    data.field("truncated", &true);
                }
            }
            crate::lock(&self.queue).push(Record::encoded("ws_message", data.finish()));
            write_ready(&self.ctx, &self.session, &self.queue).await;
        }
    }
}

/// Whether a masking step puts tokens in the session's vault (then what comes back is
/// restored).
fn tokenizes(step: &Step) -> bool {
    matches!(step, Step::Mask(masker) if masker.strategy == crate::mask::Strategy::Tokenize)
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(connection) = headers.get(header::CONNECTION).cloned()
        && let Ok(list) = connection.to_str()
    {
        for name in list.split(',') {
            let name = name.trim();
            if !(keep_upgrade && name.eq_ignore_ascii_case("upgrade")) {
                headers.remove(name);
            }
        }
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "transfer-encoding",
        "te",
        "trailer",
    ] {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Whether a header's value is a secret and is recorded as `[REDACTED]`: the credential
/// headers, names that contain `api-key`, `apikey`, `token`, `secret` or `password` or end
/// in `-key` (any case), and the target's credential header `extra`.
///
/// Called for every header of every recorded message, so it reads the name's bytes once
/// instead of searching it for each word (five substring searches were 1% of the daemon's
/// CPU at `record = "full"`).
pub fn is_secret_header(name: &str, extra: Option<&str>) -> bool {
    const WHOLE: [&[u8]; 4] = [
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"set-cookie",
    ];
    let name = name.as_bytes();
    let word_at = |i: usize| {
        let rest = &name[i..];
        let is =
            |word: &[u8]| rest.len() >= word.len() && rest[..word.len()].eq_ignore_ascii_case(word);
        match rest[0].to_ascii_lowercase() {
            b'a' => is(b"api-key") || is(b"apikey"),
            b't' => is(b"token"),
            b's' => is(b"secret"),
            b'p' => is(b"password"),
            _ => false,
        }
    };
    WHOLE.iter().any(|w| name.eq_ignore_ascii_case(w))
        || (0..name.len()).any(word_at)
        || (name.len() >= 4 && name[name.len() - 4..].eq_ignore_ascii_case(b"-key"))
        || extra.is_some_and(|e| e.as_bytes().eq_ignore_ascii_case(name))
}

/// An HTTP version as recorded: its `Debug` form (`HTTP/1.1`), without formatting it.
fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

/// Writes `"headers":{…}` as recorded: secrets (and the credential header `extra`) as
/// `[REDACTED]`, other values with what `masks` find redacted (they pass unchanged; only the
/// record is masked). A header sent more than once is one field, its values joined by `, `.
fn recorded_headers(
    data: &mut JsonObject,
    headers: &HeaderMap,
    extra: Option<&str>,
    masks: &[Arc<crate::mask::Masker>],
) {
    let shown = |value| redacted(String::from_utf8_lossy(HeaderValue::as_bytes(value)), masks);
    data.object("headers", |data| {
        for name in headers.keys() {
            data.key("", name.as_str());
            if is_secret_header(name.as_str(), extra) {
                data.value("[REDACTED]");
                continue;
            }
            let mut values = headers.get_all(name).iter();
            let first = values.next().map(shown).unwrap_or_default();
            match values.next() {
                None => data.value(&*first),
                Some(second) => {
                    let mut joined = first.into_owned();
                    for value in std::iter::once(second).chain(values) {
                        joined.push_str(", ");
                        joined.push_str(&shown(value));
                    }
                    data.value(&joined)
                }
            };
        }
    });
}

/// `text` with what `masks` find redacted, for the record.
fn redacted<'a>(text: impl Into<Cow<'a, str>>, masks: &[Arc<crate::mask::Masker>]) -> Cow<'a, str> {
    let mut text = text.into();
    for masker in masks {
        if let Cow::Owned(masked) = masker.redact(&text) {
            text = Cow::Owned(masked);
        }
    }
    text
}

/// Resolves a credential template (`Bearer ${env:KEY}`). Errors name the reference, never a
/// value.
pub fn resolve_credentials(credentials: &Credentials) -> Result<HeaderValue, String> {
    let mut out = String::new();
    for part in template_parts(&credentials.value)? {
        match part {
            TemplatePart::Literal(text) => out.push_str(text),
            TemplatePart::Env(name) => out
                .push_str(&std::env::var(name).map_err(|_| {
                    format!("environment variable {name} is not set in the daemon")
                })?),
            TemplatePart::File(path) => out.push_str(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read credentials file {path}: {}", e.kind()))?
                    .trim_end_matches(['\r', '\n']),
            ),
        }
    }
    let mut value = HeaderValue::from_str(&out)
        .map_err(|_| "the credential contains characters not allowed in a header".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

/// How the upstream leg is secured.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub leg: LegPolicy,
    /// Verified name (SNI); `None` = the `Host` of the request, else the address.
    pub server_name: Option<String>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Self::H1(s) => s.is_closed(),
            Self::H2(s) => s.is_closed(),
        }
    }
}

/// Which sessions may share an upstream connection: the same address, reached with the same
/// TLS name and client configuration (trust roots, versions, suites, ALPN), or in clear with
/// the same ALPN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    addr: SocketAddr,
    /// Server name and the address of the `ClientConfig` it was verified with (the entry
    /// holds that `Arc`, so the address is not reused while the key lives).
    tls: Option<(String, usize)>,
    alpn: Vec<Vec<u8>>,
}

/// An upstream connection waiting in the pool, with the TLS it negotiated.
pub struct Idle {
    sender: Sender,
    negotiated: Option<TlsLeg>,
    _config: Option<Arc<rustls::ClientConfig>>,
}

impl pool::Reusable for Idle {
    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
    fn is_ready(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }
}

/// The daemon's idle upstream connections (see [`pool`]).
pub type UpstreamPool = pool::Pool<PoolKey, Idle>;
/// Idle connections kept per upstream.
pub const POOL_PER_UPSTREAM: usize = 32;
/// How long an idle upstream connection is kept (below the 60 s or more of common servers'
/// keep-alive timeouts, so the gateway is the one to let go).
pub const POOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The session's connection to its upstream, and where it goes back when the session ends.
struct Live {
    sender: Sender,
    key: PoolKey,
    config: Option<Arc<rustls::ClientConfig>>,
    pool: Arc<UpstreamPool>,
    /// Taken from the pool and not used yet: if the upstream closed it while it was idle,
    /// the request is sent again on a new connection.
    reused: bool,
}

/// How a new upstream connection is secured: the name verified and the configuration.
struct Dial {
    key: PoolKey,
    tls: Option<(String, Arc<rustls::ClientConfig>)>,
}

/// The upstream of a session: one connection at a time, taken from the daemon's pool or
/// dialled, re-dialled when the upstream closes it, and returned to the pool at the end.
pub struct Upstream {
    pub addr: SocketAddr,
    pub tls: Option<UpstreamTls>,
    /// ALPN offered upstream (the client's, filtered to h2 / http/1.1).
    pub alpn: Vec<Vec<u8>>,
    live: tokio::sync::Mutex<Option<Live>>,
    /// A TCP connection already made to `addr` (while sniffing), used by the first connect.
    preconnected: Mutex<Option<tokio::net::TcpStream>>,
    /// Negotiated TLS of the upstream leg (the last connection's).
    pub negotiated: Mutex<Option<TlsLeg>>,
}

impl Upstream {
    pub fn new(addr: SocketAddr, tls: Option<UpstreamTls>, alpn: Vec<Vec<u8>>) -> Self {
        Self {
            addr,
            tls,
            alpn,
            live: tokio::sync::Mutex::new(None),
            preconnected: Mutex::new(None),
            negotiated: Mutex::new(None),
        }
    }

    /// Hands over a connection already made to `addr`.
    pub fn preconnect(&self, tcp: Option<tokio::net::TcpStream>) {
        *crate::lock(&self.preconnected) = tcp;
    }

    /// Makes sure the session has an upstream connection (from the pool or dialled) and
    /// returns whether it speaks HTTP/2. Errors are what the agent and the record are told.
    pub async fn open(&self, ctx: &ProxyContext) -> Result<bool, String> {
        let mut live = self.live.lock().await;
        if live.as_ref().is_none_or(|l| l.sender.is_closed()) {
            *live = Some(self.dial(ctx, None, true).await?);
        }
        Ok(matches!(
            live.as_ref().map(|l| &l.sender),
            Some(Sender::H2(_))
        ))
    }

    /// What a connection for a request to `host` needs: its pool key, TLS name and config.
    fn plan(&self, ctx: &ProxyContext, host: Option<&str>) -> Result<Dial, String> {
        let Some(tls) = &self.tls else {
            return Ok(Dial {
                key: PoolKey {
                    addr: self.addr,
                    tls: None,
                    alpn: self.alpn.clone(),
                },
                tls: None,
            });
        };
        let name = tls
            .server_name
            .clone()
            .or_else(|| host.map(str::to_string))
            .unwrap_or_else(|| self.addr.ip().to_string());
        let config = ctx
            .tls
            .client(&tls.leg, &self.alpn)
            .map_err(|e| e.to_string())?;
        Ok(Dial {
            key: PoolKey {
                addr: self.addr,
                tls: Some((name.clone(), Arc::as_ptr(&config) as usize)),
                alpn: self.alpn.clone(),
            },
            tls: Some((name, config)),
        })
    }

    /// A connection for this session: the preconnected one if sniffing made one, else an
    /// idle one from the pool (when `reuse`), else a new one.
    async fn dial(
        &self,
        ctx: &ProxyContext,
        host: Option<&str>,
        reuse: bool,
    ) -> Result<Live, String> {
        let plan = self.plan(ctx, host)?;
        let early = crate::lock(&self.preconnected).take();
        let config = plan.tls.as_ref().map(|(_, c)| Arc::clone(c));
        if reuse
            && early.is_none()
            && let Some(idle) = ctx.upstreams.take(&plan.key)
        {
            ctx.stats.upstream_reused.fetch_add(1, Ordering::Relaxed);
            crate::lock(&self.negotiated).clone_from(&idle.negotiated);
            return Ok(Live {
                sender: idle.sender,
                key: plan.key,
                config,
                pool: Arc::clone(&ctx.upstreams),
                reused: true,
            });
        }
        let (io, h2) = self.connect(ctx, early, plan.tls).await?;
        Ok(Live {
            sender: handshake(io, h2).await?,
            key: plan.key,
            config,
            pool: Arc::clone(&ctx.upstreams),
            reused: false,
        })
    }

    /// Connects (TCP, then TLS when configured) and returns the stream with whether it speaks
    /// HTTP/2.
    async fn connect(
        &self,
        ctx: &ProxyContext,
        early: Option<tokio::net::TcpStream>,
        tls: Option<(String, Arc<rustls::ClientConfig>)>,
    ) -> Result<(Box<dyn Io>, bool), String> {
        let tcp = match early {
            Some(tcp) => tcp,
            None => crate::proxy::connect_upstream(self.addr, ctx.connect_timeout)
                .await
                .map_err(|e| format!("upstream {} unreachable: {e}", self.addr))?,
        };
        let Some((name, config)) = tls else {
            let h2 = self.alpn.first().is_some_and(|p| p == b"h2");
            return Ok((Box::new(tcp), h2));
        };
        let server_name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|_| format!("`{name}` is not a valid TLS server name"))?;
        let stream = tokio::time::timeout(
            ctx.connect_timeout,
            tokio_rustls::TlsConnector::from(config).connect(server_name, tcp),
        )
        .await
        .map_err(|_| format!("upstream TLS handshake with {name} timed out"))?
        .map_err(|e| format!("upstream TLS with {name} ({}) failed: {e}", self.addr))?;
        let (_, conn) = stream.get_ref();
        *crate::lock(&self.negotiated) = Some(crate::tls::config::negotiated(conn));
        let h2 = conn.alpn_protocol() == Some(b"h2");
        Ok((Box::new(stream), h2))
    }

    async fn send(
        &self,
        ctx: &ProxyContext,
        host: Option<&str>,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, String> {
        let error = |e: hyper::Error| format!("upstream {} failed: {e}", self.addr);
        loop {
            let mut guard = self.live.lock().await;
            if guard.as_ref().is_none_or(|l| l.sender.is_closed()) {
                *guard = Some(self.dial(ctx, host, true).await?);
            }
            let Some(live) = guard.as_mut() else {
                return Err("no upstream connection".into());
            };
            let retry = std::mem::replace(&mut live.reused, false);
            request = match live.sender {
                Sender::H2(_) => to_h2(request, self, host),
                Sender::H1(_) => to_h1(request),
            };
            let sent = match &mut live.sender {
                Sender::H1(sender) => {
                    if let Err(e) = sender.ready().await {
                        if retry {
                            // Closed while it was idle in the pool: dial a new one.
                            *guard = Some(self.dial(ctx, host, false).await?);
                            continue;
                        }
                        return Err(error(e));
                    }
                    let response = sender.try_send_request(request);
                    drop(guard);
                    response.await
                }
                Sender::H2(sender) => {
                    let mut sender = sender.clone();
                    drop(guard);
                    sender.try_send_request(request).await
                }
            };
            match sent {
                Ok(response) => return Ok(response),
                Err(mut failed) => match failed.take_message() {
                    // Never written: the idle connection was closed under it. Once more on a
                    // new connection (the closed one is not taken again).
                    Some(unsent) if retry => {
                        tracing::debug!(upstream = %self.addr, error = %failed.error(), "pooled upstream connection closed; dialling a new one");
                        request = unsent;
                        let mut guard = self.live.lock().await;
                        *guard = Some(self.dial(ctx, host, false).await?);
                    }
                    _ => return Err(error(failed.into_error())),
                },
            }
        }
    }
}

impl Drop for Upstream {
    /// The session is over: its connection waits in the pool for the next one, if it can
    /// take another request (an upgraded or half-read connection is closed instead).
    fn drop(&mut self) {
        if let Some(live) = self.live.get_mut().take() {
            let negotiated = crate::lock(&self.negotiated).clone();
            live.pool.put(
                live.key,
                Idle {
                    sender: live.sender,
                    negotiated,
                    _config: live.config,
                },
            );
        }
    }
}

/// What hyper needs of a stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

async fn handshake(io: Box<dyn Io>, h2: bool) -> Result<Sender, String> {
    let io = TokioIo::new(io);
    if h2 {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| format!("upstream HTTP/2 handshake failed: {e}"))?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| format!("upstream HTTP/1.1 handshake failed: {e}"))?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(Sender::H1(sender))
    }
}

/// HTTP/1.1 upstream: origin-form target and a `Host` header.
fn to_h1(mut request: Request<Body>) -> Request<Body> {
    if !request.headers().contains_key(header::HOST)
        && let Some(authority) = request.uri().authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, value);
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_string();
    if let Ok(uri) = path.parse() {
        *request.uri_mut() = uri;
    }
    *request.version_mut() = http::Version::HTTP_11;
    request
}

/// HTTP/2 upstream: absolute URI (scheme and authority), no `Host`.
fn to_h2(mut request: Request<Body>, upstream: &Upstream, host: Option<&str>) -> Request<Body> {
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .or_else(|| host.map(str::to_string))
        .unwrap_or_else(|| upstream.addr.to_string());
    let scheme = if upstream.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_string();
    if let Ok(uri) = format!("{scheme}://{authority}{path}").parse() {
        *request.uri_mut() = uri;
    }
    request.headers_mut().remove(header::HOST);
    *request.version_mut() = http::Version::HTTP_2;
    request
}

/// The host a request is for (`:authority` or `Host`), without port, lower case.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    let raw = request
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let host = request.headers().get(header::HOST)?.to_str().ok()?;
            Some(
                host.parse::<http::uri::Authority>()
                    .map_or_else(|_| host.to_string(), |a| a.host().to_string()),
            )
        })?;
    let host = raw.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// A request body: still streaming from the agent, or read whole.
enum Pending {
    Streaming(Incoming),
    Read(Bytes),
}

impl Pending {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Streaming(_) => &[],
            Self::Read(bytes) => bytes,
        }
    }

    fn into_body(self) -> Body {
        match self {
            Self::Streaming(incoming) => incoming.map_err(BoxError::from).boxed_unsync(),
            Self::Read(bytes) => full(bytes),
        }
    }
}

fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Cuts `Accept-Encoding` to the codings the gateway decodes as they stream (an upstream
/// then answers in one of them or in none).
fn keep_decodable_codings(headers: &mut HeaderMap) {
    let Some(value) = header_str(headers, header::ACCEPT_ENCODING) else {
        return;
    };
    let kept: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|c| {
            let name = c
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            name == "identity" || masking::STREAMED_CODINGS.contains(&name.as_str())
        })
        .collect();
    if kept.is_empty() {
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    } else if let Ok(value) = HeaderValue::from_str(&kept.join(", ")) {
        headers.insert(header::ACCEPT_ENCODING, value);
    }
}

/// The session's binding to a target and upstream, fixed by its first request (or by the TLS
/// handshake). A later request for another target is refused with 421.
pub struct Binding {
    /// The agent's original destination (the upstream may listen elsewhere: `originate`).
    pub destination: SocketAddr,
    pub target: Option<usize>,
    pub upstream: Arc<Upstream>,
    /// Why every request fails (e.g. the upstream certificate was refused).
    pub broken: Option<String>,
}

/// Why a session could not be bound: the status answered, the reason, the target (if any).
pub type Refused = (StatusCode, String, Option<usize>);

/// How a plain-HTTP session finds its binding from its first request.
pub type Binder = Box<dyn Fn(Option<&str>) -> Result<Binding, Refused> + Send + Sync>;

/// What one HTTP session did, for its record.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rules: BTreeSet<String>,
    pub blocked: bool,
    /// A held request was denied (by a person, or by its rule's timeout).
    pub approval_denied: bool,
    pub denied: bool,
    pub errors: Vec<String>,
    pub host: Option<String>,
    /// The target of a session refused before it was bound.
    pub refused_target: Option<usize>,
}

/// One HTTP session between an agent and its upstream.
pub struct HttpSession {
    pub ctx: Arc<ProxyContext>,
    pub policy: Arc<Policy>,
    pub ids: IdSet,
    pub session_id: String,
    /// Who called, as the kernel attested it (shown with a request held for approval).
    caller: crate::session::Identity,
    binding: tokio::sync::OnceCell<Binding>,
    binder: Option<Binder>,
    pub outcome: Mutex<Outcome>,
    credential: Mutex<Option<(usize, HeaderValue)>>,
    /// Counts, notes and the tokenize vault of this session (never recorded raw).
    pub mask: Arc<Mutex<MaskContext>>,
    /// Errors met while streaming a masked response body.
    pub body_errors: Arc<Mutex<Vec<String>>>,
    /// The session's events waiting to be written in order (a message waits for its body).
    queue: tap::Pending,
    /// The record level, fixed once the session is bound to its target.
    record: std::sync::OnceLock<RecordLevel>,
    /// The maskers of recorded request lines and headers (requests, responses), fixed once
    /// the session is bound to its target.
    metadata_masks: std::sync::OnceLock<[Vec<Arc<crate::mask::Masker>>; 2]>,
    /// The relay of an upgraded connection (a WebSocket): the session lasts until it ends.
    upgraded: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HttpSession {
    pub fn new(
        ctx: Arc<ProxyContext>,
        policy: Arc<Policy>,
        ids: IdSet,
        session: &crate::session::Session,
        binding: Option<Binding>,
        binder: Option<Binder>,
    ) -> Self {
        let cell = tokio::sync::OnceCell::new();
        if let Some(binding) = binding {
            let _ = cell.set(binding);
        }
        Self {
            policy,
            ids,
            session_id: session.id.clone(),
            caller: session.identity.clone(),
            binding: cell,
            binder,
            mask: Arc::new(Mutex::new(MaskContext::new(Arc::clone(&ctx.mask_key)))),
            body_errors: Arc::default(),
            queue: tap::Pending::default(),
            record: std::sync::OnceLock::new(),
            metadata_masks: std::sync::OnceLock::new(),
            outcome: Mutex::new(Outcome::default()),
            credential: Mutex::new(None),
            upgraded: Mutex::new(None),
            ctx,
        }
    }

    pub fn binding(&self) -> Option<&Binding> {
        self.binding.get()
    }

    /// Holds the request that `approve` rule `rule` matched until a person decides (or the
    /// rule's timeout denies it) and records the decision. `Err`: the reason it was denied.
    async fn approval(
        &self,
        rule: usize,
        target: Option<&str>,
        method: &str,
        path: &str,
    ) -> Result<(), String> {
        let (mut event, decided) = crate::approval::ask(
            &self.ctx.approvals,
            &self.policy.rules[rule],
            &self.session_id,
            target,
            &self.caller,
            format!("{method} {path}"),
        )
        .await;
        event["method"] = method.into();
        event["path"] = path.into();
        self.event("approval", event).await;
        if decided.is_err() {
            self.lock().approval_denied = true;
        }
        decided
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outcome> {
        crate::lock(&self.outcome)
    }

    /// What masks the record of a request's (or a response's) line and headers: the mask
    /// rules of the bound target in that direction (see `Policy::metadata_masks`).
    fn metadata_masks(&self, request: bool) -> &[Arc<crate::mask::Masker>] {
        let Some(binding) = self.binding() else {
            return &[]; // no target, no rules
        };
        let masks = self.metadata_masks.get_or_init(|| {
            [true, false].map(|request| {
                self.policy
                    .metadata_masks(self.ids, binding.target, request)
            })
        });
        &masks[usize::from(!request)]
    }

    /// How much of this session is recorded (`[defaults] record`, raised by `record` rules of
    /// its target).
    fn record_level(&self) -> RecordLevel {
        match self.binding() {
            Some(binding) => *self
                .record
                .get_or_init(|| self.policy.record_level(self.ids, binding.target)),
            None => self.policy.record_level(self.ids, None),
        }
    }

    pub async fn event(&self, kind: &'static str, data: serde_json::Value) {
        if self.record_level() != RecordLevel::Off {
            crate::lock(&self.queue).push(Record::new(kind, &data));
        }
        self.flush().await;
    }

    /// Records a message (`http_request`, `http_response`). At `record = "full"` its event
    /// holds its place until its body, recorded by [`Self::tap`] with the returned place,
    /// joins it.
    ///
    /// `data` writes the message's fields; nothing is written at `record = "off"`.
    async fn message(
        &self,
        kind: &'static str,
        data: impl FnOnce(&mut JsonObject),
    ) -> Option<tap::Held> {
        let level = self.record_level();
        if level == RecordLevel::Off {
            self.flush().await;
            return None;
        }
        let mut object = JsonObject::new();
        data(&mut object);
        let record = Record::encoded(kind, object.finish());
        if level != RecordLevel::Full {
            crate::lock(&self.queue).push(record);
            self.flush().await;
            return None;
        }
        self.flush().await;
        Some(tap::Queue::hold(&self.queue, record))
    }

    async fn write(&self, event: Record) {
        self.ctx
            .recorder
            .write(Write::Event {
                session: self.session_id.clone(),
                event,
            })
            .await;
    }

    /// Writes the events that are ready (none of their predecessors waits for a body).
    pub async fn flush(&self) {
        write_ready(&self.ctx, &self.session_id, &self.queue).await;
    }

    /// Writes every event left (the session ends).
    pub async fn flush_all(&self) {
        let all = crate::lock(&self.queue).drain();
        for event in all {
            self.write(event).await;
        }
    }

    /// Records a body as it passes, into its message's event (`held`, `record = "full"`
    /// only).
    fn tap(
        &self,
        body: Body,
        held: Option<tap::Held>,
        kind: &'static str,
        content_type: Option<String>,
        restores: bool,
    ) -> Body {
        let Some(held) = held else {
            return body;
        };
        let capture = tap::Capture::new(
            kind,
            Some(held),
            self.policy.defaults.record_body_limit,
            content_type,
            Arc::clone(&self.queue),
            restores.then(|| Arc::clone(&self.mask)),
        );
        tap::Tap::new(body, capture).boxed_unsync()
    }

    fn error_response(&self, status: StatusCode, error: &str) -> Response<Body> {
        json_response(
            status,
            &serde_json::json!({"error": error, "session": self.session_id}),
        )
    }

    /// Serves the agent's side until it closes, or `cut` fires (then in-flight requests end).
    pub async fn serve<S: Io>(
        self: &Arc<Self>,
        io: S,
        h2_only: bool,
        cut: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), String> {
        let session = Arc::clone(self);
        let service = hyper::service::service_fn(move |request| {
            let session = Arc::clone(&session);
            async move { Ok::<_, Infallible>(session.handle(request).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        if h2_only {
            builder = builder.http2_only();
        }
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let served = tokio::select! {
            result = conn.as_mut() => result.map_err(|e| e.to_string()),
            () = crate::proxy::relay::wait_true(cut) => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                Err("daemon shutting down: session cut after the grace period".into())
            }
        };
        // An upgraded connection goes on after hyper hands it over: the session (its bytes,
        // masking counts and end) lasts until the relay ends.
        let relay = crate::lock(&self.upgraded).take();
        if let Some(mut relay) = relay {
            tokio::select! {
                _ = &mut relay => {}
                () = crate::proxy::relay::wait_true(cut) => {
                    relay.abort();
                    return Err("daemon shutting down: upgraded connection cut".into());
                }
            }
        }
        served
    }

    async fn handle(&self, mut request: Request<Incoming>) -> Response<Body> {
        let method = request.method().as_str().to_string();
        let path = request.uri().path().to_string();
        let host = request_host(&request);
        let binding = match self
            .binding
            .get_or_try_init(|| async {
                match &self.binder {
                    Some(bind) => bind(host.as_deref()),
                    None => Err((
                        StatusCode::BAD_GATEWAY,
                        "session has no upstream".into(),
                        None,
                    )),
                }
            })
            .await
        {
            Ok(binding) => binding,
            Err((status, error, target)) => {
                {
                    let mut outcome = self.lock();
                    outcome.refused_target = target;
                    outcome.denied |= status == StatusCode::FORBIDDEN;
                    outcome.errors.push(error.clone());
                }
                self.event(
                    "denied",
                    serde_json::json!({"method": method, "path": path, "host": host, "reason": error}),
                )
                .await;
                return self.error_response(status, &error);
            }
        };
        {
            let mut outcome = self.lock();
            if outcome.host.is_none() {
                outcome.host.clone_from(&host);
            }
        }
        // One session, one target: a request for another target is misdirected (RFC 9110).
        if self.binder.is_some() && binding.target.is_some() {
            let dst = binding.destination;
            let resolved = self.policy.resolve(dst.ip(), dst.port(), host.as_deref());
            if resolved.target != binding.target {
                return self.error_response(
                    StatusCode::MISDIRECTED_REQUEST,
                    "this connection is bound to another policy target; open a new connection",
                );
            }
        }
        let target = binding.target;
        let credentials = target.and_then(|t| self.policy.targets[t].credentials.as_ref());
        let credential_header = credentials.map(|c| c.header.as_str());
        // The request line and headers pass unchanged, but their record is masked by the
        // request-direction mask rules of the target (a recording never holds a masked value).
        let request_masks = self.metadata_masks(true);
        // Recorded with its query (rules match the path alone).
        let recorded_path = redacted(
            request
                .uri()
                .path_and_query()
                .map_or(path.as_str(), http::uri::PathAndQuery::as_str),
            request_masks,
        )
        .into_owned();
        let request_held = self
            .message("http_request", |data| {
                data.field("method", method.as_str())
                    .field("path", &recorded_path)
                    .field("host", &host)
                    .field("version", version_name(request.version()));
                recorded_headers(data, request.headers(), credential_header, request_masks);
            })
            .await;
        if let Some(reason) = &binding.broken {
            self.lock().errors.push(reason.clone());
            return self.error_response(StatusCode::BAD_GATEWAY, reason);
        }

        // Policy: read the body first only when a rule looks into it, or masks it.
        let needs_body = target.is_some_and(|t| {
            self.policy.rules_by_target[t]
                .iter()
                .any(|&r| !self.policy.rules[r].conditions.body.is_empty())
        });
        let upgrade = request.headers().contains_key(header::UPGRADE)
            && request.version() == http::Version::HTTP_11;
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, incoming) = request.into_parts();
        let mut body = Pending::Streaming(incoming);
        if needs_body && let Err(response) = self.read_body(&mut parts, &mut body).await {
            return response;
        }
        let decision = self.policy.evaluate(
            self.ids,
            target,
            &Operation::HttpRequest {
                method: &method,
                path: &path,
                body: body.bytes(),
            },
        );
        let names = self.policy.rule_names(&decision.acting);
        self.lock().rules.extend(names.iter().cloned());
        match decision.verdict {
            Verdict::Block(rule) => {
                let rule = &self.policy.rules[rule].name;
                self.lock().blocked = true;
                self.event(
                    "blocked",
                    serde_json::json!({"rule": rule, "method": method, "path": recorded_path}),
                )
                .await;
                return json_response(
                    StatusCode::FORBIDDEN,
                    &serde_json::json!({"error": "blocked by policy", "rule": rule, "session": self.session_id}),
                );
            }
            Verdict::Approve(rule) => {
                let target = target.map(|t| self.policy.targets[t].name.as_str());
                if let Err(reason) = self
                    .approval(rule, target, method.as_str(), &recorded_path)
                    .await
                {
                    let rule = &self.policy.rules[rule].name;
                    return json_response(
                        StatusCode::FORBIDDEN,
                        &serde_json::json!({"error": "approval denied", "rule": rule, "reason": reason, "session": self.session_id}),
                    );
                }
            }
            Verdict::Allow => {}
        }
        // Masking: the body is read whole (bounded), decoded and masked before it leaves.
        let steps = self.policy.stream_steps(&decision);
        if !steps.is_empty() {
            if let Err(response) = self.read_body(&mut parts, &mut body).await {
                return response;
            }
            let content_type = header_str(&parts.headers, header::CONTENT_TYPE);
            let masked = crate::mask::mask_body(
                &steps,
                content_type.as_deref(),
                body.bytes(),
                &mut crate::lock(&self.mask),
            );
            if let Some(masked) = masked {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, masked.len().into());
                body = Pending::Read(Bytes::from(masked));
            }
        }
        if target.is_some_and(|t| self.policy.masks_target(t)) {
            // Ask only for codings the gateway can decode, so responses can be masked.
            keep_decodable_codings(&mut parts.headers);
        }
        let body = self.tap(
            body.into_body(),
            request_held,
            "request_body",
            header_str(&parts.headers, header::CONTENT_TYPE),
            false,
        );

        // A WebSocket to a target with mask rules (or recorded in full): its text messages
        // are masked both ways and recorded (`websocket.rs`), so none is compressed.
        let websocket_steps = self.websocket_steps(target, upgrade, &parts.headers, &steps);
        if websocket_steps.is_some() {
            parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        }
        strip_hop_by_hop(&mut parts.headers, upgrade);
        if let (Some(t), Some(credentials)) = (target, credentials) {
            match self.credential(t, credentials) {
                Ok(value) => {
                    if let Ok(name) = HeaderName::from_bytes(credentials.header.as_bytes()) {
                        parts.headers.insert(name, value);
                    }
                }
                Err(reason) => {
                    let reason = format!(
                        "credentials of target {} unavailable: {reason}",
                        self.policy.targets[t].name
                    );
                    tracing::error!(session = %self.session_id, %reason);
                    self.lock().errors.push(reason.clone());
                    return self.error_response(StatusCode::BAD_GATEWAY, &reason);
                }
            }
        }
        let request = Request::from_parts(parts, body);
        let mut response = match binding
            .upstream
            .send(&self.ctx, host.as_deref(), request)
            .await
        {
            Ok(response) => response,
            Err(reason) => {
                tracing::info!(session = %self.session_id, %reason);
                self.lock().errors.push(reason.clone());
                self.event("upstream_error", serde_json::json!({"error": reason}))
                    .await;
                return self.error_response(StatusCode::BAD_GATEWAY, &reason);
            }
        };
        let response_held = self
            .message("http_response", |data| {
                data.field("status", &response.status().as_u16());
                recorded_headers(data, response.headers(), None, self.metadata_masks(false));
            })
            .await;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            if websocket_steps.is_some()
                && response
                    .headers()
                    .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
            {
                // Compressed frames cannot be masked; none were offered, so fail closed.
                let reason = "upstream WebSocket turned on an extension that was not offered: \
                              its frames cannot be masked"
                    .to_string();
                self.lock().errors.push(reason.clone());
                return self.error_response(StatusCode::BAD_GATEWAY, &reason);
            }
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (mask, errors) = (Arc::clone(&self.mask), Arc::clone(&self.body_errors));
            // The messages read are recorded as `ws_message` events, in order after the
            // `101`, by a task beside the relay.
            let level = self.record_level();
            let (record, recorded) = match (&websocket_steps, level) {
                (Some(_), RecordLevel::Full | RecordLevel::Metadata) => {
                    let (tx, rx) = tokio::sync::mpsc::channel(64);
                    let messages = WsMessages {
                        ctx: Arc::clone(&self.ctx),
                        session: self.session_id.clone(),
                        queue: Arc::clone(&self.queue),
                        mask: Arc::clone(&self.mask),
                        limit: usize::try_from(self.policy.defaults.record_body_limit)
                            .unwrap_or(usize::MAX),
                        full: level == RecordLevel::Full,
                    };
                    (Some(tx), Some(messages.record(rx)))
                }
                _ => (None, None),
            };
            let relay = tokio::spawn(async move {
                let (client, upstream) = tokio::join!(client_upgrade, upstream_upgrade);
                let (Ok(client), Ok(upstream)) = (client, upstream) else {
                    return;
                };
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                let relayed = async {
                    match websocket_steps {
                        Some((up, down)) => {
                            websocket::relay(client, upstream, up, down, mask, record)
                                .await
                                .map(drop)
                        }
                        None => tokio::io::copy_bidirectional(&mut client, &mut upstream)
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string()),
                    }
                };
                let recording = async {
                    if let Some(recorded) = recorded {
                        recorded.await;
                    }
                };
                let (result, ()) = tokio::join!(relayed, recording);
                if let Err(error) = result {
                    crate::lock(&errors).push(error);
                }
            });
            *crate::lock(&self.upgraded) = Some(relay);
            let (parts, _) = response.into_parts();
            // The `101` has no body: its event is released now, ahead of the messages.
            let body = self.tap(
                full(Bytes::new()),
                response_held,
                "response_body",
                None,
                false,
            );
            return Response::from_parts(parts, body);
        }
        let (mut parts, incoming) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let incoming = ahead::Ahead::take(incoming, ahead::CAP).await;
        let body = match self.response_masking(target, &method, &mut parts) {
            Ok(Some((decoder, steps))) => masking::MaskedBody::new(
                incoming,
                decoder,
                steps,
                header_str(&parts.headers, header::CONTENT_TYPE),
                Arc::clone(&self.mask),
                Arc::clone(&self.body_errors),
            )
            .boxed_unsync(),
            Ok(None) => incoming.map_err(BoxError::from).boxed_unsync(),
            Err(reason) => {
                self.lock().errors.push(reason.clone());
                return self.error_response(StatusCode::BAD_GATEWAY, &reason);
            }
        };
        let body = self.tap(
            body,
            response_held,
            "response_body",
            header_str(&parts.headers, header::CONTENT_TYPE),
            true,
        );
        Response::from_parts(parts, body)
    }

    /// The masking steps of an upgrade to a WebSocket (towards the upstream: the request's
    /// `steps`; towards the client: the response rules' and the restoring of tokens), or
    /// `None` when neither direction masks and the session is not recorded in full (the
    /// connection is then relayed as it is).
    fn websocket_steps(
        &self,
        target: Option<usize>,
        upgrade: bool,
        headers: &HeaderMap,
        steps: &[Step],
    ) -> Option<(Vec<Step>, Vec<Step>)> {
        let websocket = upgrade
            && header_str(headers, header::UPGRADE)
                .is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket"));
        if !websocket {
            return None;
        }
        let tokens = crate::lock(&self.mask).has_tokens() || steps.iter().any(tokenizes);
        let mut down = Vec::new();
        if target.is_some_and(|t| self.policy.masks_target(t)) {
            let decision = self.policy.evaluate(
                self.ids,
                target,
                &Operation::HttpResponse {
                    status: 101,
                    body: &[],
                },
            );
            self.lock()
                .rules
                .extend(self.policy.rule_names(&decision.acting));
            down = self.policy.stream_steps(&decision);
        }
        if tokens {
            down.push(Step::Restore);
        }
        // `record = "full"` keeps every message, so the frames are read (uncompressed) too.
        let full = self.record_level() == RecordLevel::Full;
        (full || !steps.is_empty() || !down.is_empty()).then(|| (steps.to_vec(), down))
    }

    /// Whether and how a response is masked: the steps of the response-direction mask rules
    /// (then the restoring of tokens this session sent), and the decoder of its coding.
    #[allow(clippy::type_complexity)]
    fn response_masking(
        &self,
        target: Option<usize>,
        method: &str,
        parts: &mut http::response::Parts,
    ) -> Result<Option<(Option<masking::Decoder>, Vec<Step>)>, String> {
        let status = parts.status;
        if method == "HEAD"
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status.is_informational()
        {
            return Ok(None);
        }
        let tokens = crate::lock(&self.mask).has_tokens();
        if !tokens && !target.is_some_and(|t| self.policy.masks_target(t)) {
            return Ok(None);
        }
        let decision = self.policy.evaluate(
            self.ids,
            target,
            &Operation::HttpResponse {
                status: status.as_u16(),
                body: &[],
            },
        );
        let mut steps = self.policy.stream_steps(&decision);
        if tokens {
            steps.push(Step::Restore);
        }
        if steps.is_empty() {
            return Ok(None);
        }
        let names = self.policy.rule_names(&decision.acting);
        self.lock().rules.extend(names);
        let content_type = header_str(&parts.headers, header::CONTENT_TYPE);
        if masking::is_binary_type(content_type.as_deref()) {
            return Ok(None);
        }
        let decoder = masking::Decoder::for_encoding(&parts.headers)?;
        if decoder.is_some() {
            parts.headers.remove(header::CONTENT_ENCODING);
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove("content-md5");
        Ok(Some((decoder, steps)))
    }

    /// Reads (bounded) and decodes the request body, once.
    async fn read_body(
        &self,
        parts: &mut http::request::Parts,
        body: &mut Pending,
    ) -> Result<(), Response<Body>> {
        let incoming = match std::mem::replace(body, Pending::Read(Bytes::new())) {
            Pending::Streaming(incoming) => incoming,
            read @ Pending::Read(_) => {
                *body = read;
                return Ok(());
            }
        };
        let bytes = match http_body_util::Limited::new(incoming, INSPECT_LIMIT)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                let (status, reason) = if error
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "request body over {INSPECT_LIMIT} bytes cannot be checked or masked for this target"
                        ),
                    )
                } else {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("request body unreadable: {error}"),
                    )
                };
                self.lock().errors.push(reason.clone());
                return Err(self.error_response(status, &reason));
            }
        };
        let (bytes, decoded) = match masking::decode_all(&parts.headers, bytes, INSPECT_LIMIT) {
            Ok(decoded) => decoded,
            Err(error) => {
                let (status, reason) = match error {
                    masking::DecodeError::TooLarge(m) => {
                        (StatusCode::PAYLOAD_TOO_LARGE, format!("request {m}"))
                    }
                    masking::DecodeError::Broken(m) => (StatusCode::BAD_REQUEST, m),
                };
                self.lock().errors.push(reason.clone());
                return Err(self.error_response(status, &reason));
            }
        };
        if decoded {
            parts.headers.remove(header::CONTENT_ENCODING);
        }
        if decoded || parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, bytes.len().into());
        }
        *body = Pending::Read(bytes);
        Ok(())
    }

    /// The target's credential, resolved once per session.
    fn credential(&self, target: usize, credentials: &Credentials) -> Result<HeaderValue, String> {
        let mut cached = crate::lock(&self.credential);
        if let Some((t, value)) = &*cached
            && *t == target
        {
            return Ok(value.clone());
        }
        let value = resolve_credentials(credentials)?;
        *cached = Some((target, value.clone()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_keeps_the_codings_decoded_as_they_stream() {
        for (asked, kept) in [
            ("gzip, deflate, br, zstd", "gzip, deflate, br"),
            ("zstd;q=1.0, br;q=0.9, *;q=0.1", "br;q=0.9"),
            ("zstd", "identity"),
            ("compress, identity", "identity"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(asked));
            keep_decodable_codings(&mut headers);
            assert_eq!(headers[header::ACCEPT_ENCODING], kept, "{asked}");
        }
    }

    #[test]
    fn secret_headers_are_redacted() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer sk-live"));
        headers.insert("x-api-key", HeaderValue::from_static("k"));
        headers.insert("x-goog-api-key", HeaderValue::from_static("k"));
        headers.insert("x-custom", HeaderValue::from_static("v"));
        headers.insert("x-vault", HeaderValue::from_static("s"));
        headers.append("cookie", HeaderValue::from_static("a=1"));
        headers.append("accept", HeaderValue::from_static("text/plain"));
        headers.append("accept", HeaderValue::from_static(r#"a/"quoted"\b"#));
        let mut data = JsonObject::new();
        data.field("status", &200);
        recorded_headers(&mut data, &headers, Some("X-Vault"), &[]);
        let data: serde_json::Value = serde_json::from_str(&data.finish()).unwrap();
        assert_eq!(data["status"], 200);
        let json = &data["headers"];
        assert_eq!(json["accept"], r#"text/plain, a/"quoted"\b"#);
        assert_eq!(json["authorization"], "[REDACTED]");
        assert_eq!(json["x-api-key"], "[REDACTED]");
        assert_eq!(json["x-goog-api-key"], "[REDACTED]");
        assert_eq!(json["cookie"], "[REDACTED]");
        assert_eq!(json["x-vault"], "[REDACTED]");
        assert_eq!(json["x-custom"], "v");
    }

    /// The definition `is_secret_header` reads bytes for: lower-case the name, then search it.
    fn secret_by_search(name: &str, extra: Option<&str>) -> bool {
        let name = name.to_ascii_lowercase();
        matches!(
            name.as_str(),
            "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
        ) || ["api-key", "apikey", "token", "secret", "password"]
            .iter()
            .any(|w| name.contains(w))
            || name.ends_with("-key")
            || extra.is_some_and(|e| e.eq_ignore_ascii_case(&name))
    }

    #[test]
    fn secret_header_names_match_their_definition() {
        let names = [
            "authorization",
            "Proxy-Authorization",
            "cookie",
            "Set-Cookie",
            "cookies",
            "x-api-key",
            "X-Goog-Api-Key",
            "apikey",
            "x-apikeys",
            "api-ke",
            "x-auth-token",
            "TOKEN",
            "tok",
            "x-secret-id",
            "secre",
            "password",
            "x-passwor",
            "-key",
            "key",
            "x-key",
            "monkey",
            "x-vault",
            "accept",
            "",
            "a",
            "p",
            "ts",
            "authorizatio",
        ];
        for name in names {
            for extra in [None, Some("X-Vault"), Some("")] {
                assert_eq!(
                    is_secret_header(name, extra),
                    secret_by_search(name, extra),
                    "{name:?} {extra:?}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn secret_header_names_match_their_definition_on_generated_names(
            name in "[-a-zA-Z]{0,6}(api-key|apikey|token|secret|password|-key|cookie|authorization|key|pass|apike)?[-a-zA-Z]{0,4}",
        ) {
            proptest::prop_assert_eq!(is_secret_header(&name, None), secret_by_search(&name, None));
        }
    }

    #[test]
    fn versions_are_recorded_as_their_debug_form() {
        for v in [
            http::Version::HTTP_09,
            http::Version::HTTP_10,
            http::Version::HTTP_11,
            http::Version::HTTP_2,
            http::Version::HTTP_3,
        ] {
            assert_eq!(version_name(v), format!("{v:?}"));
        }
    }

    #[test]
    fn credentials_resolve_without_leaking() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("RG_TEST_CREDENTIAL", "sk-real") };
        let credentials = Credentials {
            header: "Authorization".into(),
            value: "Bearer ${env:RG_TEST_CREDENTIAL}".into(),
        };
        let value = resolve_credentials(&credentials).unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer sk-real");
        assert!(value.is_sensitive());
        let missing = Credentials {
            header: "Authorization".into(),
            value: "Bearer ${env:RG_TEST_MISSING}".into(),
        };
        let error = resolve_credentials(&missing).unwrap_err();
        assert!(error.contains("RG_TEST_MISSING"), "{error}");
        let file = Credentials {
            header: "X-Key".into(),
            value: "${file:/nonexistent/key}".into(),
        };
        assert!(
            resolve_credentials(&file)
                .unwrap_err()
                .contains("/nonexistent/key")
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-end", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-end"));
    }
}
