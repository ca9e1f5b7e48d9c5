//! VirtualServices → the HTTP routes of one Service port, for one client proxy.
//!
//! Build time ([`PreparedVs::new`]) checks what does not depend on the client: hosts are
//! resolved (a name without a dot is a Service in the VirtualService's namespace; with a
//! dot it is taken as written, as Istio does), each `http[]` rule is converted, and a rule
//! with a bad regex, duration, status, percentage or redirect code is skipped with a
//! [`Diagnostic`]; a destination whose host is not a Service, whose port the Service
//! lacks, or whose subset no DestinationRule defines is dropped with one, and a rule left
//! without destinations is skipped with one.
//!
//! Per client and port ([`port_routes`]), as Istio's `BuildHTTPRoutesForVirtualService`:
//! `http[]` in order; a `match[]` entry is kept when its `port` is unset or this port,
//! and, when it names `gateways`, they include `mesh` (for a gateway: that Gateway),
//! else when its `sourceLabels` are the client's labels and its `sourceNamespace` (if
//! set) the client's namespace; a rule whose entries were all dropped is dropped;
//! translation stops after a catch-all (no
//! `match`, or an entry matching every request). A destination without a port goes to
//! the destination Service's only port, else to the request's port; one whose subset the
//! client's DestinationRule lacks is dropped. A single destination gets all the traffic
//! (its weight ignored); among several, weight-0 ones get none and are left out, and a
//! total of 0 is invalid (Istio rejects it).
//!
//! A rule's `timeout` and `retries` (see `resilience`) apply to its forwarded requests:
//! `timeout` unset or `0s` is none; no `retries` is Istio's default policy (from the
//! compatibility version), `attempts: 0` none at all. A redirect or direct response gets
//! neither (as in Istio, they are route-action fields). A value Istio's validation
//! refuses (negative attempts, a duration under 1 ms or malformed) skips the rule; an
//! unknown `retryOn` condition, or retry fields next to `attempts: 0`, are reported and
//! the rule kept.
//!
//! `mirror` (+ `mirrorPercentage`, or the deprecated `mirrorPercent`) and `mirrors[]`
//! ([`prepare_mirrors`]): each destination resolved as a `route[]` one, a bad one
//! reported and left out; both fields, or a share outside 0-100, skip the rule; on a
//! rule that does not forward they are reported and ignored. Per port they resolve as
//! a lone destination does ([`weighted_clusters`]).
//!
//! A rule shape Istio's validation refuses is skipped with a diagnostic
//! ([`check_conflicts`]): a `redirect` or `directResponse` beside `route`, `fault` or
//! `rewrite`, a redirect or rewrite that sets nothing, a redirect scheme other than
//! `http`/`https`.
//!
//! `rewrite.uriRegexRewrite` is checked as Istio's validation does (both fields, a regex
//! that compiles, groups it has, not beside `rewrite.uri`), else its rule is skipped.
//!
//! `corsPolicy` ([`prepare_cors`]) goes with its rule, whatever the rule's action; what
//! Istio's validation refuses in it skips the rule.
//!
//! Reported and ignored, the rule kept: a header condition on a JWT claim
//! (`@request.auth.claims...`, which needs the unsupported RequestAuthentication) never
//! holds, so its entry is left out (as `withoutHeaders`, it always holds: the condition
//! is dropped). A header name that is
//! not a token (nor `:authority`, `:method`, `:path`, `:scheme`) skips the rule.
//! Parsed and ignored, no diagnostic: `retries.retryRemoteLocalities`,
//! `match[].statPrefix` (stat names), an `authority` rewrite in a weighted
//! destination's headers (route-level and single-destination ones are the rewrite's
//! authority). `delegate` and `directResponse.body.bytes` are reported and their rule
//! skipped.
//!
//! `tcp[]` ([`tcp_port_route`]) gives a sidecar's L4 connections to a `tcp` (or sniffed,
//! not HTTP) port: every condition of its `match[]` entries is known at config time
//! (`port`, `sourceLabels`, `sourceNamespace`, `gateways`), so the first rule that
//! applies to the client and port is the port's one route, its destinations resolved as
//! an HTTP rule's; `destinationSubnets` and `sourceSubnet` are reported and their entry
//! left out. A gateway's `TCP` server takes the same route (see `gateways`), its entries
//! selected by the Gateway instead of the client's source.
//!
//! The same preparation serves gateways ([`Side::Gateways`], see `gateways`): a
//! VirtualService whose `gateways` name a Gateway is prepared once more for them, with
//! every `match[]` entry kept (the gateways it names resolved as Istio does,
//! [`resolve_gateway_name`]), and its `tls[]` entries (SNI routes) prepared too; for
//! sidecars `tls[]` is ignored.

use std::collections::{BTreeSet, HashMap};

use mesh_config::resilience::RetryPolicy;
use mesh_config::route::{
    CorsPolicy, Fault, FaultAbort, FaultDelay, HeaderEdit, HeaderMatch, HttpRoute, Mirror,
    Redirect, RequestMatch, Rewrite, RouteAction, StringMatch, WeightedCluster,
};
use mesh_config::{Protocol, TcpCluster, TcpRoute, cluster::cluster_name};

use super::Diagnostic;
use super::hosts::{HostPattern, Visibility, labels_match, resolve_config_host};
use super::policy::DrIndex;
use super::resilience;
use super::services::SvcRec;
use crate::istio::virtual_service::{
    self, CorsPolicy as ICorsPolicy, FaultAbort as IFaultAbort, FaultDelay as IFaultDelay,
    GrpcStatus, HeaderOperations, HttpMatchRequest, HttpRoute as IHttpRoute,
    StringMatch as IStringMatch, VirtualService,
};
use crate::istio::{Labels, Meta};

/// The `gateways` keyword for sidecars.
pub const MESH: &str = "mesh";

/// Which proxies a VirtualService is prepared for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Sidecars: VirtualServices without `gateways` or naming `mesh`; `match[]` entries
    /// for gateways only are left out.
    Mesh,
    /// Gateways: VirtualServices whose `gateways` name a Gateway; every entry is kept,
    /// with the gateways it names, and `tls[]` is prepared too.
    Gateways,
}

/// A VirtualService that applies to sidecars (or gateways), checked.
#[derive(Debug, Clone)]
pub struct PreparedVs {
    pub meta: Meta,
    /// `namespace/name`.
    pub id: String,
    /// `(index in spec.hosts, resolved host)`, without duplicates.
    pub hosts: Vec<(usize, HostPattern)>,
    pub export: Visibility,
    pub rules: Vec<Rule>,
    /// [`Side::Gateways`]: `(index in spec.gateways, <namespace>/<name>)` of the Gateways
    /// it binds to ([`resolve_gateway_name`]; `mesh` left out).
    pub gateways: Vec<(usize, String)>,
    /// [`Side::Gateways`]: the usable `tls[]` entries.
    pub tls: Vec<TlsRule>,
    /// The usable `tcp[]` rules, in order (for sidecars, without the entries for
    /// gateways only).
    pub tcp: Vec<TcpRule>,
}

/// One usable `tcp[]` rule (sidecars' L4 connections).
#[derive(Debug, Clone)]
pub struct TcpRule {
    /// Index in `spec.tcp`.
    pub index: usize,
    /// `None`: no `match` (every connection). Each entry matches every connection its
    /// config-time conditions (port, source, gateways) let through.
    pub matches: Option<Vec<Entry>>,
    pub dests: Vec<Dest>,
    /// `route[]` had one entry: it gets all the connections.
    pub single: bool,
}

/// One usable `tls[]` entry (for gateways' `PASSTHROUGH` servers).
#[derive(Debug, Clone)]
pub struct TlsRule {
    pub matches: Vec<TlsEntry>,
    pub dests: Vec<Dest>,
    /// `route[]` had one entry: it gets all the connections.
    pub single: bool,
}

/// One `tls[].match[]` entry.
#[derive(Debug, Clone)]
pub struct TlsEntry {
    /// Lower case, patterns as VirtualService hosts (`*`, `*.example.com`, a name).
    pub sni_hosts: Vec<String>,
    pub port: Option<u16>,
    /// `<namespace>/<name>` ([`resolve_gateway_name`]); empty: every bound gateway.
    pub gateways: Vec<String>,
}

/// A Gateway name as written in a VirtualService in `vs_namespace` (`spec.gateways`,
/// `match[].gateways`), as `<namespace>/<name>`, with Istio's rules: `mesh` stays
/// itself; `name` is in the VirtualService's namespace; `./name` too; `ns/name` as
/// written; the legacy `name.ns.svc.<domain>` (any name with a dot and no `/`) is
/// `ns/name`.
pub fn resolve_gateway_name(name: &str, vs_namespace: &str) -> String {
    let name = name.trim();
    if name == MESH {
        return MESH.to_owned();
    }
    match name.split_once('/') {
        Some((".", rest)) => format!("{vs_namespace}/{rest}"),
        Some(_) => name.to_owned(),
        None => match name.split_once('.') {
            None => format!("{vs_namespace}/{name}"),
            Some((short, rest)) => {
                let ns = rest.split('.').next().unwrap_or(rest);
                format!("{ns}/{short}")
            }
        },
    }
}

/// One usable `http[]` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Index in `spec.http`.
    pub index: usize,
    pub name: String,
    /// `None`: no `match` (every request).
    pub matches: Option<Vec<Entry>>,
    pub action: Action,
    pub fault: Option<Fault>,
    pub request_headers: HeaderEdit,
    pub response_headers: HeaderEdit,
    pub rewrite: Option<Rewrite>,
    /// `timeout`; `None`: no timeout.
    pub timeout_ms: Option<u64>,
    /// `retries` (or the default policy); `None`: no retries.
    pub retry: Option<RetryPolicy>,
    /// `mirror` / `mirrors` (forwarding rules only).
    pub mirrors: Vec<MirrorDest>,
    pub cors: Option<CorsPolicy>,
}

/// One mirror of a rule: where copies go, and the share of requests copied.
#[derive(Debug, Clone)]
pub struct MirrorDest {
    pub dest: Dest,
    pub percentage: f64,
}

/// One `match[]` entry that may apply to the proxies prepared for.
#[derive(Debug, Clone)]
pub struct Entry {
    pub request: RequestMatch,
    pub port: Option<u16>,
    /// The entry's `gateways`, resolved ([`resolve_gateway_name`]; `mesh` as is): when
    /// set, only those proxies take it and source conditions are not looked at.
    pub gateways: Vec<String>,
    pub source_labels: Labels,
    pub source_namespace: Option<String>,
    /// Matches every request (at config time).
    pub catch_all: bool,
}

#[derive(Debug, Clone)]
pub enum Action {
    Route {
        dests: Vec<Dest>,
        /// `route[]` had one entry: it gets all the traffic.
        single: bool,
    },
    Redirect(RedirectRule),
    Direct {
        status: u16,
        body: String,
    },
}

#[derive(Debug, Clone)]
pub struct Dest {
    /// `spec.http[i].route[j]`.
    pub field: String,
    /// Index of the destination Service.
    pub svc: usize,
    pub subset: Option<String>,
    pub port: Option<u16>,
    pub weight: u32,
    pub request_headers: HeaderEdit,
    pub response_headers: HeaderEdit,
}

#[derive(Debug, Clone)]
pub struct RedirectRule {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: RedirectPort,
    pub scheme: Option<String>,
    pub code: u16,
}

#[derive(Debug, Clone, Copy)]
pub enum RedirectPort {
    /// The scheme's default (no port in the `Location`).
    Default,
    Fixed(u16),
    /// `derivePort: FROM_REQUEST_PORT`: the Service port the request came to.
    FromRequest,
}

/// What the build needs to resolve destinations.
pub struct Catalog<'a> {
    pub services: &'a [SvcRec],
    pub by_fqdn: &'a HashMap<String, usize>,
    pub drs: &'a DrIndex,
    pub domain: &'a str,
    /// For rules without `retries`.
    pub default_retry: &'a RetryPolicy,
}

/// A rule-level problem: (field, message); the rule is skipped.
type Skip = (String, String);

pub(super) fn vs_diag(meta: &Meta, field: String, message: String) -> Diagnostic {
    Diagnostic {
        kind: virtual_service::KIND.into(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        field,
        message,
    }
}

impl PreparedVs {
    /// `None` when the VirtualService does not apply to sidecars (its `gateways` do not
    /// include `mesh`) or has no hosts.
    pub fn new(
        vs: VirtualService,
        cat: &Catalog<'_>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<PreparedVs> {
        PreparedVs::new_for(vs, Side::Mesh, cat, diags)
    }

    /// `None` when the VirtualService does not apply to `side` (for sidecars: its
    /// `gateways` do not include `mesh`; for gateways: they name no Gateway) or has no
    /// hosts.
    pub fn new_for(
        vs: VirtualService,
        side: Side,
        cat: &Catalog<'_>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<PreparedVs> {
        let VirtualService { meta, spec } = vs;
        let gateways: Vec<(usize, String)> = spec
            .gateways
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.trim().is_empty())
            .map(|(i, g)| (i, resolve_gateway_name(g, &meta.namespace)))
            .filter(|(_, g)| g != MESH)
            .collect();
        let applies = match side {
            Side::Mesh => spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == MESH),
            Side::Gateways => !gateways.is_empty(),
        };
        if !applies {
            return None;
        }
        let mut hosts: Vec<(usize, HostPattern)> = Vec::new();
        for (i, h) in spec.hosts.iter().enumerate() {
            if h.trim().is_empty() {
                continue;
            }
            let p = HostPattern::new(&resolve_config_host(h, &meta.namespace, cat.domain));
            if !hosts.iter().any(|(_, q)| *q == p) {
                hosts.push((i, p));
            }
        }
        if hosts.is_empty() {
            diags.push(vs_diag(
                &meta,
                "spec.hosts".into(),
                "no hosts; VirtualService skipped".into(),
            ));
            return None;
        }
        let mut rules = Vec::new();
        for (i, http) in spec.http.iter().enumerate() {
            match prepare_rule(i, http, side, &meta, cat, diags) {
                Ok(Some(r)) => rules.push(r),
                Ok(None) => {}
                Err((field, message)) => diags.push(vs_diag(&meta, field, message)),
            }
        }
        let mut tls = Vec::new();
        if side == Side::Gateways {
            for (i, t) in spec.tls.iter().enumerate() {
                match prepare_tls_rule(i, t, &meta, cat, diags) {
                    Ok(r) => tls.push(r),
                    Err((field, message)) => diags.push(vs_diag(&meta, field, message)),
                }
            }
        }
        let mut tcp = Vec::new();
        for (i, t) in spec.tcp.iter().enumerate() {
            match prepare_tcp_rule(i, t, side, &meta, cat, diags) {
                Ok(Some(r)) => tcp.push(r),
                Ok(None) => {}
                Err((field, message)) => diags.push(vs_diag(&meta, field, message)),
            }
        }
        Some(PreparedVs {
            id: format!("{}/{}", meta.namespace, meta.name),
            export: Visibility::from_export_to(&spec.export_to, &meta.namespace),
            meta,
            hosts,
            rules,
            gateways: if side == Side::Gateways {
                gateways
            } else {
                Vec::new()
            },
            tls,
            tcp,
        })
    }
}

/// A `tcp[]` rule: its matches (`port`, `sourceLabels`, `sourceNamespace`, `gateways`;
/// for sidecars an entry for gateways only is left out; one with `destinationSubnets` or
/// `sourceSubnet` is reported and left out) and destinations, as an HTTP rule's.
/// `Ok(None)`: every entry was left out, the rule does not apply to `side`.
fn prepare_tcp_rule(
    i: usize,
    t: &virtual_service::TcpRoute,
    side: Side,
    meta: &Meta,
    cat: &Catalog<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Result<Option<TcpRule>, Skip> {
    let f = format!("spec.tcp[{i}]");
    let matches = if t.matches.is_empty() {
        None
    } else {
        let mut entries = Vec::new();
        for (j, m) in t.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            if side == Side::Mesh && !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == MESH)
            {
                continue;
            }
            let unsupported = [
                ("destinationSubnets", !m.destination_subnets.is_empty()),
                ("sourceSubnet", !m.source_subnet.is_empty()),
            ];
            if let Some((name, _)) = unsupported.iter().find(|(_, set)| *set) {
                diags.push(vs_diag(
                    meta,
                    format!("{mf}.{name}"),
                    format!("{name} is not supported; match skipped"),
                ));
                continue;
            }
            let port = match_port(m.port, &mf)?;
            entries.push(Entry {
                request: RequestMatch::default(),
                port,
                gateways: m
                    .gateways
                    .iter()
                    .map(|g| resolve_gateway_name(g, &meta.namespace))
                    .collect(),
                source_labels: m.source_labels.clone(),
                source_namespace: (!m.source_namespace.is_empty())
                    .then(|| m.source_namespace.clone()),
                catch_all: true,
            });
        }
        if entries.is_empty() {
            return Ok(None);
        }
        Some(entries)
    };
    let dests = l4_dests(&f, &t.route, meta, cat, diags)?;
    Ok(Some(TcpRule {
        index: i,
        matches,
        dests,
        single: t.route.len() == 1,
    }))
}

/// A `tls[]` entry: its matches (each needs `sniHosts`) and destinations, as an HTTP
/// rule's (weights, hosts, ports, subsets).
fn prepare_tls_rule(
    i: usize,
    t: &virtual_service::TlsRoute,
    meta: &Meta,
    cat: &Catalog<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Result<TlsRule, Skip> {
    let f = format!("spec.tls[{i}]");
    let mut matches = Vec::new();
    for (j, m) in t.matches.iter().enumerate() {
        let mf = format!("{f}.match[{j}]");
        let sni_hosts: Vec<String> = m
            .sni_hosts
            .iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if sni_hosts.is_empty() {
            diags.push(vs_diag(
                meta,
                format!("{mf}.sniHosts"),
                "a tls match needs sniHosts; match skipped".into(),
            ));
            continue;
        }
        if !m.destination_subnets.is_empty() {
            diags.push(vs_diag(
                meta,
                format!("{mf}.destinationSubnets"),
                "destinationSubnets is not supported; match skipped".into(),
            ));
            continue;
        }
        let port = match_port(m.port, &mf)?;
        matches.push(TlsEntry {
            sni_hosts,
            port,
            gateways: m
                .gateways
                .iter()
                .map(|g| resolve_gateway_name(g, &meta.namespace))
                .collect(),
        });
    }
    if matches.is_empty() {
        return Err(skip(format!("{f}.match"), "no usable match (sniHosts)"));
    }
    let dests = l4_dests(&f, &t.route, meta, cat, diags)?;
    Ok(TlsRule {
        matches,
        dests,
        single: t.route.len() == 1,
    })
}

/// A `match[].port` (0: unset).
fn match_port(p: u32, f: &str) -> Result<Option<u16>, Skip> {
    match p {
        0 => Ok(None),
        p => u16::try_from(p)
            .map(Some)
            .map_err(|_| skip(format!("{f}.port"), format!("bad port {p}"))),
    }
}

/// The destinations of an L4 rule's `route[]` (`tls[]`, `tcp[]`: no headers).
fn l4_dests(
    f: &str,
    route: &[virtual_service::RouteDestination],
    meta: &Meta,
    cat: &Catalog<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Result<Vec<Dest>, Skip> {
    let specs: Vec<DestSpec<'_>> = route
        .iter()
        .map(|r| DestSpec {
            destination: r.destination.as_ref(),
            weight: r.weight,
            headers: None,
        })
        .collect();
    prepare_dests(&format!("{f}.route"), &specs, meta, cat, diags, None).map(|(d, _)| d)
}

fn skip(field: String, what: impl std::fmt::Display) -> Skip {
    (field, format!("{what}; rule skipped"))
}

/// `Ok(None)`: the rule never applies to sidecars (every entry is for gateways only).
fn prepare_rule(
    i: usize,
    http: &IHttpRoute,
    side: Side,
    meta: &Meta,
    cat: &Catalog<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Result<Option<Rule>, Skip> {
    let f = format!("spec.http[{i}]");
    if http.delegate.is_some() {
        return Err(skip(format!("{f}.delegate"), "delegation is not supported"));
    }
    let mut notes = Vec::new();
    let matches = if http.matches.is_empty() {
        None
    } else {
        let mut entries = Vec::new();
        for (j, m) in http.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            claim_notes(m, &mf, &mut notes);
            if let Some(e) = prepare_entry(m, &mf, side, &meta.namespace)? {
                entries.push(e);
            }
        }
        if entries.is_empty() {
            diags.extend(
                notes
                    .into_iter()
                    .map(|(field, message)| vs_diag(meta, field, message)),
            );
            return Ok(None);
        }
        Some(entries)
    };
    let (mut request_headers, header_authority) =
        header_edit(http.headers.as_ref().and_then(|h| h.request.as_ref()));
    let (response_headers, _) =
        header_edit(http.headers.as_ref().and_then(|h| h.response.as_ref()));
    let fault = prepare_fault(http, &f)?;
    let timeout_ms = resilience::route_timeout(http.timeout.as_deref(), &format!("{f}.timeout"))
        .map_err(|(field, why)| skip(field, why))?;
    let retry = resilience::retry_policy(http.retries.as_ref(), cat.default_retry, &f, &mut notes)
        .map_err(|(field, why)| skip(field, why))?;
    check_conflicts(http, &f)?;
    let mut rewrite = None;
    let action = if let Some(rd) = &http.redirect {
        let code = match rd.redirect_code {
            0 => 301,
            c @ (301 | 302 | 303 | 307 | 308) => c as u16,
            c => {
                return Err(skip(
                    format!("{f}.redirect.redirectCode"),
                    format!("redirect code {c} is not one of 301, 302, 303, 307, 308"),
                ));
            }
        };
        let port = match (rd.port, rd.derive_port.as_deref()) {
            (Some(p), _) => RedirectPort::Fixed(
                u16::try_from(p)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| skip(format!("{f}.redirect.port"), format!("bad port {p}")))?,
            ),
            (None, Some("FROM_REQUEST_PORT")) => RedirectPort::FromRequest,
            (None, None | Some("FROM_PROTOCOL_DEFAULT")) => RedirectPort::Default,
            (None, Some(other)) => {
                return Err(skip(
                    format!("{f}.redirect.derivePort"),
                    format!("unknown derivePort {other:?}"),
                ));
            }
        };
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Action::Redirect(RedirectRule {
            uri: some(&rd.uri),
            authority: some(&rd.authority),
            port,
            scheme: some(&rd.scheme),
            code,
        })
    } else if let Some(dr) = &http.direct_response {
        let status = u16::try_from(dr.status)
            .ok()
            .filter(|s| (200..=599).contains(s))
            .ok_or_else(|| {
                skip(
                    format!("{f}.directResponse.status"),
                    format!("status {} is not within 200-599", dr.status),
                )
            })?;
        let body = match &dr.body {
            Some(b) if b.bytes.is_some() => {
                return Err(skip(
                    format!("{f}.directResponse.body.bytes"),
                    "a bytes body is not supported (use string)",
                ));
            }
            Some(b) => b.string.clone().unwrap_or_default(),
            None => String::new(),
        };
        Action::Direct { status, body }
    } else {
        let single = http.route.len() == 1;
        let specs: Vec<DestSpec<'_>> = http
            .route
            .iter()
            .map(|d| DestSpec {
                destination: d.destination.as_ref(),
                weight: d.weight,
                headers: d.headers.as_ref(),
            })
            .collect();
        let dests = prepare_dests(
            &format!("spec.http[{i}].route"),
            &specs,
            meta,
            cat,
            diags,
            Some(&mut request_headers),
        )?;
        let authority = http
            .rewrite
            .as_ref()
            .map(|r| r.authority.clone())
            .filter(|a| !a.is_empty())
            .or(header_authority)
            .or(dests.1);
        let uri = http
            .rewrite
            .as_ref()
            .map(|r| r.uri.clone())
            .filter(|u| !u.is_empty());
        let uri_regex = prepare_regex_rewrite(http, &f, uri.is_some())?;
        if uri.is_some() || authority.is_some() || uri_regex.is_some() {
            rewrite = Some(Rewrite {
                uri,
                authority,
                uri_regex,
            });
        }
        Action::Route {
            dests: dests.0,
            single,
        }
    };
    let mirrors = prepare_mirrors(http, &f, &action, meta, cat, &mut notes)?;
    let cors = match &http.cors_policy {
        Some(c) => Some(prepare_cors(c, &format!("{f}.corsPolicy"))?),
        None => None,
    };
    diags.extend(
        notes
            .into_iter()
            .map(|(field, message)| vs_diag(meta, field, message)),
    );
    Ok(Some(Rule {
        index: i,
        name: if http.name.is_empty() {
            i.to_string()
        } else {
            http.name.clone()
        },
        matches,
        action,
        fault,
        request_headers,
        response_headers,
        rewrite,
        timeout_ms,
        retry,
        mirrors,
        cors,
    }))
}

/// `corsPolicy`, checked as Istio's validation does (each origin match has one kind and
/// compiles, methods are HTTP methods, header names are tokens, `maxAge` is a duration
/// in whole seconds): anything else skips the rule. `allowOrigins` wins over the
/// deprecated `allowOrigin` (whose `*` is any origin), as in Istio.
fn prepare_cors(c: &ICorsPolicy, f: &str) -> Result<CorsPolicy, Skip> {
    let mut allow_origins = Vec::new();
    if c.allow_origins.is_empty() {
        for o in &c.allow_origin {
            allow_origins.push(if o == "*" {
                StringMatch::Regex(".*".into())
            } else {
                StringMatch::Exact(o.clone())
            });
        }
    } else {
        for (j, m) in c.allow_origins.iter().enumerate() {
            let field = format!("{f}.allowOrigins[{j}]");
            let m = string_match(m, &field, false)?.filter(|m| {
                let (StringMatch::Exact(v) | StringMatch::Prefix(v) | StringMatch::Regex(v)) = m;
                !v.is_empty()
            });
            let Some(m) = m else {
                return Err(skip(
                    field,
                    "an origin match needs a non-empty exact, prefix or regex",
                ));
            };
            allow_origins.push(m);
        }
    }
    const METHODS: [&str; 10] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "*",
    ];
    if let Some(m) = c
        .allow_methods
        .iter()
        .find(|m| !METHODS.contains(&m.as_str()))
    {
        return Err(skip(
            format!("{f}.allowMethods"),
            format!("{m:?} is not an HTTP method"),
        ));
    }
    for (name, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        if let Some(h) = list.iter().find(|h| !mesh_config::resource::is_token(h)) {
            return Err(skip(
                format!("{f}.{name}"),
                format!("{h:?} is not a header name"),
            ));
        }
    }
    let max_age_s = match c.max_age.as_deref() {
        None => None,
        Some(text) => {
            let field = format!("{f}.maxAge");
            let d = mesh_common::duration::parse(text).map_err(|e| skip(field.clone(), e))?;
            if d.subsec_nanos() != 0 {
                return Err(skip(field, format!("{text:?}: only whole seconds")));
            }
            Some(d.as_secs())
        }
    };
    let answer_unmatched_preflights = match c.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED" | "FORWARD") => false,
        Some("IGNORE") => true,
        Some(other) => {
            return Err(skip(
                format!("{f}.unmatchedPreflights"),
                format!("{other:?} is not UNSPECIFIED, FORWARD or IGNORE"),
            ));
        }
    };
    Ok(CorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age_s,
        allow_credentials: c.allow_credentials.unwrap_or(false),
        answer_unmatched_preflights,
    })
}

/// What Istio's validation refuses in a rule's shape, each skipping the rule: a
/// `redirect` or `directResponse` beside `route`, `fault` or `rewrite`; a redirect that
/// sets nothing, or whose scheme is not `http`/`https`; a rewrite that sets nothing.
fn check_conflicts(http: &IHttpRoute, f: &str) -> Result<(), Skip> {
    let answer = match (&http.redirect, &http.direct_response) {
        (Some(_), _) => Some("redirect"),
        (None, Some(_)) => Some("directResponse"),
        (None, None) => None,
    };
    if let Some(kind) = answer {
        for (field, set) in [
            ("route", !http.route.is_empty()),
            ("fault", http.fault.is_some()),
            ("rewrite", http.rewrite.is_some()),
        ] {
            if set {
                return Err(skip(
                    format!("{f}.{field}"),
                    format!("{field} beside {kind} (Istio refuses the rule)"),
                ));
            }
        }
    }
    if let Some(rd) = &http.redirect {
        if rd.uri.is_empty()
            && rd.authority.is_empty()
            && rd.scheme.is_empty()
            && rd.port.is_none()
            && rd.derive_port.is_none()
        {
            return Err(skip(
                format!("{f}.redirect"),
                "a redirect needs uri, authority, scheme or port",
            ));
        }
        if !matches!(rd.scheme.as_str(), "" | "http" | "https") {
            return Err(skip(
                format!("{f}.redirect.scheme"),
                format!("scheme {:?} is not http or https", rd.scheme),
            ));
        }
    }
    if let Some(rw) = &http.rewrite
        && rw.uri.is_empty()
        && rw.authority.is_empty()
        && rw.uri_regex_rewrite.is_none()
    {
        return Err(skip(
            format!("{f}.rewrite"),
            "a rewrite needs uri, uriRegexRewrite or authority",
        ));
    }
    Ok(())
}

/// `rewrite.uriRegexRewrite`, checked as Istio's validation does: `match` and
/// `rewrite` both set, the regex compiles, the substitution's `\N` name groups the
/// regex has; never beside `rewrite.uri`. Any of those skips the rule.
fn prepare_regex_rewrite(
    http: &IHttpRoute,
    f: &str,
    has_uri: bool,
) -> Result<Option<mesh_config::RegexRewrite>, Skip> {
    let Some(rx) = http
        .rewrite
        .as_ref()
        .and_then(|r| r.uri_regex_rewrite.as_ref())
    else {
        return Ok(None);
    };
    let field = format!("{f}.rewrite.uriRegexRewrite");
    if has_uri {
        return Err(skip(
            field,
            "only one of uri and uriRegexRewrite may be set",
        ));
    }
    if rx.pattern.is_empty() || rx.rewrite.is_empty() {
        return Err(skip(field, "needs both match and rewrite"));
    }
    let re = regex::Regex::new(&rx.pattern).map_err(|e| {
        skip(
            format!("{field}.match"),
            format!("invalid regex {:?}: {}", rx.pattern, one_line(&e)),
        )
    })?;
    let max = mesh_config::resource::substitution_groups(&rx.rewrite)
        .map_err(|why| skip(format!("{field}.rewrite"), why))?;
    if max >= re.captures_len() {
        return Err(skip(
            format!("{field}.rewrite"),
            format!(
                "substitution {:?} names group {max}, and {:?} has {}",
                rx.rewrite,
                rx.pattern,
                re.captures_len() - 1
            ),
        ));
    }
    Ok(Some(mesh_config::RegexRewrite {
        pattern: rx.pattern.clone(),
        substitution: rx.rewrite.clone(),
    }))
}

/// `mirror` (with `mirrorPercentage`, or the deprecated `mirrorPercent`) or `mirrors[]`
/// of a rule: each destination resolved as a `route[]` one (a bad one is reported in
/// `notes` and left out, the rule keeps routing); a share outside 0-100, or both
/// `mirror` and `mirrors`, skip the rule (Istio's validation refuses them). A rule that
/// does not forward (redirect, direct response) mirrors nothing: reported.
fn prepare_mirrors(
    http: &IHttpRoute,
    f: &str,
    action: &Action,
    meta: &Meta,
    cat: &Catalog<'_>,
    notes: &mut Vec<(String, String)>,
) -> Result<Vec<MirrorDest>, Skip> {
    if http.mirror.is_some() && !http.mirrors.is_empty() {
        return Err(skip(
            format!("{f}.mirrors"),
            "mirror and mirrors are both set (Istio refuses that)",
        ));
    }
    let mut specs: Vec<(String, Option<&virtual_service::Destination>, f64)> = Vec::new();
    if let Some(m) = &http.mirror {
        let pct = match (&http.mirror_percentage, http.mirror_percent) {
            (Some(p), _) => percentage(p.value, format!("{f}.mirrorPercentage.value"))?,
            (None, Some(p)) => percentage(p as f64, format!("{f}.mirrorPercent"))?,
            (None, None) => 100.0,
        };
        specs.push((format!("{f}.mirror"), Some(m), pct));
    }
    for (j, m) in http.mirrors.iter().enumerate() {
        let mf = format!("{f}.mirrors[{j}]");
        let pct = match &m.percentage {
            Some(p) => percentage(p.value, format!("{mf}.percentage.value"))?,
            None => 100.0,
        };
        specs.push((format!("{mf}.destination"), m.destination.as_ref(), pct));
    }
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    if !matches!(action, Action::Route { .. }) {
        let (field, _, _) = &specs[0];
        notes.push((
            field.clone(),
            "a rule that redirects or answers directly forwards nothing to mirror; \
             mirrors ignored"
                .into(),
        ));
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (field, dst, pct) in specs {
        match resolve_destination(dst, meta, cat) {
            Ok((svc, port, subset)) => out.push(MirrorDest {
                dest: Dest {
                    field,
                    svc,
                    subset,
                    port,
                    weight: 100,
                    request_headers: HeaderEdit::default(),
                    response_headers: HeaderEdit::default(),
                },
                percentage: pct,
            }),
            Err((sub, why)) => {
                notes.push((format!("{field}{sub}"), format!("{why}; mirror dropped")))
            }
        }
    }
    Ok(out)
}

/// A resolved `Destination`: the Service (index), port and subset.
type Resolved = (usize, Option<u16>, Option<String>);

/// A `Destination`'s Service, port and subset, or what is wrong with it: (the field
/// under the destination, `.host` ..., and why).
fn resolve_destination(
    dst: Option<&virtual_service::Destination>,
    meta: &Meta,
    cat: &Catalog<'_>,
) -> Result<Resolved, (&'static str, String)> {
    let Some(dst) = dst.filter(|d| !d.host.trim().is_empty()) else {
        return Err((".host", "missing".into()));
    };
    let fqdn = resolve_config_host(&dst.host, &meta.namespace, cat.domain);
    let Some(&svc) = cat.by_fqdn.get(&fqdn) else {
        return Err((
            ".host",
            format!("host {:?} ({fqdn}) is not a Service", dst.host),
        ));
    };
    let port = match &dst.port {
        None => None,
        Some(p) => match u16::try_from(p.number).ok().filter(|n| *n != 0) {
            Some(n) if cat.services[svc].port(n).is_some() => Some(n),
            _ => {
                return Err((
                    ".port.number",
                    format!("Service {fqdn} has no port {}", p.number),
                ));
            }
        },
    };
    let subset = (!dst.subset.is_empty()).then(|| dst.subset.clone());
    if let Some(s) = &subset
        && !cat.drs.any_defines(&fqdn, s)
    {
        return Err((
            ".subset",
            format!("no DestinationRule for {fqdn} defines subset {s:?}"),
        ));
    }
    Ok((svc, port, subset))
}

/// One `route[]` entry of an `http[]` or `tls[]` rule.
struct DestSpec<'a> {
    destination: Option<&'a virtual_service::Destination>,
    weight: i64,
    headers: Option<&'a virtual_service::Headers>,
}

/// The destinations of `route` (field `f`), and the authority a single destination's
/// headers set (HTTP rules: `route_request_headers` gets a lone destination's request
/// edits).
fn prepare_dests(
    f: &str,
    route: &[DestSpec<'_>],
    meta: &Meta,
    cat: &Catalog<'_>,
    diags: &mut Vec<Diagnostic>,
    mut route_request_headers: Option<&mut HeaderEdit>,
) -> Result<(Vec<Dest>, Option<String>), Skip> {
    let f = f.to_owned();
    if route.is_empty() {
        let what = if route_request_headers.is_some() {
            "no destination (route, redirect or directResponse)"
        } else {
            "no destination"
        };
        return Err(skip(f, what));
    }
    let several = route.len() > 1;
    let mut total = 0i64;
    for (j, d) in route.iter().enumerate() {
        if d.weight < 0 || d.weight > i64::from(u32::MAX) {
            return Err(skip(
                format!("{f}[{j}].weight"),
                format!("bad weight {}", d.weight),
            ));
        }
        total += d.weight;
    }
    if several && total == 0 {
        return Err(skip(
            f,
            "every destination has weight 0 (Istio rejects a total weight of 0)",
        ));
    }
    let mut out = Vec::new();
    let mut single_authority = None;
    for (j, d) in route.iter().enumerate() {
        let df = format!("{f}[{j}]");
        if several && d.weight == 0 {
            continue;
        }
        let (svc, port, subset) = match resolve_destination(d.destination, meta, cat) {
            Ok(r) => r,
            Err((sub, why)) => {
                diags.push(vs_diag(
                    meta,
                    format!("{df}.destination{sub}"),
                    format!("{why}; destination dropped"),
                ));
                continue;
            }
        };
        let (mut request_headers, authority) =
            header_edit(d.headers.and_then(|h| h.request.as_ref()));
        let (mut response_headers, _) = header_edit(d.headers.and_then(|h| h.response.as_ref()));
        if !several && let Some(route_headers) = route_request_headers.as_deref_mut() {
            // Istio adds a lone destination's edits to the route's, after them.
            append(route_headers, std::mem::take(&mut request_headers));
            single_authority = authority;
        }
        out.push(Dest {
            field: df,
            svc,
            subset,
            port,
            weight: if several {
                u32::try_from(d.weight).unwrap_or(u32::MAX)
            } else {
                100
            },
            request_headers,
            response_headers: std::mem::take(&mut response_headers),
        });
    }
    if out.is_empty() {
        return Err(skip(f, "no destination left"));
    }
    Ok((out, single_authority))
}

fn append(to: &mut HeaderEdit, from: HeaderEdit) {
    to.set.extend(from.set);
    to.add.extend(from.add);
    to.remove.extend(from.remove);
}

fn one_line(e: &regex::Error) -> String {
    let s = e.to_string();
    let last = s.lines().last().unwrap_or_default().trim();
    last.strip_prefix("error: ").unwrap_or(last).to_owned()
}

/// A `StringMatch` as the proxy takes it. `Ok(None)`: no condition (or, for a header or
/// query parameter, "present": Istio reads `{}` and `regex: "*"` so).
fn string_match(
    m: &IStringMatch,
    field: &str,
    header_like: bool,
) -> Result<Option<StringMatch>, Skip> {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        return Err(skip(
            field.to_owned(),
            "more than one of exact, prefix and regex",
        ));
    }
    Ok(if let Some(e) = &m.exact {
        Some(StringMatch::Exact(e.clone()))
    } else if let Some(p) = &m.prefix {
        Some(StringMatch::Prefix(p.clone()))
    } else if let Some(r) = &m.regex {
        if header_like && r == "*" {
            None
        } else {
            regex::Regex::new(r).map_err(|e| {
                skip(
                    format!("{field}.regex"),
                    format!("invalid regex {r:?}: {}", one_line(&e)),
                )
            })?;
            Some(StringMatch::Regex(r.clone()))
        }
    } else {
        None
    })
}

fn header_matches(
    map: &std::collections::BTreeMap<String, Option<IStringMatch>>,
    field: &str,
    lower: bool,
) -> Result<Vec<HeaderMatch>, Skip> {
    let mut out = Vec::new();
    for (name, m) in map {
        let value = match m {
            Some(m) => string_match(m, &format!("{field}.{name}"), true)?,
            None => None,
        };
        out.push(HeaderMatch {
            name: if lower {
                name.to_ascii_lowercase()
            } else {
                name.clone()
            },
            value,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Header conditions on JWT claims (`@request.auth.claims.<name>`) need Istio's
/// `RequestAuthentication`, which is not supported: no request has such a header (its
/// name is not a valid header name), so the condition never holds. Reported.
fn claim_notes(m: &HttpMatchRequest, f: &str, notes: &mut Vec<(String, String)>) {
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for name in map.keys().filter(|n| is_claim(n)) {
            let then = if field == "headers" {
                "never holds: the entry is left out"
            } else {
                "always holds"
            };
            notes.push((
                format!("{f}.{field}.{name}"),
                format!(
                    "a JWT claim needs RequestAuthentication, which is not supported: the \
                     condition {then}"
                ),
            ));
        }
    }
}

fn is_claim(name: &str) -> bool {
    name.starts_with("@request.auth.")
}

/// `Ok(None)`: the entry is for gateways only (and `side` is [`Side::Mesh`]), or never
/// matches (a JWT claim condition, see [`claim_notes`]).
fn prepare_entry(
    m: &HttpMatchRequest,
    f: &str,
    side: Side,
    vs_namespace: &str,
) -> Result<Option<Entry>, Skip> {
    if m.headers.keys().any(|n| is_claim(n)) {
        return Ok(None);
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        if let Some(bad) = map
            .keys()
            .find(|n| !is_claim(n) && !mesh_config::resource::is_header_match_name(n))
        {
            return Err(skip(
                format!("{f}.{field}.{bad}"),
                format!("{bad:?} is not a valid header name"),
            ));
        }
    }
    let without_headers: std::collections::BTreeMap<_, _> = m
        .without_headers
        .iter()
        .filter(|(n, _)| !is_claim(n))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    if side == Side::Mesh && !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == MESH) {
        return Ok(None);
    }
    let port = match_port(m.port, f)?;
    let opt = |v: &Option<IStringMatch>, name: &str| -> Result<Option<StringMatch>, Skip> {
        match v {
            Some(v) => string_match(v, &format!("{f}.{name}"), false),
            None => Ok(None),
        }
    };
    let request = RequestMatch {
        name: m.name.clone(),
        uri: opt(&m.uri, "uri")?,
        scheme: opt(&m.scheme, "scheme")?,
        method: opt(&m.method, "method")?,
        authority: opt(&m.authority, "authority")?,
        headers: header_matches(&m.headers, &format!("{f}.headers"), true)?,
        without_headers: header_matches(&without_headers, &format!("{f}.withoutHeaders"), true)?,
        query_params: header_matches(&m.query_params, &format!("{f}.queryParams"), false)?,
        ignore_uri_case: m.ignore_uri_case,
    };
    let catch_all = match &request.uri {
        None => true,
        Some(StringMatch::Prefix(p)) => p == "/",
        Some(StringMatch::Regex(r)) => r == ".*",
        Some(StringMatch::Exact(_)) => false,
    } && request.scheme.is_none()
        && request.method.is_none()
        && request.authority.is_none()
        && request.headers.is_empty()
        && request.without_headers.is_empty()
        && request.query_params.is_empty();
    Ok(Some(Entry {
        request,
        port,
        gateways: m
            .gateways
            .iter()
            .map(|g| resolve_gateway_name(g, vs_namespace))
            .collect(),
        source_labels: m.source_labels.clone(),
        source_namespace: (!m.source_namespace.is_empty()).then(|| m.source_namespace.clone()),
        catch_all,
    }))
}

fn percentage(value: f64, field: String) -> Result<f64, Skip> {
    if value.is_finite() && (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(skip(
            field,
            format!("percentage {value} is not within 0-100"),
        ))
    }
}

/// gRPC status names (`google.rpc.Code`).
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn prepare_delay(d: &IFaultDelay, f: &str) -> Result<FaultDelay, Skip> {
    let Some(fixed) = &d.fixed_delay else {
        let why = if d.exponential_delay.is_some() {
            "exponentialDelay is not supported"
        } else {
            "missing"
        };
        return Err(skip(format!("{f}.fixedDelay"), why));
    };
    let dur =
        mesh_common::duration::parse(fixed).map_err(|e| skip(format!("{f}.fixedDelay"), e))?;
    // Istio: absent `percentage`, the deprecated integer `percent`; neither: 0 (no
    // request is delayed).
    let pct = match (&d.percentage, d.percent) {
        (Some(p), _) => percentage(p.value, format!("{f}.percentage.value"))?,
        (None, Some(p)) => percentage(p as f64, format!("{f}.percent"))?,
        (None, None) => 0.0,
    };
    Ok(FaultDelay {
        fixed_delay_ms: u64::try_from(dur.as_millis()).unwrap_or(u64::MAX),
        percentage: pct,
    })
}

fn prepare_abort(a: &IFaultAbort, f: &str) -> Result<FaultAbort, Skip> {
    let (http_status, grpc_status) = match (a.http_status, &a.grpc_status) {
        (Some(s), _) => (
            Some(
                u16::try_from(s)
                    .ok()
                    .filter(|s| (200..=599).contains(s))
                    .ok_or_else(|| {
                        skip(
                            format!("{f}.httpStatus"),
                            format!("status {s} is not within 200-599"),
                        )
                    })?,
            ),
            None,
        ),
        (None, Some(GrpcStatus::Code(c))) if (*c as usize) < GRPC_CODES.len() => (None, Some(*c)),
        (None, Some(GrpcStatus::Name(n))) => {
            let code = GRPC_CODES.iter().position(|c| c == n).ok_or_else(|| {
                skip(
                    format!("{f}.grpcStatus"),
                    format!("unknown gRPC status {n:?}"),
                )
            })?;
            (None, u32::try_from(code).ok())
        }
        (None, Some(GrpcStatus::Code(c))) => {
            return Err(skip(
                format!("{f}.grpcStatus"),
                format!("unknown gRPC status {c}"),
            ));
        }
        (None, None) => {
            return Err(skip(
                f.to_owned(),
                "an abort without httpStatus or grpcStatus",
            ));
        }
    };
    // Istio: absent, no request is aborted.
    let pct = match &a.percentage {
        Some(p) => percentage(p.value, format!("{f}.percentage.value"))?,
        None => 0.0,
    };
    Ok(FaultAbort {
        http_status,
        grpc_status,
        percentage: pct,
    })
}

fn prepare_fault(http: &IHttpRoute, f: &str) -> Result<Option<Fault>, Skip> {
    let Some(fault) = &http.fault else {
        return Ok(None);
    };
    let delay = match &fault.delay {
        Some(d) => Some(prepare_delay(d, &format!("{f}.fault.delay"))?),
        None => None,
    };
    let abort = match &fault.abort {
        Some(a) => Some(prepare_abort(a, &format!("{f}.fault.abort"))?),
        None => None,
    };
    Ok((delay.is_some() || abort.is_some()).then_some(Fault { delay, abort }))
}

fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// Pseudo-headers and `host` cannot be edited (Istio drops them; `host`/`:authority`
/// in `set`/`add` is the rewrite's authority).
fn is_internal(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

/// Header edits (names lower case, sorted) and the authority they set.
fn header_edit(ops: Option<&HeaderOperations>) -> (HeaderEdit, Option<String>) {
    let Some(ops) = ops else {
        return (HeaderEdit::default(), None);
    };
    let pairs = |m: &std::collections::BTreeMap<String, String>| {
        let mut v: Vec<(String, String)> = m
            .iter()
            .filter(|(k, _)| !is_internal(k))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        v.sort();
        v
    };
    let auth = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .find(|(k, _)| is_authority(k))
            .map(|(_, v)| v.clone())
    };
    let mut remove: Vec<String> = ops
        .remove
        .iter()
        .filter(|k| !is_internal(k))
        .map(|k| k.to_ascii_lowercase())
        .collect();
    remove.sort();
    remove.dedup();
    (
        HeaderEdit {
            set: pairs(&ops.set),
            add: pairs(&ops.add),
            remove,
        },
        auth(&ops.set).or_else(|| auth(&ops.add)),
    )
}

/// Who is asking, as far as routes care.
pub trait ClientView {
    /// Whether a kept entry's source conditions select the client.
    fn selects(&self, entry: &Entry) -> bool;
    /// Whether the client's DestinationRule for Service `svc` defines `subset`.
    fn has_subset(&self, svc: usize, subset: &str) -> bool;
}

/// A client proxy: its namespace, labels and DestinationRules.
pub struct Client<'a> {
    pub namespace: &'a str,
    pub labels: &'a std::collections::BTreeMap<String, String>,
    pub services: &'a [SvcRec],
    pub drs: &'a DrIndex,
}

impl Client<'_> {
    /// Whether an entry's `sourceLabels` and `sourceNamespace` select this proxy.
    pub fn source_selects(&self, e: &Entry) -> bool {
        labels_match(&e.source_labels, self.labels)
            && e.source_namespace
                .as_deref()
                .is_none_or(|ns| ns == self.namespace)
    }
}

impl ClientView for Client<'_> {
    fn selects(&self, e: &Entry) -> bool {
        if e.gateways.is_empty() {
            self.source_selects(e)
        } else {
            e.gateways.iter().any(|g| g == MESH)
        }
    }

    fn has_subset(&self, svc: usize, subset: &str) -> bool {
        let s = &self.services[svc];
        self.drs
            .lookup(self.namespace, self.labels, &s.fqdn, &s.namespace)
            .subset(subset)
            .is_some()
    }
}

/// Any client (build-time diagnostics): every source is selected; subsets were checked
/// against every DestinationRule.
pub struct AnyClient;

impl ClientView for AnyClient {
    fn selects(&self, _: &Entry) -> bool {
        true
    }
    fn has_subset(&self, _: usize, _: &str) -> bool {
        true
    }
}

/// Clusters routes send to: (Service index, port, subset).
pub type Needed = BTreeSet<(usize, u16, Option<String>)>;

/// The routes of `vs` for port `port` of a Service it is bound to, for `client`. The
/// clusters they name are added to `needed`; per-port problems go to `report`
/// (field, message).
pub fn port_routes(
    vs: &PreparedVs,
    port: u16,
    services: &[SvcRec],
    client: &dyn ClientView,
    needed: &mut Needed,
    report: &mut dyn FnMut(String, String),
) -> Vec<HttpRoute> {
    let mut out = Vec::new();
    for rule in &vs.rules {
        let (matches, catch_all) = match &rule.matches {
            None => (Vec::new(), true),
            Some(entries) => {
                let mut kept = Vec::new();
                let mut catch_all = false;
                for e in entries {
                    if e.port.is_some_and(|p| p != port) || !client.selects(e) {
                        continue;
                    }
                    kept.push(e.request.clone());
                    if e.catch_all {
                        catch_all = true;
                        break;
                    }
                }
                if kept.is_empty() {
                    continue;
                }
                (kept, catch_all)
            }
        };
        let f = format!("spec.http[{}]", rule.index);
        let action = match &rule.action {
            Action::Route { dests, single } => {
                let weighted =
                    weighted_clusters(dests, *single, port, services, client, needed, report);
                if weighted.is_empty() {
                    report(
                        format!("{f}.route"),
                        format!("no destination left for port {port}; rule skipped there"),
                    );
                    continue;
                }
                RouteAction::Route(weighted)
            }
            Action::Redirect(rd) => {
                let p = match rd.port {
                    RedirectPort::Default => None,
                    RedirectPort::Fixed(p) => Some(p),
                    RedirectPort::FromRequest => Some(port),
                };
                let scheme = rd.scheme.as_deref().unwrap_or("http");
                let p =
                    p.filter(|&p| !(p == 80 && scheme == "http" || p == 443 && scheme == "https"));
                RouteAction::Redirect(Redirect {
                    uri: rd.uri.clone(),
                    authority: rd.authority.clone(),
                    port: p,
                    scheme: rd.scheme.clone(),
                    code: rd.code,
                })
            }
            Action::Direct { status, body } => RouteAction::DirectResponse {
                status: *status,
                body: body.clone(),
            },
        };
        let routed = matches!(action, RouteAction::Route(_));
        let mut mirrors = Vec::new();
        if routed {
            for m in &rule.mirrors {
                let one = std::slice::from_ref(&m.dest);
                for w in weighted_clusters(one, true, port, services, client, needed, report) {
                    mirrors.push(Mirror {
                        cluster: w.cluster,
                        percentage: m.percentage,
                    });
                }
            }
        }
        out.push(HttpRoute {
            name: rule.name.clone(),
            virtual_service: vs.id.clone(),
            matches,
            action,
            fault: rule.fault.clone(),
            request_headers: rule.request_headers.clone(),
            response_headers: rule.response_headers.clone(),
            rewrite: if routed { rule.rewrite.clone() } else { None },
            timeout_ms: if routed { rule.timeout_ms } else { None },
            retry: if routed { rule.retry.clone() } else { None },
            mirrors,
            cors: rule.cors.clone(),
        });
        if catch_all {
            break;
        }
    }
    out
}

/// The `tcp[]` route of `vs` for the L4 connections to port `port` of a Service it is
/// bound to, for `client`: the first rule without `match`, or with an entry whose port
/// is unset or `port` and whose source conditions hold, that keeps a destination (one
/// that keeps none is reported and the next rule looked at). Its clusters go to `needed`.
pub fn tcp_port_route(
    vs: &PreparedVs,
    port: u16,
    services: &[SvcRec],
    client: &dyn ClientView,
    needed: &mut Needed,
    report: &mut dyn FnMut(String, String),
) -> Option<TcpRoute> {
    for rule in &vs.tcp {
        let applies = rule.matches.as_ref().is_none_or(|entries| {
            entries
                .iter()
                .any(|e| e.port.is_none_or(|p| p == port) && client.selects(e))
        });
        if !applies {
            continue;
        }
        let weighted = weighted_clusters(
            &rule.dests,
            rule.single,
            port,
            services,
            client,
            needed,
            report,
        );
        if weighted.is_empty() {
            report(
                format!("spec.tcp[{}].route", rule.index),
                format!("no destination left for port {port}; rule skipped there"),
            );
            continue;
        }
        return Some(TcpRoute {
            virtual_service: vs.id.clone(),
            rule: rule.index,
            clusters: weighted
                .into_iter()
                .map(|w| TcpCluster {
                    cluster: w.cluster,
                    weight: w.weight,
                })
                .collect(),
        });
    }
    None
}

/// The clusters `dests` send to for a request (or connection) to `port` (the Service or
/// Gateway port), for `client`: a destination without a port goes to its Service's only
/// port, else to `port`; one the Service lacks is reported and dropped, one whose subset
/// the client's DestinationRule lacks is dropped. The clusters named go to `needed`.
pub fn weighted_clusters(
    dests: &[Dest],
    single: bool,
    port: u16,
    services: &[SvcRec],
    client: &dyn ClientView,
    needed: &mut Needed,
    report: &mut dyn FnMut(String, String),
) -> Vec<WeightedCluster> {
    let mut weighted = Vec::new();
    for d in dests {
        let svc = &services[d.svc];
        let q = d.port.unwrap_or(match svc.ports.as_slice() {
            [only] => only.port,
            _ => port,
        });
        if svc.port(q).is_none() {
            report(
                format!("{}.destination", d.field),
                format!(
                    "Service {} has no port {q} (the request's port, as no \
                     destination port is given); destination dropped for port {port}",
                    svc.fqdn
                ),
            );
            continue;
        }
        if let Some(s) = &d.subset
            && !client.has_subset(d.svc, s)
        {
            continue;
        }
        needed.insert((d.svc, q, d.subset.clone()));
        weighted.push(WeightedCluster {
            cluster: cluster_name(q, d.subset.as_deref(), &svc.fqdn),
            weight: if single { 100 } else { d.weight },
            request_headers: d.request_headers.clone(),
            response_headers: d.response_headers.clone(),
        });
    }
    weighted
}

/// Every sidecar VirtualService, and which one binds each Service host.
#[derive(Debug, Default)]
pub struct VsIndex {
    vss: Vec<PreparedVs>,
    exact: HashMap<String, Vec<usize>>,
    /// Most specific first, then oldest.
    wildcard: Vec<(HostPattern, usize)>,
}

impl VsIndex {
    /// Reports hosts that name no Service and VirtualServices shadowed by an older one
    /// for the same host.
    pub fn new(
        mut vss: Vec<PreparedVs>,
        services: &[SvcRec],
        by_fqdn: &HashMap<String, usize>,
        diags: &mut Vec<Diagnostic>,
    ) -> VsIndex {
        vss.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard = Vec::new();
        for (i, vs) in vss.iter().enumerate() {
            for (k, h) in &vs.hosts {
                match h {
                    HostPattern::Exact(name) => {
                        if !by_fqdn.contains_key(name) {
                            let hint = if name.split('.').count() == 2 {
                                format!(
                                    " (Istio takes a name with a dot as written: use {name}.svc.<cluster domain>)"
                                )
                            } else {
                                String::new()
                            };
                            diags.push(vs_diag(
                                &vs.meta,
                                format!("spec.hosts[{k}]"),
                                format!("host {name} is not a Service{hint}; ignored"),
                            ));
                        }
                        exact.entry(name.clone()).or_default().push(i);
                    }
                    HostPattern::Wildcard(_) => {
                        if !services.iter().any(|s| h.matches(&s.fqdn)) {
                            diags.push(vs_diag(
                                &vs.meta,
                                format!("spec.hosts[{k}]"),
                                format!("host {h} matches no Service; ignored"),
                            ));
                        }
                        wildcard.push((h.clone(), i));
                    }
                }
            }
        }
        wildcard.sort_by_key(|(h, _)| std::cmp::Reverse(h.specificity()));
        let index = VsIndex {
            vss,
            exact,
            wildcard,
        };
        index.report_shadowed(diags);
        index
    }

    fn report_shadowed(&self, diags: &mut Vec<Diagnostic>) {
        let mut groups: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (h, list) in &self.exact {
            groups.insert(h.clone(), list.clone());
        }
        for (h, i) in &self.wildcard {
            groups.entry(h.to_string()).or_default().push(*i);
        }
        for (host, list) in &groups {
            let mut list = list.clone();
            list.sort_unstable();
            list.dedup();
            for (n, &i) in list.iter().enumerate() {
                let vs = &self.vss[i];
                let Some(&older) = list[..n]
                    .iter()
                    .find(|&&o| self.vss[o].export.overlaps(&vs.export))
                else {
                    continue;
                };
                let k = vs
                    .hosts
                    .iter()
                    .find(|(_, h)| h.to_string() == *host)
                    .map_or(0, |(k, _)| *k);
                diags.push(vs_diag(
                    &vs.meta,
                    format!("spec.hosts[{k}]"),
                    format!(
                        "ignored for host {host}: the older VirtualService {} binds it for sidecars",
                        self.vss[older].id
                    ),
                ));
            }
        }
    }

    pub fn all(&self) -> &[PreparedVs] {
        &self.vss
    }

    /// The VirtualService a client in `client_ns` uses for the Service host `fqdn`: the
    /// oldest visible one naming it exactly, else the most specific (then oldest)
    /// visible wildcard.
    pub fn select(&self, fqdn: &str, client_ns: &str) -> Option<&PreparedVs> {
        if let Some(v) = self
            .exact
            .get(fqdn)
            .into_iter()
            .flatten()
            .map(|&i| &self.vss[i])
            .find(|v| v.export.visible_to(client_ns))
        {
            return Some(v);
        }
        self.wildcard
            .iter()
            .filter(|(h, _)| h.matches(fqdn))
            .map(|(_, i)| &self.vss[*i])
            .find(|v| v.export.visible_to(client_ns))
    }
}

/// Whether a port carries the routes (HTTP, or sniffed).
pub fn routed_protocol(p: Protocol) -> bool {
    p != Protocol::Tcp
}

/// Whether a port's connections may take the L4 route (`tcp`, or sniffed and not HTTP).
pub fn l4_protocol(p: Protocol) -> bool {
    matches!(p, Protocol::Tcp | Protocol::Unknown)
}
