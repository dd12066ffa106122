//! Integration-test harness: a real daemon (the release binary `cargo xtask test` built), real
//! cgroups, real clients run with `react-gateway exec`, real loopback servers.
//!
//! Every [`Gateway`] owns its state dir, governed cgroup, listen port and bpffs pins, all named
//! after the test, and removes them on drop, so tests run in parallel and leave nothing behind.
//! Privileged tests fail loudly when not root; `REACT_GATEWAY_SKIP_PRIVILEGED=1` is the only
//! way to skip them, and says so.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod bombs;
pub mod records;

/// The daemon binary: `REACT_GATEWAY_BIN`, else `target/release/react-gateway`.
pub fn bin() -> PathBuf {
    let path = std::env::var_os("REACT_GATEWAY_BIN").map_or_else(
        || workspace().join("target/release/react-gateway"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo xtask test` (it builds the daemon)",
        path.display()
    );
    path
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Whether privileged tests should run. Not root → panic, unless explicitly opted out.
pub fn privileged() -> bool {
    if std::env::var("REACT_GATEWAY_SKIP_PRIVILEGED").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: REACT_GATEWAY_SKIP_PRIVILEGED=1");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests load eBPF programs and need root (set REACT_GATEWAY_SKIP_PRIVILEGED=1 to skip them explicitly)"
    );
    true
}

pub fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("no cgroup2 mount")
}

/// A TCP port free on both 127.0.0.1 and ::1.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = v4.local_addr().expect("addr").port();
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port")
}

/// One daemon instance owned by a test.
pub struct Gateway {
    pub name: String,
    pub state: PathBuf,
    pub cgroup: String,
    pub port: u16,
    /// `--store` (e.g. a [`Postgres`] URL); the state dir's `SQLite` file when `None`.
    pub store: Option<String>,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Gateway {
    pub fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    pub fn start_with(name: &str, extra: &[&str]) -> Self {
        Self::start_with_policy(name, &[], extra)
    }

    /// Starts a daemon whose policy directory holds `files` (name, TOML text).
    pub fn start_with_policy(name: &str, files: &[(&str, &str)], extra: &[&str]) -> Self {
        Self::start_with_store(name, files, extra, None)
    }

    /// Like [`Gateway::start_with_policy`], recording into `store` (a `--store` URL).
    pub fn start_with_store(
        name: &str,
        files: &[(&str, &str)],
        extra: &[&str],
        store: Option<String>,
    ) -> Self {
        let id = format!("rg-test-{name}-{}", std::process::id());
        let state = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(state.join("policies")).expect("policy dir");
        for (file, text) in files {
            std::fs::write(state.join("policies").join(file), text).expect("write policy");
        }
        let mut gateway = Self {
            name: name.to_string(),
            state,
            cgroup: id,
            port: free_port(),
            store,
            extra: extra.iter().map(|s| (*s).to_string()).collect(),
            child: None,
        };
        gateway.spawn();
        gateway
    }

    /// The daemon's `--policy-dir` (empty unless the test writes files into it).
    pub fn policy_dir(&self) -> PathBuf {
        self.state.join("policies")
    }

    /// Writes (or with `None` removes) a policy file and waits until the daemon has reacted:
    /// the policy version in `status` changed or a reload error is shown.
    pub fn set_policy_file(&self, file: &str, text: Option<&str>) -> Value {
        let before = self.status()["policy"].clone();
        let path = self.policy_dir().join(file);
        match text {
            // Write then rename, as configuration tools do, so no half file is ever read.
            Some(text) => {
                let tmp = self.policy_dir().join(format!(".{file}.tmp"));
                std::fs::write(&tmp, text).expect("write policy");
                std::fs::rename(&tmp, &path).expect("rename policy");
            }
            None => std::fs::remove_file(&path).expect("remove policy"),
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.status()["policy"].clone();
            if now["version"] != before["version"]
                || now["last_error_at"] != before["last_error_at"]
            {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not react to {file}: {now}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("--state-dir").arg(&self.state);
        if let Some(store) = &self.store {
            cmd.arg("--store").arg(store);
        }
        cmd
    }

    /// The store URL the daemon records into.
    pub fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.state.join("gateway.db").display()))
    }

    fn log_path(&self) -> PathBuf {
        self.state.with_extension("log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the daemon and waits until `status` answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = self
            .cli()
            .args([
                "run",
                "--cgroup",
                &self.cgroup,
                "--listen-port",
                &self.port.to_string(),
                "--shutdown-grace",
                "3s",
                "--policy-dir",
            ])
            .arg(self.policy_dir())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start react-gateway");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .cli()
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("react-gateway exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "react-gateway did not come up:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// The daemon's peak resident memory (`VmHWM`), in KiB.
    pub fn peak_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// Sends a signal and waits for the daemon to exit.
    pub fn stop(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn cgroup_dir(&self) -> PathBuf {
        cgroup2_mount().join(&self.cgroup)
    }

    pub fn pin_dir(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(self.state.join("instance.json")).ok()?;
        let value: Value = serde_json::from_str(&text).ok()?;
        value["pin_dir"].as_str().map(PathBuf::from)
    }

    /// Runs a command in the governed child cgroup `sub`.
    pub fn exec(&self, sub: &str, command: &[&str]) -> Output {
        self.cli()
            .args(["exec", "--cgroup", sub, "--"])
            .args(command)
            .output()
            .expect("react-gateway exec")
    }

    /// Runs unmodified `curl -sS --max-time 5 URL` in the governed child cgroup `sub`.
    pub fn curl(&self, sub: &str, url: &str) -> Output {
        self.exec(sub, &["curl", "-sS", "--max-time", "5", url])
    }

    /// Whether a governed curl (child cgroup `curl`) reached `host:port`: any answer counts,
    /// only "could not connect" (7), "empty reply" (52) and "connection reset" (56) do not.
    pub fn curl_ok(&self, host: &str, port: &str) -> bool {
        let url = format!("http://{host}:{port}/");
        let out = self.exec(
            "curl",
            &["curl", "-sS", "--max-time", "3", "-o", "/dev/null", &url],
        );
        !matches!(out.status.code(), Some(7 | 52 | 56))
    }

    /// Runs Python code in the governed cgroup and asserts it succeeded; returns stdout.
    pub fn python(&self, sub: &str, code: &str, args: &[&str]) -> String {
        let mut command = vec!["python3", "-c", code];
        command.extend(args);
        let out = self.exec(sub, &command);
        assert!(
            out.status.success(),
            "python failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self) -> Value {
        let out = self
            .cli()
            .args(["--json", "status"])
            .output()
            .expect("status");
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    pub fn sessions(&self) -> Vec<Value> {
        let out = self
            .cli()
            .args(["--json", "sessions", "list"])
            .output()
            .expect("sessions list");
        assert!(
            out.status.success(),
            "sessions list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("sessions JSON")
    }

    /// Waits until at least `n` sessions have ended (recording is asynchronous).
    /// Asserts that none of `values` is anywhere in the SQLite store's files (the database
    /// and its write-ahead log), byte for byte: what the gateway masked or injected is in no
    /// recording.
    pub fn assert_not_in_store(&self, values: &[&str]) {
        for file in ["gateway.db", "gateway.db-wal"] {
            let bytes = std::fs::read(self.state.join(file)).unwrap_or_default();
            for value in values {
                assert!(
                    !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                    "{value} is in the store ({file})"
                );
            }
        }
    }

    pub fn ended_sessions(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let sessions: Vec<Value> = self
                .sessions()
                .into_iter()
                .filter(|s| !s["ended_at"].is_null())
                .collect();
            if sessions.len() >= n || Instant::now() > deadline {
                return sessions;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let pin_dir = self.pin_dir();
        self.stop(libc::SIGTERM);
        if let Some(pin_dir) = pin_dir {
            let _ = std::fs::remove_dir_all(&pin_dir);
            // `react-gateway/` itself, unless another instance still has pins in it.
            if let Some(root) = pin_dir.parent() {
                let _ = std::fs::remove_dir(root);
            }
        }
        remove_cgroup_tree(&self.cgroup_dir());
        let _ = std::fs::remove_dir_all(&self.state);
        if !thread::panicking() {
            let _ = std::fs::remove_file(self.log_path());
        }
    }
}

/// Removes a cgroup and its children, deepest first.
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A loopback server run by the test, counting connections and remembering their peers.
pub struct Upstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Upstream {
    /// Answers each request with `HTTP/1.1 200` and a body naming the server.
    pub fn http(addr: &str) -> Self {
        Self::serve(addr, |mut stream| {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let body = "hello from upstream\n";
            // One write, as a real server would send a small response.
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        })
    }

    /// Echoes bytes until EOF, then closes.
    pub fn echo(addr: &str) -> Self {
        Self::serve(addr, |mut stream| {
            let mut buf = [0u8; 16384];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        })
    }

    fn serve(addr: &str, handler: fn(TcpStream)) -> Self {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                thread::spawn(move || handler(stream));
            }
        });
        Self { addr, accepted }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

/// The asyncio echo server of `tests/support/echo_server.py` (for thousands of connections),
/// killed on drop.
pub struct PyEcho {
    pub port: u16,
    child: Child,
}

impl PyEcho {
    pub fn start(host: &str) -> Self {
        let port = {
            let l = TcpListener::bind((host, 0)).expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut child = Command::new("python3")
            .arg(workspace().join("tests/support/echo_server.py"))
            .args([host, &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 echo server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready");
        Self { port, child }
    }
}

impl Drop for PyEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds the sessions whose destination is `ip:port`.
pub fn sessions_to<'a>(sessions: &'a [Value], ip: &str, port: u16) -> Vec<&'a Value> {
    sessions
        .iter()
        .filter(|s| s["destination"]["ip"] == ip && s["destination"]["port"] == port)
        .collect()
}

/// The `mock-upstream` binary (`tests/src/bin/mock_upstream.rs`) serving `specs`
/// (`KIND@ADDR:PORT`), with its test CA in `dir`; killed on drop.
pub struct MockUpstream {
    pub dir: PathBuf,
    child: Child,
}

impl MockUpstream {
    /// `bin` is `env!("CARGO_BIN_EXE_mock-upstream")` of the calling test.
    pub fn start(bin: &str, name: &str, specs: &[String]) -> Self {
        let dir = std::env::temp_dir().join(format!("rg-mock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut child = Command::new(bin)
            .arg(&dir)
            .args(specs)
            .env("MOCK_OPENAI_KEY", "sk-real-upstream-key")
            .stdout(Stdio::piped())
            .spawn()
            .expect("mock-upstream");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready", "mock-upstream did not start");
        Self { dir, child }
    }

    /// The CA that signed the `https` listeners' certificates.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Every request the upstream received (method, path, headers, body, tls).
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `sessions show ID --json`.
pub fn session_show(gateway: &Gateway, id: &str) -> Value {
    let out = gateway
        .cli()
        .args(["--json", "sessions", "show", id])
        .output()
        .expect("sessions show");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sessions show json")
}

/// A policy for the test's server as target `crm-db` (with `tls`, a `[target.tls]` table or
/// nothing), recorded in full, and `rules`.
pub fn db_policy(port: u16, tls: &str, rules: &str) -> String {
    format!(
        r#"
version = 1

[defaults]
record = "full"

[[target]]
name = "crm-db"
addresses = ["127.0.0.1/32"]
ports = [{port}]
protocol = "postgres"
{tls}
{rules}"#
    )
}

/// A PostgreSQL server of the test's own (Debian `postgresql` package), in a temporary data
/// directory, listening on 127.0.0.1 only, run as the `postgres` user; stopped and removed on
/// drop.
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    uid: u32,
    gid: u32,
    child: Option<Child>,
}

impl Postgres {
    pub fn start(name: &str) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed: run `cargo xtask setup`")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("postgres").exists())
            .max()
            .expect("no /usr/lib/postgresql/*/bin/postgres");
        let (uid, gid) = user_ids("postgres");
        let dir = std::env::temp_dir().join(format!("rg-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pg dir");
        let chown = |path: &Path| {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
            // SAFETY: chown(2) on a path we created.
            unsafe { libc::chown(c.as_ptr(), uid, gid) };
        };
        chown(&dir);
        let data = dir.join("data");
        let out = Command::new(bin.join("initdb"))
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
            .current_dir(&dir)
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Self {
            dir,
            port: free_port(),
            bin,
            uid,
            gid,
            child: None,
        };
        pg.resume();
        let out = pg
            .client("psql", "postgres")
            .args(["-c", "CREATE DATABASE audit"])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://gateway@127.0.0.1:{}/audit", self.port)
    }

    /// Starts (again) the server and waits until it accepts connections.
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.join("postgres.log")).expect("pg log");
        let child = Command::new(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-k",
            ])
            .arg(&self.dir)
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .map_or(true, |s| !s.success())
        {
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn pause(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child (SIGINT: PostgreSQL's fast shutdown).
            unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// Makes a file the server's own (owner `postgres`, mode 0600), as its TLS key must be.
    pub fn give(&self, path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: chown(2) and chmod(2) on a file the test created.
        unsafe {
            libc::chown(c.as_ptr(), self.uid, self.gid);
            libc::chmod(c.as_ptr(), 0o600);
        }
    }

    /// A client program of this server's installation, connected as `gateway` to `db`.
    fn client(&self, program: &str, db: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "gateway", "-d", db]);
        cmd
    }

    /// Everything in the database, as `pg_dump --data-only` prints it.
    pub fn dump(&self) -> Vec<u8> {
        let out = self
            .client("pg_dump", "audit")
            .arg("--data-only")
            .output()
            .expect("pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Runs SQL with psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = self
            .client("psql", "audit")
            .args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn user_ids(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name))
                .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
                .flatten()
        })
        .unwrap_or_else(|| panic!("no user {name}: is the postgresql package installed?"))
}
