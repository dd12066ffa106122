//! Types and constants shared by the eBPF programs (`gateway-ebpf`) and the daemon
//! (`gateway-user`).
//!
//! Every map key and value here is `#[repr(C)]` with explicit padding so that the kernel and
//! user space agree on the layout byte for byte. Conventions:
//!
//! * IP addresses are stored as `[u32; 4]` **in network byte order** (exactly as the kernel
//!   hands them to `bpf_sock_addr.user_ip6` / `bpf_sock_ops.local_ip6`); an IPv4 address is
//!   kept in word 0 with the other words zero and `family == AF_INET`.
//! * Ports are stored **in host byte order** as `u16` in user-visible structures; the kernel
//!   side converts when it reads `user_port` (network order in the low 16 bits).
//! * `Pod` is implemented only behind the `user` feature so this crate stays `no_std` for the
//!   eBPF target.
#![no_std]

/// `AF_INET` as used by the kernel context structs.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as used by the kernel context structs.
pub const AF_INET6: u16 = 10;

/// Where connect4 sends governed IPv4 connections, as address bytes (network order).
pub const PROXY_IPV4: [u8; 4] = [127, 0, 0, 1];
/// Where connect6 sends governed IPv6 connections (`::1`), as address bytes.
pub const PROXY_IPV6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Default TCP port of the proxy listener (DESIGN.md, command line contract).
pub const DEFAULT_LISTEN_PORT: u16 = 15001;

/// Socket mark the daemon puts on its own upstream sockets. connect4/6 never redirect a
/// socket carrying it, so the proxy cannot loop through itself even when its cgroup is inside
/// the governed tree.
pub const BYPASS_MARK: u32 = 0x5247_0001; // "RG" 0001

/// Map names, shared by the eBPF object and the loader (also the bpffs pin file names).
pub mod maps {
    /// `Array<Config>`, one entry: the instance's settings.
    pub const CONFIG: &str = "RG_CONFIG";
    /// `PerCpuArray<Pending>` of [`crate::PENDING_SLOTS`] slots, indexed by socket cookie:
    /// connect4/6 leave the original destination here for sockops, which runs later in the
    /// same `connect()` call. Plain per-CPU stores: no hash, no lock, no allocation on the
    /// connect path (a hash insert there was half of connect4's cost).
    pub const PENDING: &str = "RG_PENDING";
    /// `LruHashMap<PeerKey, OrigDst>`: published by sockops when a redirected connection sends
    /// its SYN, under the client address the proxy sees on `accept()`; read by the proxy and
    /// by getpeername4/6, and removed by sockops when the socket closes.
    pub const ORIG_DST: &str = "RG_ORIG_DST";
    /// `LpmTrie<DstKey, u8>`: destinations that are never redirected.
    pub const EXCLUDE: &str = "RG_EXCLUDE";
    /// `LpmTrie<DenyKey, u8>`: policy verdicts on destinations ([`crate::deny_verdict`]);
    /// `DENY` entries are refused in the kernel with `EPERM`.
    pub const DENY: &str = "RG_DENY";
    /// `RingBuf`: one [`crate::DeniedEvent`] per connect refused by [`DENY`], for the daemon
    /// to record as a `denied` session.
    pub const EVENTS: &str = "RG_EVENTS";
    /// `PerCpuArray<u64>`: counters indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "RG_COUNTERS";
}

/// Program names in the eBPF object (distinct from their section names on purpose: a function
/// named like its section fails to link, DESIGN.md "Toolchain facts").
pub mod programs {
    pub const CONNECT4: &str = "rg_connect4";
    pub const CONNECT6: &str = "rg_connect6";
    pub const GETPEERNAME4: &str = "rg_getpeername4";
    pub const GETPEERNAME6: &str = "rg_getpeername6";
    pub const SOCKOPS: &str = "rg_sockops";
    /// All programs attached to a governed cgroup, in attach order.
    pub const ALL: [&str; 5] = [SOCKOPS, GETPEERNAME4, GETPEERNAME6, CONNECT4, CONNECT6];
}

/// Capacity of the original-destination map: redirected sockets open at once. It is an LRU,
/// so an entry whose close was never seen (programs detached meanwhile) cannot pin a slot.
pub const MAX_TRACKED_SOCKETS: u32 = 65_536;
/// Slots per CPU of [`maps::PENDING`]. A slot is overwritten only if 16 more sockets get a
/// cookie on one CPU while one task sits between its connect4 and its sockops callback; the
/// connection then fails closed (the proxy cannot attribute it), it never goes astray.
pub const PENDING_SLOTS: u32 = 16;
/// Upper bound of CPUs sockops searches when a task moved to another CPU between connect4 and
/// its callback (the kernel answers "no such CPU" past the last one, ending the search).
pub const MAX_CPUS: u32 = 256;
/// Values of the deny trie. The longest matching prefix decides, so an `ALLOW` entry for a
/// policy target inside a `DENY` default (`0.0.0.0/0`) lets that target through.
pub mod deny_verdict {
    pub const ALLOW: u8 = 0;
    pub const DENY: u8 = 1;
}

/// Size of [`maps::EVENTS`] in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Capacity of the exclusion and deny tries.
pub const MAX_PREFIXES: u32 = 4_096;

/// The instance configuration, entry 0 of [`maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Proxy listen port, host byte order. 0 means "not configured": connects are refused.
    pub listen_port: u16,
    pub _pad0: u16,
    /// Bit flags, see [`config_flags`].
    pub flags: u32,
}

pub mod config_flags {
    /// The deny trie holds entries; skip the lookups otherwise.
    pub const DENY_ACTIVE: u32 = 1 << 0;
    /// The exclusion trie holds entries; skip the lookups otherwise (LPM lookups are the
    /// most expensive part of connect4).
    pub const EXCLUDE_ACTIVE: u32 = 1 << 1;
}

/// Where a redirected connection was going and who opened it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Original destination address, network byte order (see crate docs).
    pub addr: [u32; 4],
    /// Original destination port, host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6` of the original destination.
    pub family: u16,
    /// Thread group id (the process id) of the caller of connect().
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id (the cgroup directory's inode number) of the caller.
    pub cgroup_id: u64,
    /// For a denied connect ([`DeniedEvent`]), `bpf_ktime_get_ns()` at the attempt; 0 in
    /// published entries (nothing reads their time, and the connect path stays clock-free).
    pub connect_ns: u64,
}

/// A connect4/6 entry waiting for its socket's sockops callback ([`maps::PENDING`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// The socket's cookie; 0 once sockops has taken the entry.
    pub cookie: u64,
    pub dst: OrigDst,
}

/// A connect refused by policy in the kernel ([`maps::EVENTS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeniedEvent {
    /// Where it was going and who asked; `connect_ns` is the time of the attempt.
    pub dst: OrigDst,
    /// The task's command name (`comm`), NUL-padded: the process has often exited by the time
    /// the daemon could read its `/proc/PID/exe`.
    pub comm: [u8; 16],
}

/// Key of [`maps::ORIG_DST`]: the client side of the redirected connection, i.e. the peer
/// address the proxy sees on `accept()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Client address, network byte order; IPv4 (also IPv4-mapped IPv6) in word 0.
    pub addr: [u32; 4],
    /// Client port, host byte order.
    pub port: u16,
    pub family: u16,
}

/// LPM data of the exclusion trie: `family`, `port` (0 = any port) are matched exactly by
/// always including them in the prefix; `addr` by the CIDR prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DstKey {
    /// Big-endian so that the LPM trie compares it bit by bit like the address.
    pub family_be: u16,
    /// Big-endian port; 0 = any.
    pub port_be: u16,
    /// Address, network byte order.
    pub addr: [u32; 4],
}

/// Number of prefix bits of [`DstKey`] before the address starts.
pub const DST_KEY_FIXED_BITS: u32 = 32;

/// LPM data of the deny trie: a [`DstKey`] scoped to one cgroup id (0 = every governed cgroup).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyKey {
    /// Big-endian cgroup id; 0 = any. Bytes, not `u64`, so the key stays 4-byte aligned
    /// and directly follows the trie's `prefixlen` without padding.
    pub cgroup_id_be: [u8; 8],
    pub dst: DstKey,
}

/// Number of prefix bits of [`DenyKey`] before the address starts.
pub const DENY_KEY_FIXED_BITS: u32 = 64 + DST_KEY_FIXED_BITS;

/// Indexes into [`maps::COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Redirected = 0,
    Excluded = 1,
    Denied = 2,
    Bypassed = 3,
    NotConfigured = 4,
    MapFull = 5,
    Published = 6,
    PeerRewritten = 7,
    /// Denied connects whose event did not fit in [`maps::EVENTS`] (the daemon is behind).
    EventsLost = 8,
}

/// Number of counters in [`maps::COUNTERS`].
pub const COUNTER_COUNT: u32 = 9;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are `#[repr(C)]`, `Copy`, contain only integers and have no
    // implicit padding (every gap is an explicit `_pad` field), so any bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::DstKey {}
    unsafe impl aya::Pod for super::DenyKey {}
    unsafe impl aya::Pod for super::DeniedEvent {}
}

// Layout checks, so a field change that introduces implicit padding fails the build.
const _: () = {
    assert!(core::mem::size_of::<Config>() == 8);
    assert!(core::mem::size_of::<OrigDst>() == 48);
    assert!(core::mem::size_of::<Pending>() == 56);
    assert!(core::mem::size_of::<DeniedEvent>() == 64);
    assert!(core::mem::size_of::<PeerKey>() == 20);
    assert!(core::mem::size_of::<DstKey>() == 20);
    assert!(core::mem::size_of::<DenyKey>() == 28);
};
