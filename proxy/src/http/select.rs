//! Route selection, pure: a compiled Service, the port, a view of the request and a
//! random source in; the route, the action (a weighted cluster, a redirect, a direct
//! response, or no route), the faults to apply and the rewrite out. [`explain`] says
//! the same for `/debug/route`.
//!
//! Istio's semantics: routes in order, the first whose match holds wins; a route's
//! `match[]` entries are OR'ed, the conditions of one entry AND'ed, a route without
//! entries matches everything. `uri` is matched against the path without the query
//! string (exact, prefix or whole-string regex; `ignoreUriCase` ignores ASCII case for
//! all three); `headers` each must be present and match (several values of one header
//! are joined with `,`, as Envoy does; no value: presence); `withoutHeaders` each must be
//! absent or not match; `queryParams` are matched on the first occurrence of the name,
//! percent-decoded (no value: presence). A port without routes sends everything to
//! its default cluster.

use std::borrow::Cow;
use std::time::Duration;

use fastrand::Rng;
use hyper::body::Bytes;
use hyper::{HeaderMap, Request};
use serde::Serialize;

use super::compile::{
    CompiledAction, CompiledCluster, CompiledDest, CompiledMatch, CompiledRoute, CompiledService,
    HeaderCond, HeaderKey, Matcher,
};
use super::metrics::Flags;

/// What route selection reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// `http` unless the request says otherwise (`:scheme`, an absolute URI).
    pub scheme: &'a str,
    /// `Host` / `:authority`, as sent (with its port if it has one).
    pub authority: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// The view of a request as hyper hands it over (h2: the URI carries scheme and
    /// authority; HTTP/1.1: the `Host` header, unless the URI is in absolute form).
    pub fn of<B>(req: &'a Request<B>) -> RequestView<'a> {
        let uri = req.uri();
        let authority = match uri.authority() {
            Some(a) => a.as_str(),
            None => req
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(""),
        };
        RequestView {
            method: req.method().as_str(),
            scheme: uri.scheme_str().unwrap_or("http"),
            authority,
            path: uri.path(),
            query: uri.query(),
            headers: req.headers(),
        }
    }
}

/// A fault abort to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Abort {
    pub http_status: Option<u16>,
    pub grpc_status: Option<u32>,
}

/// What happens to a request.
#[derive(Debug)]
pub enum Action<'s> {
    /// Forward to a cluster: the weighted destination's (with its header edits), or the
    /// port's default cluster (`dest` `None`).
    Forward {
        cluster: &'s CompiledCluster,
        dest: Option<&'s CompiledDest>,
    },
    Redirect {
        location: String,
        code: u16,
    },
    DirectResponse {
        status: u16,
        body: Bytes,
    },
    /// No route matched, or the Service lacks the port: 404 `NR`.
    NoRoute,
    /// The route names a cluster the Service does not carry: 503 `NC`.
    NoCluster,
}

/// The matched route.
#[derive(Debug, Clone, Copy)]
pub struct MatchedRoute<'s> {
    /// Index among the port's routes.
    pub index: usize,
    /// Which `match[]` entry held (`None`: the route has no entries).
    pub match_index: Option<usize>,
    pub(crate) route: &'s CompiledRoute,
}

impl MatchedRoute<'_> {
    pub fn name(&self) -> &str {
        &self.route.name
    }

    pub fn virtual_service(&self) -> &str {
        &self.route.virtual_service
    }
}

/// The result of route selection.
#[derive(Debug)]
pub struct Selection<'s> {
    pub route: Option<MatchedRoute<'s>>,
    pub action: Action<'s>,
    /// Fault delay to sleep before anything else (`DI`).
    pub delay: Option<Duration>,
    /// Fault abort to answer with instead of the action (`FI`).
    pub abort: Option<Abort>,
    /// The new path and query, when the route rewrites the URI.
    pub rewrite_path: Option<String>,
    /// The new authority, when the route rewrites it.
    pub rewrite_authority: Option<&'s str>,
}

impl Selection<'_> {
    /// The flags the selection alone implies.
    pub fn flags(&self) -> Flags {
        let mut f = Flags::NONE;
        if self.delay.is_some() {
            f |= Flags::DI;
        }
        if self.abort.is_some() {
            f |= Flags::FI;
        } else {
            match self.action {
                Action::NoRoute => f |= Flags::NR,
                Action::NoCluster => f |= Flags::NC,
                Action::Forward { cluster, .. } if !cluster.has_healthy() => f |= Flags::UH,
                _ => {}
            }
        }
        f
    }
}

fn percent(rng: &mut Rng, p: f64) -> bool {
    p > 0.0 && rng.f64() * 100.0 < p
}

/// Selects what happens to `req` arriving for `svc` on `port`. `rng` decides weights
/// and fault percentages.
pub fn select<'s>(
    svc: &'s CompiledService,
    port: u16,
    req: &RequestView<'_>,
    rng: &mut Rng,
) -> Selection<'s> {
    let mut sel = Selection {
        route: None,
        action: Action::NoRoute,
        delay: None,
        abort: None,
        rewrite_path: None,
        rewrite_authority: None,
    };
    let Some(p) = svc.port(port) else {
        return sel;
    };
    if p.routes.is_empty() {
        sel.action = match p.default_cluster.and_then(|i| svc.clusters.get(i)) {
            Some(cluster) => Action::Forward {
                cluster,
                dest: None,
            },
            None => Action::NoCluster,
        };
        return sel;
    }
    let Some((index, match_index, route)) = p
        .routes
        .iter()
        .enumerate()
        .find_map(|(i, r)| route_matches(r, req).map(|m| (i, m, r)))
    else {
        return sel;
    };
    sel.route = Some(MatchedRoute {
        index,
        match_index,
        route,
    });
    if let Some(f) = &route.fault {
        if let Some(d) = &f.delay
            && percent(rng, d.percentage)
        {
            sel.delay = Some(Duration::from_millis(d.fixed_delay_ms));
        }
        if let Some(a) = &f.abort
            && percent(rng, a.percentage)
        {
            sel.abort = Some(Abort {
                http_status: a.http_status,
                grpc_status: a.grpc_status,
            });
        }
    }
    sel.action = match &route.action {
        CompiledAction::Route {
            dests,
            total_weight,
        } => {
            let dest = pick_weighted(dests, *total_weight, rng);
            match dest.and_then(|d| svc.clusters.get(d.cluster).map(|c| (c, d))) {
                Some((cluster, d)) => Action::Forward {
                    cluster,
                    dest: Some(d),
                },
                None => Action::NoCluster,
            }
        }
        CompiledAction::Redirect(rd) => Action::Redirect {
            location: redirect_location(rd, req),
            code: rd.code,
        },
        CompiledAction::DirectResponse { status, body } => Action::DirectResponse {
            status: *status,
            body: body.clone(),
        },
    };
    if matches!(sel.action, Action::Forward { .. }) {
        sel.rewrite_path = rewritten_path(route, match_index, req);
        sel.rewrite_authority = route.rewrite_authority.as_deref();
    }
    sel
}

fn pick_weighted<'d>(
    dests: &'d [CompiledDest],
    total: u64,
    rng: &mut Rng,
) -> Option<&'d CompiledDest> {
    if dests.len() <= 1 || total == 0 {
        return dests.first();
    }
    super::lb::by_weight(dests, total, |d| d.weight, rng)
}

/// `None`: the route does not match; `Some(k)`: entry `k` holds (`Some(None)`: the
/// route has no entries).
fn route_matches(r: &CompiledRoute, req: &RequestView<'_>) -> Option<Option<usize>> {
    if r.matches.is_empty() {
        return Some(None);
    }
    r.matches.iter().position(|m| match_holds(m, req)).map(Some)
}

fn match_holds(m: &CompiledMatch, req: &RequestView<'_>) -> bool {
    if let Some(u) = &m.uri
        && !u.matches(req.path, m.ignore_uri_case)
    {
        return false;
    }
    for (cond, v) in [
        (&m.scheme, req.scheme),
        (&m.method, req.method),
        (&m.authority, req.authority),
    ] {
        if let Some(c) = cond
            && !c.matches(v, false)
        {
            return false;
        }
    }
    m.headers.iter().all(|h| header_holds(h, req))
        && m.without_headers.iter().all(|h| !header_holds(h, req))
        && m.query_params
            .iter()
            .all(|q| match query_param(req.query, &q.name) {
                None => false,
                Some(v) => q.value.as_ref().is_none_or(|m| m.matches(&v, false)),
            })
}

fn header_value<'a>(key: &HeaderKey, req: &RequestView<'a>) -> Option<Cow<'a, str>> {
    match key {
        HeaderKey::Authority => (!req.authority.is_empty()).then_some(Cow::Borrowed(req.authority)),
        HeaderKey::Method => Some(Cow::Borrowed(req.method)),
        HeaderKey::Scheme => Some(Cow::Borrowed(req.scheme)),
        HeaderKey::Path => Some(match req.query {
            Some(q) => Cow::Owned(format!("{}?{q}", req.path)),
            None => Cow::Borrowed(req.path),
        }),
        HeaderKey::Name(n) => {
            let mut values = req.headers.get_all(n).iter();
            let first = values.next()?;
            let first = String::from_utf8_lossy(first.as_bytes());
            match values.next() {
                None => Some(first),
                Some(second) => {
                    let mut joined = first.into_owned();
                    for v in std::iter::once(second).chain(values) {
                        joined.push(',');
                        joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                    }
                    Some(Cow::Owned(joined))
                }
            }
        }
    }
}

fn header_holds(h: &HeaderCond, req: &RequestView<'_>) -> bool {
    match header_value(&h.key, req) {
        None => false,
        Some(v) => h.value.as_ref().is_none_or(|m| m.matches(&v, false)),
    }
}

/// The value of the first query parameter named `name`, percent-decoded.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The path and query sent upstream after `rewrite.uri`: a matched `uri.prefix` is
/// replaced; an exact or regex match has the whole path replaced; a route (or match
/// entry) without a `uri` condition behaves as Istio's generated `prefix: /`, so only
/// the leading `/` is replaced (Envoy's `prefix_rewrite`, quirks included). After
/// `rewrite.uriRegexRewrite`: the path with the pattern's matches replaced (`None`
/// when it has none). The query string is kept.
fn rewritten_path(
    route: &CompiledRoute,
    match_index: Option<usize>,
    req: &RequestView<'_>,
) -> Option<String> {
    let mut out = if let Some(rx) = &route.rewrite_regex {
        rx.rewrite(req.path)?
    } else {
        let new = route.rewrite_uri.as_deref()?;
        let uri = match_index
            .and_then(|k| route.matches.get(k))
            .and_then(|m| m.uri.as_ref());
        let rest = match uri {
            Some(Matcher::Prefix(p)) => req.path.get(p.len()..).unwrap_or(""),
            Some(_) => "",
            None => req.path.get(1..).unwrap_or(""),
        };
        let mut out = String::with_capacity(new.len() + rest.len() + 1);
        out.push_str(new);
        out.push_str(rest);
        out
    };
    if let Some(q) = req.query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// `Location` for a redirect: scheme, authority (port replaced when `port` is given),
/// and path (`uri`, else the request's) with the request's query unless `uri` has one.
fn redirect_location(rd: &mesh_config::Redirect, req: &RequestView<'_>) -> String {
    let scheme = rd.scheme.as_deref().unwrap_or(req.scheme);
    let authority = rd.authority.as_deref().unwrap_or(req.authority);
    let host = match rd.port {
        Some(port) => {
            let h = mesh_config::key::strip_port(authority);
            if h.contains(':') {
                format!("[{h}]:{port}")
            } else {
                format!("{h}:{port}")
            }
        }
        None => authority.to_owned(),
    };
    let mut out = format!("{scheme}://{host}");
    match rd.uri.as_deref() {
        Some(u) => {
            out.push_str(u);
            if !u.contains('?')
                && let Some(q) = req.query
            {
                out.push('?');
                out.push_str(q);
            }
        }
        None => {
            out.push_str(req.path);
            if let Some(q) = req.query {
                out.push('?');
                out.push_str(q);
            }
        }
    }
    out
}

/// What `/debug/route` says about one request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteExplanation {
    pub service: String,
    pub port: u16,
    /// `forward`, `redirect`, `direct_response`, `fault_abort`, `no_route`,
    /// `no_cluster`, `no_healthy_upstream`.
    pub outcome: &'static str,
    pub route: Option<RuleExplanation>,
    pub cluster: Option<String>,
    pub subset: Option<String>,
    pub load_balancer: Option<String>,
    /// The cluster's `consistentHash` key, when it hashes; the endpoint is then the
    /// one the request's key picks (a `useSourceIp` key hashes the debug client's
    /// address, not a pod's).
    pub consistent_hash: Option<mesh_config::HashKey>,
    /// The endpoint this pick chose (`None` for `PASSTHROUGH`: the original
    /// destination).
    pub endpoint: Option<String>,
    pub endpoint_workload: Option<String>,
    pub fault: FaultExplanation,
    pub rewrite_path: Option<String>,
    pub rewrite_authority: Option<String>,
    pub redirect: Option<String>,
    pub redirect_code: Option<u16>,
    pub direct_response_status: Option<u16>,
    pub response_flags: String,
    /// The route's `timeout` (none: no timeout).
    pub timeout_ms: Option<u64>,
    /// The retry policy this request gets (the route's, or the port's default).
    pub retry: Option<mesh_config::RetryPolicy>,
    /// The cluster's limits, state and ejections.
    pub circuit: Option<CircuitExplanation>,
    /// The route's mirrors: (cluster, percentage).
    pub mirrors: Vec<(String, f64)>,
    /// What the route's `corsPolicy` does with the request: `preflight_answered` (by
    /// the proxy, outcome `cors_preflight`), `preflight_answered_origin_not_allowed`,
    /// `origin_allowed` (CORS headers added to the response), `origin_not_allowed`;
    /// none without a policy or an `Origin`.
    pub cors: Option<&'static str>,
}

/// A cluster's `connectionPool` and `outlierDetection`, and where it stands.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CircuitExplanation {
    pub connection_pool: mesh_config::ConnectionPool,
    pub outlier_detection: Option<mesh_config::OutlierDetection>,
    pub connections: u32,
    pub pending: u32,
    pub active_requests: u32,
    pub active_retries: u32,
    pub pending_overflows: u64,
    pub request_overflows: u64,
    pub connection_overflows: u64,
    pub retry_overflows: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub ejections_total: u64,
    /// The last limit that refused something.
    pub last_trip: Option<super::resilience::Trip>,
    /// Endpoints out of rotation now, and for how much longer.
    pub ejected: Vec<EjectedEndpoint>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EjectedEndpoint {
    pub endpoint: String,
    pub workload: String,
    pub remaining_ms: u64,
    /// Seconds since the Unix epoch.
    pub until_unix: f64,
}

fn circuit(svc: &CompiledService, c: &CompiledCluster) -> CircuitExplanation {
    use std::sync::atomic::Ordering::Relaxed;
    let cfg = svc.service().cluster(&c.name);
    let st = &c.state;
    let now = super::resilience::now_ms();
    let wall = super::resilience::unix_now();
    CircuitExplanation {
        connection_pool: cfg.map(|c| c.connection_pool.clone()).unwrap_or_default(),
        outlier_detection: cfg.and_then(|c| c.outlier_detection.clone()),
        connections: st.connections.load(Relaxed),
        pending: st.pending.load(Relaxed),
        active_requests: st.active.load(Relaxed),
        active_retries: st.active_retries.load(Relaxed),
        pending_overflows: st.pending_overflow.load(Relaxed),
        request_overflows: st.rq_overflow.load(Relaxed),
        connection_overflows: st.cx_overflow.load(Relaxed),
        retry_overflows: st.retry_overflow.load(Relaxed),
        retries: st.retries.load(Relaxed),
        timeouts: st.timeouts.load(Relaxed),
        ejections_total: st.ejections.load(Relaxed),
        last_trip: st.last_trip(),
        ejected: c
            .ejected()
            .into_iter()
            .map(|(e, until)| {
                let remaining_ms = until.saturating_sub(now);
                EjectedEndpoint {
                    endpoint: e.addr.to_string(),
                    workload: e.peer.workload.clone(),
                    remaining_ms,
                    until_unix: wall + remaining_ms as f64 / 1000.0,
                }
            })
            .collect(),
    }
}

/// The matched rule.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleExplanation {
    pub index: usize,
    pub name: String,
    pub virtual_service: String,
    /// The `match[]` entry that held, by index and name.
    pub match_index: Option<usize>,
    pub match_name: Option<String>,
}

/// The faults this selection applied.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FaultExplanation {
    pub delay_ms: Option<u64>,
    pub abort: Option<Abort>,
}

/// Explains route selection for one request, endpoint pick included (without counting
/// it as in flight).
pub fn explain(
    svc: &CompiledService,
    port: u16,
    req: &RequestView<'_>,
    rng: &mut Rng,
) -> RouteExplanation {
    let sel = select(svc, port, req, rng);
    let mut out = RouteExplanation {
        service: svc.host().to_owned(),
        port,
        outcome: "no_route",
        route: sel.route.map(|m| RuleExplanation {
            index: m.index,
            name: m.route.name.clone(),
            virtual_service: m.route.virtual_service.clone(),
            match_index: m.match_index,
            match_name: m
                .match_index
                .and_then(|k| m.route.match_names.get(k))
                .filter(|n| !n.is_empty())
                .cloned(),
        }),
        cluster: None,
        subset: None,
        load_balancer: None,
        endpoint: None,
        endpoint_workload: None,
        fault: FaultExplanation {
            delay_ms: sel.delay.map(|d| d.as_millis() as u64),
            abort: sel.abort,
        },
        rewrite_path: sel.rewrite_path.clone(),
        rewrite_authority: sel.rewrite_authority.map(str::to_owned),
        redirect: None,
        redirect_code: None,
        direct_response_status: None,
        response_flags: sel.flags().to_string(),
        timeout_ms: None,
        retry: None,
        circuit: None,
        consistent_hash: None,
        mirrors: sel
            .route
            .map(|m| {
                m.route
                    .mirrors
                    .iter()
                    .filter_map(|&(c, p)| Some((svc.clusters.get(c)?.name.clone(), p)))
                    .collect()
            })
            .unwrap_or_default(),
        cors: sel
            .route
            .and_then(|m| m.route.cors.as_ref())
            .and_then(|c| c.verdict(req.method, req.headers)),
    };
    let port_cfg = svc.service().port(port);
    match sel.route {
        Some(m) => {
            let r = port_cfg.and_then(|p| p.routes.get(m.index));
            out.timeout_ms = r.and_then(|r| r.timeout_ms);
            out.retry = r.and_then(|r| r.retry.clone());
        }
        None => out.retry = port_cfg.and_then(|p| p.default_retry.clone()),
    }
    match &sel.action {
        Action::Forward { cluster, .. } => {
            out.outcome = if cluster.has_healthy() {
                "forward"
            } else {
                "no_healthy_upstream"
            };
            out.cluster = Some(cluster.name.clone());
            out.subset = cluster.subset.clone();
            out.load_balancer = serde_json::to_value(cluster.load_balancer)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            out.consistent_hash.clone_from(&cluster.hash_key);
            let hashed = cluster.hash_key.as_ref().and_then(|k| {
                let uri = match req.query {
                    Some(q) => format!("{}?{q}", req.path),
                    None => req.path.to_owned(),
                };
                let uri: hyper::Uri = uri.parse().ok()?;
                let client = std::net::IpAddr::from([127, 0, 0, 1]);
                let (h, _) = super::lb::request_hash(k, req.headers, &uri, client, rng);
                cluster.pick_hashed(h?)
            });
            if let Some(e) = hashed.or_else(|| cluster.pick(rng, &[])) {
                out.endpoint = Some(e.addr.to_string());
                out.endpoint_workload = Some(e.peer.workload.clone());
            }
            out.circuit = Some(circuit(svc, cluster));
        }
        Action::Redirect { location, code } => {
            out.outcome = "redirect";
            out.redirect = Some(location.clone());
            out.redirect_code = Some(*code);
        }
        Action::DirectResponse { status, .. } => {
            out.outcome = "direct_response";
            out.direct_response_status = Some(*status);
        }
        Action::NoRoute => out.outcome = "no_route",
        Action::NoCluster => out.outcome = "no_cluster",
    }
    if sel.abort.is_some() {
        out.outcome = "fault_abort";
    }
    if out
        .cors
        .is_some_and(|v| v.starts_with("preflight_answered"))
    {
        // Answered before faults and the route's action.
        out.outcome = "cors_preflight";
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use super::*;
    use crate::http::compile::tests::{reviews, route, subset, to};
    use hyper::header::{HeaderName, HeaderValue};
    use mesh_config::{
        Fault, FaultAbort, FaultDelay, HeaderMatch, Redirect, RequestMatch, Rewrite, RouteAction,
        StringMatch,
    };

    struct Req {
        method: &'static str,
        authority: &'static str,
        path: &'static str,
        query: Option<&'static str>,
        headers: HeaderMap,
    }

    fn req(path: &'static str) -> Req {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        Req {
            method: "GET",
            authority: "reviews:9080",
            path,
            query,
            headers: HeaderMap::new(),
        }
    }

    impl Req {
        fn header(mut self, k: &'static str, v: &'static str) -> Req {
            self.headers
                .append(HeaderName::from_static(k), HeaderValue::from_static(v));
            self
        }
        fn view(&self) -> RequestView<'_> {
            RequestView {
                method: self.method,
                scheme: "http",
                authority: self.authority,
                path: self.path,
                query: self.query,
                headers: &self.headers,
            }
        }
    }

    fn compile(routes: Vec<mesh_config::HttpRoute>) -> CompiledService {
        CompiledService::compile(&reviews(routes)).unwrap()
    }

    fn routed_to<'a>(s: &Selection<'a>) -> Option<&'a str> {
        match &s.action {
            Action::Forward { cluster, .. } => cluster.subset.as_deref(),
            _ => None,
        }
    }

    fn fwd(c: &str) -> RouteAction {
        RouteAction::Route(vec![to(&subset(c), 1)])
    }

    fn hdr(name: &str, v: Option<StringMatch>) -> HeaderMatch {
        HeaderMatch {
            name: name.into(),
            value: v,
        }
    }

    #[test]
    fn first_matching_route_wins_and_entries_or() {
        let jason = RequestMatch {
            headers: vec![hdr("end-user", Some(StringMatch::Exact("jason".into())))],
            ..Default::default()
        };
        let api = RequestMatch {
            uri: Some(StringMatch::Prefix("/api".into())),
            ..Default::default()
        };
        let svc = compile(vec![
            route("jason", vec![jason, api], fwd("v2")),
            route("rest", vec![], fwd("v1")),
        ]);
        let mut rng = Rng::with_seed(1);
        let s = select(
            &svc,
            9080,
            &req("/").header("end-user", "jason").view(),
            &mut rng,
        );
        assert_eq!(routed_to(&s), Some("v2"));
        assert_eq!(s.route.unwrap().match_index, Some(0));
        let s = select(&svc, 9080, &req("/api/x").view(), &mut rng);
        assert_eq!(routed_to(&s), Some("v2"));
        assert_eq!(s.route.unwrap().match_index, Some(1));
        let s = select(
            &svc,
            9080,
            &req("/").header("end-user", "bob").view(),
            &mut rng,
        );
        assert_eq!(routed_to(&s), Some("v1"));
        assert_eq!(s.route.unwrap().name(), "rest");
        assert_eq!(s.route.unwrap().match_index, None);
    }

    #[test]
    fn fields_and_and_no_match_is_404() {
        let m = RequestMatch {
            uri: Some(StringMatch::Exact("/login".into())),
            method: Some(StringMatch::Exact("POST".into())),
            authority: Some(StringMatch::Prefix("reviews".into())),
            scheme: Some(StringMatch::Exact("http".into())),
            ..Default::default()
        };
        let svc = compile(vec![route("login", vec![m], fwd("v3"))]);
        let mut rng = Rng::with_seed(1);
        let mut r = req("/login");
        assert!(matches!(
            select(&svc, 9080, &r.view(), &mut rng).action,
            Action::NoRoute
        ));
        r.method = "POST";
        assert_eq!(
            routed_to(&select(&svc, 9080, &r.view(), &mut rng)),
            Some("v3")
        );
        // The query string is not part of the path the uri matches.
        let mut r = req("/login?next=/x");
        r.method = "POST";
        assert_eq!(
            routed_to(&select(&svc, 9080, &r.view(), &mut rng)),
            Some("v3")
        );
        r.authority = "ratings";
        let s = select(&svc, 9080, &r.view(), &mut rng);
        assert!(matches!(s.action, Action::NoRoute));
        assert_eq!(s.flags(), Flags::NR);
        // An unknown port: no route either.
        assert!(matches!(
            select(&svc, 1234, &req("/").view(), &mut rng).action,
            Action::NoRoute
        ));
    }

    #[test]
    fn uri_case_regex_and_default_cluster() {
        let m = RequestMatch {
            uri: Some(StringMatch::Regex("/reviews/[0-9]+".into())),
            ignore_uri_case: true,
            ..Default::default()
        };
        let p = RequestMatch {
            uri: Some(StringMatch::Prefix("/Static".into())),
            ignore_uri_case: true,
            ..Default::default()
        };
        let svc = compile(vec![
            route("re", vec![m], fwd("v2")),
            route("st", vec![p], fwd("v3")),
        ]);
        let mut rng = Rng::with_seed(1);
        assert_eq!(
            routed_to(&select(&svc, 9080, &req("/REVIEWS/12").view(), &mut rng)),
            Some("v2")
        );
        assert!(matches!(
            select(&svc, 9080, &req("/reviews/12/x").view(), &mut rng).action,
            Action::NoRoute
        ));
        assert_eq!(
            routed_to(&select(&svc, 9080, &req("/static/a.css").view(), &mut rng)),
            Some("v3")
        );
        // No routes at all: the default cluster.
        let svc = compile(vec![]);
        let s = select(&svc, 9080, &req("/anything").view(), &mut rng);
        match s.action {
            Action::Forward { cluster, dest } => {
                assert_eq!(
                    cluster.name,
                    "outbound|9080||reviews.default.svc.cluster.local"
                );
                assert!(dest.is_none());
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn headers_presence_without_and_multi_values() {
        let m = RequestMatch {
            headers: vec![
                hdr("x-canary", None),
                hdr("x-tags", Some(StringMatch::Regex("a,b".into()))),
            ],
            without_headers: vec![hdr("x-skip", Some(StringMatch::Exact("yes".into())))],
            ..Default::default()
        };
        let svc = compile(vec![route("h", vec![m], fwd("v2"))]);
        let mut rng = Rng::with_seed(1);
        let base = || {
            req("/")
                .header("x-canary", "")
                .header("x-tags", "a")
                .header("x-tags", "b")
        };
        assert_eq!(
            routed_to(&select(&svc, 9080, &base().view(), &mut rng)),
            Some("v2")
        );
        // withoutHeaders: absent or not matching is fine, matching is not.
        assert_eq!(
            routed_to(&select(
                &svc,
                9080,
                &base().header("x-skip", "no").view(),
                &mut rng
            )),
            Some("v2")
        );
        assert!(matches!(
            select(&svc, 9080, &base().header("x-skip", "yes").view(), &mut rng).action,
            Action::NoRoute
        ));
        // Presence required.
        let r = req("/").header("x-tags", "a").header("x-tags", "b");
        assert!(matches!(
            select(&svc, 9080, &r.view(), &mut rng).action,
            Action::NoRoute
        ));
        // withoutHeaders with no value: the header must be absent.
        let m = RequestMatch {
            without_headers: vec![hdr("x-debug", None)],
            ..Default::default()
        };
        let svc = compile(vec![route("w", vec![m], fwd("v1"))]);
        assert_eq!(
            routed_to(&select(&svc, 9080, &req("/").view(), &mut rng)),
            Some("v1")
        );
        assert!(matches!(
            select(
                &svc,
                9080,
                &req("/").header("x-debug", "1").view(),
                &mut rng
            )
            .action,
            Action::NoRoute
        ));
    }

    #[test]
    fn query_params_are_decoded() {
        let m = RequestMatch {
            query_params: vec![
                hdr("user", Some(StringMatch::Exact("a b".into()))),
                hdr("debug", None),
                hdr("v", Some(StringMatch::Regex("[0-9]+".into()))),
            ],
            ..Default::default()
        };
        let svc = compile(vec![route("q", vec![m], fwd("v2"))]);
        let mut rng = Rng::with_seed(1);
        assert_eq!(
            routed_to(&select(
                &svc,
                9080,
                &req("/p?user=a%20b&debug&v=12").view(),
                &mut rng
            )),
            Some("v2")
        );
        assert!(matches!(
            select(&svc, 9080, &req("/p?user=a%20b&v=12").view(), &mut rng).action,
            Action::NoRoute
        ));
        // The first occurrence counts.
        assert!(matches!(
            select(
                &svc,
                9080,
                &req("/p?v=x&user=a%20b&debug&v=12").view(),
                &mut rng
            )
            .action,
            Action::NoRoute
        ));
        assert!(matches!(
            select(&svc, 9080, &req("/p").view(), &mut rng).action,
            Action::NoRoute
        ));
    }

    #[test]
    fn weights_follow_the_ratio_with_a_fixed_seed() {
        let svc = compile(vec![route(
            "split",
            vec![],
            RouteAction::Route(vec![to(&subset("v1"), 20), to(&subset("v2"), 80)]),
        )]);
        let mut rng = Rng::with_seed(42);
        let mut counts: HashMap<&str, u32> = HashMap::new();
        let r = req("/");
        for _ in 0..10_000 {
            let s = select(&svc, 9080, &r.view(), &mut rng);
            *counts.entry(routed_to(&s).unwrap()).or_default() += 1;
        }
        let v1 = counts["v1"];
        assert!((1800..2200).contains(&v1), "{counts:?}");
        assert_eq!(counts["v1"] + counts["v2"], 10_000);
        // Deterministic: the same seed, the same sequence.
        let picks = |seed| {
            let mut rng = Rng::with_seed(seed);
            (0..50)
                .map(|_| {
                    routed_to(&select(&svc, 9080, &r.view(), &mut rng))
                        .unwrap()
                        .to_owned()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(5), picks(5));
    }

    #[test]
    fn faults_follow_percentages() {
        let mut r = route("f", vec![], fwd("v1"));
        r.fault = Some(Fault {
            delay: Some(FaultDelay {
                fixed_delay_ms: 250,
                percentage: 100.0,
            }),
            abort: Some(FaultAbort {
                http_status: Some(418),
                grpc_status: None,
                percentage: 50.0,
            }),
        });
        let svc = compile(vec![r]);
        let mut rng = Rng::with_seed(11);
        let (mut aborted, n) = (0, 2000);
        for _ in 0..n {
            let s = select(&svc, 9080, &req("/").view(), &mut rng);
            assert_eq!(s.delay, Some(Duration::from_millis(250)));
            if let Some(a) = s.abort {
                assert_eq!(a.http_status, Some(418));
                assert_eq!(s.flags(), Flags::DI | Flags::FI);
                aborted += 1;
            }
        }
        assert!((900..1100).contains(&aborted), "{aborted}");
        let mut r = route("none", vec![], fwd("v1"));
        r.fault = Some(Fault {
            delay: Some(FaultDelay {
                fixed_delay_ms: 5,
                percentage: 0.0,
            }),
            abort: None,
        });
        let svc = compile(vec![r]);
        for _ in 0..100 {
            assert!(
                select(&svc, 9080, &req("/").view(), &mut rng)
                    .delay
                    .is_none()
            );
        }
    }

    #[test]
    fn rewrites() {
        let prefix = RequestMatch {
            uri: Some(StringMatch::Prefix("/old".into())),
            ..Default::default()
        };
        let exact = RequestMatch {
            uri: Some(StringMatch::Exact("/exact".into())),
            ..Default::default()
        };
        let mut r = route("rw", vec![prefix, exact], fwd("v1"));
        r.rewrite = Some(Rewrite {
            uri: Some("/new".into()),
            authority: Some("ratings:9080".into()),
            uri_regex: None,
        });
        let mut all = route("all", vec![], fwd("v2"));
        all.rewrite = Some(Rewrite {
            uri: Some("/v2/".into()),
            authority: None,
            uri_regex: None,
        });
        let svc = compile(vec![r, all]);
        let mut rng = Rng::with_seed(1);
        let s = select(&svc, 9080, &req("/old/a?x=1").view(), &mut rng);
        assert_eq!(s.rewrite_path.as_deref(), Some("/new/a?x=1"));
        assert_eq!(s.rewrite_authority, Some("ratings:9080"));
        let s = select(&svc, 9080, &req("/exact").view(), &mut rng);
        assert_eq!(s.rewrite_path.as_deref(), Some("/new"));
        // No uri condition: Istio's `prefix: /`, only the leading slash is replaced.
        let s = select(&svc, 9080, &req("/other").view(), &mut rng);
        assert_eq!(s.rewrite_path.as_deref(), Some("/v2/other"));
        assert_eq!(s.rewrite_authority, None);
    }

    #[test]
    fn regex_rewrites() {
        let mut r = route("rx", vec![], fwd("v1"));
        r.rewrite = Some(Rewrite {
            uri: None,
            authority: None,
            uri_regex: Some(mesh_config::RegexRewrite {
                pattern: "^/service/([^/]+)(/.*)$".into(),
                substitution: r"\2/instance/\1".into(),
            }),
        });
        let svc = compile(vec![r]);
        let mut rng = Rng::with_seed(1);
        let s = select(
            &svc,
            9080,
            &req("/service/foo/v1/api?q=/service/x/y").view(),
            &mut rng,
        );
        assert_eq!(
            s.rewrite_path.as_deref(),
            Some("/v1/api/instance/foo?q=/service/x/y"),
            "the query is neither matched nor rewritten"
        );
        let s = select(&svc, 9080, &req("/other").view(), &mut rng);
        assert_eq!(s.rewrite_path, None, "no match: the path goes as it came");
    }

    #[test]
    fn redirects_and_direct_responses() {
        let mut rd = Redirect {
            uri: Some("/v1/login".into()),
            authority: Some("auth.example.com".into()),
            port: Some(8443),
            scheme: Some("https".into()),
            code: 302,
        };
        let svc = compile(vec![route("rd", vec![], RouteAction::Redirect(rd.clone()))]);
        let mut rng = Rng::with_seed(1);
        match select(&svc, 9080, &req("/login?next=%2F").view(), &mut rng).action {
            Action::Redirect { location, code } => {
                assert_eq!(location, "https://auth.example.com:8443/v1/login?next=%2F");
                assert_eq!(code, 302);
            }
            a => panic!("{a:?}"),
        }
        rd = Redirect {
            uri: None,
            authority: None,
            port: Some(81),
            scheme: None,
            code: 301,
        };
        let svc = compile(vec![route("rd", vec![], RouteAction::Redirect(rd))]);
        match select(&svc, 9080, &req("/a").view(), &mut rng).action {
            Action::Redirect { location, .. } => assert_eq!(location, "http://reviews:81/a"),
            a => panic!("{a:?}"),
        }
        let svc = compile(vec![route(
            "dr",
            vec![],
            RouteAction::DirectResponse {
                status: 503,
                body: "down".into(),
            },
        )]);
        match select(&svc, 9080, &req("/").view(), &mut rng).action {
            Action::DirectResponse { status, body } => {
                assert_eq!(status, 503);
                assert_eq!(&body[..], b"down");
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn explanation_serializes() {
        let m = RequestMatch {
            name: "jason".into(),
            headers: vec![hdr("end-user", Some(StringMatch::Exact("jason".into())))],
            ..Default::default()
        };
        let svc = compile(vec![route("r1", vec![m], fwd("v2"))]);
        let mut rng = Rng::with_seed(1);
        let e = explain(
            &svc,
            9080,
            &req("/").header("end-user", "jason").view(),
            &mut rng,
        );
        assert_eq!(e.outcome, "forward");
        assert_eq!(e.subset.as_deref(), Some("v2"));
        assert_eq!(e.endpoint.as_deref(), Some("10.0.0.2:9080"));
        assert_eq!(e.endpoint_workload.as_deref(), Some("reviews-v2"));
        let r = e.route.as_ref().unwrap();
        assert_eq!((r.index, r.match_name.as_deref()), (0, Some("jason")));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["load_balancer"], "ROUND_ROBIN");
        assert_eq!(json["response_flags"], "-");
        let e = explain(&svc, 9080, &req("/").view(), &mut rng);
        assert_eq!(e.outcome, "no_route");
        assert_eq!(e.response_flags, "NR");
    }

    #[test]
    fn explanation_follows_the_hash_and_names_the_mirrors() {
        let all =
            mesh_config::cluster::cluster_name(9080, None, "reviews.default.svc.cluster.local");
        let mut r = route("all", vec![], RouteAction::Route(vec![to(&all, 1)]));
        r.mirrors = vec![mesh_config::Mirror {
            cluster: subset("v2"),
            percentage: 25.0,
        }];
        let mut raw = reviews(vec![r]);
        raw.clusters[0].consistent_hash = Some(mesh_config::HashKey::Header("x-user".into()));
        let svc = CompiledService::compile(&raw).unwrap();
        let want = svc.clusters[0]
            .pick_hashed(crate::http::lb::hash_key(b"alice"))
            .unwrap()
            .addr
            .to_string();
        for seed in 0..5 {
            let mut rng = Rng::with_seed(seed);
            let e = explain(
                &svc,
                9080,
                &req("/").header("x-user", "alice").view(),
                &mut rng,
            );
            assert_eq!(e.endpoint.as_deref(), Some(want.as_str()));
            let json = serde_json::to_value(&e).unwrap();
            assert_eq!(
                json["consistent_hash"],
                serde_json::json!({"header": "x-user"})
            );
            assert_eq!(json["mirrors"], serde_json::json!([[subset("v2"), 25.0]]));
        }
    }

    #[test]
    fn explanation_says_what_cors_does() {
        let mut r = route("all", vec![], fwd("v1"));
        r.cors = Some(mesh_config::CorsPolicy {
            allow_origins: vec![StringMatch::Exact("https://example.com".into())],
            ..Default::default()
        });
        let svc = compile(vec![r]);
        let mut rng = Rng::with_seed(1);
        let mut pre = req("/")
            .header("origin", "https://example.com")
            .header("access-control-request-method", "GET");
        pre.method = "OPTIONS";
        let e = explain(&svc, 9080, &pre.view(), &mut rng);
        assert_eq!(
            (e.outcome, e.cors),
            ("cors_preflight", Some("preflight_answered"))
        );
        let get = req("/").header("origin", "https://example.com");
        let e = explain(&svc, 9080, &get.view(), &mut rng);
        assert_eq!((e.outcome, e.cors), ("forward", Some("origin_allowed")));
        let other = req("/").header("origin", "https://other.example");
        let e = explain(&svc, 9080, &other.view(), &mut rng);
        assert_eq!(e.cors, Some("origin_not_allowed"));
        assert_eq!(explain(&svc, 9080, &req("/").view(), &mut rng).cors, None);
    }

    #[test]
    fn explanation_says_which_limit_tripped_and_who_is_ejected() {
        use crate::http::resilience::{Outcome, Overflow};
        let mut raw = reviews(vec![route("all", vec![], fwd("v1"))]);
        for c in &mut raw.clusters {
            c.connection_pool.max_pending_requests = Some(1);
            c.outlier_detection = Some(mesh_config::OutlierDetection {
                consecutive_5xx_errors: 1,
                max_ejection_percent: 100,
                ..Default::default()
            });
        }
        raw.ports[0].routes[0].timeout_ms = Some(500);
        let svc = CompiledService::compile(&raw).unwrap();
        let c = svc.cluster(&raw.clusters[1].name).unwrap();
        assert_eq!(c.subset.as_deref(), Some("v1"));
        c.state.overflowed(Overflow::Pending, 1);
        assert!(c.record_outcome(&c.endpoints[0], Outcome::Status(503)));
        let mut rng = Rng::with_seed(1);
        let e = explain(&svc, 9080, &req("/").view(), &mut rng);
        assert_eq!(
            e.outcome, "no_healthy_upstream",
            "its only endpoint is ejected"
        );
        assert_eq!(e.timeout_ms, Some(500));
        let circuit = e.circuit.unwrap();
        assert_eq!(circuit.connection_pool.max_pending_requests, Some(1));
        assert_eq!(circuit.pending_overflows, 1);
        assert_eq!(circuit.last_trip.unwrap().limit, "http1MaxPendingRequests");
        assert_eq!(circuit.ejections_total, 1);
        assert_eq!(circuit.ejected.len(), 1);
        let ej = &circuit.ejected[0];
        assert_eq!(
            (ej.endpoint.as_str(), ej.workload.as_str()),
            ("10.0.0.1:9080", "reviews-v1")
        );
        assert!(
            ej.remaining_ms > 29_000 && ej.remaining_ms <= 30_000,
            "{}",
            ej.remaining_ms
        );
    }
}
