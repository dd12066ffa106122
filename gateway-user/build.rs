//! Builds the eBPF programs (`gateway-ebpf`) with aya-build and embeds them in the daemon.
//!
//! Fallback: should a machine lack the nightly `rust-src` component or `bpf-linker`, the build
//! uses the committed object `gateway-ebpf/prebuilt/gateway-ebpf.o`, but only if the source hash
//! recorded beside it (`gateway-ebpf.o.srchash`) matches the current sources of `gateway-ebpf`
//! and `gateway-common`, so a stale object can never be embedded silently.
//! `cargo xtask prebuilt` refreshes both files (`REACT_GATEWAY_UPDATE_PREBUILT=1`).
use std::{
    env, fs,
    path::{Path, PathBuf},
};

const OBJECT: &str = "gateway-ebpf";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let ebpf_dir = root.join("gateway-ebpf");
    let prebuilt = ebpf_dir.join("prebuilt").join(format!("{OBJECT}.o"));
    let prebuilt_hash = ebpf_dir
        .join("prebuilt")
        .join(format!("{OBJECT}.o.srchash"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-env-changed=REACT_GATEWAY_UPDATE_PREBUILT");
    println!("cargo:rerun-if-env-changed=REACT_GATEWAY_PREBUILT_EBPF");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("gateway-common").display()
    );
    println!("cargo:rerun-if-changed={}", prebuilt_hash.display());

    let hash = source_hash(&root);
    let package = aya_build::Package {
        name: "gateway-ebpf",
        root_dir: ebpf_dir.to_str().expect("utf-8 path"),
        ..Default::default()
    };
    // REACT_GATEWAY_PREBUILT_EBPF=1: embed the committed object without building it, for
    // builds whose flags must not reach the eBPF target (fuzzing with sanitizers).
    let build = if env::var_os("REACT_GATEWAY_PREBUILT_EBPF").is_some_and(|v| v == "1") {
        Err("REACT_GATEWAY_PREBUILT_EBPF=1".to_string())
    } else {
        aya_build::build_ebpf([package], aya_build::Toolchain::default())
            .map_err(|e| format!("{e:#}"))
    };
    match build {
        Ok(()) => {
            if env::var_os("REACT_GATEWAY_UPDATE_PREBUILT").is_some() {
                fs::copy(out_dir.join(OBJECT), &prebuilt).expect("copy prebuilt object");
                fs::write(&prebuilt_hash, format!("{hash}\n")).expect("write prebuilt hash");
                println!("cargo:warning=refreshed {}", prebuilt.display());
            }
        }
        Err(error) => {
            let recorded = fs::read_to_string(&prebuilt_hash).unwrap_or_default();
            if recorded.trim() == hash && prebuilt.exists() {
                println!(
                    "cargo:warning=eBPF not built ({error}); using the committed object {} \
                     (its source hash matches)",
                    prebuilt.display()
                );
                fs::copy(&prebuilt, out_dir.join(OBJECT)).expect("copy prebuilt object");
            } else {
                panic!(
                    "building the eBPF programs failed: {error}\n\
                     The committed fallback object does not match the current sources.\n\
                     Run `cargo xtask setup` (installs nightly rust-src and bpf-linker 0.10.0)."
                );
            }
        }
    }
}

/// FNV-1a over the kernel-side sources: detects drift, it is not a security measure.
fn source_hash(root: &Path) -> String {
    let mut files = Vec::new();
    for dir in ["gateway-ebpf/src", "gateway-common/src"] {
        collect(&root.join(dir), &mut files);
    }
    files.push(root.join("gateway-ebpf/Cargo.toml"));
    files.push(root.join("gateway-common/Cargo.toml"));
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .to_string_lossy()
            .into_owned();
        let content = fs::read(&file).unwrap_or_default();
        for byte in rel.bytes().chain([0]).chain(content).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
