//! The kernel side of interception, seen from user space: loading the eBPF object, pinning its
//! maps and links under bpffs, attaching to governed cgroups, and the maps the proxy reads.
//!
//! # Pins and restarts
//!
//! Everything lives under `BPFFS/react-gateway/<instance>/` (the instance name is derived from
//! the state dir): maps by name, links as `links/<escaped cgroup>/<program>-<generation>`.
//! Because links are pinned, the programs stay attached when the daemon exits or crashes, and
//! governed connects keep going to the (now closed) proxy port: they fail with "connection
//! refused" instead of bypassing the gateway. A new daemon reuses the pinned maps, attaches a
//! new generation of links and only then removes the old ones, so there is never a moment
//! without a program and never two generations left attached.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{CgroupAttachMode, Program, links::FdLink},
};
use gateway_common::{
    AF_INET, AF_INET6, Config, Counter, DENY_KEY_FIXED_BITS, DST_KEY_FIXED_BITS, DenyKey, DstKey,
    OrigDst, PeerKey, config_flags, deny_verdict, maps, programs,
};
use serde::Serialize;

/// The compiled eBPF object, built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("cannot create pin directory {0}: {1}")]
    PinDir(PathBuf, std::io::Error),
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The verifier refused a helper call: the kernel is too old for it (or a distribution
    /// kernel without its backport). An environment error, like a kernel below
    /// [`crate::host::MIN_KERNEL`].
    #[error(
        "this kernel cannot run eBPF program {program}: it lacks the helper {helper}; react-gateway needs mainline Linux 5.19 or newer, or a distribution kernel with that helper backported"
    )]
    KernelLacks {
        program: &'static str,
        helper: String,
    },
    #[error("the eBPF object has no {0}; the build is broken")]
    Missing(&'static str),
    #[error("cannot open cgroup {0}: {1} (does it exist on the cgroup2 mount?)")]
    Cgroup(PathBuf, std::io::Error),
    #[error("cannot pin link {0}: {1}")]
    Pin(PathBuf, String),
    #[error("cannot remove link pins in {0}: {1}")]
    Unpin(PathBuf, std::io::Error),
    #[error("{0} is not attached by this daemon")]
    NotAttached(String),
    #[error(
        "{0} kernel policy entries exceed the deny table's capacity; the proxy enforces the policy alone"
    )]
    TooManyPrefixes(usize),
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> RedirectError {
    move |source| RedirectError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> RedirectError {
    move |source| {
        let helper = match &source {
            aya::programs::ProgramError::LoadError { verifier_log, .. } => {
                missing_helper(&format!("{verifier_log:?}"))
            }
            _ => None,
        };
        match helper {
            Some(helper) => RedirectError::KernelLacks {
                program: name,
                helper,
            },
            None => RedirectError::Program { name, source },
        }
    }
}

/// Helpers the programs call that are newer than the hooks themselves (Linux 5.8), by number:
/// a kernel that predates one names it `unknown` in its verifier log.
const LATE_HELPERS: &[(u32, &str)] = &[(195, "bpf_map_lookup_percpu_elem (Linux 5.19)")];

/// The helper a verifier log says the kernel does not offer, if that is why it refused the
/// program. Kernels say `invalid func unknown#195` for a number past their last helper, and
/// `unknown func bpf_x#N` (older wording) or `program of this type cannot use helper bpf_x#N`
/// for one they know but do not offer to this program type.
fn missing_helper(log: &str) -> Option<String> {
    const MARKERS: [&str; 3] = ["invalid func ", "unknown func ", "cannot use helper "];
    let (line, marker) = log.lines().find_map(|line| {
        MARKERS
            .iter()
            .find(|m| line.contains(**m))
            .map(|m| (line, *m))
    })?;
    let call = line.split_once(marker)?.1.split_whitespace().next()?;
    let (name, number) = call.rsplit_once('#')?;
    let number: u32 = number.parse().ok()?;
    let known = LATE_HELPERS
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, name)| *name);
    Some(match known {
        Some(described) => format!("#{number}, {described}"),
        None if name == "unknown" || name.is_empty() => format!("#{number}"),
        None => format!("#{number}, {name}"),
    })
}

/// A destination prefix with an optional port: `10.0.0.0/8`, `127.0.0.53/32:53`,
/// `[::1]/128:5432`, `192.168.1.7` (a single host, any port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DstPrefix {
    pub net: IpAddr,
    pub prefix: u8,
    /// `None` = every port.
    pub port: Option<u16>,
}

impl FromStr for DstPrefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "invalid destination {text:?}: {why} (expected CIDR[:PORT], e.g. 10.0.0.0/8:443 or [fd00::]/8:443)"
            )
        };
        let (cidr, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| bad("missing ]"))?;
            let (addr, prefix) = inner
                .split_once('/')
                .map_or((inner, None), |(a, p)| (a, Some(p)));
            let (prefix, port) = match (prefix, after.strip_prefix('/')) {
                (Some(p), _) => (Some(p.to_string()), after.strip_prefix(':')),
                (None, Some(tail)) => {
                    let (p, port) = tail
                        .split_once(':')
                        .map_or((tail, None), |(p, port)| (p, Some(port)));
                    (Some(p.to_string()), port)
                }
                (None, None) => (None, after.strip_prefix(':')),
            };
            let cidr = match prefix {
                Some(p) => format!("{addr}/{p}"),
                None => addr.to_string(),
            };
            (cidr, port.map(str::to_string))
        } else if text.matches(':').count() > 1 {
            (text.to_string(), None) // bare IPv6, no port
        } else {
            match text.split_once(':') {
                Some((cidr, port)) => (cidr.to_string(), Some(port.to_string())),
                None => (text.to_string(), None),
            }
        };
        let (addr, prefix) = cidr
            .split_once('/')
            .map_or((cidr.as_str(), None), |(a, p)| (a, Some(p)));
        let net: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad("prefix length out of range"))?,
            None => max,
        };
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("port must be 1-65535"))?,
            ),
            None => None,
        };
        Ok(Self { net, prefix, port })
    }
}

impl std::fmt::Display for DstPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.net, self.port) {
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}/{}]:{p}", self.prefix),
            (a, Some(p)) => write!(f, "{a}/{}:{p}", self.prefix),
            (a, None) => write!(f, "{a}/{}", self.prefix),
        }
    }
}

impl DstPrefix {
    fn key(&self) -> (u32, DstKey) {
        let (family, addr) = match self.net {
            IpAddr::V4(a) => (AF_INET, [u32::from_ne_bytes(a.octets()), 0, 0, 0]),
            IpAddr::V6(a) => (AF_INET6, v6_words(a)),
        };
        let key = DstKey {
            family_be: family.to_be(),
            port_be: self.port.unwrap_or(0).to_be(),
            addr,
        };
        (DST_KEY_FIXED_BITS + u32::from(self.prefix), key)
    }
}

fn v6_words(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// Converts a kernel-side address (network byte order words) to an `IpAddr`.
pub fn ip_of(family: u16, addr: [u32; 4]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(addr[0].to_ne_bytes()))
    } else {
        let mut octets = [0u8; 16];
        for (i, word) in addr.iter().enumerate() {
            octets[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    }
}

/// The key under which sockops published a connection whose client end the proxy sees as
/// `peer`. IPv4-mapped IPv6 peers are keyed as IPv4, as the kernel side does.
pub fn peer_key(peer: SocketAddr) -> PeerKey {
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => PeerKey {
            addr: [u32::from_ne_bytes(a.octets()), 0, 0, 0],
            port: peer.port(),
            family: AF_INET,
        },
        IpAddr::V6(a) => PeerKey {
            addr: v6_words(a),
            port: peer.port(),
            family: AF_INET6,
        },
    }
}

/// The proxy's view of [`maps::ORIG_DST`]: where an accepted connection was going and who
/// opened it. The entry stays until the client's socket closes (sockops removes it then), as
/// getpeername needs it for the socket's whole life. Lookups take no lock. Cheap to clone.
#[derive(Clone)]
pub struct OrigDstTable {
    map: Arc<HashMap<MapData, PeerKey, OrigDst>>,
}

impl OrigDstTable {
    pub fn lookup(&self, peer: SocketAddr) -> Option<OrigDst> {
        self.map.get(&peer_key(peer), 0).ok()
    }

    /// Entries in the map: redirected sockets open now (and not yet seen closing).
    pub fn len(&self) -> usize {
        self.map.keys().count()
    }
}

/// Kernel-side counters and map sizes, for `status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelStats {
    pub redirected: u64,
    pub excluded: u64,
    pub denied: u64,
    pub bypassed: u64,
    pub not_configured: u64,
    pub map_full: u64,
    pub published: u64,
    pub peer_rewritten: u64,
    pub events_lost: u64,
    /// Redirected sockets with a published original destination (open now).
    pub tracked_sockets: usize,
}

/// Loaded programs and maps of one daemon instance.
pub struct Redirector {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    cgroup2: PathBuf,
    generation: u64,
    orig_dst: OrigDstTable,
    counters: PerCpuArray<MapData, u64>,
    exclude: LpmTrie<MapData, DstKey, u8>,
    deny: LpmTrie<MapData, DenyKey, u8>,
    events: Option<RingBuf<MapData>>,
    config: Array<MapData, Config>,
}

impl Redirector {
    /// Loads (or re-opens) the pinned maps and loads the programs; attaches nothing yet.
    pub fn load(
        pin_dir: &Path,
        cgroup2: &Path,
        listen_port: u16,
    ) -> Result<(Self, Option<aya_log::EbpfLogger<&'static dyn log::Log>>), RedirectError> {
        // An instance leaving with `--detach-on-exit` removes the shared `react-gateway/` root
        // once it is empty, maybe between our making it and our subdirectory: make it again.
        let links = pin_dir.join("links");
        let mut retries = 3;
        let made = loop {
            match fs::create_dir_all(&links) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && retries > 0 => retries -= 1,
                made => break made,
            }
        };
        made.map_err(|e| RedirectError::PinDir(pin_dir.to_path_buf(), e))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(EBPF_OBJECT)?;
        // The logger must stay alive as long as the programs: dropping it closes its map.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                tracing::warn!(%error, "kernel-side logging unavailable");
                None
            }
        };
        for name in programs::ALL {
            let program = ebpf.program_mut(name).ok_or(RedirectError::Missing(name))?;
            match program {
                Program::SockOps(p) => p.load(),
                Program::CgroupSockAddr(p) => p.load(),
                _ => return Err(RedirectError::Missing(name)),
            }
            .map_err(prog_err(name))?;
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(RedirectError::Missing(name))
        };
        let orig_dst =
            HashMap::try_from(take(&mut ebpf, maps::ORIG_DST)?).map_err(map_err(maps::ORIG_DST))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)
            .map_err(map_err(maps::COUNTERS))?;
        let exclude =
            LpmTrie::try_from(take(&mut ebpf, maps::EXCLUDE)?).map_err(map_err(maps::EXCLUDE))?;
        let deny = LpmTrie::try_from(take(&mut ebpf, maps::DENY)?).map_err(map_err(maps::DENY))?;
        let events =
            RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?).map_err(map_err(maps::EVENTS))?;
        let config =
            Array::try_from(take(&mut ebpf, maps::CONFIG)?).map_err(map_err(maps::CONFIG))?;
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        let mut redirector = Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            cgroup2: cgroup2.to_path_buf(),
            generation,
            orig_dst: OrigDstTable {
                map: Arc::new(orig_dst),
            },
            counters,
            exclude,
            deny,
            events: Some(events),
            config,
        };
        let flags = redirector.config.get(&0, 0).map_or(0, |c| c.flags);
        redirector
            .config
            .set(
                0,
                Config {
                    listen_port,
                    _pad0: 0,
                    flags,
                },
                0,
            )
            .map_err(map_err(maps::CONFIG))?;
        Ok((redirector, logger))
    }

    pub fn orig_dst(&self) -> OrigDstTable {
        self.orig_dst.clone()
    }

    /// Replaces the exclusion list (destinations never redirected).
    pub fn set_exclusions(&mut self, prefixes: &[DstPrefix]) -> Result<(), RedirectError> {
        let old: Vec<Key<DstKey>> = self.exclude.keys().filter_map(Result::ok).collect();
        let new: Vec<(u32, DstKey)> = prefixes.iter().map(DstPrefix::key).collect();
        for (bits, key) in &new {
            self.exclude
                .insert(&Key::new(*bits, *key), 1, 0)
                .map_err(map_err(maps::EXCLUDE))?;
        }
        for key in old {
            let (bits, data) = (key.prefix_len(), key.data());
            if !new.iter().any(|(b, k)| *b == bits && *k == data) {
                let _ = self.exclude.remove(&key);
            }
        }
        self.set_flag(config_flags::EXCLUDE_ACTIVE, !new.is_empty())
    }

    fn set_flag(&mut self, flag: u32, on: bool) -> Result<(), RedirectError> {
        let mut config = self.config.get(&0, 0).map_err(map_err(maps::CONFIG))?;
        if on {
            config.flags |= flag;
        } else {
            config.flags &= !flag;
        }
        self.config.set(0, config, 0).map_err(map_err(maps::CONFIG))
    }

    /// The ring buffer of connects refused by the deny trie (taken once, by the reader).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Replaces the kernel's policy verdicts: `(cgroup id or 0 for all, destination, deny)`.
    /// The longest prefix wins within a scope, so `ALLOW` entries carve targets out of a
    /// `DENY` default.
    pub fn set_denied(&mut self, entries: &[(u64, DstPrefix, bool)]) -> Result<(), RedirectError> {
        if entries.len() > gateway_common::MAX_PREFIXES as usize {
            return Err(RedirectError::TooManyPrefixes(entries.len()));
        }
        let old: Vec<Key<DenyKey>> = self.deny.keys().filter_map(Result::ok).collect();
        let new: Vec<(u32, DenyKey, u8)> = entries
            .iter()
            .map(|(cgroup, prefix, deny)| {
                let (bits, dst) = prefix.key();
                (
                    bits - DST_KEY_FIXED_BITS + DENY_KEY_FIXED_BITS,
                    DenyKey {
                        cgroup_id_be: cgroup.to_be_bytes(),
                        dst,
                    },
                    if *deny {
                        deny_verdict::DENY
                    } else {
                        deny_verdict::ALLOW
                    },
                )
            })
            .collect();
        // Allows first, then denies: while the update runs, nothing the new policy allows is
        // refused by a half-written table.
        for (bits, key, verdict) in new
            .iter()
            .filter(|e| e.2 == deny_verdict::ALLOW)
            .chain(new.iter().filter(|e| e.2 != deny_verdict::ALLOW))
        {
            self.deny
                .insert(&Key::new(*bits, *key), verdict, 0)
                .map_err(map_err(maps::DENY))?;
        }
        for key in old {
            let (bits, data) = (key.prefix_len(), key.data());
            if !new.iter().any(|(b, k, _)| *b == bits && *k == data) {
                let _ = self.deny.remove(&key);
            }
        }
        self.set_flag(config_flags::DENY_ACTIVE, !new.is_empty())
    }

    /// Attaches every program to the cgroup (`rel` is relative to the cgroup2 mount) and pins
    /// the links; then removes links of earlier generations for that cgroup.
    pub fn attach(&mut self, rel: &str) -> Result<(), RedirectError> {
        let dir = self.cgroup2.join(rel);
        let cgroup = fs::File::open(&dir).map_err(|e| RedirectError::Cgroup(dir.clone(), e))?;
        let link_dir = self.pin_dir.join("links").join(escape(rel));
        fs::create_dir_all(&link_dir).map_err(|e| RedirectError::PinDir(link_dir.clone(), e))?;
        let suffix = format!("-{}", self.generation);
        for name in programs::ALL {
            let pin = link_dir.join(format!("{name}{suffix}"));
            if pin.exists() {
                continue; // already attached by this daemon
            }
            let program = self
                .ebpf
                .program_mut(name)
                .ok_or(RedirectError::Missing(name))?;
            // bpf_link attachments take no flags (EINVAL otherwise) and always coexist with
            // other programs on the cgroup, like BPF_F_ALLOW_MULTI: hence `Single` (= 0).
            let link: FdLink = match program {
                Program::SockOps(p) => {
                    let id = p
                        .attach(&cgroup, CgroupAttachMode::Single)
                        .map_err(prog_err(name))?;
                    p.take_link(id)
                        .map_err(prog_err(name))?
                        .try_into()
                        .map_err(|e: aya::programs::links::LinkError| {
                            RedirectError::Pin(pin.clone(), e.to_string())
                        })?
                }
                Program::CgroupSockAddr(p) => {
                    let id = p
                        .attach(&cgroup, CgroupAttachMode::Single)
                        .map_err(prog_err(name))?;
                    p.take_link(id)
                        .map_err(prog_err(name))?
                        .try_into()
                        .map_err(|e: aya::programs::links::LinkError| {
                            RedirectError::Pin(pin.clone(), e.to_string())
                        })?
                }
                _ => return Err(RedirectError::Missing(name)),
            };
            link.pin(&pin)
                .map_err(|e| RedirectError::Pin(pin.clone(), error_chain(&e)))?;
        }
        // The new generation is in place: now drop the old one (never a gap, never a double).
        let entries =
            fs::read_dir(&link_dir).map_err(|e| RedirectError::Unpin(link_dir.clone(), e))?;
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().ends_with(&suffix) {
                fs::remove_file(entry.path()).map_err(|e| RedirectError::Unpin(entry.path(), e))?;
            }
        }
        tracing::info!(cgroup = %dir.display(), "programs attached");
        Ok(())
    }

    /// Detaches the programs from a cgroup by removing its link pins.
    pub fn detach(&mut self, rel: &str) -> Result<(), RedirectError> {
        let link_dir = self.pin_dir.join("links").join(escape(rel));
        if !link_dir.exists() {
            return Err(RedirectError::NotAttached(rel.to_string()));
        }
        fs::remove_dir_all(&link_dir).map_err(|e| RedirectError::Unpin(link_dir.clone(), e))?;
        tracing::info!(cgroup = rel, "programs detached");
        Ok(())
    }

    /// Cgroups (relative names) with pinned links, from this or an earlier daemon.
    pub fn attached(&self) -> Vec<String> {
        attached_in(&self.pin_dir)
    }

    pub fn stats(&self) -> KernelStats {
        let counter = |c: Counter| {
            self.counters
                .get(&(c as u32), 0)
                .map_or(0, |v| v.iter().sum::<u64>())
        };
        KernelStats {
            redirected: counter(Counter::Redirected),
            excluded: counter(Counter::Excluded),
            denied: counter(Counter::Denied),
            bypassed: counter(Counter::Bypassed),
            not_configured: counter(Counter::NotConfigured),
            map_full: counter(Counter::MapFull),
            published: counter(Counter::Published),
            peer_rewritten: counter(Counter::PeerRewritten),
            events_lost: counter(Counter::EventsLost),
            tracked_sockets: self.orig_dst.len(),
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Cgroups with pinned links under an instance's pin dir.
pub fn attached_in(pin_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(pin_dir.join("links"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| unescape(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Whether an instance's programs are attached to `rel` (used by `exec` to refuse running a
/// command in a cgroup that nothing governs).
pub fn is_attached(pin_dir: &Path, rel: &str) -> bool {
    let mut path = rel.trim_matches('/');
    loop {
        let dir = pin_dir.join("links").join(escape(path));
        if fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
            return true;
        }
        match path.rsplit_once('/') {
            Some((parent, _)) => path = parent,
            None => return false,
        }
    }
}

/// bpffs names cannot contain `/`, and bpffs refuses names with a `.` (EPERM):
/// `%` → `%25`, `/` → `%2F`, `.` → `%2E`.
fn escape(rel: &str) -> String {
    rel.replace('%', "%25")
        .replace('/', "%2F")
        .replace('.', "%2E")
}

fn unescape(name: &str) -> String {
    name.replace("%2E", ".")
        .replace("%2F", "/")
        .replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_helper_is_named_from_the_verifier_log() {
        // Linux 5.10 meeting the per-CPU lookup (a number past its last helper).
        let old =
            "func#0 @0\n0: (85) call unknown#195\ninvalid func unknown#195\nprocessed 12 insns";
        assert_eq!(
            missing_helper(old).as_deref(),
            Some("#195, bpf_map_lookup_percpu_elem (Linux 5.19)")
        );
        // A helper the kernel knows but does not offer to this program type.
        let typed = "7: (85) call bpf_get_current_comm#16\nunknown func bpf_get_current_comm#16\n";
        assert_eq!(
            missing_helper(typed).as_deref(),
            Some("#16, bpf_get_current_comm")
        );
        let newer = "program of this type cannot use helper bpf_sk_storage_get#107";
        assert_eq!(
            missing_helper(newer).as_deref(),
            Some("#107, bpf_sk_storage_get")
        );
        // Other refusals stay what they are.
        assert_eq!(missing_helper("R1 invalid mem access 'scalar'"), None);
        assert_eq!(missing_helper(""), None);
    }

    /// The wording the parser expects is the running kernel's: a program calling a helper
    /// number no kernel has is refused with a log [`missing_helper`] reads. (Root: loading a
    /// program needs `CAP_BPF`; `cargo xtask test` runs as root.)
    #[test]
    fn the_running_kernel_words_a_missing_helper_as_expected() {
        // call #9999; r0 = 0; exit
        let insns: [u64; 3] = [
            u64::from_le_bytes([0x85, 0, 0, 0, 0x0f, 0x27, 0, 0]),
            u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
        // log_size, log_buf; the rest zero.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&13u32.to_ne_bytes()); // BPF_PROG_TYPE_SOCK_OPS
        attr[4..8].copy_from_slice(&3u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
        attr[28..32].copy_from_slice(&u32::try_from(log.len()).unwrap().to_ne_bytes());
        attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
        // SAFETY: BPF_PROG_LOAD reads `attr` (its size given) and the buffers it points to,
        // all alive for the call, and writes at most `log.len()` bytes of log.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                5, // BPF_PROG_LOAD
                attr.as_mut_ptr(),
                u32::try_from(attr.len()).unwrap(),
            )
        };
        let error = std::io::Error::last_os_error();
        assert_eq!(fd, -1, "a program calling helper #9999 was accepted");
        assert_eq!(
            error.raw_os_error(),
            Some(libc::EINVAL),
            "{error} (root is needed)"
        );
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        assert_eq!(
            missing_helper(&text).as_deref(),
            Some("#9999"),
            "verifier log: {text}"
        );
    }

    #[test]
    fn parses_destination_prefixes() {
        let p: DstPrefix = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            (p.net, p.prefix, p.port),
            ("10.0.0.0".parse().unwrap(), 8, None)
        );
        let p: DstPrefix = "127.0.0.53/32:53".parse().unwrap();
        assert_eq!((p.prefix, p.port), (32, Some(53)));
        let p: DstPrefix = "192.168.1.7".parse().unwrap();
        assert_eq!((p.prefix, p.port), (32, None));
        let p: DstPrefix = "[::1]/128:5432".parse().unwrap();
        assert_eq!(
            (p.net, p.prefix, p.port),
            ("::1".parse().unwrap(), 128, Some(5432))
        );
        let p: DstPrefix = "[fd00::/8]:443".parse().unwrap();
        assert_eq!((p.prefix, p.port), (8, Some(443)));
        let p: DstPrefix = "fd00::/8".parse().unwrap();
        assert_eq!((p.prefix, p.port), (8, None));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.1:0",
            "10.0.0.1:x",
            "nope",
            "[::1",
            "::1/129",
        ] {
            assert!(bad.parse::<DstPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_keys_put_family_and_port_first() {
        let p: DstPrefix = "127.0.0.0/8:80".parse().unwrap();
        let (bits, key) = p.key();
        assert_eq!(bits, 32 + 8);
        assert_eq!(key.family_be, AF_INET.to_be());
        assert_eq!(key.port_be, 80u16.to_be());
        assert_eq!(key.addr[0].to_ne_bytes(), [127, 0, 0, 0]);
    }

    #[test]
    fn peer_keys_fold_v4_mapped_addresses() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().unwrap();
        let plain: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(peer_key(mapped), peer_key(plain));
        let v6: SocketAddr = "[::1]:4000".parse().unwrap();
        assert_eq!(peer_key(v6).family, AF_INET6);
        assert_eq!(ip_of(AF_INET6, peer_key(v6).addr), v6.ip());
        assert_eq!(ip_of(AF_INET, peer_key(plain).addr), plain.ip());
    }

    #[test]
    fn escapes_cgroup_names_reversibly() {
        for name in [
            "react-gateway",
            "system.slice/x.service",
            "a%2Fb/c",
            "a%2E.b",
        ] {
            assert_eq!(unescape(&escape(name)), name);
            assert!(!escape(name).contains('/') && !escape(name).contains('.'));
        }
    }
}
