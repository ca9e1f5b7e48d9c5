//! A fresh key and certificate request for each certificate: ECDSA P-256 (what Istio's
//! agent asks for by default, and the cheapest signature for every TLS 1.3 peer), and a
//! PKCS#10 request whose only subjectAltName is the SPIFFE URI, with an empty subject, as
//! Istio's CA expects.

use rustls::pki_types::PrivatePkcs8KeyDer;

use super::der::{BIT_STRING, BOOLEAN, CONTEXT_0, INTEGER, OCTET_STRING, SEQUENCE, SET};

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
    #[error("`{0}` cannot be a URI subjectAltName (an IA5String: ASCII only)")]
    BadUri(String),
    #[error("cannot make the key or sign the request: {0}")]
    Crypto(String),
}

// DER of the object identifiers the request names.
/// id-ecPublicKey (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1, P-256 (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// ecdsa-with-SHA256 (1.2.840.10045.4.3.2).
const OID_ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// PKCS #9 extensionRequest (1.2.840.113549.1.9.14).
const OID_EXTENSION_REQUEST: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e,
];
/// id-ce-subjectAltName (2.5.29.17).
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];

/// `[6] IMPLICIT IA5String`: a GeneralName's uniformResourceIdentifier.
const URI_NAME: u8 = 0x86;

/// One DER element: `tag`, the definite length of `parts` together, then `parts`.
fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if let Ok(short) = u8::try_from(len)
        && short < 0x80
    {
        out.push(short);
    } else {
        // Long form: 0x80 | the number of length bytes, then the length, big-endian.
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let n = bytes.len() - skip;
        out.push(0x80 | u8::try_from(n).unwrap_or(0x7f));
        out.extend_from_slice(&bytes[skip..]);
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// A BIT STRING of whole bytes (no unused bits).
fn bit_string(bytes: &[u8]) -> Vec<u8> {
    tlv(BIT_STRING, &[&[0], bytes])
}

/// The SubjectPublicKeyInfo of an uncompressed P-256 point (RFC 5480).
fn spki(point: &[u8]) -> Vec<u8> {
    let algorithm = tlv(SEQUENCE, &[OID_EC_PUBLIC_KEY, OID_P256]);
    tlv(SEQUENCE, &[&algorithm, &bit_string(point)])
}

/// The CertificationRequestInfo (RFC 2986 §4.1): version 0, an empty subject, the key,
/// and one extensionRequest attribute holding one extension, subjectAltName with the
/// URI alone, critical as RFC 5280 §4.2.1.6 wants it when the subject is empty.
fn request_info(spki: &[u8], uri: &str) -> Vec<u8> {
    let names = tlv(SEQUENCE, &[&tlv(URI_NAME, &[uri.as_bytes()])]);
    let san = tlv(
        SEQUENCE,
        &[
            OID_SUBJECT_ALT_NAME,
            &[BOOLEAN, 1, 0xff],
            &tlv(OCTET_STRING, &[&names]),
        ],
    );
    let extensions = tlv(SEQUENCE, &[&san]);
    let attribute = tlv(
        SEQUENCE,
        &[OID_EXTENSION_REQUEST, &tlv(SET, &[&extensions])],
    );
    tlv(
        SEQUENCE,
        &[
            &[INTEGER, 1, 0],
            &[SEQUENCE, 0],
            spki,
            &tlv(CONTEXT_0, &[&attribute]),
        ],
    )
}

/// A new P-256 key and a request for a certificate naming `spiffe_id`.
pub fn generate(spiffe_id: &str) -> Result<KeyAndCsr, CsrError> {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
    if !spiffe_id.is_ascii() {
        return Err(CsrError::BadUri(spiffe_id.to_owned()));
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| CsrError::Crypto("no P-256 key from the system's random source".into()))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| CsrError::Crypto(format!("the new key does not load: {e}")))?;
    let spki = spki(key.public_key().as_ref());
    let info = request_info(&spki, spiffe_id);
    let signature = key
        .sign(&rng, &info)
        .map_err(|_| CsrError::Crypto("signing the request failed".into()))?;
    let algorithm = tlv(SEQUENCE, &[OID_ECDSA_SHA256]);
    let csr = tlv(
        SEQUENCE,
        &[&info, &algorithm, &bit_string(signature.as_ref())],
    );
    Ok(KeyAndCsr {
        key: PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec()),
        spki,
        csr_pem: pem("CERTIFICATE REQUEST", &csr),
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

    /// The first element inside the outer SEQUENCE of `der` (the request's info).
    fn first_inner(der: &[u8]) -> &[u8] {
        fn header(b: &[u8]) -> (usize, usize) {
            // (header length, content length) of the element at the start of `b`.
            if b[1] < 0x80 {
                return (2, usize::from(b[1]));
            }
            let n = usize::from(b[1] & 0x7f);
            let len = b[2..2 + n]
                .iter()
                .fold(0, |a, x| (a << 8) | usize::from(*x));
            (2 + n, len)
        }
        let (outer, _) = header(der);
        let (h, len) = header(&der[outer..]);
        &der[outer..outer + h + len]
    }

    #[test]
    fn request_info_is_byte_for_byte_what_rcgen_writes_for_the_same_key() {
        // An independent encoder of the same request (empty subject, the SPIFFE URI as
        // the only, critical, subjectAltName): the signed part must be the same bytes.
        use rcgen::PublicKeyData as _;
        for id in [
            "spiffe://cluster.local/ns/shop/sa/web",
            // Past 127 and 255 bytes: long-form lengths at several levels.
            &format!(
                "spiffe://cluster.local/ns/{}/sa/{}",
                "n".repeat(63),
                "s".repeat(120)
            ),
            &format!("spiffe://cluster.local/ns/shop/sa/{}", "x".repeat(300)),
        ] {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.subject_alt_names = vec![rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(id.to_owned()).unwrap(),
            )];
            let theirs = params.serialize_request(&key).unwrap();
            let ours = request_info(&key.subject_public_key_info(), id);
            assert_eq!(first_inner(theirs.der()), &ours[..], "{id}");
        }
    }

    #[test]
    fn lengths_take_the_short_and_the_long_form() {
        assert_eq!(tlv(0x04, &[&[7; 3]]), [0x04, 3, 7, 7, 7]);
        assert_eq!(tlv(0x04, &[&[0; 127]])[..2], [0x04, 127]);
        assert_eq!(tlv(0x04, &[&[0; 128]])[..3], [0x04, 0x81, 128]);
        assert_eq!(tlv(0x04, &[&[0; 255], &[0]])[..4], [0x04, 0x82, 1, 0]);
        let big = tlv(0x04, &[&vec![0; 70_000]]);
        assert_eq!(big[..5], [0x04, 0x83, 0x01, 0x11, 0x70]);
        assert_eq!(big.len(), 5 + 70_000);
    }

    #[test]
    fn a_non_ascii_id_is_refused() {
        assert!(matches!(
            generate("spiffe://cluster.local/ns/é/sa/x"),
            Err(CsrError::BadUri(_))
        ));
    }
}
