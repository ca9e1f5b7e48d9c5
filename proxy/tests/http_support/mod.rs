//! Shared pieces of the HTTP engine's integration tests: real upstream servers on
//! loopback, a static resolver, the engine serving accepted connections, clients, and
//! a metrics reader.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_config::{
    Cluster, Endpoint, HeaderEdit, HttpRoute, LoadBalancer, PeerMeta, Protocol, RouteAction,
    Service, ServicePort, WeightedCluster,
};
use mesh_proxy::config::Identity;
use mesh_proxy::http::{
    BoxFuture, CompiledService, ConnCtx, Engine, HttpMetrics, LocalService, LogSink, MeshTls,
    Resolver, TcpConnector,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub const HOST: &str = "reviews.default.svc.cluster.local";
pub const PORT: u16 = 9080;
/// The "ClusterIP" the client dialled (nothing listens there; the engine only uses it
/// to look the Service up).
pub fn cluster_ip() -> SocketAddr {
    SocketAddr::new("127.0.0.200".parse().unwrap(), PORT)
}

/// An upstream server: answers with its name, records what it saw.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    /// Connections open now, and the most open at once.
    pub open: Arc<AtomicUsize>,
    pub max_open: Arc<AtomicUsize>,
    /// Request heads it received: (method, path-and-query, headers), in order.
    pub seen: Arc<Mutex<Vec<(String, String, hyper::HeaderMap)>>>,
}

impl Upstream {
    pub fn seen_last(&self) -> (String, String, hyper::HeaderMap) {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

/// What upstreams answer:
/// - `/echo...`: the request body, streamed back;
/// - `/count...`: the number of request body bytes, once the body has ended;
/// - `/status/N`: status N;
/// - `/grpc...`: a gRPC-style response with `grpc-status: 0` in trailers;
/// - `/upgrade`: 101, then echoes bytes on the upgraded connection;
/// - `/delay/<ms>...`: after that long, as for anything else;
/// - `/fail-first/<n>`: 503 to the first `n` requests this upstream saw, then as for
///   anything else;
/// - `/envoy-peer...`: as an inbound Envoy sidecar answers a peer that sent its
///   metadata: the upstream's name, with `x-envoy-peer-metadata(-id)` of its own
///   ([`ENVOY_PEER_ID`], [`envoy_peer_metadata`]);
/// - anything else: the upstream's name, `x-upstream: <name>`.
///
/// An upstream made with [`upstream_failing`] answers every request with its status
/// (after `/delay/<ms>` if the path says so).
async fn answer(
    name: String,
    mut req: Request<Incoming>,
    seen: usize,
    fail: Option<u16>,
) -> Response<UpBody> {
    let path = req.uri().path().to_owned();
    if let Some(code) = fail {
        if let Some(rest) = path.strip_prefix("/delay/") {
            let ms: u64 = rest.split('/').next().unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let _ = req.into_body().collect().await;
        return Response::builder()
            .status(code)
            .header("x-upstream", name.as_str())
            .body(UpBody::Full(Full::new(Bytes::from(name))))
            .unwrap();
    }
    if let Some(rest) = path.strip_prefix("/delay/") {
        let ms: u64 = rest.split('/').next().unwrap().parse().unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(n) = path.strip_prefix("/fail-first/") {
        let n: usize = n.parse().unwrap();
        if seen <= n {
            return Response::builder()
                .status(503)
                .header("x-upstream", name.as_str())
                .body(UpBody::Full(Full::new(Bytes::from(name))))
                .unwrap();
        }
    }
    if path.starts_with("/upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(UpBody::Full(Full::new(Bytes::new())))
            .unwrap();
    }
    if path.starts_with("/envoy-peer") {
        return Response::builder()
            .header("x-upstream", name.as_str())
            .header("x-envoy-peer-metadata-id", ENVOY_PEER_ID)
            .header("x-envoy-peer-metadata", envoy_peer_metadata())
            .body(UpBody::Full(Full::new(Bytes::from(name))))
            .unwrap();
    }
    if path.starts_with("/echo") {
        return Response::new(UpBody::Echo(req.into_body()));
    }
    if path.starts_with("/count") {
        let n = req.into_body().collect().await.unwrap().to_bytes().len();
        return Response::new(UpBody::Full(Full::new(Bytes::from(n.to_string()))));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap();
        return Response::builder()
            .status(code)
            .body(UpBody::Full(Full::new(Bytes::from(name))))
            .unwrap();
    }
    if path.starts_with("/grpc") {
        let _ = req.into_body().collect().await;
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(UpBody::Grpc(
                Some(Bytes::from_static(b"\0\0\0\0\x02hi")),
                true,
            ))
            .unwrap();
    }
    Response::builder()
        .header("x-upstream", name.as_str())
        .body(UpBody::Full(Full::new(Bytes::from(name))))
        .unwrap()
}

/// The node id an Envoy-like peer sends in `x-envoy-peer-metadata-id`.
pub const ENVOY_PEER_ID: &str = "sidecar~10.1.2.3~details-v1-1.default~default.svc.cluster.local";

/// What an Envoy-like peer sends in `x-envoy-peer-metadata`: a `Struct` with its
/// workload, in base64, as Envoy encodes it (by `prost-types`, not by our encoder).
pub fn envoy_peer_metadata() -> String {
    use base64::Engine as _;
    use prost::Message as _;
    use prost_types::value::Kind;
    let s = |v: &str| prost_types::Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    let labels = prost_types::Struct {
        fields: [("app", s("details")), ("version", s("v1"))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    };
    let node = prost_types::Struct {
        fields: [
            ("NAME".to_owned(), s("details-v1-1")),
            ("NAMESPACE".to_owned(), s("default")),
            ("WORKLOAD_NAME".to_owned(), s("details-v1")),
            (
                "LABELS".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            ),
        ]
        .into_iter()
        .collect(),
    };
    base64::engine::general_purpose::STANDARD.encode(node.encode_to_vec())
}

/// Bodies upstreams send.
pub enum UpBody {
    Full(Full<Bytes>),
    Echo(Incoming),
    /// Data, then `grpc-status: 0` trailers.
    Grpc(Option<Bytes>, bool),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Full(f) => Pin::new(f).poll_frame(cx).map_err(|e| match e {}),
            UpBody::Echo(b) => Pin::new(b).poll_frame(cx),
            UpBody::Grpc(data, trailers) => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                if std::mem::take(trailers) {
                    let mut t = hyper::HeaderMap::new();
                    t.insert("grpc-status", "0".parse().unwrap());
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Poll::Ready(None)
            }
        }
    }
}

/// Starts an upstream named `name` speaking `proto` on 127.0.0.1.
pub async fn upstream(name: &str, proto: Proto) -> Upstream {
    upstream_with(name, proto, None).await
}

/// An upstream that answers every request with `status`.
pub async fn upstream_failing(name: &str, status: u16) -> Upstream {
    upstream_with(name, Proto::H1, Some(status)).await
}

async fn upstream_with(name: &str, proto: Proto, fail: Option<u16>) -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let max_open = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (acc, s, n) = (accepted.clone(), seen.clone(), name.to_owned());
    let (op, mx) = (open.clone(), max_open.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                return;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            let now = op.fetch_add(1, Ordering::SeqCst) + 1;
            mx.fetch_max(now, Ordering::SeqCst);
            let _ = stream.set_nodelay(true);
            let (s, n, op) = (s.clone(), n.clone(), op.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (s, n) = (s.clone(), n.clone());
                    async move {
                        let count = {
                            let mut s = s.lock().unwrap();
                            s.push((
                                req.method().to_string(),
                                req.uri()
                                    .path_and_query()
                                    .map(|p| p.as_str().to_owned())
                                    .unwrap_or_default(),
                                req.headers().clone(),
                            ));
                            s.len()
                        };
                        Ok::<_, Infallible>(answer(n, req, count, fail).await)
                    }
                });
                let io = TokioIo::new(stream);
                match proto {
                    Proto::H1 => {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .with_upgrades()
                            .await;
                    }
                    Proto::H2 => {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    }
                }
                op.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Upstream {
        name: name.to_owned(),
        addr,
        accepted,
        open,
        max_open,
        seen,
    }
}

/// A port nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

pub fn peer(version: &str) -> PeerMeta {
    PeerMeta {
        workload: format!("reviews-{version}"),
        namespace: "default".into(),
        canonical_service: "reviews".into(),
        canonical_revision: version.into(),
        app: "reviews".into(),
        version: version.into(),
        service_account: "bookinfo-reviews".into(),
        sidecar: true,
    }
}

pub fn cluster_name(subset: Option<&str>) -> String {
    mesh_config::cluster::cluster_name(PORT, subset, HOST)
}

pub fn cluster(subset: Option<&str>, endpoints: &[(SocketAddr, Option<PeerMeta>)]) -> Cluster {
    Cluster {
        name: cluster_name(subset),
        host: HOST.into(),
        service_name: "reviews".into(),
        service_namespace: "default".into(),
        port: PORT,
        subset: subset.map(str::to_owned),
        load_balancer: LoadBalancer::RoundRobin,
        consistent_hash: None,
        endpoints: endpoints
            .iter()
            .map(|(addr, peer)| Endpoint {
                addr: *addr,
                serving: true,
                terminating: false,
                mtls: false,
                peer: peer.clone(),
            })
            .collect(),
        connection_pool: Default::default(),
        outlier_detection: None,
        tls: Default::default(),
        protocol: None,
    }
}

pub fn to(subset: &str, weight: u32) -> WeightedCluster {
    WeightedCluster {
        cluster: cluster_name(Some(subset)),
        weight,
        request_headers: HeaderEdit::default(),
        response_headers: HeaderEdit::default(),
    }
}

pub fn route(
    name: &str,
    matches: Vec<mesh_config::RequestMatch>,
    action: RouteAction,
) -> HttpRoute {
    HttpRoute {
        name: name.into(),
        virtual_service: "default/reviews".into(),
        matches,
        action,
        fault: None,
        request_headers: HeaderEdit::default(),
        response_headers: HeaderEdit::default(),
        rewrite: None,
        timeout_ms: None,
        retry: None,
        mirrors: Vec::new(),
        cors: None,
    }
}

/// reviews on port 9080 (`protocol`), a subset per upstream (named by the upstream's
/// name, e.g. `v1`), the default cluster with all of them, and `routes`.
pub fn reviews(ups: &[&Upstream], protocol: Protocol, routes: Vec<HttpRoute>) -> Service {
    let all: Vec<_> = ups.iter().map(|u| (u.addr, Some(peer(&u.name)))).collect();
    let mut clusters = vec![cluster(None, &all)];
    for u in ups {
        clusters.push(cluster(Some(&u.name), &[(u.addr, Some(peer(&u.name)))]));
    }
    Service {
        host: HOST.into(),
        name: "reviews".into(),
        namespace: "default".into(),
        addresses: vec![cluster_ip().ip()],
        ports: vec![ServicePort {
            port: PORT,
            name: "http".into(),
            protocol,
            routes,
            default_retry: Some(istio_default_retry()),
            tcp_route: None,
        }],
        domains: vec![
            HOST.into(),
            "reviews.default.svc".into(),
            "reviews.default".into(),
            "reviews".into(),
            cluster_ip().ip().to_string(),
        ],
        clusters,
    }
}

/// Istio's default retry policy (1.24), as mesh-control sends it for every HTTP port.
pub fn istio_default_retry() -> mesh_config::RetryPolicy {
    use mesh_config::RetryOn::*;
    mesh_config::RetryPolicy {
        attempts: 2,
        per_try_timeout_ms: None,
        retry_on: vec![ConnectFailure, RefusedStream, Unavailable, Cancelled],
        retriable_status_codes: vec![],
        avoid_previous_hosts: true,
        backoff_ms: None,
    }
}

/// A resolver over fixed answers.
#[derive(Default)]
pub struct StaticResolver {
    pub hosts: HashMap<String, Arc<CompiledService>>,
    pub addrs: HashMap<IpAddr, Arc<CompiledService>>,
    pub peers: HashMap<IpAddr, PeerMeta>,
    pub local: Option<LocalService>,
    /// The pod's own Workload (its AuthorizationPolicies).
    pub own: Option<Arc<mesh_config::Workload>>,
}

impl StaticResolver {
    /// Knows `svc` by each of its domains and ClusterIPs.
    pub fn with(svc: &Service) -> StaticResolver {
        let c = Arc::new(CompiledService::compile(svc).unwrap());
        let mut r = StaticResolver::default();
        for d in &svc.domains {
            r.hosts.insert(d.clone(), c.clone());
        }
        for a in &svc.addresses {
            r.addrs.insert(*a, c.clone());
        }
        r
    }
}

impl Resolver for StaticResolver {
    fn service_for_host<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Option<Arc<CompiledService>>> {
        Box::pin(async move { self.hosts.get(host).cloned() })
    }
    fn service_for_addr(&self, ip: IpAddr) -> BoxFuture<'_, Option<Arc<CompiledService>>> {
        Box::pin(async move { self.addrs.get(&ip).cloned() })
    }
    fn peer(&self, ip: IpAddr) -> BoxFuture<'_, Option<PeerMeta>> {
        Box::pin(async move { self.peers.get(&ip).cloned() })
    }
    fn inbound_service(&self, _port: u16) -> BoxFuture<'_, Option<LocalService>> {
        Box::pin(async move { self.local.clone() })
    }
    fn own_workload(&self) -> BoxFuture<'_, Option<Arc<mesh_proxy::authz::CompiledWorkload>>> {
        let own = self.own.as_ref().map(|w| {
            Arc::new(
                mesh_proxy::authz::CompiledWorkload::compile(w)
                    .expect("the test's own workload compiles"),
            )
        });
        Box::pin(async move { own })
    }
}

/// The engine under test, serving every connection accepted on `addr` as if it had
/// been redirected to it with `orig_dst` as its original destination.
pub struct Proxy {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    pub metrics: Arc<HttpMetrics>,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Inbound with mTLS ([`proxy_with_tls`]): connections whose first byte was a TLS
    /// handshake record (0x16), handshakes that succeeded, and plaintext connections.
    pub tls_first_bytes: Arc<AtomicUsize>,
    pub tls_handshakes: Arc<AtomicUsize>,
    pub plaintext_conns: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn metrics_text(&self) -> String {
        let mut s = String::new();
        self.metrics.render(&mut s);
        s
    }

    /// The value of the `istio_requests_total` series whose labels contain all of
    /// `want` (summed over matching series).
    pub fn requests(&self, want: &[&str]) -> u64 {
        sum_series(&self.metrics_text(), "istio_requests_total{", want)
    }

    /// Waits (bounded) until `requests(want)` reaches `n`; returns the last value.
    pub async fn wait_requests(&self, want: &[&str], n: u64) -> u64 {
        for _ in 0..200 {
            let v = self.requests(want);
            if v >= n {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.requests(want)
    }
}

pub fn sum_series(text: &str, prefix: &str, want: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && want.iter().all(|w| l.contains(w)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Outbound,
    Inbound,
}

/// Starts the engine on a loopback listener.
pub async fn proxy(resolver: StaticResolver, orig_dst: SocketAddr, side: Side) -> Proxy {
    proxy_with_drain(resolver, orig_dst, side, None).await
}

/// [`proxy`], its connections watching `drain`.
pub async fn proxy_with_drain(
    resolver: StaticResolver,
    orig_dst: SocketAddr,
    side: Side,
    drain: Option<tokio::sync::watch::Receiver<bool>>,
) -> Proxy {
    start(Arc::new(resolver), orig_dst, side, drain, None).await
}

/// [`proxy`] over any resolver.
pub async fn proxy_with_resolver(
    resolver: Arc<dyn Resolver>,
    orig_dst: SocketAddr,
    side: Side,
) -> Proxy {
    start(resolver, orig_dst, side, None, None).await
}

/// [`proxy`] with a workload identity: outbound, its connector originates mTLS where
/// the cluster says; inbound, a connection that starts with a TLS record is terminated
/// with `tls` (as the flow does) and served with the client's identity, any other is
/// served in plaintext (PERMISSIVE).
pub async fn proxy_with_tls(
    resolver: StaticResolver,
    orig_dst: SocketAddr,
    side: Side,
    tls: Arc<MeshTls>,
) -> Proxy {
    start(Arc::new(resolver), orig_dst, side, None, Some(tls)).await
}

async fn start(
    resolver: Arc<dyn Resolver>,
    orig_dst: SocketAddr,
    side: Side,
    drain: Option<tokio::sync::watch::Receiver<bool>>,
    tls: Option<Arc<MeshTls>>,
) -> Proxy {
    let identity = match side {
        Side::Outbound => Identity {
            workload: "productpage-v1".into(),
            namespace: "default".into(),
            app: Some("productpage".into()),
            version: Some("v1".into()),
            ..Identity::unknown()
        },
        Side::Inbound => Identity {
            workload: "reviews-v1".into(),
            namespace: "default".into(),
            app: Some("reviews".into()),
            version: Some("v1".into()),
            ..Identity::unknown()
        },
    };
    let metrics = Arc::new(HttpMetrics::new(&identity));
    let (sink, log) = LogSink::capture();
    let pod = match side {
        Side::Outbound => "productpage-v1-5d9f8-abcde",
        Side::Inbound => "reviews-v1-7c4b6-fghij",
    };
    let meta =
        mesh_proxy::identity::exchange::NodeMetadata::of(&identity, Some(pod), "cluster.local");
    let engine = Engine::new(
        metrics.clone(),
        Some(sink),
        mesh_proxy::http::PeerMetadataHeaders::new(&meta),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let connector = Arc::new(TcpConnector {
        timeout: Duration::from_secs(2),
        inbound_passthrough: false,
        tls: tls.clone(),
    });
    let tls_first_bytes = Arc::new(AtomicUsize::new(0));
    let tls_handshakes = Arc::new(AtomicUsize::new(0));
    let plaintext_conns = Arc::new(AtomicUsize::new(0));
    let counts = (
        tls_first_bytes.clone(),
        tls_handshakes.clone(),
        plaintext_conns.clone(),
    );
    let e = engine.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, client)) = l.accept().await else {
                return;
            };
            // As the proxy's listeners do.
            let _ = stream.set_nodelay(true);
            let mut ctx = ConnCtx {
                engine: e.clone(),
                resolver: resolver.clone(),
                connector: connector.clone(),
                orig_dst,
                client,
                drain: drain.clone(),
                peer_identity: None,
                client_cert: None,
            };
            let (tls, counts) = (tls.clone(), counts.clone());
            tokio::spawn(async move {
                let _ = match (side, tls) {
                    (Side::Outbound, _) => mesh_proxy::http::serve_outbound(stream, ctx).await,
                    (Side::Inbound, None) => mesh_proxy::http::serve_inbound(stream, ctx).await,
                    (Side::Inbound, Some(tls)) => {
                        let mut first = [0u8; 1];
                        if stream.peek(&mut first).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if first[0] != 0x16 {
                            counts.2.fetch_add(1, Ordering::SeqCst);
                            let _ = mesh_proxy::http::serve_inbound(stream, ctx).await;
                            return;
                        }
                        counts.0.fetch_add(1, Ordering::SeqCst);
                        let Ok(accepted) = tls.accept(stream).await else {
                            return;
                        };
                        counts.1.fetch_add(1, Ordering::SeqCst);
                        ctx.peer_identity = accepted.peer;
                        ctx.client_cert = accepted.client_cert;
                        mesh_proxy::http::serve_inbound(accepted.stream, ctx).await
                    }
                };
            });
        }
    });
    Proxy {
        addr,
        engine,
        metrics,
        log,
        tls_first_bytes,
        tls_handshakes,
        plaintext_conns,
    }
}

pub type ReqBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub fn body(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).boxed()
}

pub fn empty() -> ReqBody {
    body(Bytes::new())
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A keep-alive HTTP/1.1 client connection to `addr`.
/// `n` GETs of `path` (Host `reviews`) at once, each on its own client connection:
/// their answers, in the order they were started.
pub async fn concurrent_gets(
    addr: SocketAddr,
    n: usize,
    path: &'static str,
) -> Vec<(StatusCode, hyper::HeaderMap, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = H1Client::connect(addr).await;
                c.get("reviews", path, &[]).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

pub struct H1Client(hyper::client::conn::http1::SendRequest<ReqBody>);

impl H1Client {
    pub async fn connect(addr: SocketAddr) -> H1Client {
        let io = TokioIo::new(connect(addr).await);
        let (s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        H1Client(s)
    }

    pub async fn send(&mut self, req: Request<ReqBody>) -> Response<Incoming> {
        self.0.ready().await.unwrap();
        self.0.send_request(req).await.unwrap()
    }

    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// GET `path` with `Host: host` and extra headers; the status, headers and body.
    pub async fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, hyper::HeaderMap, String) {
        let mut b = Request::get(path).header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        read(self.send(b.body(empty()).unwrap()).await).await
    }
}

/// An h2 (prior knowledge) client connection to `addr`.
#[derive(Clone)]
pub struct H2Client(pub hyper::client::conn::http2::SendRequest<ReqBody>);

impl H2Client {
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    pub async fn connect(addr: SocketAddr) -> H2Client {
        let io = TokioIo::new(connect(addr).await);
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H2Client(s)
    }

    pub async fn send(&mut self, req: Request<ReqBody>) -> Response<Incoming> {
        self.0.ready().await.unwrap();
        self.0.send_request(req).await.unwrap()
    }
}

pub async fn read(resp: Response<Incoming>) -> (StatusCode, hyper::HeaderMap, String) {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// A request body fed from a channel, chunk by chunk (to prove streaming).
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}
