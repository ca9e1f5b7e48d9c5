//! The HTTP protocol: which connections go to the HTTP engine ([`crate::http`]), and
//! the handoff. A port is HTTP when its Service says so (`appProtocol`, or a name such
//! as `http-web`); a port with no protocol is sniffed ([`super::detect`]) while the
//! upstream connection is made at once, so server-first protocols keep working.
//! Everything else stays on the L4 path.

use std::cell::RefCell;
use std::sync::Arc;

use mesh_config::{Key, Protocol};
use tokio::net::TcpStream;

use super::Shared;
use super::connect::{self, ConnectError};
use super::detect::{SNIFF_LEN, Sniffed, classify};
use crate::addrs::{ClientAddr, OrigDstAddr};
use crate::control::{Answer, LOOKUP_WAIT, Store, StoreResolver};
use crate::http::CompiledService;
use crate::http::{ConnCtx, Connector, Engine, HttpMetrics, LogSink, TcpConnector};
use crate::metrics::TcpPeer;

/// What the L7 path shares: the config store, the request metrics, the dialers.
pub struct L7 {
    /// mTLS, with a workload identity (`--root-cert`).
    pub tls: Option<Arc<crate::identity::mesh::MeshTls>>,
    pub store: Arc<Store>,
    pub resolver: Arc<StoreResolver>,
    pub metrics: Arc<HttpMetrics>,
    pub log: Option<LogSink>,
    /// Istio's HTTP metadata exchange headers, ours.
    pub peer_headers: Option<crate::http::PeerMetadataHeaders>,
    pub outbound: Arc<TcpConnector>,
    pub inbound: Arc<TcpConnector>,
}

impl std::fmt::Debug for L7 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L7")
            .field("store", &self.store)
            .field("access_log", &self.log.is_some())
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Each worker thread's engine (its upstream pools stay on its own runtime).
    static ENGINE: RefCell<Option<Arc<Engine>>> = const { RefCell::new(None) };
}

impl L7 {
    pub(super) fn engine(&self) -> Arc<Engine> {
        ENGINE.with(|e| {
            e.borrow_mut()
                .get_or_insert_with(|| {
                    Engine::new(
                        self.metrics.clone(),
                        self.log.clone(),
                        self.peer_headers.clone(),
                    )
                })
                .clone()
        })
    }
}

/// How a connection is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Http,
    Sniff,
    Tcp,
}

fn plan_for(protocol: Protocol) -> Plan {
    match protocol {
        Protocol::Http | Protocol::Http2 => Plan::Http,
        Protocol::Unknown => Plan::Sniff,
        Protocol::Tcp => Plan::Tcp,
    }
}

/// Outbound: the original destination's Service port decides; anything not a known
/// Service (a pod IP, the outside world, mesh-control away) stays L4. Also returns the
/// Service, when the destination is one of its ports.
pub async fn plan_outbound(l7: &L7, orig: OrigDstAddr) -> (Plan, Option<Arc<CompiledService>>) {
    match l7.store.resolve(Key::Address(orig.ip()), LOOKUP_WAIT).await {
        Some(Answer::Service(svc)) => match svc.service().port(orig.port()) {
            Some(p) => (plan_for(p.protocol), Some(svc)),
            None => (Plan::Tcp, None),
        },
        _ => (Plan::Tcp, None),
    }
}

/// Where an L4 connection to a Service port goes.
pub struct TcpUpstream {
    /// The endpoint the proxy dials itself (its default cluster's load balancer, as
    /// Envoy does); `None`: dial the original destination (a `PASSTHROUGH` cluster, or
    /// no healthy endpoint).
    pub endpoint: Option<OrigDstAddr>,
    /// Labels naming the Service and, with an endpoint, its workload.
    pub peer: TcpPeer,
    /// The cluster's `tcp.connectTimeout`.
    pub connect_timeout: Option<std::time::Duration>,
    /// The cluster's `tcp.idleTimeout`.
    pub idle_timeout: Option<std::time::Duration>,
    /// The connection's slot under the cluster's `tcp.maxConnections`, held while it
    /// is open; `Err`: the limit is reached, refuse the connection (`UO`).
    pub slot: Result<Option<crate::http::resilience::SlotGuard>, ()>,
    /// mTLS to the endpoint (auto mTLS or the DestinationRule's `ISTIO_MUTUAL`).
    pub tls: Option<crate::identity::mesh::TlsTarget>,
}

/// The cluster an L4 connection to `port` goes to: one of the port's `tcp[]` route
/// clusters, picked by weight, else the port's default cluster.
fn tcp_cluster_name(raw: &mesh_config::Service, port: u16, rng: &mut fastrand::Rng) -> String {
    let route = raw
        .ports
        .iter()
        .find(|p| p.port == port)
        .and_then(|p| p.tcp_route.as_ref());
    let weight = |c: &mesh_config::TcpCluster| u64::from(c.weight);
    route
        .and_then(|r| {
            let total = r.clusters.iter().map(weight).sum();
            crate::http::by_weight(&r.clusters, total, weight, rng)
        })
        .map_or_else(|| raw.default_cluster(port), |c| c.cluster.clone())
}

/// An L4 connection to a Service port: see [`TcpUpstream`]. `client`: who connected,
/// for a cluster that hashes by `useSourceIp` (the other keys are HTTP's: such a
/// connection is balanced by the cluster's simple balancer). `metrics` gives the labels
/// of a peer nobody knows, for a connection without an endpoint.
pub fn tcp_upstream(
    svc: &CompiledService,
    orig: OrigDstAddr,
    client: Option<std::net::IpAddr>,
    metrics: &HttpMetrics,
) -> TcpUpstream {
    let raw = svc.service();
    let mut rng = fastrand::Rng::new();
    let cluster_name = tcp_cluster_name(raw, orig.port(), &mut rng);
    let cluster = svc.cluster(&cluster_name);
    let picked = cluster.and_then(|c| {
        let hashed = match (&c.hash_key, client) {
            (Some(mesh_config::HashKey::SourceIp), Some(ip)) => {
                c.pick_hashed(crate::http::lb::hash_key(ip.to_string().as_bytes()))
            }
            _ => None,
        };
        hashed.or_else(|| c.pick(&mut rng, &[]))
    });
    let slot = match cluster {
        None => Ok(None),
        Some(c) => match c.state.connection(&c.limits) {
            Some(g) => Ok(Some(g)),
            None => {
                c.state.overflowed(
                    crate::http::resilience::Overflow::Connections,
                    c.limits.max_connections.unwrap_or(0),
                );
                Err(())
            }
        },
    };
    // The compiled endpoint's labels and mTLS choice (`ClusterTls::mtls_to`), made
    // when the config came.
    let (peer, tls) = match (cluster, picked) {
        (Some(c), Some(e)) => (
            TcpPeer::new(e.peer.clone(), c.labels.clone()),
            if e.mtls { c.tls.clone() } else { None },
        ),
        (Some(c), None) => (TcpPeer::new(metrics.unknown_peer(), c.labels.clone()), None),
        (None, _) => (
            TcpPeer::new(metrics.unknown_peer(), svc.labels.clone()),
            None,
        ),
    };
    TcpUpstream {
        endpoint: picked.map(|e| OrigDstAddr(e.addr)),
        peer,
        connect_timeout: cluster.and_then(|c| c.limits.connect_timeout),
        idle_timeout: cluster.and_then(|c| c.limits.tcp_idle_timeout),
        slot,
        tls,
    }
}

/// An inbound L4 connection's labels: the source pod (when mesh-control knows its IP)
/// and which of this pod's Services the port serves.
pub async fn tcp_inbound_peer(l7: &L7, client: ClientAddr, orig: OrigDstAddr) -> TcpPeer {
    use crate::http::Resolver as _;
    let source = l7.resolver.peer(client.ip()).await;
    let service = l7.resolver.inbound_service(orig.port()).await;
    TcpPeer::of_meta(
        source.as_ref(),
        service
            .as_ref()
            .map(|s| (s.host.as_str(), s.name.as_str(), s.namespace.as_str())),
    )
}

/// Inbound: the pod's own Service port that targets the original port decides; a port
/// no Service names is sniffed (as Istio's inbound passthrough does).
pub async fn plan_inbound(l7: &L7, orig: OrigDstAddr) -> Plan {
    use crate::http::Resolver as _;
    match l7.resolver.inbound_service(orig.port()).await {
        Some(s) => plan_for(s.protocol),
        None => Plan::Sniff,
    }
}

/// The outcome of sniffing: HTTP (the upstream connection, if any, is dropped: the
/// engine dials its own), or not, with the upstream connection made meanwhile.
pub enum SniffOutcome {
    Http,
    Opaque(Result<TcpStream, ConnectError>),
}

/// Waits for the client's first bytes, dialling `orig` meanwhile; the upstream speaking
/// first also means "not HTTP".
pub async fn sniff(
    shared: &Shared,
    client: &TcpStream,
    orig: OrigDstAddr,
    source: Option<std::net::IpAddr>,
) -> SniffOutcome {
    let dial = connect::connect(orig, source, shared.config.connect_timeout);
    tokio::pin!(dial);
    let mut up: Option<Result<TcpStream, ConnectError>> = None;
    let mut buf = [0u8; SNIFF_LEN];
    let mut partial = false;
    loop {
        let peek = async {
            if partial {
                // More bytes of a request line may follow; look again shortly.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            client.peek(&mut buf).await
        };
        let verdict = if up.is_none() {
            tokio::select! {
                r = peek => Some(r),
                r = &mut dial => {
                    up = Some(r);
                    None
                }
            }
        } else if let Some(Ok(u)) = &up {
            tokio::select! {
                r = peek => Some(r),
                // The server spoke first: not HTTP.
                _ = server_spoke(u) => return SniffOutcome::Opaque(up.unwrap_or_else(unreachable_dial)),
            }
        } else {
            Some(peek.await)
        };
        let Some(r) = verdict else { continue };
        let n = match r {
            Ok(n) if n > 0 => n,
            // The client closed or broke off before a byte: let L4 see it through.
            _ => return SniffOutcome::Opaque(finish(up, dial).await),
        };
        match classify(&buf[..n]) {
            Some(Sniffed::Http1 | Sniffed::H2) => return SniffOutcome::Http,
            Some(Sniffed::Opaque) => return SniffOutcome::Opaque(finish(up, dial).await),
            None if n == buf.len() => return SniffOutcome::Opaque(finish(up, dial).await),
            None => partial = true,
        }
    }
}

fn unreachable_dial() -> Result<TcpStream, ConnectError> {
    Err(ConnectError::Io(std::io::Error::other(
        "no upstream connection",
    )))
}

async fn server_spoke(u: &TcpStream) {
    let mut b = [0u8; 1];
    let _ = u.peek(&mut b).await;
}

async fn finish(
    up: Option<Result<TcpStream, ConnectError>>,
    dial: impl Future<Output = Result<TcpStream, ConnectError>>,
) -> Result<TcpStream, ConnectError> {
    match up {
        Some(r) => r,
        None => dial.await,
    }
}

/// Who the client of a TLS connection the proxy terminated is.
#[derive(Debug, Default)]
pub struct ClientTls {
    /// Its verified SPIFFE id.
    pub identity: Option<Arc<str>>,
    /// Its certificate's `x-forwarded-client-cert` element (none: it sent none).
    pub client_cert: Option<Arc<str>>,
}

/// Serves `client` (plain TCP, `tls` default; or mTLS the inbound flow terminated) with
/// the HTTP engine until it closes.
pub async fn serve<IO>(
    shared: &Shared,
    l7: &L7,
    client: IO,
    peer: ClientAddr,
    orig: OrigDstAddr,
    inbound: bool,
    tls: ClientTls,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connector: Arc<dyn Connector> = if inbound {
        l7.inbound.clone()
    } else {
        l7.outbound.clone()
    };
    let ctx = ConnCtx {
        engine: l7.engine(),
        resolver: l7.resolver.clone(),
        connector,
        orig_dst: orig.addr(),
        client: peer.addr(),
        drain: Some(shared.drain.clone()),
        peer_identity: tls.identity,
        client_cert: tls.client_cert,
    };
    let result = if inbound {
        crate::http::serve_inbound(client, ctx).await
    } else {
        crate::http::serve_outbound(client, ctx).await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::http::compile::tests::reviews;
    use crate::http::{CompiledService, LbStates};

    /// `tcp[]` traffic shifting: each L4 connection picks one of the route's clusters by
    /// weight; without a route, the port's default cluster (all endpoints).
    #[test]
    fn l4_connections_follow_the_port_s_tcp_route_weights() {
        use crate::http::compile::tests::subset;
        use mesh_config::{Protocol, TcpCluster, TcpRoute};
        let mut svc = reviews(vec![]);
        svc.ports[0].protocol = Protocol::Tcp;
        let orig = OrigDstAddr("10.96.0.12:9080".parse().unwrap());
        let metrics = HttpMetrics::new(&crate::config::Identity::unknown());
        let count = |svc: &mesh_config::Service| {
            let compiled = CompiledService::compile(svc).unwrap();
            let mut by_ip = std::collections::BTreeMap::<String, u32>::new();
            for _ in 0..2000 {
                let up = tcp_upstream(&compiled, orig, None, &metrics);
                *by_ip
                    .entry(up.endpoint.unwrap().ip().to_string())
                    .or_default() += 1;
            }
            by_ip
        };
        let spread = count(&svc);
        assert_eq!(spread.len(), 3, "{spread:?}");
        svc.ports[0].tcp_route = Some(TcpRoute {
            virtual_service: "default/reviews".into(),
            rule: 0,
            clusters: vec![
                TcpCluster {
                    cluster: subset("v1"),
                    weight: 80,
                },
                TcpCluster {
                    cluster: subset("v3"),
                    weight: 20,
                },
            ],
        });
        let shifted = count(&svc);
        assert_eq!(shifted.keys().collect::<Vec<_>>(), ["10.0.0.1", "10.0.0.3"]);
        let v1 = f64::from(shifted["10.0.0.1"]) / 2000.0;
        assert!((0.76..=0.84).contains(&v1), "{shifted:?}");
    }

    #[test]
    fn l4_connections_to_a_service_hold_a_slot_under_max_connections() {
        let mut svc = reviews(vec![]);
        for c in &mut svc.clusters {
            c.connection_pool.max_connections = Some(1);
            c.connection_pool.connect_timeout_ms = Some(250);
        }
        let states = LbStates::default();
        let compiled = CompiledService::compile_in(&svc, &states).unwrap();
        let orig = OrigDstAddr("10.96.0.12:9080".parse().unwrap());
        let metrics = HttpMetrics::new(&crate::config::Identity::unknown());
        let first = tcp_upstream(&compiled, orig, None, &metrics);
        assert!(matches!(first.slot, Ok(Some(_))));
        assert!(first.endpoint.is_some());
        assert_eq!(
            first.connect_timeout,
            Some(std::time::Duration::from_millis(250))
        );
        assert!(
            tcp_upstream(&compiled, orig, None, &metrics).slot.is_err(),
            "over the limit"
        );
        drop(first);
        assert!(matches!(
            tcp_upstream(&compiled, orig, None, &metrics).slot,
            Ok(Some(_))
        ));
        let mut out = String::new();
        states.render_clusters(&mut out);
        assert!(
            out.contains("envoy_cluster_upstream_cx_overflow{cluster_name=\"outbound|9080||reviews.default.svc.cluster.local\"} 1"),
            "{out}"
        );
    }
}
