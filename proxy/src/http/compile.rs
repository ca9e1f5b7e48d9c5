//! A [`mesh_config::Service`] made ready for requests: validated, every regex compiled
//! (RE2 syntax through the `regex` crate, anchored to the whole string), header edits
//! parsed into header names and values, route destinations resolved to cluster
//! indices, endpoints indexed with their load-balancing state, each cluster's mTLS
//! target and whether each endpoint takes it. Immutable once made;
//! shared as `Arc` by every worker thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize};

use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery};
use mesh_config::resource::SubstitutionPart;
use mesh_config::{
    ClusterTlsMode, Fault, HashKey, HeaderEdit, HeaderMatch, LoadBalancer, Protocol, Redirect,
    RequestMatch, Resource, RouteAction, Service, StringMatch, ValidationError,
};
use regex::{Regex, RegexBuilder};

use super::TlsTarget;
use super::cors::CompiledCors;
use super::lb::{HashRing, LbStates};
use super::metrics::{PeerLabels, ServiceLabels};
use super::resilience::{ClusterState, EndpointHealth, Limits, Outlier, RetryRule};

/// Bounds on what one regex may cost (compiled program; lazy DFA cache per thread).
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const REGEX_DFA_LIMIT: usize = 256 << 10;

/// A compiled `StringMatch`.
#[derive(Debug)]
pub(crate) enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Matcher {
    pub(crate) fn compile(m: &StringMatch, ignore_case: bool) -> Result<Matcher, String> {
        Ok(match m {
            StringMatch::Exact(s) => Matcher::Exact(s.clone()),
            StringMatch::Prefix(s) => Matcher::Prefix(s.clone()),
            StringMatch::Regex(re) => Matcher::Regex(
                RegexBuilder::new(&format!("^(?:{re})$"))
                    .case_insensitive(ignore_case)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_DFA_LIMIT)
                    .build()
                    .map_err(|e| format!("regex {re:?} does not compile: {e}"))?,
            ),
        })
    }

    /// Whether `v` matches; exact and prefix ignore ASCII case when `ignore_case`.
    pub(crate) fn matches(&self, v: &str, ignore_case: bool) -> bool {
        match self {
            Matcher::Exact(s) if ignore_case => v.eq_ignore_ascii_case(s),
            Matcher::Exact(s) => v == s,
            Matcher::Prefix(p) if ignore_case => v
                .as_bytes()
                .get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes())),
            Matcher::Prefix(p) => v.starts_with(p.as_str()),
            Matcher::Regex(re) => re.is_match(v),
        }
    }
}

/// A compiled `uriRegexRewrite`: the pattern unanchored, the substitution split into
/// literal text and group references.
#[derive(Debug)]
pub(crate) struct RegexRewriter {
    pattern: Regex,
    parts: Vec<SubstitutionPart>,
}

impl RegexRewriter {
    fn compile(pattern: &str, substitution: &str) -> Result<RegexRewriter, String> {
        let parts = mesh_config::resource::substitution_parts(substitution)?;
        let re = RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_DFA_LIMIT)
            .build()
            .map_err(|e| format!("rewrite regex {pattern:?} does not compile: {e}"))?;
        // `captures_len` counts the whole match as group 0.
        let max = mesh_config::resource::max_group(&parts);
        if max >= re.captures_len() {
            return Err(format!(
                "substitution {substitution:?} names group {max}, and {pattern:?} has {}",
                re.captures_len() - 1
            ));
        }
        Ok(RegexRewriter { pattern: re, parts })
    }

    /// `path` with every non-overlapping match replaced (a group that took no part in
    /// the match is empty); `None` when nothing matched.
    pub(crate) fn rewrite(&self, path: &str) -> Option<String> {
        let mut out = String::new();
        let (mut last, mut matched) = (0, false);
        for caps in self.pattern.captures_iter(path) {
            let Some(whole) = caps.get(0) else { continue };
            matched = true;
            out.push_str(path.get(last..whole.start()).unwrap_or_default());
            for p in &self.parts {
                match p {
                    SubstitutionPart::Text(t) => out.push_str(t),
                    SubstitutionPart::Group(g) => {
                        out.push_str(caps.get(*g).map_or("", |m| m.as_str()));
                    }
                }
            }
            last = whole.end();
        }
        if !matched {
            return None;
        }
        out.push_str(path.get(last..).unwrap_or_default());
        Some(out)
    }
}

/// Which request field a header condition reads: a header, or a pseudo-header.
#[derive(Debug)]
pub(crate) enum HeaderKey {
    Name(HeaderName),
    Authority,
    Method,
    Path,
    Scheme,
}

#[derive(Debug)]
pub(crate) struct HeaderCond {
    pub(crate) key: HeaderKey,
    /// `None`: presence.
    pub(crate) value: Option<Matcher>,
}

#[derive(Debug)]
pub(crate) struct QueryCond {
    pub(crate) name: String,
    pub(crate) value: Option<Matcher>,
}

/// One compiled `match[]` entry.
#[derive(Debug)]
pub(crate) struct CompiledMatch {
    pub(crate) uri: Option<Matcher>,
    pub(crate) ignore_uri_case: bool,
    pub(crate) scheme: Option<Matcher>,
    pub(crate) method: Option<Matcher>,
    pub(crate) authority: Option<Matcher>,
    pub(crate) headers: Vec<HeaderCond>,
    pub(crate) without_headers: Vec<HeaderCond>,
    pub(crate) query_params: Vec<QueryCond>,
}

/// `headers.request` / `headers.response`, parsed.
#[derive(Debug, Default)]
pub struct CompiledEdit {
    pub(crate) remove: Vec<HeaderName>,
    pub(crate) set: Vec<(HeaderName, HeaderValue)>,
    pub(crate) add: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledEdit {
    fn compile(e: &HeaderEdit) -> Result<CompiledEdit, String> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("bad header name {n:?}"))
        };
        let pair = |(n, v): &(String, String)| -> Result<(HeaderName, HeaderValue), String> {
            Ok((
                name(n)?,
                HeaderValue::from_str(v).map_err(|_| format!("bad value for header {n:?}"))?,
            ))
        };
        Ok(CompiledEdit {
            remove: e.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
            set: e.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: e.add.iter().map(pair).collect::<Result<_, _>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// One weighted destination.
#[derive(Debug)]
pub struct CompiledDest {
    /// Index into the Service's clusters.
    pub cluster: usize,
    pub weight: u64,
    pub(crate) request_headers: CompiledEdit,
    pub(crate) response_headers: CompiledEdit,
}

#[derive(Debug)]
pub(crate) enum CompiledAction {
    Route {
        dests: Vec<CompiledDest>,
        total_weight: u64,
    },
    Redirect(Redirect),
    DirectResponse {
        status: u16,
        body: Bytes,
    },
}

/// One compiled `http[]` route.
#[derive(Debug)]
pub(crate) struct CompiledRoute {
    pub(crate) name: String,
    pub(crate) virtual_service: String,
    /// Names of the match entries, for explanations.
    pub(crate) match_names: Vec<String>,
    pub(crate) matches: Vec<CompiledMatch>,
    pub(crate) action: CompiledAction,
    pub(crate) fault: Option<Fault>,
    pub(crate) request_headers: CompiledEdit,
    pub(crate) response_headers: CompiledEdit,
    pub(crate) rewrite_uri: Option<String>,
    pub(crate) rewrite_regex: Option<RegexRewriter>,
    pub(crate) rewrite_authority: Option<String>,
    /// `timeout`: until the response head, retries included.
    pub(crate) timeout: Option<std::time::Duration>,
    pub(crate) retry: Option<RetryRule>,
    /// `mirror` / `mirrors`: (cluster index, share of requests 0-100).
    pub(crate) mirrors: Vec<(usize, f64)>,
    pub(crate) cors: Option<CompiledCors>,
}

/// One Service port.
#[derive(Debug)]
pub struct CompiledPort {
    pub port: u16,
    pub protocol: Protocol,
    pub(crate) routes: Vec<CompiledRoute>,
    /// The port's default cluster, when the Service carries it.
    pub(crate) default_cluster: Option<usize>,
    /// The retry rule of requests no route takes.
    pub(crate) default_retry: Option<RetryRule>,
}

/// One endpoint, with its in-flight counter (kept across recompiles by [`LbStates`]).
#[derive(Debug)]
pub struct CompiledEndpoint {
    pub addr: SocketAddr,
    pub peer: Arc<PeerLabels>,
    /// Connections to it originate mTLS with the cluster's [`CompiledCluster::tls`]
    /// (`ClusterTls::mtls_to`: the cluster's mode, or auto mTLS for this endpoint).
    pub mtls: bool,
    pub(crate) in_flight: Arc<AtomicU32>,
    pub(crate) health: Arc<EndpointHealth>,
}

impl CompiledEndpoint {
    /// Requests in flight to this endpoint now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One cluster: where a route sends, and how it picks an endpoint.
#[derive(Debug)]
pub struct CompiledCluster {
    pub name: String,
    pub subset: Option<String>,
    pub port: u16,
    pub load_balancer: LoadBalancer,
    pub labels: Arc<ServiceLabels>,
    /// The Service port's protocol, given in a gateway's clusters (its upstream h2 or
    /// HTTP/1.1); `None` in a sidecar's, which use their port's.
    pub protocol: Option<Protocol>,
    /// Where mTLS connections go (SNI, expected server identities); `None` when the
    /// cluster's mode is `DISABLE`. Used for the endpoints whose `mtls` says so.
    pub tls: Option<TlsTarget>,
    /// [`TlsTarget::key`] of `tls` (0: none), computed once for the pool keys.
    pub(crate) tls_key: u64,
    pub endpoints: Vec<CompiledEndpoint>,
    /// Serving and not terminating: who gets new requests.
    pub(crate) preferred: Vec<usize>,
    /// Serving but terminating: used only when `preferred` is empty.
    pub(crate) fallback: Vec<usize>,
    pub(crate) rr: Arc<AtomicUsize>,
    pub limits: Limits,
    pub(crate) outlier: Option<Outlier>,
    pub(crate) state: Arc<ClusterState>,
    /// With `tcp.maxConnections`: the pool every worker uses for this cluster.
    pub(crate) shared_pools: Option<Arc<super::pool::Pools>>,
    /// `consistentHash`: what a request is hashed by, and the ring over the candidates.
    pub hash_key: Option<HashKey>,
    pub(crate) ring: Option<HashRing>,
}

/// A Service ready for requests. See the module docs.
#[derive(Debug)]
pub struct CompiledService {
    service: Service,
    pub(crate) ports: Vec<CompiledPort>,
    pub(crate) clusters: Vec<CompiledCluster>,
    /// Labels for requests that reach the Service but no cluster (NR).
    pub(crate) labels: Arc<ServiceLabels>,
}

impl CompiledService {
    /// Validates and compiles `svc`, with fresh load-balancing state.
    pub fn compile(svc: &Service) -> Result<CompiledService, ValidationError> {
        CompiledService::compile_in(svc, &LbStates::default())
    }

    /// Validates and compiles `svc`; endpoints (by cluster name and address) and
    /// round-robin cursors (by cluster name) still alive in `states` are taken over, so
    /// in-flight counts survive a config update. Keep one [`LbStates`] for the process.
    pub fn compile_in(
        svc: &Service,
        states: &LbStates,
    ) -> Result<CompiledService, ValidationError> {
        Resource::Service(svc.clone()).validate()?;
        let err = |what: String, why: String| ValidationError { what, why };
        let mut clusters = Vec::with_capacity(svc.clusters.len());
        for c in &svc.clusters {
            let outlier_policy = c.outlier_detection.as_ref().map(|od| format!("{od:?}"));
            let tls = (c.tls.mode != ClusterTlsMode::Disable).then(|| TlsTarget::for_cluster(c));
            let tls_key = tls.as_ref().map_or(0, TlsTarget::key);
            let mut endpoints = Vec::with_capacity(c.endpoints.len());
            let (mut preferred, mut fallback) = (Vec::new(), Vec::new());
            for (i, e) in c.endpoints.iter().enumerate() {
                let peer = match &e.peer {
                    Some(m) => PeerLabels::of_meta(m),
                    None => PeerLabels::unknown(),
                };
                endpoints.push(CompiledEndpoint {
                    addr: e.addr,
                    peer: Arc::new(peer),
                    mtls: tls.is_some() && c.tls.mtls_to(e),
                    in_flight: states.in_flight(&c.name, e.addr),
                    // Kept across updates of the same policy; a new policy (or none)
                    // starts afresh, as Envoy's new cluster would.
                    health: match &outlier_policy {
                        Some(fp) => states.health(&c.name, fp, e.addr),
                        None => Arc::default(),
                    },
                });
                if e.serving && !e.terminating {
                    preferred.push(i);
                } else if e.serving {
                    fallback.push(i);
                }
            }
            let limits = Limits::compile(&c.connection_pool);
            let state = states.cluster(&c.name);
            let addrs = || -> Vec<SocketAddr> { c.endpoints.iter().map(|e| e.addr).collect() };
            if let Some(old) = state.swap_limits(&limits) {
                let (scope, addrs) = (state.scope(&old), addrs());
                super::pool::retire_idle(|k| k.scope == scope && addrs.contains(&k.addr));
            }
            // New identities, SNI or mode: connections verified under the old ones are
            // not reused (new ones are keyed apart) and do not linger either.
            if let Some(old) = state.swap_tls(tls_key)
                && old != 0
            {
                let addrs = addrs();
                super::pool::retire_idle(|k| k.tls == old && addrs.contains(&k.addr));
            }
            let ring = c.consistent_hash.as_ref().map(|_| {
                let candidates = if preferred.is_empty() {
                    &fallback
                } else {
                    &preferred
                };
                HashRing::new(&endpoints, candidates)
            });
            clusters.push(CompiledCluster {
                hash_key: c.consistent_hash.clone(),
                ring,
                name: c.name.clone(),
                subset: c.subset.clone(),
                port: c.port,
                load_balancer: c.load_balancer,
                labels: Arc::new(ServiceLabels::new(
                    &c.host,
                    &c.service_name,
                    &c.service_namespace,
                )),
                protocol: c.protocol,
                tls,
                tls_key,
                endpoints,
                preferred,
                fallback,
                rr: states.cursor(&c.name),
                limits,
                outlier: c.outlier_detection.as_ref().map(Outlier::compile),
                state,
                shared_pools: c
                    .connection_pool
                    .max_connections
                    .map(|_| states.shared_pools(&c.name)),
            });
        }
        states.sweep();
        let cluster_index = |name: &str| svc.clusters.iter().position(|c| c.name == name);
        let mut ports = Vec::with_capacity(svc.ports.len());
        for p in &svc.ports {
            let mut routes = Vec::with_capacity(p.routes.len());
            for (i, r) in p.routes.iter().enumerate() {
                let what = || {
                    format!(
                        "service {} port {}, route {i} ({}, {})",
                        svc.host, p.port, r.virtual_service, r.name
                    )
                };
                let action = match &r.action {
                    RouteAction::Route(dests) => {
                        let mut out = Vec::with_capacity(dests.len());
                        for d in dests {
                            let cluster = cluster_index(&d.cluster).ok_or_else(|| {
                                err(what(), format!("unknown cluster {}", d.cluster))
                            })?;
                            out.push(CompiledDest {
                                cluster,
                                weight: u64::from(d.weight),
                                request_headers: CompiledEdit::compile(&d.request_headers)
                                    .map_err(|w| err(what(), w))?,
                                response_headers: CompiledEdit::compile(&d.response_headers)
                                    .map_err(|w| err(what(), w))?,
                            });
                        }
                        let total_weight = out.iter().map(|d| d.weight).sum();
                        CompiledAction::Route {
                            dests: out,
                            total_weight,
                        }
                    }
                    RouteAction::Redirect(rd) => {
                        if let Some(a) = &rd.authority {
                            Authority::try_from(a.as_str()).map_err(|_| {
                                err(what(), format!("redirect authority {a:?} is not valid"))
                            })?;
                        }
                        if let Some(u) = &rd.uri {
                            check_path(u).map_err(|w| err(what(), w))?;
                        }
                        if let Some(s) = &rd.scheme
                            && (s.is_empty()
                                || !s.bytes().all(|b| {
                                    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
                                }))
                        {
                            return Err(err(what(), format!("redirect scheme {s:?} is not valid")));
                        }
                        CompiledAction::Redirect(rd.clone())
                    }
                    RouteAction::DirectResponse { status, body } => {
                        CompiledAction::DirectResponse {
                            status: *status,
                            body: Bytes::from(body.clone()),
                        }
                    }
                };
                let mut matches = Vec::with_capacity(r.matches.len());
                for m in &r.matches {
                    matches.push(compile_match(m).map_err(|w| err(what(), w))?);
                }
                let (mut rewrite_uri, mut rewrite_regex, mut rewrite_authority) =
                    (None, None, None);
                if let Some(rw) = &r.rewrite {
                    if let Some(u) = &rw.uri {
                        check_path(u).map_err(|w| err(what(), w))?;
                        rewrite_uri = Some(u.clone());
                    }
                    if let Some(rx) = &rw.uri_regex {
                        rewrite_regex = Some(
                            RegexRewriter::compile(&rx.pattern, &rx.substitution)
                                .map_err(|w| err(what(), w))?,
                        );
                    }
                    if let Some(a) = &rw.authority {
                        Authority::try_from(a.as_str()).map_err(|_| {
                            err(what(), format!("rewrite authority {a:?} is not valid"))
                        })?;
                        rewrite_authority = Some(a.clone());
                    }
                }
                let mut mirrors = Vec::with_capacity(r.mirrors.len());
                for m in &r.mirrors {
                    let cluster = cluster_index(&m.cluster).ok_or_else(|| {
                        err(what(), format!("unknown mirror cluster {}", m.cluster))
                    })?;
                    mirrors.push((cluster, m.percentage));
                }
                routes.push(CompiledRoute {
                    name: r.name.clone(),
                    virtual_service: r.virtual_service.clone(),
                    match_names: r.matches.iter().map(|m| m.name.clone()).collect(),
                    matches,
                    action,
                    fault: r.fault.clone(),
                    request_headers: CompiledEdit::compile(&r.request_headers)
                        .map_err(|w| err(what(), w))?,
                    response_headers: CompiledEdit::compile(&r.response_headers)
                        .map_err(|w| err(what(), w))?,
                    rewrite_uri,
                    rewrite_regex,
                    rewrite_authority,
                    timeout: r.timeout_ms.map(std::time::Duration::from_millis),
                    retry: r.retry.as_ref().map(RetryRule::compile),
                    mirrors,
                    cors: r
                        .cors
                        .as_ref()
                        .map(CompiledCors::compile)
                        .transpose()
                        .map_err(|w| err(what(), w))?,
                });
            }
            ports.push(CompiledPort {
                port: p.port,
                protocol: p.protocol,
                routes,
                default_cluster: cluster_index(&svc.default_cluster(p.port)),
                default_retry: p.default_retry.as_ref().map(RetryRule::compile),
            });
        }
        Ok(CompiledService {
            labels: Arc::new(ServiceLabels::new(&svc.host, &svc.name, &svc.namespace)),
            service: svc.clone(),
            ports,
            clusters,
        })
    }

    /// What it was compiled from (for `/config_dump`).
    pub fn service(&self) -> &Service {
        &self.service
    }

    pub fn host(&self) -> &str {
        &self.service.host
    }

    pub fn port(&self, port: u16) -> Option<&CompiledPort> {
        self.ports.iter().find(|p| p.port == port)
    }

    pub fn cluster(&self, name: &str) -> Option<&CompiledCluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Whether a request naming `host` (normalised: lower case, no port, no trailing
    /// dot) is for this Service.
    pub fn serves_host(&self, host: &str) -> bool {
        self.service.domains.iter().any(|d| d == host)
            || self.service.host.eq_ignore_ascii_case(host)
    }
}

fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("uri {p:?} does not start with /"));
    }
    PathAndQuery::try_from(p).map_err(|_| format!("uri {p:?} is not a valid path"))?;
    Ok(())
}

fn compile_match(m: &RequestMatch) -> Result<CompiledMatch, String> {
    let field = |name: &str, v: &Option<StringMatch>, ic: bool| {
        v.as_ref()
            .map(|v| Matcher::compile(v, ic))
            .transpose()
            .map_err(|w| format!("match {name}: {w}"))
    };
    let header = |h: &HeaderMatch| -> Result<HeaderCond, String> {
        let key = match h.name.as_str() {
            ":authority" | "host" => HeaderKey::Authority,
            ":method" => HeaderKey::Method,
            ":path" => HeaderKey::Path,
            ":scheme" => HeaderKey::Scheme,
            n => HeaderKey::Name(
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("bad header name {n:?}"))?,
            ),
        };
        Ok(HeaderCond {
            key,
            value: field(&h.name, &h.value, false)?,
        })
    };
    Ok(CompiledMatch {
        uri: field("uri", &m.uri, m.ignore_uri_case)?,
        ignore_uri_case: m.ignore_uri_case,
        scheme: field("scheme", &m.scheme, false)?,
        method: field("method", &m.method, false)?,
        authority: field("authority", &m.authority, false)?,
        headers: m.headers.iter().map(header).collect::<Result<_, _>>()?,
        without_headers: m
            .without_headers
            .iter()
            .map(header)
            .collect::<Result<_, _>>()?,
        query_params: m
            .query_params
            .iter()
            .map(|q| {
                Ok(QueryCond {
                    name: q.name.clone(),
                    value: field(&q.name, &q.value, false)?,
                })
            })
            .collect::<Result<_, String>>()?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mesh_config::{
        Cluster, Endpoint, HttpRoute, PeerMeta, Rewrite, ServicePort, WeightedCluster,
    };

    pub(crate) fn peer(version: &str) -> PeerMeta {
        PeerMeta {
            workload: format!("reviews-{version}"),
            namespace: "default".into(),
            canonical_service: "reviews".into(),
            canonical_revision: version.into(),
            app: "reviews".into(),
            version: version.into(),
            service_account: "reviews".into(),
            sidecar: true,
        }
    }

    pub(crate) fn cluster(subset: Option<&str>, addrs: &[&str]) -> Cluster {
        let host = "reviews.default.svc.cluster.local";
        Cluster {
            name: mesh_config::cluster::cluster_name(9080, subset, host),
            host: host.into(),
            service_name: "reviews".into(),
            service_namespace: "default".into(),
            port: 9080,
            subset: subset.map(str::to_owned),
            load_balancer: LoadBalancer::RoundRobin,
            consistent_hash: None,
            endpoints: addrs
                .iter()
                .map(|a| Endpoint {
                    addr: a.parse().unwrap(),
                    serving: true,
                    terminating: false,
                    mtls: false,
                    peer: subset.map(peer),
                })
                .collect(),
            connection_pool: Default::default(),
            outlier_detection: None,
            tls: Default::default(),
            protocol: None,
        }
    }

    pub(crate) fn route(name: &str, matches: Vec<RequestMatch>, action: RouteAction) -> HttpRoute {
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

    pub(crate) fn to(cluster: &str, weight: u32) -> WeightedCluster {
        WeightedCluster {
            cluster: cluster.into(),
            weight,
            request_headers: HeaderEdit::default(),
            response_headers: HeaderEdit::default(),
        }
    }

    /// reviews on 9080 with subsets v1, v2, v3 (one endpoint each) and the default
    /// cluster (all three), plus `routes`.
    pub(crate) fn reviews(routes: Vec<HttpRoute>) -> Service {
        Service {
            host: "reviews.default.svc.cluster.local".into(),
            name: "reviews".into(),
            namespace: "default".into(),
            addresses: vec!["10.96.0.12".parse().unwrap()],
            ports: vec![ServicePort {
                port: 9080,
                name: "http".into(),
                protocol: Protocol::Http,
                routes,
                default_retry: None,
                tcp_route: None,
            }],
            domains: vec![
                "reviews.default.svc.cluster.local".into(),
                "reviews.default.svc".into(),
                "reviews.default".into(),
                "reviews".into(),
                "10.96.0.12".into(),
            ],
            clusters: vec![
                cluster(None, &["10.0.0.1:9080", "10.0.0.2:9080", "10.0.0.3:9080"]),
                cluster(Some("v1"), &["10.0.0.1:9080"]),
                cluster(Some("v2"), &["10.0.0.2:9080"]),
                cluster(Some("v3"), &["10.0.0.3:9080"]),
            ],
        }
    }

    pub(crate) fn subset(s: &str) -> String {
        mesh_config::cluster::cluster_name(9080, Some(s), "reviews.default.svc.cluster.local")
    }

    /// A `tcp[]` route naming a cluster the Service lacks, or with a weight of 0, is
    /// refused: the config is NACKed and the last good one kept.
    #[test]
    fn bad_tcp_routes_are_refused() {
        use mesh_config::{TcpCluster, TcpRoute};
        let mut svc = reviews(vec![]);
        let route = |cluster: String, weight| TcpRoute {
            virtual_service: "default/reviews".into(),
            rule: 0,
            clusters: vec![TcpCluster { cluster, weight }],
        };
        svc.ports[0].tcp_route = Some(route(subset("v1"), 100));
        assert!(CompiledService::compile(&svc).is_ok());
        svc.ports[0].tcp_route = Some(route(subset("v9"), 100));
        let e = CompiledService::compile(&svc).err().unwrap().to_string();
        assert!(
            e.contains("tcp route 0 of default/reviews") && e.contains("unknown cluster"),
            "{e}"
        );
        svc.ports[0].tcp_route = Some(route(subset("v1"), 0));
        let e = CompiledService::compile(&svc).err().unwrap().to_string();
        assert!(e.contains("weight 0"), "{e}");
    }

    #[test]
    fn compiles_and_indexes() {
        let svc = reviews(vec![route(
            "r",
            vec![],
            RouteAction::Route(vec![to(&subset("v1"), 1)]),
        )]);
        let c = CompiledService::compile(&svc).unwrap();
        assert_eq!(c.port(9080).unwrap().routes.len(), 1);
        assert_eq!(c.port(9080).unwrap().default_cluster, Some(0));
        assert_eq!(c.cluster(&subset("v2")).unwrap().endpoints.len(), 1);
        assert!(c.serves_host("reviews"));
        assert!(!c.serves_host("ratings"));
    }

    #[test]
    fn cluster_tls_compiles_per_endpoint() {
        use mesh_config::{ClusterTls, ClusterTlsMode};
        let mut svc = reviews(vec![]);
        // v1: auto mTLS, its endpoint labelled for it; v2: auto, not labelled;
        // v3: DISABLE although the endpoint would take it.
        svc.clusters[1].endpoints[0].mtls = true;
        svc.clusters[1].tls.identities =
            vec!["spiffe://cluster.local/ns/default/sa/reviews".into()];
        svc.clusters[3].endpoints[0].mtls = true;
        svc.clusters[3].tls = ClusterTls {
            mode: ClusterTlsMode::Disable,
            ..ClusterTls::default()
        };
        let c = CompiledService::compile(&svc).unwrap();
        let v1 = c.cluster(&subset("v1")).unwrap();
        let t = v1.tls.as_ref().unwrap();
        assert_eq!(
            t.sni,
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        );
        assert_eq!(
            t.identities,
            ["spiffe://cluster.local/ns/default/sa/reviews"]
        );
        assert_eq!(v1.tls_key, t.key());
        assert_ne!(v1.tls_key, 0);
        assert!(v1.endpoints[0].mtls);
        let v2 = c.cluster(&subset("v2")).unwrap();
        assert!(v2.tls.is_some());
        assert!(!v2.endpoints[0].mtls);
        assert_ne!(v2.tls_key, v1.tls_key, "another SNI: another pool");
        let v3 = c.cluster(&subset("v3")).unwrap();
        assert!(v3.tls.is_none());
        assert_eq!(v3.tls_key, 0);
        assert!(!v3.endpoints[0].mtls);
    }

    #[test]
    fn bad_regex_is_refused_with_where() {
        let m = RequestMatch {
            uri: Some(StringMatch::Regex("/(unclosed".into())),
            ..Default::default()
        };
        let svc = reviews(vec![route(
            "bad",
            vec![m],
            RouteAction::Route(vec![to(&subset("v1"), 1)]),
        )]);
        let e = CompiledService::compile(&svc).unwrap_err();
        assert!(e.what.contains("route 0"), "{e}");
        assert!(e.why.contains("regex"), "{e}");
    }

    #[test]
    fn structural_validation_runs() {
        let svc = reviews(vec![route(
            "zero",
            vec![],
            RouteAction::Route(vec![to(&subset("v1"), 0)]),
        )]);
        let e = CompiledService::compile(&svc).unwrap_err();
        assert!(e.why.contains("weight 0"), "{e}");
        let mut r = route("rw", vec![], RouteAction::Route(vec![to(&subset("v1"), 1)]));
        r.rewrite = Some(Rewrite {
            uri: Some("no-slash".into()),
            authority: None,
            uri_regex: None,
        });
        let e = CompiledService::compile(&reviews(vec![r])).unwrap_err();
        assert!(e.why.contains("does not start with /"), "{e}");
        let mut r = route(
            "hdr",
            vec![],
            RouteAction::Route(vec![to(&subset("v1"), 1)]),
        );
        r.request_headers.set = vec![("bad header".into(), "x".into())];
        let e = CompiledService::compile(&reviews(vec![r])).unwrap_err();
        assert!(e.why.contains("bad header name"), "{e}");
    }

    #[test]
    fn regex_rewriter() {
        let rw = RegexRewriter::compile("/v[0-9]+/", "/latest/").unwrap();
        assert_eq!(
            rw.rewrite("/v1/a/v22/b").as_deref(),
            Some("/latest/a/latest/b"),
            "every match is replaced, not only the first"
        );
        assert_eq!(rw.rewrite("/a/b"), None);
        let rw = RegexRewriter::compile("^/(a)|(b)$", r"[\1\2]\\\0").unwrap();
        assert_eq!(
            rw.rewrite("/a/b").as_deref(),
            Some(r"[a]\/a/[b]\b"),
            "a group that did not take part is empty; \\\\ is one backslash"
        );
        let e = RegexRewriter::compile("/(x)", r"\2").unwrap_err();
        assert!(e.contains("names group 2"), "{e}");
        let e = RegexRewriter::compile("/(x", "/").unwrap_err();
        assert!(e.contains("does not compile"), "{e}");
        let e = RegexRewriter::compile("/x", r"\q").unwrap_err();
        assert!(e.contains(r"\q is not"), "{e}");
        assert_eq!(
            RegexRewriter::compile("/", r"a\1").map(|_| ()).unwrap_err(),
            r#"substitution "a\\1" names group 1, and "/" has 0"#
        );
    }

    #[test]
    fn matchers() {
        let re = Matcher::compile(&StringMatch::Regex("/a+".into()), false).unwrap();
        assert!(re.matches("/aaa", false));
        assert!(!re.matches("/aaab", false), "anchored at the end");
        assert!(!re.matches("x/aaa", false), "anchored at the start");
        let re = Matcher::compile(&StringMatch::Regex("/A|/b".into()), true).unwrap();
        assert!(re.matches("/a", true), "alternation inside the anchors");
        assert!(!re.matches("/ax", true));
        let p = Matcher::compile(&StringMatch::Prefix("/Api".into()), false).unwrap();
        assert!(p.matches("/Api/x", false));
        assert!(!p.matches("/api/x", false));
        assert!(p.matches("/api/x", true));
        let e = Matcher::compile(&StringMatch::Exact("/Login".into()), false).unwrap();
        assert!(e.matches("/login", true));
        assert!(!e.matches("/login", false));
    }
}
