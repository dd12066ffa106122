//! `cargo xtask bench pg`: the `PostgreSQL` data path against its peers, in one run.
//!
//! One `PostgreSQL` server (Debian package, `pgbench` scale 2) listening on four loopback
//! addresses, each a different path for the same `pgbench` load (8 connections, 2 threads,
//! select-only, simple and extended protocol):
//! * direct (not governed);
//! * react-gateway relaying raw TCP (a `protocol = "tcp"` target): the interception's cost;
//! * react-gateway reading the protocol (a `postgres` target: every statement evaluated
//!   against a `block` rule and recorded with its result at `record = "metadata"`);
//! * the same with a response `mask` rule (a column masked whole, the `pii` detectors in every
//!   value of every row).
//!
//! Each figure is the median of three alternating rounds of 5 s; the recorder's queue is
//! written before every run. Loopback only; every run is bounded by time.

use std::{process::Command, thread, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench_http::{Cleanup, cpu_seconds, spawn_daemon},
    util::{Postgres, daemon_bin, free_port, wait_daemon, wait_drained},
};

const SECONDS: &str = "5";
const ROUNDS: usize = 3;

struct Peer {
    name: &'static str,
    host: &'static str,
    governed: bool,
}

const PEERS: [Peer; 4] = [
    Peer {
        name: "direct",
        host: "127.0.0.1",
        governed: false,
    },
    Peer {
        name: "react-gateway raw TCP relay",
        host: "127.0.0.4",
        governed: true,
    },
    Peer {
        name: "react-gateway PostgreSQL path",
        host: "127.0.0.2",
        governed: true,
    },
    Peer {
        name: "  + masking rows (column + pii)",
        host: "127.0.0.3",
        governed: true,
    },
];

pub fn run() -> Result<()> {
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("react-gateway-bench-pg-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies"))?;
    let state = dir.join("state");
    let cgroup = format!("react-gateway-bench-pg-{id}");
    // Dropped last: the daemon and the server stop before their directories go.
    let _cleanup = Cleanup {
        state: state.clone(),
        cgroup: cgroup.clone(),
        dir: dir.clone(),
    };
    let pg = Postgres::start(&dir.join("pg"), "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4")?;
    let init = pg
        .client("pgbench", "127.0.0.1")
        .args(["-i", "-q", "-s", "2"])
        .output()?;
    if !init.status.success() {
        bail!(
            "pgbench -i: {}",
            String::from_utf8_lossy(&init.stderr).trim()
        );
    }
    let port = pg.port;
    std::fs::write(
        dir.join("policies/bench.toml"),
        format!(
            r#"[defaults]
record = "metadata"

[[target]]
name = "raw"
addresses = ["127.0.0.4/32"]
ports = [{port}]
protocol = "tcp"

[[target]]
name = "db"
addresses = ["127.0.0.2/32"]
ports = [{port}]
protocol = "postgres"

[[target]]
name = "db-masked"
addresses = ["127.0.0.3/32"]
ports = [{port}]
protocol = "postgres"

[[rule]]
name = "no-destructive-sql"
action = "block"
target = "db"
[rule.match]
sql_statement = ["drop", "truncate", "delete_without_where"]

[[rule]]
name = "no-destructive-sql-masked"
action = "block"
target = "db-masked"
[rule.match]
sql_statement = ["drop", "truncate", "delete_without_where"]

[[rule]]
name = "mask-rows"
action = "mask"
target = "db-masked"
direction = "response"
columns = ["abalance"]
detectors = ["pii"]
"#
        ),
    )?;
    let mut daemon = spawn_daemon(&state, &cgroup, free_port()?, &dir.join("policies"))?;
    wait_daemon(&state, &mut daemon.0)?;
    thread::sleep(Duration::from_millis(500));
    let daemon_pid = daemon.id();

    let run = |peer: &Peer, extended: bool| -> Result<(f64, f64)> {
        wait_drained(&state)?;
        let pgbench = pg.bin("pgbench");
        let port = port.to_string();
        let mut args: Vec<&str> = vec![
            "-h", peer.host, "-p", &port, "-U", "gateway", "-S", "-n", "-c", "8", "-j", "2", "-T",
            SECONDS,
        ];
        if extended {
            args.extend(["-M", "extended"]);
        }
        args.push("postgres");
        let mut cmd = if peer.governed {
            let mut cmd = Command::new(daemon_bin());
            cmd.arg("--state-dir")
                .arg(&state)
                .args(["exec", "--cgroup", "bench", "--"])
                .arg(&pgbench);
            cmd
        } else {
            Command::new(&pgbench)
        };
        let cpu = cpu_seconds(daemon_pid);
        let out = cmd.args(&args).output().context("pgbench")?;
        let cpu = cpu_seconds(daemon_pid) - cpu;
        let text = String::from_utf8_lossy(&out.stdout);
        let tps: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| {
                format!(
                    "pgbench through {} printed no tps: {text}{}",
                    peer.name,
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let transactions = tps * SECONDS.parse::<f64>().unwrap_or(5.0);
        let cpu_per_txn = if peer.governed {
            cpu / transactions * 1e6
        } else {
            0.0
        };
        Ok((tps, cpu_per_txn))
    };

    println!(
        "react-gateway bench pg — pgbench select-only, 8 connections, loopback, {SECONDS} s per run, median of {ROUNDS} alternating rounds; 2 cores shared by pgbench, proxy and server"
    );
    for (label, extended) in [("simple protocol", false), ("extended protocol", true)] {
        let mut tps = vec![Vec::new(); PEERS.len()];
        let mut cpu = vec![Vec::new(); PEERS.len()];
        for _ in 0..ROUNDS {
            for (i, peer) in PEERS.iter().enumerate() {
                let (t, c) = run(peer, extended)?;
                tps[i].push(t);
                cpu[i].push(c);
            }
        }
        let med: Vec<f64> = tps.iter().map(|v| median(v)).collect();
        println!("\n{label}");
        println!(
            "  {:<34} {:>10} {:>10} {:>12} {:>16}",
            "path", "tx/s", "vs direct", "vs raw relay", "daemon µs/tx"
        );
        for (i, peer) in PEERS.iter().enumerate() {
            println!(
                "  {:<34} {:>10.0} {:>9.2}× {:>11.2}× {:>16}",
                peer.name,
                med[i],
                med[i] / med[0],
                med[i] / med[1],
                if peer.governed {
                    format!("{:.1}", median(&cpu[i]))
                } else {
                    "-".into()
                }
            );
        }
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
