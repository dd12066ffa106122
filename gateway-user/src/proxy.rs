//! The proxy: accepts the connections that connect4/6 redirected, recovers where each was
//! going and who opened it (the kernel's `ORIG_DST` entry), connects upstream from a socket the
//! kernel programs never redirect, relays, and records a session.
//!
//! Protocol handling (TLS, HTTP, `PostgreSQL`) plugs in here in later issues; today every
//! connection is relayed as raw TCP.

pub mod relay;

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
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};

use crate::{
    cgroup::CgroupNames,
    policy::{ConnVerdict, Who, live::LivePolicy},
    record::Recorder,
    redirect::{OrigDstTable, ip_of},
    session::{self, Event, Identity, Outcome, Session},
    store::Write,
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
    pub stats: ProxyStats,
}

#[derive(Debug, Default, Serialize)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub sessions: AtomicU64,
    pub unattributed: AtomicU64,
    pub upstream_errors: AtomicU64,
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
    client: TcpStream,
    peer: SocketAddr,
    mut cut: watch::Receiver<bool>,
) {
    ctx.stats.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&ctx.stats);
    let (destination, identity) = match ctx.orig_dst.take(peer) {
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
    let ids = policy.identities_of(&Who {
        cgroup: identity.cgroup.as_deref(),
        uid: identity.uid,
        exe: identity.exe.as_deref(),
    });
    let resolution = policy.resolve(destination.ip(), destination.port(), None);
    let verdict = policy.connection(ids, resolution);
    let mut session = Session::open(identity, destination, &policy);
    session.target = resolution.target.map(|t| policy.targets[t].name.clone());
    ctx.stats.sessions.fetch_add(1, Ordering::Relaxed);
    if let ConnVerdict::Deny { rule } = verdict {
        // Refused with a reset: the agent gets an immediate error, nothing reaches upstream.
        ctx.stats.denied.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_zero_linger();
        drop(client);
        let reason = match rule {
            Some(r) => format!("denied by rule {}", policy.rules[r].name),
            None => "no policy target matches this destination (unmatched = \"deny\")".into(),
        };
        session.rules = rule
            .map(|r| policy.rules[r].name.clone())
            .into_iter()
            .collect();
        session.outcome = Some(Outcome::Denied);
        session.error = Some(reason);
        session.ended_at = Some(session::now());
        tracing::info!(id = %session.id, %destination, pid = ?session.identity.pid, "connection denied by policy");
        ctx.recorder.write(Write::Session(Box::new(session))).await;
        return;
    }
    ctx.recorder
        .write(Write::Session(Box::new(session.clone())))
        .await;
    tracing::debug!(id = %session.id, %destination, pid = ?session.identity.pid, "session started");

    match connect_upstream(destination, ctx.connect_timeout).await {
        Ok(upstream) => {
            let transfer = relay::relay(&client, &upstream, &mut cut).await;
            session.bytes_up = transfer.up;
            session.bytes_down = transfer.down;
            session.outcome = Some(if transfer.error.is_some() {
                Outcome::Error
            } else {
                Outcome::Ok
            });
            session.error = transfer.error;
        }
        Err(error) => {
            ctx.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
            let reason = format!("upstream {destination} unreachable: {error}");
            tracing::info!(id = %session.id, %reason);
            ctx.recorder
                .write(Write::Event {
                    session: session.id.clone(),
                    seq: 0,
                    event: Event::new("upstream_error", serde_json::json!({ "error": reason })),
                })
                .await;
            session.outcome = Some(Outcome::Error);
            session.error = Some(reason);
        }
    }
    session.ended_at = Some(session::now());
    ctx.recorder.write(Write::Session(Box::new(session))).await;
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

/// Connects to the real destination from a socket carrying [`BYPASS_MARK`], which connect4/6
/// never redirect: the proxy cannot loop through itself even inside a governed cgroup.
async fn connect_upstream(dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
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
