//! mesh-control's TLS port (15012): its serving certificate, issued by the
//! [`Authority`] itself and renewed at half-life, and the TLS accept loop that hands
//! tonic finished handshakes.
//!
//! - **Names.** DNS SANs `mesh-control`, `mesh-control.<ns>`, `mesh-control.<ns>.svc`,
//!   `mesh-control.<ns>.svc.cluster.local`, plus every `--tls-san` (an IP literal becomes
//!   an IP SAN), so a proxy verifying against the mesh's root and the Service name it
//!   dials accepts it.
//! - **Renewal.** [`ServingCert`] is rustls' [`ResolvesServerCert`]: each handshake takes
//!   the current certificate; [`renew_loop`] issues a new key and certificate at half the
//!   old one's life and swaps it in. Open connections keep their session; nothing
//!   restarts.
//! - **TLS.** rustls with ring, TLS 1.3 and 1.2, ALPN `h2` only (gRPC). A client
//!   certificate is asked for, not required: one that does not chain to the mesh's
//!   root fails the handshake; without one the connection is anonymous (the CA's callers
//!   authenticate with their token). The verified certificate's SPIFFE id (its first
//!   `spiffe://` URI SAN) is the connection's [`PeerInfo::identity`]: the config stream
//!   of a gateway whose id is its pod's own gets its Secrets' keys.
//! - **Accepting.** Each handshake runs in its own task with a time-out
//!   ([`HANDSHAKE_TIMEOUT`]), so a slow or silent client never holds up the others.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::ca::authority::{Authority, SignError, human};

/// The Service name the serving certificate is for.
pub const SERVICE_NAME: &str = "mesh-control";
/// Lifetime of the serving certificate.
pub const SERVING_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// A TLS handshake that has not finished by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed renewal, the next try.
const RENEW_RETRY: Duration = Duration::from_secs(30);
/// Finished handshakes queued for tonic.
const ACCEPT_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("issuing mesh-control's serving certificate: {0}")]
    Issue(#[from] SignError),
    #[error("generating mesh-control's serving key: {0}")]
    Key(rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the mesh's root certificate, to verify clients with: {0}")]
    Roots(String),
}

/// The serving certificate's SANs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl ServerNames {
    /// The Service's names in `namespace`, then each of `extra` (an IP literal as an IP
    /// SAN, anything else as a DNS name); duplicates once.
    pub fn new(namespace: &str, extra: &[String]) -> ServerNames {
        let mut dns = vec![
            SERVICE_NAME.to_owned(),
            format!("{SERVICE_NAME}.{namespace}"),
            format!("{SERVICE_NAME}.{namespace}.svc"),
            format!("{SERVICE_NAME}.{namespace}.svc.cluster.local"),
        ];
        let mut ips = Vec::new();
        for e in extra {
            let e = e.trim();
            if e.is_empty() {
                continue;
            }
            match e.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !dns.iter().any(|d| d == e) => dns.push(e.to_owned()),
                Err(_) => {}
            }
        }
        ServerNames { dns, ips }
    }
}

struct Current {
    key: Arc<CertifiedKey>,
    issued: SystemTime,
    not_after: SystemTime,
}

/// mesh-control's serving certificate, swapped in place when renewed.
pub struct ServingCert {
    authority: Arc<Authority>,
    names: ServerNames,
    ttl: Duration,
    current: RwLock<Current>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("names", &self.names)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn issue(
    authority: &Authority,
    names: &ServerNames,
    ttl: Duration,
    now: SystemTime,
) -> Result<Current, TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Key)?;
    let issued = authority.issue_serving(&key, &names.dns, &names.ips, ttl, now)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
    Ok(Current {
        key: Arc::new(CertifiedKey::new(issued.chain, signer)),
        issued: now,
        not_after: issued.not_after,
    })
}

impl ServingCert {
    /// Issues the first certificate (valid for `ttl`, or less if the CA expires first).
    pub fn new(
        authority: Arc<Authority>,
        names: ServerNames,
        ttl: Duration,
    ) -> Result<Arc<ServingCert>, TlsError> {
        let current = issue(&authority, &names, ttl, SystemTime::now())?;
        Ok(Arc::new(ServingCert {
            authority,
            names,
            ttl,
            current: RwLock::new(current),
        }))
    }

    /// Issues a new key and certificate and swaps them in; returns the new NotAfter.
    pub fn renew(&self) -> Result<SystemTime, TlsError> {
        let next = issue(&self.authority, &self.names, self.ttl, SystemTime::now())?;
        let not_after = next.not_after;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(not_after)
    }

    /// When the current certificate is due for renewal: half its life after issue.
    pub fn renew_at(&self) -> SystemTime {
        let c = self.current.read().unwrap_or_else(|e| e.into_inner());
        let life = c.not_after.duration_since(c.issued).unwrap_or_default();
        c.issued + life / 2
    }

    /// The chain now served (leaf first).
    pub fn chain(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .key
            .cert
            .clone()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .key
                .clone(),
        )
    }
}

/// Renews `cert` at each half-life, forever (abort the task to stop). A failed renewal
/// is logged and retried in 30 s; the old certificate is served meanwhile.
pub async fn renew_loop(cert: Arc<ServingCert>) {
    loop {
        let wait = cert
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(Duration::from_millis(100));
        tokio::time::sleep(wait).await;
        match cert.renew() {
            Ok(not_after) => {
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::info!(
                    valid_for = %human(Duration::from_secs(left.as_secs())),
                    "renewed mesh-control's serving certificate"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "serving certificate renewal failed; retrying in 30s");
                tokio::time::sleep(RENEW_RETRY).await;
            }
        }
    }
}

/// rustls' server side of the TLS port: TLS 1.3 and 1.2 (ring), ALPN `h2`, the
/// certificate from `resolver`; client certificates asked for, optional, verified
/// against `root_pem` (one or more PEM roots: the mesh's).
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    root_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let blocks = pem::parse_many(root_pem).map_err(|e| TlsError::Roots(e.to_string()))?;
    for b in blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE") {
        roots
            .add(rustls_pki_types::CertificateDer::from(b.into_contents()))
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Roots("no certificate in it".into()));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Roots(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Who is at the other end of a TLS port connection (tonic puts it in each request's
/// extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub local_addr: Option<SocketAddr>,
    pub remote_addr: Option<SocketAddr>,
    /// The SPIFFE id of the client certificate, verified against the mesh's root; `None`
    /// without one.
    pub identity: Option<String>,
}

/// The first `spiffe://` URI SAN of a DER certificate.
pub fn spiffe_id_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|g| match g {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some((*u).to_owned())
        }
        _ => None,
    })
}

/// One accepted TLS connection, as tonic's server takes it (its connect info is
/// [`PeerInfo`]).
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    identity: Option<String>,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let tcp = self.inner.get_ref().0;
        PeerInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
            identity: self.identity.clone(),
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts on `listener` and yields finished handshakes; the accept task (and with it the
/// listening socket) ends when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
    ReceiverStream::new(rx)
}

type Tx = mpsc::Sender<Result<TlsConn, io::Error>>;

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, tx: Tx) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = tx.closed() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(handshake(acceptor.clone(), tcp, peer, tx.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "TLS port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr, tx: Tx) {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(inner)) => {
            // rustls verified the chain; the leaf's SPIFFE id is who the peer is.
            let identity = inner
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| spiffe_id_of(leaf.as_ref()));
            if identity.is_some() {
                tracing::debug!(%peer, identity = ?identity, "TLS client certificate verified");
            }
            let _ = tx.send(Ok(TlsConn { inner, identity })).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_from_the_namespace_and_tls_san() {
        let n = ServerNames::new(
            "mesh-system",
            &[
                "10.96.0.12".into(),
                "mesh.example.com".into(),
                "::1".into(),
                "mesh-control".into(),
                "10.96.0.12".into(),
            ],
        );
        assert_eq!(
            n.dns,
            [
                "mesh-control",
                "mesh-control.mesh-system",
                "mesh-control.mesh-system.svc",
                "mesh-control.mesh-system.svc.cluster.local",
                "mesh.example.com"
            ]
        );
        assert_eq!(
            n.ips,
            [
                "10.96.0.12".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    /// An in-memory handshake between `server` and `client` (for name `mesh-control`).
    fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: rustls::ClientConfig,
    ) -> Result<rustls::ServerConnection, rustls::Error> {
        let mut s = rustls::ServerConnection::new(server)?;
        let name = rustls_pki_types::ServerName::try_from("mesh-control").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !s.is_handshaking() && !c.is_handshaking() && !c.wants_write() {
                return Ok(s);
            }
        }
        panic!("the handshake did not finish");
    }

    fn client_config(root: &str, cert: Option<(Vec<String>, KeyPair)>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for b in pem::parse_many(root).unwrap() {
            roots
                .add(rustls_pki_types::CertificateDer::from(b.into_contents()))
                .unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
        match cert {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let ders = chain
                    .iter()
                    .flat_map(|p| pem::parse_many(p).unwrap())
                    .map(|b| rustls_pki_types::CertificateDer::from(b.into_contents()))
                    .collect();
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
                builder.with_client_auth_cert(ders, key).unwrap()
            }
        }
    }

    /// A workload certificate for `id` from `a`: leaf and intermediates, and its key.
    fn workload(a: &Authority, id: &str) -> (Vec<String>, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let mut chain = a
            .sign(&csr, id, Duration::from_secs(3600), SystemTime::now())
            .unwrap();
        chain.pop(); // the root
        (chain, key)
    }

    #[test]
    fn client_certificates_are_asked_for_verified_and_named() {
        let a = Arc::new(Authority::self_signed("cluster.local", SystemTime::now()).unwrap());
        let serving = ServingCert::new(
            a.clone(),
            ServerNames::new("ns", &[]),
            Duration::from_secs(3600),
        )
        .unwrap();
        let config = server_config(serving, a.root_pem()).unwrap();
        let id = "spiffe://cluster.local/ns/istio-system/sa/ingress";

        // A workload certificate of the mesh: verified, its SPIFFE id known.
        let s = handshake(
            config.clone(),
            client_config(a.root_pem(), Some(workload(&a, id))),
        )
        .unwrap();
        let leaf = &s.peer_certificates().unwrap()[0];
        assert_eq!(spiffe_id_of(leaf.as_ref()).as_deref(), Some(id));

        // No certificate: the connection is anonymous, not refused (the CA's callers).
        let s = handshake(config.clone(), client_config(a.root_pem(), None)).unwrap();
        assert!(s.peer_certificates().is_none());

        // Another CA's certificate: refused.
        let other = Authority::self_signed("cluster.local", SystemTime::now()).unwrap();
        let e = handshake(
            config,
            client_config(a.root_pem(), Some(workload(&other, id))),
        )
        .unwrap_err();
        assert!(e.to_string().contains("certificate"), "{e}");

        assert!(
            server_config(
                ServingCert::new(
                    a.clone(),
                    ServerNames::new("ns", &[]),
                    Duration::from_secs(60)
                )
                .unwrap(),
                "no PEM here"
            )
            .is_err()
        );
    }

    #[test]
    fn renewal_swaps_the_served_certificate_at_half_life() {
        let a = Arc::new(Authority::self_signed("cluster.local", SystemTime::now()).unwrap());
        let c =
            ServingCert::new(a, ServerNames::new("ns", &[]), Duration::from_secs(3600)).unwrap();
        let first = c.chain();
        let due = c
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs();
        assert!((1795..=1800).contains(&due), "{due}");
        c.renew().unwrap();
        assert_ne!(c.chain()[0], first[0]);
        assert_eq!(
            c.chain().len(),
            1,
            "self-signed root: leaf only (roots are not sent)"
        );
    }
}
