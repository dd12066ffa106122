//! The daemon's policy in force, reloaded atomically: sessions take an `Arc` snapshot when they
//! start and keep it; a reload swaps the whole compiled policy or, if the new files do not
//! load, keeps the old one and remembers why (shown by `status` as `file:line:col`).
//!
//! Changes are noticed by polling a cheap fingerprint of the directory (names, sizes, mtimes,
//! inodes) twice a second, which also sees atomic renames and symlink swaps (Kubernetes
//! `ConfigMaps`) that inotify on the directory can miss; `SIGHUP` reloads at once.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use serde::Serialize;

use super::{Diagnostic, Policy, PolicyError, Severity, load};

/// What `status` shows about the policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    /// `enforcing` or `record-only` (no policy files).
    pub mode: &'static str,
    pub dir: PathBuf,
    pub version: String,
    pub files: Vec<PathBuf>,
    pub loaded_at: String,
    pub reloads: u64,
    pub warnings: Vec<String>,
    /// Why the last reload failed (the policy above stays in force), as `file:line:col: …`.
    pub last_error: Option<Vec<String>>,
    pub last_error_at: Option<String>,
}

pub struct LivePolicy {
    dir: PathBuf,
    current: RwLock<Arc<Policy>>,
    status: Mutex<PolicyStatus>,
    fingerprint: Mutex<Fingerprint>,
}

impl LivePolicy {
    /// Loads the policy in `dir`; a missing or empty directory is record-only mode.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let fingerprint = fingerprint(dir);
        let policy = if dir.exists() {
            load(dir)?
        } else {
            Policy::record_only()
        };
        let status = PolicyStatus {
            mode: mode(&policy),
            dir: dir.to_path_buf(),
            version: policy.version.clone(),
            files: policy.sources.clone(),
            loaded_at: crate::session::now(),
            reloads: 0,
            warnings: policy.warnings.iter().map(ToString::to_string).collect(),
            last_error: None,
            last_error_at: None,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            current: RwLock::new(policy),
            status: Mutex::new(status),
            fingerprint: Mutex::new(fingerprint),
        })
    }

    /// The policy in force (a snapshot: later reloads do not change it).
    pub fn current(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(policy) => Arc::clone(&policy),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn status(&self) -> PolicyStatus {
        crate::lock(&self.status).clone()
    }

    /// Whether the directory changed since the last (attempted) load.
    pub fn changed(&self) -> bool {
        let now = fingerprint(&self.dir);
        let mut last = crate::lock(&self.fingerprint);
        if *last == now {
            return false;
        }
        *last = now;
        true
    }

    /// Reloads from disk. `Ok(Some(policy))` when a new version is now in force, `Ok(None)` when
    /// the files compile to the version already in force, `Err` when they do not load (the old
    /// policy stays).
    pub fn reload(&self) -> Result<Option<Arc<Policy>>, PolicyError> {
        let loaded = if self.dir.exists() {
            load(&self.dir)
        } else {
            Ok(Policy::record_only())
        };
        let mut status = crate::lock(&self.status);
        match loaded {
            Ok(policy) => {
                status.last_error = None;
                status.last_error_at = None;
                if policy.version == self.current().version {
                    return Ok(None);
                }
                status.mode = mode(&policy);
                status.version.clone_from(&policy.version);
                status.files.clone_from(&policy.sources);
                status.loaded_at = crate::session::now();
                status.reloads += 1;
                status.warnings = policy.warnings.iter().map(ToString::to_string).collect();
                let mut current = self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *current = Arc::clone(&policy);
                Ok(Some(policy))
            }
            Err(error) => {
                status.last_error = Some(
                    error
                        .0
                        .iter()
                        .filter(|d: &&Diagnostic| d.severity == Severity::Error)
                        .map(ToString::to_string)
                        .collect(),
                );
                status.last_error_at = Some(crate::session::now());
                Err(error)
            }
        }
    }
}

fn mode(policy: &Policy) -> &'static str {
    if policy.is_record_only() {
        "record-only"
    } else {
        "enforcing"
    }
}

/// Name, size, mtime (s, ns) and inode of each policy file.
type Fingerprint = Vec<(PathBuf, u64, i64, i64, u64)>;

/// Names, sizes, mtimes and inodes of the `.toml` files in `dir` (following symlinks).
fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
                .filter_map(|e| {
                    let meta = std::fs::metadata(e.path()).ok()?;
                    Some((
                        e.path(),
                        meta.len(),
                        meta.mtime(),
                        meta.mtime_nsec(),
                        meta.ino(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
