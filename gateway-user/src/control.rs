//! The control socket (`STATE_DIR/control.sock`, mode 0600, root only): one JSON request per
//! line, one JSON response per line. Serves `status`, `attach`, `detach` and the
//! `approvals` commands.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

pub use crate::approval::Peer;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot bind control socket {0}: {1}")]
    Bind(PathBuf, std::io::Error),
    #[error(
        "no daemon is answering on {0} ({1}): is `react-gateway run` running with this --state-dir?"
    )]
    Connect(PathBuf, std::io::Error),
    #[error("control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent a malformed response: {0}")]
    Protocol(String),
    #[error("{0}")]
    Daemon(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Attach {
        path: String,
    },
    Detach {
        path: String,
    },
    /// The held operations the caller may decide on.
    Approvals,
    /// `grant_secs`: `--for` (else the rule's `grant`); `sudo_uid`: the person behind a root
    /// caller (`SUDO_UID`), whom the approvers are checked against.
    Approve {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sudo_uid: Option<u32>,
    },
    Deny {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sudo_uid: Option<u32>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Response {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Handles one request of `peer`; implemented by the daemon.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request,
        peer: Peer,
    ) -> impl std::future::Future<Output = Result<serde_json::Value, String>> + Send;
}

/// Binds the socket with mode 0600 (removing a stale one).
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
    Ok(listener)
}

pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: std::sync::Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(cred) = stream.peer_cred() else { continue };
                let peer = Peer {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
                };
                let handler = std::sync::Arc::clone(&handler);
                tokio::spawn(async move {
                    if let Err(error) = connection(stream, handler, peer).await {
                        tracing::debug!(%error, "control connection ended");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn connection<H: Handler>(
    stream: UnixStream,
    handler: std::sync::Arc<H>,
    peer: Peer,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(1 << 20)).lines();
    while let Some(line) = lines.next_line().await? {
        // Root only, whatever the file mode says.
        let response = if peer.uid == 0 {
            match serde_json::from_str::<Request>(&line) {
                Ok(request) => match handler.handle(request, peer).await {
                    Ok(data) => Response {
                        ok: true,
                        data: Some(data),
                        error: None,
                    },
                    Err(error) => Response {
                        ok: false,
                        data: None,
                        error: Some(error),
                    },
                },
                Err(error) => Response {
                    ok: false,
                    data: None,
                    error: Some(format!("bad request: {error}")),
                },
            }
        } else {
            Response {
                ok: false,
                data: None,
                error: Some("permission denied: the control socket is for root only".into()),
            }
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

/// Sends one request to the daemon of a state dir and returns its data.
pub async fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, ControlError> {
    let stream = tokio::time::timeout(Duration::from_secs(5), UnixStream::connect(socket))
        .await
        .map_err(|_| {
            ControlError::Connect(socket.to_path_buf(), std::io::ErrorKind::TimedOut.into())
        })?
        .map_err(|e| ControlError::Connect(socket.to_path_buf(), e))?;
    let (read, mut write) = stream.into_split();
    let mut line =
        serde_json::to_vec(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut lines = BufReader::new(read).lines();
    let reply = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| ControlError::Protocol("no answer within 30 s".into()))??
        .ok_or_else(|| ControlError::Protocol("connection closed without an answer".into()))?;
    let response: Response =
        serde_json::from_str(&reply).map_err(|e| ControlError::Protocol(e.to_string()))?;
    if response.ok {
        Ok(response.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ControlError::Daemon(response.error.unwrap_or_default()))
    }
}
