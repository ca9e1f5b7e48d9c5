//! One `IstioCertificateService/CreateCertificate` call: a fresh key and request
//! ([`super::csr`]), TLS 1.3 to the CA verified against the mesh root, the
//! ServiceAccount token as `authorization: Bearer ...` (read at each call: the kubelet
//! rotates it), and the answer checked before it is used: the leaf carries our public
//! key and exactly our SPIFFE id, and chains to the root in `--root-cert`, valid now, for
//! both TLS server and client use.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_config::ca::{
    AUTHORIZATION, CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::sign::CertifiedKey;

use super::channel::{self, ChannelError, Target};
use super::csr::{self, CsrError, KeyAndCsr};
use super::der;
use super::roots::{Roots, RootsError};
use super::verify::{self, Usage};

/// A certificate the CA issued us, checked, with its key.
#[derive(Debug)]
pub struct WorkloadCert {
    /// The chain (leaf and intermediates, not the root) and the key, as rustls serves it.
    pub certified: Arc<CertifiedKey>,
    /// Our SPIFFE id, which the leaf carries.
    pub spiffe_id: String,
    /// The leaf's serial, lowercase hex.
    pub serial: String,
    /// Validity, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// How to reach the CA and what to ask of it.
#[derive(Debug, Clone)]
pub struct CaClient {
    /// The CA's address and TLS settings (`--ca-address`, `--root-cert`, the server name).
    pub target: Target,
    /// The projected ServiceAccount token (`--token-file`).
    pub token_file: PathBuf,
    /// The mesh root the answer must chain to (`--root-cert`).
    pub root_cert: PathBuf,
    /// Our identity.
    pub spiffe_id: String,
    /// The lifetime asked for (`--cert-ttl`), whole seconds.
    pub cert_ttl: Duration,
    /// The longest a call may take once connected.
    pub call_timeout: Duration,
}

/// Why no certificate came of a call.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read the ServiceAccount token {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ServiceAccount token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("the token in {0} is not a valid header value")]
    BadToken(PathBuf),
    #[error(transparent)]
    Roots(#[from] RootsError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("cannot reach the CA: {0}")]
    Channel(#[from] ChannelError),
    #[error("the CA at {address} did not answer within {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("the CA answered {code}: {message}")]
    Status { code: &'static str, message: String },
    #[error("the CA answered with no certificate")]
    EmptyChain,
    #[error("certificate {index} of the CA's answer is not PEM: {reason}")]
    Pem { index: usize, reason: String },
    #[error("the CA's certificate cannot be read: {0}")]
    Malformed(String),
    #[error("the CA's certificate carries another public key than the one we sent")]
    WrongKey,
    #[error("the CA's certificate names {found:?}, not our identity {expected}")]
    WrongIdentity {
        found: Vec<String>,
        expected: String,
    },
    #[error("the CA's certificate is not valid under the mesh root {path}: {reason}")]
    BadChain { path: PathBuf, reason: String },
    #[error("the CA's certificate does not load into rustls: {0}")]
    Key(rustls::Error),
}

/// gRPC's canonical name of a status code, as `grpc_status` tools print it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl CaClient {
    /// Asks the CA for a certificate for a new key, and checks the answer. Returns the
    /// certificate and the roots (as read now) it was checked against.
    pub async fn fetch(&self) -> Result<(WorkloadCert, Arc<Roots>), CaError> {
        let token = std::fs::read_to_string(&self.token_file).map_err(|source| CaError::Token {
            path: self.token_file.clone(),
            source,
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(CaError::EmptyToken(self.token_file.clone()));
        }
        let mut bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {token}")
                .parse()
                .map_err(|_| CaError::BadToken(self.token_file.clone()))?;
        bearer.set_sensitive(true);
        let roots = Roots::read(&self.root_cert)?;
        let key = csr::generate(&self.spiffe_id)?;

        let h2 = channel::connect(&self.target).await?;
        let mut grpc = tonic::client::Grpc::with_origin(h2, channel::origin(&self.target));
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: key.csr_pem.clone(),
            validity_duration: i64::try_from(self.cert_ttl.as_secs()).unwrap_or(i64::MAX),
        });
        request.metadata_mut().insert(AUTHORIZATION, bearer);
        let call = async {
            grpc.ready().await.map_err(|e| CaError::Status {
                code: "UNAVAILABLE",
                message: e.to_string(),
            })?;
            let codec =
                tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
            let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH);
            grpc.unary(request, path, codec)
                .await
                .map_err(|s| CaError::Status {
                    code: code_name(s.code()),
                    message: s.message().to_owned(),
                })
        };
        let response = tokio::time::timeout(self.call_timeout, call)
            .await
            .map_err(|_| CaError::Timeout {
                address: self.target.address.clone(),
                timeout: self.call_timeout,
            })??;
        let cert = accept(
            &response.into_inner().cert_chain,
            key,
            &self.spiffe_id,
            &roots,
            &self.root_cert,
            UnixTime::now(),
        )?;
        Ok((cert, roots))
    }
}

/// Checks the CA's `chain` (PEM strings, leaf first, root last) for `key` and
/// `spiffe_id` against `roots` at `now`, and makes the certificate rustls serves.
pub fn accept(
    chain: &[String],
    key: KeyAndCsr,
    spiffe_id: &str,
    roots: &Roots,
    root_path: &std::path::Path,
    now: UnixTime,
) -> Result<WorkloadCert, CaError> {
    let mut certs: Vec<CertificateDer<'static>> = Vec::with_capacity(chain.len());
    for (index, pem) in chain.iter().enumerate() {
        let mut any = false;
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let c = c.map_err(|e| CaError::Pem {
                index,
                reason: e.to_string(),
            })?;
            certs.push(c);
            any = true;
        }
        if !any {
            return Err(CaError::Pem {
                index,
                reason: "no CERTIFICATE block".into(),
            });
        }
    }
    let Some(leaf) = certs.first() else {
        return Err(CaError::EmptyChain);
    };
    let spki = verify::spki(leaf).map_err(|e| CaError::Malformed(e.to_string()))?;
    if spki != key.spki {
        return Err(CaError::WrongKey);
    }
    let uris = verify::uri_sans(leaf);
    if uris.is_empty() || uris.iter().any(|u| u != spiffe_id) {
        return Err(CaError::WrongIdentity {
            found: uris,
            expected: spiffe_id.to_owned(),
        });
    }
    for usage in [Usage::Server, Usage::Client] {
        verify::chain(roots, leaf, &certs[1..], now, usage).map_err(|e| CaError::BadChain {
            path: root_path.to_owned(),
            reason: verify::to_rustls(e).to_string(),
        })?;
    }
    let info = der::describe(leaf).map_err(|e| CaError::Malformed(e.to_string()))?;
    // What we present: the leaf and any intermediates; the root is the peer's to have.
    if certs.len() > 1 && certs.last().is_some_and(verify::self_issued) {
        certs.pop();
    }
    let certified =
        CertifiedKey::from_der(certs, PrivateKeyDer::Pkcs8(key.key), &super::provider())
            .map_err(CaError::Key)?;
    Ok(WorkloadCert {
        certified: Arc::new(certified),
        spiffe_id: spiffe_id.to_owned(),
        serial: der::hex(&info.serial),
        not_before: info.not_before,
        not_after: info.not_after,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::identity::testca::TestCa;
    use std::path::Path;

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/web";

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn a_good_answer_is_accepted_and_the_root_is_not_presented() {
        let ca = TestCa::new();
        let key = csr::generate(ID).unwrap();
        let chain = ca.sign(&key.csr_pem, &[ID], 60);
        let c = accept(&chain, key, ID, &ca.roots(), Path::new("r.pem"), now()).unwrap();
        assert_eq!(c.spiffe_id, ID);
        assert_eq!(c.certified.cert.len(), 1, "leaf only");
        assert!(c.not_after - c.not_before >= 60);
        assert!(!c.serial.is_empty());
    }

    #[test]
    fn a_wrong_identity_is_refused() {
        let ca = TestCa::new();
        let key = csr::generate(ID).unwrap();
        let other = "spiffe://cluster.local/ns/shop/sa/admin";
        let chain = ca.sign(&key.csr_pem, &[other], 60);
        let e = accept(&chain, key, ID, &ca.roots(), Path::new("r.pem"), now()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CaError::WrongIdentity { .. }), "{msg}");
        assert!(msg.contains(other) && msg.contains(ID), "{msg}");
        // An extra URI beside ours is refused too.
        let key = csr::generate(ID).unwrap();
        let chain = ca.sign(&key.csr_pem, &[ID, other], 60);
        let e = accept(&chain, key, ID, &ca.roots(), Path::new("r.pem"), now()).unwrap_err();
        assert!(matches!(e, CaError::WrongIdentity { .. }), "{e}");
    }

    #[test]
    fn another_key_another_root_and_expiry_are_refused() {
        let ca = TestCa::new();
        let key = csr::generate(ID).unwrap();
        let other_key = csr::generate(ID).unwrap();
        let chain = ca.sign(&other_key.csr_pem, &[ID], 60);
        let e = accept(&chain, key, ID, &ca.roots(), Path::new("r.pem"), now()).unwrap_err();
        assert!(matches!(e, CaError::WrongKey), "{e}");

        let key = csr::generate(ID).unwrap();
        let chain = ca.sign(&key.csr_pem, &[ID], 60);
        let stranger = TestCa::new();
        let e = accept(
            &chain,
            key,
            ID,
            &stranger.roots(),
            Path::new("/etc/r.pem"),
            now(),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, CaError::BadChain { .. })
                && msg.contains("/etc/r.pem")
                && (msg.contains("UnknownIssuer") || msg.contains("BadSignature")),
            "{msg}"
        );

        let key = csr::generate(ID).unwrap();
        let chain = ca.sign(&key.csr_pem, &[ID], 60);
        let later = UnixTime::since_unix_epoch(Duration::from_secs(now().as_secs() + 3600));
        let e = accept(&chain, key, ID, &ca.roots(), Path::new("r.pem"), later).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[test]
    fn malformed_answers_are_refused() {
        let ca = TestCa::new();
        let key = csr::generate(ID).unwrap();
        let e = accept(&[], key, ID, &ca.roots(), Path::new("r.pem"), now()).unwrap_err();
        assert!(matches!(e, CaError::EmptyChain), "{e}");
        let key = csr::generate(ID).unwrap();
        let e = accept(
            &["garbage".into()],
            key,
            ID,
            &ca.roots(),
            Path::new("r.pem"),
            now(),
        )
        .unwrap_err();
        assert!(matches!(e, CaError::Pem { index: 0, .. }), "{e}");
        let key = csr::generate(ID).unwrap();
        let junk = csr::pem("CERTIFICATE", b"\x30\x03\x02\x01\x01");
        let e = accept(&[junk], key, ID, &ca.roots(), Path::new("r.pem"), now()).unwrap_err();
        assert!(matches!(e, CaError::Malformed(_)), "{e}");
    }

    #[test]
    fn status_codes_read_as_grpc_names() {
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }
}
