//! A CA for unit tests: a self-signed root that signs requests with whatever URIs and
//! lifetime a test asks for.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::ca_client::{self, WorkloadCert};
use super::csr;
use super::roots::Roots;

pub struct TestCa {
    key: KeyPair,
    params: CertificateParams,
    pub root_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "cluster.local");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            key,
            params,
            root_pem,
        }
    }

    pub fn roots(&self) -> Arc<Roots> {
        Roots::from_pem(self.root_pem.as_bytes(), Path::new("test-root.pem")).unwrap()
    }

    /// Signs `csr_pem` for `uris`, valid from a second ago for `ttl` seconds: the chain
    /// as the CA protocol answers it (leaf, root).
    pub fn sign(&self, csr_pem: &str, uris: &[&str], ttl: i64) -> Vec<String> {
        self.sign_window(csr_pem, uris, -1, ttl)
    }

    /// Signs `csr_pem` for `uris`, valid from `from` to `until` seconds from now.
    pub fn sign_window(&self, csr_pem: &str, uris: &[&str], from: i64, until: i64) -> Vec<String> {
        let mut req = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        req.params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        let now = time::OffsetDateTime::now_utc();
        req.params.not_before = now + time::Duration::seconds(from);
        req.params.not_after = now + time::Duration::seconds(until);
        req.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        req.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let leaf = req.signed_by(&issuer).unwrap();
        vec![leaf.pem(), self.root_pem.clone()]
    }

    /// A checked workload certificate for `id`.
    pub fn issue(&self, id: &str, ttl: i64) -> WorkloadCert {
        self.issue_window(id, -1, ttl)
    }

    /// A workload certificate for `id` valid from `from` to `until` seconds from now
    /// (checked at its start: it may be expired now).
    pub fn issue_window(&self, id: &str, from: i64, until: i64) -> WorkloadCert {
        let key = csr::generate(id).unwrap();
        let chain = self.sign_window(&key.csr_pem, &[id], from, until);
        let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            (rustls::pki_types::UnixTime::now().as_secs() as i64 + from + 1) as u64,
        ));
        ca_client::accept(
            &chain,
            key,
            id,
            &self.roots(),
            Path::new("test-root.pem"),
            at,
        )
        .unwrap()
    }
}
