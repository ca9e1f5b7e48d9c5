//! The signing key and its chain, and signing a CSR for one identity. Pure: no I/O, the
//! clock is a parameter.
//!
//! An [`Authority`] is a CA key, the certificate that key signs with, the intermediates
//! between that certificate and the root (possibly none), and the root(s). It comes from
//! one of two places:
//! - [`Authority::self_signed`]: a new root, ECDSA P-256, `CA:true`, keyUsage
//!   `keyCertSign | cRLSign`, subject `O=<trust domain>`, ten years. (Istio's self-signed
//!   root is RSA 2048 for ten years; we choose P-256: smaller certificates and handshakes,
//!   faster signatures, and every TLS stack a sidecar uses verifies it.)
//! - [`Authority::from_pems`]: a plugged-in CA in Istio's `cacerts` layout (`ca-cert.pem`,
//!   `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`), checked before it is used: the key
//!   is the certificate's, the certificate is a CA, and it chains to the root through
//!   `cert-chain.pem`.
//!
//! [`Authority::sign`] issues a workload leaf for exactly the identity it is told the
//! caller has, and answers the chain as Istio's CA does: leaf, intermediates, root.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

/// The self-signed root's lifetime (Istio's: ten years).
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far before "now" a new certificate becomes valid, for peers whose clock is behind.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Istio's default `--max-workload-cert-ttl` (`MAX_WORKLOAD_CERT_TTL`): 90 days.
pub const DEFAULT_MAX_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// The Secret keys (and file names) of Istio's CA layout, as errors name them.
pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const ROOT_CERT: &str = "root-cert.pem";

/// Why a CA cannot be loaded: which of its files is wrong, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct AuthorityError {
    /// [`CA_CERT`], [`CA_KEY`], [`CERT_CHAIN`] or [`ROOT_CERT`].
    pub file: &'static str,
    pub reason: String,
}

fn bad(file: &'static str, reason: impl Into<String>) -> AuthorityError {
    AuthorityError {
        file,
        reason: reason.into(),
    }
}

/// Why a certificate is not issued. The message is what the caller sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Not a PEM PKCS#10 request, a signature that does not verify, an extension we do
    /// not sign.
    #[error("bad CSR: {0}")]
    BadCsr(String),
    /// The CSR's SANs are not exactly the caller's one identity.
    #[error("the CSR asks for {asked}, but this caller may be issued only URI:{allowed}")]
    Identity { asked: String, allowed: String },
    /// Istio's words: "requested TTL ... is greater than the max allowed TTL ...".
    #[error(
        "requested TTL {} is greater than the max allowed TTL {}",
        human(*requested),
        human(*max)
    )]
    Ttl { requested: Duration, max: Duration },
    /// Signing itself failed (never expected with a key that loaded).
    #[error("signing failed: {0}")]
    Internal(String),
}

/// `2160h`, `90m`, `45s`: the largest unit that divides the duration (whole seconds).
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{:.3}s", d.as_secs_f64())
    } else if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The lifetime a workload certificate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    /// When the request asks for none (`--workload-cert-ttl`).
    pub default: Duration,
    /// Longer requests are refused (`--max-workload-cert-ttl`).
    pub max: Duration,
}

impl TtlPolicy {
    /// The request's `validity_duration` (seconds) if positive, else the default; a
    /// request above the max is refused, as Istio does (it does not shorten it).
    pub fn pick(&self, validity_duration_secs: i64) -> Result<Duration, SignError> {
        let ttl = match u64::try_from(validity_duration_secs) {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => self.default,
        };
        if ttl > self.max {
            return Err(SignError::Ttl {
                requested: ttl,
                max: self.max,
            });
        }
        Ok(ttl)
    }
}

/// A certificate issued by [`Authority::issue_serving`], for rustls.
pub struct Issued {
    /// Leaf first, then the intermediates (not the root).
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

/// The CA: a signing key, its certificate, the intermediates up to the root, the root.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_cert_pem: String,
    /// Sent after the leaf: the signing certificate (unless it is the root) and the
    /// intermediates above it, in order.
    chain_pem: Vec<String>,
    chain_der: Vec<CertificateDer<'static>>,
    /// `root-cert.pem` as one string (it may hold several roots, as Istio allows).
    root_pem: String,
    /// No leaf outlives the signing certificate or any certificate above it.
    not_after: SystemTime,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("chain_len", &self.chain_pem.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed root for `trust_domain`, valid from `now` - [`CLOCK_SKEW`] for
    /// [`ROOT_TTL`].
    pub fn self_signed(trust_domain: &str, now: SystemTime) -> Result<Authority, SignError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| SignError::Internal(format!("generating the root key: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ROOT_TTL).into();
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| SignError::Internal(format!("self-signing the root: {e}")))?;
        let pem = cert.pem();
        let not_after = to_system_time(params.not_after);
        Ok(Authority {
            issuer: Issuer::new(params, key),
            ca_cert_pem: pem.clone(),
            chain_pem: Vec::new(),
            chain_der: Vec::new(),
            root_pem: pem,
            not_after,
        })
    }

    /// A plugged-in CA (Istio's `cacerts`): `ca_cert` signs with `ca_key`; `cert_chain`
    /// holds the certificates from `ca_cert` up to the root (Istio's layout starts it with
    /// `ca-cert.pem` itself and may end it with the root: both are accepted, neither is
    /// sent twice; it may be empty when `ca_cert` is signed by the root directly or is the
    /// root); `root_cert` holds one or more roots. Each is checked, as of `now`.
    pub fn from_pems(
        ca_cert: &str,
        ca_key: &str,
        cert_chain: &str,
        root_cert: &str,
        now: SystemTime,
    ) -> Result<Authority, AuthorityError> {
        let ca_der = single_cert(CA_CERT, ca_cert)?;
        let chain_ders = certs(CERT_CHAIN, cert_chain)?;
        let root_ders = certs(ROOT_CERT, root_cert)?;
        if root_ders.is_empty() {
            return Err(bad(ROOT_CERT, "no certificate in it"));
        }
        let ca = parse(CA_CERT, &ca_der)?;
        let key = parse_key(ca_key)?;
        if key.subject_public_key_info() != ca.public_key().raw {
            return Err(bad(
                CA_KEY,
                format!("the key is not the one of the certificate in {CA_CERT}"),
            ));
        }
        match ca.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            Ok(_) => {
                return Err(bad(
                    CA_CERT,
                    "not a CA certificate (basicConstraints CA:true is missing)",
                ));
            }
            Err(e) => return Err(bad(CA_CERT, format!("basicConstraints: {e}"))),
        }
        match ca.key_usage() {
            Ok(Some(ku)) if !ku.value.key_cert_sign() => {
                return Err(bad(
                    CA_CERT,
                    "its keyUsage does not allow signing certificates (keyCertSign)",
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(bad(CA_CERT, format!("keyUsage: {e}"))),
        }

        // The path above ca-cert: cert-chain.pem without ca-cert itself and without roots.
        let is_root = |d: &CertificateDer<'_>| root_ders.iter().any(|r| r.as_ref() == d.as_ref());
        let intermediates: Vec<CertificateDer<'static>> = chain_ders
            .into_iter()
            .filter(|d| d.as_ref() != ca_der.as_ref() && !is_root(d))
            .collect();
        let parsed_intermediates = intermediates
            .iter()
            .map(|d| parse(CERT_CHAIN, d))
            .collect::<Result<Vec<_>, _>>()?;
        let roots = root_ders
            .iter()
            .map(|d| parse(ROOT_CERT, d))
            .collect::<Result<Vec<_>, _>>()?;

        let mut not_after = check_time(CA_CERT, &ca, now)?;
        let mut child = (&ca, CA_CERT);
        for (i, parent) in parsed_intermediates.iter().enumerate() {
            not_after = not_after.min(check_time(CERT_CHAIN, parent, now)?);
            if !signed_by(child.0, parent) {
                return Err(bad(
                    CERT_CHAIN,
                    format!(
                        "certificate {} of the chain (subject {}) did not sign {} (issuer {})",
                        i + 1,
                        parent.subject(),
                        if i == 0 {
                            CA_CERT.to_owned()
                        } else {
                            format!("certificate {i} of the chain")
                        },
                        child.0.issuer()
                    ),
                ));
            }
            child = (parent, CERT_CHAIN);
        }
        let ca_is_root = is_root(&ca_der);
        if ca_is_root {
            if !intermediates.is_empty() {
                return Err(bad(
                    CERT_CHAIN,
                    format!("{CA_CERT} is a root, but {CERT_CHAIN} has certificates above it"),
                ));
            }
        } else {
            let Some(root) = roots.iter().find(|r| signed_by(child.0, r)) else {
                return Err(bad(
                    ROOT_CERT,
                    format!(
                        "no root in it signed {} (issuer {}): {CA_CERT} does not chain to \
                         {ROOT_CERT} through {CERT_CHAIN}",
                        if child.1 == CA_CERT {
                            CA_CERT.to_owned()
                        } else {
                            format!("the last certificate of {CERT_CHAIN}")
                        },
                        child.0.issuer()
                    ),
                ));
            };
            not_after = not_after.min(check_time(ROOT_CERT, root, now)?);
        }

        let issuer = Issuer::from_ca_cert_der(&ca_der, key)
            .map_err(|e| bad(CA_CERT, format!("cannot sign with it: {e}")))?;
        let mut chain_der = Vec::new();
        if !ca_is_root {
            chain_der.push(ca_der.clone());
        }
        chain_der.extend(intermediates);
        Ok(Authority {
            issuer,
            ca_cert_pem: to_pem(&ca_der),
            chain_pem: chain_der.iter().map(to_pem).collect(),
            chain_der,
            root_pem: root_ders.iter().map(to_pem).collect(),
            not_after,
        })
    }

    /// `root-cert.pem`: what peers trust (the ConfigMap `istio-ca-root-cert`).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The signing certificate (`ca-cert.pem`).
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The signing key, PKCS#8 PEM (`ca-key.pem`: stored for a self-signed root).
    pub fn ca_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// What goes between the leaf and the root in an answer (`cert-chain.pem`, split).
    pub fn intermediates_pem(&self) -> &[String] {
        &self.chain_pem
    }

    /// Signs `csr_pem` (PEM PKCS#10, its signature verified) if its SANs are exactly one
    /// URI equal to `identity`. The leaf: no CA, keyUsage `digitalSignature |
    /// keyEncipherment`, EKU `serverAuth, clientAuth`, empty subject with a critical URI
    /// SAN (as Istio issues), valid from `now` - [`CLOCK_SKEW`] for `ttl` (never past the
    /// CA's own expiry), a random serial. Returns leaf, intermediates, root, as PEM.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<String>, SignError> {
        if csr_pem.trim().is_empty() {
            return Err(SignError::BadCsr("the request has no CSR".into()));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::BadCsr(csr_error(&e)))?;
        let sans = &csr.params.subject_alt_names;
        let wanted = SanType::URI(
            identity
                .try_into()
                .map_err(|e| SignError::Internal(format!("identity {identity:?}: {e}")))?,
        );
        if sans.len() != 1 || sans[0] != wanted {
            return Err(SignError::Identity {
                asked: describe_sans(sans),
                allowed: identity.to_owned(),
            });
        }
        let key = CsrKey::from_pem(csr_pem, PublicKeyData::algorithm(&csr.public_key))?;
        let leaf = self.issue(&key, vec![wanted], ttl, now)?;
        let mut out = Vec::with_capacity(self.chain_pem.len() + 2);
        out.push(leaf.pem());
        out.extend(self.chain_pem.iter().cloned());
        out.push(self.root_pem.clone());
        Ok(out)
    }

    /// A serving certificate for `key` with DNS and IP SANs (mesh-control's own, on its
    /// TLS port): the same leaf profile as [`Authority::sign`].
    pub fn issue_serving(
        &self,
        key: &KeyPair,
        dns: &[String],
        ips: &[IpAddr],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Issued, SignError> {
        let mut sans = Vec::with_capacity(dns.len() + ips.len());
        for d in dns {
            sans.push(SanType::DnsName(d.as_str().try_into().map_err(|e| {
                SignError::Internal(format!("DNS name {d:?}: {e}"))
            })?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let (cert, not_after) = self.issue_with_expiry(key, sans, ttl, now)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain_der.iter().cloned());
        Ok(Issued { chain, not_after })
    }

    fn issue(
        &self,
        key: &impl PublicKeyData,
        sans: Vec<SanType>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<rcgen::Certificate, SignError> {
        self.issue_with_expiry(key, sans, ttl, now).map(|(c, _)| c)
    }

    fn issue_with_expiry(
        &self,
        key: &impl PublicKeyData,
        sans: Vec<SanType>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(rcgen::Certificate, SystemTime), SignError> {
        let mut params = CertificateParams::default();
        // Empty subject: rcgen then marks the SAN extension critical (RFC 5280 4.2.1.6),
        // as Istio's leaves have it.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let not_after = (now + ttl).min(self.not_after);
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        let cert = params
            .signed_by(key, &self.issuer)
            .map_err(|e| SignError::Internal(e.to_string()))?;
        Ok((cert, to_system_time(params.not_after)))
    }
}

/// The CSR's public key exactly as the CSR holds it (its SubjectPublicKeyInfo bytes), so
/// the leaf carries the key the caller has, whatever algorithm signed the request.
struct CsrKey {
    spki: Vec<u8>,
    key: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl CsrKey {
    fn from_pem(csr_pem: &str, alg: &'static SignatureAlgorithm) -> Result<CsrKey, SignError> {
        use x509_parser::prelude::FromDer as _;
        let der = pem::parse(csr_pem).map_err(|e| SignError::BadCsr(e.to_string()))?;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.contents())
                .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let pki = &csr.certification_request_info.subject_pki;
        Ok(CsrKey {
            spki: pki.raw.to_vec(),
            key: pki.subject_public_key.data.to_vec(),
            alg,
        })
    }
}

impl PublicKeyData for CsrKey {
    fn subject_public_key_info(&self) -> Vec<u8> {
        self.spki.clone()
    }

    fn der_bytes(&self) -> &[u8] {
        &self.key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

fn csr_error(e: &rcgen::Error) -> String {
    match e {
        rcgen::Error::InvalidCertificationRequestSignature => {
            "its signature does not verify with its own public key (altered in transit, or \
             not signed by the key it names)"
                .into()
        }
        rcgen::Error::CouldNotParseCertificationRequest => {
            "not a PEM-encoded PKCS#10 certificate signing request".into()
        }
        rcgen::Error::UnsupportedExtension => {
            "it requests an extension this CA does not sign (only subjectAltName, keyUsage, \
             extendedKeyUsage, basicConstraints)"
                .into()
        }
        other => other.to_string(),
    }
}

fn describe_sans(sans: &[SanType]) -> String {
    if sans.is_empty() {
        return "no subjectAltName".into();
    }
    let parts: Vec<String> = sans
        .iter()
        .map(|s| match s {
            SanType::URI(u) => format!("URI:{}", u.as_str()),
            SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
            SanType::IpAddress(ip) => format!("IP:{ip}"),
            SanType::Rfc822Name(m) => format!("email:{}", m.as_str()),
            other => format!("{other:?}"),
        })
        .collect();
    parts.join(", ")
}

fn random_serial() -> Result<SerialNumber, SignError> {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SignError::Internal("no randomness for a serial number".into()))?;
    // Positive, and never shorter than 16 bytes once DER drops leading zeros.
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

fn to_system_time(t: time::OffsetDateTime) -> SystemTime {
    SystemTime::from(t)
}

fn to_pem(der: &CertificateDer<'_>) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Every `CERTIFICATE` block of `text` (other blocks are an error: a key in a
/// certificate file is a mistake worth naming).
fn certs(file: &'static str, text: &str) -> Result<Vec<CertificateDer<'static>>, AuthorityError> {
    let blocks = pem::parse_many(text).map_err(|e| bad(file, format!("not PEM: {e}")))?;
    blocks
        .into_iter()
        .map(|b| {
            if b.tag() == "CERTIFICATE" {
                Ok(CertificateDer::from(b.into_contents()))
            } else {
                Err(bad(
                    file,
                    format!("holds a {:?} block where certificates belong", b.tag()),
                ))
            }
        })
        .collect()
}

fn single_cert(file: &'static str, text: &str) -> Result<CertificateDer<'static>, AuthorityError> {
    let mut all = certs(file, text)?;
    match all.len() {
        0 => Err(bad(file, "no certificate in it")),
        1 => Ok(all.remove(0)),
        n => Err(bad(
            file,
            format!(
                "{n} certificates; it must hold only the signing certificate (the rest goes in {CERT_CHAIN})"
            ),
        )),
    }
}

fn parse<'a>(
    file: &'static str,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, AuthorityError> {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, c)| c)
        .map_err(|e| bad(file, format!("not an X.509 certificate: {e}")))
}

/// The certificate's NotAfter, if it is valid at `now`.
fn check_time(
    file: &'static str,
    cert: &X509Certificate<'_>,
    now: SystemTime,
) -> Result<SystemTime, AuthorityError> {
    let v = cert.validity();
    let at = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    let (nb, na) = (at(&v.not_before), at(&v.not_after));
    if now > na {
        return Err(bad(
            file,
            format!(
                "the certificate {} expired at {}",
                cert.subject(),
                v.not_after
            ),
        ));
    }
    if now + CLOCK_SKEW < nb {
        return Err(bad(
            file,
            format!(
                "the certificate {} is not valid before {}",
                cert.subject(),
                v.not_before
            ),
        ));
    }
    Ok(na)
}

fn signed_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

/// The CA key: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`, what Istio and older
/// `openssl genrsa` write) or SEC1 (`EC PRIVATE KEY`, P-256 or P-384).
fn parse_key(text: &str) -> Result<KeyPair, AuthorityError> {
    let block = pem::parse(text).map_err(|e| bad(CA_KEY, format!("not a PEM private key: {e}")))?;
    let der = block.contents();
    let unusable = |e: rcgen::Error| bad(CA_KEY, format!("{} block unusable: {e}", block.tag()));
    match block.tag() {
        "PRIVATE KEY" => KeyPair::try_from(der).map_err(unusable),
        "RSA PRIVATE KEY" => KeyPair::try_from(pkcs8(&RSA_ALG, der).as_slice()).map_err(unusable),
        "EC PRIVATE KEY" => KeyPair::try_from(pkcs8(&EC_P256_ALG, der).as_slice())
            .or_else(|_| KeyPair::try_from(pkcs8(&EC_P384_ALG, der).as_slice()))
            .map_err(|e| {
                bad(
                    CA_KEY,
                    format!("EC key unusable (P-256 and P-384 are supported): {e}"),
                )
            }),
        other => Err(bad(
            CA_KEY,
            format!("a {other:?} block; expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY"),
        )),
    }
}

/// AlgorithmIdentifier DER: rsaEncryption with NULL parameters.
const RSA_ALG: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// id-ecPublicKey with namedCurve prime256v1.
const EC_P256_ALG: [u8; 21] = [
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
/// id-ecPublicKey with namedCurve secp384r1.
const EC_P384_ALG: [u8; 18] = [
    0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04,
    0x00, 0x22,
];

/// PKCS#8 PrivateKeyInfo { version 0, `alg`, OCTET STRING `key` } (RFC 5208).
fn pkcs8(alg: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(alg);
    body.push(0x04);
    der_len(&mut body, key.len());
    body.extend_from_slice(key);
    let mut out = vec![0x30];
    der_len(&mut out, body.len());
    out.extend(body);
    out
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";

    fn now() -> SystemTime {
        SystemTime::now()
    }

    fn csr_for(sans: Vec<SanType>) -> (String, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = sans;
        (p.serialize_request(&key).unwrap().pem().unwrap(), key)
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn der_of(pem_text: &str) -> Vec<CertificateDer<'static>> {
        certs("test", pem_text).unwrap()
    }

    /// rustls-webpki, as a TLS peer would: the leaf chains to `root` for client and
    /// server auth at `at`.
    fn verify(chain: &[String], at: SystemTime) -> Result<(), webpki::Error> {
        let leaf = der_of(&chain[0]).remove(0);
        let inter: Vec<CertificateDer<'static>> = chain[1..chain.len() - 1]
            .iter()
            .flat_map(|p| der_of(p))
            .collect();
        let roots = der_of(chain.last().unwrap());
        let anchors: Vec<_> = roots
            .iter()
            .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
            .collect();
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let t = rustls_pki_types::UnixTime::since_unix_epoch(
            at.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
        );
        for usage in [
            webpki::KeyUsage::client_auth(),
            webpki::KeyUsage::server_auth(),
        ] {
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &inter,
                t,
                usage,
                None,
                None,
            )?;
        }
        Ok(())
    }

    fn leaf(chain: &[String]) -> Vec<u8> {
        der_of(&chain[0]).remove(0).as_ref().to_vec()
    }

    #[test]
    fn self_signed_root_is_a_p256_ca_for_the_trust_domain() {
        let t = now();
        let a = Authority::self_signed("example.org", t).unwrap();
        let der = der_of(a.root_pem()).remove(0);
        let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        assert!(c.is_ca());
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert_eq!(c.subject().to_string(), "O=example.org");
        assert_eq!(
            c.public_key()
                .algorithm
                .parameters
                .as_ref()
                .map(|p| p.as_oid().unwrap().to_id_string()),
            Some("1.2.840.10045.3.1.7".to_owned()),
            "P-256"
        );
        let life = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
        assert_eq!(life as u64, ROOT_TTL.as_secs() + CLOCK_SKEW.as_secs());
        assert!(a.intermediates_pem().is_empty());
        assert_eq!(a.ca_cert_pem(), a.root_pem());
        // Its stored form loads back as the same CA.
        let again =
            Authority::from_pems(a.ca_cert_pem(), &a.ca_key_pem(), "", a.root_pem(), t).unwrap();
        assert_eq!(again.root_pem(), a.root_pem());
    }

    #[test]
    fn a_good_csr_gets_a_leaf_for_its_identity_that_verifies_against_the_root() {
        let t = now();
        let a = Authority::self_signed("cluster.local", t).unwrap();
        let (csr, key) = csr_for(vec![uri(ID)]);
        let chain = a.sign(&csr, ID, Duration::from_secs(3600), t).unwrap();
        assert_eq!(chain.len(), 2, "leaf, root");
        assert_eq!(chain[1], a.root_pem());
        verify(&chain, t).unwrap();
        // Not yet valid a minute and a half ago, expired after the TTL.
        assert!(verify(&chain, t - Duration::from_secs(90)).is_err());
        assert!(verify(&chain, t + Duration::from_secs(3601)).is_err());

        let der = leaf(&chain);
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(c.public_key().raw, key.subject_public_key_info().as_slice());
        assert!(!c.is_ca());
        assert!(!c.basic_constraints().unwrap().unwrap().value.ca);
        assert!(
            c.subject().as_raw().len() <= 2,
            "empty subject: {}",
            c.subject()
        );
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "URI SAN critical with an empty subject");
        assert_eq!(
            san.value.general_names,
            vec![x509_parser::extensions::GeneralName::URI(ID)]
        );
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let v = c.validity();
        let t_secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(v.not_before.timestamp(), t_secs - 60);
        assert_eq!(v.not_after.timestamp(), t_secs + 3600);

        // Serials are random: the same CSR twice gets two serials.
        let again = leaf(&a.sign(&csr, ID, Duration::from_secs(3600), t).unwrap());
        let (_, c2) = x509_parser::parse_x509_certificate(&again).unwrap();
        assert_ne!(c.raw_serial(), c2.raw_serial());
        assert!(c.raw_serial().len() >= 16);
    }

    #[test]
    fn another_identity_or_an_extra_san_is_refused_and_named() {
        let t = now();
        let a = Authority::self_signed("cluster.local", t).unwrap();
        let ttl = Duration::from_secs(60);
        let other = "spiffe://cluster.local/ns/shop/sa/admin";
        let (csr, _) = csr_for(vec![uri(other)]);
        let e = a.sign(&csr, ID, ttl, t).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the CSR asks for URI:{other}, but this caller may be issued only URI:{ID}")
        );
        let (csr, _) = csr_for(vec![
            uri(ID),
            SanType::DnsName("cart.shop.svc".try_into().unwrap()),
        ]);
        let e = a.sign(&csr, ID, ttl, t).unwrap_err();
        assert!(matches!(e, SignError::Identity { .. }));
        assert!(
            e.to_string()
                .contains(&format!("URI:{ID}, DNS:cart.shop.svc")),
            "{e}"
        );
        let (csr, _) = csr_for(vec![
            uri(ID),
            SanType::IpAddress("10.0.0.1".parse().unwrap()),
        ]);
        assert!(
            a.sign(&csr, ID, ttl, t)
                .unwrap_err()
                .to_string()
                .contains("IP:10.0.0.1")
        );
        let (csr, _) = csr_for(vec![uri(ID), uri(ID)]);
        assert!(matches!(
            a.sign(&csr, ID, ttl, t),
            Err(SignError::Identity { .. })
        ));
        let (csr, _) = csr_for(vec![]);
        let e = a.sign(&csr, ID, ttl, t).unwrap_err();
        assert!(e.to_string().contains("asks for no subjectAltName"), "{e}");
    }

    #[test]
    fn the_csr_signature_is_verified() {
        // A CSR for sa/carx, altered after signing to say sa/cart: the identity would
        // match, the signature does not.
        let t = now();
        let a = Authority::self_signed("cluster.local", t).unwrap();
        let forged_id = "spiffe://cluster.local/ns/shop/sa/carx";
        let (csr, _) = csr_for(vec![uri(forged_id)]);
        let mut der = pem::parse(&csr).unwrap().into_contents();
        let at = der
            .windows(forged_id.len())
            .position(|w| w == forged_id.as_bytes())
            .unwrap();
        der[at + forged_id.len() - 1] = b't';
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        let e = a
            .sign(&tampered, ID, Duration::from_secs(60), t)
            .unwrap_err();
        assert!(matches!(e, SignError::BadCsr(_)), "{e:?}");
        assert!(e.to_string().contains("signature does not verify"), "{e}");
        // And garbage is a bad CSR, not a panic.
        for junk in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            assert!(matches!(
                a.sign(junk, ID, Duration::from_secs(60), t),
                Err(SignError::BadCsr(_))
            ));
        }
    }

    #[test]
    fn ttl_default_request_and_cap() {
        let p = TtlPolicy {
            default: Duration::from_secs(86_400),
            max: DEFAULT_MAX_WORKLOAD_CERT_TTL,
        };
        assert_eq!(p.pick(0).unwrap(), Duration::from_secs(86_400));
        assert_eq!(p.pick(-5).unwrap(), Duration::from_secs(86_400));
        assert_eq!(p.pick(60).unwrap(), Duration::from_secs(60));
        assert_eq!(p.pick(90 * 86_400).unwrap(), DEFAULT_MAX_WORKLOAD_CERT_TTL);
        let e = p.pick(90 * 86_400 + 3600).unwrap_err();
        assert_eq!(
            e.to_string(),
            "requested TTL 2161h is greater than the max allowed TTL 2160h"
        );
        assert_eq!(human(Duration::from_secs(61)), "61s");
        assert_eq!(human(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn a_leaf_never_outlives_its_ca() {
        let t = now();
        let a = Authority::self_signed("cluster.local", t).unwrap();
        let (csr, _) = csr_for(vec![uri(ID)]);
        let chain = a.sign(&csr, ID, ROOT_TTL * 2, t).unwrap();
        let der = leaf(&chain);
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        let t_secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(
            c.validity().not_after.timestamp(),
            t_secs + ROOT_TTL.as_secs() as i64
        );
    }

    /// A root and an intermediate CA it signed, in Istio's `cacerts` layout.
    struct Plugged {
        root_pem: String,
        ca_cert: String,
        ca_key: String,
        cert_chain: String,
    }

    fn ca_params(o: &str, t: SystemTime) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, o);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = (t - Duration::from_secs(3600)).into();
        p.not_after = (t + Duration::from_secs(365 * 86_400)).into();
        p
    }

    fn plugged(t: SystemTime, ca_key: KeyPair) -> Plugged {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("Root CA", t);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let inter = ca_params("Intermediate CA", t)
            .signed_by(&ca_key, &root_issuer)
            .unwrap();
        Plugged {
            root_pem: root.pem(),
            ca_cert: inter.pem(),
            ca_key: ca_key.serialize_pem(),
            // Istio's layout: ca-cert, then the root.
            cert_chain: format!("{}{}", inter.pem(), root.pem()),
        }
    }

    #[test]
    fn a_plugged_ca_answers_leaf_intermediate_root() {
        let t = now();
        let p = plugged(t, KeyPair::generate().unwrap());
        let a = Authority::from_pems(&p.ca_cert, &p.ca_key, &p.cert_chain, &p.root_pem, t).unwrap();
        let (csr, _) = csr_for(vec![uri(ID)]);
        let chain = a.sign(&csr, ID, Duration::from_secs(600), t).unwrap();
        assert_eq!(chain.len(), 3, "leaf, intermediate, root: {chain:?}");
        assert_eq!(chain[1], p.ca_cert);
        assert_eq!(chain[2], p.root_pem);
        verify(&chain, t).unwrap();
        let der = leaf(&chain);
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(c.issuer().to_string(), "O=Intermediate CA");
        // Without the intermediate in the answer, a peer cannot build the path.
        let short = vec![chain[0].clone(), chain[2].clone()];
        assert!(verify(&short, t).is_err());

        // cert-chain.pem empty (ca-cert signed by the root directly) is the same answer.
        let a = Authority::from_pems(&p.ca_cert, &p.ca_key, "", &p.root_pem, t).unwrap();
        assert_eq!(a.intermediates_pem(), std::slice::from_ref(&p.ca_cert));
        // Several roots in root-cert.pem (a root rotation): all are sent, any may sign.
        let other = Authority::self_signed("other", t).unwrap();
        let roots = format!("{}{}", other.root_pem(), p.root_pem);
        let a = Authority::from_pems(&p.ca_cert, &p.ca_key, &p.cert_chain, &roots, t).unwrap();
        let chain = a.sign(&csr, ID, Duration::from_secs(600), t).unwrap();
        assert_eq!(chain[2], roots);
        verify(&chain, t).unwrap();
    }

    #[test]
    fn a_bad_plugged_ca_names_the_file_that_is_wrong() {
        let t = now();
        let p = plugged(t, KeyPair::generate().unwrap());
        let other_key = KeyPair::generate().unwrap().serialize_pem();
        let e = Authority::from_pems(&p.ca_cert, &other_key, &p.cert_chain, &p.root_pem, t)
            .unwrap_err();
        assert_eq!(e.file, CA_KEY);
        assert!(
            e.to_string()
                .starts_with("ca-key.pem: the key is not the one"),
            "{e}"
        );

        let stranger = Authority::self_signed("stranger", t).unwrap();
        let e =
            Authority::from_pems(&p.ca_cert, &p.ca_key, "", stranger.root_pem(), t).unwrap_err();
        assert_eq!(e.file, ROOT_CERT, "{e}");
        assert!(e.reason.contains("does not chain"), "{e}");

        // An intermediate in cert-chain.pem that did not sign ca-cert.
        let unrelated = plugged(t, KeyPair::generate().unwrap());
        let e = Authority::from_pems(&p.ca_cert, &p.ca_key, &unrelated.ca_cert, &p.root_pem, t)
            .unwrap_err();
        assert_eq!(e.file, CERT_CHAIN, "{e}");

        // A leaf where the CA belongs.
        let a = Authority::self_signed("cluster.local", t).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let issued = a
            .issue_serving(&leaf_key, &["x".into()], &[], Duration::from_secs(600), t)
            .unwrap();
        let e = Authority::from_pems(
            &to_pem(&issued.chain[0]),
            &leaf_key.serialize_pem(),
            "",
            a.root_pem(),
            t,
        )
        .unwrap_err();
        assert_eq!(e.file, CA_CERT);
        assert!(e.reason.contains("not a CA"), "{e}");

        for (file, (c, k, ch, r)) in [
            (CA_CERT, ("", p.ca_key.as_str(), "", p.root_pem.as_str())),
            (
                CA_KEY,
                (p.ca_cert.as_str(), "nonsense", "", p.root_pem.as_str()),
            ),
            (ROOT_CERT, (p.ca_cert.as_str(), p.ca_key.as_str(), "", "")),
            (
                CERT_CHAIN,
                (
                    p.ca_cert.as_str(),
                    p.ca_key.as_str(),
                    p.ca_key.as_str(),
                    p.root_pem.as_str(),
                ),
            ),
        ] {
            let e = Authority::from_pems(c, k, ch, r, t).unwrap_err();
            assert_eq!(e.file, file, "{e}");
        }

        // Expired.
        let e = Authority::from_pems(
            &p.ca_cert,
            &p.ca_key,
            &p.cert_chain,
            &p.root_pem,
            t + Duration::from_secs(400 * 86_400),
        )
        .unwrap_err();
        assert_eq!(e.file, CA_CERT);
        assert!(e.reason.contains("expired"), "{e}");
    }

    /// Made with `openssl ecparam -genkey -noout` and `openssl genrsa -traditional 2048`:
    /// the key formats Istio's docs and older tools leave in `ca-key.pem`.
    const SEC1_P256: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIN1Sugu004KEiZkDnk0+go/EOc2+Q3SBmdkvho5bSvpIoAoGCCqGSM49
AwEHoUQDQgAEtRK2HvArfUbRwsuvh9+OnFpnfZShBgu0kljPgRBAAbaT0h+FHW7Y
yVnhotm2JNa3OsHPMy6rM8M9wqmz0KNndg==
-----END EC PRIVATE KEY-----
";

    const RSA_PKCS1: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEAxcZJzRSbEOXX8S3xbYdrrsCnAV8HwcMFzDJR7TncOy6uS3Xg
IllZYbkchGbLKz+V7dEqddMSkXOjfHvapQf9DpEem/vHYw3LDVr3KVC4IenWdnew
s5mD49n7ni3u+8s2XsLR75KJ3wGEspSTPK84Tm3UJbNP4geLeov1+S75Z04U3We5
pSMq3Sf3sRyemXXYOeTBrJVmKgQkuf/tfHu+ZkJm+WETlCN3nqgoeD/vrjMpgPwz
ToqIMspC6wtOXdmGZZJOouYCnLrq+cdTasDL5cu8AjeCGSHTznJOZnSYhXkNM1UA
6GRpL5oFZDxSkovAzwGnvyzAKMsmOOH6haXXdwIDAQABAoIBACC/Re4OqORh4mEd
Zdnob+SWIrD/7rVfGOEoPdeFWpl0D8kP4gZd/AZJ09Z6fM6S7zzbAuhShEMQPjQ4
/8mOqpCUZ9iVFn0oxgPWmZE+O9bltKyWAeyjESsTp22YFnebvMtw/7jm7yw9QJ8f
KcgFDVIzLkr1x1baP/aRIS/a3tIDWWAjrb2fg+6ZS55RcbD4sdoAjzVwP0nqoJRN
EkGOCsdQ9GPB/DFkAGU3wDksUycY4u6Mk36izKrkqUXRBo7O/+6YDPpffNs2/qt8
sAgq+tygHK9XECpKwWRQKonwH3FNmULuGpHt8+aC+IAt0JQD/ED8JrdiTC5IH+Kp
Sqj0c9ECgYEA+H312v/AePfaW8fneRzn8SQYKLGdD11mbPQazkL5UTwuzW1ASHww
k3Drf7pCY9oAM2twyD9/APaGTNk0dos1ymypO2VIlCJiU2gmw78sq6+F7xYLvV+E
QEOrYSRNmiVRpDh5mPhLpX3ZuKF+tSJn0v4+jmxU0/6WIw7TdSZKQJECgYEAy8AJ
qItVtOahdXdm8n8Cru71WK68conm8fBYBYflYjisjGz3kaDYD7YIHfT08ISc+r60
hlxPpAYgsD1/4IUkH62np7CukK4t8R8bZnKwKcyhwG6f31nlZTsetpJPugibIp5S
3zPTmVlVmLWFrJZtaMMCu0C5njq8wJJERxwGm4cCgYEA4uQgWJatZ8bn2mXtNOjv
337VkFKc1iqyG0nIMA13GHWbRnc6+vRqZjX00euAMywagtjXYgCYNojil8i73oG9
29bbryAL5TaAEShIPPOSFjFuWaAHmCJe307qbQh40wbARPJMFSCh8bm30p2i1EFW
C5GaDPFdgzQyYlBnQ9ByfAECgYEAxY0KEFAgpoijbdh6iY6aVHC+k+DAOLH6qQQm
5B3yS3y12GXi2GFCfGE7l4glYXrDFd+H+2pPkbKbSSYn8dJFxy1BjDaj2wX2534I
vBlhMvYEsybPfeiUocVjrxNHmBG2ESe/JEkE1f+nHayK0l778AJ8iIBmOMOstW5c
IzJKOcsCgYBElOqRJrN+7x1kJ6r4/QA/bzfdAI/Q5EJiupIGJxAitn5jnO3JsZUv
mqQIH5v8J/nhdIgHZvpepyfznYaroMHy0RDkn2pkhjw06OEWI3gD6ACXL+7lVZlH
3L+fNf9LqQhUCIPJvr3oUVjcPPdygZjdQ2yjuTofN4O/+x4s7zjpeQ==
-----END RSA PRIVATE KEY-----
";

    /// `openssl req -new -key <RSA_PKCS1> -subj /O=cluster.local -addext
    /// subjectAltName=critical,URI:spiffe://cluster.local/ns/shop/sa/cart`: an RSA 2048
    /// request with a subject, as Istio's agent sends by default (Go's x509 writes the same
    /// structure).
    const RSA_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIICpDCCAYwCAQAwGDEWMBQGA1UECgwNY2x1c3Rlci5sb2NhbDCCASIwDQYJKoZI
hvcNAQEBBQADggEPADCCAQoCggEBAMXGSc0UmxDl1/Et8W2Ha67ApwFfB8HDBcwy
Ue053Dsurkt14CJZWWG5HIRmyys/le3RKnXTEpFzo3x72qUH/Q6RHpv7x2MNyw1a
9ylQuCHp1nZ3sLOZg+PZ+54t7vvLNl7C0e+Sid8BhLKUkzyvOE5t1CWzT+IHi3qL
9fku+WdOFN1nuaUjKt0n97Ecnpl12DnkwayVZioEJLn/7Xx7vmZCZvlhE5Qjd56o
KHg/764zKYD8M06KiDLKQusLTl3ZhmWSTqLmApy66vnHU2rAy+XLvAI3ghkh085y
TmZ0mIV5DTNVAOhkaS+aBWQ8UpKLwM8Bp78swCjLJjjh+oWl13cCAwEAAaBHMEUG
CSqGSIb3DQEJDjE4MDYwNAYDVR0RAQH/BCowKIYmc3BpZmZlOi8vY2x1c3Rlci5s
b2NhbC9ucy9zaG9wL3NhL2NhcnQwDQYJKoZIhvcNAQELBQADggEBAB5TnS8BlKQg
cJF8q+peeBcxSdUXJf6rtXJ6xxJC1s++VPnxy9MPum8rWDkQb0clKDDBJz8tprZv
dJJnN6rphx9gx0dYwuIvmlvJJ4Z/Ci8sC1LZLQIWoTYqq3powSWiG7xZYRXYeKvG
MUhdy+8BQhwsBDda5UJDZsw7zjlEZx2MLNUSOMRkhMeDF/c/wrCCHQfFi48vnC05
T5S+H/6BVehncqRrQVKFBzRf0Ganoxrmd93LLH0g4dL/saI7l3x1F9VFDtkLarKw
r/U0LAimRGVth2z4hIAsSOJ9pHaFsfHW7skvmyzLrR3Ah2+/uh7e+dv79Ipfpayz
x744V07ggEU=
-----END CERTIFICATE REQUEST-----
";

    #[test]
    fn an_rsa_csr_from_openssl_gets_its_own_key_in_the_leaf() {
        let t = now();
        let a = Authority::self_signed("cluster.local", t).unwrap();
        let chain = a.sign(RSA_CSR, ID, Duration::from_secs(600), t).unwrap();
        verify(&chain, t).unwrap();
        let der = leaf(&chain);
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        let csr_der = pem::parse(RSA_CSR).unwrap().into_contents();
        let (_, csr) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&csr_der).unwrap();
        assert_eq!(
            c.public_key().raw,
            csr.certification_request_info.subject_pki.raw
        );
        // The CSR's subject is not copied: the leaf's is empty, its SAN critical.
        assert!(c.subject_alternative_name().unwrap().unwrap().critical);
        assert_eq!(c.subject().iter_attributes().count(), 0);
        assert!(matches!(
            a.sign(
                RSA_CSR,
                "spiffe://cluster.local/ns/shop/sa/other",
                Duration::from_secs(600),
                t
            ),
            Err(SignError::Identity { .. })
        ));
    }

    #[test]
    fn ca_keys_in_sec1_and_pkcs1_load() {
        let t = now();
        let k = parse_key(SEC1_P256).unwrap();
        assert_eq!(k.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        let p = plugged(t, k);
        let a = Authority::from_pems(&p.ca_cert, SEC1_P256, &p.cert_chain, &p.root_pem, t).unwrap();
        let (csr, _) = csr_for(vec![uri(ID)]);
        verify(&a.sign(&csr, ID, Duration::from_secs(60), t).unwrap(), t).unwrap();

        let rsa = RSA_PKCS1;
        let k = parse_key(rsa).unwrap();
        assert_eq!(k.algorithm(), &rcgen::PKCS_RSA_SHA256);
        let p = plugged(t, k);
        let a = Authority::from_pems(&p.ca_cert, rsa, &p.cert_chain, &p.root_pem, t).unwrap();
        verify(&a.sign(&csr, ID, Duration::from_secs(60), t).unwrap(), t).unwrap();
    }
}
