//! Istio `Gateway`s → one ingress gateway pod's listeners ([`mesh_config::gateway`]).
//!
//! Build time ([`GatewayIndex::new`]) prepares each Gateway's servers, reporting what
//! cannot be served one server at a time ([`Diagnostic`] on the Gateway, the server
//! skipped, the rest kept): a port number out of range, a protocol other than `HTTP`,
//! `HTTP2`, `GRPC`, `GRPC-WEB`, `HTTPS`, `TLS`, `TCP`, `MONGO`, `REDIS`, `MYSQL` (any
//! case), `HTTPS`/`TLS` without `tls`, `tls.mode` `ISTIO_MUTUAL`, `AUTO_PASSTHROUGH`,
//! `SIMPLE`, `MUTUAL` or `OPTIONAL_MUTUAL` without `credentialName` (file-path
//! certificates are not supported) or on a `TLS` server (terminated TLS routed by
//! `tcp[]`), a mutual server with `verifyCertificateSpki`, `caCrl` (a file path),
//! `caCertCredentialName`, a `verifyCertificateHash` entry that is not 64 hex digits (once
//! `:` are dropped) or only empty `subjectAltNames` (each of which would let clients in
//! that the user meant to refuse), no usable host. Reported and ignored: a mutual
//! server's `caCertificates` (a file path: the credential's CA is used, as istiod does),
//! empty `subjectAltNames` entries, and on `SIMPLE` every client certificate field (it
//! asks for none). Hosts are `host` or `*/host` (any namespace's VirtualServices),
//! `./host` (the Gateway's namespace) or `<namespace>/host`, lower-cased; `bind` and
//! `defaultEndpoint` are reported and ignored. `tls.mode` unset is `PASSTHROUGH`, the
//! API's default.
//!
//! Per gateway pod ([`Snapshot::gateway`]), as istiod's `mergeGateways`:
//! - every Gateway (any namespace) whose `selector` is a subset of the pod's labels
//!   selects it; an empty or absent selector selects every gateway pod;
//! - servers, Gateways oldest first (creation time, then name, then namespace) and each
//!   Gateway's in order, are grouped by the port the proxy binds: the numeric
//!   `targetPort` of the first Service (by namespace and name) selecting the pod whose
//!   `port` is the server's number (a named `targetPort` through the pod's container
//!   ports; Services labelled `networking.istio.io/disable-gateway-port-translation`
//!   are not used), else the number itself;
//! - on one port, plaintext HTTP servers merge into one table; TLS servers sit side by
//!   side, chosen by SNI; a plaintext and a TLS server never share a port, nor two TLS
//!   servers a host, nor two numbers a bound port, and a `TCP` server takes its port
//!   alone: the later server is skipped (and reported, at build time, for every set of
//!   Gateways some pod has);
//! - a `TCP` server's port gets the first `tcp[]` rule, of the VirtualServices bound to
//!   its Gateway whose hosts meet the server's (oldest first), whose match applies to
//!   the Gateway and the server's port number (`routes::tcp_port_route`): every
//!   connection to one of its destinations by weight, bytes untouched.
//!
//! Virtual hosts (plaintext, and after `SIMPLE` / mutual termination, per server): for each
//! VirtualService bound to the server's Gateway (`spec.gateways`, see
//! `routes::resolve_gateway_name`), visible to the gateway pod's namespace (`exportTo`),
//! oldest first, each of its hosts intersected with each server host its namespace may
//! use ([`intersect`]) gives a virtual host named by the more specific of the two, with
//! the VirtualService's HTTP routes for the Gateway's port number (`routes::port_routes`
//! with a client that takes `match[]` entries naming this Gateway, or naming none and
//! whose source conditions select the gateway pod). Several VirtualServices for one
//! host are merged: routes concatenated, then (as Istio's `SortVHostRoutes`) the
//! catch-all ones moved to the end. A VirtualService with no route there still makes
//! its host (404 `NR`). `httpsRedirect` marks every virtual host of the server, and
//! makes one (no routes) for each server host that has none.
//!
//! `PASSTHROUGH` servers get, from the same VirtualServices (those whose hosts meet the
//! server's), each `tls[]` entry whose matches fit (`port` unset or the number,
//! `gateways` unset or naming the Gateway), with the `sniHosts` that meet the server's
//! hosts; a match whose SNI host an earlier one took is skipped (as Istio's duplicate
//! filter chain check). TLS servers and TLS routes are listed with those whose least
//! specific host is most specific first (so a first-match proxy still prefers
//! `a.example.com` to `*`), else in merge order.
//!
//! `SIMPLE` servers carry the `credentialName` Secret of the gateway pod's namespace
//! (Istio's rule): a `kubernetes.io/tls` Secret's `tls.crt` / `tls.key`, or Istio's
//! generic layout `cert` / `key` (checked first, as istiod does; an `Opaque` Secret has
//! to use it). The key is only sent on a config stream whose verified client
//! certificate is the pod's own SPIFFE id ([`ProxyNode::identity`]); else the
//! certificate is left out and `why` says why.
//!
//! `MUTUAL` (a client certificate required) and `OPTIONAL_MUTUAL` (asked for, checked
//! when sent) are `SIMPLE` servers with client checks: the CA as istiod's `GetCaCert`
//! finds it, Secret `<credentialName>-cacert` of the same namespace if it exists, else
//! the credential's own Secret; in it `cacert` (CRL `crl`), else `ca.crt` (CRL `ca.crl`),
//! PEM, checked as the proxy loads them. `subjectAltNames` (trimmed) and
//! `verifyCertificateHash` (lowercase hex, no `:`) go along. The CA is sent only with the
//! certificate (the same stream checks); a missing or bad CA withholds the certificate
//! too (`why` names the Secrets and keys looked for), so the server's handshakes fail
//! rather than skip the client check.
//!
//! Cost: `resolve` walks the Gateways once (a label check each), then only the selected
//! Gateways' servers and the VirtualServices bound to them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mesh_common::identity::spiffe_id;
use mesh_config::gateway::{
    Certificate, ClientCertificates, Gateway as OutGateway, GatewayListener, TlsRoute, TlsServer,
    TlsServerMode, VirtualHost, host_matches, match_rank, valid_pattern,
};
use mesh_config::route::{HttpRoute, RequestMatch, StringMatch};
use mesh_config::{Cluster, Resource};

use super::hosts::labels_match;
use super::routes::{
    Catalog, Client, ClientView, Entry, Needed, PreparedVs, Side, port_routes, tcp_port_route,
    vs_diag, weighted_clusters,
};
use super::services::target_port;
use super::workloads::PodRec;
use super::{Diagnostic, ProxyNode, Snapshot};
use crate::istio::gateway::{self, Gateway, Server};
use crate::istio::virtual_service::VirtualService;
use crate::istio::{Labels, Meta};

/// The label on a gateway's Service that turns off the port → `targetPort` mapping.
pub const DISABLE_PORT_TRANSLATION: &str = "networking.istio.io/disable-gateway-port-translation";

/// Why a stream gets no key when it is not the gateway pod's own.
pub const NOT_AUTHENTICATED: &str = "the config stream is not authenticated as the gateway pod (plaintext port or no client certificate)";

/// Whether host pattern `n` covers only names `o` covers (Istio's `host.Name.SubsetOf`):
/// `*` covers everything; `*.example.com` covers `a.example.com` and
/// `*.a.example.com`, not `example.com`; a name covers itself. Both lower case.
pub fn subset_of(n: &str, o: &str) -> bool {
    match (n.strip_prefix('*'), o.strip_prefix('*')) {
        (Some(ns), Some(os)) => ns.ends_with(os),
        (Some(_), None) => false,
        (None, Some(_)) => host_matches(o, n),
        (None, None) => n == o,
    }
}

/// The names both patterns cover, as one pattern: the more specific of the two when one
/// covers the other (`*` ∩ `a.com` = `a.com`; `*.com` ∩ `*.a.com` = `*.a.com`), else
/// none (`a.com` ∩ `b.com`, and `*.a.com` ∩ `a.com`: a wildcard needs one more label).
pub fn intersect(a: &str, b: &str) -> Option<String> {
    if subset_of(a, b) {
        Some(a.to_owned())
    } else if subset_of(b, a) {
        Some(b.to_owned())
    } else {
        None
    }
}

/// A server host: the namespaces whose VirtualServices may use it and the host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHost {
    /// `None`: any namespace (`*/host` or a bare host).
    pub namespace: Option<String>,
    /// Lower case, no trailing dot.
    pub host: String,
}

impl ServerHost {
    fn visible_to(&self, vs_namespace: &str) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| ns == vs_namespace)
    }
}

/// What a server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerKind {
    /// Plaintext HTTP (`HTTP`, `HTTP2`, `GRPC`, `GRPC-WEB`).
    Http { https_redirect: bool },
    /// `HTTPS` with `tls.mode: SIMPLE`, `MUTUAL` or `OPTIONAL_MUTUAL`: terminated with
    /// the Secret, then HTTP.
    Simple {
        credential_name: String,
        /// `MUTUAL` / `OPTIONAL_MUTUAL`: how client certificates are checked. `None`:
        /// `SIMPLE`.
        client: Option<ClientAuth>,
    },
    /// `HTTPS` or `TLS` with `tls.mode: PASSTHROUGH`: by SNI, not terminated.
    Passthrough,
    /// `TCP` (and `MONGO`, `REDIS`, `MYSQL`): opaque, routed by the VirtualServices'
    /// `tcp[]`; alone on its port.
    Tcp,
}

/// A mutual server's checks of client certificates (the CA is the Secret's, looked up per
/// gateway pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// `MUTUAL`: a client without a certificate is refused; `OPTIONAL_MUTUAL`: served.
    pub required: bool,
    /// `subjectAltNames`, trimmed, without empty entries.
    pub subject_alt_names: Vec<String>,
    /// `verifyCertificateHash`, lowercase hex without `:`, each 64 digits.
    pub certificate_hashes: Vec<String>,
}

impl ClientAuth {
    /// The `tls.mode` it was made from, for messages.
    pub fn mode(&self) -> &'static str {
        if self.required {
            "MUTUAL"
        } else {
            "OPTIONAL_MUTUAL"
        }
    }
}

/// One usable server.
#[derive(Debug, Clone)]
pub struct PreparedServer {
    /// Index in `spec.servers`.
    pub index: usize,
    /// `<namespace>/<gateway> servers[<i>]`, or `<namespace>/<gateway> <name>`.
    pub name: String,
    pub number: u16,
    pub kind: ServerKind,
    /// At least one.
    pub hosts: Vec<ServerHost>,
}

impl PreparedServer {
    fn is_tls(&self) -> bool {
        !matches!(self.kind, ServerKind::Http { .. })
    }

    /// The host patterns, deduplicated and sorted.
    fn patterns(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.hosts.iter().map(|h| h.host.as_str()).collect();
        set.into_iter().map(str::to_owned).collect()
    }
}

/// One Gateway, checked.
#[derive(Debug, Clone)]
pub struct PreparedGateway {
    pub meta: Meta,
    /// `<namespace>/<name>`.
    pub id: String,
    pub selector: Labels,
    pub servers: Vec<PreparedServer>,
}

fn gw_diag(meta: &Meta, field: String, message: String) -> Diagnostic {
    Diagnostic {
        kind: gateway::KIND.into(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        field,
        message,
    }
}

impl PreparedGateway {
    pub fn new(gw: Gateway, diags: &mut Vec<Diagnostic>) -> PreparedGateway {
        let Gateway { meta, spec } = gw;
        let id = format!("{}/{}", meta.namespace, meta.name);
        let servers = spec
            .servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let mut report = |field: String, message: String| {
                    diags.push(gw_diag(&meta, field, message));
                };
                prepare_server(i, s, &meta, &id, &mut report)
            })
            .collect();
        PreparedGateway {
            id,
            selector: spec.selector,
            servers,
            meta,
        }
    }
}

/// `None`: the server is skipped (reported).
fn prepare_server(
    i: usize,
    s: &Server,
    meta: &Meta,
    id: &str,
    report: &mut dyn FnMut(String, String),
) -> Option<PreparedServer> {
    let f = format!("spec.servers[{i}]");
    let skipped = |why: &str| format!("{why}; server skipped");
    let Some(port) = &s.port else {
        report(format!("{f}.port"), skipped("missing"));
        return None;
    };
    let Some(number) = u16::try_from(port.number).ok().filter(|n| *n != 0) else {
        report(
            format!("{f}.port.number"),
            skipped(&format!("bad port {}", port.number)),
        );
        return None;
    };
    let protocol = port.protocol.trim().to_ascii_uppercase();
    let tls_family = match protocol.as_str() {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => false,
        "HTTPS" | "TLS" => true,
        "TCP" | "MONGO" | "REDIS" | "MYSQL" => false,
        "" => {
            report(format!("{f}.port.protocol"), skipped("missing"));
            return None;
        }
        _ => {
            report(
                format!("{f}.port.protocol"),
                skipped(&format!("protocol {:?} is not supported", port.protocol)),
            );
            return None;
        }
    };
    if !s.bind.is_empty() {
        report(
            format!("{f}.bind"),
            "bind is not supported: the gateway listens on every address of its pod; ignored"
                .into(),
        );
    }
    if !s.default_endpoint.is_empty() {
        report(
            format!("{f}.defaultEndpoint"),
            "defaultEndpoint applies to sidecars, not gateways; ignored".into(),
        );
    }
    let mut hosts: Vec<ServerHost> = Vec::new();
    for (j, h) in s.hosts.iter().enumerate() {
        let hf = format!("{f}.hosts[{j}]");
        let (ns, host) = match h.trim().split_once('/') {
            Some((".", host)) => (Some(meta.namespace.clone()), host),
            Some(("*", host)) => (None, host),
            Some((ns, host)) if !ns.is_empty() => (Some(ns.to_owned()), host),
            Some(_) => {
                report(
                    hf,
                    format!("{h:?}: expected host, ./host, */host or <namespace>/host; ignored"),
                );
                continue;
            }
            None => (None, h.trim()),
        };
        let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
        if !valid_pattern(&host) {
            report(
                hf,
                format!("{h:?} is not a host name, *.<name> or *; ignored"),
            );
            continue;
        }
        let sh = ServerHost {
            namespace: ns,
            host,
        };
        if !hosts.contains(&sh) {
            hosts.push(sh);
        }
    }
    if hosts.is_empty() {
        report(format!("{f}.hosts"), skipped("no usable host"));
        return None;
    }
    let opaque = matches!(protocol.as_str(), "TCP" | "MONGO" | "REDIS" | "MYSQL");
    let kind = if opaque {
        if s.tls.is_some() {
            report(
                format!("{f}.tls"),
                format!("a {} server takes no tls; ignored", port.protocol),
            );
        }
        ServerKind::Tcp
    } else if !tls_family {
        match &s.tls {
            None => ServerKind::Http {
                https_redirect: false,
            },
            Some(t) => {
                if t.mode.is_some() || !t.credential_name.is_empty() {
                    report(
                        format!("{f}.tls"),
                        format!(
                            "a plaintext {} server only uses tls.httpsRedirect; the rest is ignored",
                            port.protocol
                        ),
                    );
                }
                ServerKind::Http {
                    https_redirect: t.https_redirect,
                }
            }
        }
    } else {
        let Some(t) = &s.tls else {
            report(
                format!("{f}.tls"),
                skipped(&format!("protocol {} needs tls", port.protocol)),
            );
            return None;
        };
        let credential = if !t.credential_name.is_empty() {
            t.credential_name.trim().to_owned()
        } else {
            if t.credential_names.len() > 1 {
                report(
                    format!("{f}.tls.credentialNames"),
                    "only the first credential is served".into(),
                );
            }
            t.credential_names
                .first()
                .map(|c| c.trim().to_owned())
                .unwrap_or_default()
        };
        let mode = t.mode.as_deref().unwrap_or("PASSTHROUGH");
        match mode {
            "PASSTHROUGH" => {
                if t.mode.is_none() && !credential.is_empty() {
                    report(
                        format!("{f}.tls.mode"),
                        "unset, which is PASSTHROUGH (the API's default): the credential is \
                         not used; set mode: SIMPLE to terminate TLS"
                            .into(),
                    );
                }
                ServerKind::Passthrough
            }
            "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" if protocol == "TLS" => {
                report(
                    format!("{f}.tls.mode"),
                    skipped(&format!(
                        "{mode} on a TLS server (terminated, then routed by the \
                         VirtualServices' tcp[]) is not supported yet; use protocol HTTPS"
                    )),
                );
                return None;
            }
            "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" => {
                let mutual = mode != "SIMPLE";
                if credential.is_empty() {
                    let files = !t.server_certificate.is_empty()
                        || !t.private_key.is_empty()
                        || (mutual && !t.ca_certificates.is_empty());
                    let why = if !files {
                        format!("tls.mode {mode} needs credentialName")
                    } else if mutual {
                        "file-path certificates (serverCertificate, privateKey, \
                         caCertificates) are not supported: name a Secret with credentialName"
                            .to_owned()
                    } else {
                        "file-path certificates (serverCertificate, privateKey) are not \
                         supported: name a Secret with credentialName"
                            .to_owned()
                    };
                    report(format!("{f}.tls.credentialName"), skipped(&why));
                    return None;
                }
                let client = if mutual {
                    Some(client_auth(&f, t, mode, &credential, report)?)
                } else {
                    simple_ignores(&f, t, report);
                    None
                };
                ServerKind::Simple {
                    credential_name: credential,
                    client,
                }
            }
            "ISTIO_MUTUAL" | "AUTO_PASSTHROUGH" => {
                report(
                    format!("{f}.tls.mode"),
                    skipped(&format!("tls.mode {mode} is not supported yet")),
                );
                return None;
            }
            other => {
                report(
                    format!("{f}.tls.mode"),
                    skipped(&format!("unknown tls.mode {other:?}")),
                );
                return None;
            }
        }
    };
    let name = if s.name.trim().is_empty() {
        format!("{id} servers[{i}]")
    } else {
        format!("{id} {}", s.name.trim())
    };
    Some(PreparedServer {
        index: i,
        name,
        number,
        kind,
        hosts,
    })
}

/// The client checks of a `MUTUAL` / `OPTIONAL_MUTUAL` server with a credential; `None`:
/// the server is skipped (every problem reported first).
fn client_auth(
    f: &str,
    t: &gateway::ServerTls,
    mode: &str,
    credential: &str,
    report: &mut dyn FnMut(String, String),
) -> Option<ClientAuth> {
    let skipped = |why: &str| format!("{why}; server skipped");
    let mut usable = true;
    if !t.ca_certificates.is_empty() {
        report(
            format!("{f}.tls.caCertificates"),
            format!(
                "a file path (not supported); with credentialName the client CA comes from \
                 Secret {credential}-cacert, else {credential} (cacert or ca.crt), as istiod \
                 takes it; ignored"
            ),
        );
    }
    if !t.ca_crl.is_empty() {
        report(
            format!("{f}.tls.caCrl"),
            skipped(
                "a file path, which is not supported (Istio refuses it with credentialName): \
                 put the CRL in the Secret beside the client CA (crl with cacert, ca.crl with \
                 ca.crt)",
            ),
        );
        usable = false;
    }
    if !t.ca_cert_credential_name.is_empty() {
        report(
            format!("{f}.tls.caCertCredentialName"),
            skipped(&format!(
                "not supported yet: put the client CA in Secret {credential}-cacert (cacert) or \
                 in {credential} itself (ca.crt)"
            )),
        );
        usable = false;
    }
    if !t.verify_certificate_spki.is_empty() {
        report(
            format!("{f}.tls.verifyCertificateSpki"),
            skipped(
                "not supported yet (ignoring it would accept client certificates it is meant \
                 to refuse)",
            ),
        );
        usable = false;
    }
    let mut certificate_hashes: Vec<String> = Vec::new();
    for (j, h) in t.verify_certificate_hash.iter().enumerate() {
        match certificate_hash(h) {
            Some(hash) => {
                if !certificate_hashes.contains(&hash) {
                    certificate_hashes.push(hash);
                }
            }
            None => {
                report(
                    format!("{f}.tls.verifyCertificateHash[{j}]"),
                    skipped(&format!(
                        "{h:?} is not a SHA-256 hash (64 hex digits, colons allowed)"
                    )),
                );
                usable = false;
            }
        }
    }
    let mut subject_alt_names: Vec<String> = Vec::new();
    for (j, n) in t.subject_alt_names.iter().enumerate() {
        let n = n.trim();
        if n.is_empty() {
            report(
                format!("{f}.tls.subjectAltNames[{j}]"),
                "empty; ignored".into(),
            );
        } else if !subject_alt_names.iter().any(|s| s == n) {
            subject_alt_names.push(n.to_owned());
        }
    }
    if subject_alt_names.is_empty() && !t.subject_alt_names.is_empty() {
        report(
            format!("{f}.tls.subjectAltNames"),
            skipped(
                "no name left (without one, any client certificate of the CA would be \
                 accepted)",
            ),
        );
        usable = false;
    }
    usable.then(|| ClientAuth {
        required: mode == "MUTUAL",
        subject_alt_names,
        certificate_hashes,
    })
}

/// Reports what a `SIMPLE` server ignores: the client certificate settings.
fn simple_ignores(f: &str, t: &gateway::ServerTls, report: &mut dyn FnMut(String, String)) {
    let fields = [
        ("caCertificates", !t.ca_certificates.is_empty()),
        ("caCrl", !t.ca_crl.is_empty()),
        (
            "caCertCredentialName",
            !t.ca_cert_credential_name.is_empty(),
        ),
        ("subjectAltNames", !t.subject_alt_names.is_empty()),
        (
            "verifyCertificateHash",
            !t.verify_certificate_hash.is_empty(),
        ),
        (
            "verifyCertificateSpki",
            !t.verify_certificate_spki.is_empty(),
        ),
    ];
    for (field, set) in fields {
        if set {
            report(
                format!("{f}.tls.{field}"),
                "only applies with client certificates (tls.mode MUTUAL or OPTIONAL_MUTUAL), \
                 and SIMPLE asks for none; ignored"
                    .into(),
            );
        }
    }
}

/// A `verifyCertificateHash` entry as lowercase hex without `:` (Envoy takes either
/// form, any case), if it is 64 hex digits.
fn certificate_hash(h: &str) -> Option<String> {
    let hex: String = h
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// Every Gateway and every VirtualService bound to one.
#[derive(Debug, Default)]
pub struct GatewayIndex {
    /// Oldest first.
    gws: Vec<PreparedGateway>,
    /// Prepared for gateways ([`Side::Gateways`]), oldest first.
    vss: Vec<PreparedVs>,
    /// Gateway id → the VirtualServices bound to it (indexes into `vss`, oldest first).
    by_gateway: HashMap<String, Vec<usize>>,
}

impl GatewayIndex {
    /// Parses and prepares `gateways`; prepares every VirtualService of `vss` bound to a
    /// Gateway. Reports a VirtualService none of whose hosts meets a server host of a
    /// Gateway it binds (open to its namespace), and what its routes lose on the ports of
    /// the servers it meets (a destination port the Service lacks).
    pub fn new(
        gateways: &[serde_json::Value],
        vss: Vec<VirtualService>,
        cat: &Catalog<'_>,
        diags: &mut Vec<Diagnostic>,
    ) -> GatewayIndex {
        let mut gws = Vec::new();
        for v in gateways {
            match Gateway::from_json(v) {
                Ok(g) => gws.push(PreparedGateway::new(g, diags)),
                Err(e) => diags.push(e.into()),
            }
        }
        gws.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
        gws.dedup_by(|a, b| a.id == b.id);
        let mut prepared: Vec<PreparedVs> = vss
            .into_iter()
            .filter_map(|vs| PreparedVs::new_for(vs, Side::Gateways, cat, diags))
            .collect();
        prepared.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
        let known: HashMap<&str, &PreparedGateway> =
            gws.iter().map(|g| (g.id.as_str(), g)).collect();
        let mut by_gateway: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, vs) in prepared.iter().enumerate() {
            for (_, g) in &vs.gateways {
                let list = by_gateway.entry(g.clone()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
                // A Gateway not (yet) known is not reported: the Gateways' watcher may
                // not have listed them yet, and an Event stays.
                let Some(gw) = known.get(g.as_str()) else {
                    continue;
                };
                let mut meets = false;
                for s in &gw.servers {
                    if vs_hosts_on(vs, s).is_empty() {
                        continue;
                    }
                    meets = true;
                    port_diagnostics(vs, s, gw, cat, diags);
                }
                if !meets && !gw.servers.is_empty() {
                    diags.push(vs_diag(
                        &vs.meta,
                        "spec.hosts".into(),
                        format!(
                            "no host matches a server host of Gateway {g} open to namespace {}; \
                             not served there",
                            vs.meta.namespace
                        ),
                    ));
                }
            }
        }
        for gw in &gws {
            for s in gw.servers.iter().filter(|s| s.kind == ServerKind::Tcp) {
                let routed = by_gateway.get(&gw.id).into_iter().flatten().any(|&i| {
                    let vs = &prepared[i];
                    !vs_hosts_on(vs, s).is_empty()
                        && tcp_port_route(
                            vs,
                            s.number,
                            cat.services,
                            &AnyGatewayClient(&gw.id),
                            &mut Needed::new(),
                            &mut |_, _| {},
                        )
                        .is_some()
                });
                if !routed {
                    diags.push(gw_diag(
                        &gw.meta,
                        format!("spec.servers[{}]", s.index),
                        format!(
                            "no tcp[] route of a VirtualService bound to this Gateway applies \
                             to port {}; the port is not served",
                            s.number
                        ),
                    ));
                }
            }
        }
        GatewayIndex {
            gws,
            vss: prepared,
            by_gateway,
        }
    }

    /// The Gateways that select a pod with `labels`, oldest first.
    fn selecting<'a>(&'a self, labels: &'a Labels) -> impl Iterator<Item = &'a PreparedGateway> {
        self.gws
            .iter()
            .filter(move |g| labels_match(&g.selector, labels))
    }

    /// Reports, for every set of Gateways that select one pod, the servers the merge
    /// skips (ports compared by number: the bound ports are the pod's).
    pub fn report_conflicts(&self, pods: &[PodRec], diags: &mut Vec<Diagnostic>) {
        if self.gws.is_empty() {
            return;
        }
        let mut sets: BTreeSet<Vec<usize>> = BTreeSet::new();
        for p in pods {
            let set: Vec<usize> = (0..self.gws.len())
                .filter(|&i| labels_match(&self.gws[i].selector, &p.labels))
                .collect();
            if !set.is_empty() {
                sets.insert(set);
            }
        }
        for set in sets {
            let gws: Vec<&PreparedGateway> = set.iter().map(|&i| &self.gws[i]).collect();
            merge(&gws, |n| n, &mut |g, s, message| {
                diags.push(gw_diag(
                    &g.meta,
                    format!("spec.servers[{}]", s.index),
                    message,
                ));
            });
        }
    }

    /// The VirtualServices bound to Gateway `id` that a proxy in `namespace` sees.
    fn bound<'a>(&'a self, id: &str, namespace: &'a str) -> impl Iterator<Item = &'a PreparedVs> {
        self.by_gateway
            .get(id)
            .into_iter()
            .flatten()
            .map(|&i| &self.vss[i])
            .filter(move |v| v.export.visible_to(namespace))
    }
}

/// Gateway `gw`'s view of its entries at build time: those naming it or no gateway (any
/// source), every subset (they were checked against every DestinationRule).
struct AnyGatewayClient<'a>(&'a str);

impl ClientView for AnyGatewayClient<'_> {
    fn selects(&self, e: &Entry) -> bool {
        e.gateways.is_empty() || e.gateways.iter().any(|g| g == self.0)
    }

    fn has_subset(&self, _: usize, _: &str) -> bool {
        true
    }
}

/// Reports what `vs` loses on server `s` of `gw` (its HTTP routes on a plaintext or
/// `SIMPLE` server, its `tls[]` routes on a `PASSTHROUGH` one).
fn port_diagnostics(
    vs: &PreparedVs,
    s: &PreparedServer,
    gw: &PreparedGateway,
    cat: &Catalog<'_>,
    diags: &mut Vec<Diagnostic>,
) {
    let client = AnyGatewayClient(&gw.id);
    let mut report = |field: String, message: String| {
        diags.push(vs_diag(
            &vs.meta,
            field,
            format!("{message} (Gateway {} port {})", gw.id, s.number),
        ));
    };
    match s.kind {
        ServerKind::Tcp => {
            tcp_port_route(
                vs,
                s.number,
                cat.services,
                &client,
                &mut Needed::new(),
                &mut report,
            );
        }
        ServerKind::Passthrough => {
            for rule in &vs.tls {
                weighted_clusters(
                    &rule.dests,
                    rule.single,
                    s.number,
                    cat.services,
                    &client,
                    &mut Needed::new(),
                    &mut report,
                );
            }
        }
        _ => {
            port_routes(
                vs,
                s.number,
                cat.services,
                &client,
                &mut Needed::new(),
                &mut report,
            );
        }
    }
}

/// The servers of one bound port.
struct MergedListener<'a> {
    number: u16,
    /// The first server was plaintext HTTP: only plaintext HTTP servers join.
    plaintext: bool,
    servers: Vec<(&'a PreparedGateway, &'a PreparedServer)>,
    /// SNI hosts of the TLS servers so far, with the server that has each.
    sni: HashMap<String, String>,
}

/// Groups the servers of `gws` (oldest first) by the port `bind` maps their number to;
/// `skipped(gateway, server, why)` for each server left out.
fn merge<'a>(
    gws: &[&'a PreparedGateway],
    bind: impl Fn(u16) -> u16,
    skipped: &mut dyn FnMut(&PreparedGateway, &PreparedServer, String),
) -> BTreeMap<u16, MergedListener<'a>> {
    let mut out: BTreeMap<u16, MergedListener<'a>> = BTreeMap::new();
    for g in gws {
        for s in &g.servers {
            let port = bind(s.number);
            let Some(l) = out.get_mut(&port) else {
                let mut sni = HashMap::new();
                if s.is_tls() {
                    for h in s.patterns() {
                        sni.insert(h, s.name.clone());
                    }
                }
                out.insert(
                    port,
                    MergedListener {
                        number: s.number,
                        plaintext: !s.is_tls(),
                        servers: vec![(g, s)],
                        sni,
                    },
                );
                continue;
            };
            let first = l
                .servers
                .first()
                .map(|(_, f)| f.name.clone())
                .unwrap_or_default();
            if matches!(s.kind, ServerKind::Tcp)
                || l.servers.iter().any(|(_, f)| f.kind == ServerKind::Tcp)
            {
                skipped(
                    g,
                    s,
                    format!(
                        "port {} already has a server ({first}); a TCP server takes a port \
                         alone; server skipped",
                        s.number
                    ),
                );
                continue;
            }
            if l.number != s.number {
                skipped(
                    g,
                    s,
                    format!(
                        "port {} binds gateway port {port}, which port {} of {first} already \
                         binds; server skipped",
                        s.number, l.number
                    ),
                );
                continue;
            }
            match (l.plaintext, s.is_tls()) {
                (true, false) => l.servers.push((g, s)),
                (true, true) => skipped(
                    g,
                    s,
                    format!(
                        "port {} already has a plaintext server ({first}); a TLS server \
                         cannot share it; server skipped",
                        s.number
                    ),
                ),
                (false, false) => skipped(
                    g,
                    s,
                    format!(
                        "port {} already has a TLS server ({first}); a plaintext server \
                         cannot share it; server skipped",
                        s.number
                    ),
                ),
                (false, true) => {
                    let hosts = s.patterns();
                    if let Some((h, other)) = hosts
                        .iter()
                        .find_map(|h| l.sni.get(h).map(|o| (h.clone(), o.clone())))
                    {
                        skipped(
                            g,
                            s,
                            format!(
                                "host {h} of port {} is already served by {other}; server skipped",
                                s.number
                            ),
                        );
                        continue;
                    }
                    for h in hosts {
                        l.sni.insert(h, s.name.clone());
                    }
                    l.servers.push((g, s));
                }
            }
        }
    }
    out
}

/// The gateway proxy as routes see it: entries naming `gateway`, or naming no gateway
/// and whose source conditions select the pod.
struct GatewayClient<'a> {
    gateway: &'a str,
    client: Client<'a>,
}

impl ClientView for GatewayClient<'_> {
    fn selects(&self, e: &Entry) -> bool {
        if e.gateways.is_empty() {
            self.client.source_selects(e)
        } else {
            e.gateways.iter().any(|g| g == self.gateway)
        }
    }

    fn has_subset(&self, svc: usize, subset: &str) -> bool {
        self.client.has_subset(svc, subset)
    }
}

/// Virtual hosts being merged, by name.
#[derive(Default)]
struct Vhosts {
    hosts: BTreeMap<String, VhostBuild>,
}

#[derive(Default)]
struct VhostBuild {
    routes: Vec<HttpRoute>,
    https_redirect: bool,
    /// The VirtualServices whose routes it has.
    from: BTreeSet<String>,
}

impl Vhosts {
    fn finish(self) -> Vec<VirtualHost> {
        self.hosts
            .into_iter()
            .map(|(name, b)| VirtualHost {
                domains: vec![name.clone()],
                name,
                https_redirect: b.https_redirect,
                routes: if b.from.len() > 1 {
                    catch_alls_last(b.routes)
                } else {
                    b.routes
                },
            })
            .collect()
    }
}

/// A match that takes every request (Istio's `IsCatchAllRoute`: `/` prefix or any
/// regex path, no other condition).
fn catch_all(m: &RequestMatch) -> bool {
    let any_path = match &m.uri {
        None => true,
        Some(StringMatch::Prefix(p)) => p == "/",
        Some(StringMatch::Regex(r)) => r == ".*" || r == "*",
        Some(StringMatch::Exact(_)) => false,
    };
    any_path
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
}

/// Istio's `SortVHostRoutes` for merged VirtualServices: catch-all routes (and the
/// catch-all match of a route, split off) move to the end, the rest keep their order.
fn catch_alls_last(routes: Vec<HttpRoute>) -> Vec<HttpRoute> {
    let mut head = Vec::with_capacity(routes.len());
    let mut tail = Vec::new();
    for r in routes {
        if r.matches.is_empty() {
            tail.push(r);
            continue;
        }
        let (rest, all): (Vec<RequestMatch>, Vec<RequestMatch>) =
            r.matches.iter().cloned().partition(|m| !catch_all(m));
        if all.is_empty() {
            head.push(r);
        } else {
            if !rest.is_empty() {
                head.push(HttpRoute {
                    matches: rest,
                    ..r.clone()
                });
            }
            tail.push(HttpRoute { matches: all, ..r });
        }
    }
    head.extend(tail);
    head
}

/// Least specific host first is worst: sorts servers or routes so that a first-match
/// proxy picks the most specific where hosts do not overlap within one entry.
fn least_specific(hosts: &[String]) -> usize {
    hosts.iter().map(|h| match_rank(h)).min().unwrap_or(0)
}

/// A Secret's certificate and key: Istio's generic `cert` / `key` first, then
/// `kubernetes.io/tls`'s `tls.crt` / `tls.key`.
pub const SECRET_KEYS: [(&str, &str); 2] = [("cert", "key"), ("tls.crt", "tls.key")];

/// A Secret's client CA and the CRL that goes with it: Istio's generic `cacert` / `crl`
/// first, then `kubernetes.io/tls`'s `ca.crt` / `ca.crl`.
pub const CA_KEYS: [(&str, &str); 2] = [("cacert", "crl"), ("ca.crt", "ca.crl")];

/// The suffix of the Secret that holds a credential's client CA apart from it
/// (`<credentialName>-cacert`, Istio's).
pub const CA_SECRET_SUFFIX: &str = "-cacert";

impl Snapshot {
    /// What gateway pod `node` serves (`Key::Gateway`): `NotFound` when no Gateway selects
    /// it (or the pod is unknown).
    pub(super) fn gateway(&self, node: &ProxyNode) -> Resource {
        let Some(pod) = self
            .pod_by_name
            .get(&node.namespace)
            .and_then(|m| m.get(&node.pod_name))
            .map(|&i| &self.pods[i])
        else {
            return Resource::NotFound;
        };
        let selected: Vec<&PreparedGateway> = self.gws.selecting(&pod.labels).collect();
        if selected.is_empty() {
            return Resource::NotFound;
        }
        let merged = merge(&selected, |n| self.bind_port(pod, n), &mut |_, _, _| {});
        let mut needed = Needed::new();
        let mut listeners = Vec::new();
        for (port, l) in merged {
            let mut listener = GatewayListener {
                tcp: None,
                port,
                number: l.number,
                http: Vec::new(),
                tls: Vec::new(),
            };
            if let [(g, s)] = l.servers.as_slice()
                && s.kind == ServerKind::Tcp
            {
                // No route: the port is not bound (reported at build time).
                let Some(route) = self.tcp_route(g, s, pod, &mut needed) else {
                    continue;
                };
                listener.tcp = Some(route);
            } else if l.plaintext {
                let mut vh = Vhosts::default();
                for (g, s) in &l.servers {
                    self.server_vhosts(g, s, pod, &mut vh, &mut needed);
                }
                listener.http = vh.finish();
            } else {
                for (g, s) in &l.servers {
                    let mode = match &s.kind {
                        ServerKind::Simple {
                            credential_name,
                            client,
                        } => {
                            let mut vh = Vhosts::default();
                            self.server_vhosts(g, s, pod, &mut vh, &mut needed);
                            let (certificate, why, client_certificates) =
                                self.tls_material(node, pod, credential_name, client.as_ref());
                            TlsServerMode::Simple {
                                credential_name: credential_name.clone(),
                                certificate,
                                why,
                                client_certificates,
                                virtual_hosts: vh.finish(),
                            }
                        }
                        ServerKind::Passthrough => TlsServerMode::Passthrough {
                            routes: self.passthrough_routes(g, s, pod, &mut needed),
                        },
                        ServerKind::Http { .. } | ServerKind::Tcp => continue,
                    };
                    listener.tls.push(TlsServer {
                        name: s.name.clone(),
                        hosts: s.patterns(),
                        mode,
                    });
                }
                listener
                    .tls
                    .sort_by_key(|t| std::cmp::Reverse(least_specific(&t.hosts)));
            }
            listeners.push(listener);
        }
        let labels = &pod.labels;
        let mut clusters: Vec<Cluster> = needed
            .iter()
            .map(|(d, q, sub)| {
                let mut c = self.cluster(node, labels, *d, *q, sub.as_deref());
                c.protocol = self.services[*d].port(*q).map(|p| p.protocol);
                c
            })
            .collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        clusters.dedup_by(|a, b| a.name == b.name);
        let mut gateways: Vec<String> = selected.iter().map(|g| g.id.clone()).collect();
        gateways.sort();
        Resource::Gateway(OutGateway {
            gateways,
            listeners,
            clusters,
        })
    }

    /// The port the pod binds for Gateway port `number` (see the module docs).
    fn bind_port(&self, pod: &PodRec, number: u16) -> u16 {
        for s in self.services_of(pod) {
            let svc = &self.services[s];
            if !svc.gateway_port_translation {
                continue;
            }
            if let Some(p) = svc.port(number) {
                return target_port(&p.target, pod).unwrap_or(number);
            }
        }
        number
    }

    fn client<'a>(&'a self, gateway: &'a str, pod: &'a PodRec) -> GatewayClient<'a> {
        GatewayClient {
            gateway,
            client: Client {
                namespace: &pod.namespace,
                labels: &pod.labels,
                services: &self.services,
                drs: &self.drs,
            },
        }
    }

    /// Adds the virtual hosts of server `s` of Gateway `g` to `out`.
    fn server_vhosts(
        &self,
        g: &PreparedGateway,
        s: &PreparedServer,
        pod: &PodRec,
        out: &mut Vhosts,
        needed: &mut Needed,
    ) {
        let client = self.client(&g.id, pod);
        let redirect = matches!(
            s.kind,
            ServerKind::Http {
                https_redirect: true
            }
        );
        for vs in self.gws.bound(&g.id, &pod.namespace) {
            let hosts = vs_hosts_on(vs, s);
            if hosts.is_empty() {
                continue;
            }
            let routes = port_routes(
                vs,
                s.number,
                &self.services,
                &client,
                needed,
                &mut |_, _| {},
            );
            for h in hosts {
                let b = out.hosts.entry(h).or_default();
                b.https_redirect |= redirect;
                b.from.insert(vs.id.clone());
                for r in &routes {
                    if !b.routes.contains(r) {
                        b.routes.push(r.clone());
                    }
                }
            }
        }
        if redirect {
            for h in s.patterns() {
                out.hosts.entry(h).or_default().https_redirect = true;
            }
        }
    }

    /// The `tcp[]` route of TCP server `s` of `g`: the first rule, of the VirtualServices
    /// bound to `g` whose hosts meet the server's (oldest first), that applies to the
    /// Gateway and its port number and keeps a destination.
    fn tcp_route(
        &self,
        g: &PreparedGateway,
        s: &PreparedServer,
        pod: &PodRec,
        needed: &mut Needed,
    ) -> Option<mesh_config::TcpRoute> {
        let client = self.client(&g.id, pod);
        self.gws
            .bound(&g.id, &pod.namespace)
            .filter(|vs| !vs_hosts_on(vs, s).is_empty())
            .find_map(|vs| {
                tcp_port_route(
                    vs,
                    s.number,
                    &self.services,
                    &client,
                    needed,
                    &mut |_, _| {},
                )
            })
    }

    /// The `tls[]` routes of the VirtualServices bound to `g` for passthrough server `s`.
    fn passthrough_routes(
        &self,
        g: &PreparedGateway,
        s: &PreparedServer,
        pod: &PodRec,
        needed: &mut Needed,
    ) -> Vec<TlsRoute> {
        let client = self.client(&g.id, pod);
        let mut taken: BTreeSet<String> = BTreeSet::new();
        let mut out = Vec::new();
        for vs in self.gws.bound(&g.id, &pod.namespace) {
            if vs_hosts_on(vs, s).is_empty() {
                continue;
            }
            for rule in &vs.tls {
                let mut sni: Vec<String> = Vec::new();
                for m in &rule.matches {
                    if m.port.is_some_and(|p| p != s.number)
                        || (!m.gateways.is_empty() && !m.gateways.contains(&g.id))
                    {
                        continue;
                    }
                    let mut hosts: Vec<String> = Vec::new();
                    for h in &m.sni_hosts {
                        for sh in &s.hosts {
                            if let Some(i) = intersect(&sh.host, h)
                                && !hosts.contains(&i)
                            {
                                hosts.push(i);
                            }
                        }
                    }
                    if hosts.is_empty() || hosts.iter().any(|h| taken.contains(h)) {
                        continue;
                    }
                    taken.extend(hosts.iter().cloned());
                    sni.extend(hosts);
                }
                if sni.is_empty() {
                    continue;
                }
                let mut scratch = Needed::new();
                let destinations = weighted_clusters(
                    &rule.dests,
                    rule.single,
                    s.number,
                    &self.services,
                    &client,
                    &mut scratch,
                    &mut |_, _| {},
                );
                if destinations.is_empty() {
                    continue;
                }
                needed.extend(scratch);
                sni.sort();
                sni.dedup();
                out.push(TlsRoute {
                    virtual_service: vs.id.clone(),
                    sni_hosts: sni,
                    destinations,
                });
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(least_specific(&r.sni_hosts)));
        out
    }

    /// The certificate of Secret `name` in the pod's namespace, if the stream may have it;
    /// else why not.
    fn credential(
        &self,
        node: &ProxyNode,
        pod: &PodRec,
        name: &str,
    ) -> (Option<Certificate>, String) {
        let ns = &pod.namespace;
        let expected = spiffe_id(&self.settings.trust_domain, ns, &pod.meta.service_account);
        match node.identity.as_deref() {
            None => return (None, NOT_AUTHENTICATED.into()),
            Some(id) if id != expected => {
                return (
                    None,
                    format!(
                        "the config stream is authenticated as {id}, not as the gateway pod \
                         ({expected})"
                    ),
                );
            }
            Some(_) => {}
        }
        if name.contains('/') {
            return (
                None,
                format!(
                    "credentialName {name:?}: name a Secret of the gateway's namespace {ns}, \
                     without a namespace"
                ),
            );
        }
        let Some(secret) = self.secrets.get(&(ns.clone(), name.to_owned())) else {
            return (None, format!("Secret {ns}/{name} not found"));
        };
        let data = secret.data.as_ref();
        let get = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.as_slice());
        let Some((ck, kk, chain, key)) = SECRET_KEYS
            .iter()
            .find_map(|(c, k)| Some((*c, *k, get(c)?, get(k)?)))
        else {
            let tls = secret.type_.as_deref() == Some("kubernetes.io/tls");
            let why = if tls {
                format!("Secret {ns}/{name} has no tls.crt and tls.key")
            } else {
                format!(
                    "Secret {ns}/{name} is not a kubernetes.io/tls Secret and has no cert and \
                     key (Istio's generic layout)"
                )
            };
            return (None, why);
        };
        let chain_pem = match pem_text(chain, "CERTIFICATE") {
            Ok(t) => t,
            Err(e) => return (None, format!("Secret {ns}/{name}: {ck} {e}")),
        };
        let key_pem = match pem_text(key, "PRIVATE KEY") {
            Ok(t) => t,
            Err(e) => return (None, format!("Secret {ns}/{name}: {kk} {e}")),
        };
        (Some(Certificate { chain_pem, key_pem }), String::new())
    }

    /// A terminating server's certificate (Secret `name`, [`Self::credential`]), why it
    /// has none, and for the mutual modes (`client`) its client checks with the CA
    /// ([`Self::client_ca`]). The CA is looked up only once the certificate may be sent
    /// (the same stream checks), and a certificate whose CA is missing or bad is not sent
    /// either: the server's handshakes fail rather than skip the check.
    fn tls_material(
        &self,
        node: &ProxyNode,
        pod: &PodRec,
        name: &str,
        client: Option<&ClientAuth>,
    ) -> (Option<Certificate>, String, Option<ClientCertificates>) {
        let (mut certificate, mut why) = self.credential(node, pod, name);
        let Some(c) = client else {
            return (certificate, why, None);
        };
        let mut cc = ClientCertificates {
            required: c.required,
            ca_pem: String::new(),
            crl_pem: String::new(),
            subject_alt_names: c.subject_alt_names.clone(),
            certificate_hashes: c.certificate_hashes.clone(),
        };
        if certificate.is_some() {
            match self.client_ca(&pod.namespace, name, c.mode()) {
                Ok((ca, crl)) => {
                    cc.ca_pem = ca;
                    cc.crl_pem = crl;
                }
                Err(e) => {
                    certificate = None;
                    why = e;
                }
            }
        }
        (certificate, why, Some(cc))
    }

    /// The client CA (PEM) and CRLs (PEM, maybe empty) of credential `name` in namespace
    /// `ns`, as istiod's `GetCaCert` finds them: Secret `<name>-cacert` if it exists, else
    /// Secret `name`; in it `cacert` (with CRL `crl`), else `ca.crt` (with `ca.crl`), an
    /// empty value counting as none. Both are checked as the proxy loads them (a CA or CRL
    /// it refuses would fail its whole config). Else why not (`mode` names the server's).
    fn client_ca(&self, ns: &str, name: &str, mode: &str) -> Result<(String, String), String> {
        let cacert = format!("{name}{CA_SECRET_SUFFIX}");
        let (chosen, secret) = match self.secrets.get(&(ns.to_owned(), cacert.clone())) {
            Some(s) => (cacert.clone(), s),
            None => match self.secrets.get(&(ns.to_owned(), name.to_owned())) {
                Some(s) => (name.to_owned(), s),
                None => {
                    return Err(format!(
                        "{mode} needs the client CA: neither Secret {ns}/{cacert} nor Secret \
                         {ns}/{name} found"
                    ));
                }
            },
        };
        let data = secret.data.as_ref();
        let get = |k: &str| {
            data.and_then(|d| d.get(k))
                .map(|b| b.0.as_slice())
                .filter(|b| !b.is_empty())
        };
        let Some((ca_key, crl_key, ca)) = CA_KEYS.iter().find_map(|(c, r)| Some((*c, *r, get(c)?)))
        else {
            let (c0, c1) = (CA_KEYS[0].0, CA_KEYS[1].0);
            return Err(if chosen == name {
                format!(
                    "{mode} needs the client CA: Secret {ns}/{cacert} not found and Secret \
                     {ns}/{name} has no {c0} or {c1}"
                )
            } else {
                format!("{mode} needs the client CA: Secret {ns}/{chosen} has no {c0} or {c1}")
            });
        };
        let ca_pem = pem_text(ca, "CERTIFICATE").map_err(|e| {
            format!("{mode} needs the client CA: Secret {ns}/{chosen}: {ca_key} {e}")
        })?;
        let crl_pem = match get(crl_key) {
            None => String::new(),
            Some(crl) => pem_text(crl, "X509 CRL")
                .map_err(|e| format!("{mode}: Secret {ns}/{chosen}: {crl_key} {e}"))?,
        };
        client_verifier_accepts(&ca_pem, &crl_pem).map_err(|e| match e {
            VerifierRefusal::Ca(e) => {
                format!("{mode} needs the client CA: Secret {ns}/{chosen}: {ca_key}: {e}")
            }
            VerifierRefusal::Crl(e) => format!("{mode}: Secret {ns}/{chosen}: {crl_key}: {e}"),
        })?;
        Ok((ca_pem, crl_pem))
    }

    /// The verified SPIFFE id the pod `node` names would have (its ServiceAccount's), if
    /// the pod is known.
    pub fn pod_identity(&self, node: &ProxyNode) -> Option<String> {
        let i = self.pod_by_name.get(&node.namespace)?.get(&node.pod_name)?;
        let pod = &self.pods[*i];
        Some(spiffe_id(
            &self.settings.trust_domain,
            &pod.namespace,
            &pod.meta.service_account,
        ))
    }
}

/// The hosts of `vs` on server `s`: each VirtualService host intersected with each server
/// host open to its namespace, deduplicated.
fn vs_hosts_on(vs: &PreparedVs, s: &PreparedServer) -> Vec<String> {
    let mut out = Vec::new();
    for (_, h) in &vs.hosts {
        let h = h.to_string();
        for sh in s
            .hosts
            .iter()
            .filter(|sh| sh.visible_to(&vs.meta.namespace))
        {
            if let Some(i) = intersect(&sh.host, &h)
                && valid_pattern(&i)
                && !out.contains(&i)
            {
                out.push(i);
            }
        }
    }
    out
}

/// What a proxy refuses of a client CA bundle and CRLs.
enum VerifierRefusal {
    Ca(String),
    Crl(String),
}

/// Whether the proxy's client verifier takes `ca_pem` and `crl_pem` (as it loads them:
/// every `CERTIFICATE` block a trust anchor, at least one; every `X509 CRL` block a CRL).
fn client_verifier_accepts(ca_pem: &str, crl_pem: &str) -> Result<(), VerifierRefusal> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
    let mut roots = rustls::RootCertStore::empty();
    for (i, der) in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).enumerate() {
        let der = der.map_err(|e| VerifierRefusal::Ca(format!("does not parse: {e}")))?;
        roots.add(der).map_err(|e| {
            VerifierRefusal::Ca(format!("certificate {} does not load as a CA: {e}", i + 1))
        })?;
    }
    if roots.is_empty() {
        return Err(VerifierRefusal::Ca("holds no PEM CERTIFICATE".into()));
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(crl_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| VerifierRefusal::Crl(format!("does not parse: {e}")))?;
    let has_crls = !crls.is_empty();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls)
        .build()
        .map(|_| ())
        .map_err(|e| {
            if has_crls {
                VerifierRefusal::Crl(e.to_string())
            } else {
                VerifierRefusal::Ca(e.to_string())
            }
        })
}

/// `bytes` as PEM text with at least one block whose tag ends with `tag`.
fn pem_text(bytes: &[u8], tag: &str) -> Result<String, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not PEM text".to_owned())?;
    let blocks = pem::parse_many(text).map_err(|e| format!("is not PEM: {e}"))?;
    if !blocks.iter().any(|b| b.tag().ends_with(tag)) {
        return Err(format!("holds no PEM {tag}"));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn subsets_follow_istio() {
        assert!(subset_of("a.com", "a.com"));
        assert!(subset_of("a.com", "*"));
        assert!(subset_of("a.b.com", "*.com"));
        assert!(subset_of("*.a.com", "*.com"));
        assert!(subset_of("*.com", "*.com"));
        assert!(subset_of("*", "*"));
        assert!(subset_of("*.com", "*"));
        assert!(!subset_of("*", "*.com"));
        assert!(!subset_of("*.com", "a.com"));
        assert!(
            !subset_of("a.com", "*.a.com"),
            "a wildcard needs one more label"
        );
        assert!(!subset_of("xa.com", "*.a.com"));
        assert!(!subset_of("a.com", "b.com"));
    }

    #[test]
    fn intersections_are_the_more_specific_host() {
        let i = |a, b| intersect(a, b);
        // A wildcard server host and a VirtualService's names (both ways).
        assert_eq!(i("*", "bookinfo.com").as_deref(), Some("bookinfo.com"));
        assert_eq!(i("bookinfo.com", "*").as_deref(), Some("bookinfo.com"));
        assert_eq!(
            i("*.example.com", "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            i("a.example.com", "*.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            i("*.com", "*.example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(i("*", "*").as_deref(), Some("*"));
        assert_eq!(i("a.com", "a.com").as_deref(), Some("a.com"));
        assert_eq!(i("*.example.com", "example.com"), None);
        assert_eq!(i("a.com", "b.com"), None);
        assert_eq!(i("*.a.com", "*.b.com"), None);
    }

    #[test]
    fn catch_alls_move_last_when_merged() {
        let r = |name: &str, matches: Vec<RequestMatch>| HttpRoute {
            name: name.into(),
            virtual_service: "ns/vs".into(),
            matches,
            action: mesh_config::RouteAction::DirectResponse {
                status: 200,
                body: String::new(),
            },
            fault: None,
            request_headers: Default::default(),
            response_headers: Default::default(),
            rewrite: None,
            timeout_ms: None,
            retry: None,
            mirrors: Vec::new(),
            cors: None,
        };
        let prefix = |p: &str| RequestMatch {
            uri: Some(StringMatch::Prefix(p.into())),
            ..RequestMatch::default()
        };
        let out = catch_alls_last(vec![
            r("all", vec![]),
            r("mixed", vec![prefix("/a"), prefix("/")]),
            r("b", vec![prefix("/b")]),
        ]);
        let names: Vec<(&str, usize)> = out
            .iter()
            .map(|r| (r.name.as_str(), r.matches.len()))
            .collect();
        assert_eq!(names, [("mixed", 1), ("b", 1), ("all", 0), ("mixed", 1)]);
        assert_eq!(out[3].matches[0], prefix("/"));
    }
}
