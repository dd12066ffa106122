//! Small process helpers shared by the xtask commands.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Runs `cargo ARGS` in the workspace root with extra environment, failing on a non-zero exit.
pub fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root());
    for (key, value) in env {
        cmd.env(key, value);
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The daemon, and the mock upstream the demo and benchmarks talk to.
pub fn build_release() -> Result<()> {
    cargo(
        &[
            "build",
            "--release",
            "-p",
            "gateway-user",
            "-p",
            "react-gateway-tests",
            "--bins",
        ],
        &[],
    )
}

/// `REACT_GATEWAY_LOG` for daemons the benches start: warnings only, without aya's dump of
/// the BTF the kernel rejects (the daemon's default filter drops it too).
pub const DAEMON_LOG: &str = "warn,aya::bpf=error";

pub fn daemon_bin() -> PathBuf {
    workspace_root().join("target/release/react-gateway")
}

/// Runs a command to completion; returns whether it succeeded (output discarded).
pub fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command and returns its stdout, failing on a non-zero exit.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run_cmd(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A free TCP port on both 127.0.0.1 and ::1.
pub fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = v4.local_addr()?.port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 and ::1")
}

/// A child process this command started, stopped by PID on drop: SIGTERM first (nginx's
/// master then stops its workers), SIGKILL if it is still there after 5 s.
pub struct Spawned(pub std::process::Child);

impl Spawned {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mock-upstream DIR SPEC…` (built with the daemon) and waits for its `ready` line.
/// `openai_key`: the key its OpenAI-compatible endpoint accepts.
pub fn mock_upstream(
    dir: &std::path::Path,
    specs: &[String],
    openai_key: Option<&str>,
) -> Result<Spawned> {
    use std::io::BufRead as _;
    let bin = workspace_root().join("target/release/mock-upstream");
    let mut cmd = Command::new(&bin);
    cmd.arg(dir).args(specs).stdout(Stdio::piped());
    if let Some(key) = openai_key {
        cmd.env("MOCK_OPENAI_KEY", key);
    }
    let mut child = Spawned(
        cmd.spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?,
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().context("stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("mock-upstream did not start");
    }
    Ok(child)
}

/// Waits until the daemon started on `state` answers `status` (its programs attached, its
/// proxy listening); fails at once if `daemon` exited, or after 20 s. (Connecting to its
/// port instead would be logged as a connection without an original destination.)
pub fn wait_daemon(state: &std::path::Path, daemon: &mut std::process::Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answered = Command::new(daemon_bin())
            .arg("--state-dir")
            .arg(state)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if answered {
            return Ok(());
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            bail!("react-gateway exited ({status})");
        }
        if Instant::now() > deadline {
            bail!("react-gateway did not come up within 20 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the daemon's recorder has written everything queued; returns the seconds it took.
pub fn wait_drained(state: &std::path::Path) -> Result<f64> {
    let started = Instant::now();
    loop {
        let out = Command::new(daemon_bin())
            .arg("--state-dir")
            .arg(state)
            .args(["--json", "status"])
            .output()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if status["recorder"]["backlog"] == 0 {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_mins(2) {
            bail!(
                "the recorder did not drain in 120 s: {}",
                status["recorder"]
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A `PostgreSQL` server of the bench's or the demo's own (Debian `postgresql`, installed by
/// `setup`): a fresh cluster in `dir`, run as user `postgres`, trust authentication for user
/// `gateway`, listening on `addresses` (loopback) at a free port; stopped by PID on drop.
pub struct Postgres {
    pub port: u16,
    /// The first of its addresses (where [`Self::psql`] connects).
    pub host: String,
    bin: PathBuf,
    _server: Spawned,
}

impl Postgres {
    pub fn start(dir: &std::path::Path, addresses: &str) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL is not installed: run `cargo xtask setup`")?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("postgres").exists())
            .max()
            .context("no /usr/lib/postgresql/*/bin/postgres")?;
        let passwd = std::fs::read_to_string("/etc/passwd")?;
        let (uid, gid) = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&"postgres"))
            .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
            .context("no user postgres (Debian package postgresql)")?;
        std::fs::create_dir_all(dir)?;
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        let data = dir.join("data");
        let init = Command::new(bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "gateway",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .uid(uid)
            .gid(gid)
            .current_dir(dir)
            .output()?;
        if !init.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&init.stderr).trim());
        }
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("postgres.log"))?;
        let server = Spawned(
            Command::new(bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c"])
                .arg(format!("listen_addresses={addresses}"))
                .args(["-c", "fsync=off", "-k"])
                .arg(dir)
                .uid(uid)
                .gid(gid)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("postgres")?,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let host = addresses.split(',').next().unwrap_or("127.0.0.1");
        while !quiet(
            bin.join("pg_isready").to_str().unwrap_or_default(),
            &["-q", "-h", host, "-p", &port.to_string()],
        ) {
            if Instant::now() > deadline {
                bail!(
                    "postgres did not start (see {})",
                    dir.join("postgres.log").display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            port,
            host: addresses
                .split(',')
                .next()
                .unwrap_or("127.0.0.1")
                .to_string(),
            bin,
            _server: server,
        })
    }

    /// A program of this installation (`psql`, `pgbench`), with its connection arguments
    /// for `host` (user `gateway`, database `postgres`).
    pub fn client(&self, program: &str, host: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args([
            "-h",
            host,
            "-p",
            &self.port.to_string(),
            "-U",
            "gateway",
            "-d",
            "postgres",
        ]);
        cmd
    }

    /// Runs SQL directly (not governed); returns psql's unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let out = self
            .client("psql", &self.host)
            .args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn bin(&self, program: &str) -> PathBuf {
        self.bin.join(program)
    }
}
