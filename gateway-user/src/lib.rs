//! react-gateway: a node daemon that governs the network traffic of AI agents.
//!
//! eBPF programs attached to the agents' cgroups send every outbound TCP connection to a
//! local proxy, which recovers the original destination and the kernel-attested identity of
//! the caller, relays the connection and records it as a session.
//!
//! # Layout
//!
//! * [`host`] — checks of the environment (root, kernel, cgroup2, bpffs).
//! * [`state`] — the state directory and what lives in it.
//! * [`cgroup`] — cgroup v2 paths, creation, ids → names.
//! * [`redirect`] — loading, pinning and attaching the kernel programs; their maps.
//! * [`proxy`] — accept, original destination lookup, upstream connect, relay.
//! * [`policy`] — policy files: parse, validate, compile, evaluate (pure).
//! * [`mask`] — detectors and masking strategies (pure).
//! * [`sql`] — SQL statement classification (pure).
//! * [`tls`] — node CA, ClientHello parsing, rustls configurations of both legs.
//! * [`http`] — the HTTP/1.1 and HTTP/2 data path (hyper): rules, credentials, events.
//! * [`postgres`] — the `PostgreSQL` data path: statements evaluated, rows masked, recorded.
//! * [`session`] — the session model (`sessions list --json` contract).
//! * [`store`] / [`record`] — the sqlx store and the batched recorder in front of it.
//! * [`control`] — the control socket (`status`, `attach`, `detach`, `approvals`).
//! * [`approval`] — operations held for a person's approval, and the grants they leave.
//! * [`exec`] — running a command inside a governed cgroup.
//! * [`app`] — the daemon: wiring, startup order, graceful shutdown.
//! * [`cli`] — the command line contract.

pub mod app;
pub mod approval;
pub mod audit;
pub mod cgroup;
pub mod cli;
pub mod control;
pub mod exec;
pub mod host;
pub mod http;
pub mod mask;
pub mod policy;
pub mod postgres;
pub mod proxy;
pub mod record;
pub mod redirect;
pub mod review;
pub mod session;
pub mod sql;
pub mod state;
pub mod store;
pub mod tls;

/// Lower-case hex of `bytes` (digests, keys, signatures).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends the lower-case hex of `bytes` to `out`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        let [high, low] = hex_pair(b);
        out.push(char::from(high));
        out.push(char::from(low));
    }
}

/// The two lower-case hex digits of `b`.
pub fn hex_pair(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]]
}

/// Locks a mutex, taking it over if a holder panicked: the data behind every lock here is
/// plain state (caches, counters) that stays usable.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
