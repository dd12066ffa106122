//! The state directory (`--state-dir`) and what lives in it: the `SQLite` store, the control
//! socket, the record of the running instance (so `exec` and the CLI find the governed cgroup),
//! and the name of this instance's bpffs pin directory.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/react-gateway";
/// Default governed parent cgroup, relative to the cgroup2 mount.
pub const DEFAULT_CGROUP: &str = "react-gateway";
/// Default child cgroup of `exec`.
pub const DEFAULT_EXEC_CGROUP: &str = "default";
pub const DEFAULT_POLICY_DIR: &str = "/etc/react-gateway/policies";
/// Directory under the bpffs mount that holds one sub-directory per instance.
pub const PIN_ROOT: &str = "react-gateway";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("{0} is corrupt ({1}); remove it and restart the daemon")]
    Corrupt(PathBuf, serde_json::Error),
}

/// Paths inside one state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory (mode 0700: it holds keys and recordings).
    pub fn create(&self) -> Result<(), StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| StateError::Create(self.root.clone(), e))
    }

    /// The per-installation key of the `hash` masking strategy (HMAC-SHA256).
    pub fn mask_key_path(&self) -> PathBuf {
        self.root.join("mask.key")
    }

    /// Reads the masking key, creating it (32 random bytes, mode 0600) on first use.
    pub fn mask_key(&self) -> Result<std::sync::Arc<[u8]>, StateError> {
        let path = self.mask_key_path();
        if let Ok(key) = fs::read(&path)
            && key.len() >= 32
        {
            return Ok(key.into());
        }
        let key = random_bytes::<32>().map_err(|e| StateError::Write(path.clone(), e))?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StateError::Write(path.clone(), e))?;
        file.write_all(&key)
            .and_then(|()| file.sync_all())
            .map_err(|e| StateError::Write(path, e))?;
        Ok(key.to_vec().into())
    }

    /// The installation's masking key when readable (so `policy test` hashes like the daemon),
    /// else a throw-away key.
    pub fn mask_key_or_ephemeral(&self) -> std::sync::Arc<[u8]> {
        match fs::read(self.mask_key_path()) {
            Ok(key) if key.len() >= 32 => key.into(),
            _ => random_bytes::<32>().map_or_else(|_| vec![0; 32].into(), |k| k.to_vec().into()),
        }
    }

    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("gateway.db")
    }

    pub fn default_store_url(&self) -> String {
        format!("sqlite://{}", self.database().display())
    }

    fn instance_file(&self) -> PathBuf {
        self.root.join("instance.json")
    }

    /// A stable name for this state directory's bpffs pins: daemons with different state dirs
    /// never share maps or links, and a restart finds its predecessor's pins.
    pub fn pin_name(&self) -> String {
        let canonical = fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in canonical.as_os_str().as_encoded_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }

    pub fn pin_dir(&self, bpffs: &Path) -> PathBuf {
        bpffs.join(PIN_ROOT).join(self.pin_name())
    }

    pub fn read_instance(&self) -> Result<Option<Instance>, StateError> {
        let path = self.instance_file();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError::Corrupt(path, e)),
            Err(_) => Ok(None),
        }
    }

    pub fn write_instance(&self, instance: &Instance) -> Result<(), StateError> {
        let path = self.instance_file();
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(instance).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| StateError::Write(path, e))
    }
}

/// What a daemon records about itself in its state dir.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Instance {
    /// Governed parent cgroup, relative to the cgroup2 mount (e.g. `react-gateway`).
    pub cgroup: String,
    pub cgroup2_mount: PathBuf,
    pub listen_port: u16,
    pub pin_dir: PathBuf,
    pub pid: u32,
    /// The policy directory the daemon runs with (`sessions verify` reads it).
    #[serde(default)]
    pub policy_dir: Option<PathBuf>,
}

pub(crate) fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read as _;
    let mut bytes = [0; N];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}
