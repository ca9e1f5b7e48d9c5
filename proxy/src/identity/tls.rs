//! The rustls configurations of the mTLS data path, as functions of the
//! [`IdentityStore`]: TLS 1.3 only; our certificate chosen at each handshake (so a
//! renewal reaches new connections without a restart, and open ones keep their session);
//! the peer's chain verified against the mesh roots as they are now, with no DNS name
//! check. In the mesh a peer is its SPIFFE id: [`peer_identity`] reads it from a
//! verified chain.
//!
//! # Istio's conventions on the wire
//!
//! What Envoy sidecars send and expect under `ISTIO_MUTUAL`, so ours and theirs can talk:
//!
//! - **SNI** (client): `outbound_.<port>_.<subset>_.<service FQDN>` ([`sni`]), the
//!   subset empty when none: `outbound_.9080_._.reviews.shop.svc.cluster.local`.
//! - **ALPN** (client): the protocol the connection carries, Istio-prefixed, then
//!   `istio`, then the plain name: [`CLIENT_ALPN_HTTP10`], [`CLIENT_ALPN_HTTP11`],
//!   [`CLIENT_ALPN_H2`]; for opaque TCP `istio-peer-exchange, istio`
//!   ([`CLIENT_ALPN_TCP`]), as Envoy offers them. A server that picks
//!   [`ALPN_PEER_EXCHANGE`] commits both sides to Istio's in-band metadata exchange
//!   (`super::exchange`): each writes its frame first and reads the other's first.
//! - **ALPN** (server): an Envoy client always offers `istio`, and rustls, unlike
//!   BoringSSL, refuses a handshake whose offered protocols share none with its own, so a
//!   server config must list `istio` ([`SERVER_ALPN`] does, after `h2`, `http/1.1` and
//!   `istio-peer-exchange`, which it picks when the client offers it: an Envoy client
//!   then finds our frame, which its metrics' peer labels come from).
//!   The data path tells the application protocol from what the client *offered*
//!   (`istio-h2`, `istio-http/1.1`, ...), which rustls's `Acceptor` shows before the
//!   handshake, as Envoy's filter chains match on it.
//! - TLS 1.3 both ways: Istio sets TLS 1.3 as the maximum for its sidecars' mTLS clients,
//!   and Envoy servers accept it.
//!
//! # No session resumption
//!
//! Every handshake is a full one: the peer's certificate is verified against the roots
//! as they are now, so a rotation, a root change or an expiry takes effect at the next
//! connection, and a resumed session can never carry an identity whose certificate has
//! since expired. It also keeps per-config session caches out of the proxy's memory. The
//! cost is one P-256 signature and verification per new connection; mesh connections
//! are long-lived and pooled.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::store::IdentityStore;
use super::verify::{self, Usage};

/// ALPN: Istio's in-band peer metadata exchange (opaque TCP).
pub const ALPN_PEER_EXCHANGE: &[u8] = b"istio-peer-exchange";
/// ALPN: mTLS carrying HTTP/1.0.
pub const ALPN_HTTP10: &[u8] = b"istio-http/1.0";
/// ALPN: mTLS carrying HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"istio-http/1.1";
/// ALPN: mTLS carrying HTTP/2.
pub const ALPN_H2: &[u8] = b"istio-h2";
/// ALPN: Istio mTLS, whatever it carries.
pub const ALPN_ISTIO: &[u8] = b"istio";

/// What a client offers for HTTP/1.0 over mTLS.
pub const CLIENT_ALPN_HTTP10: &[&[u8]] = &[ALPN_HTTP10, ALPN_ISTIO, b"http/1.0"];
/// What a client offers for HTTP/1.1 over mTLS.
pub const CLIENT_ALPN_HTTP11: &[&[u8]] = &[ALPN_HTTP11, ALPN_ISTIO, b"http/1.1"];
/// What a client offers for HTTP/2 over mTLS.
pub const CLIENT_ALPN_H2: &[&[u8]] = &[ALPN_H2, ALPN_ISTIO, b"h2"];
/// What a client offers for opaque TCP over mTLS (with Istio's peer exchange first).
pub const CLIENT_ALPN_TCP: &[&[u8]] = &[ALPN_PEER_EXCHANGE, ALPN_ISTIO];
/// What an inbound server accepts, in its order of preference.
pub const SERVER_ALPN: &[&[u8]] = &[b"h2", b"http/1.1", ALPN_PEER_EXCHANGE, ALPN_ISTIO];

/// Istio's SNI for a connection to `fqdn`'s `port` (and `subset`).
pub fn sni(port: u16, subset: Option<&str>, fqdn: &str) -> String {
    format!("outbound_.{port}_.{}_.{fqdn}", subset.unwrap_or(""))
}

/// The SPIFFE id of a verified peer chain (leaf first), e.g. from
/// `ServerConnection::peer_certificates()`.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<String> {
    verify::peer_identity(certs)
}

/// The server side of mTLS: our certificate, and a client certificate required, chained
/// to the mesh roots, valid now, allowing `clientAuth`. Any identity is accepted here:
/// who may connect is authorization's business, from [`peer_identity`].
///
/// Build it once per ALPN list and share it: the certificate and roots are read from the
/// store at each handshake. Fails only if the crypto provider had no TLS 1.3 suite
/// (ring's has three).
pub fn server_config(
    store: &Arc<IdentityStore>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let verifier = Arc::new(MeshClientVerifier {
        store: store.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::PROTOCOLS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(StoreResolver(store.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // No resumption (see the module docs): no session cache, no tickets.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client side of mTLS: our certificate as the client certificate, and the server's
/// chained to the mesh roots, valid now, allowing `serverAuth`, its SPIFFE id one of
/// `expected`. An empty `expected` accepts any SPIFFE id of our own trust domain (for a
/// destination whose ServiceAccounts mesh-control did not name). The server name given
/// to the handshake is sent as SNI ([`sni`]) and never checked.
///
/// Build it once per destination identity set and ALPN list, as [`server_config`].
pub fn client_config(
    store: &Arc<IdentityStore>,
    expected: Vec<String>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let verifier = Arc::new(MeshServerVerifier {
        store: store.clone(),
        expected,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::PROTOCOLS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(StoreResolver(store.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Our current certificate as a client certificate, read from the store at each
/// handshake (none before the first is issued).
pub fn client_cert_resolver(store: &Arc<IdentityStore>) -> Arc<dyn ResolvesClientCert> {
    Arc::new(StoreResolver(store.clone()))
}

/// Our current certificate, read from the store at each handshake.
#[derive(Debug)]
struct StoreResolver(Arc<IdentityStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.0.has_cert()
    }
}

/// The mesh roots now, or a handshake error when none were ever read.
fn roots(store: &IdentityStore) -> Result<Arc<super::roots::Roots>, rustls::Error> {
    store
        .roots()
        .ok_or_else(|| rustls::Error::General("no mesh root certificate loaded yet".into()))
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &verify::algorithms())
}

fn no_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

/// The handshake-signature methods both verifiers share: TLS 1.3 signatures checked with
/// the provider's algorithms, TLS 1.2 refused.
macro_rules! tls13_only_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(no_tls12())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            verify::algorithms().supported_schemes()
        }
    };
}

/// Client certificates: chained to the mesh roots, for `clientAuth`.
#[derive(Debug)]
struct MeshClientVerifier {
    store: Arc<IdentityStore>,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client sends its one certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let roots = roots(&self.store)?;
        verify::chain(&roots, end_entity, intermediates, now, Usage::Client)
            .map_err(verify::to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    tls13_only_signatures!();
}

/// The peer's SPIFFE id is not one the client expected.
struct IdentityMismatch {
    found: Vec<String>,
    expected: Vec<String>,
    trust_domain: String,
}

impl std::fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let found = if self.found.is_empty() {
            "no SPIFFE id".to_owned()
        } else {
            self.found.join(", ")
        };
        if self.expected.is_empty() {
            write!(
                f,
                "the peer is {found}, not an identity of trust domain {}",
                self.trust_domain
            )
        } else {
            write!(
                f,
                "the peer is {found}, expected {}",
                self.expected.join(" or ")
            )
        }
    }
}

// Debug reads as Display: rustls prints `CertificateError::Other` through Debug.
impl std::fmt::Debug for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for IdentityMismatch {}

/// Server certificates: chained to the mesh roots, for `serverAuth`, naming one of the
/// expected SPIFFE ids (the name the client dialled is not checked).
#[derive(Debug)]
struct MeshServerVerifier {
    store: Arc<IdentityStore>,
    expected: Vec<String>,
}

impl MeshServerVerifier {
    fn check_identity(&self, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let found: Vec<String> = verify::uri_sans(leaf)
            .into_iter()
            .filter(|u| u.starts_with("spiffe://"))
            .collect();
        let ok = if self.expected.is_empty() {
            found.iter().any(|u| {
                mesh_common::identity::parse_spiffe_id(u)
                    .is_some_and(|id| id.trust_domain == self.store.trust_domain())
            })
        } else {
            found.iter().any(|u| self.expected.contains(u))
        };
        if ok {
            return Ok(());
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(IdentityMismatch {
                found,
                expected: self.expected.clone(),
                trust_domain: self.store.trust_domain().to_owned(),
            }))),
        ))
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = roots(&self.store)?;
        verify::chain(&roots, end_entity, intermediates, now, Usage::Server)
            .map_err(verify::to_rustls)?;
        self.check_identity(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    tls13_only_signatures!();
}

#[cfg(test)]
mod tests;
