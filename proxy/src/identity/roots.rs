//! The mesh's root certificates: the PEM file `--root-cert` names (the
//! `istio-ca-root-cert` ConfigMap, which may hold two roots while one is replaced),
//! parsed once into trust anchors for rustls-webpki.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, TrustAnchor};

use super::der;

/// A root file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("cannot read the root certificate file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the root certificate file {path} is not PEM certificates: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("the root certificate file {path} holds no certificate")]
    Empty { path: PathBuf },
    #[error("certificate {index} of {path} is not a usable root: {reason}")]
    Anchor {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

/// One root, described for `/certs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    pub subject: String,
    /// SHA-256 of the DER certificate, lowercase hex pairs joined by `:`.
    pub sha256: String,
    pub not_after: i64,
}

/// The roots of one version of the file.
#[derive(Debug)]
pub struct Roots {
    /// The certificates, in file order.
    pub certs: Vec<CertificateDer<'static>>,
    /// The same, as webpki trust anchors.
    pub anchors: Vec<TrustAnchor<'static>>,
    pub info: Vec<RootInfo>,
}

impl Roots {
    /// Reads and parses the PEM file at `path`.
    pub fn read(path: &Path) -> Result<Arc<Roots>, RootsError> {
        let pem = std::fs::read(path).map_err(|source| RootsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Roots::from_pem(&pem, path)
    }

    /// Parses PEM `bytes`; `path` only names the source in errors.
    pub fn from_pem(bytes: &[u8], path: &Path) -> Result<Arc<Roots>, RootsError> {
        let certs = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RootsError::Pem {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        Roots::from_der(certs, path)
    }

    /// Roots from DER certificates; `path` only names the source in errors.
    pub fn from_der(
        certs: Vec<CertificateDer<'static>>,
        path: &Path,
    ) -> Result<Arc<Roots>, RootsError> {
        if certs.is_empty() {
            return Err(RootsError::Empty {
                path: path.to_owned(),
            });
        }
        let mut anchors = Vec::with_capacity(certs.len());
        let mut info = Vec::with_capacity(certs.len());
        for (index, c) in certs.iter().enumerate() {
            let bad = |reason: String| RootsError::Anchor {
                path: path.to_owned(),
                index,
                reason,
            };
            let anchor = webpki::anchor_from_trusted_cert(c).map_err(|e| bad(e.to_string()))?;
            anchors.push(anchor.to_owned());
            let d = der::describe(c).map_err(|e| bad(e.to_string()))?;
            info.push(RootInfo {
                subject: d.subject,
                sha256: fingerprint(c),
                not_after: d.not_after,
            });
        }
        Ok(Arc::new(Roots {
            certs,
            anchors,
            info,
        }))
    }

    /// Whether `other` holds the same certificates.
    pub fn same_as(&self, other: &Roots) -> bool {
        self.certs == other.certs
    }

    /// The roots as rustls wants them for a standard (named server) verifier.
    pub fn cert_store(&self) -> rustls::RootCertStore {
        rustls::RootCertStore {
            roots: self.anchors.clone(),
        }
    }
}

/// SHA-256 of `der`, as `ab:cd:...`.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn root_pem(cn: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn reads_one_or_two_roots() {
        let p = Path::new("root-cert.pem");
        let one = Roots::from_pem(root_pem("a").as_bytes(), p).unwrap();
        assert_eq!(one.anchors.len(), 1);
        assert_eq!(one.info[0].subject, "CN=a");
        assert_eq!(one.info[0].sha256.len(), 32 * 3 - 1);
        let two = format!("{}\n{}", root_pem("a"), root_pem("b"));
        let two = Roots::from_pem(two.as_bytes(), p).unwrap();
        assert_eq!(two.info.len(), 2);
        assert_eq!(two.info[1].subject, "CN=b");
        assert!(!two.same_as(&one));
        assert_eq!(two.cert_store().roots.len(), 2);
    }

    #[test]
    fn bad_files_name_the_file() {
        let p = Path::new("/x/root-cert.pem");
        let e = Roots::from_pem(b"", p).unwrap_err().to_string();
        assert!(
            e.contains("/x/root-cert.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = Roots::from_pem(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/x/root-cert.pem"), "{e}");
        let e = Roots::read(Path::new("/nonexistent/root.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read") && e.contains("/nonexistent/root.pem"),
            "{e}"
        );
    }

    #[test]
    fn fingerprint_is_sha256() {
        // SHA-256 of the empty string.
        assert!(fingerprint(b"").starts_with("e3:b0:c4:42"));
    }
}
