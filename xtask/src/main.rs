//! Build driver: `cargo xtask setup | build | install | demo | test | bench … | prebuilt`.
//!
//! Every command that needs the toolchain or test peers runs `setup` first, which installs
//! only what is missing (idempotent; a few hundred milliseconds when all is present).

mod bench;
mod bench_http;
mod bench_mask;
mod bench_pg;
mod bench_record;
mod demo;
mod install;
mod setup;
mod util;

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

  setup             check and install prerequisites (nightly rust-src, bpf-linker 0.10.0,
                    Debian packages, Python packages)
  build             build the daemon (release) with its eBPF programs
  install [--root DIR] [--prefix PREFIX]
                    build and install the daemon, its systemd unit, /etc/react-gateway/policies
                    and the docs (default PREFIX /usr/local; --root stages for packaging)
  demo              run the demo: daemon + unmodified curl/Python agents + mock upstream
  test              run every test (unit, integration with the real kernel)
  bench redirect    connects/s (direct, eBPF, iptables), connect4 ns/run, bulk throughput,
                    memory per idle connection
  bench policy      policy evaluations/s on a 100-rule policy (goal 1,000,000/s)
  bench mask        masking MB/s on clean text, dense PII, JSON and SSE against a naive baseline
  bench record      recording cost (record full vs off, req/s), sessions list over 1,000,000
                    sessions, audit verify events/s
  fuzz [SECONDS]    run the fuzz targets (default 60 s each; part of `test`)
  prebuilt          refresh gateway-ebpf/prebuilt (the fallback eBPF object)";

fn main() {
    if let Err(error) = run() {
        eprintln!("xtask: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("setup") => setup::run(),
        Some("build") => {
            setup::run()?;
            util::build_release()
        }
        Some("install") => install::run(rest),
        Some("demo") => {
            setup::run()?;
            util::build_release()?;
            demo::run()
        }
        Some("test") => {
            setup::run()?;
            test(rest)
        }
        Some("fuzz") => {
            setup::run()?;
            let seconds = match rest.first() {
                Some(text) => text
                    .parse::<u64>()
                    .context("fuzz SECONDS must be a number")?,
                None => FUZZ_SECONDS,
            };
            fuzz(seconds)
        }
        Some("bench") => {
            setup::run()?;
            util::build_release()?;
            bench::run(rest)
        }
        Some("prebuilt") => util::cargo(
            &["build", "--release", "-p", "gateway-user"],
            &[("REACT_GATEWAY_UPDATE_PREBUILT", "1")],
        ),
        // Internal helpers the benchmark runs inside governed cgroups.
        Some("bench-client") => bench::client(rest),
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown or missing command")
        }
    }
}

/// Unit tests of every crate, then the integration tests against the release daemon. Ends
/// with one total line (`N passed, M failed`), so the last line CI reads is the whole run's.
/// How long `cargo xtask test` fuzzes each target.
const FUZZ_SECONDS: u64 = 60;
/// The cargo-fuzz targets (`fuzz/fuzz_targets`).
const FUZZ_TARGETS: &[&str] = &["policy", "tls_hello", "mask"];

/// Runs every fuzz target for `seconds`, seeded with the shipped policies. A crash fails,
/// leaving its input in `fuzz/artifacts/`.
fn fuzz(seconds: u64) -> Result<()> {
    let root = util::workspace_root();
    let corpus = root.join("fuzz/corpus/policy");
    std::fs::create_dir_all(&corpus)?;
    for dir in ["policies/examples", "policies/demo"] {
        for entry in std::fs::read_dir(root.join(dir))?.flatten() {
            if entry.path().extension().is_some_and(|e| e == "toml") {
                std::fs::copy(entry.path(), corpus.join(entry.file_name()))?;
            }
        }
    }
    // Committed seeds for the byte-level targets (ClientHellos, HTTP and PostgreSQL openings;
    // SSE streams and text with values).
    for target in ["tls_hello", "mask"] {
        let target_corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&target_corpus)?;
        for entry in std::fs::read_dir(root.join("fuzz/seeds").join(target))?.flatten() {
            std::fs::copy(entry.path(), target_corpus.join(entry.file_name()))?;
        }
    }
    for target in FUZZ_TARGETS {
        println!("xtask: fuzzing {target} for {seconds} s");
        let status = std::process::Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                target,
                "--fuzz-dir",
                "fuzz",
                "--",
            ])
            .arg(format!("-max_total_time={seconds}"))
            .current_dir(&root)
            // Sanitizer flags must not reach the eBPF build: embed the committed object.
            .env("REACT_GATEWAY_PREBUILT_EBPF", "1")
            .status()?;
        if !status.success() {
            bail!("fuzz target {target} failed ({status}); see fuzz/artifacts/{target}");
        }
    }
    Ok(())
}

/// What `cargo test` printed, counted.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    /// Each failing binary's `failures:` report, printed again above the total: a log's tail
    /// (all CI keeps) then names what failed and why.
    failures: Vec<String>,
    /// (test binary as cargo names it, test name) of each failure.
    failed_tests: Vec<(String, String)>,
}

/// Echoes `cargo test`'s output while counting it.
fn tally(stdout: impl std::io::Read) -> Result<Tally> {
    use std::io::BufRead as _;
    let mut tally = Tally::default();
    let (mut in_failures, mut binary) = (false, String::new());
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(running) = line.trim_start().strip_prefix("Running ") {
            running.clone_into(&mut binary);
        }
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            tally.failed_tests.push((binary.clone(), name.to_owned()));
        }
        in_failures |= line == "failures:";
        if in_failures {
            tally.failures.push(line.clone());
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            in_failures = false;
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(word)
                    })
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            tally.passed += count(" passed");
            tally.failed += count(" failed");
        }
    }
    Ok(tally)
}

/// The path of an integration test binary from cargo's `Running tls.rs (target/…/tls-…)`;
/// `None` for unit tests (`Running unittests src/lib.rs (…)`).
fn integration_binary(running: &str) -> Option<&str> {
    running
        .strip_suffix(')')
        .and_then(|r| r.split_once(" ("))
        .map(|(_, path)| path)
        .filter(|_| !running.starts_with("unittests"))
}

/// Runs the failed test `name` of the integration test binary `running` (as cargo printed
/// it: `tls.rs (target/release/deps/tls-…)`) once more, alone; whether it passed. Unit tests
/// are not run again: they do not depend on timing.
fn retry(running: &str, name: &str, bin: &std::path::Path) -> Result<bool> {
    let Some(path) = integration_binary(running) else {
        return Ok(false);
    };
    let root = util::workspace_root();
    println!("xtask test: running {name} of {path} again, alone");
    let status = std::process::Command::new(root.join(path))
        .args([name, "--exact", "--test-threads=1"])
        .current_dir(root.join("tests"))
        .env("REACT_GATEWAY_BIN", bin)
        .status()?;
    Ok(status.success())
}

fn test(filter: &[String]) -> Result<()> {
    util::build_release()?;
    let bin = util::workspace_root().join("target/release/react-gateway");
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "gateway-ebpf",
        "--lib",
        "--bins",
        "--tests",
        // Every test binary runs even after one fails: the total counts the whole suite.
        "--no-fail-fast",
    ])
    .current_dir(util::workspace_root())
    .env("REACT_GATEWAY_BIN", &bin)
    .stdout(std::process::Stdio::piped());
    if !filter.is_empty() {
        cmd.arg("--").args(filter);
    }
    let mut child = cmd.spawn()?;
    let Tally {
        mut passed,
        mut failed,
        failures,
        failed_tests,
    } = match child.stdout.take() {
        Some(stdout) => tally(stdout)?,
        None => Tally::default(),
    };
    let status = child.wait()?;
    // An integration test that failed runs once more, alone; one that then passes counts as
    // passed and is named as flaky on the last line, so it is seen, not hidden.
    let mut flaky = Vec::new();
    let mut retried_all = !failed_tests.is_empty() && failed_tests.len() as u64 == failed;
    for (binary, name) in &failed_tests {
        if retry(binary, name, &bin)? {
            flaky.push(name.clone());
            passed += 1;
            failed = failed.saturating_sub(1);
        } else {
            retried_all = false;
        }
    }
    // The fuzz targets run for a bounded time as part of the suite (whole-suite runs only).
    if filter.is_empty() {
        match fuzz(FUZZ_SECONDS) {
            Ok(()) => passed += 1,
            Err(error) => {
                eprintln!("xtask test: fuzzing failed: {error:#}");
                failed += 1;
            }
        }
    }
    if !failures.is_empty() {
        println!("xtask test: what failed, again");
        for line in &failures {
            println!("{line}");
        }
    }
    let flaky_note = if flaky.is_empty() {
        String::new()
    } else {
        format!(
            " ({} passed only when run again, FLAKY: {})",
            flaky.len(),
            flaky.join(", ")
        )
    };
    println!("xtask test: {passed} passed, {failed} failed{flaky_note}");
    if !(status.success() || retried_all) || failed > 0 {
        bail!("tests failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_test_output_is_counted_and_failures_named() {
        let output = "\
     Running unittests src/lib.rs (target/release/deps/gateway_user-11268e31c4340fe2)
test a ... ok
test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s
     Running tls.rs (target/release/deps/tls-ee0a12a28c7b01c1)
test bad_clients_do_not_disturb_others ... FAILED
test pooled ... ok

failures:

---- bad_clients_do_not_disturb_others stdout ----
thread 'bad_clients_do_not_disturb_others' panicked at tls.rs:801:5

failures:
    bad_clients_do_not_disturb_others

test result: FAILED. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 7.05s
";
        let tally = tally(output.as_bytes()).unwrap();
        assert_eq!((tally.passed, tally.failed), (7, 1));
        assert_eq!(
            tally.failed_tests,
            [(
                "tls.rs (target/release/deps/tls-ee0a12a28c7b01c1)".to_owned(),
                "bad_clients_do_not_disturb_others".to_owned()
            )]
        );
        assert!(
            tally
                .failures
                .iter()
                .any(|l| l.contains("panicked at tls.rs:801"))
        );
        assert_eq!(
            tally.failures.last().map(String::as_str),
            Some(
                "test result: FAILED. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 7.05s"
            )
        );
        assert_eq!(
            integration_binary(&tally.failed_tests[0].0),
            Some("target/release/deps/tls-ee0a12a28c7b01c1")
        );
        assert_eq!(
            integration_binary("unittests src/lib.rs (target/release/deps/gateway_user-1)"),
            None
        );
    }
}
