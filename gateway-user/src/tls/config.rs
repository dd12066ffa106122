//! rustls configurations for both legs, built from a target's TLS settings and cached, so a
//! new connection costs a map lookup, and upstream sessions resume (the client configuration
//! carries the resumption store).

use std::{
    collections::HashMap,
    hash::Hash,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::{ca::NodeCa, hello};
use crate::policy::{Policy, TargetProtocol, TlsMode, TlsVersion};

/// Configurations cached at most per kind; past that the cache starts over.
const CACHE: usize = 1_024;

/// The TLS settings one session runs under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LegPolicy {
    pub min_version: TlsVersion,
    /// rustls names; empty = every suite rustls offers.
    pub cipher_suites: Vec<String>,
    pub upstream_ca: Option<PathBuf>,
}

/// What the proxy does with a session's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: TlsMode,
    pub leg: LegPolicy,
    pub upstream_port: Option<u16>,
    /// The target speaks HTTPS: clear text may not go upstream.
    pub requires_tls: bool,
}

/// The settings of `target` (`None`: unmatched). A target without `[target.tls]` is
/// intercepted when its protocol is `https` and passed through otherwise; TLS to an unmatched
/// destination (record or allow mode) is passed through, since nothing asked to decrypt it.
pub fn settings(policy: &Policy, target: Option<usize>) -> Settings {
    let floor = policy.defaults.tls_min_version;
    let target = target.map(|t| &policy.targets[t]);
    let requires_tls = target.is_some_and(|t| t.protocol == TargetProtocol::Https);
    match target.and_then(|t| t.tls.as_ref()) {
        Some(tls) => Settings {
            mode: tls.mode,
            leg: LegPolicy {
                min_version: tls.min_version.max(floor),
                cipher_suites: tls.cipher_suites.clone(),
                upstream_ca: tls.upstream_ca.clone(),
            },
            upstream_port: tls.upstream_port,
            requires_tls,
        },
        None => Settings {
            mode: if requires_tls {
                TlsMode::Intercept
            } else {
                TlsMode::Passthrough
            },
            leg: LegPolicy {
                min_version: floor,
                cipher_suites: Vec::new(),
                upstream_ca: None,
            },
            upstream_port: None,
            requires_tls,
        },
    }
}

static ONLY_TLS13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    match min {
        TlsVersion::V1_2 => rustls::ALL_VERSIONS,
        TlsVersion::V1_3 => &ONLY_TLS13,
    }
}

fn suite_name(suite: SupportedCipherSuite) -> String {
    format!("{:?}", suite.suite())
}

/// The ring provider restricted to `leg`'s suites and versions, in the gateway's order of
/// preference: TLS 1.3 before 1.2, then [`suite_rank`].
fn provider(leg: &LegPolicy) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|suite| {
        (leg.cipher_suites.is_empty() || leg.cipher_suites.contains(&suite_name(*suite)))
            && (leg.min_version == TlsVersion::V1_2 || suite.tls13().is_some())
    });
    let fast_aes = aes_in_hardware();
    provider
        .cipher_suites
        .sort_by_key(|suite| (suite.tls13().is_none(), suite_rank(*suite, fast_aes)));
    provider
}

/// Where the gateway puts a suite among the allowed ones (all of them are strong; the order
/// is about cost). ring's default order puts AES-256-GCM with SHA-384 first, and SHA-384 runs
/// in software here: about 5% of the daemon's CPU per intercepted connection went to it. With
/// AES in hardware, AES-128-GCM (SHA-256, which has instructions of its own) comes first, as
/// `BoringSSL` and Go order them; without, ChaCha20-Poly1305.
fn suite_rank(suite: SupportedCipherSuite, fast_aes: bool) -> u8 {
    let name = suite_name(suite);
    match (
        name.contains("AES_128_GCM"),
        name.contains("CHACHA20"),
        fast_aes,
    ) {
        (true, _, true) | (_, true, false) => 0,
        (_, true, true) | (true, _, false) => 1,
        _ => 2,
    }
}

/// Whether AES-GCM runs on dedicated instructions here (ring uses them when present).
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Why a client's offer is refused before any handshake, with the alert to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub alert: u8,
    pub reason: String,
}

/// `protocol_version` (70) and `handshake_failure` (40) alert descriptions.
pub const ALERT_PROTOCOL_VERSION: u8 = 70;
pub const ALERT_HANDSHAKE_FAILURE: u8 = 40;
pub const ALERT_ACCESS_DENIED: u8 = 49;

/// A fatal alert record.
pub fn alert(description: u8) -> [u8; 7] {
    [21, 3, 3, 0, 2, 2, description]
}

/// Checks what a client offered against `leg`: some allowed version, some allowed suite.
pub fn check_offer(offer: &hello::ClientHello, leg: &LegPolicy) -> Result<(), Refusal> {
    let floor = match leg.min_version {
        TlsVersion::V1_2 => 0x0303,
        TlsVersion::V1_3 => 0x0304,
    };
    if !offer.versions.iter().any(|v| (floor..=0x0304).contains(v)) {
        let offered: Vec<String> = offer
            .versions
            .iter()
            .map(|v| hello::version_name(*v))
            .collect();
        return Err(Refusal {
            alert: ALERT_PROTOCOL_VERSION,
            reason: format!(
                "client offered only {} (policy minimum {})",
                offered.join(", "),
                leg.min_version.as_str()
            ),
        });
    }
    let allowed = provider(leg);
    if !offer.cipher_suites.iter().any(|offered| {
        allowed
            .cipher_suites
            .iter()
            .any(|s| u16::from(s.suite()) == *offered)
    }) {
        return Err(Refusal {
            alert: ALERT_HANDSHAKE_FAILURE,
            reason: format!(
                "no offered cipher suite is allowed (offered {}; allowed {})",
                offer
                    .cipher_suites
                    .iter()
                    .map(|s| hello::suite_name(*s))
                    .collect::<Vec<_>>()
                    .join(", "),
                allowed
                    .cipher_suites
                    .iter()
                    .map(|s| suite_name(*s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(())
}

/// Serves leaves minted by the node CA for the SNI, or for `fallback` (the destination
/// address) when the client sent none.
#[derive(Debug)]
struct LeafResolver {
    ca: Arc<NodeCa>,
    fallback: Option<String>,
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().or(self.fallback.as_deref())?;
        match self.ca.leaf(name) {
            Ok(leaf) => Some(leaf),
            Err(error) => {
                tracing::error!(%error, "no leaf certificate");
                None
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ServerKey {
    leg: LegPolicy,
    alpn: Option<Vec<u8>>,
    fallback: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    leg: LegPolicy,
    alpn: Vec<Vec<u8>>,
}

/// The node CA and the cached configurations of both legs.
pub struct TlsContext {
    pub ca: Arc<NodeCa>,
    servers: Mutex<HashMap<ServerKey, Arc<ServerConfig>>>,
    clients: Mutex<HashMap<ClientKey, Arc<ClientConfig>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("TLS settings unusable: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("upstream_ca {0}: {1}")]
    UpstreamCa(PathBuf, String),
}

fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        CertificateDer::pem_file_iter(super::ca::SYSTEM_ROOTS)
            .map(|certs| certs.filter_map(Result::ok).collect())
            .unwrap_or_else(|error| {
                tracing::warn!(%error, path = super::ca::SYSTEM_ROOTS, "no system trust store; upstreams must be trusted through upstream_ca");
                Vec::new()
            })
    })
}

fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| ConfigError::UpstreamCa(path.to_path_buf(), e.to_string()))?
        .collect();
    let certs = certs.map_err(|e| ConfigError::UpstreamCa(path.to_path_buf(), e.to_string()))?;
    if certs.is_empty() {
        return Err(ConfigError::UpstreamCa(
            path.to_path_buf(),
            "no PEM certificate in it".into(),
        ));
    }
    Ok(certs)
}

fn cached<K: Hash + Eq, V>(
    cache: &Mutex<HashMap<K, Arc<V>>>,
    key: K,
    make: impl FnOnce(&K) -> Result<V, ConfigError>,
) -> Result<Arc<V>, ConfigError> {
    let lock = || crate::lock(&cache);
    if let Some(found) = lock().get(&key) {
        return Ok(Arc::clone(found));
    }
    let made = Arc::new(make(&key)?);
    let mut map = lock();
    if map.len() >= CACHE {
        map.clear();
    }
    Ok(Arc::clone(map.entry(key).or_insert(made)))
}

impl TlsContext {
    pub fn new(ca: NodeCa) -> Self {
        Self {
            ca: Arc::new(ca),
            servers: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration terminating a client's TLS under `leg`, answering ALPN with `alpn`
    /// (the protocol negotiated upstream) and minting leaves for the SNI or `fallback`.
    pub fn server(
        &self,
        leg: &LegPolicy,
        alpn: Option<&[u8]>,
        fallback: Option<String>,
    ) -> Result<Arc<ServerConfig>, ConfigError> {
        let key = ServerKey {
            leg: leg.clone(),
            alpn: alpn.map(<[u8]>::to_vec),
            fallback,
        };
        cached(&self.servers, key, |key| {
            let mut config = ServerConfig::builder_with_provider(Arc::new(provider(leg)))
                .with_protocol_versions(versions(leg.min_version))?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(LeafResolver {
                    ca: Arc::clone(&self.ca),
                    fallback: key.fallback.clone(),
                }));
            config.alpn_protocols = key.alpn.iter().cloned().collect();
            // The agent's leg is on this node: the suite cheapest here wins (see
            // `suite_rank`), whatever order the client listed them in.
            config.ignore_client_order = true;
            Ok(config)
        })
    }

    /// The configuration of an upstream leg under `leg`, offering `alpn`, trusting the system
    /// roots plus the target's `upstream_ca`.
    pub fn client(
        &self,
        leg: &LegPolicy,
        alpn: &[Vec<u8>],
    ) -> Result<Arc<ClientConfig>, ConfigError> {
        let key = ClientKey {
            leg: leg.clone(),
            alpn: alpn.to_vec(),
        };
        cached(&self.clients, key, |_| {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(system_roots().iter().cloned());
            if let Some(path) = &leg.upstream_ca {
                for cert in read_ca(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| ConfigError::UpstreamCa(path.clone(), e.to_string()))?;
                }
            }
            let mut config = ClientConfig::builder_with_provider(Arc::new(provider(leg)))
                .with_protocol_versions(versions(leg.min_version))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = alpn.to_vec();
            Ok(config)
        })
    }
}

/// `TLSv1.3` / `TLS13_AES_128_GCM_SHA256` of an established connection.
pub fn negotiated(conn: &rustls::CommonState) -> crate::session::TlsLeg {
    crate::session::TlsLeg {
        version: conn
            .protocol_version()
            .map(|v| hello::version_name(u16::from(v))),
        cipher: conn.negotiated_cipher_suite().map(suite_name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(min: TlsVersion, suites: &[&str]) -> LegPolicy {
        LegPolicy {
            min_version: min,
            cipher_suites: suites.iter().map(ToString::to_string).collect(),
            upstream_ca: None,
        }
    }

    fn offer(versions: &[u16], suites: &[u16]) -> hello::ClientHello {
        hello::ClientHello {
            sni: None,
            versions: versions.to_vec(),
            cipher_suites: suites.to_vec(),
            alpn: Vec::new(),
        }
    }

    #[test]
    fn offers_are_checked_against_the_policy() {
        let any12 = leg(TlsVersion::V1_2, &[]);
        assert!(check_offer(&offer(&[0x0304, 0x0303], &[0x1301]), &any12).is_ok());
        let old = check_offer(&offer(&[0x0302], &[0xc02f]), &any12).unwrap_err();
        assert_eq!(old.alert, ALERT_PROTOCOL_VERSION);
        assert!(old.reason.contains("TLSv1.1"), "{}", old.reason);
        let only13 = leg(TlsVersion::V1_3, &[]);
        assert!(check_offer(&offer(&[0x0303], &[0xc02f]), &only13).is_err());
        let strict = leg(TlsVersion::V1_3, &["TLS13_AES_256_GCM_SHA384"]);
        let refusal = check_offer(&offer(&[0x0304], &[0x1301, 0x1303]), &strict).unwrap_err();
        assert_eq!(refusal.alert, ALERT_HANDSHAKE_FAILURE);
        assert!(refusal.reason.contains("TLS13_AES_256_GCM_SHA384"));
        assert!(check_offer(&offer(&[0x0304], &[0x1302]), &strict).is_ok());
        // TLS 1.2 suites do not count when the floor is 1.3.
        assert!(check_offer(&offer(&[0x0304, 0x0303], &[0xc02f]), &only13).is_err());
    }

    #[test]
    fn every_policy_suite_name_is_a_rustls_suite() {
        let names: Vec<String> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| suite_name(*s))
            .collect();
        for name in crate::policy::compile::CIPHER_SUITES {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
    }

    #[test]
    fn suites_are_ordered_by_cost_within_the_policy() {
        let names = |leg: &LegPolicy| -> Vec<String> {
            provider(leg)
                .cipher_suites
                .iter()
                .map(|s| suite_name(*s))
                .collect()
        };
        let all = names(&leg(TlsVersion::V1_2, &[]));
        let first = if aes_in_hardware() {
            "TLS13_AES_128_GCM_SHA256"
        } else {
            "TLS13_CHACHA20_POLY1305_SHA256"
        };
        assert_eq!(all[0], first, "{all:?}");
        assert!(all[..3].iter().all(|n| n.starts_with("TLS13_")), "{all:?}");
        assert_eq!(all.len(), 9, "nothing dropped by the ordering: {all:?}");
        let strict = names(&leg(
            TlsVersion::V1_3,
            &["TLS13_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256"],
        ));
        assert_eq!(strict.len(), 2, "only the policy's suites: {strict:?}");
        let suite_named = |suite: &str| {
            rustls::crypto::ring::default_provider()
                .cipher_suites
                .into_iter()
                .find(|s| suite_name(*s) == suite)
                .expect("suite")
        };
        let (aes128, chacha) = (
            suite_named("TLS13_AES_128_GCM_SHA256"),
            suite_named("TLS13_CHACHA20_POLY1305_SHA256"),
        );
        assert!(suite_rank(aes128, true) < suite_rank(chacha, true));
        assert!(suite_rank(chacha, false) < suite_rank(aes128, false));
    }
}
