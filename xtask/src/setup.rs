//! `cargo xtask setup`: installs what a fresh machine lacks, and nothing else.

use anyhow::{Context as _, Result};

use crate::util::{output, quiet, run_cmd};

/// Debian packages the build, tests, demo and benchmarks use.
const DEBIAN: &[&str] = &[
    "curl",
    "iproute2",
    "iptables",
    "bpftool",
    "procps",
    "util-linux",
    // TLS tests: `openssl s_client` crafts old-version and wrong-cipher clients.
    "openssl",
    "ca-certificates",
    // `cargo xtask bench http`: the nginx peer, wrk (HTTP/1.1) and h2load (HTTP/2, TLS).
    "nginx-light",
    "wrk",
    "nghttp2-client",
    // The PostgreSQL store's tests start their own server (initdb/postgres as `postgres`).
    "postgresql",
    // `cargo xtask install`'s test checks the unit with `systemd-analyze verify`.
    "systemd",
];
/// Python packages the tests' and demo's unmodified clients use.
const PYTHON: &[(&str, &str)] = &[
    ("requests", "requests"),
    ("httpx", "httpx[http2]"),
    ("h2", "h2"),
    ("openai", "openai"),
    // Amazon Bedrock's client (event-stream answers, checked frame by frame).
    ("boto3", "boto3"),
    // A WebSocket client (the OpenAI Realtime API's transport).
    ("websockets", "websockets"),
    // A PostgreSQL driver speaking the extended protocol (`psql` speaks the simple one).
    ("psycopg", "psycopg[binary]"),
];
const BPF_LINKER: &str = "0.10.0";
/// cargo-fuzz runs the fuzz targets (`cargo xtask fuzz`, part of `cargo xtask test`).
const CARGO_FUZZ: &str = "0.13.2";

pub fn run() -> Result<()> {
    toolchain()?;
    debian()?;
    python()?;
    Ok(())
}

fn toolchain() -> Result<()> {
    if !output("rustup", &["toolchain", "list"])
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        eprintln!("setup: installing the nightly toolchain (eBPF builds need it)");
        run_cmd(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    let components = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to nightly");
        if let Err(error) = run_cmd(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        ) {
            // The build falls back to the committed eBPF object if its source hash matches.
            eprintln!(
                "setup: warning: {error:#}; the build will use gateway-ebpf/prebuilt if it is current"
            );
        }
    }
    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(BPF_LINKER) {
        eprintln!("setup: installing bpf-linker {BPF_LINKER} (about two minutes)");
        if let Err(error) = run_cmd(
            "cargo",
            &[
                "+nightly",
                "install",
                &format!("bpf-linker@{BPF_LINKER}"),
                "--locked",
            ],
        ) {
            eprintln!(
                "setup: warning: {error:#}; the build will use gateway-ebpf/prebuilt if it is current"
            );
        }
    }
    let fuzz = output("cargo", &["+nightly", "fuzz", "--version"]).unwrap_or_default();
    if !fuzz.contains(CARGO_FUZZ) {
        eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ} (about a minute)");
        run_cmd(
            "cargo",
            &[
                "+nightly",
                "install",
                &format!("cargo-fuzz@{CARGO_FUZZ}"),
                "--locked",
            ],
        )?;
    }
    Ok(())
}

fn debian() -> Result<()> {
    apt_install(DEBIAN)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run_cmd("apt-get", &["update", "-qq"]).context("apt-get update")?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    run_cmd("apt-get", &args).context("apt-get install")
}

fn installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_ok_and(|s| s.contains("install ok installed"))
}

fn python() -> Result<()> {
    let missing: Vec<&str> = PYTHON
        .iter()
        .filter(|(module, _)| !quiet("python3", &["-c", &format!("import {module}")]))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Python packages: {}", missing.join(" "));
    // Debian's own Python (a stock VM, not this project's CI image) comes without pip.
    if !quiet("python3", &["-m", "pip", "--version"]) {
        apt_install(&["python3-pip"])?;
    }
    let mut args = vec![
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    // ...and marks itself externally managed (PEP 668): pip then refuses to install into it
    // unless told. These are the test clients' packages, for the machine the suite runs on.
    if externally_managed("python3") {
        args.push("--break-system-packages");
    }
    args.extend(&missing);
    run_cmd("python3", &args)
}

/// Whether `interpreter` is marked externally managed (PEP 668: an `EXTERNALLY-MANAGED`
/// file in its standard library directory).
fn externally_managed(interpreter: &str) -> bool {
    output(
        interpreter,
        &[
            "-c",
            "import os, sysconfig; print(os.path.isfile(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))",
        ],
    )
    .is_ok_and(|out| out.trim() == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PEP 668 check agrees with the marker file for each Python here: the one on
    /// `PATH` and, when present, Debian's own (`/usr/bin/python3`, marked on Debian 12).
    #[test]
    fn externally_managed_follows_the_marker_file() {
        let mut checked = 0;
        for interpreter in ["python3", "/usr/bin/python3"] {
            let Ok(stdlib) = output(
                interpreter,
                &[
                    "-c",
                    "import sysconfig; print(sysconfig.get_path('stdlib'))",
                ],
            ) else {
                continue;
            };
            let marked = std::path::Path::new(stdlib.trim())
                .join("EXTERNALLY-MANAGED")
                .is_file();
            assert_eq!(externally_managed(interpreter), marked, "{interpreter}");
            checked += 1;
        }
        assert!(checked > 0, "no python3 to check");
        assert!(!externally_managed("/nonexistent/python3"));
    }
}
