//! The HTTP engine: routing, load balancing, faults, header edits, forwarding over
//! pooled upstream connections, and Istio's request metrics, on a downstream connection
//! that the flow has already found to speak HTTP.
//!
//! # What the flow calls
//!
//! - Config: [`CompiledService::compile_in`]`(&Service, &LbStates)` validates a
//!   `mesh_config::Service` ([`mesh_config::Resource::validate`] plus every regex) and
//!   compiles it; keep one [`LbStates`] for the process so in-flight counts and
//!   round-robin cursors survive config updates ([`CompiledService::compile`] uses a
//!   fresh one). Share the result as `Arc<CompiledService>`.
//! - Per worker thread (runtime): one [`Engine`] ([`Engine::new`]) with the process's
//!   [`HttpMetrics`] and the optional access-log [`LogSink`]. It owns that thread's
//!   upstream connection pools; never share an `Engine` across runtimes.
//! - Per connection: [`serve_outbound`] or [`serve_inbound`]`(io, ConnCtx)`, where `io`
//!   is the accepted stream (wrap bytes already read while sniffing with [`Prefixed`]).
//!   HTTP/1.1 and h2 (recognised by its client preface) are served; the future ends
//!   when the connection closes (or, once [`ConnCtx::drain`] turns true, after a
//!   graceful shutdown). The socket should be `TCP_NODELAY` (the listeners' are): a
//!   response's head and body frames are written as they arrive, and Nagle plus
//!   delayed ACKs would add 40 ms to each.
//! - The flow implements [`Resolver`] (what config the proxy has, asking mesh-control
//!   on first use) and gives a [`Connector`] (how to dial: outbound as is, inbound from
//!   127.0.0.6 / ::6, mTLS where the engine asks for it; [`TcpConnector`] does all
//!   three, with the proxy's [`MeshTls`] when it has a workload identity).
//! - Inbound over mTLS: the flow terminates TLS ([`MeshTls::accept`]) and serves the
//!   TLS stream, the client's verified SPIFFE id in [`ConnCtx::peer_identity`].
//! - `/debug/route`: [`explain`] on a [`RequestView`]. `/stats/prometheus`:
//!   [`HttpMetrics::render`].
//!
//! # What a request goes through
//!
//! Outbound (`reporter="source"`): the Service is found by the request's authority
//! (`Resolver::service_for_host`, an IP authority by `service_for_addr`; accepted when
//! its `domains` include the host, the authority carries no other port than the
//! original destination's, and the Service has that port), else by the original
//! destination's IP; with none, the request is forwarded unchanged to the original
//! destination (Istio's `PassthroughCluster`: `destination_service` = the host,
//! `destination_service_name="PassthroughCluster"`). Then [`select`]: route, faults
//! (delay `DI`, then abort `FI`), redirect or direct response, weighted cluster,
//! endpoint ([`lb`]; none healthy: 503 `UH`), header edits (destination's, then the
//! route's; remove, set, add), rewrites, and the upstream request on a pooled
//! connection: h2 when the port's protocol is `http2`/`grpc`, HTTP/1.1 otherwise.
//! Then the cluster's limits and the route's retry rule ([`resilience`]): over
//! `http2MaxRequests`, or pending a connection over `http1MaxPendingRequests`, the
//! request gets 503 `UO` with `x-envoy-overloaded: true`; `tcp.maxConnections` makes
//! requests wait for one of the cluster's connections (one pool for all workers). Each
//! try goes to an endpoint in rotation (outlier detection ejects one at its failing
//! answer), another than those tried when one is left; the route's retry rule (its
//! `retries`, or the port's default: Istio's, from mesh-control) says which outcomes
//! are tried again, after Envoy's jittered back-off, under `maxRetries`; a request
//! sent once is tried again only when its body was held (at most 64 KiB by
//! `content-length`). The route's `timeout` covers every try: 504 `UT`; retries run
//! out: the last answer, with `URX` (`UF,URX` when none connected). An upstream that
//! breaks off before its response head: 503 `UC`. No route: 404 `NR`. Without a
//! Service (passthrough) a request that could not be sent is tried twice more. A route
//! with mirrors copies each forwarded request, for each mirror's share, to that cluster
//! ([`mirror`]: its own task, the answer dropped, not in the request metrics).
//!
//! A gateway (`--role gateway`, [`serve_gateway`]): the request's virtual host is
//! chosen by its authority among the listener's (or the TLS server's)
//! ([`VirtualHosts::pick`]: an exact domain, else the longest wildcard, else `*`; none:
//! 404 `NR`; `httpsRedirect`: 301 to `https://`), then it is routed as an outbound
//! request to a Service is, with the Gateway's port number for `match.port`, the
//! upstream protocol from the cluster (`Cluster::protocol`) and `destination_service`
//! from the cluster chosen; `x-forwarded-proto` is how the client connected and the
//! client's address is appended to `x-forwarded-for`.
//!
//! Inbound (`reporter="destination"`): to the original destination (the app), no
//! routes, no faults; h2 upstream when the Service port says `http2`/`grpc`, else the
//! downstream's protocol; the source labels come from `Resolver::peer` (asked once per
//! connection), `destination_service` from `Resolver::inbound_service`.
//!
//! Istio's HTTP metadata exchange ([`headers::PeerMetadataHeaders`], given to
//! [`Engine::new`]): a request forwarded to a Service's cluster (not passthrough)
//! carries our `x-envoy-peer-metadata` and `x-envoy-peer-metadata-id`, replacing the
//! application's; the inbound side removes a client's from the request and answers
//! each with ours on the response, every reply included (403s, 503s); the outbound
//! side removes the upstream's from the response. Envoy sidecars label their metrics
//! from them; our own labels come from mesh-control by address.
//!
//! mTLS (Istio's `ISTIO_MUTUAL`, auto mTLS): outbound, a connection to an endpoint
//! of a cluster whose TLS mode is not `DISABLE` originates mTLS when
//! `ClusterTls::mtls_to` says so for that endpoint ([`CompiledEndpoint::mtls`]), with
//! the cluster's SNI and expected server identities ([`CompiledCluster::tls`]) and the
//! ALPN of the upstream protocol; passthrough and the original destination stay
//! plaintext. Such connections are pooled apart from plaintext ones. A failed
//! handshake (a server identity not in the list included) is a connect failure:
//! retried as `connect-failure`, counted by outlier detection, 503 `UF` with the TLS
//! error as Envoy's `transport failure reason`. The principals of an mTLS connection
//! (full SPIFFE ids) are in every request's labels: inbound `source_principal` is the
//! client, `destination_principal` us, `connection_security_policy="mutual_tls"`;
//! outbound `source_principal` is us, `destination_principal` the server, and the
//! policy `unknown`, as Istio's source reporter says. Inbound, AuthorizationPolicy
//! sees the client's principal (the id without `spiffe://`).
//!
//! Both: `x-request-id` added (UUID v4) when absent, `x-forwarded-proto` when absent,
//! tracing headers untouched, hop-by-hop headers removed (RFC 9110 §7.6.1; HTTP/1.1
//! upgrades such as WebSocket are forwarded and then spliced), bodies streamed in both
//! directions and their data bytes counted; gRPC requests get the proxy's own errors as
//! trailers-only gRPC responses.
//!
//! # Modules, in dependency order
//!
//! [`metrics`] (label sets, flags, the registry) → [`resilience`] (limits, ejections,
//! retry rules) → [`body`] → [`pool`] → [`compile`] → [`lb`] → [`gateway`] (an
//! ingress gateway's virtual hosts) → [`select`] → [`headers`] → [`prefixed`] →
//! [`log`] → [`exchange`] → [`mirror`] → [`serve`]. Nothing here depends on `flow`; `flow` calls in. Of the rest of the crate
//! it uses `identity::mesh` (TLS origination), `authz`, `config` and `direction`.

pub mod body;
pub mod compile;
pub mod cors;
pub mod exchange;
pub mod gateway;
pub mod headers;
pub mod lb;
pub mod log;
pub mod metrics;
pub mod mirror;
pub mod pool;
pub mod prefixed;
pub mod resilience;
pub mod select;
pub mod serve;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_config::{PeerMeta, Protocol};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::debug;

pub use crate::identity::mesh::{Alpn, MeshTls, TlsTarget};

pub use compile::{CompiledCluster, CompiledEndpoint, CompiledPort, CompiledService};
pub use exchange::ResponseBody;
pub use gateway::{CompiledVirtualHost, GatewayRoutes, VirtualHosts};
pub use headers::{PeerHeadersSeen, PeerMetadataHeaders};
pub use lb::LbStates;
pub(crate) use lb::by_weight;
pub use log::{LogSink, stdout_sink};
pub use metrics::{Flags, HttpMetrics, Principals};
pub use prefixed::Prefixed;
pub use select::{Action, RequestView, RouteExplanation, Selection, explain, select};
pub use serve::{ServeError, serve_gateway, serve_inbound, serve_outbound};

/// A boxed, sendable future (what the traits below return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A byte stream to an upstream: a `TcpStream`, or a TLS stream over one.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// The config the proxy holds, as the HTTP engine asks for it. Implemented by the flow
/// over its store; every call may wait for mesh-control's first answer, and answers
/// `None` for [`mesh_config::Resource::NotFound`].
pub trait Resolver: Send + Sync {
    /// The Service a request naming `host` is for: `host` is normalised
    /// ([`mesh_config::key::normalize_host`]: lower case, no port, no trailing dot).
    /// Short names resolve in the proxy's own namespace, as mesh-control answers
    /// `host/` keys. The engine checks the Service's `domains` and ports itself.
    fn service_for_host<'a>(&'a self, host: &'a str)
    -> BoxFuture<'a, Option<Arc<CompiledService>>>;

    /// The Service with this ClusterIP.
    fn service_for_addr(&self, ip: IpAddr) -> BoxFuture<'_, Option<Arc<CompiledService>>>;

    /// Who the pod at `ip` is (inbound: the source's labels). Asked once per inbound
    /// connection.
    fn peer(&self, ip: IpAddr) -> BoxFuture<'_, Option<PeerMeta>>;

    /// Which of this pod's Services a connection to pod port `target_port` is for
    /// (inbound: `destination_service`, and the port's protocol). Asked once per
    /// inbound connection.
    fn inbound_service(&self, target_port: u16) -> BoxFuture<'_, Option<LocalService>>;

    /// This pod's own Workload (inbound: its AuthorizationPolicies and PeerAuthentication).
    /// Asked once per inbound connection. Default: unknown.
    fn own_workload(&self) -> BoxFuture<'_, Option<Arc<crate::authz::CompiledWorkload>>> {
        Box::pin(async { None })
    }
}

/// One of this pod's Services, as the inbound side reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalService {
    pub host: String,
    pub name: String,
    pub namespace: String,
    /// The Service port's protocol (h2 to the app when `Http2`).
    pub protocol: Protocol,
}

/// An upstream connection as a [`Connector`] made it.
pub struct Dialed {
    pub io: BoxIo,
    /// Over mTLS: the server's verified SPIFFE id (`None`: plaintext).
    pub peer_identity: Option<Arc<str>>,
}

impl Dialed {
    /// A plaintext connection.
    pub fn plain(io: BoxIo) -> Dialed {
        Dialed {
            io,
            peer_identity: None,
        }
    }
}

impl std::fmt::Debug for Dialed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialed")
            .field("peer_identity", &self.peer_identity)
            .finish_non_exhaustive()
    }
}

/// What a connection should be secured with: Istio mTLS to this target, offering the
/// ALPN of the protocol it will carry ([`Alpn::H2`] for an h2 upstream, else
/// [`Alpn::Http11`]). `None`: plaintext.
pub type TlsWish<'a> = Option<(&'a TlsTarget, Alpn)>;

/// A TLS handshake with an upstream failed (the server's certificate did not verify,
/// it presented an identity not expected, it broke off the handshake...). Carried
/// inside the [`io::Error`] a [`Connector`] returns, so the engine can report Envoy's
/// `transport failure reason`; for every other purpose it is a connect failure.
#[derive(Debug, thiserror::Error)]
#[error("TLS error: {reason}")]
pub struct TlsFailure {
    pub reason: String,
}

impl TlsFailure {
    /// `e` as a TLS failure, its kind kept.
    pub fn wrap(e: io::Error) -> io::Error {
        let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            // rustls shows a verifier's own error through Debug; ours reads as text
            // (the identity found and those expected).
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))) => {
                format!("invalid peer certificate: {o}")
            }
            _ => e.to_string(),
        };
        io::Error::new(e.kind(), TlsFailure { reason })
    }

    /// The TLS failure inside `e`, if it is one.
    pub fn of(e: &io::Error) -> Option<&TlsFailure> {
        e.get_ref()?.downcast_ref::<TlsFailure>()
    }
}

/// How the engine dials upstream endpoints (the flow's: with `--connect-timeout`, from
/// the inbound passthrough source for inbound, mTLS where asked).
pub trait Connector: Send + Sync {
    /// Dials `addr`, then originates mTLS when `tls` asks for it. A TLS handshake that
    /// fails is an error like a refused connect (wrapped in [`TlsFailure`]).
    fn connect<'a>(
        &'a self,
        addr: SocketAddr,
        tls: TlsWish<'a>,
    ) -> BoxFuture<'a, io::Result<Dialed>>;

    /// This proxy's own SPIFFE id, when it has a workload identity: the local principal
    /// of the mTLS connections it makes and terminates (`source_principal` outbound,
    /// `destination_principal` inbound). Default: none.
    fn local_identity(&self) -> Option<&str> {
        None
    }
}

/// A TCP connector: `TCP_NODELAY`, a timeout, and optionally a source address (the
/// inbound passthrough source, [`mesh_common::inbound_passthrough_for`]); with a
/// [`MeshTls`], Istio mTLS where the engine asks for it.
///
/// Asked for mTLS without a [`MeshTls`] (the proxy has no workload identity), it
/// connects in plaintext (and says so at debug level): a proxy without an identity
/// cannot originate mTLS, and Istio's sidecars without certificates do the same.
/// `timeout` bounds the TCP connect and the TLS handshake together.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    pub timeout: Duration,
    /// Bind the passthrough source (127.0.0.6 / ::6) before connecting.
    pub inbound_passthrough: bool,
    /// Originates mTLS where the endpoint takes it (outbound, with an identity).
    pub tls: Option<Arc<MeshTls>>,
}

impl TcpConnector {
    async fn tcp(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }?;
        let _ = socket.set_nodelay(true);
        if self.inbound_passthrough {
            socket.bind(SocketAddr::new(
                mesh_common::inbound_passthrough_for(addr.ip()),
                0,
            ))?;
        }
        socket.connect(addr).await
    }

    async fn dial(&self, addr: SocketAddr, tls: TlsWish<'_>) -> io::Result<Dialed> {
        let stream = self.tcp(addr).await?;
        let Some((target, alpn)) = tls else {
            return Ok(Dialed::plain(Box::new(stream)));
        };
        let Some(mesh) = &self.tls else {
            debug!(%addr, sni = %target.sni, "no workload identity: plaintext where mTLS was asked");
            return Ok(Dialed::plain(Box::new(stream)));
        };
        let stream = mesh
            .connect(stream, target, alpn)
            .await
            .map_err(TlsFailure::wrap)?;
        let peer_identity = stream.peer_identity().map(Arc::from);
        Ok(Dialed {
            io: Box::new(stream),
            peer_identity,
        })
    }
}

impl Connector for TcpConnector {
    fn connect<'a>(
        &'a self,
        addr: SocketAddr,
        tls: TlsWish<'a>,
    ) -> BoxFuture<'a, io::Result<Dialed>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.dial(addr, tls))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
        })
    }

    fn local_identity(&self) -> Option<&str> {
        self.tls.as_deref().map(MeshTls::spiffe_id)
    }
}

/// The HTTP engine of one worker thread: its upstream connection pools, and what it
/// shares with the others (metrics, access log).
pub struct Engine {
    pub(crate) metrics: Arc<HttpMetrics>,
    pub(crate) log: Option<LogSink>,
    pub(crate) pools: Arc<pool::Pools>,
    /// Istio's HTTP metadata exchange (`None`: the proxy sends none, and still strips
    /// its peers').
    pub(crate) peer_headers: Option<headers::PeerMetadataHeaders>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("log", &self.log.is_some())
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(
        metrics: Arc<HttpMetrics>,
        log: Option<LogSink>,
        peer_headers: Option<headers::PeerMetadataHeaders>,
    ) -> Arc<Engine> {
        let pools = Arc::default();
        pool::register(&pools);
        Arc::new(Engine {
            metrics,
            log,
            pools,
            peer_headers,
        })
    }

    pub fn metrics(&self) -> &Arc<HttpMetrics> {
        &self.metrics
    }

    /// Upstream connections made so far.
    pub fn upstream_connects(&self) -> u64 {
        self.pools.connects.load(Ordering::Relaxed)
    }

    /// Requests sent on a pooled (reused) upstream connection so far.
    pub fn upstream_reuses(&self) -> u64 {
        self.pools.reused.load(Ordering::Relaxed)
    }

    /// Idle HTTP/1.1 plus open h2 upstream connections now.
    pub fn pooled_connections(&self) -> usize {
        self.pools.idle()
    }
}

/// One downstream connection, as the flow hands it over.
#[derive(Clone)]
pub struct ConnCtx {
    pub engine: Arc<Engine>,
    pub resolver: Arc<dyn Resolver>,
    pub connector: Arc<dyn Connector>,
    /// Where the client was going (`SO_ORIGINAL_DST`).
    pub orig_dst: SocketAddr,
    /// Who the client is.
    pub client: SocketAddr,
    /// The drain signal: when it turns true the connection is shut down gracefully
    /// (HTTP/1.1: after the request in progress; h2: GOAWAY).
    pub drain: Option<watch::Receiver<bool>>,
    /// Inbound over mTLS: the client's verified SPIFFE id (`None`: plaintext).
    pub peer_identity: Option<Arc<str>>,
    /// The `x-forwarded-client-cert` element of the client's certificate
    /// (`identity::xfcc`), when it presented one: a sidecar's inbound side appends it to
    /// each request's header, a gateway sets the header to it; without one the header
    /// is removed ([`headers::forward_client_cert`]).
    pub client_cert: Option<Arc<str>>,
}

impl std::fmt::Debug for ConnCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnCtx")
            .field("orig_dst", &self.orig_dst)
            .field("client", &self.client)
            .field("peer_identity", &self.peer_identity)
            .finish_non_exhaustive()
    }
}
