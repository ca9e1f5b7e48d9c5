//! A fresh key and certificate request for each certificate: ECDSA P-256 (what Istio's
//! agent asks for by default, and the cheapest signature for every TLS 1.3 peer), and a
//! PKCS#10 request whose only subjectAltName is the SPIFFE URI, with an empty subject, as
//! Istio's CA expects.

use rustls::pki_types::PrivatePkcs8KeyDer;

/// A key pair and the request for its certificate.
pub struct KeyAndCsr {
    /// The private key, PKCS#8 DER (never logged, never written to disk).
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The public key as SubjectPublicKeyInfo DER: what the leaf must carry.
    pub spki: Vec<u8>,
    /// The request, PEM (`CERTIFICATE REQUEST`), as `IstioCertificateRequest.csr` wants.
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// Making the key or the request failed.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("`{0}` cannot be a URI subjectAltName")]
    BadUri(String),
    #[error("cannot make the key or the request: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A new P-256 key and a request for a certificate naming `spiffe_id`.
pub fn generate(spiffe_id: &str) -> Result<KeyAndCsr, CsrError> {
    use rcgen::PublicKeyData as _;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let uri = rcgen::string::Ia5String::try_from(spiffe_id)
        .map_err(|_| CsrError::BadUri(spiffe_id.to_owned()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params.serialize_request(&key)?;
    Ok(KeyAndCsr {
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        spki: key.subject_public_key_info(),
        csr_pem: pem("CERTIFICATE REQUEST", csr.der()),
    })
}

/// `der` as a PEM block with the given label, 64 characters a line.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII: every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::pki_types::CertificateSigningRequestDer;
    use rustls::pki_types::pem::PemObject as _;

    #[test]
    fn base64_vectors() {
        // RFC 4648 §10.
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i}");
        }
    }

    #[test]
    fn pem_round_trips_through_pki_types() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = pem("CERTIFICATE REQUEST", &der);
        assert!(text.lines().all(|l| l.len() <= 64));
        let back = CertificateSigningRequestDer::from_pem_slice(text.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), &der[..]);
    }

    #[test]
    fn request_names_only_the_spiffe_uri_and_carries_our_key() {
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        let k = generate(id).unwrap();
        let der = CertificateSigningRequestDer::from_pem_slice(k.csr_pem.as_bytes()).unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_der(&der).unwrap();
        assert_eq!(parsed.params.subject_alt_names.len(), 1);
        match &parsed.params.subject_alt_names[0] {
            rcgen::SanType::URI(u) => assert_eq!(u.as_str(), id),
            other => panic!("unexpected SAN {other:?}"),
        }
        assert_eq!(parsed.params.distinguished_name.iter().count(), 0);
        {
            use rcgen::PublicKeyData as _;
            assert_eq!(parsed.public_key.subject_public_key_info(), k.spki);
        }
        // A fresh key every time.
        assert_ne!(generate(id).unwrap().spki, k.spki);
        // The key loads into rustls.
        let provider = rustls::crypto::ring::default_provider();
        provider
            .key_provider
            .load_private_key(k.key.clone_key().into())
            .unwrap();
    }

    #[test]
    fn a_non_ascii_id_is_refused() {
        assert!(matches!(
            generate("spiffe://cluster.local/ns/é/sa/x"),
            Err(CsrError::BadUri(_))
        ));
    }
}
