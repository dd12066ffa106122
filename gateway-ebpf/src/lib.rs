//! Marker library: the eBPF programs live in `main.rs` and are built for `bpfel-unknown-none`
//! by `gateway-user/build.rs` (aya-build). See the crate's `main.rs` for the programs.
#![no_std]
