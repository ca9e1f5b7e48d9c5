//! What an ingress gateway proxy serves (`--role gateway`), the answer to [`crate::Key::Gateway`]:
//! the listeners of the Istio `Gateway`s whose `selector` matches its pod, each with the
//! HTTP routes of the VirtualServices bound to them (`gateways:`), and the clusters those
//! routes send to.
//!
//! Only the asking gateway gets it: mesh-control answers the key from the stream's node
//! (the pod), and puts a `credentialName` Secret's key in it only for a stream whose
//! client certificate is the pod's own identity, in the Secret's namespace.

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::route::{HttpRoute, WeightedCluster};
use crate::service::{Protocol, Service, ServicePort, TcpRoute};

/// The gateway's whole config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// `<namespace>/<name>` of every Gateway that selected the pod, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// One per port the proxy listens on, sorted by port.
    pub listeners: Vec<GatewayListener>,
    /// Every cluster a route of a listener names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<Cluster>,
}

/// One port the gateway listens on: the servers of every selecting Gateway with this
/// port number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayListener {
    /// The port the proxy binds: the `targetPort` of the gateway's Service port whose
    /// `port` is the Gateway's number (as istiod maps it), else the number itself.
    pub port: u16,
    /// The Gateway's `servers[].port.number`: what `match.port` of a bound VirtualService
    /// compares with.
    pub number: u16,
    /// The plaintext HTTP servers of this port, merged into one table: the virtual hosts
    /// of every VirtualService bound to one of them, chosen by `Host` / `:authority`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<VirtualHost>,
    /// The TLS servers (HTTPS, TLS), chosen by the ClientHello's SNI: the one whose
    /// `hosts` match it most specifically (as [`VirtualHost::domains`] are chosen; the
    /// first of equals). A listener with neither `http` nor `tls` takes plaintext HTTP
    /// and answers every request 404 `NR`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsServer>,
    /// A `TCP` server's port (it takes the port alone: no `http`, no `tls`): every
    /// connection goes, bytes untouched, to a cluster of the `tcp[]` route of the
    /// VirtualServices bound to it (the first rule whose match applies to the Gateway
    /// and port), picked by weight. `None` with no `http` nor `tls`: see `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRoute>,
}

/// Requests for a set of host names, and their routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHost {
    /// The host it was made for (`bookinfo.example.com`, `*`), for logs and `/config_dump`.
    pub name: String,
    /// Host patterns, lower case, without port (a request's port is ignored): a name, a
    /// `*.` suffix wildcard (`*.example.com` matches `a.example.com`, not `example.com`),
    /// or `*` (any host). A request goes to the virtual host with an exact domain, else
    /// the longest matching wildcard, else `*`.
    pub domains: Vec<String>,
    /// The server's `tls.httpsRedirect`: every request gets a 301 to `https://` the same
    /// host and path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// The routes of the VirtualServices bound to this host, theirs in order of their
    /// creation (as Istio merges them), each's `http[]` in order. Empty: every request
    /// gets 404 `NR`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<HttpRoute>,
}

/// A server with `tls`: HTTPS (terminated here) or a TLS passthrough.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsServer {
    /// `<namespace>/<gateway> servers[<i>]` (or the server's `name`), for logs.
    pub name: String,
    /// SNI patterns, as [`VirtualHost::domains`]; `*` takes any SNI and a ClientHello
    /// without one.
    pub hosts: Vec<String>,
    pub mode: TlsServerMode,
}

/// `servers[].tls.mode`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "mode",
    rename_all = "SCREAMING_SNAKE_CASE",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum TlsServerMode {
    /// Terminated with the `credentialName` Secret's certificate, then HTTP.
    Simple {
        /// The Secret's name (in the gateway pod's namespace).
        credential_name: String,
        /// The Secret's `tls.crt` / `tls.key`; `None` when mesh-control may not send it
        /// (the Secret is missing or not `kubernetes.io/tls`, or the stream is not
        /// authenticated as the gateway pod): handshakes for this server fail, and
        /// `why` says so.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate: Option<Certificate>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        why: String,
        /// `MUTUAL` and `OPTIONAL_MUTUAL`: the client certificate asked for, and how it
        /// is checked. `None`: `SIMPLE`, none is asked for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_certificates: Option<ClientCertificates>,
        /// The HTTP routes after termination, as [`GatewayListener::http`].
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        virtual_hosts: Vec<VirtualHost>,
    },
    /// Not terminated: the connection goes, bytes untouched, to the destination of the
    /// bound VirtualService `tls[]` route whose `sniHosts` match the SNI most
    /// specifically (the first of equals).
    Passthrough {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        routes: Vec<TlsRoute>,
    },
}

/// How a terminating server checks its clients' certificates (`tls.mode` `MUTUAL`,
/// `OPTIONAL_MUTUAL`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCertificates {
    /// `MUTUAL`: a client that sends no certificate is refused. `OPTIONAL_MUTUAL`: it is
    /// served; a certificate it does send is checked all the same.
    pub required: bool,
    /// The CA certificates (PEM) a client's chain must lead to: the credential's
    /// `cacert` / `ca.crt`, from Secret `<credentialName>-cacert` when there is one,
    /// else from the credential's own Secret (as istiod looks them up). Empty when the
    /// server has no [certificate](TlsServerMode::Simple): its handshakes fail anyway.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_pem: String,
    /// Revoked client certificates (PEM CRLs, the same Secret's `crl` / `ca.crl`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub crl_pem: String,
    /// `subjectAltNames`: when set, the client certificate must carry one of them as a
    /// DNS or URI name (exactly).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// `verifyCertificateHash`: when set, the SHA-256 of the client certificate (DER)
    /// must be one of them, lowercase hex without separators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_hashes: Vec<String>,
}

/// A PEM certificate chain and its private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Certificate {
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("chain_pem", &self.chain_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// One `tls[]` entry of a VirtualService, for a passthrough server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// `default/reviews` (the VirtualService's namespace and name).
    pub virtual_service: String,
    /// The union of its matches' `sniHosts` (patterns as [`VirtualHost::domains`]).
    pub sni_hosts: Vec<String>,
    /// Chosen by weight, as an HTTP route's.
    pub destinations: Vec<WeightedCluster>,
}

/// A host pattern a proxy takes (see [`VirtualHost::domains`]): `*`, a name, or `*.` and a
/// name; DNS characters only, no port.
pub fn valid_pattern(h: &str) -> bool {
    if h == "*" {
        return true;
    }
    let rest = h.strip_prefix("*.").unwrap_or(h);
    !rest.is_empty()
        && !rest.starts_with('.')
        && !rest.ends_with('.')
        && !rest.contains("..")
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Whether `host` (lower case, no port) matches the pattern `pattern`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// How specific a matching pattern is: exact beats any wildcard, a longer wildcard a
/// shorter, `*` loses to all.
pub fn match_rank(pattern: &str) -> usize {
    if pattern == "*" {
        0
    } else if pattern.starts_with('*') {
        pattern.len()
    } else {
        usize::MAX
    }
}

/// The item of `items` whose patterns (`patterns(item)`, as [`VirtualHost::domains`])
/// match `name` most specifically: an exact name, else the longest wildcard, else `*`;
/// the first of equals. A `name` of `None` (a ClientHello without SNI) matches only `*`.
/// How a gateway picks a virtual host by `Host`, a TLS server and a passthrough route by
/// SNI.
pub fn most_specific<'a, T: 'a>(
    items: impl IntoIterator<Item = &'a T>,
    patterns: impl Fn(&'a T) -> &'a [String],
    name: Option<&str>,
) -> Option<&'a T> {
    let mut best: Option<(usize, &'a T)> = None;
    for item in items {
        let rank = patterns(item)
            .iter()
            .filter(|p| match name {
                Some(n) => host_matches(p, n),
                None => p.as_str() == "*",
            })
            .map(|p| match_rank(p))
            .max();
        if let Some(rank) = rank
            && best.is_none_or(|(b, _)| rank > b)
        {
            best = Some((rank, item));
        }
    }
    best.map(|(_, item)| item)
}

/// The clusters of `clusters` that `names` names, each once, in the order first named:
/// what a virtual host's or a passthrough server's routes send to.
fn clusters_named<'a>(
    names: impl IntoIterator<Item = &'a str>,
    clusters: &[Cluster],
) -> Vec<Cluster> {
    let mut used: Vec<Cluster> = Vec::new();
    for name in names {
        if used.iter().all(|c| c.name != name)
            && let Some(c) = clusters.iter().find(|c| c.name == name)
        {
            used.push(c.clone());
        }
    }
    used
}

impl VirtualHost {
    /// The virtual host as a [`Service`] with one HTTP port, `number`, and the clusters
    /// `clusters`: the shape a proxy routes a request with, the same code for a sidecar
    /// and a gateway.
    pub fn as_service(&self, number: u16, clusters: &[Cluster]) -> Service {
        let names = self.routes.iter().flat_map(|r| match &r.action {
            crate::route::RouteAction::Route(ds) => ds.as_slice(),
            _ => &[],
        });
        Service {
            host: self.name.clone(),
            name: self.name.clone(),
            namespace: String::new(),
            addresses: Vec::new(),
            ports: vec![ServicePort {
                port: number,
                name: String::new(),
                protocol: Protocol::Http,
                routes: self.routes.clone(),
                default_retry: None,
                tcp_route: None,
            }],
            domains: self.domains.clone(),
            clusters: clusters_named(names.map(|d| d.cluster.as_str()), clusters),
        }
    }
}

/// A passthrough server's (`server`, its `routes`) clusters as a [`Service`] without
/// ports, named as the server: what the proxy load-balances its connections with.
pub fn passthrough_service(server: &str, routes: &[TlsRoute], clusters: &[Cluster]) -> Service {
    let names = routes
        .iter()
        .flat_map(|r| r.destinations.iter().map(|d| d.cluster.as_str()));
    Service {
        host: server.to_owned(),
        name: server.to_owned(),
        namespace: String::new(),
        addresses: Vec::new(),
        ports: Vec::new(),
        domains: Vec::new(),
        clusters: clusters_named(names, clusters),
    }
}

/// A TCP server's route clusters as a [`Service`] without ports (named `name`), for
/// their load balancing.
pub fn tcp_service(name: &str, route: &TcpRoute, clusters: &[Cluster]) -> Service {
    Service {
        host: name.to_owned(),
        name: name.to_owned(),
        namespace: String::new(),
        addresses: Vec::new(),
        ports: Vec::new(),
        domains: Vec::new(),
        clusters: clusters_named(route.clusters.iter().map(|c| c.cluster.as_str()), clusters),
    }
}

impl Gateway {
    /// Every virtual host with the port number its routes are for.
    pub fn virtual_hosts(&self) -> impl Iterator<Item = (u16, &VirtualHost)> {
        self.listeners.iter().flat_map(|l| {
            l.http
                .iter()
                .chain(l.tls.iter().flat_map(|s| match &s.mode {
                    TlsServerMode::Simple { virtual_hosts, .. } => virtual_hosts.as_slice(),
                    TlsServerMode::Passthrough { .. } => &[],
                }))
                .map(move |v| (l.number, v))
        })
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            https_redirect: false,
            routes: Vec::new(),
        }
    }

    #[test]
    fn patterns() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "xexample.com"));
        assert!(host_matches("bookinfo.com", "bookinfo.com"));
        assert!(!host_matches("bookinfo.com", "www.bookinfo.com"));
    }

    #[test]
    fn patterns_a_proxy_takes() {
        for ok in ["*", "a.com", "*.a.com", "localhost", "a_b.c"] {
            assert!(valid_pattern(ok), "{ok}");
        }
        for bad in [
            "", "*.", "*a.com", "a.*.com", "a.com:80", "a..com", ".a.com", "a/b",
        ] {
            assert!(!valid_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn most_specific_virtual_host_wins() {
        let hosts = [
            vh("any", &["*"]),
            vh("wild", &["*.example.com"]),
            vh("deeper", &["*.shop.example.com"]),
            vh("exact", &["shop.example.com"]),
        ];
        let pick = |h| most_specific(&hosts, |v| &v.domains, Some(h)).map(|v| v.name.as_str());
        assert_eq!(pick("shop.example.com"), Some("exact"));
        assert_eq!(pick("a.shop.example.com"), Some("deeper"));
        assert_eq!(pick("a.example.com"), Some("wild"));
        assert_eq!(pick("other.org"), Some("any"));
        assert_eq!(
            most_specific(&hosts[1..], |v| &v.domains, Some("other.org")).map(|v| &v.name),
            None
        );
        assert_eq!(
            most_specific(&hosts, |v| &v.domains, None).map(|v| v.name.as_str()),
            Some("any"),
            "no name (no SNI): only *"
        );
    }

    #[test]
    fn certificate_debug_hides_the_key() {
        let c = Certificate {
            chain_pem: "CHAIN".into(),
            key_pem: "SECRET-KEY".into(),
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }

    #[test]
    fn debug_json_redacts_keys_wherever_they_are() {
        let c = Certificate {
            chain_pem: "CHAIN".into(),
            key_pem: "SECRET-KEY".into(),
        };
        let g = Gateway {
            gateways: Vec::new(),
            listeners: vec![GatewayListener {
                tcp: None,
                port: 8443,
                number: 443,
                http: Vec::new(),
                tls: vec![TlsServer {
                    name: "s".into(),
                    hosts: vec!["*".into()],
                    mode: TlsServerMode::Simple {
                        credential_name: "cred".into(),
                        certificate: Some(c),
                        why: String::new(),
                        client_certificates: None,
                        virtual_hosts: Vec::new(),
                    },
                }],
            }],
            clusters: Vec::new(),
        };
        let text = crate::Resource::Gateway(g).to_redacted_value().to_string();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(
            text.contains("CHAIN") && text.contains(crate::resource::REDACTED),
            "{text}"
        );
    }
}
