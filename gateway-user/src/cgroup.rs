//! cgroup v2 helpers: paths relative to the mount, creating governed cgroups, moving a process,
//! and turning a cgroup id (what the kernel reports) back into a path.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
    sync::RwLock,
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroup name {0:?}: use a relative path like `agents/team-a` without `..`")]
    InvalidName(String),
    #[error("cannot create cgroup {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("cannot move process into cgroup {0}: {1}")]
    Join(PathBuf, std::io::Error),
    #[error("cgroup {0} does not exist")]
    Missing(PathBuf),
}

/// Validates a cgroup name relative to the cgroup2 mount (leading `/` allowed) and returns it
/// without the leading slash.
pub fn relative_name(name: &str) -> Result<String, CgroupError> {
    let trimmed = name.trim_matches('/');
    let path = Path::new(trimmed);
    let valid = !trimmed.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if valid {
        Ok(trimmed.to_string())
    } else {
        Err(CgroupError::InvalidName(name.to_string()))
    }
}

/// Resolves a user-given cgroup (absolute path under the mount, or relative to it) to
/// `(absolute directory, relative name)`.
pub fn resolve(mount: &Path, given: &str) -> Result<(PathBuf, String), CgroupError> {
    let given_path = Path::new(given);
    let relative = match given_path.strip_prefix(mount) {
        Ok(rest) => rest.to_string_lossy().into_owned(),
        Err(_) => given.to_string(),
    };
    let relative = relative_name(&relative)?;
    Ok((mount.join(&relative), relative))
}

/// Creates the cgroup directory (and parents) if missing.
pub fn ensure(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir).map_err(|e| CgroupError::Create(dir.to_path_buf(), e))
}

/// Moves the calling process into the cgroup `dir`.
pub fn join_self(dir: &Path) -> Result<(), CgroupError> {
    fs::write(dir.join("cgroup.procs"), b"0").map_err(|e| CgroupError::Join(dir.to_path_buf(), e))
}

/// The cgroup id the kernel reports for `dir` (its inode number on cgroup2).
pub fn id_of(dir: &Path) -> Option<u64> {
    fs::metadata(dir).ok().map(|m| m.ino())
}

/// Maps cgroup ids to paths (`/react-gateway/agent-1`), with a cache. Lookups try the
/// process's own `/proc/PID/cgroup` first (cheap, exact), then walk the governed trees.
/// The cgroup2 path of process `pid` relative to the mount (`/proc/PID/cgroup`'s `0::` line).
fn proc_cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(rel.trim_start_matches('/').to_owned())
}

#[derive(Debug)]
pub struct CgroupNames {
    mount: PathBuf,
    /// Governed cgroups (relative names), walked only when `/proc/PID/cgroup` cannot answer
    /// (the process already exited).
    roots: RwLock<Vec<String>>,
    cache: RwLock<HashMap<u64, String>>,
}

impl CgroupNames {
    pub fn new(mount: PathBuf, roots: Vec<String>) -> Self {
        Self {
            mount,
            roots: RwLock::new(roots),
            cache: RwLock::new(HashMap::new()),
        }
    }

    pub fn add_root(&self, rel: &str) {
        if let Ok(mut roots) = self.roots.write() {
            roots.push(rel.to_string());
        }
    }

    pub fn remove_root(&self, rel: &str) {
        if let Ok(mut roots) = self.roots.write() {
            roots.retain(|r| r != rel);
        }
    }

    pub fn name(&self, id: u64, pid: u32) -> Option<String> {
        if let Some(name) = self.cache.read().ok().and_then(|c| c.get(&id).cloned()) {
            return Some(name);
        }
        let found = self.from_proc(id, pid).or_else(|| {
            let roots = self.roots.read().ok()?;
            roots
                .iter()
                .find_map(|root| self.walk(id, &self.mount.join(root)))
        });
        if let (Some(name), Ok(mut cache)) = (&found, self.cache.write()) {
            if cache.len() > 65_536 {
                cache.clear();
            }
            cache.insert(id, name.clone());
        }
        found
    }

    /// Whether process `pid` runs in a governed cgroup or below one (where agents run). A
    /// process whose cgroup cannot be read counts as governed.
    pub fn governs(&self, pid: u32) -> bool {
        let Some(rel) = proc_cgroup(pid) else {
            return true;
        };
        self.roots.read().map_or(true, |roots| {
            roots.iter().any(|root| {
                rel == *root
                    || rel
                        .strip_prefix(root.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
        })
    }

    fn from_proc(&self, id: u64, pid: u32) -> Option<String> {
        let dir = self.mount.join(proc_cgroup(pid)?);
        (id_of(&dir) == Some(id)).then(|| self.display(&dir))
    }

    fn walk(&self, id: u64, dir: &Path) -> Option<String> {
        if id_of(dir) == Some(id) {
            return Some(self.display(dir));
        }
        fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .find_map(|e| self.walk(id, &e.path()))
    }

    fn display(&self, dir: &Path) -> String {
        let rel = dir.strip_prefix(&self.mount).unwrap_or(dir);
        format!("/{}", rel.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_governed_in_or_below_a_root_only() {
        let own = proc_cgroup(std::process::id()).expect("own cgroup");
        let names = |roots: &[&str]| {
            CgroupNames::new(
                PathBuf::from("/sys/fs/cgroup"),
                roots.iter().map(|r| (*r).to_owned()).collect(),
            )
        };
        assert!(names(&[&own]).governs(std::process::id()));
        if let Some((parent, _)) = own.rsplit_once('/') {
            assert!(names(&[parent]).governs(std::process::id()));
            // A sibling whose name the own cgroup's only starts with does not count.
            assert!(!names(&[&format!("{own}x")]).governs(std::process::id()));
        }
        assert!(!names(&["react-gateway-no-such"]).governs(std::process::id()));
        // A process that is gone cannot be told apart from an agent: governed.
        assert!(names(&[]).governs(u32::MAX));
    }

    #[test]
    fn names_are_relative_and_safe() {
        assert_eq!(
            relative_name("/react-gateway/agent-1").unwrap(),
            "react-gateway/agent-1"
        );
        assert_eq!(relative_name("react-gateway").unwrap(), "react-gateway");
        assert!(relative_name("../etc").is_err());
        assert!(relative_name("a/../b").is_err());
        assert!(relative_name("/").is_err());
    }

    #[test]
    fn resolves_absolute_and_relative_paths() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        let (dir, rel) = resolve(mount, "/sys/fs/cgroup/unified/system.slice/x.service").unwrap();
        assert_eq!(dir, mount.join("system.slice/x.service"));
        assert_eq!(rel, "system.slice/x.service");
        let (dir, rel) = resolve(mount, "agents").unwrap();
        assert_eq!((dir, rel.as_str()), (mount.join("agents"), "agents"));
    }
}
