//! One h2 connection to mesh-control (or the CA), made by the proxy itself and wrapped as
//! the tower service tonic's generic client wants: plain TCP, or TLS 1.3 verified against
//! the mesh root with ALPN `h2`. The config stream ([`crate::control::client`]) and the
//! certificate client ([`super::ca_client`]) both dial through here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tracing::debug;

use super::roots::{Roots, RootsError};

/// How to secure the connection.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// The mesh root (`--root-cert`), re-read at every connection.
    pub root_cert: PathBuf,
    /// The name (DNS or IP) the server's certificate must carry.
    pub server_name: ServerName<'static>,
    /// Offered when the server asks for a client certificate (the workload's own,
    /// once it has one).
    pub client_cert: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
}

/// Where to dial.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    pub connect_timeout: Duration,
    /// `None`: plaintext h2.
    pub tls: Option<TlsSettings>,
}

/// Why the connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error(transparent)]
    Roots(#[from] RootsError),
    #[error("TLS with {address} (expecting a certificate for {server_name}): {reason}")]
    Tls {
        address: String,
        server_name: String,
        reason: String,
    },
    #[error("h2 handshake with {0}: {1}")]
    Handshake(String, hyper::Error),
}

/// A tower service over one h2 connection, for tonic's generic client.
#[derive(Clone)]
pub struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let fut = self.0.send_request(req);
        Box::pin(fut)
    }
}

/// The origin tonic puts on requests (`:scheme` and `:authority`).
pub fn origin(target: &Target) -> http::Uri {
    let scheme = if target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}", target.address)
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("http://mesh-control"))
}

/// The client side of TLS to mesh-control or the CA: TLS 1.3, ALPN h2, the server
/// verified against `roots` for `server_name` (webpki's standard checks).
pub fn client_config(
    roots: &Roots,
    client_cert: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = super::provider();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots.cert_store()),
        provider.clone(),
    )
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(super::PROTOCOLS)?
        .with_webpki_verifier(verifier);
    let mut config = match client_cert {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Connects to `target` and completes the h2 handshake; the connection runs in a task
/// of its own until the returned handle (and its clones) are dropped.
pub async fn connect(target: &Target) -> Result<H2, ChannelError> {
    let addr = &target.address;
    let tls = match &target.tls {
        Some(t) => {
            let roots = Roots::read(&t.root_cert)?;
            let config =
                client_config(&roots, t.client_cert.clone()).map_err(|e| ChannelError::Tls {
                    address: addr.clone(),
                    server_name: t.server_name.to_str().into_owned(),
                    reason: e.to_string(),
                })?;
            Some((
                tokio_rustls::TlsConnector::from(config),
                t.server_name.clone(),
            ))
        }
        None => None,
    };
    let addrs: Vec<_> = tokio::net::lookup_host(addr.as_str())
        .await
        .map_err(|e| ChannelError::Resolve(addr.clone(), e))?
        .collect();
    let mut last = String::from("no address");
    for a in addrs {
        let tcp =
            match tokio::time::timeout(target.connect_timeout, tokio::net::TcpStream::connect(a))
                .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    last = e.to_string();
                    continue;
                }
                Err(_) => {
                    last = "timed out".into();
                    continue;
                }
            };
        let _ = tcp.set_nodelay(true);
        return match &tls {
            None => handshake(addr, tcp).await,
            Some((connector, name)) => {
                let tls_error = |reason: String| ChannelError::Tls {
                    address: addr.clone(),
                    server_name: name.to_str().into_owned(),
                    reason,
                };
                let stream = tokio::time::timeout(
                    target.connect_timeout,
                    connector.connect(name.clone(), tcp),
                )
                .await
                .map_err(|_| tls_error("handshake timed out".into()))?
                .map_err(|e| tls_error(e.to_string()))?;
                handshake(addr, stream).await
            }
        };
    }
    Err(ChannelError::Connect(addr.clone(), last))
}

async fn handshake<T>(addr: &str, io: T) -> Result<H2, ChannelError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| ChannelError::Handshake(addr.to_owned(), e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "h2 connection ended");
        }
    });
    Ok(H2(send))
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            host_of("mesh-control.mesh-system.svc:15012"),
            "mesh-control.mesh-system.svc"
        );
        assert_eq!(host_of("10.96.0.20:15012"), "10.96.0.20");
        assert_eq!(host_of("[fd00::20]:15012"), "fd00::20");
    }
}
