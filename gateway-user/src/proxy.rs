//! The proxy: accepts the connections that connect4/6 redirected, recovers where each was
//! going and who opened it (the kernel's `ORIG_DST` entry), connects upstream from a socket the
//! kernel programs never redirect, relays, and records a session.
//!
//! Each connection is sniffed (bounded in bytes and time) and handed to its protocol handler:
//! TLS is refused, passed through or intercepted as the target's settings say, HTTP goes
//! through [`crate::http`], `PostgreSQL` through [`crate::postgres`] (unless its target says
//! `protocol = "tcp"`), everything else is relayed as raw TCP.

pub mod relay;
pub mod sniff;

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use gateway_common::{BYPASS_MARK, DeniedEvent, OrigDst};
use serde::Serialize;
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};

use self::sniff::{ClientIo, Kind, Sniffed};
use crate::{
    cgroup::CgroupNames,
    http,
    policy::{
        ConnVerdict, IdSet, OnRecordFailure, Policy, RecordLevel, Resolution, TargetProtocol,
        TlsMode, Who, live::LivePolicy,
    },
    postgres::{self, PgSession, Startup, UpstreamTls},
    record::Recorder,
    redirect::{OrigDstTable, ip_of},
    session::{self, Identity, Outcome, Protocol, Record, Session},
    store::Write,
    tls::{self, TlsContext, hello::ClientHello},
};

/// Everything a connection handler needs, shared by all of them.
pub struct ProxyContext {
    pub orig_dst: OrigDstTable,
    pub policy: Arc<LivePolicy>,
    pub recorder: Recorder,
    pub names: CgroupNames,
    /// Accept connections that an iptables `REDIRECT` sent here (`SO_ORIGINAL_DST`), used by
    /// the benchmark that compares eBPF with iptables. No kernel identity for those.
    pub accept_nat_redirect: bool,
    pub connect_timeout: Duration,
    /// The node CA and cached rustls configurations.
    pub tls: Arc<TlsContext>,
    /// The installation's key of the `hash` masking strategy.
    pub mask_key: Arc<[u8]>,
    /// Idle upstream connections, shared by the sessions to the same upstream.
    pub upstreams: Arc<http::UpstreamPool>,
    pub stats: ProxyStats,
    /// Operations held for a person's approval, and the grants approvals left.
    pub approvals: crate::approval::Approvals,
}

#[derive(Debug, Default, Serialize)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub sessions: AtomicU64,
    pub unattributed: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// Sessions that took an idle upstream connection from the pool instead of dialling.
    pub upstream_reused: AtomicU64,
    /// Connections refused on accept by policy (the kernel refuses most before that).
    pub denied: AtomicU64,
}

/// Binds the proxy listeners: 127.0.0.1 and `::1` at `port`.
pub fn bind(port: u16) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for addr in [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ] {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket
            .bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        listeners.push(socket.listen(4096)?);
    }
    Ok(listeners)
}

/// Descriptors kept free for everything that is not a session (store, maps, control socket).
const FD_RESERVE: u64 = 128;

/// How many sessions may be open at once: each holds two sockets, and running out of
/// descriptors would fail sessions (EMFILE) instead of delaying them.
pub fn session_capacity() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft.saturating_sub(FD_RESERVE) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Serves until `shutdown` turns true; then stops accepting and returns. Sessions in flight
/// keep running; they end on their own or when `cut` turns true.
///
/// Admission control: at most `capacity` sessions are open at once. Past that the listeners
/// stop accepting and new connections wait in the kernel's accept queue until a session ends,
/// so a burst beyond the descriptor limit is delayed, never failed.
pub async fn serve(
    listeners: Vec<TcpListener>,
    ctx: Arc<ProxyContext>,
    shutdown: watch::Receiver<bool>,
    cut: watch::Receiver<bool>,
    capacity: usize,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(capacity));
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let (ctx, mut shutdown, cut, permits) = (
            Arc::clone(&ctx),
            shutdown.clone(),
            cut.clone(),
            Arc::clone(&permits),
        );
        tasks.spawn(async move {
            loop {
                let permit = tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    _ = shutdown.changed() => break,
                };
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
                            let (ctx, cut) = (Arc::clone(&ctx), cut.clone());
                            tokio::spawn(async move {
                                handle(ctx, stream, peer, cut).await;
                                drop(permit);
                            });
                        }
                        Err(error) => {
                            // EMFILE and friends: keep serving, do not spin.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    },
                    _ = shutdown.changed() => break,
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

struct ActiveGuard<'a>(&'a ProxyStats);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(
    ctx: Arc<ProxyContext>,
    mut client: TcpStream,
    peer: SocketAddr,
    mut cut: watch::Receiver<bool>,
) {
    ctx.stats.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&ctx.stats);
    let (destination, identity) = match ctx.orig_dst.lookup(peer) {
        Some(orig) => (
            SocketAddr::new(ip_of(orig.family, orig.addr), orig.port),
            ctx.identity(&orig),
        ),
        None => {
            if let Some(dst) = nat_original_dst(&ctx, &client) {
                (dst, Identity::default())
            } else {
                // Not redirected by our programs (e.g. a local process dialling the proxy port
                // directly): we do not know where it should go, so it goes nowhere.
                ctx.stats.unattributed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "connection without an original destination; closed");
                return;
            }
        }
    };
    let _ = client.set_nodelay(true);
    // The session keeps this snapshot for its whole life, whatever reloads happen meanwhile.
    let policy = ctx.policy.current();
    // A session that could not be recorded does not run (`on_record_failure = "block"`).
    if !ctx.recorder.healthy() && policy.defaults.on_record_failure == OnRecordFailure::Block {
        ctx.recorder.stats().refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%destination, pid = ?identity.pid, "store failing or recording backlog full; new session refused (on_record_failure = \"block\")");
        let _ = client.set_zero_linger();
        return;
    }
    let ids = policy.identities_of(&Who {
        cgroup: identity.cgroup.as_deref(),
        uid: identity.uid,
        exe: identity.exe.as_deref(),
    });
    let resolution = policy.resolve(destination.ip(), destination.port(), None);
    let mut session = Session::open(identity, destination, &policy);
    ctx.stats.sessions.fetch_add(1, Ordering::Relaxed);
    let mut conn = Conn {
        ctx: &ctx,
        policy: &policy,
        ids,
        destination,
        early: None,
    };
    // Decided by address and port alone: refused before a byte is read.
    if !resolution.pending
        && let ConnVerdict::Deny { rule } = policy.connection(ids, resolution)
    {
        let _ = client.set_zero_linger();
        drop(client);
        conn.deny(&mut session, resolution.target, rule).await;
        return;
    }
    let protocol = resolution.target.map(|t| policy.targets[t].protocol);
    let wait = match protocol {
        // Client-speaks-first protocols: the client has this long to say something.
        Some(TargetProtocol::Https | TargetProtocol::Http | TargetProtocol::Postgres) => {
            HANDSHAKE_TIMEOUT
        }
        // Raw TCP by policy: nothing to look at.
        Some(TargetProtocol::Tcp) => Duration::ZERO,
        // Unknown protocol: silence means the server speaks first (SMTP, MySQL, …).
        _ if resolution.pending => HANDSHAKE_TIMEOUT,
        _ => SNIFF_WINDOW,
    };
    let mut prefix = Vec::new();
    // An unknown protocol may be one where the server speaks first: connect upstream now, and
    // stop sniffing as soon as it says something. An unreachable upstream fails the agent at
    // once, as a direct connection would.
    if wait == SNIFF_WINDOW {
        match connect_upstream(destination, ctx.connect_timeout).await {
            Ok(upstream) => conn.early = Some(upstream),
            Err(error) => {
                conn.started(&session).await;
                conn.unreachable(&mut session, &error, 0).await;
                return;
            }
        }
    }
    let sniffed = match &conn.early {
        _ if wait.is_zero() => Sniffed::Silent,
        Some(upstream) => tokio::select! {
            sniffed = sniff::sniff(&mut client, &mut prefix, wait) => sniffed,
            _ = upstream.readable() => Sniffed::Silent,
        },
        None => sniff::sniff(&mut client, &mut prefix, wait).await,
    };
    match sniffed {
        // The TLS and HTTP handlers hold kilobytes of handshake and hyper state across their
        // awaits: boxed, they cost only the sessions that use them, and an idle raw session's
        // task stays small (see the idle-memory figure in bench/README.md).
        Sniffed::Kind(Kind::Tls(hello)) => {
            Box::pin(conn.tls(client, prefix, hello, session, &mut cut)).await;
        }
        Sniffed::Kind(Kind::Http) => {
            Box::pin(conn.http(client, prefix, resolution, session, &mut cut)).await;
        }
        Sniffed::Kind(Kind::BadTls(reason)) if protocol == Some(TargetProtocol::Https) => {
            session.protocol = Protocol::Https;
            let _ = client
                .write_all(&tls::config::alert(tls::config::ALERT_HANDSHAKE_FAILURE))
                .await;
            conn.close(
                &mut session,
                Outcome::TlsRejected,
                Some(format!("not a usable ClientHello: {reason}")),
                prefix.len() as u64,
                0,
            )
            .await;
        }
        Sniffed::Stalled(reason) => {
            // A truncated handshake or a client that went quiet: nothing to relay.
            conn.close(
                &mut session,
                Outcome::Error,
                Some(reason.to_string()),
                prefix.len() as u64,
                0,
            )
            .await;
        }
        sniffed => {
            if matches!(sniffed, Sniffed::Kind(Kind::Postgres)) {
                session.protocol = Protocol::Postgres;
            }
            let mut resolution = resolution;
            if resolution.pending {
                // No host will ever be known for this connection.
                resolution.pending = false;
                if let ConnVerdict::Deny { rule } = policy.connection(ids, resolution) {
                    let _ = client.set_zero_linger();
                    drop(client);
                    conn.deny(&mut session, resolution.target, rule).await;
                    return;
                }
            }
            session.target = resolution.target.map(|t| policy.targets[t].name.clone());
            if matches!(sniffed, Sniffed::Kind(Kind::Postgres))
                && protocol != Some(TargetProtocol::Tcp)
            {
                Box::pin(conn.postgres(client, prefix, resolution.target, session, &mut cut)).await;
                return;
            }
            let settings = tls::config::settings(&policy, resolution.target);
            if settings.requires_tls && !matches!(sniffed, Sniffed::Kind(Kind::BadTls(_))) {
                let reason = "target requires TLS but the client spoke clear text (tls.mode does not originate TLS for it)".to_string();
                let _ = client.set_zero_linger();
                drop(client);
                conn.close(
                    &mut session,
                    Outcome::Denied,
                    Some(reason),
                    prefix.len() as u64,
                    0,
                )
                .await;
                return;
            }
            conn.raw(client, prefix, session, &mut cut).await;
        }
    }
}

/// How long a client of an HTTP(S)/PostgreSQL target has for its first bytes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an unknown protocol is given to speak first before it is relayed as raw TCP.
const SNIFF_WINDOW: Duration = Duration::from_millis(300);

/// One accepted connection being handled.
struct Conn<'a> {
    ctx: &'a Arc<ProxyContext>,
    policy: &'a Arc<Policy>,
    ids: IdSet,
    destination: SocketAddr,
    /// The upstream connection made while sniffing an unknown protocol, for the handler.
    early: Option<TcpStream>,
}

impl Conn<'_> {
    /// Records a connection refused by policy.
    async fn deny(&mut self, session: &mut Session, target: Option<usize>, rule: Option<usize>) {
        self.ctx.stats.denied.fetch_add(1, Ordering::Relaxed);
        session.target = target.map(|t| self.policy.targets[t].name.clone());
        let reason = match rule {
            Some(r) => format!("denied by rule {}", self.policy.rules[r].name),
            None => "no policy target matches this destination (unmatched = \"deny\")".into(),
        };
        session.rules = rule
            .map(|r| self.policy.rules[r].name.clone())
            .into_iter()
            .collect();
        tracing::info!(id = %session.id, destination = %self.destination, pid = ?session.identity.pid, "connection denied by policy");
        self.close(session, Outcome::Denied, Some(reason), 0, 0)
            .await;
    }

    /// Ends and records a session.
    async fn close(
        &self,
        session: &mut Session,
        outcome: Outcome,
        error: Option<String>,
        up: u64,
        down: u64,
    ) {
        session.outcome = Some(outcome);
        session.error = error;
        session.bytes_up += up;
        session.bytes_down += down;
        session.ended_at = Some(session::now());
        self.ctx
            .recorder
            .write(Write::Session(Box::new(session.clone())))
            .await;
    }

    async fn started(&self, session: &Session) {
        self.ctx
            .recorder
            .write(Write::Session(Box::new(session.clone())))
            .await;
        tracing::debug!(id = %session.id, destination = %self.destination, pid = ?session.identity.pid, "session started");
    }

    async fn event(&self, session: &Session, kind: &'static str, data: serde_json::Value) {
        let target = session
            .target
            .as_deref()
            .and_then(|name| self.policy.targets.iter().position(|t| t.name == name));
        if self.policy.record_level(self.ids, target) == RecordLevel::Off {
            return;
        }
        self.ctx
            .recorder
            .write(Write::Event {
                session: session.id.clone(),
                event: Record::new(kind, &data),
            })
            .await;
    }

    /// Records a session whose upstream could not be reached.
    async fn unreachable(&self, session: &mut Session, error: &io::Error, up: u64) {
        self.ctx
            .stats
            .upstream_errors
            .fetch_add(1, Ordering::Relaxed);
        let reason = format!("upstream {} unreachable: {error}", self.destination);
        tracing::info!(id = %session.id, %reason);
        self.event(
            session,
            "upstream_error",
            serde_json::json!({ "error": reason }),
        )
        .await;
        self.close(session, Outcome::Error, Some(reason), up, 0)
            .await;
    }

    /// Raw TCP: the sniffed bytes first, then splice both ways.
    async fn raw(
        &mut self,
        client: TcpStream,
        prefix: Vec<u8>,
        mut session: Session,
        cut: &mut watch::Receiver<bool>,
    ) {
        self.started(&session).await;
        let early = self.early.take();
        let mut upstream = match early {
            Some(upstream) => upstream,
            None => match connect_upstream(self.destination, self.ctx.connect_timeout).await {
                Ok(upstream) => upstream,
                Err(error) => {
                    self.unreachable(&mut session, &error, prefix.len() as u64)
                        .await;
                    return;
                }
            },
        };
        if !prefix.is_empty()
            && let Err(error) = upstream.write_all(&prefix).await
        {
            let reason = format!("upstream {} closed: {error}", self.destination);
            self.close(
                &mut session,
                Outcome::Error,
                Some(reason),
                prefix.len() as u64,
                0,
            )
            .await;
            return;
        }
        let transfer = relay::relay(&client, &upstream, cut).await;
        let outcome = if transfer.error.is_some() {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        self.close(
            &mut session,
            outcome,
            transfer.error,
            transfer.up + prefix.len() as u64,
            transfer.down,
        )
        .await;
    }

    /// A `PostgreSQL` client: statements evaluated, rows masked, both recorded
    /// ([`crate::postgres`]); TLS on either leg as [`UpstreamTls`] says.
    async fn postgres(
        &mut self,
        client: TcpStream,
        prefix: Vec<u8>,
        target: Option<usize>,
        mut session: Session,
        cut: &mut watch::Receiver<bool>,
    ) {
        session.protocol = Protocol::Postgres;
        self.started(&session).await;
        let mut io = ClientIo::new(client, prefix);
        let counters = Arc::clone(&io.counters);
        let bytes = || {
            (
                counters.up.load(Ordering::Relaxed),
                counters.down.load(Ordering::Relaxed),
            )
        };
        let first = match postgres::startup(&mut io).await {
            Ok(Startup::Cancel(packet)) => {
                // A cancel goes to the server the agent meant, as it came.
                let sent = async {
                    let mut upstream =
                        connect_upstream(self.destination, self.ctx.connect_timeout).await?;
                    upstream.write_all(&packet).await?;
                    upstream.shutdown().await
                }
                .await;
                let (outcome, error) = match sent {
                    Ok(()) => (Outcome::Ok, None),
                    Err(e) => (Outcome::Error, Some(format!("cancel request: {e}"))),
                };
                let (up, down) = bytes();
                self.close(&mut session, outcome, error, up, down).await;
                return;
            }
            Ok(Startup::End) => {
                let (up, down) = bytes();
                self.close(&mut session, Outcome::Ok, None, up, down).await;
                return;
            }
            Err(reason) => {
                let (up, down) = bytes();
                self.close(&mut session, Outcome::Error, Some(reason), up, down)
                    .await;
                return;
            }
            Ok(first) => first,
        };
        let mode = UpstreamTls::of(self.policy, target);
        let settings = tls::config::settings(self.policy, target);
        let addr = match mode {
            UpstreamTls::Require => SocketAddr::new(
                self.destination.ip(),
                settings.upstream_port.unwrap_or(self.destination.port()),
            ),
            _ => self.destination,
        };
        let early = self.early.take().filter(|_| addr == self.destination);
        let mut tcp = match early {
            Some(tcp) => tcp,
            None => match connect_upstream(addr, self.ctx.connect_timeout).await {
                Ok(tcp) => tcp,
                Err(error) => {
                    postgres::refuse(
                        &mut io,
                        format!("the server {addr} is unreachable: {error}"),
                    )
                    .await;
                    let (up, _) = bytes();
                    self.unreachable(&mut session, &error, up).await;
                    return;
                }
            },
        };
        let agent_tls = matches!(first, Startup::Tls);
        // The upstream leg: ask the server for TLS unless the mode says clear text (or
        // passthrough for a clear-text agent).
        let asked = match mode {
            UpstreamTls::Never => Ok(false),
            UpstreamTls::Passthrough if !agent_tls => Ok(false),
            _ => postgres::request_tls(&mut tcp).await,
        };
        let server_tls = match asked {
            Ok(server_tls) => server_tls,
            Err(e) => {
                let reason =
                    postgres::refuse(&mut io, format!("PostgreSQL server {addr}: {e}")).await;
                let (up, down) = bytes();
                self.close(&mut session, Outcome::Error, Some(reason), up, down)
                    .await;
                return;
            }
        };
        let upstream: Box<dyn http::Io> = match (mode, server_tls) {
            (UpstreamTls::Passthrough, true) => {
                // The agent's TLS goes end to end, unread, as TLS to a destination no target
                // names does.
                session.protocol = Protocol::TlsPassthrough;
                let (mut client, rest) = io.into_parts();
                let sent = async {
                    client.write_all(b"S").await?;
                    tcp.write_all(&rest).await
                }
                .await;
                let transfer = relay::relay(&client, &tcp, cut).await;
                let error = sent.err().map(|e| e.to_string()).or(transfer.error);
                let outcome = if error.is_some() {
                    Outcome::Error
                } else {
                    Outcome::Ok
                };
                let up = counters.up.load(Ordering::Relaxed) + transfer.up;
                self.close(&mut session, outcome, error, up, transfer.down + 1)
                    .await;
                return;
            }
            (UpstreamTls::Require | UpstreamTls::Prefer, true) => {
                let handshake = postgres_tls(
                    tcp,
                    addr,
                    &settings.leg,
                    &self.ctx.tls,
                    self.ctx.connect_timeout,
                )
                .await;
                match handshake {
                    Ok((stream, negotiated)) => {
                        session.tls = Some(session::Tls {
                            client: None,
                            upstream: Some(negotiated),
                        });
                        Box::new(stream)
                    }
                    Err(reason) => {
                        let reason = postgres::refuse(&mut io, reason).await;
                        let (up, down) = bytes();
                        self.close(&mut session, Outcome::Error, Some(reason), up, down)
                            .await;
                        return;
                    }
                }
            }
            (UpstreamTls::Require, false) => {
                let reason = postgres::refuse(
                    &mut io,
                    format!(
                        "PostgreSQL server {addr} does not offer TLS, which the target requires"
                    ),
                )
                .await;
                let (up, down) = bytes();
                self.close(&mut session, Outcome::Error, Some(reason), up, down)
                    .await;
                return;
            }
            _ => Box::new(tcp),
        };
        // The agent's leg: TLS with a leaf of the node CA when it asked and the upstream
        // leg is TLS too; else clear text on the node (`N`).
        let terminate = agent_tls && session.tls.is_some();
        let answered = if agent_tls {
            io.write_all(if terminate { b"S" } else { b"N" }).await
        } else {
            Ok(())
        };
        let mut client: Box<dyn http::Io> = if terminate && answered.is_ok() {
            let config =
                self.ctx
                    .tls
                    .server(&settings.leg, None, Some(self.destination.ip().to_string()));
            let accepted = match config {
                Ok(config) => tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    tokio_rustls::TlsAcceptor::from(config).accept(io),
                )
                .await
                .map_err(|_| "agent TLS handshake timed out".to_string())
                .and_then(|r| r.map_err(|e| format!("agent TLS handshake failed: {e}"))),
                Err(e) => Err(e.to_string()),
            };
            match accepted {
                Ok(stream) => {
                    if let Some(tls) = &mut session.tls {
                        tls.client = Some(tls::config::negotiated(stream.get_ref().1));
                    }
                    Box::new(stream)
                }
                Err(reason) => {
                    let (up, down) = bytes();
                    self.close(&mut session, Outcome::TlsRejected, Some(reason), up, down)
                        .await;
                    return;
                }
            }
        } else {
            Box::new(io)
        };
        let startup = if agent_tls {
            postgres::startup(&mut client).await
        } else {
            Ok(first)
        };
        let Ok(Startup::Session { packet, params }) = startup else {
            let reason = match startup {
                Err(reason) => reason,
                _ => "PostgreSQL startup: no startup packet after the TLS request".into(),
            };
            let (up, down) = bytes();
            self.close(&mut session, Outcome::Error, Some(reason), up, down)
                .await;
            return;
        };
        let pg = PgSession::new(
            Arc::clone(self.ctx),
            Arc::clone(self.policy),
            self.ids,
            target,
            &session,
        );
        let outcome = pg.serve(client, upstream, &packet, &params, cut).await;
        session.rules = outcome.rules.into_iter().collect();
        session.masked = outcome.masked;
        let (result, error) = if outcome.blocked {
            (Outcome::Blocked, None)
        } else if outcome.approval_denied {
            (Outcome::ApprovalDenied, None)
        } else if let Some(error) = outcome.error {
            (Outcome::Error, Some(error))
        } else {
            (Outcome::Ok, None)
        };
        let (up, down) = bytes();
        self.close(&mut session, result, error, up, down).await;
    }

    /// A TLS client: refused, passed through or intercepted, as the target's settings say.
    async fn tls(
        &mut self,
        mut client: TcpStream,
        prefix: Vec<u8>,
        hello: ClientHello,
        mut session: Session,
        cut: &mut watch::Receiver<bool>,
    ) {
        session.destination.host.clone_from(&hello.sni);
        let resolution = self.policy.resolve(
            self.destination.ip(),
            self.destination.port(),
            hello.sni.as_deref(),
        );
        let settings = tls::config::settings(self.policy, resolution.target);
        session.protocol = if settings.mode == TlsMode::Intercept {
            Protocol::Https
        } else {
            Protocol::TlsPassthrough
        };
        self.event(&session, "tls_client_hello", hello.to_json())
            .await;
        if let ConnVerdict::Deny { rule } = self.policy.connection(self.ids, resolution) {
            let _ = client
                .write_all(&tls::config::alert(tls::config::ALERT_ACCESS_DENIED))
                .await;
            drop(client);
            self.deny(&mut session, resolution.target, rule).await;
            return;
        }
        session.target = resolution
            .target
            .map(|t| self.policy.targets[t].name.clone());
        if settings.mode != TlsMode::Intercept {
            // No decryption: the agent's TLS goes end to end; SNI and offer are on record.
            self.raw(client, prefix, session, cut).await;
            return;
        }
        if let Err(refusal) = tls::config::check_offer(&hello, &settings.leg) {
            let _ = client.write_all(&tls::config::alert(refusal.alert)).await;
            let offered = prefix.len() as u64;
            drop(client);
            tracing::info!(id = %session.id, sni = ?hello.sni, reason = %refusal.reason, "TLS client refused");
            self.event(
                &session,
                "tls_rejected",
                serde_json::json!({"reason": refusal.reason, "offered": hello.to_json()}),
            )
            .await;
            self.close(
                &mut session,
                Outcome::TlsRejected,
                Some(refusal.reason),
                offered,
                7,
            )
            .await;
            return;
        }
        self.started(&session).await;

        // Upstream first, so the agent's leg can answer ALPN with what the upstream chose.
        let alpn: Vec<Vec<u8>> = hello
            .alpn
            .iter()
            .filter(|p| *p == "h2" || *p == "http/1.1")
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let upstream = Arc::new(http::Upstream::new(
            self.destination,
            Some(http::UpstreamTls {
                leg: settings.leg.clone(),
                server_name: Some(
                    hello
                        .sni
                        .clone()
                        .unwrap_or_else(|| self.destination.ip().to_string()),
                ),
            }),
            alpn.clone(),
        ));
        upstream.preconnect(self.early.take());
        let (chosen, broken) = match upstream.open(self.ctx).await {
            Ok(h2) => {
                let chosen = if h2 {
                    Some(b"h2".to_vec())
                } else if alpn.is_empty() {
                    None
                } else {
                    Some(b"http/1.1".to_vec())
                };
                (chosen, None)
            }
            // The agent still gets its handshake, then a clear 502 for every request.
            Err(reason) => (alpn.first().cloned(), Some(reason)),
        };
        if let Some(reason) = &broken {
            self.ctx
                .stats
                .upstream_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(id = %session.id, %reason, "upstream refused");
        }
        let fallback = hello
            .sni
            .is_none()
            .then(|| self.destination.ip().to_string());
        let config = match self
            .ctx
            .tls
            .server(&settings.leg, chosen.as_deref(), fallback)
        {
            Ok(config) => config,
            Err(error) => {
                self.close(
                    &mut session,
                    Outcome::Error,
                    Some(error.to_string()),
                    prefix.len() as u64,
                    0,
                )
                .await;
                return;
            }
        };
        let io = ClientIo::new(client, prefix);
        let counters = Arc::clone(&io.counters);
        let accepted = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(config).accept(io),
        )
        .await;
        let stream = match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                let reason = format!("client TLS handshake failed: {error}");
                self.close(
                    &mut session,
                    Outcome::TlsRejected,
                    Some(reason),
                    counters.up.load(Ordering::Relaxed),
                    counters.down.load(Ordering::Relaxed),
                )
                .await;
                return;
            }
            Err(_) => {
                let reason = "client TLS handshake timed out".to_string();
                self.close(
                    &mut session,
                    Outcome::Error,
                    Some(reason),
                    counters.up.load(Ordering::Relaxed),
                    counters.down.load(Ordering::Relaxed),
                )
                .await;
                return;
            }
        };
        let client_leg = tls::config::negotiated(stream.get_ref().1);
        let h2_only = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let binding = http::Binding {
            destination: self.destination,
            target: resolution.target,
            upstream: Arc::clone(&upstream),
            broken,
        };
        let result = self
            .serve_http(&mut session, stream, h2_only, Some(binding), None, cut)
            .await;
        session.tls = Some(session::Tls {
            client: Some(client_leg),
            upstream: crate::lock(&upstream.negotiated).clone(),
        });
        self.finish_http(session, result, &counters).await;
    }

    /// A plain HTTP client: bound to its target by the first request's `Host`, relayed in
    /// clear or upgraded to TLS upstream (`originate`).
    async fn http(
        &mut self,
        client: TcpStream,
        prefix: Vec<u8>,
        resolution: Resolution,
        mut session: Session,
        cut: &mut watch::Receiver<bool>,
    ) {
        session.protocol = Protocol::Http;
        self.started(&session).await;
        let (policy, ids, destination, ctx) = (
            Arc::clone(self.policy),
            self.ids,
            self.destination,
            Arc::clone(self.ctx),
        );
        let h2c = prefix.starts_with(b"PRI * HTTP/2.0");
        let early = std::sync::Mutex::new(self.early.take());
        let binder: http::Binder = Box::new(move |host: Option<&str>| {
            let resolution = if resolution.pending {
                policy.resolve(destination.ip(), destination.port(), host)
            } else {
                resolution
            };
            if let ConnVerdict::Deny { rule } = policy.connection(ids, resolution) {
                ctx.stats.denied.fetch_add(1, Ordering::Relaxed);
                let reason = match rule {
                    Some(r) => format!("denied by rule {}", policy.rules[r].name),
                    None => format!(
                        "no policy target matches {} ({destination})",
                        host.unwrap_or("this destination")
                    ),
                };
                return Err((hyper::StatusCode::FORBIDDEN, reason, resolution.target));
            }
            let settings = tls::config::settings(&policy, resolution.target);
            let originate = settings.mode == TlsMode::Originate
                || (settings.requires_tls && settings.mode == TlsMode::Intercept);
            if settings.requires_tls && !originate {
                let mode = format!("{:?}", settings.mode).to_ascii_lowercase();
                return Err((
                    hyper::StatusCode::FORBIDDEN,
                    format!(
                        "target requires TLS but the agent spoke clear text and tls.mode = \"{mode}\" does not originate TLS; refused"
                    ),
                    resolution.target,
                ));
            }
            let (addr, tls) = if originate {
                let port = settings.upstream_port.unwrap_or(destination.port());
                (
                    SocketAddr::new(destination.ip(), port),
                    Some(http::UpstreamTls {
                        leg: settings.leg,
                        server_name: None,
                    }),
                )
            } else {
                (destination, None)
            };
            let alpn = if h2c {
                vec![b"h2".to_vec()]
            } else if tls.is_some() {
                vec![b"http/1.1".to_vec()]
            } else {
                Vec::new()
            };
            let upstream = http::Upstream::new(addr, tls, alpn);
            if addr == destination {
                upstream.preconnect(crate::lock(&early).take());
            }
            Ok(http::Binding {
                destination,
                target: resolution.target,
                upstream: Arc::new(upstream),
                broken: None,
            })
        });
        let io = ClientIo::new(client, prefix);
        let counters = Arc::clone(&io.counters);
        let result = self
            .serve_http(&mut session, io, false, None, Some(binder), cut)
            .await;
        self.finish_http(session, result, &counters).await;
    }

    async fn serve_http<S: http::Io>(
        &self,
        session: &mut Session,
        io: S,
        h2_only: bool,
        binding: Option<http::Binding>,
        binder: Option<http::Binder>,
        cut: &mut watch::Receiver<bool>,
    ) -> HttpResult {
        let http = Arc::new(http::HttpSession::new(
            Arc::clone(self.ctx),
            Arc::clone(self.policy),
            self.ids,
            session,
            binding,
            binder,
        ));
        let served = http.serve(io, h2_only, cut).await;
        let refused = crate::lock(&http.outcome).refused_target;
        if let Some(t) = refused {
            session.target = Some(self.policy.targets[t].name.clone());
        }
        if let Some(binding) = http.binding() {
            session.target = binding.target.map(|t| self.policy.targets[t].name.clone());
            if session.tls.is_none() && binding.upstream.tls.is_some() {
                session.tls = Some(session::Tls {
                    client: None,
                    upstream: crate::lock(&binding.upstream.negotiated).clone(),
                });
            }
        }
        let mut outcome = std::mem::take(&mut *crate::lock(&http.outcome));
        outcome
            .errors
            .extend(std::mem::take(&mut *crate::lock(&http.body_errors)));
        http.flush_all().await;
        let (masked, summary) = {
            let mask = crate::lock(&http.mask);
            (mask.counts.clone(), mask.summary())
        };
        if let Some(summary) = summary {
            http.event("masking", summary).await;
        }
        session.masked = masked;
        HttpResult { served, outcome }
    }

    async fn finish_http(
        &self,
        mut session: Session,
        result: HttpResult,
        counters: &sniff::Counters,
    ) {
        let HttpResult {
            served,
            outcome: http,
        } = result;
        // A host name, not an address literal, is what `destination.host` records.
        if session.destination.host.is_none() {
            session.destination.host = http.host.filter(|h| h.parse::<std::net::IpAddr>().is_err());
        }
        session.rules = http.rules.into_iter().collect();
        let (outcome, error) = if http.blocked {
            (Outcome::Blocked, None)
        } else if http.approval_denied {
            (Outcome::ApprovalDenied, None)
        } else if http.denied {
            self.ctx.stats.denied.fetch_add(1, Ordering::Relaxed);
            (Outcome::Denied, http.errors.into_iter().next())
        } else if let Some(error) = http.errors.into_iter().next() {
            (Outcome::Error, Some(error))
        } else {
            // A reset or an abandoned connection ends a session; it does not fail it.
            (
                Outcome::Ok,
                served.err().filter(|e| e.contains("shutting down")),
            )
        };
        let outcome = if outcome == Outcome::Ok && error.is_some() {
            Outcome::Error
        } else {
            outcome
        };
        self.close(
            &mut session,
            outcome,
            error,
            counters.up.load(Ordering::Relaxed),
            counters.down.load(Ordering::Relaxed),
        )
        .await;
    }
}

struct HttpResult {
    served: Result<(), String>,
    outcome: http::Outcome,
}

impl ProxyContext {
    fn identity(&self, orig: &OrigDst) -> Identity {
        let exe = std::fs::read_link(format!("/proc/{}/exe", orig.tgid))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        Identity {
            cgroup: self.names.name(orig.cgroup_id, orig.tgid),
            pid: Some(orig.tgid),
            uid: Some(orig.uid),
            gid: Some(orig.gid),
            exe,
            comm: None,
        }
    }
}

fn nat_original_dst(ctx: &ProxyContext, client: &TcpStream) -> Option<SocketAddr> {
    if !ctx.accept_nat_redirect {
        return None;
    }
    let raw = nix::sys::socket::getsockopt(client, nix::sys::socket::sockopt::OriginalDst).ok()?;
    let dst = SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
        u16::from_be(raw.sin_port),
    ));
    // Without a NAT rule the "original" destination is simply our own listener.
    (Some(dst) != client.local_addr().ok()).then_some(dst)
}

/// TLS on a `PostgreSQL` server connection that agreed to it (`S`): a rustls handshake
/// under the target's upstream policy, the server's certificate verified for its address.
async fn postgres_tls(
    tcp: TcpStream,
    addr: SocketAddr,
    leg: &tls::config::LegPolicy,
    tls: &TlsContext,
    timeout: Duration,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, session::TlsLeg), String> {
    let config = tls.client(leg, &[]).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let stream = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| format!("TLS handshake with PostgreSQL server {addr} timed out"))?
    .map_err(|e| format!("TLS with PostgreSQL server {addr} failed: {e}"))?;
    let negotiated = tls::config::negotiated(stream.get_ref().1);
    Ok((stream, negotiated))
}

/// Connects to the real destination from a socket carrying [`BYPASS_MARK`], which connect4/6
/// never redirect: the proxy cannot loop through itself even inside a governed cgroup.
pub async fn connect_upstream(dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Mark, &BYPASS_MARK)
        .map_err(io::Error::from)?;
    let stream = tokio::time::timeout(timeout, socket.connect(dst))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            )
        })??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Records every connect the kernel refused by policy (`RG_EVENTS`) as a `denied` session,
/// with the identity the kernel attested. Runs for the daemon's lifetime; events queued while
/// no daemon ran are recorded on start.
pub async fn record_kernel_denials(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    ctx: Arc<ProxyContext>,
) {
    // SAFETY: the ring buffer owns its map descriptor and moves into the AsyncFd, so the
    // descriptor stays open and unchanged for the AsyncFd's whole lifetime.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    };
    let mut ring = match registered {
        Ok(fd) => fd,
        Err(error) => {
            tracing::error!(%error, "cannot watch the kernel's denial events; kernel-denied connects go unrecorded");
            return;
        }
    };
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(error) => {
                tracing::error!(%error, "kernel denial events unreadable");
                return;
            }
        };
        let mut events = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            if item.len() >= std::mem::size_of::<DeniedEvent>() {
                // SAFETY: the kernel wrote a `DeniedEvent` (a `Pod`); the item may be unaligned.
                events
                    .push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DeniedEvent>()) });
            }
        }
        guard.clear_ready();
        for DeniedEvent { dst: event, comm } in events {
            let policy = ctx.policy.current();
            let destination = SocketAddr::new(ip_of(event.family, event.addr), event.port);
            let mut identity = ctx.identity(&event);
            let len = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
            identity.comm = Some(String::from_utf8_lossy(&comm[..len]).into_owned());
            let mut session = Session::open(identity, destination, &policy);
            session.outcome = Some(Outcome::Denied);
            session.ended_at = Some(session.started_at.clone());
            session.error = Some(
                "refused in the kernel: no policy target matches this destination (unmatched = \"deny\")".into(),
            );
            tracing::info!(id = %session.id, %destination, pid = event.tgid, "connect denied in the kernel");
            ctx.recorder.write(Write::Session(Box::new(session))).await;
        }
    }
}
