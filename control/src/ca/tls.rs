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
//! - **TLS.** rustls with ring, TLS 1.3 and 1.2, ALPN `h2` only (gRPC), no client
//!   certificates (callers authenticate with their token).
//! - **Accepting.** Each handshake runs in its own task with a time-out
//!   ([`HANDSHAKE_TIMEOUT`]), so a slow or silent client never holds up the others.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

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
/// certificate from `resolver`.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// One accepted TLS connection, as tonic's server takes it (its connect info is the TCP
/// peer, so `Request::remote_addr` works).
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
}

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        let tcp = self.inner.get_ref().0;
        TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
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
            let _ = tx.send(Ok(TlsConn { inner })).await;
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
