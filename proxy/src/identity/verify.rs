//! Certificate checks shared by the CA client (is the CA's answer ours?) and the mTLS
//! verifiers ([`super::tls`]): a path from the leaf to one of the mesh roots, valid now,
//! for the given use (rustls-webpki); the leaf's URI subjectAltNames. No DNS name is
//! ever checked: in the mesh a peer is its SPIFFE id.

use rustls::pki_types::{CertificateDer, UnixTime};

use super::roots::Roots;

/// Which use the leaf must allow (its extendedKeyUsage, when it has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (`serverAuth`).
    Server,
    /// A TLS client (`clientAuth`).
    Client,
}

impl Usage {
    fn key_usage(self) -> webpki::KeyUsage {
        match self {
            Usage::Server => webpki::KeyUsage::server_auth(),
            Usage::Client => webpki::KeyUsage::client_auth(),
        }
    }
}

/// The signature algorithms accepted in certificate chains and TLS handshakes: ring's.
pub fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    super::provider().signature_verification_algorithms
}

/// Checks that `leaf` chains to one of `roots` through `intermediates`, is valid at
/// `now` and allows `usage`.
pub fn chain(
    roots: &Roots,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
) -> Result<(), webpki::Error> {
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    ee.verify_for_usage(
        algorithms().all,
        &roots.anchors,
        intermediates,
        now,
        usage.key_usage(),
        None,
        None,
    )
    .map(|_| ())
}

/// The URI subjectAltNames of `leaf` (empty when it cannot be parsed).
pub fn uri_sans(leaf: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(leaf) {
        Ok(ee) => ee.valid_uri_names().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

/// The SPIFFE id of a certificate chain, leaf first: the leaf's first `spiffe://` URI
/// subjectAltName. The chain must have been verified already (rustls does, before a
/// connection's `peer_certificates()` are readable).
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<String> {
    let leaf = certs.first()?;
    uri_sans(leaf)
        .into_iter()
        .find(|u| u.starts_with("spiffe://"))
}

/// The leaf's SubjectPublicKeyInfo DER.
pub fn spki(leaf: &CertificateDer<'_>) -> Result<Vec<u8>, webpki::Error> {
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    Ok(ee.subject_public_key_info().as_ref().to_vec())
}

/// Whether `cert` is self-issued (subject equals issuer): a root at the end of a chain.
pub fn self_issued(cert: &CertificateDer<'_>) -> bool {
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.subject() == c.issuer())
}

/// A webpki error as rustls reports it to the peer and in its own errors.
pub fn to_rustls(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    use webpki::Error as W;
    #[allow(deprecated)] // the context-free variants webpki still returns in places
    let c = match e {
        W::BadDer | W::BadDerTime | W::TrailingData(_) => C::BadEncoding,
        W::CertExpired { time, not_after } => C::ExpiredContext { time, not_after },
        W::CertNotValidYet { time, not_before } => C::NotValidYetContext { time, not_before },
        W::InvalidCertValidity => C::Expired,
        W::UnknownIssuer => C::UnknownIssuer,
        W::InvalidSignatureForPublicKey => C::BadSignature,
        W::RequiredEkuNotFound | W::RequiredEkuNotFoundContext(_) => C::InvalidPurpose,
        W::UnsupportedSignatureAlgorithm | W::UnsupportedSignatureAlgorithmForPublicKey => {
            C::UnsupportedSignatureAlgorithm
        }
        other => C::Other(rustls::OtherError(std::sync::Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(c)
}
