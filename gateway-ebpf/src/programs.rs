//! The programs proper; see the crate docs for what each one does.

use core::ptr;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, bpf_sock,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::bpf_map_lookup_percpu_elem,
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{
        Array, LruHashMap, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::warn;
use gateway_common::{
    AF_INET, AF_INET6, BYPASS_MARK, COUNTER_COUNT, Config, Counter, DENY_KEY_FIXED_BITS,
    DST_KEY_FIXED_BITS, DeniedEvent, DenyKey, DstKey, EVENTS_BYTES, MAX_CPUS, MAX_PREFIXES,
    MAX_TRACKED_SOCKETS, OrigDst, PENDING_SLOTS, PROXY_IPV4, PROXY_IPV6, PeerKey, Pending,
    config_flags, deny_verdict,
};

const IPPROTO_TCP: u32 = 6;
/// Return value of a cgroup sock_addr program that lets the call proceed.
const ALLOW: i32 = 1;
/// Return value that makes the syscall fail with `EPERM`.
const REFUSE: i32 = 0;
/// Context address fields hold network-order bytes in a `u32`: build them from bytes with
/// `from_ne_bytes`, never from a number, so the byte order cannot go wrong.
const PROXY_IP4: u32 = u32::from_ne_bytes(PROXY_IPV4);
const PROXY_IP6: [u32; 4] = [
    u32::from_ne_bytes([PROXY_IPV6[0], PROXY_IPV6[1], PROXY_IPV6[2], PROXY_IPV6[3]]),
    u32::from_ne_bytes([PROXY_IPV6[4], PROXY_IPV6[5], PROXY_IPV6[6], PROXY_IPV6[7]]),
    u32::from_ne_bytes([PROXY_IPV6[8], PROXY_IPV6[9], PROXY_IPV6[10], PROXY_IPV6[11]]),
    u32::from_ne_bytes([
        PROXY_IPV6[12],
        PROXY_IPV6[13],
        PROXY_IPV6[14],
        PROXY_IPV6[15],
    ]),
];
/// Word 2 of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// `::ffff:a.b.c.d`: the socket is IPv6 but talks IPv4 (the address is word 3).
#[inline(always)]
fn is_v4_mapped(ip6: &[u32; 4]) -> bool {
    ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_WORD
}

#[map(name = "RG_CONFIG")]
static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "RG_PENDING")]
static PENDING: PerCpuArray<Pending> = PerCpuArray::pinned(PENDING_SLOTS, 0);

#[map(name = "RG_ORIG_DST")]
static ORIG_DST: LruHashMap<PeerKey, OrigDst> = LruHashMap::pinned(MAX_TRACKED_SOCKETS, 0);

#[map(name = "RG_EXCLUDE")]
static EXCLUDE: LpmTrie<DstKey, u8> = LpmTrie::pinned(MAX_PREFIXES, 0);

#[map(name = "RG_DENY")]
static DENY: LpmTrie<DenyKey, u8> = LpmTrie::pinned(MAX_PREFIXES, 0);

#[map(name = "RG_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map(name = "RG_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// A destination as the programs see it: address in network order, port in host order.
#[derive(Clone, Copy)]
struct Dst {
    family: u16,
    addr: [u32; 4],
    port: u16,
}

#[cgroup_sock_addr(connect4)]
pub fn rg_connect4(ctx: SockAddrContext) -> i32 {
    try_connect4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn rg_connect6(ctx: SockAddrContext) -> i32 {
    try_connect6(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn rg_getpeername4(ctx: SockAddrContext) -> i32 {
    try_getpeername(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn rg_getpeername6(ctx: SockAddrContext) -> i32 {
    try_getpeername(&ctx, true);
    ALLOW
}

#[sock_ops]
pub fn rg_sockops(ctx: SockOpsContext) -> u32 {
    try_sockops(&ctx);
    // sockops return values are ignored for these callbacks; 1 is the conventional "ok".
    1
}

fn try_connect4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let dst = Dst {
        family: AF_INET,
        addr: [sa.user_ip4, 0, 0, 0],
        port: u16::from_be(sa.user_port as u16),
    };
    match decide(ctx, dst) {
        Decision::Allow => ALLOW,
        Decision::Refuse => REFUSE,
        Decision::Redirect(listen_port) => {
            sa.user_ip4 = PROXY_IP4;
            sa.user_port = u32::from(listen_port.to_be());
            ALLOW
        }
    }
}

fn try_connect6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let ip6 = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let port = u16::from_be(sa.user_port as u16);
    // A dual-stack socket connecting to ::ffff:a.b.c.d really talks IPv4: treat the
    // destination as IPv4 and send it to the IPv4 listener (as ::ffff:127.0.0.1).
    let mapped = is_v4_mapped(&ip6);
    let dst = if mapped {
        Dst {
            family: AF_INET,
            addr: [ip6[3], 0, 0, 0],
            port,
        }
    } else {
        Dst {
            family: AF_INET6,
            addr: ip6,
            port,
        }
    };
    match decide(ctx, dst) {
        Decision::Allow => ALLOW,
        Decision::Refuse => REFUSE,
        Decision::Redirect(listen_port) => {
            if mapped {
                // ::ffff:127.0.0.1 — words 0..=2 already hold the mapped prefix.
                sa.user_ip6[3] = PROXY_IP4;
            } else {
                sa.user_ip6[0] = PROXY_IP6[0];
                sa.user_ip6[1] = PROXY_IP6[1];
                sa.user_ip6[2] = PROXY_IP6[2];
                sa.user_ip6[3] = PROXY_IP6[3];
            }
            sa.user_port = u32::from(listen_port.to_be());
            ALLOW
        }
    }
}

enum Decision {
    Allow,
    Refuse,
    Redirect(u16),
}

fn decide(ctx: &SockAddrContext, dst: Dst) -> Decision {
    let Some(config) = CONFIG.get(0) else {
        count(Counter::NotConfigured);
        return Decision::Refuse;
    };
    let listen_port = config.listen_port;
    if listen_port == 0 {
        // Loaded but never configured: fail closed rather than let the connect through.
        count(Counter::NotConfigured);
        return Decision::Refuse;
    }
    if dst.port == listen_port && is_loopback(&dst) {
        // The proxy's own listener is always reachable (it is where we send everyone).
        return Decision::Allow;
    }
    // SAFETY: `sk` is a valid, non-null socket pointer for connect hooks (PTR_TO_SOCKET).
    let mark = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).mark };
    if mark == BYPASS_MARK {
        count(Counter::Bypassed);
        return Decision::Allow;
    }
    if config.flags & config_flags::EXCLUDE_ACTIVE != 0 && is_excluded(&dst) {
        count(Counter::Excluded);
        return Decision::Allow;
    }
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let entry = OrigDst {
        addr: dst.addr,
        port: dst.port,
        family: dst.family,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id,
        // Only a denial (below) needs the time; the connect path reads no clock.
        connect_ns: 0,
    };
    if config.flags & config_flags::DENY_ACTIVE != 0 && is_denied(&dst, cgroup_id) {
        count(Counter::Denied);
        let event = DeniedEvent {
            dst: OrigDst {
                // SAFETY: helper without preconditions.
                connect_ns: unsafe { bpf_ktime_get_ns() },
                ..entry
            },
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        if EVENTS.output::<DeniedEvent>(&event, 0).is_err() {
            count(Counter::EventsLost);
        }
        return Decision::Refuse;
    }
    // SAFETY: the context is a socket-carrying context, as the helper requires.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // For sockops, which publishes it later in this same connect() (TCP_CONNECT_CB).
    let Some(slot) = PENDING.get_ptr_mut(pending_slot(cookie)) else {
        // Cannot happen (the index is below the map's size); refuse rather than go unseen.
        count(Counter::MapFull);
        return Decision::Refuse;
    };
    // SAFETY: this CPU's slot; programs run with migration disabled.
    unsafe { *slot = Pending { cookie, dst: entry } };
    count(Counter::Redirected);
    Decision::Redirect(listen_port)
}

const _: () = assert!(PENDING_SLOTS.is_power_of_two());

#[inline(always)]
fn pending_slot(cookie: u64) -> u32 {
    (cookie & u64::from(PENDING_SLOTS - 1)) as u32
}

#[inline(always)]
fn is_loopback(dst: &Dst) -> bool {
    if dst.family == AF_INET {
        // 127.0.0.0/8: the first address byte.
        dst.addr[0].to_ne_bytes()[0] == 127
    } else {
        dst.addr[0] == 0 && dst.addr[1] == 0 && dst.addr[2] == 0 && dst.addr[3] == PROXY_IP6[3]
    }
}

#[inline(always)]
fn dst_key(dst: &Dst, port: u16) -> DstKey {
    DstKey {
        family_be: dst.family.to_be(),
        port_be: port.to_be(),
        addr: dst.addr,
    }
}

#[inline(always)]
fn addr_bits(dst: &Dst) -> u32 {
    if dst.family == AF_INET { 32 } else { 128 }
}

fn is_excluded(dst: &Dst) -> bool {
    let bits = DST_KEY_FIXED_BITS + addr_bits(dst);
    // Exact port first, then "any port" (stored as port 0).
    EXCLUDE
        .get(Key::new(bits, dst_key(dst, dst.port)))
        .is_some()
        || EXCLUDE.get(Key::new(bits, dst_key(dst, 0))).is_some()
}

fn is_denied(dst: &Dst, cgroup_id: u64) -> bool {
    let bits = DENY_KEY_FIXED_BITS + addr_bits(dst);
    for scope in [cgroup_id, 0] {
        for port in [dst.port, 0] {
            let key = DenyKey {
                cgroup_id_be: scope.to_be_bytes(),
                dst: dst_key(dst, port),
            };
            // The first scope/port level with an entry decides (its longest prefix within).
            if let Some(verdict) = DENY.get(Key::new(bits, key)) {
                return *verdict == deny_verdict::DENY;
            }
        }
    }
    false
}

fn try_getpeername(ctx: &SockAddrContext, v6_socket: bool) {
    let Some(config) = CONFIG.get(0) else {
        return;
    };
    // SAFETY: `sk` is a valid, non-null socket pointer for sock_addr hooks (PTR_TO_SOCKET).
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let Some(key) = proxy_client_key(sk, config.listen_port, v6_socket) else {
        return;
    };
    // SAFETY: read-only copy of a plain-old-data value.
    let Some(orig) = (unsafe { ORIG_DST.get(&key) }).copied() else {
        return;
    };
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    if v6_socket {
        if orig.family == AF_INET {
            sa.user_ip6[0] = 0;
            sa.user_ip6[1] = 0;
            sa.user_ip6[2] = V4_MAPPED_WORD;
            sa.user_ip6[3] = orig.addr[0];
        } else {
            sa.user_ip6[0] = orig.addr[0];
            sa.user_ip6[1] = orig.addr[1];
            sa.user_ip6[2] = orig.addr[2];
            sa.user_ip6[3] = orig.addr[3];
        }
    } else {
        sa.user_ip4 = orig.addr[0];
    }
    sa.user_port = u32::from(orig.port.to_be());
    count(Counter::PeerRewritten);
}

/// The [`PeerKey`] of a socket connected to this instance's listener, `None` for any other
/// socket: another socket may share its local address and port with a redirected one (the
/// same ephemeral port towards another destination), so the peer must be checked too.
#[inline(always)]
fn proxy_client_key(sk: *mut bpf_sock, listen_port: u16, v6_socket: bool) -> Option<PeerKey> {
    // Each context field is read on its own (volatile): the verifier accepts only loads of a
    // field's own size, and LLVM may otherwise merge neighbouring words into one load.
    // SAFETY: `sk` is a valid socket pointer (see the caller); fields of `bpf_sock` are readable.
    let field = |p: *const u32| unsafe { ptr::read_volatile(p) };
    // SAFETY: as above.
    let dst_port = unsafe { ptr::read_volatile(ptr::addr_of!((*sk).dst_port)) };
    if dst_port != listen_port.to_be() {
        return None;
    }
    // SAFETY: as above.
    let src_port = unsafe { field(ptr::addr_of!((*sk).src_port)) } as u16;
    if !v6_socket {
        // SAFETY: as above.
        let (dst, src) = unsafe {
            (
                field(ptr::addr_of!((*sk).dst_ip4)),
                field(ptr::addr_of!((*sk).src_ip4)),
            )
        };
        return (dst == PROXY_IP4).then_some(PeerKey {
            addr: [src, 0, 0, 0],
            port: src_port,
            family: AF_INET,
        });
    }
    // SAFETY: as above (the arrays are in the context; each word is read on its own).
    let (dst, src) = unsafe {
        let d = ptr::addr_of!((*sk).dst_ip6).cast::<u32>();
        let s = ptr::addr_of!((*sk).src_ip6).cast::<u32>();
        (
            [field(d), field(d.add(1)), field(d.add(2)), field(d.add(3))],
            [field(s), field(s.add(1)), field(s.add(2)), field(s.add(3))],
        )
    };
    if is_v4_mapped(&src) {
        // A dual-stack socket redirected to ::ffff:127.0.0.1 (see connect6).
        let proxy = is_v4_mapped(&dst) && dst[3] == PROXY_IP4;
        return proxy.then_some(PeerKey {
            addr: [src[3], 0, 0, 0],
            port: src_port,
            family: AF_INET,
        });
    }
    (dst == PROXY_IP6).then_some(PeerKey {
        addr: src,
        port: src_port,
        family: AF_INET6,
    })
}

fn try_sockops(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        publish(ctx);
    } else if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == BPF_TCP_CLOSE {
        // args[1] is the new state. Closing (after a refused or aborted connect, too) is the
        // one point every published socket passes, and its address is still set here: forget
        // it, so the map never leaks.
        let _ = ORIG_DST.remove(&local_key(ctx));
    }
}

/// In connect(), as the SYN is about to leave: the socket's local address and port are
/// chosen, so the entry connect4/6 left is published under them, where the proxy's accept()
/// and getpeername will look.
fn publish(ctx: &SockOpsContext) {
    let Some(config) = CONFIG.get(0) else {
        return;
    };
    // Only sockets connect4/6 sent to the listener can have an entry. `remote_port` is a
    // 32-bit network-order value (the kernel shifts the port into the upper half on
    // little-endian machines), so it is read as `ntohl` would.
    if u32::from_be(ctx.remote_port()) != u32::from(config.listen_port) {
        return;
    }
    // SAFETY: socket-carrying context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = take_pending(cookie) else {
        return;
    };
    if ORIG_DST
        .insert(&local_key(ctx), &orig, u64::from(BPF_ANY))
        .is_ok()
    {
        // Ask for state callbacks on this socket only, so we see it close.
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        count(Counter::Published);
    } else {
        count(Counter::MapFull);
        warn!(
            ctx,
            "react-gateway: original-destination map insert failed; the proxy will refuse this connection"
        );
    }
}

/// Takes the entry connect4/6 left for `cookie`: in this CPU's slot, or, if the task moved
/// to another CPU in between, in that CPU's.
fn take_pending(cookie: u64) -> Option<OrigDst> {
    let index = pending_slot(cookie);
    if let Some(slot) = PENDING.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array; nothing else runs on it meanwhile.
        if let Some(dst) = claim(unsafe { &mut *slot }, cookie) {
            return Some(dst);
        }
    }
    // `PerCpuArray` is a transparent wrapper of its map definition: its address is the map.
    let map = ptr::from_ref(&PENDING).cast_mut().cast();
    for cpu in 0..MAX_CPUS {
        // SAFETY: the helper checks the map, the key and the CPU; null past the last CPU.
        let found = unsafe { bpf_map_lookup_percpu_elem(map, ptr::from_ref(&index).cast(), cpu) }
            .cast::<Pending>();
        if found.is_null() {
            return None;
        }
        // SAFETY: a valid map value. Another CPU may write the slot meanwhile: the cookie
        // check then fails or the connection fails closed; it never takes another's entry
        // whole, since cookies are unique.
        if let Some(dst) = claim(unsafe { &mut *found }, cookie) {
            return Some(dst);
        }
    }
    None
}

/// The slot's entry if it is `cookie`'s, marking it taken.
#[inline(always)]
fn claim(slot: &mut Pending, cookie: u64) -> Option<OrigDst> {
    if slot.cookie != cookie {
        return None;
    }
    slot.cookie = 0;
    Some(slot.dst)
}

/// The socket's local side as the proxy sees it on accept(): IPv4 (also IPv4-mapped IPv6) in
/// word 0.
fn local_key(ctx: &SockOpsContext) -> PeerKey {
    let port = ctx.local_port() as u16;
    if ctx.family() == u32::from(AF_INET) {
        return PeerKey {
            addr: [ctx.local_ip4(), 0, 0, 0],
            port,
            family: AF_INET,
        };
    }
    let ip6 = ctx.local_ip6();
    if is_v4_mapped(&ip6) {
        PeerKey {
            addr: [ip6[3], 0, 0, 0],
            port,
            family: AF_INET,
        }
    } else {
        PeerKey {
            addr: ip6,
            port,
            family: AF_INET6,
        }
    }
}
