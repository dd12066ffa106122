//! The host environment the daemon needs: privileges, kernel version, the cgroup v2 mount and
//! the BPF filesystem. Checked before anything is loaded, so a missing piece is reported as one
//! line (exit code 2) instead of a verifier or syscall error later.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Where the kernel mounts bpffs by convention; used when no bpffs is mounted yet.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// Oldest kernel with the hooks we attach (`bpf_link` for cgroups 5.7, sockops state
/// callbacks, getpeername hooks 5.8), the floor DESIGN.md names. One helper is newer: sockops
/// reads connect4's per-CPU slot with `bpf_map_lookup_percpu_elem` (mainline 5.19). The
/// version alone cannot tell whether a distribution kernel has it backported (RHEL 9 reports
/// 5.14), so a kernel without it passes this check and is refused when the programs load,
/// naming the helper ([`crate::redirect::RedirectError::KernelLacks`], exit 2).
pub const MIN_KERNEL: (u32, u32) = (5, 8);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("react-gateway must run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    NotPrivileged,
    #[error("kernel {0}.{1} is too old: react-gateway needs Linux {maj}.{min} or newer", maj = MIN_KERNEL.0, min = MIN_KERNEL.1)]
    KernelTooOld(u32, u32),
    #[error("cannot read the kernel version: {0}")]
    KernelVersion(String),
    #[error(
        "no cgroup v2 mount found in /proc/self/mountinfo: mount cgroup2 (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`)"
    )]
    NoCgroup2,
    #[error("no bpffs mounted and mounting one at {DEFAULT_BPFFS} failed: {0}")]
    Bpffs(String),
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(std::io::Error),
}

/// The facts about the host that the daemon works with.
#[derive(Debug, Clone)]
pub struct Host {
    pub cgroup2: PathBuf,
    pub bpffs: PathBuf,
    pub kernel: (u32, u32),
}

/// Checks everything `run` needs, mounting bpffs if it is missing.
pub fn check() -> Result<Host, HostError> {
    if !privileged() {
        return Err(HostError::NotPrivileged);
    }
    let kernel = kernel_version()?;
    if kernel < MIN_KERNEL {
        return Err(HostError::KernelTooOld(kernel.0, kernel.1));
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").map_err(HostError::Mountinfo)?;
    let cgroup2 = find_mount(&mounts, "cgroup2").ok_or(HostError::NoCgroup2)?;
    let bpffs = match find_mount(&mounts, "bpf") {
        Some(path) => path,
        None => mount_bpffs()?,
    };
    Ok(Host {
        cgroup2,
        bpffs,
        kernel,
    })
}

/// The cgroup v2 mount point (for commands that do not need the full check, like `exec`).
pub fn cgroup2_mount() -> Result<PathBuf, HostError> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").map_err(HostError::Mountinfo)?;
    find_mount(&mounts, "cgroup2").ok_or(HostError::NoCgroup2)
}

/// The bpffs mount point, if one is mounted.
pub fn bpffs_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    find_mount(&mounts, "bpf")
}

fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    // CAP_NET_ADMIN (12), CAP_SYS_ADMIN (21), CAP_BPF (39).
    effective_capabilities()
        .is_some_and(|caps| [12, 21, 39].iter().all(|bit| caps & (1 << bit) != 0))
}

/// This process's effective capability set (`CapEff` of `/proc/self/status`), one bit per
/// capability number.
pub fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn kernel_version() -> Result<(u32, u32), HostError> {
    let uts = nix::sys::utsname::uname().map_err(|e| HostError::KernelVersion(e.to_string()))?;
    let release = uts.release().to_string_lossy().into_owned();
    parse_kernel_release(&release).ok_or(HostError::KernelVersion(release))
}

/// `"6.18.44-fc-v657"` → `(6, 18)`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Finds the first mount of `fstype` in a `/proc/self/mountinfo` text.
pub fn find_mount(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mountpoint options [optional...] - fstype source super
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        (right.split(' ').next()? == fstype).then(|| PathBuf::from(unescape_mount(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal `\ooo`.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code = u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_bpffs() -> Result<PathBuf, HostError> {
    let target = Path::new(DEFAULT_BPFFS);
    fs::create_dir_all(target).map_err(|e| HostError::Bpffs(e.to_string()))?;
    nix::mount::mount(
        Some("bpffs"),
        target,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| HostError::Bpffs(e.to_string()))?;
    tracing::info!(path = %target.display(), "mounted bpffs");
    Ok(target.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /sys/fs/b\\040pf rw,relatime shared:9 - bpf bpffs rw
";

    #[test]
    fn finds_cgroup2_on_hybrid_hosts() {
        assert_eq!(
            find_mount(MOUNTINFO, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_bpffs_with_optional_fields_and_escapes() {
        assert_eq!(
            find_mount(MOUNTINFO, "bpf"),
            Some(PathBuf::from("/sys/fs/b pf"))
        );
        assert_eq!(find_mount(MOUNTINFO, "nfs"), None);
    }

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.8.0"), Some((5, 8)));
        assert_eq!(parse_kernel_release("garbage"), None);
    }
}
