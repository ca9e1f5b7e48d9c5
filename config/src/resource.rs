//! What one [`crate::Key`] resolves to, and the checks a proxy makes before it takes it.

use serde::{Deserialize, Serialize};

use crate::gateway::{Gateway, TlsServerMode, valid_pattern};
use crate::route::{HttpRoute, RouteAction, StringMatch};
use crate::service::{Service, TcpRoute};
use crate::workload::Workload;

/// The answer for one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum Resource {
    /// A ClusterIP or a Service host name.
    Service(Service),
    /// A pod IP.
    Workload(Workload),
    /// The asking gateway's listeners ([`crate::Key::Gateway`]).
    Gateway(Gateway),
    /// Nothing in the mesh: an outside address or name (the proxy passes it through, or
    /// forwards the DNS query).
    NotFound,
}

/// Why a proxy refuses (NACKs) a resource; it keeps what it had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct ValidationError {
    /// Where: `service reviews.default.svc.cluster.local, route 2 (default/reviews)`.
    pub what: String,
    pub why: String,
}

impl Resource {
    /// Decodes a resource body from the wire (JSON).
    pub fn from_json(body: &[u8]) -> Result<Resource, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// Encodes for the wire. Only fails on a non-string map key, which these types have
    /// none of.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The resource as JSON for a debug endpoint (mesh-control's `/debug/config`, the
    /// proxy's `/config_dump`): every private key (`keyPem`) replaced by [`REDACTED`].
    pub fn to_redacted_value(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        redact_keys(&mut v);
        v
    }

    /// The structural checks: every route names clusters the resource carries, weights
    /// are positive, percentages are 0–100, statuses are HTTP statuses. A proxy also
    /// compiles each regex (RE2 syntax) and refuses the resource if one does not.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Resource::Service(svc) => validate_service(svc),
            Resource::Gateway(g) => validate_gateway(g),
            Resource::Workload(_) | Resource::NotFound => Ok(()),
        }
    }

    /// Every regex the resource carries, with where it is, for the proxy to compile.
    pub fn regexes(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        match self {
            Resource::Service(svc) => {
                route_regexes(&format!("service {}", svc.host), routes(svc), &mut out);
            }
            Resource::Gateway(g) => {
                for (number, v) in g.virtual_hosts() {
                    let owner = format!("gateway virtual host {}", v.name);
                    let routes = v.routes.iter().enumerate().map(|(i, r)| (number, i, r));
                    route_regexes(&owner, routes, &mut out);
                }
            }
            Resource::Workload(_) | Resource::NotFound => {}
        }
        out
    }
}

/// What debug output shows instead of a private key.
pub const REDACTED: &str = "<redacted>";

/// Replaces the value of every `keyPem` field in `v` by [`REDACTED`].
fn redact_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "keyPem" {
                    *x = REDACTED.into();
                } else {
                    redact_keys(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_keys),
        _ => {}
    }
}

/// A gateway's checks: each virtual host as the Service it is routed as
/// ([`crate::VirtualHost::as_service`]), every name and pattern well formed, every
/// passthrough route to known clusters with positive weights.
fn validate_gateway(g: &Gateway) -> Result<(), ValidationError> {
    let err = |what: String, why: String| ValidationError { what, why };
    for l in &g.listeners {
        if l.port == 0 || l.number == 0 {
            return Err(err(
                format!("gateway listener {}", l.number),
                "port 0".into(),
            ));
        }
        if g.listeners.iter().filter(|o| o.port == l.port).count() > 1 {
            return Err(err(
                format!("gateway listener {}", l.number),
                format!("port {} is listed twice", l.port),
            ));
        }
        if let Some(t) = &l.tcp {
            let what = format!(
                "gateway port {}, tcp route {} of {}",
                l.number, t.rule, t.virtual_service
            );
            if !l.http.is_empty() || !l.tls.is_empty() {
                return Err(err(what, "a TCP port takes no HTTP or TLS servers".into()));
            }
            validate_tcp_route(t, what, |c| g.cluster(c).is_some())?;
        }
        for s in &l.tls {
            if let Some(h) = s.hosts.iter().find(|h| !valid_pattern(h)) {
                return Err(err(
                    format!("gateway port {}, server {}", l.number, s.name),
                    format!("bad host pattern {h:?}"),
                ));
            }
            if let TlsServerMode::Passthrough { routes } = &s.mode {
                for r in routes {
                    let what = || {
                        format!(
                            "gateway port {}, server {}, tls route ({})",
                            l.number, s.name, r.virtual_service
                        )
                    };
                    if r.destinations.is_empty() {
                        return Err(err(what(), "no destination".into()));
                    }
                    for d in &r.destinations {
                        if d.weight == 0 {
                            return Err(err(
                                what(),
                                format!("destination {} has weight 0", d.cluster),
                            ));
                        }
                        if g.cluster(&d.cluster).is_none() {
                            return Err(err(what(), format!("unknown cluster {}", d.cluster)));
                        }
                    }
                }
            }
        }
    }
    for (number, v) in g.virtual_hosts() {
        let what = || format!("gateway port {number}, virtual host {}", v.name);
        if v.domains.is_empty() {
            return Err(err(what(), "no domains".into()));
        }
        if let Some(d) = v.domains.iter().find(|d| !valid_pattern(d)) {
            return Err(err(what(), format!("bad domain pattern {d:?}")));
        }
        for r in &v.routes {
            if let RouteAction::Route(ds) = &r.action
                && let Some(d) = ds.iter().find(|d| g.cluster(&d.cluster).is_none())
            {
                return Err(err(
                    format!("{}, route {} ({})", what(), r.name, r.virtual_service),
                    format!("unknown cluster {}", d.cluster),
                ));
            }
        }
        validate_service(&v.as_service(number, &g.clusters)).map_err(|e| ValidationError {
            what: format!("gateway port {number}: {}", e.what),
            why: e.why,
        })?;
    }
    Ok(())
}

/// A `tcp[]` route (`what` names it): a destination at least, each with a weight and a
/// cluster that `known` knows.
fn validate_tcp_route(
    t: &TcpRoute,
    what: String,
    known: impl Fn(&str) -> bool,
) -> Result<(), ValidationError> {
    let err = |why: String| ValidationError {
        what: what.clone(),
        why,
    };
    if t.clusters.is_empty() {
        return Err(err("no destination".into()));
    }
    for d in &t.clusters {
        if d.weight == 0 {
            return Err(err(format!("destination {} has weight 0", d.cluster)));
        }
        if !known(&d.cluster) {
            return Err(err(format!("unknown cluster {}", d.cluster)));
        }
    }
    Ok(())
}

fn validate_service(svc: &Service) -> Result<(), ValidationError> {
    let err = |what: String, why: String| ValidationError { what, why };
    for c in &svc.clusters {
        if c.host.is_empty() || c.name.is_empty() {
            return Err(err(
                format!("service {}", svc.host),
                "a cluster without a name or host".into(),
            ));
        }
        if let Some(key) = &c.consistent_hash {
            let what = || format!("service {}, cluster {}", svc.host, c.name);
            match key {
                crate::HashKey::Header(n) if !is_token(n) => {
                    return Err(err(
                        what(),
                        format!("hash header {n:?} is not a header name"),
                    ));
                }
                crate::HashKey::Cookie { name, .. } if !is_token(name) => {
                    return Err(err(
                        what(),
                        format!("hash cookie {name:?} is not a cookie name"),
                    ));
                }
                crate::HashKey::QueryParameter(n) if n.is_empty() => {
                    return Err(err(what(), "an empty hash query parameter".into()));
                }
                _ => {}
            }
        }
    }
    for p in &svc.ports {
        let Some(t) = &p.tcp_route else { continue };
        let what = format!(
            "service {} port {}, tcp route {} of {}",
            svc.host, p.port, t.rule, t.virtual_service
        );
        validate_tcp_route(t, what, |c| svc.cluster(c).is_some())?;
    }
    for (port, i, r) in routes(svc) {
        let what = || {
            format!(
                "service {} port {port}, route {i} ({}, {})",
                svc.host, r.virtual_service, r.name
            )
        };
        match &r.action {
            RouteAction::Route(dests) => {
                if dests.is_empty() {
                    return Err(err(what(), "no destination".into()));
                }
                for d in dests {
                    if d.weight == 0 {
                        return Err(err(
                            what(),
                            format!("destination {} has weight 0", d.cluster),
                        ));
                    }
                    if svc.cluster(&d.cluster).is_none() {
                        return Err(err(what(), format!("unknown cluster {}", d.cluster)));
                    }
                }
            }
            RouteAction::Redirect(rd) => {
                if !(300..400).contains(&rd.code) {
                    return Err(err(what(), format!("redirect code {} is not 3xx", rd.code)));
                }
            }
            RouteAction::DirectResponse { status, .. } => {
                let status = *status;
                if !(100..600).contains(&status) {
                    return Err(err(
                        what(),
                        format!("status {status} is not an HTTP status"),
                    ));
                }
            }
        }
        if !r.mirrors.is_empty() && !matches!(r.action, RouteAction::Route(_)) {
            return Err(err(
                what(),
                "mirrors on a route that does not forward".into(),
            ));
        }
        for m in &r.mirrors {
            if svc.cluster(&m.cluster).is_none() {
                return Err(err(what(), format!("unknown mirror cluster {}", m.cluster)));
            }
            if !(0.0..=100.0).contains(&m.percentage) {
                return Err(err(
                    what(),
                    format!(
                        "mirror {} percentage {} is not within 0-100",
                        m.cluster, m.percentage
                    ),
                ));
            }
        }
        if let Some(f) = &r.fault {
            for (kind, p) in [
                ("delay", f.delay.as_ref().map(|d| d.percentage)),
                ("abort", f.abort.as_ref().map(|a| a.percentage)),
            ] {
                if let Some(p) = p
                    && !(0.0..=100.0).contains(&p)
                {
                    return Err(err(
                        what(),
                        format!("fault {kind} percentage {p} is not within 0-100"),
                    ));
                }
            }
            if let Some(a) = &f.abort {
                match (a.http_status, a.grpc_status) {
                    (Some(s), _) if !(200..600).contains(&s) => {
                        return Err(err(
                            what(),
                            format!("fault abort status {s} is not an HTTP status"),
                        ));
                    }
                    (None, None) => {
                        return Err(err(what(), "fault abort without a status".into()));
                    }
                    _ => {}
                }
            }
        }
        if let Some(c) = &r.cors {
            for (field, names) in [
                ("allowMethods", &c.allow_methods),
                ("allowHeaders", &c.allow_headers),
                ("exposeHeaders", &c.expose_headers),
            ] {
                if let Some(n) = names.iter().find(|n| !is_token(n)) {
                    return Err(err(what(), format!("cors {field}: {n:?} is not a token")));
                }
            }
        }
        if let Some(rw) = &r.rewrite
            && let Some(rx) = &rw.uri_regex
        {
            if rw.uri.is_some() {
                return Err(err(what(), "rewrite of both uri and uriRegex".into()));
            }
            if rx.pattern.is_empty() {
                return Err(err(what(), "uriRegex rewrite with an empty pattern".into()));
            }
            substitution_groups(&rx.substitution).map_err(|why| err(what(), why))?;
        }
        for m in &r.matches {
            for h in m
                .headers
                .iter()
                .chain(&m.without_headers)
                .chain(&m.query_params)
            {
                if h.name.is_empty() {
                    return Err(err(what(), "a header or query match without a name".into()));
                }
            }
            for h in m.headers.iter().chain(&m.without_headers) {
                if !is_header_match_name(&h.name) {
                    return Err(err(
                        what(),
                        format!("{:?} is not a valid header name", h.name),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// One piece of a `uriRegexRewrite` substitution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubstitutionPart {
    Text(String),
    /// `\0` (the whole match) to `\9`.
    Group(usize),
}

/// A `uriRegexRewrite` substitution split into text and group references (`\0`-`\9`;
/// `\\` is a backslash), or why it is not one (RE2's rule: a backslash starts one of
/// those).
pub fn substitution_parts(sub: &str) -> Result<Vec<SubstitutionPart>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = sub.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            text.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => text.push('\\'),
            Some(d @ '0'..='9') => {
                if !text.is_empty() {
                    parts.push(SubstitutionPart::Text(std::mem::take(&mut text)));
                }
                parts.push(SubstitutionPart::Group(usize::from(d as u8 - b'0')));
            }
            Some(other) => {
                return Err(format!(
                    "substitution {sub:?}: \\{other} is not \\0-\\9 or \\\\"
                ));
            }
            None => return Err(format!("substitution {sub:?} ends with a lone \\")),
        }
    }
    if !text.is_empty() {
        parts.push(SubstitutionPart::Text(text));
    }
    Ok(parts)
}

/// The highest group these parts name (0 when none does).
pub fn max_group(parts: &[SubstitutionPart]) -> usize {
    parts
        .iter()
        .filter_map(|p| match p {
            SubstitutionPart::Group(g) => Some(*g),
            SubstitutionPart::Text(_) => None,
        })
        .max()
        .unwrap_or(0)
}

/// The highest group a `uriRegexRewrite` substitution names (see
/// [`substitution_parts`]), or why it is not one.
pub fn substitution_groups(sub: &str) -> Result<usize, String> {
    Ok(max_group(&substitution_parts(sub)?))
}

/// A name a header condition may take: an HTTP field name (an RFC 9110 `token`), or one
/// of the pseudo-headers Istio matches (`:authority`, `:method`, `:path`, `:scheme`).
pub fn is_header_match_name(name: &str) -> bool {
    matches!(name, ":authority" | ":method" | ":path" | ":scheme") || is_token(name)
}

/// An RFC 9110 `token`: what a header (and a cookie) name is.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The regexes of `routes`, each with where it is: `<owner> port <port>, route <i>`.
fn route_regexes<'a>(
    owner: &str,
    routes: impl Iterator<Item = (u16, usize, &'a HttpRoute)>,
    out: &mut Vec<(String, &'a str)>,
) {
    for (port, i, r) in routes {
        if let Some(rx) = r.rewrite.as_ref().and_then(|rw| rw.uri_regex.as_ref()) {
            out.push((
                format!(
                    "{owner} port {port}, route {i} ({}), rewrite uriRegex",
                    r.virtual_service
                ),
                rx.pattern.as_str(),
            ));
        }
        for o in r.cors.iter().flat_map(|c| &c.allow_origins) {
            if let StringMatch::Regex(re) = o {
                out.push((
                    format!(
                        "{owner} port {port}, route {i} ({}), cors allowOrigins",
                        r.virtual_service
                    ),
                    re.as_str(),
                ));
            }
        }
        for m in &r.matches {
            let fields = [
                ("uri", m.uri.as_ref()),
                ("scheme", m.scheme.as_ref()),
                ("method", m.method.as_ref()),
                ("authority", m.authority.as_ref()),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .chain(
                m.headers
                    .iter()
                    .chain(&m.without_headers)
                    .chain(&m.query_params)
                    .map(|h| (h.name.clone(), h.value.as_ref())),
            );
            for (field, v) in fields {
                if let Some(StringMatch::Regex(re)) = v {
                    out.push((
                        format!(
                            "{owner} port {port}, route {i} ({}), match {field}",
                            r.virtual_service
                        ),
                        re.as_str(),
                    ));
                }
            }
        }
    }
}

/// Every route of every port, with the port and the route's index in it.
fn routes(svc: &Service) -> impl Iterator<Item = (u16, usize, &crate::route::HttpRoute)> {
    svc.ports.iter().flat_map(|p| {
        p.routes
            .iter()
            .enumerate()
            .map(move |(i, r)| (p.port, i, r))
    })
}

#[cfg(test)]
mod tests {
    use super::{SubstitutionPart, substitution_groups, substitution_parts};

    #[test]
    fn substitution_groups_and_escapes() {
        assert_eq!(substitution_groups("/v2/"), Ok(0));
        assert_eq!(substitution_groups(r"\2/instance/\1"), Ok(2));
        assert_eq!(substitution_groups(r"/a\\b\0"), Ok(0));
        assert_eq!(substitution_groups(r"\9"), Ok(9));
        let e = substitution_groups(r"/x\n").unwrap_err();
        assert!(e.contains(r"\n is not"), "{e}");
        let e = substitution_groups(r"/x\").unwrap_err();
        assert!(e.contains("lone"), "{e}");
        // `$1` is Rust's and PCRE's syntax, not RE2's: taken literally.
        assert_eq!(substitution_groups("/$1"), Ok(0));
        assert_eq!(
            substitution_parts(r"\2/a\\b/\1"),
            Ok(vec![
                SubstitutionPart::Group(2),
                SubstitutionPart::Text(r"/a\b/".into()),
                SubstitutionPart::Group(1),
            ])
        );
    }
}
