//! Build driver: `cargo xtask setup | build | demo | test | bench redirect | prebuilt`.
//!
//! Every command that needs the toolchain or test peers runs `setup` first, which installs
//! only what is missing (idempotent; a few hundred milliseconds when all is present).

mod bench;
mod demo;
mod setup;
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

  setup             check and install prerequisites (nightly rust-src, bpf-linker 0.10.0,
                    Debian packages, Python packages)
  build             build the daemon (release) with its eBPF programs
  demo              run the demo: daemon + unmodified curl/Python agents + mock upstream
  test              run every test (unit, integration with the real kernel)
  bench redirect    connects/s (direct, eBPF, iptables), connect4 ns/run, bulk throughput,
                    memory per idle connection
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
        Some("demo") => {
            setup::run()?;
            util::build_release()?;
            demo::run()
        }
        Some("test") => {
            setup::run()?;
            test(rest)
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

/// Unit tests of every crate, then the integration tests against the release daemon.
fn test(filter: &[String]) -> Result<()> {
    util::build_release()?;
    let bin = util::workspace_root().join("target/release/react-gateway");
    let bin = bin.to_string_lossy().into_owned();
    let mut args = vec![
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "gateway-ebpf",
    ];
    if !filter.is_empty() {
        args.push("--");
        args.extend(filter.iter().map(String::as_str));
    }
    util::cargo(&args, &[("REACT_GATEWAY_BIN", bin.as_str())])
}
