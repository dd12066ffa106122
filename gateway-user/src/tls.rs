//! Encryption in transit: the node CA that intercepted TLS is terminated with, ClientHello
//! parsing for sniffing and recording, and the rustls configurations of both legs.
//!
//! # Layout
//! * [`hello`] — ClientHello parser (pure, fuzzed): SNI, versions, cipher suites, ALPN.
//! * [`ca`] — the node CA in the state directory and the leaf certificates it mints.
//! * [`config`] — per-target TLS settings, offer checks, cached rustls configurations.

pub mod ca;
pub mod config;
pub mod hello;

pub use ca::NodeCa;
pub use config::{LegPolicy, Settings, TlsContext};
