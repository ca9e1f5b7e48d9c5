//! The proxy's workload identity (with `--root-cert`): its SPIFFE id
//! `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, the certificate the CA
//! issues for it through Istio's `CreateCertificate` protocol, kept current, and the
//! rustls configurations of the mTLS data path.
//!
//! - [`der`]: just enough DER to read a certificate's serial, validity and subject;
//! - [`roots`]: the mesh roots of `--root-cert`;
//! - [`csr`]: a fresh P-256 key and PKCS#10 request per certificate;
//! - [`channel`]: one h2 connection, plaintext or TLS verified against the roots (the
//!   config stream dials through it too);
//! - [`verify`]: chain and identity checks (rustls-webpki);
//! - [`ca_client`]: one certificate request, its answer checked;
//! - [`store`]: the current certificate and roots, and the task that renews them;
//! - [`tls`]: `server_config`, `client_config`, `peer_identity`, Istio's SNI and ALPN;
//! - [`exchange`]: Istio's `istio-peer-exchange` frame, ours and the peer's;
//! - [`xfcc`]: the `x-forwarded-client-cert` element for a client certificate;
//! - [`mesh`]: the data path's [`mesh::MeshTls`]: terminate and originate mTLS.
//!
//! Order (each uses only those before it): `der`, `roots`, `csr`, `channel`, `verify`,
//! `ca_client`, `store`, `tls`, `exchange`, `xfcc`, `mesh`.
//!
//! The mesh's TLS is 1.3 only, on ring, set in code: mesh-control, istiod and Envoy
//! sidecars under `ISTIO_MUTUAL` all speak it (TLS 1.2 is compiled in for a gateway's
//! HTTPS servers only).

pub mod ca_client;
pub mod channel;
pub mod csr;
pub mod der;
pub mod exchange;
pub mod mesh;
pub mod roots;
pub mod store;
pub mod tls;
pub mod verify;
pub mod xfcc;

#[cfg(test)]
pub(crate) mod testca;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use ca_client::{CaClient, CaError, WorkloadCert};
pub use roots::Roots;
pub use store::IdentityStore;

use crate::config::WorkloadIdentity;

/// The only protocol version the proxy speaks.
pub const PROTOCOLS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A certificate request may take this long once connected.
pub const CA_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// ring, with its TLS 1.3 suites only.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = rustls::crypto::ring::default_provider();
            p.cipher_suites
                .retain(|s| s.version() == &rustls::version::TLS13);
            Arc::new(p)
        })
        .clone()
}

/// The store for `config`, not yet running ([`IdentityStore::run`] gets the first
/// certificate).
pub fn store(config: &WorkloadIdentity, connect_timeout: Duration) -> Arc<IdentityStore> {
    IdentityStore::new(
        CaClient {
            target: channel::Target {
                address: config.ca_address.clone(),
                connect_timeout,
                tls: Some(channel::TlsSettings {
                    root_cert: config.root_cert.clone(),
                    server_name: config.ca_server_name.clone(),
                    client_cert: None,
                }),
            },
            token_file: config.token_file.clone(),
            root_cert: config.root_cert.clone(),
            spiffe_id: config.spiffe_id.clone(),
            cert_ttl: config.cert_ttl,
            call_timeout: CA_CALL_TIMEOUT,
        },
        config.trust_domain.clone(),
    )
}
