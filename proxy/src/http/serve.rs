//! Serving one downstream connection: HTTP/1.1 or h2 (by the client preface), each
//! request routed (outbound) or passed to the app (inbound), forwarded on a pooled
//! upstream connection, and answered with a streamed response. See the module docs of
//! [`super`] for the semantics.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fastrand::Rng;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_config::{LoadBalancer, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tracing::debug;

use super::body::HeldBody;
use super::body::RequestBody;
use super::compile::CompiledEndpoint;
use super::compile::{CompiledCluster, CompiledDest, CompiledRoute, CompiledService};
use super::cors::Cors;
use super::exchange::{
    self, Exchange, FAULT_BODY, NC_BODY, ResponseBody, UC_BODY, UF_BODY, UH_BODY, UO_BODY, UT_BODY,
};
use super::gateway::{GatewayRoutes, VirtualHosts};
use super::headers::{self, X_ENVOY_ORIGINAL_PATH, X_ENVOY_OVERLOADED, X_FORWARDED_PROTO};
use super::lb::{self, InFlight};
use super::metrics::{Flags, PeerLabels, Principals, ServiceLabels};
use super::mirror;
use super::pool::{PoolKey, SendError, SendOpts, Sent};
use super::prefixed::Prefixed;
use super::resilience::{ClusterState, Limits, Outcome, RetryRule, SlotGuard, TryFailure};
use super::select::{self, Action, RequestView};
use super::{ConnCtx, LocalService};
use crate::config::UNKNOWN;
use crate::direction::Direction;

/// The retry rule where no config gives one (passthrough): a request that could not be
/// sent is tried twice more.
fn passthrough_retry() -> &'static RetryRule {
    static RULE: OnceLock<RetryRule> = OnceLock::new();
    RULE.get_or_init(RetryRule::connect_failure_only)
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why serving a connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading the client preface: {0}")]
    Io(#[from] io::Error),
    #[error("HTTP connection: {0}")]
    Http(#[from] hyper::Error),
}

/// Serves an outbound connection (the pod's app calling out): `reporter="source"`.
pub async fn serve_outbound<IO>(io: IO, ctx: ConnCtx) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve(io, ctx, Direction::Outbound, None).await
}

/// Serves a connection accepted by an ingress gateway (`--role gateway`):
/// `reporter="source"`, as Istio's gateways report. Each request's virtual host comes
/// from `routes` (by its authority; none: 404 `NR`), then it is routed as an outbound
/// request to a Service is. The gateway is the edge: `x-forwarded-proto` says how the
/// client connected, and the client's address is appended to `x-forwarded-for`.
pub async fn serve_gateway<IO>(
    io: IO,
    ctx: ConnCtx,
    routes: Arc<dyn GatewayRoutes>,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve(io, ctx, Direction::Outbound, Some(routes)).await
}

/// Serves an inbound connection (a peer calling the pod's app):
/// `reporter="destination"`.
pub async fn serve_inbound<IO>(io: IO, ctx: ConnCtx) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve(io, ctx, Direction::Inbound, None).await
}

/// What the requests of one connection share.
struct ConnState {
    ctx: ConnCtx,
    direction: Direction,
    downstream_h2: bool,
    /// Inbound: the source's labels.
    peer: Arc<PeerLabels>,
    /// Inbound: the Service the pod port belongs to.
    local: Option<(Arc<ServiceLabels>, Protocol)>,
    /// Inbound: this pod's Workload when AuthorizationPolicies apply to it.
    authz: Option<Arc<crate::authz::CompiledWorkload>>,
    /// Inbound over mTLS: the connection's principals (the client's, ours).
    mtls: Option<Arc<Principals>>,
    /// An ingress gateway's connection: where its virtual hosts come from.
    gateway: Option<Arc<dyn GatewayRoutes>>,
}

/// Reads until the bytes read are the h2 client preface, or cannot be. `None`: the
/// client closed before sending anything.
async fn sniff_h2<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<Option<(Vec<u8>, bool)>> {
    let mut buf = [0u8; 24];
    let mut len = 0;
    while len < buf.len() {
        let n = io.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len] != H2_PREFACE[..len] {
            return Ok(Some((buf[..len].to_vec(), false)));
        }
    }
    if len == 0 {
        return Ok(None);
    }
    Ok(Some((buf[..len].to_vec(), len == H2_PREFACE.len())))
}

/// Resolves once the drain starts (never, if the drain's sender is gone).
async fn drained(drain: &mut watch::Receiver<bool>) {
    if drain.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

macro_rules! drive {
    ($conn:expr, $drain:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        match $drain {
            None => conn.await,
            Some(mut drain) => {
                let early = tokio::select! {
                    r = conn.as_mut() => Some(r),
                    () = drained(&mut drain) => None,
                };
                match early {
                    Some(r) => r,
                    None => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
        }
    }};
}

async fn serve<IO>(
    mut io: IO,
    ctx: ConnCtx,
    direction: Direction,
    gateway: Option<Arc<dyn GatewayRoutes>>,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some((prefix, h2)) = sniff_h2(&mut io).await? else {
        return Ok(());
    };
    let io = TokioIo::new(Prefixed::new(prefix, io));
    let (peer, local, authz, mtls) =
        match direction {
            Direction::Outbound => (ctx.engine.metrics.unknown_peer(), None, None, None),
            Direction::Inbound => {
                let peer = match ctx.resolver.peer(ctx.client.ip()).await {
                    Some(m) => Arc::new(PeerLabels::of_meta(&m)),
                    None => ctx.engine.metrics.unknown_peer(),
                };
                let local = ctx.resolver.inbound_service(ctx.orig_dst.port()).await.map(
                    |l: LocalService| {
                        (
                            Arc::new(ServiceLabels::new(&l.host, &l.name, &l.namespace)),
                            l.protocol,
                        )
                    },
                );
                let authz = ctx
                    .resolver
                    .own_workload()
                    .await
                    .filter(|w| !w.authz.is_empty());
                let mtls = ctx.peer_identity.as_ref().map(|p| {
                    let own = ctx.connector.local_identity().unwrap_or(UNKNOWN);
                    Arc::new(Principals::inbound(p.clone(), own))
                });
                (peer, local, authz, mtls)
            }
        };
    let drain = ctx.drain.clone();
    let st = Arc::new(ConnState {
        ctx,
        direction,
        downstream_h2: h2,
        peer,
        local,
        authz,
        mtls,
        gateway,
    });
    let service = service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(handle(st, req).await) }
    });
    if h2 {
        let b = http2::Builder::new(TokioExecutor::new());
        drive!(b.serve_connection(io, service), drain)?;
    } else {
        let b = http1::Builder::new();
        drive!(b.serve_connection(io, service).with_upgrades(), drain)?;
    }
    Ok(())
}

async fn handle(st: Arc<ConnState>, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let mut ex = Box::new(Exchange::new(
        st.ctx.engine.clone(),
        st.direction,
        Instant::now(),
    ));
    let mut rng = Rng::new();
    ex.grpc = headers::is_grpc(req.headers());
    headers::ensure_request_id(req.headers_mut(), &mut rng);
    headers::forward_client_cert(
        req.headers_mut(),
        st.ctx.client_cert.as_deref(),
        st.direction == Direction::Inbound,
    );
    let gateway = st.gateway.as_ref().map(|g| g.hosts());
    if let Some(hosts) = &gateway {
        // The edge: how the client connected to us, and who it is.
        let https = hosts.as_ref().is_some_and(|h| h.https);
        req.headers_mut().insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if https { "https" } else { "http" }),
        );
        headers::append_forwarded_for(req.headers_mut(), st.ctx.client.ip());
    } else if let header::Entry::Vacant(e) = req.headers_mut().entry(&X_FORWARDED_PROTO) {
        e.insert(HeaderValue::from_static("http"));
    }
    if let Some(l) = ex.log.as_mut() {
        let v = RequestView::of(&req);
        l.method = v.method.to_owned();
        l.path = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        l.protocol = if st.downstream_h2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        l.authority = v.authority.to_owned();
        l.request_id = headers::request_id(req.headers()).to_owned();
        l.user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        l.downstream_peer = Some(st.ctx.client);
        l.downstream_peer_uri_san = st.ctx.peer_identity.clone();
    }
    match st.direction {
        Direction::Outbound => outbound(&st, req, ex, &mut rng, gateway).await,
        Direction::Inbound => {
            let seen = headers::strip_peer_metadata(req.headers_mut());
            let mut resp = inbound(&st, req, ex, &mut rng).await;
            if let Some(p) = &st.ctx.engine.peer_headers {
                p.insert_downstream(resp.headers_mut(), seen);
            }
            resp
        }
    }
}

/// Inbound (`reporter="destination"`): AuthorizationPolicy, then to the app.
async fn inbound(
    st: &ConnState,
    req: Request<Incoming>,
    mut ex: Box<Exchange>,
    rng: &mut Rng,
) -> Response<ResponseBody> {
    ex.peer = st.peer.clone();
    ex.mtls = st.mtls.clone();
    if let Some((labels, _)) = &st.local {
        ex.service = labels.clone();
    }
    if let Some(w) = &st.authz {
        let v = RequestView::of(&req);
        let attrs = crate::authz::Attributes {
            principal: st
                .ctx
                .peer_identity
                .as_deref()
                .map(mesh_common::identity::principal),
            source_ip: st.ctx.client.ip(),
            destination_ip: st.ctx.orig_dst.ip(),
            destination_port: st.ctx.orig_dst.port(),
            sni: None,
            http: Some(crate::authz::HttpAttributes {
                host: v.authority,
                method: v.method,
                path: req.uri().path(),
                headers: req.headers(),
            }),
        };
        let decision = w.authz.evaluate(&attrs);
        if !decision.allowed() {
            tracing::debug!(?decision, client = %st.ctx.client, "request denied by AuthorizationPolicy");
            return exchange::local_reply(ex, 403, "RBAC: access denied", None);
        }
    }
    let h2 = match &st.local {
        Some((labels, proto)) => {
            ex.service = labels.clone();
            match proto {
                Protocol::Http2 => true,
                Protocol::Http => false,
                Protocol::Tcp | Protocol::Unknown => st.downstream_h2,
            }
        }
        None => st.downstream_h2,
    };
    let target = Target {
        cluster: None,
        dest: None,
        route: None,
        h2,
        rewrite_path: None,
        rewrite_authority: None,
        retry: None,
        timeout: None,
        mirror_from: None,
    };
    forward(st, req, ex, target, rng).await
}

/// `reviews:9080` → (`reviews`, Some(9080)); `[fd00::1]:80` → (`fd00::1`, Some(80)).
fn split_authority(a: &str) -> (&str, Option<u16>) {
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (a, None),
    }
}

/// The Service an outbound request is for (see the module docs of [`super`]).
async fn find_service(st: &ConnState, authority: &str) -> Option<Arc<CompiledService>> {
    let orig = st.ctx.orig_dst;
    let resolver = &st.ctx.resolver;
    let (host, port) = split_authority(authority);
    let host = mesh_config::key::normalize_host(host);
    if !host.is_empty() && port.is_none_or(|p| p == orig.port()) {
        let found = match mesh_config::key::ip_literal(&host) {
            Some(ip) => resolver.service_for_addr(ip).await,
            None => resolver.service_for_host(&host).await,
        };
        if let Some(s) = found
            && s.port(orig.port()).is_some()
            && s.serves_host(&host)
        {
            return Some(s);
        }
    }
    let s = resolver.service_for_addr(orig.ip()).await?;
    s.port(orig.port()).is_some().then_some(s)
}

/// A gateway request's virtual host: its Service and port number, or the reply it gets
/// instead (404 `NR` for a host no virtual host takes, 301 for `httpsRedirect`).
// The reply is what the request gets, returned as is: boxing it would only add an
// allocation.
#[allow(clippy::result_large_err)]
fn gateway_service(
    hosts: Option<Arc<VirtualHosts>>,
    req: &Request<Incoming>,
    mut ex: Box<Exchange>,
) -> Result<(Arc<CompiledService>, u16, Box<Exchange>), Response<ResponseBody>> {
    let authority = RequestView::of(req).authority;
    let host = mesh_config::key::normalize_host(split_authority(authority).0);
    let Some((vh, number)) = hosts
        .as_ref()
        .and_then(|h| h.pick(&host).map(|v| (v, h.number)))
    else {
        ex.flags |= Flags::NR;
        return Err(exchange::local_reply(ex, 404, "", None));
    };
    if let Some(l) = ex.log.as_mut() {
        l.route_name = Some(vh.name.clone());
    }
    if vh.https_redirect {
        let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        let location = HeaderValue::from_str(&format!("https://{host}{pq}")).ok();
        return Err(exchange::configured_reply(ex, 301, Bytes::new(), location));
    }
    Ok((vh.service.clone(), number, ex))
}

async fn outbound(
    st: &ConnState,
    req: Request<Incoming>,
    mut ex: Box<Exchange>,
    rng: &mut Rng,
    gateway: Option<Option<Arc<VirtualHosts>>>,
) -> Response<ResponseBody> {
    let orig = st.ctx.orig_dst;
    let authority = RequestView::of(&req).authority.to_owned();
    let (svc, port) = match gateway {
        Some(hosts) => match gateway_service(hosts, &req, ex) {
            Ok((svc, number, e)) => {
                ex = e;
                (Some(svc), number)
            }
            Err(reply) => return reply,
        },
        None => (find_service(st, &authority).await, orig.port()),
    };
    let is_gateway = st.gateway.is_some();
    let Some(svc) = svc else {
        // Istio's PassthroughCluster: to the original destination, unchanged.
        let host = if authority.is_empty() {
            orig.to_string()
        } else {
            mesh_config::key::normalize_host(&authority)
        };
        ex.service = Arc::new(ServiceLabels::passthrough(&host));
        if let Some(l) = ex.log.as_mut() {
            l.upstream_cluster = Some("PassthroughCluster".to_owned());
        }
        let target = Target {
            cluster: None,
            dest: None,
            route: None,
            h2: st.downstream_h2,
            rewrite_path: None,
            rewrite_authority: None,
            retry: Some(passthrough_retry()),
            timeout: None,
            mirror_from: None,
        };
        return forward(st, req, ex, target, rng).await;
    };
    if !is_gateway {
        // A gateway's virtual host is not a Service: the cluster chosen names it.
        ex.service = svc.labels.clone();
    }
    let sel = select::select(&svc, port, &RequestView::of(&req), rng);
    let route = sel.route.map(|m| m.route);
    if let Some(l) = ex.log.as_mut() {
        l.route_name = sel.route.map(|r| r.name().to_owned());
    }
    // CORS comes before faults, as Istio orders Envoy's filters.
    let cors = route.and_then(|r| r.cors.as_ref());
    let origin = match cors.map(|c| c.check(&req)) {
        None | Some(Cors::Pass) => None,
        Some(Cors::Answer(h)) => {
            let mut resp = exchange::configured_reply(ex, 200, Bytes::new(), None);
            resp.headers_mut().extend(h);
            return resp;
        }
        Some(Cors::Decorate(origin)) => Some(origin),
    };
    let mut resp = routed(st, req, ex, rng, &svc, port, sel, route).await;
    if let (Some(c), Some(o)) = (cors, origin) {
        c.decorate(o, resp.headers_mut());
    }
    resp
}

/// The rest of [`outbound`] once the route is chosen: faults, then the route's action.
#[allow(clippy::too_many_arguments)]
async fn routed(
    st: &ConnState,
    req: Request<Incoming>,
    mut ex: Box<Exchange>,
    rng: &mut Rng,
    svc: &Arc<CompiledService>,
    port: u16,
    sel: select::Selection<'_>,
    route: Option<&CompiledRoute>,
) -> Response<ResponseBody> {
    let is_gateway = st.gateway.is_some();
    if sel.delay.is_some() {
        ex.flags |= Flags::DI;
    }
    if sel.abort.is_some() {
        ex.flags |= Flags::FI;
    }
    if let Some(d) = sel.delay {
        tokio::time::sleep(d).await;
    }
    if let Some(a) = sel.abort {
        return match a.grpc_status {
            Some(g) if ex.grpc || a.http_status.is_none() => {
                exchange::local_reply(ex, 200, FAULT_BODY, Some(g))
            }
            _ => exchange::local_reply(ex, a.http_status.unwrap_or(503), FAULT_BODY, None),
        };
    }
    match sel.action {
        Action::NoRoute => {
            ex.flags |= Flags::NR;
            exchange::local_reply(ex, 404, "", None)
        }
        Action::NoCluster => {
            ex.flags |= Flags::NC;
            exchange::local_reply(ex, 503, NC_BODY, None)
        }
        Action::Redirect { location, code } => {
            let location = HeaderValue::from_str(&location).ok();
            let mut resp = exchange::configured_reply(ex, code, Bytes::new(), location);
            if let Some(r) = route {
                headers::apply_edit(resp.headers_mut(), &r.response_headers);
            }
            resp
        }
        Action::DirectResponse { status, body } => {
            let mut resp = exchange::configured_reply(ex, status, body, None);
            if let Some(r) = route {
                headers::apply_edit(resp.headers_mut(), &r.response_headers);
            }
            resp
        }
        Action::Forward { cluster, dest } => {
            let port = svc.port(port);
            let h2 = if is_gateway {
                cluster.protocol == Some(Protocol::Http2)
            } else {
                port.is_some_and(|p| p.protocol == Protocol::Http2)
            };
            let retry = match route {
                Some(r) => r.retry.as_ref(),
                None => port.and_then(|p| p.default_retry.as_ref()),
            };
            let target = Target {
                cluster: Some(cluster),
                dest,
                route,
                h2,
                rewrite_path: sel.rewrite_path,
                rewrite_authority: sel.rewrite_authority,
                retry,
                timeout: route.and_then(|r| r.timeout),
                mirror_from: Some(svc),
            };
            forward(st, req, ex, target, rng).await
        }
    }
}

/// Where and how a request is forwarded. No cluster: to the original destination.
struct Target<'s> {
    cluster: Option<&'s CompiledCluster>,
    dest: Option<&'s CompiledDest>,
    route: Option<&'s CompiledRoute>,
    h2: bool,
    rewrite_path: Option<String>,
    rewrite_authority: Option<&'s str>,
    /// `None`: one try only.
    retry: Option<&'s RetryRule>,
    /// The route's timeout, over every try.
    timeout: Option<Duration>,
    /// The Service whose clusters the route's mirrors name.
    mirror_from: Option<&'s Arc<CompiledService>>,
}

/// The request line and headers as they go upstream.
fn upstream_request(
    st: &ConnState,
    mut req: Request<Incoming>,
    ex: &Exchange,
    t: &Target<'_>,
    upgrade: bool,
) -> Result<Request<RequestBody>, hyper::http::Error> {
    let authority = match t.rewrite_authority {
        Some(a) => a.to_owned(),
        None => {
            let a = RequestView::of(&req).authority;
            if a.is_empty() {
                st.ctx.orig_dst.to_string()
            } else {
                a.to_owned()
            }
        }
    };
    let pq = match &t.rewrite_path {
        Some(p) => PathAndQuery::try_from(p.as_str())?,
        None => req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    if t.rewrite_path.is_some()
        && let Some(orig) = req.uri().path_and_query()
        && let Ok(v) = HeaderValue::from_str(orig.as_str())
    {
        // As Envoy: the path before a prefix or regex rewrite, for the app's logs.
        req.headers_mut().insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
    }
    let h = req.headers_mut();
    headers::strip_hop_by_hop(h, upgrade);
    if let Some(d) = t.dest {
        headers::apply_edit(h, &d.request_headers);
    }
    if let Some(r) = t.route {
        headers::apply_edit(h, &r.request_headers);
    }
    if t.cluster.is_some()
        && let Some(p) = &st.ctx.engine.peer_headers
    {
        p.insert_upstream(h);
    }
    let (mut parts, body) = req.into_parts();
    if t.h2 {
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(pq)
            .build()?;
        parts.headers.remove(header::HOST);
        parts.version = Version::HTTP_2;
    } else {
        parts.uri = Uri::from(pq);
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_str(&authority)?);
        parts.version = Version::HTTP_11;
    }
    Ok(Request::from_parts(
        parts,
        RequestBody::new(body, ex.request_bytes.clone()),
    ))
}

async fn forward(
    st: &ConnState,
    mut req: Request<Incoming>,
    mut ex: Box<Exchange>,
    t: Target<'_>,
    rng: &mut Rng,
) -> Response<ResponseBody> {
    if let Some(c) = t.cluster {
        ex.service = c.labels.clone();
        if let Some(l) = ex.log.as_mut() {
            l.upstream_cluster = Some(c.name.clone());
        }
        if !c.has_healthy() {
            ex.flags |= Flags::UH;
            return exchange::local_reply(ex, 503, UH_BODY, None);
        }
        match c.state.request(&c.limits) {
            Ok(slot) => ex.active = Some(slot),
            Err(o) => {
                c.state.overflowed(o, c.limits.max_requests.unwrap_or(0));
                return overflow_reply(ex);
            }
        }
    }
    let upgrade = !st.downstream_h2 && !t.h2 && headers::is_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut up = match upstream_request(st, req, &ex, &t, upgrade) {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "cannot build the upstream request");
            return exchange::local_reply(ex, 400, "bad request", None);
        }
    };
    // A request that may be retried after it was sent, or is mirrored, is held whole
    // when it is short.
    let idempotent = is_idempotent(up.method());
    let retried = t.retry.is_some_and(|r| {
        r.attempts > 0 && !upgrade && (idempotent || r.may_retry_sent(ex.grpc, t.h2))
    });
    let mirrors = match (t.route, t.mirror_from) {
        (Some(r), Some(svc)) if !upgrade && !r.mirrors.is_empty() => Some((r, svc)),
        _ => None,
    };
    let held = if retried || mirrors.is_some() {
        match up.body_mut().hold().await {
            Ok(h) => h,
            Err(e) => {
                debug!(error = %e, "the client broke off its request body");
                ex.flags |= Flags::DC;
                return exchange::local_reply(ex, 400, "bad request", None);
            }
        }
    } else {
        None
    };
    if let Some((route, svc)) = mirrors {
        send_mirrors(st, &up, held.as_ref(), route, svc, &t, rng);
    }
    // Held for a mirror only: sent once, as it would have been streamed.
    let held = if retried { held } else { None };
    // consistentHash: the request's key, and the cookie made up for it.
    let (hash, set_cookie) = match t.cluster.and_then(|c| c.hash_key.as_ref()) {
        Some(k) => lb::request_hash(k, up.headers(), up.uri(), st.ctx.client.ip(), rng),
        None => (None, None),
    };
    let mut last: Option<&CompiledEndpoint> = None;
    let sent = match t.timeout {
        Some(d) => {
            match tokio::time::timeout(
                d,
                send(st, up, held.as_ref(), hash, &mut ex, &t, rng, &mut last),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => {
                    if let (Some(c), Some(e)) = (t.cluster, last) {
                        c.record_outcome(e, Outcome::LocalOrigin);
                    }
                    Err(Failure::Timeout)
                }
            }
        }
        None => send(st, up, held.as_ref(), hash, &mut ex, &t, rng, &mut last).await,
    };
    let mut resp = match sent {
        Ok(r) => r,
        Err(Failure::Connect(None)) => return exchange::local_reply(ex, 503, UF_BODY, None),
        Err(Failure::Connect(Some(tls))) => {
            // As Envoy: the handshake's failure, named in the body.
            let body = format!("{UF_BODY}, transport failure reason: {tls}");
            return exchange::local_reply(ex, 503, body, None);
        }
        Err(Failure::Reset) => {
            ex.flags |= Flags::UC;
            return exchange::local_reply(ex, 503, UC_BODY, None);
        }
        Err(Failure::Timeout) => {
            ex.flags |= Flags::UT;
            if let Some(c) = t.cluster {
                c.state.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            return exchange::local_reply(ex, 504, UT_BODY, None);
        }
        Err(Failure::Overflow) => return overflow_reply(ex),
        Err(Failure::NoHealthy) => {
            ex.flags |= Flags::UH;
            return exchange::local_reply(ex, 503, UH_BODY, None);
        }
    };
    let upgraded = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded && let Some(down) = downstream_upgrade {
        let up = hyper::upgrade::on(&mut resp);
        ex.conn = None;
        tokio::spawn(async move {
            let (Ok(down), Ok(up)) = tokio::join!(down, up) else {
                return;
            };
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                debug!(error = %e, "upgraded connection ended");
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    ex.code = parts.status.as_u16();
    if ex.grpc {
        ex.grpc_status = headers::grpc_status(&parts.headers);
    }
    headers::strip_hop_by_hop(&mut parts.headers, upgraded);
    if st.direction == Direction::Outbound {
        headers::strip_peer_metadata(&mut parts.headers);
    }
    if let Some(d) = t.dest {
        headers::apply_edit(&mut parts.headers, &d.response_headers);
    }
    if let Some(r) = t.route {
        headers::apply_edit(&mut parts.headers, &r.response_headers);
    }
    if let Some(c) = set_cookie {
        parts.headers.append(header::SET_COOKIE, c);
    }
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, ResponseBody::upstream(body, ex))
}

/// Spawns the copies of `up` for `route`'s mirrors (see [`mirror`]), each for its
/// share of requests; a body not held (too long, or of unknown length) is not mirrored.
fn send_mirrors(
    st: &ConnState,
    up: &Request<RequestBody>,
    held: Option<&HeldBody>,
    route: &CompiledRoute,
    svc: &Arc<CompiledService>,
    t: &Target<'_>,
    rng: &mut Rng,
) {
    for &(cluster, pct) in &route.mirrors {
        if rng.f64() * 100.0 >= pct {
            continue;
        }
        let Some(held) = held else {
            debug!(route = %route.name, "request body too long to mirror");
            return;
        };
        mirror::spawn(mirror::Shadow {
            svc: svc.clone(),
            cluster,
            req: RequestHead::of(up).request(held.body()),
            h2: t.h2,
            direction: st.direction,
            connector: st.ctx.connector.clone(),
            pools: st.ctx.engine.pools.clone(),
            timeout: t.timeout,
            seed: rng.u64(..),
        });
    }
}

/// Methods safe to send twice: a held request with one of them may be tried again when
/// the kept-alive connection it went out on turns out closed.
fn is_idempotent(m: &hyper::Method) -> bool {
    matches!(
        *m,
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS | hyper::Method::TRACE
    )
}

/// 503 `UO` with `x-envoy-overloaded: true`: a circuit breaker refused the request.
fn overflow_reply(mut ex: Box<Exchange>) -> Response<ResponseBody> {
    ex.flags |= Flags::UO;
    let mut resp = exchange::local_reply(ex, 503, UO_BODY, None);
    resp.headers_mut()
        .insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
    resp
}

enum Failure {
    /// Every try failed to connect (`UF` set); the last one's TLS failure, if it was one.
    Connect(Option<String>),
    /// The upstream broke off after the request was sent, before the response head.
    Reset,
    /// The last try's `perTryTimeout`, or the route's timeout.
    Timeout,
    /// A circuit breaker refused the request.
    Overflow,
    /// No endpoint left in rotation.
    NoHealthy,
}

/// One more try of the request: the one that came back unsent, or the held body again.
fn next_request(
    back: Option<Request<RequestBody>>,
    head: Option<&RequestHead>,
    held: Option<&HeldBody>,
) -> Option<Request<RequestBody>> {
    back.or_else(|| Some(head?.request(held?.body())))
}

/// What a request looks like without its body, to build each retry.
struct RequestHead {
    method: hyper::Method,
    uri: Uri,
    version: Version,
    headers: hyper::HeaderMap,
}

impl RequestHead {
    fn of(r: &Request<RequestBody>) -> RequestHead {
        RequestHead {
            method: r.method().clone(),
            uri: r.uri().clone(),
            version: r.version(),
            headers: r.headers().clone(),
        }
    }

    fn request(&self, body: RequestBody) -> Request<RequestBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Whether an h2 failure is the upstream refusing the stream (it never processed it).
fn refused_stream(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return h.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        src = s.source();
    }
    false
}

/// Sends `req` to the target's cluster (or the original destination), and tries
/// again as the target's retry rule says: a request that was not sent (connect
/// failure) can always be tried again; one that was sent only when its body was held
/// ([`HeldBody`]). Each try goes to another endpoint than those tried when the rule
/// says so and one is left, after Envoy's jittered back-off, under the cluster's
/// `maxRetries`. `last` is the endpoint of the latest try.
#[allow(clippy::too_many_arguments)]
async fn send<'t>(
    st: &ConnState,
    req: Request<RequestBody>,
    held: Option<&HeldBody>,
    hash: Option<u64>,
    ex: &mut Exchange,
    t: &Target<'t>,
    rng: &mut Rng,
    last: &mut Option<&'t CompiledEndpoint>,
) -> Result<Response<Incoming>, Failure> {
    let head = held.map(|_| RequestHead::of(&req));
    let retry = t.retry;
    let attempts = retry.map_or(0, |r| r.attempts);
    // A hashed request goes where its key says, tries again included (Istio drops the
    // previous-hosts predicate for a consistent-hash destination).
    let avoid_previous = hash.is_none() && retry.is_some_and(|r| r.avoid_previous_hosts);
    let idempotent = is_idempotent(req.method());
    let no_limits = Limits::default();
    let (state, limits) = match t.cluster {
        Some(c) => (Some(&c.state), &c.limits),
        None => (None, &no_limits),
    };
    let scope = t.cluster.map_or(0, |c| c.state.scope(&c.limits));
    let pools = match t.cluster.and_then(|c| c.shared_pools.as_ref()) {
        Some(p) => p.clone(),
        None => st.ctx.engine.pools.clone(),
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut next = Some(req);
    let mut retries_done = 0u32;
    let mut stale_retry_used = false;
    let mut _retry_slot = None;
    loop {
        let Some(req) = next.take() else {
            return Err(Failure::Reset);
        };
        let (addr, endpoint, tls) = match t.cluster {
            Some(c) if c.load_balancer != LoadBalancer::Passthrough => {
                let avoid: &[SocketAddr] = if avoid_previous { &tried } else { &[] };
                let picked = match hash {
                    Some(h) => c.pick_hashed(h).or_else(|| c.pick(rng, avoid)),
                    None => c.pick(rng, avoid),
                };
                let Some(e) = picked else {
                    return Err(Failure::NoHealthy);
                };
                ex.in_flight = Some(InFlight::new(e));
                ex.peer = e.peer.clone();
                *last = Some(e);
                let tls = if e.mtls { c.tls.as_ref() } else { None };
                (e.addr, Some(e), tls.map(|t| (t, c.tls_key)))
            }
            // Passthrough and the original destination: plaintext.
            _ => (st.ctx.orig_dst, None, None),
        };
        if let Some(l) = ex.log.as_mut() {
            l.upstream_host = Some(addr);
        }
        let key = PoolKey {
            addr,
            direction: st.direction,
            h2: t.h2,
            scope,
            tls: tls.map_or(0, |(_, k)| k),
        };
        let opts = SendOpts {
            state,
            limits,
            tls: tls.map(|(t, _)| t),
        };
        let per_try = retry.and_then(|r| r.per_try_timeout);
        let tried_once = pools.send(&*st.ctx.connector, key, req, opts);
        let result = match per_try {
            Some(d) => tokio::time::timeout(d, tried_once).await.ok(),
            None => Some(tried_once.await),
        };
        let record = |o: Outcome| {
            if let (Some(c), Some(e)) = (t.cluster, endpoint) {
                c.record_outcome(e, o);
            }
        };
        // This try's TLS handshake failure, if its connect failed so.
        let mut tls_failure: Option<String> = None;
        // What failed, and the request back when it was not sent.
        let (failure, back) = match result {
            Some(Ok(Sent { resp, conn, mtls })) => {
                let status = resp.status().as_u16();
                record(Outcome::Status(status));
                let grpc = if ex.grpc {
                    headers::grpc_status(resp.headers())
                } else {
                    None
                };
                let wants = retry.is_some_and(|r| r.retries_status(status, grpc));
                let again = wants && held.is_some() && retries_done < attempts;
                if !again || !take_retry_slot(state, limits, &mut _retry_slot) {
                    if wants && attempts > 0 && retries_done >= attempts {
                        ex.flags |= Flags::URX;
                    }
                    ex.conn = conn;
                    if let Some(l) = ex.log.as_mut() {
                        l.upstream_peer_uri_san = mtls.as_ref().map(|p| p.peer.clone());
                        l.upstream_transport_failure_reason = None;
                    }
                    // Outbound, the request reports the upstream connection's mTLS;
                    // inbound, the downstream one's (set when the request came in).
                    if st.direction == Direction::Outbound {
                        ex.mtls = mtls;
                    }
                    return Ok(resp);
                }
                drop((resp, conn, mtls));
                (None, None)
            }
            Some(Err(SendError::Connect(e, back))) => {
                debug!(%addr, error = %e, "upstream connect failed");
                tls_failure = super::TlsFailure::of(&e).map(ToString::to_string);
                if let Some(l) = ex.log.as_mut() {
                    l.upstream_transport_failure_reason = tls_failure.clone();
                }
                record(Outcome::LocalOrigin);
                (Some(TryFailure::Connect), Some(*back))
            }
            Some(Err(SendError::Overflow)) => return Err(Failure::Overflow),
            Some(Err(SendError::Failed(e, reused))) => {
                debug!(%addr, error = %e, "upstream failed before the response head");
                // A kept-alive connection the upstream closed as the request went out:
                // tried again once, whatever the rule, when it is safe to.
                if reused && idempotent && held.is_some() && !stale_retry_used {
                    stale_retry_used = true;
                    next = next_request(None, head.as_ref(), held);
                    continue;
                }
                record(Outcome::LocalOrigin);
                let f = if refused_stream(&e) {
                    TryFailure::RefusedStream
                } else {
                    TryFailure::Reset
                };
                (Some(f), None)
            }
            None => {
                debug!(%addr, "per-try timeout");
                record(Outcome::LocalOrigin);
                (Some(TryFailure::Timeout), None)
            }
        };
        tried.push(addr);
        if let Some(f) = failure {
            let wants = retry.is_some_and(|r| r.retries_failure(f));
            let replayable = back.is_some() || held.is_some();
            let again = wants && replayable && retries_done < attempts;
            if !again || !take_retry_slot(state, limits, &mut _retry_slot) {
                if wants && attempts > 0 && retries_done >= attempts {
                    ex.flags |= Flags::URX;
                }
                return Err(match f {
                    TryFailure::Connect => {
                        ex.flags |= Flags::UF;
                        Failure::Connect(tls_failure)
                    }
                    TryFailure::Reset | TryFailure::RefusedStream => Failure::Reset,
                    TryFailure::Timeout => Failure::Timeout,
                });
            }
            next = next_request(back, head.as_ref(), held);
        } else {
            next = next_request(None, head.as_ref(), held);
        }
        retries_done += 1;
        let pause = retry.map_or(Duration::ZERO, |r| r.backoff(retries_done, rng));
        tokio::time::sleep(pause).await;
    }
}

/// Takes a `maxRetries` slot for one more try (counting the retry), or counts the
/// overflow: `false` means no retry.
fn take_retry_slot(
    state: Option<&Arc<ClusterState>>,
    limits: &Limits,
    slot: &mut Option<SlotGuard>,
) -> bool {
    let Some(state) = state else {
        return true;
    };
    // The previous retry's slot is given back before this one is taken.
    *slot = None;
    match state.retry(limits) {
        Ok(g) => {
            *slot = Some(g);
            state.retries.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(o) => {
            state.overflowed(o, limits.max_retries.unwrap_or(0));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split() {
        assert_eq!(split_authority("reviews:9080"), ("reviews", Some(9080)));
        assert_eq!(split_authority("reviews"), ("reviews", None));
        assert_eq!(split_authority("[fd00::1]:80"), ("fd00::1", Some(80)));
        assert_eq!(split_authority("[fd00::1]"), ("fd00::1", None));
        assert_eq!(split_authority("fd00::1"), ("fd00::1", None));
    }

    #[tokio::test]
    async fn preface_sniffing() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(H2_PREFACE).await.ok();
        let (bytes, h2) = sniff_h2(&mut b).await.ok().flatten().unwrap_or_default();
        assert!(h2);
        assert_eq!(bytes, H2_PREFACE);
        a.write_all(b"GET / HTTP/1.1\r\n").await.ok();
        let (bytes, h2) = sniff_h2(&mut b).await.ok().flatten().unwrap_or_default();
        assert!(!h2);
        assert_eq!(bytes, b"GET / HTTP/1.1\r\n");
        // A prefix of the preface, then something else.
        a.write_all(b"PRI * HTTP/1.1").await.ok();
        let (bytes, h2) = sniff_h2(&mut b).await.ok().flatten().unwrap_or_default();
        assert!(!h2);
        assert_eq!(bytes, b"PRI * HTTP/1.1");
        drop(a);
        assert!(sniff_h2(&mut b).await.ok().flatten().is_none());
    }
}
