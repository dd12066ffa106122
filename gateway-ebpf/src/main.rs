//! react-gateway kernel programs, attached to the governed cgroup (and to every cgroup given to
//! `react-gateway attach`):
//!
//! * `rg_connect4` / `rg_connect6` (`cgroup/connect4`, `cgroup/connect6`): every TCP connect()
//!   of a governed process is rewritten to the local proxy (127.0.0.1 / ::1 at the instance's
//!   listen port), unless the destination is excluded or the socket belongs to the daemon
//!   itself (it carries [`BYPASS_MARK`]); destinations in the deny trie get `EPERM`. The
//!   original destination and the caller's identity wait in a per-CPU slot under the socket
//!   cookie (no hash insert on the connect path).
//! * `rg_sockops` (`sockops`): later in the same connect(), when the SYN is about to leave
//!   (`TCP_CONNECT_CB`), takes that slot and publishes
//!   `{client address:port → original destination + identity}` for the proxy and for
//!   getpeername; when the socket closes, removes the entry.
//! * `rg_getpeername4` / `rg_getpeername6`: a governed program sees its original peer, not the
//!   proxy.
//!
//! Entry points are one line calling a `try_*` function; byte orders follow `gateway-common`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

// Host builds (`cargo check --workspace`, clippy) compile this crate too; only the bpf target
// gets the programs.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot panic; this is only to satisfy `no_std`.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
