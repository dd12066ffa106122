//! `cargo xtask bench mask`: runs the criterion benchmark `gateway-user/benches/mask.rs`
//! (engine and naive baseline in the same invocation), then reads criterion's estimates and
//! prints throughput per corpus and size with the ratio to the baseline and to the goals.

use std::path::Path;

use anyhow::{Context as _, Result};

const CORPORA: &[&str] = &["clean", "dense", "json", "records", "sse"];
const SIZES: &[&str] = &["1KiB", "64KiB", "1MiB"];

/// Bytes per second of one benchmark, from criterion's files.
fn throughput(root: &Path, group: &str, who: &str, size: &str) -> Result<f64> {
    let dir = root.join(group).join(who).join(size).join("new");
    let read = |name: &str| -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("{}", dir.join(name).display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let ns = read("estimates.json")?["mean"]["point_estimate"]
        .as_f64()
        .context("mean estimate")?;
    let bytes = read("benchmark.json")?["throughput"]["Bytes"]
        .as_f64()
        .context("throughput bytes")?;
    Ok(bytes / ns * 1e9)
}

pub fn run() -> Result<()> {
    crate::util::cargo(
        &["bench", "--package", "gateway-user", "--bench", "mask"],
        &[],
    )?;
    let root = crate::util::workspace_root().join("target/criterion");
    println!("\nmasking throughput, full catalogue (pii + secrets), one core");
    println!(
        "{:<8} {:>6} {:>12} {:>12} {:>8}  goal",
        "corpus", "size", "engine MB/s", "naive MB/s", "ratio"
    );
    for corpus in CORPORA {
        for size in SIZES {
            let engine = throughput(&root, corpus, "engine", size)?;
            let naive = throughput(&root, corpus, "naive", size)?;
            let goal = match *corpus {
                "clean" => format!(
                    "≥ 1000 MB/s and ≥ 5× naive: {}",
                    if engine >= 1e9 && engine >= 5.0 * naive {
                        "met"
                    } else {
                        "MISSED"
                    }
                ),
                "dense" => format!(
                    "≥ 300 MB/s: {}",
                    if engine >= 3e8 { "met" } else { "MISSED" }
                ),
                _ => String::new(),
            };
            println!(
                "{corpus:<8} {size:>6} {:>12.1} {:>12.1} {:>7.2}×  {goal}",
                engine / 1e6,
                naive / 1e6,
                engine / naive
            );
        }
    }
    Ok(())
}
