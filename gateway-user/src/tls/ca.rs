//! The node CA: an ECDSA P-256 CA created at first start in the state directory, and the leaf
//! certificates it mints per server name for intercepted TLS.
//!
//! Files: `ca.pem` (the CA certificate, what `ca export` prints), `ca.key` (mode 0600) and
//! `ca-bundle.pem` (system roots + the node CA, which `exec` points clients at). The issuer is
//! rebuilt from the same fixed parameters and the stored key on every start, so leaves minted
//! after a restart chain to the same CA certificate.
//!
//! Leaves are valid for [`LEAF_VALIDITY`] (backdated an hour for clock skew), cached per name,
//! and re-minted once half their life has passed, so no client ever sees one near expiry.

use std::{
    collections::HashMap,
    fs,
    io::Write as _,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};

/// How long a minted leaf is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves cached at most; past that the cache starts over.
const LEAF_CACHE: usize = 10_000;
const CA_NAME: &str = "react-gateway node CA";
/// Where Debian keeps the system trust store.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {0} {1}: {2}")]
    Io(&'static str, PathBuf, std::io::Error),
    #[error("node CA in {0} is unusable ({1}); move ca.pem and ca.key away to create a new one")]
    Corrupt(PathBuf, String),
    #[error("cannot mint a certificate for {0}: {1}")]
    Mint(String, rcgen::Error),
}

pub struct NodeCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    leaves: Mutex<HashMap<String, (Arc<CertifiedKey>, Instant)>>,
}

impl std::fmt::Debug for NodeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCa").finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "react-gateway");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn serial() -> SerialNumber {
    // Serials need uniqueness, not secrecy: the clock stands in if /dev/urandom is unreadable.
    let mut bytes = crate::state::random_bytes::<16>().unwrap_or_else(|_| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_be_bytes()
    });
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

impl NodeCa {
    /// Loads the CA of `dir`, creating it on first start, and (re)writes `ca-bundle.pem`.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let ca = match (
            fs::read_to_string(&cert_path),
            fs::read_to_string(&key_path),
        ) {
            (Ok(cert_pem), Ok(key_pem)) => Self::from_pem(&cert_pem, &key_pem)
                .map_err(|e| CaError::Corrupt(dir.to_path_buf(), e))?,
            _ => {
                let ca = Self::generate().map_err(|e| CaError::Mint(CA_NAME.into(), e))?;
                write_file(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
                write_file(&cert_path, ca.cert_pem.as_bytes(), 0o644)?;
                tracing::info!(path = %cert_path.display(), "node CA created");
                ca
            }
        };
        let mut bundle = fs::read_to_string(SYSTEM_ROOTS).unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(&ca.cert_pem);
        write_file(&dir.join("ca-bundle.pem"), bundle.as_bytes(), 0o644)?;
        Ok(ca)
    }

    fn generate() -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params();
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + CA_VALIDITY).into();
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(ca_params(), key),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject as _;
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("ca.key: {e}"))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("ca.pem: {e}"))?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            cert_der,
            issuer: Issuer::new(ca_params(), key),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf for `name` (a DNS name or an IP address), from the cache while it is fresh.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some((leaf, minted)) = crate::lock(&self.leaves).get(&name)
            && minted.elapsed() < LEAF_VALIDITY / 2
        {
            return Ok(Arc::clone(leaf));
        }
        let leaf = Arc::new(self.mint(&name)?);
        let mut leaves = crate::lock(&self.leaves);
        if leaves.len() >= LEAF_CACHE {
            leaves.clear();
        }
        leaves.insert(name, (Arc::clone(&leaf), Instant::now()));
        Ok(leaf)
    }

    fn mint(&self, name: &str) -> Result<CertifiedKey, CaError> {
        let err = |e| CaError::Mint(name.to_string(), e);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.to_string().try_into().map_err(err)?),
        }];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + LEAF_VALIDITY).into();
        params.serial_number = Some(serial());
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der)
            .map_err(|_| CaError::Mint(name.to_string(), rcgen::Error::RemoteKeyError))?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            signer,
        ))
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp");
    let result = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    result.map_err(|e| CaError::Io("write", path.to_path_buf(), e))
}

/// Reads the CA certificate of a state directory (`ca export`).
pub fn export(dir: &Path) -> Result<String, CaError> {
    let path = dir.join("ca.pem");
    fs::read_to_string(&path).map_err(|e| CaError::Io("read", path, e))
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;

    use super::*;

    #[test]
    fn ca_persists_and_leaves_chain_to_it() {
        let dir = std::env::temp_dir().join(format!("rg-ca-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let first = NodeCa::load_or_create(&dir).unwrap();
        let mode = fs::metadata(dir.join("ca.key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let again = NodeCa::load_or_create(&dir).unwrap();
        assert_eq!(first.pem(), again.pem(), "a restart keeps the CA");
        assert!(
            fs::read_to_string(dir.join("ca-bundle.pem"))
                .unwrap()
                .ends_with(first.pem())
        );

        // A leaf minted after the "restart" verifies against the CA for its names only.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(first.cert_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        for name in ["api.example.test", "127.0.0.2", "::1"] {
            let leaf = again.leaf(name).unwrap();
            let server = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(
                    &leaf.cert[0],
                    &leaf.cert[1..],
                    &server,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let other = rustls::pki_types::ServerName::try_from("other.test").unwrap();
            assert!(
                verifier
                    .verify_server_cert(
                        &leaf.cert[0],
                        &leaf.cert[1..],
                        &other,
                        &[],
                        rustls::pki_types::UnixTime::now()
                    )
                    .is_err()
            );
            assert!(Arc::ptr_eq(&leaf, &again.leaf(name).unwrap()), "cached");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
