//! The daemon (`react-gateway run`): checks the host, opens the store, binds the proxy, loads
//! and attaches the kernel programs, serves the control socket, and shuts down gracefully.
//!
//! Order matters for fail-closed behaviour: the proxy listens *before* programs are attached
//! (no governed connect ever meets a closed port on first start), and on exit the pinned
//! programs stay attached unless `--detach-on-exit`, so connects fail while no daemon runs.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::sync::watch;

use crate::{
    approval::{Peer, Verdict},
    cgroup::{self, CgroupNames},
    cli::RunArgs,
    control::{self, Request},
    host,
    policy::{Policy, PolicyError, live::LivePolicy},
    proxy::{self, ProxyContext},
    record::{Chain, Recorder},
    redirect::{DstPrefix, RedirectError, Redirector},
    state::{DEFAULT_CGROUP, DEFAULT_POLICY_DIR, Instance, StateDir},
    store::Store,
};

/// How often idle upstream connections past their time are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Redirect(#[from] RedirectError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("{0}")]
    Listen(std::io::Error),
    #[error("another daemon already runs with state dir {0}")]
    Locked(PathBuf),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the policy does not load:\n{0}")]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Ca(#[from] crate::tls::ca::CaError),
    #[error(transparent)]
    Key(#[from] crate::audit::KeyError),
}

/// How often retention runs (also once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Retention (`[defaults] retention`): prunes sessions older than the policy keeps, leaving a
/// signed checkpoint so the ledger still verifies.
async fn prune_loop(store: Store, signer: Arc<crate::audit::Signer>, live: Arc<LivePolicy>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        let Some(keep) = live.current().defaults.retention else {
            continue;
        };
        let cutoff = crate::session::timestamp(std::time::SystemTime::now() - keep);
        match store.prune(&signer, &cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, %cutoff, "retention pruned old sessions"),
            Err(error) => tracing::warn!(%error, "retention could not prune the store"),
        }
    }
}

/// `--config FILE`: the same settings as the flags of `run`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub policy_dir: Option<PathBuf>,
    pub listen_port: Option<u16>,
    pub cgroup: Option<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    pub detach_on_exit: Option<bool>,
    pub shutdown_grace: Option<String>,
}

/// The resolved settings of one daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state: StateDir,
    pub store_url: String,
    pub policy_dir: PathBuf,
    pub listen_port: u16,
    pub cgroup: String,
    pub exclude: Vec<DstPrefix>,
    pub detach_on_exit: bool,
    pub shutdown_grace: Duration,
    /// Policy directory check interval; zero = reload only on SIGHUP.
    pub policy_poll: Duration,
    pub accept_nat_redirect: bool,
}

impl Settings {
    /// Reads `--config` (if any), then lets flags override it; validates everything.
    pub fn resolve(
        state: StateDir,
        store: Option<String>,
        args: RunArgs,
    ) -> Result<Self, AppError> {
        let config: DaemonConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| AppError::Config(format!("{}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| AppError::Config(format!("{}: {e}", path.display())))?
            }
            None => DaemonConfig::default(),
        };
        let mut exclude = Vec::new();
        for text in config.exclude.iter().chain(&args.exclude) {
            exclude.push(text.parse::<DstPrefix>().map_err(AppError::Config)?);
        }
        let grace = match (args.shutdown_grace, config.shutdown_grace) {
            (Some(d), _) => d.into(),
            (None, Some(text)) => humantime::parse_duration(&text)
                .map_err(|e| AppError::Config(format!("shutdown_grace {text:?}: {e}")))?,
            (None, None) => Duration::from_secs(10),
        };
        let cgroup = cgroup::relative_name(
            args.cgroup
                .or(config.cgroup)
                .as_deref()
                .unwrap_or(DEFAULT_CGROUP),
        )?;
        let listen_port = args
            .listen_port
            .or(config.listen_port)
            .unwrap_or(gateway_common::DEFAULT_LISTEN_PORT);
        if listen_port == 0 {
            return Err(AppError::Config("listen port must be 1-65535".into()));
        }
        Ok(Self {
            store_url: store.unwrap_or_else(|| state.default_store_url()),
            state,
            policy_dir: args
                .policy_dir
                .or(config.policy_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_DIR)),
            listen_port,
            cgroup,
            exclude,
            detach_on_exit: args.detach_on_exit || config.detach_on_exit.unwrap_or(false),
            shutdown_grace: grace,
            policy_poll: args.policy_poll.map_or(POLICY_POLL, Into::into),
            accept_nat_redirect: args.accept_iptables_redirect,
        })
    }
}

/// The running daemon, as seen by the control socket.
struct Daemon {
    settings: Settings,
    host: host::Host,
    started: Instant,
    redirector: Mutex<Redirector>,
    proxy: Arc<ProxyContext>,
    policy: Arc<LivePolicy>,
    /// Sessions that may be open at once (admission control), fixed at start.
    capacity: usize,
}

impl control::Handler for Daemon {
    async fn handle(&self, request: Request, peer: Peer) -> Result<serde_json::Value, String> {
        let approvals = &self.proxy.approvals;
        match request {
            Request::Status => Ok(self.status()),
            Request::Approvals => {
                serde_json::to_value(approvals.list(peer)).map_err(|e| e.to_string())
            }
            Request::Approve {
                id,
                grant_secs,
                sudo_uid,
            } => approvals.decide(
                &id,
                Verdict::Approve {
                    grant: grant_secs.map(Duration::from_secs),
                },
                on_behalf(peer, sudo_uid),
                self.governed(peer),
            ),
            Request::Deny {
                id,
                reason,
                sudo_uid,
            } => approvals.decide(
                &id,
                Verdict::Deny { reason },
                on_behalf(peer, sudo_uid),
                self.governed(peer),
            ),
            Request::Attach { path } => {
                let (_, rel) =
                    cgroup::resolve(&self.host.cgroup2, &path).map_err(|e| e.to_string())?;
                self.redirector
                    .lock()
                    .map_err(|e| e.to_string())?
                    .attach(&rel)
                    .map_err(|e| e.to_string())?;
                self.proxy.names.add_root(&rel);
                Ok(serde_json::json!({ "attached": format!("/{rel}") }))
            }
            Request::Detach { path } => {
                let (_, rel) =
                    cgroup::resolve(&self.host.cgroup2, &path).map_err(|e| e.to_string())?;
                if rel == self.settings.cgroup {
                    return Err(format!(
                        "/{rel} is this daemon's governed parent; stop the daemon with --detach-on-exit instead"
                    ));
                }
                self.redirector
                    .lock()
                    .map_err(|e| e.to_string())?
                    .detach(&rel)
                    .map_err(|e| e.to_string())?;
                self.proxy.names.remove_root(&rel);
                Ok(serde_json::json!({ "detached": format!("/{rel}") }))
            }
        }
    }
}

/// Whom a decision is taken for: the caller, or for root run through `sudo`, the person
/// who ran it (`SUDO_UID`, with their primary group): root could forge anything anyway.
fn on_behalf(peer: Peer, sudo_uid: Option<u32>) -> Peer {
    match sudo_uid {
        Some(uid) if peer.uid == 0 => Peer {
            uid,
            gid: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or(uid, |u| u.gid.as_raw()),
            pid: peer.pid,
        },
        _ => peer,
    }
}

impl Daemon {
    /// Whether `peer` runs in a governed cgroup (where agents run); unknown counts as yes.
    fn governed(&self, peer: Peer) -> bool {
        peer.pid.is_none_or(|pid| self.proxy.names.governs(pid))
    }

    fn status(&self) -> serde_json::Value {
        let (attached, kernel) = match self.redirector.lock() {
            Ok(r) => (r.attached(), Some(r.stats())),
            Err(_) => (Vec::new(), None),
        };
        let p = &self.proxy.stats;
        let r = self.proxy.recorder.stats();
        let (held, grants) = self.proxy.approvals.counts();
        serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "state_dir": self.settings.state.root(),
            "store": redact_url(&self.settings.store_url),
            "listen": [format!("127.0.0.1:{}", self.settings.listen_port), format!("[::1]:{}", self.settings.listen_port)],
            "cgroup": format!("/{}", self.settings.cgroup),
            "cgroup2_mount": self.host.cgroup2,
            "attached": attached.iter().map(|a| format!("/{a}")).collect::<Vec<_>>(),
            "max_open_sessions": self.capacity,
            "excluded": self.settings.exclude.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "policy": self.policy.status(),
            "approvals": {"held": held, "grants": grants},
            "proxy": {
                "accepted": p.accepted.load(Ordering::Relaxed),
                "active": p.active.load(Ordering::Relaxed),
                "sessions": p.sessions.load(Ordering::Relaxed),
                "unattributed": p.unattributed.load(Ordering::Relaxed),
                "upstream_errors": p.upstream_errors.load(Ordering::Relaxed),
                "upstream_reused": p.upstream_reused.load(Ordering::Relaxed),
                "upstream_idle": self.proxy.upstreams.idle(),
                "denied": p.denied.load(Ordering::Relaxed),
            },
            "recorder": {
                "backlog": r.queued.load(Ordering::Relaxed),
                "written": r.written.load(Ordering::Relaxed),
                "write_errors": r.write_errors.load(Ordering::Relaxed),
                "failing": r.failing.load(Ordering::Relaxed),
                "last_error": crate::lock(&r.last_error).clone(),
                "late_events": r.late_events.load(Ordering::Relaxed),
                "raised_batches": r.raised.load(Ordering::Relaxed),
                "refused_sessions": r.refused.load(Ordering::Relaxed),
                "on_record_failure": match self.policy.current().defaults.on_record_failure {
                    crate::policy::OnRecordFailure::Block => "block",
                    crate::policy::OnRecordFailure::Allow => "allow",
                },
            },
            "kernel": kernel,
        })
    }
}

pub use crate::store::redact_url;

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(settings: Settings) -> Result<(), AppError> {
    let host = host::check()?;
    settings.state.create()?;
    let _lock = lock_state(settings.state.root())?;
    raise_fd_limit();

    let cgroup_dir = host.cgroup2.join(&settings.cgroup);
    cgroup::ensure(&cgroup_dir)?;
    // A policy that does not load at start has no predecessor to fall back on: refuse to run.
    let live = Arc::new(LivePolicy::load(&settings.policy_dir)?);
    let ca = crate::tls::NodeCa::load_or_create(settings.state.root())?;

    let store = Store::open(&settings.store_url).await?;
    let signer = Arc::new(crate::audit::Signer::load_or_create(settings.state.root())?);
    let (chain, orphans) = Chain::resume(
        &store,
        Arc::clone(&signer),
        crate::audit::anchor_path(settings.state.root()),
    )
    .await?;
    if orphans > 0 {
        tracing::warn!(
            sessions = orphans,
            "closed sessions left open by a previous daemon"
        );
    }
    tracing::info!(node = signer.node(), store = %redact_url(&settings.store_url), "recording");
    let retention = tokio::spawn(prune_loop(store.clone(), signer, Arc::clone(&live)));
    let (recorder, writer) = Recorder::spawn(store, chain);

    // Listen before attaching: governed connects must never meet a closed port on first start.
    let listeners = proxy::bind(settings.listen_port).map_err(AppError::Listen)?;

    let pin_dir = settings.state.pin_dir(&host.bpffs);
    let (mut redirector, logger) = Redirector::load(&pin_dir, &host.cgroup2, settings.listen_port)?;
    redirector.set_exclusions(&settings.exclude)?;
    // Verdicts before attaching: the first governed connect already meets the policy.
    apply_kernel_policy(&mut redirector, &live.current());
    let denials = redirector.take_events();
    redirector.attach(&settings.cgroup)?;
    // Cgroups attached with `react-gateway attach` before a restart: attach the new generation.
    let mut roots = vec![settings.cgroup.clone()];
    for rel in redirector.attached() {
        if rel == settings.cgroup {
            continue;
        }
        if host.cgroup2.join(&rel).is_dir() {
            redirector.attach(&rel)?;
            roots.push(rel);
        } else {
            tracing::warn!(cgroup = %rel, "previously attached cgroup is gone; dropping its pins");
            let _ = redirector.detach(&rel);
        }
    }
    settings.state.write_instance(&Instance {
        cgroup: settings.cgroup.clone(),
        cgroup2_mount: host.cgroup2.clone(),
        listen_port: settings.listen_port,
        pin_dir: pin_dir.clone(),
        pid: std::process::id(),
        policy_dir: Some(settings.policy_dir.clone()),
    })?;
    if let Some(logger) = logger {
        forward_kernel_logs(logger);
    }

    let ctx = Arc::new(ProxyContext {
        orig_dst: redirector.orig_dst(),
        policy: Arc::clone(&live),
        recorder,
        names: CgroupNames::new(host.cgroup2.clone(), roots),
        accept_nat_redirect: settings.accept_nat_redirect,
        connect_timeout: Duration::from_secs(10),
        tls: Arc::new(crate::tls::TlsContext::new(ca)),
        mask_key: settings.state.mask_key()?,
        upstreams: Arc::new(crate::http::UpstreamPool::new(
            crate::http::POOL_PER_UPSTREAM,
            crate::http::POOL_TIMEOUT,
        )),
        stats: proxy::ProxyStats::default(),
        approvals: crate::approval::Approvals::default(),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (cut_tx, cut_rx) = watch::channel(false);

    let upstreams = Arc::clone(&ctx.upstreams);
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            // Idle upstream connections past their time are closed even when no session
            // asks for that upstream again.
            upstreams.sweep();
        }
    });

    let control_path = settings.state.control_socket();
    let control_listener = control::bind(&control_path)?;
    let capacity = proxy::session_capacity();
    let daemon = Arc::new(Daemon {
        settings: settings.clone(),
        host,
        started: Instant::now(),
        redirector: Mutex::new(redirector),
        proxy: Arc::clone(&ctx),
        policy: Arc::clone(&live),
        capacity,
    });
    let denials_task =
        denials.map(|ring| tokio::spawn(proxy::record_kernel_denials(ring, Arc::clone(&ctx))));
    // SIGHUP's default action is to terminate: take it over before anyone can reach the
    // daemon (the control socket serves next), not when the reload task first runs.
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hup) => Some(hup),
        Err(error) => {
            tracing::warn!(%error, "cannot handle SIGHUP; the policy reloads only by polling");
            None
        }
    };
    let reload_task = tokio::spawn(watch_policy(Arc::clone(&daemon), hup));
    let control_task = tokio::spawn(control::serve(
        control_listener,
        Arc::clone(&daemon),
        shutdown_rx.clone(),
    ));
    let proxy_task = tokio::spawn(proxy::serve(
        listeners,
        Arc::clone(&ctx),
        shutdown_rx,
        cut_rx,
        capacity,
    ));

    tracing::info!(
        port = settings.listen_port,
        max_open_sessions = capacity,
        cgroup = %cgroup_dir.display(),
        state_dir = %settings.state.root().display(),
        policy = %live.status().version,
        mode = live.status().mode,
        "react-gateway running"
    );
    wait_for_signal().await;

    tracing::info!(grace = ?settings.shutdown_grace, "shutting down: no new connections");
    let _ = shutdown_tx.send(true);
    let _ = proxy_task.await;
    let _ = control_task.await;
    sweeper.abort();
    reload_task.abort();
    if let Some(task) = &denials_task {
        task.abort();
    }
    let deadline = Instant::now() + settings.shutdown_grace;
    while ctx.stats.active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = ctx.stats.active.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            sessions = left,
            "grace period over; cutting sessions still open"
        );
        let _ = cut_tx.send(true);
        let cut_deadline = Instant::now() + Duration::from_secs(2);
        while ctx.stats.active.load(Ordering::Relaxed) > 0 && Instant::now() < cut_deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Sessions are over: the writer drains what is queued and exits.
    retention.abort();
    ctx.recorder.close();
    let backlog_flushed = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .is_ok();
    if !backlog_flushed {
        tracing::error!("store did not drain within 30 s; some records may be missing");
    }
    let _ = std::fs::remove_file(&control_path);
    if settings.detach_on_exit {
        // Control connections may still hold the daemon; the pins are what keeps programs
        // attached, so removing them is enough.
        std::fs::remove_dir_all(&pin_dir)
            .map_err(|e| AppError::Redirect(RedirectError::Unpin(pin_dir.clone(), e)))?;
        // The root shared by every instance on the host goes with the last one's pins.
        if let Some(root) = pin_dir.parent() {
            let _ = std::fs::remove_dir(root);
        }
        tracing::info!("programs detached and pins removed (--detach-on-exit)");
    } else {
        tracing::info!("programs stay attached: governed connects fail until the daemon is back");
    }
    drop(daemon);
    Ok(())
}

/// How often the policy directory is checked for changes.
const POLICY_POLL: Duration = Duration::from_millis(500);

/// Reloads the policy when its files change or on SIGHUP, for the daemon's lifetime.
async fn watch_policy(daemon: Arc<Daemon>, mut hup: Option<tokio::signal::unix::Signal>) {
    loop {
        let forced = tokio::select! {
            () = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
            () = poll(daemon.settings.policy_poll) => false,
        };
        if !forced && !daemon.policy.changed() {
            continue;
        }
        match daemon.policy.reload() {
            Ok(Some(policy)) => {
                if let Ok(mut redirector) = daemon.redirector.lock() {
                    apply_kernel_policy(&mut redirector, &policy);
                }
                tracing::info!(version = %policy.version, files = policy.sources.len(), "policy reloaded; new sessions use it");
                for warning in &policy.warnings {
                    tracing::warn!("{warning}");
                }
            }
            Ok(None) => tracing::debug!("policy files changed but compile to the policy in force"),
            Err(error) => tracing::error!(
                "policy reload failed; the previous policy stays in force:\n{error}"
            ),
        }
    }
}

async fn poll(every: Duration) {
    if every.is_zero() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(every).await;
}

/// Writes the kernel-decidable part of `policy` into the deny table. When it does not fit,
/// the table is cleared and the proxy enforces the policy alone (still fail-closed).
fn apply_kernel_policy(redirector: &mut Redirector, policy: &Policy) {
    let entries: Vec<(u64, DstPrefix, bool)> = policy
        .kernel_verdicts()
        .into_iter()
        .map(|v| {
            (
                0,
                DstPrefix {
                    net: v.net.network(),
                    prefix: v.net.prefix_len(),
                    port: v.port,
                },
                v.deny,
            )
        })
        .collect();
    if let Err(error) = redirector.set_denied(&entries) {
        tracing::warn!(%error, "kernel policy table not updated; the proxy enforces the policy");
        let _ = redirector.set_denied(&[]);
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; running until killed");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// One daemon per state dir: an exclusive `flock` held for the daemon's lifetime.
fn lock_state(root: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, AppError> {
    let path = root.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AppError::Config(format!("{}: {e}", path.display())))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| AppError::Locked(root.to_path_buf()))
}

/// A proxy holds two sockets per session: 10,000 agents' connections need over 20,000
/// descriptors. With `CAP_SYS_RESOURCE` we raise the hard limit up to `fs.nr_open`; without it,
/// to the existing hard limit (admission control in the proxy covers the rest).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let wanted = nr_open.min(1 << 20).max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Forwards aya-log records of the kernel programs into `tracing` (through the `log` bridge).
/// A small thread polls the log ring buffer: kernel-side logging is rare (errors only), so
/// this keeps the async runtime free of a raw-fd registration.
fn forward_kernel_logs(mut logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    use std::os::fd::AsFd as _;
    let spawned = std::thread::Builder::new()
        .name("kernel-log".into())
        .spawn(move || {
            loop {
                let ready = {
                    let mut fds = [nix::poll::PollFd::new(
                        logger.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16))
                };
                match ready {
                    Ok(_) => logger.flush(),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(error) => {
                        tracing::warn!(%error, "kernel log forwarding stopped");
                        return;
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "kernel log forwarding unavailable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_hide_passwords() {
        assert_eq!(
            redact_url("postgres://gw:s3cret@db:5432/rg"),
            "postgres://gw:***@db:5432/rg"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/x.db"),
            "sqlite:///var/lib/x.db"
        );
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = std::env::temp_dir().join(format!("rg-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(
            &file,
            "listen_port = 16000\ncgroup = \"agents\"\nexclude = [\"127.0.0.53/32:53\"]\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(file.clone()),
            policy_dir: None,
            listen_port: Some(17000),
            cgroup: None,
            exclude: vec![],
            detach_on_exit: false,
            shutdown_grace: None,
            policy_poll: None,
            accept_iptables_redirect: false,
        };
        let s = Settings::resolve(StateDir::new(&dir), None, args).unwrap();
        assert_eq!(
            (s.listen_port, s.cgroup.as_str(), s.exclude.len()),
            (17000, "agents", 1)
        );
        std::fs::write(&file, "listen_port = 16000\nbogus = 1\n").unwrap();
        let args = RunArgs {
            config: Some(file),
            policy_dir: None,
            listen_port: None,
            cgroup: None,
            exclude: vec![],
            detach_on_exit: false,
            shutdown_grace: None,
            policy_poll: None,
            accept_iptables_redirect: false,
        };
        let err = Settings::resolve(StateDir::new(&dir), None, args)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
