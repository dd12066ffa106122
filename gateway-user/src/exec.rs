//! `react-gateway exec`: runs a command inside a governed cgroup, with TLS trust pointed at
//! the node CA when there is one. Works whether or not the daemon runs: the programs stay
//! pinned, so with the daemon down the command's connects fail closed.

use std::{os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use crate::{
    cgroup::{self, CgroupError},
    host, redirect,
    state::{DEFAULT_CGROUP, StateDir},
};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(
        "cgroup /{0} is not governed: start `react-gateway run` with this --state-dir first (refusing to run ungoverned)"
    )]
    NotGoverned(String),
    #[error("cannot run {0}: {1}")]
    Spawn(String, std::io::Error),
}

/// Moves this process into `PARENT/sub` and replaces it with `command`. Returns only on error.
pub fn exec(state: &StateDir, sub: &str, command: &[String]) -> ExecError {
    match prepare(state, sub) {
        Ok(env) => {
            let mut cmd = Command::new(&command[0]);
            cmd.args(&command[1..]);
            for (key, value) in env {
                cmd.env(key, value);
            }
            let error = cmd.exec();
            ExecError::Spawn(command[0].clone(), error)
        }
        Err(error) => error,
    }
}

fn prepare(state: &StateDir, sub: &str) -> Result<Vec<(&'static str, PathBuf)>, ExecError> {
    let (mount, parent, pin_dir) = match state.read_instance()? {
        Some(instance) => (
            instance.cgroup2_mount,
            instance.cgroup,
            Some(instance.pin_dir),
        ),
        None => (
            host::cgroup2_mount()?,
            DEFAULT_CGROUP.to_string(),
            host::bpffs_mount().map(|b| state.pin_dir(&b)),
        ),
    };
    let sub = cgroup::relative_name(sub)?;
    let rel = format!("{parent}/{sub}");
    if !pin_dir
        .as_deref()
        .is_some_and(|p| redirect::is_attached(p, &rel))
    {
        return Err(ExecError::NotGoverned(rel));
    }
    let dir = mount.join(&rel);
    cgroup::ensure(&dir)?;
    cgroup::join_self(&dir)?;
    let mut env = Vec::new();
    let bundle = state.root().join("ca-bundle.pem");
    if bundle.exists() {
        for key in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            // boto3 and the AWS CLI (Bedrock).
            "AWS_CA_BUNDLE",
        ] {
            env.push((key, bundle.clone()));
        }
    }
    Ok(env)
}
