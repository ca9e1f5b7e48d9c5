//! X.509: issuing the CA and the serving certificate (rcgen), and reading back the facts
//! rotation decisions need (x509-parser).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use super::error::BootstrapError;
use super::options::BootstrapOptions;
use super::secret::{KEY_CA_CERT, KEY_TLS_CERT, Material};

impl Material {
    /// End of the serving certificate's validity.
    pub fn serving_not_after(&self) -> Result<SystemTime, BootstrapError> {
        Ok(parse_cert(&self.cert_pem, KEY_TLS_CERT)?.not_after)
    }

    /// End of the current CA's validity.
    pub fn ca_not_after(&self) -> Result<SystemTime, BootstrapError> {
        Ok(parse_cert(&self.ca_cert_pem, KEY_CA_CERT)?.not_after)
    }
}

/// The facts about one certificate that rotation decisions need.
#[derive(Debug, Clone)]
pub(super) struct CertInfo {
    pub(super) not_before: SystemTime,
    pub(super) not_after: SystemTime,
    pub(super) dns_names: Vec<String>,
    pub(super) subject_raw: Vec<u8>,
    pub(super) issuer_raw: Vec<u8>,
}

pub(super) fn parse_cert(pem: &str, what: &str) -> Result<CertInfo, BootstrapError> {
    let bad = |reason: String| BootstrapError::BadCertificate {
        what: what.to_owned(),
        reason,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let to_time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(bad(format!("bad subjectAltName: {e}"))),
    };
    Ok(CertInfo {
        not_before: to_time(cert.validity().not_before.timestamp()),
        not_after: to_time(cert.validity().not_after.timestamp()),
        dns_names,
        subject_raw: cert.subject().as_raw().to_vec(),
        issuer_raw: cert.issuer().as_raw().to_vec(),
    })
}

/// Splits concatenated PEM certificates.
pub(super) fn split_pems(bundle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in bundle.lines() {
        if line.starts_with("-----BEGIN ") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END ") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// A new CA and a serving certificate signed by it; `old_cas` stay in the bundle.
pub(super) fn issue_all(
    opts: &BootstrapOptions,
    now: SystemTime,
    old_cas: &[String],
) -> Result<Material, BootstrapError> {
    let (ca_cert_pem, ca_key_pem) = issue_ca(opts, now)?;
    let (cert_pem, key_pem) = issue_leaf(opts, now, &ca_cert_pem, &ca_key_pem)?;
    let ca_bundle_pem = std::iter::once(ca_cert_pem.clone())
        .chain(old_cas.iter().cloned())
        .collect();
    Ok(Material {
        ca_cert_pem,
        ca_key_pem,
        ca_bundle_pem,
        cert_pem,
        key_pem,
    })
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn issue_ca(
    opts: &BootstrapOptions,
    now: SystemTime,
) -> Result<(String, String), BootstrapError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    // A distinct subject per CA, so leaves are matched to the CA that issued them.
    dn.push(
        DnType::CommonName,
        format!(
            "{}.{}-ca@{}",
            opts.service_name,
            opts.namespace,
            unix_secs(now)
        ),
    );
    dn.push(DnType::OrganizationName, "mesh");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::from(now - Duration::from_secs(60));
    params.not_after = OffsetDateTime::from(now + opts.ca_validity);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub(super) fn issue_leaf(
    opts: &BootstrapOptions,
    now: SystemTime,
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<(String, String), BootstrapError> {
    let ca_info = parse_cert(ca_cert_pem, KEY_CA_CERT)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, KeyPair::from_pem(ca_key_pem)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(opts.dns_names())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{}.{}.svc", opts.service_name, opts.namespace),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = OffsetDateTime::from(now - Duration::from_secs(60));
    params.not_after = OffsetDateTime::from((now + opts.serving_validity).min(ca_info.not_after));
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}
