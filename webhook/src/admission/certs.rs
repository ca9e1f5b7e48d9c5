//! The serving certificate: PEM loading, the rustls server config (TLS 1.2 and 1.3 only,
//! ring provider) and the hot swap when the files change on disk.
//!
//! The server config is built once with a resolver that hands out whatever certificate is
//! current, so a rotation never needs a new listener: the next handshake simply sees the
//! new key. A pair that fails to load (half-written files, key and certificate from
//! different rotations) is reported and the old pair keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate/key pair could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no PEM CERTIFICATE block found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: malformed PEM certificate: {detail}", path.display())]
    BadCertificate { path: PathBuf, detail: String },
    #[error("{}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {detail}", path.display())]
    BadKey { path: PathBuf, detail: String },
    #[error("{}: private key not supported: {source}", path.display())]
    UnsupportedKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("certificate {} does not match private key {}: {source}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("building the TLS server config: {0}")]
    Config(rustls::Error),
}

/// The crypto provider of this crate: ring, never aws-lc.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parse a PEM certificate chain and a PEM private key into a key rustls can serve.
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate {
            path: cert_path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::BadKey {
        path: key_path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| CertError::UnsupportedKey {
            path: key_path.to_path_buf(),
            source,
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|source| CertError::Mismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    })?;
    Ok(ck)
}

/// Read and parse the pair from disk.
pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(CertifiedKey, Vec<u8>, Vec<u8>), CertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CertError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let ck = certified_key_from_pem(&cert_pem, &key_pem, cert_path, key_path)?;
    Ok((ck, cert_pem, key_pem))
}

/// Hands the current certificate to every handshake; swapped on rotation.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn new(key: CertifiedKey) -> Self {
        CertStore {
            current: RwLock::new(Arc::new(key)),
        }
    }

    pub fn replace(&self, key: CertifiedKey) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(key);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The server config: TLS 1.3 and 1.2 only, no client auth, HTTP/1.1 by ALPN.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, CertError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(CertError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    #[test]
    fn loads_matching_pair() {
        let (c, k) = pair("a.example");
        let ck = certified_key_from_pem(
            c.as_bytes(),
            k.as_bytes(),
            Path::new("c.pem"),
            Path::new("k.pem"),
        )
        .unwrap();
        assert_eq!(ck.cert.len(), 1);
    }

    #[test]
    fn mismatched_pair_names_both_files() {
        let (c, _) = pair("a.example");
        let (_, k) = pair("b.example");
        let err = certified_key_from_pem(
            c.as_bytes(),
            k.as_bytes(),
            Path::new("tls.crt"),
            Path::new("tls.key"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("tls.crt") && msg.contains("tls.key"), "{msg}");
    }

    #[test]
    fn garbage_is_named() {
        let (c, k) = pair("a.example");
        let err = certified_key_from_pem(
            b"hello",
            k.as_bytes(),
            Path::new("tls.crt"),
            Path::new("tls.key"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("tls.crt"), "{err}");
        let err = certified_key_from_pem(
            c.as_bytes(),
            b"nope",
            Path::new("tls.crt"),
            Path::new("tls.key"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("tls.key"), "{err}");
    }

    #[test]
    fn store_swaps_key() {
        let (c, k) = pair("a.example");
        let store = CertStore::new(
            certified_key_from_pem(c.as_bytes(), k.as_bytes(), Path::new("c"), Path::new("k"))
                .unwrap(),
        );
        let before = store.current().cert[0].clone();
        let (c2, k2) = pair("b.example");
        store.replace(
            certified_key_from_pem(c2.as_bytes(), k2.as_bytes(), Path::new("c"), Path::new("k"))
                .unwrap(),
        );
        assert_ne!(before, store.current().cert[0]);
        server_config(Arc::new(store)).unwrap();
    }
}
