//! Cluster state → per-proxy config, with no I/O.
//!
//! [`Snapshot::build`] indexes everything the watchers hold ([`Objects`]) once per change
//! and reports bad objects ([`Diagnostic`]) while skipping only what is bad (one rule or
//! one object at a time). [`Snapshot::resolve`] answers one proxy's one key.
//!
//! Modules, in dependency order: `hosts` (names, host patterns, `exportTo`),
//! `workloads` (pods and their peer metadata), `services` (Services and their
//! endpoints), `resilience` (timeouts, retries, connection pools, outlier detection:
//! one Istio block → its config, with Istio's defaults and ranges), `policy`
//! (DestinationRules: lookup, subsets, and per cluster the load balancer, connection
//! pool and outlier detection), `routes` (VirtualServices → HTTP routes, with their
//! timeouts and retries), `gateways` (Gateways → a gateway pod's listeners, for
//! `Key::Gateway`); this file puts a [`Resource`] together: every port that
//! carries routes (HTTP, or sniffed) gets Istio's default retry policy for the requests
//! no route takes ([`ServicePort::default_retry`]), a TCP port none; every `tcp` or
//! sniffed port gets the `tcp[]` route that applies to it ([`ServicePort::tcp_route`]).
//!
//! The one input besides the objects is [`MeshSettings`], `compatibility_version`
//! included (`mesh-control serve --compatibility-version`).
//!
//! Cost: `build` is linear in the objects (plus, per VirtualService, one pass over the
//! ports of the Services it binds, for diagnostics); `resolve` does hash lookups (pod,
//! Service by IP or name, VirtualService by host, DestinationRules by namespace and host)
//! and then work proportional to the answer only: the bound VirtualService's rules per
//! port, and the endpoints of the clusters they name. Nothing in `resolve` walks all
//! Services, pods or rules, except VirtualServices and DestinationRules with wildcard
//! hosts, which are scanned in order of specificity. Gateways: `build` also checks each
//! pod's labels against each Gateway's selector (the conflicts between servers are
//! reported per set of Gateways a pod has), and `resolve` for `Key::Gateway` walks the
//! Gateways, then only the selecting ones' servers and the VirtualServices bound to them.

mod authz;
mod gateways;
mod hosts;
mod policy;
mod resilience;
mod routes;
mod security;
mod services;
mod workloads;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_config::cluster::cluster_name;
use mesh_config::{
    Cluster, ClusterTls, ClusterTlsMode, Endpoint, InboundPort, InboundService, Key, LoadBalancer,
    Resource, Service as OutService, ServicePort, Workload,
};

use crate::istio::{self, DestinationRule, ParseError, VirtualService};
use authz::ApIndex;
use gateways::GatewayIndex;
pub use gateways::{CA_KEYS, CA_SECRET_SUFFIX, NOT_AUTHENTICATED, SECRET_KEYS};
use hosts::{HostPattern, labels_match, search_names};
use policy::{DrIndex, PreparedDr};
use routes::{
    AnyClient, Catalog, Client, Needed, PreparedVs, VsIndex, l4_protocol, port_routes,
    routed_protocol, tcp_port_route,
};
use security::PaIndex;
use services::{SERVICE_NAME_LABEL, SvcRec, target_port};
use workloads::PodRec;

/// Everything mesh-control watches, as the API server returned it.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub services: Vec<Arc<Service>>,
    /// `discovery.k8s.io/v1` (a `v1beta1` slice is converted to it by the watcher).
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
    pub namespaces: Vec<Arc<Namespace>>,
    /// `networking.istio.io` objects of any served version, as JSON
    /// (`apiVersion`, `kind`, `metadata`, `spec`).
    pub virtual_services: Vec<serde_json::Value>,
    pub destination_rules: Vec<serde_json::Value>,
    /// `security.istio.io` PeerAuthentications and AuthorizationPolicies, as JSON.
    pub peer_authentications: Vec<serde_json::Value>,
    pub authorization_policies: Vec<serde_json::Value>,
    /// `networking.istio.io` Gateways, as JSON.
    pub gateways: Vec<serde_json::Value>,
    /// The Secrets a Gateway's `credentialName` may name, and their `-cacert` companions
    /// (the watchers keep `kubernetes.io/tls` and `Opaque` ones, each trimmed to its
    /// certificate and key and its client CA and CRLs).
    pub secrets: Vec<Arc<Secret>>,
}

/// Mesh-wide settings.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// Istio's `rootNamespace`: DestinationRules there apply mesh-wide (last in lookup).
    pub root_namespace: String,
    pub cluster_domain: String,
    pub trust_domain: String,
    /// Istio's `compatibilityVersion`: `None` is the current behaviour. Below 1.24 the
    /// default retry policy also retries 503s (`resilience::default_retry`).
    pub compatibility_version: Option<CompatibilityVersion>,
}

impl Default for MeshSettings {
    fn default() -> MeshSettings {
        MeshSettings {
            root_namespace: "istio-system".into(),
            cluster_domain: mesh_config::CLUSTER_DOMAIN.into(),
            trust_domain: mesh_config::DEFAULT_TRUST_DOMAIN.into(),
            compatibility_version: None,
        }
    }
}

/// An Istio release, `MAJOR.MINOR`, whose defaults to keep where later releases changed
/// them (Istio's `compatibilityVersion`). Ordered as versions are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CompatibilityVersion {
    pub major: u32,
    pub minor: u32,
}

impl CompatibilityVersion {
    /// `1.23`: two decimal numbers and one dot, nothing else.
    pub fn parse(text: &str) -> Result<CompatibilityVersion, String> {
        let bad = || format!("{text:?} is not a MAJOR.MINOR version such as 1.23");
        let (major, minor) = text.split_once('.').ok_or_else(bad)?;
        let num = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse::<u32>().map_err(|_| bad())
        };
        Ok(CompatibilityVersion {
            major: num(major)?,
            minor: num(minor)?,
        })
    }
}

impl std::str::FromStr for CompatibilityVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<CompatibilityVersion, String> {
        CompatibilityVersion::parse(s)
    }
}

impl std::fmt::Display for CompatibilityVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The proxy asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyNode {
    pub namespace: String,
    pub pod_name: String,
    /// The SPIFFE id of the config stream's client certificate, verified against the
    /// mesh's root (the TLS port); `None` on the plaintext port or without one. A gateway
    /// gets its Secrets' keys only when this is its pod's own identity.
    pub identity: Option<String>,
}

impl ProxyNode {
    /// A proxy whose stream is not authenticated.
    pub fn new(namespace: impl Into<String>, pod_name: impl Into<String>) -> ProxyNode {
        ProxyNode {
            namespace: namespace.into(),
            pod_name: pod_name.into(),
            identity: None,
        }
    }
}

/// Something wrong with one object, and what was skipped because of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// `VirtualService`, `DestinationRule`, `Service`, ...
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The field path: `spec.http[1].match[0].uri.regex`.
    pub field: String,
    /// What is wrong and what was skipped: `invalid regex "(": ...; rule skipped`.
    pub message: String,
}

impl From<ParseError> for Diagnostic {
    fn from(e: ParseError) -> Diagnostic {
        Diagnostic {
            kind: e.kind.into(),
            namespace: e.namespace,
            name: e.name,
            field: e.field,
            message: format!("{}; object skipped", e.message),
        }
    }
}

impl Diagnostic {
    fn sort_key(&self) -> (&str, &str, &str, &str, &str) {
        (
            &self.kind,
            &self.namespace,
            &self.name,
            &self.field,
            &self.message,
        )
    }
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// The indexed state; cheap to query, rebuilt on every (debounced) change.
#[derive(Debug, Default)]
pub struct Snapshot {
    settings: MeshSettings,
    /// Sorted by namespace, then name.
    services: Vec<SvcRec>,
    svc_by_fqdn: HashMap<String, usize>,
    svc_by_ip: HashMap<IpAddr, usize>,
    /// namespace → `key=value` of the first selector label → Services (for a pod's
    /// Services without walking its namespace's).
    svc_by_selector: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Sorted by namespace, then name.
    pods: Vec<PodRec>,
    pod_by_name: HashMap<String, HashMap<String, usize>>,
    pod_by_ip: HashMap<IpAddr, usize>,
    vs: VsIndex,
    drs: DrIndex,
    pas: PaIndex,
    aps: ApIndex,
    gws: GatewayIndex,
    /// `(namespace, name)` → Secret.
    secrets: HashMap<(String, String), Arc<Secret>>,
}

impl Snapshot {
    /// Indexes `objects`; every bad object or rule is reported and left out.
    pub fn build(objects: Objects, settings: &MeshSettings) -> (Snapshot, Vec<Diagnostic>) {
        let domain = settings.cluster_domain.as_str();
        let mut diags = Vec::new();

        let mut pods: Vec<PodRec> = objects.pods.iter().filter_map(|p| PodRec::new(p)).collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        let mut pod_by_name: HashMap<String, HashMap<String, usize>> = HashMap::new();
        let mut pod_by_ip = HashMap::new();
        for (i, p) in pods.iter().enumerate() {
            pod_by_name
                .entry(p.namespace.clone())
                .or_default()
                .insert(p.name.clone(), i);
            for ip in &p.ips {
                pod_by_ip.entry(*ip).or_insert(i);
            }
        }

        let pas = PaIndex::new(
            &objects.peer_authentications,
            &settings.root_namespace,
            &mut diags,
        );

        let aps = ApIndex::new(
            &objects.authorization_policies,
            &settings.root_namespace,
            &mut diags,
        );

        let mut services: Vec<SvcRec> = objects
            .services
            .iter()
            .filter_map(|s| SvcRec::new(s, domain))
            .collect();
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        services.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        let mut slices: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for s in objects.endpoint_slices.iter().map(|s| &**s) {
            let Some(svc) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let ns = s
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            slices.entry((ns, svc.clone())).or_default().push(s);
        }
        for list in slices.values_mut() {
            list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        let mut svc_by_fqdn = HashMap::new();
        let mut svc_by_ip = HashMap::new();
        let mut svc_by_selector: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
        for (i, svc) in services.iter_mut().enumerate() {
            let key = (svc.namespace.clone(), svc.name.clone());
            let own = slices.get(&key).map(Vec::as_slice).unwrap_or_default();
            svc.fill_endpoints(own, &pod_by_name, &pod_by_ip);
            for port in &mut svc.ports {
                for ep in &mut port.endpoints {
                    let Some(p) = ep.pod else { continue };
                    let pod = &pods[p];
                    ep.endpoint.peer = Some(pod.meta.clone());
                    // Auto mTLS: the pod says its proxy takes Istio mTLS, and its
                    // PeerAuthentication does not turn mTLS off on this port.
                    ep.endpoint.mtls = pod
                        .labels
                        .get(mesh_common::labels::TLS_MODE)
                        .map(String::as_str)
                        == Some(mesh_common::identity::TLS_MODE_ISTIO)
                        && pas
                            .inbound(&pod.namespace, &pod.labels)
                            .mode_for(ep.endpoint.addr.port())
                            != mesh_config::MtlsMode::Disable;
                }
            }
            svc_by_fqdn.insert(svc.fqdn.clone(), i);
            for ip in &svc.addresses {
                svc_by_ip.entry(*ip).or_insert(i);
            }
            if let Some((k, v)) = svc.selector.iter().next() {
                svc_by_selector
                    .entry(svc.namespace.clone())
                    .or_default()
                    .entry(format!("{k}={v}"))
                    .or_default()
                    .push(i);
            }
        }

        let mut drs = Vec::new();
        for v in &objects.destination_rules {
            match DestinationRule::from_json(v) {
                Ok(dr) => drs.extend(PreparedDr::new(dr, domain, &mut diags)),
                Err(e) => diags.push(e.into()),
            }
        }
        for r in &drs {
            let known = match &r.host {
                HostPattern::Exact(h) => svc_by_fqdn.contains_key(h),
                HostPattern::Wildcard(_) => services.iter().any(|s| r.host.matches(&s.fqdn)),
            };
            if !known {
                diags.push(Diagnostic {
                    kind: istio::destination_rule::KIND.into(),
                    namespace: r.meta.namespace.clone(),
                    name: r.meta.name.clone(),
                    field: "spec.host".into(),
                    message: format!("host {} matches no Service; the rule has no effect", r.host),
                });
            }
        }
        let drs = DrIndex::new(drs, &settings.root_namespace, &mut diags);

        let mut vss = Vec::new();
        let gws = {
            let default_retry = resilience::default_retry(settings.compatibility_version);
            let cat = Catalog {
                services: &services,
                by_fqdn: &svc_by_fqdn,
                drs: &drs,
                domain,
                default_retry: &default_retry,
            };
            let mut for_gateways = Vec::new();
            for v in &objects.virtual_services {
                match VirtualService::from_json(v) {
                    Ok(vs) => {
                        if vs.spec.gateways.iter().any(|g| g != routes::MESH) {
                            for_gateways.push(vs.clone());
                        }
                        vss.extend(PreparedVs::new(vs, &cat, &mut diags));
                    }
                    Err(e) => diags.push(e.into()),
                }
            }
            GatewayIndex::new(&objects.gateways, for_gateways, &cat, &mut diags)
        };
        gws.report_conflicts(&pods, &mut diags);
        let secrets = objects
            .secrets
            .iter()
            .filter_map(|s| {
                let name = s.metadata.name.clone()?;
                let ns = s
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                Some(((ns, name), s.clone()))
            })
            .collect();
        let vs = VsIndex::new(vss, &services, &svc_by_fqdn, &mut diags);
        port_diagnostics(&vs, &services, &svc_by_fqdn, &mut diags);

        diags.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        diags.dedup();
        let snapshot = Snapshot {
            settings: settings.clone(),
            services,
            svc_by_fqdn,
            svc_by_ip,
            svc_by_selector,
            pods,
            pod_by_name,
            pod_by_ip,
            vs,
            drs,
            pas,
            aps,
            gws,
            secrets,
        };
        (snapshot, diags)
    }

    /// What `node` gets for `key`.
    pub fn resolve(&self, node: &ProxyNode, key: &Key) -> Resource {
        match key {
            Key::Address(ip) => {
                if let Some(&s) = self.svc_by_ip.get(ip) {
                    Resource::Service(self.service(node, s))
                } else if let Some(&p) = self.pod_by_ip.get(ip) {
                    Resource::Workload(self.workload(*ip, p))
                } else {
                    Resource::NotFound
                }
            }
            Key::Host(name) => {
                let name = mesh_config::key::normalize_host(name);
                if let Ok(ip) = name.parse::<IpAddr>() {
                    return match self.svc_by_ip.get(&ip) {
                        Some(&s) => Resource::Service(self.service(node, s)),
                        None => Resource::NotFound,
                    };
                }
                search_names(&name, &node.namespace, &self.settings.cluster_domain)
                    .iter()
                    .find_map(|n| self.svc_by_fqdn.get(n))
                    .map_or(Resource::NotFound, |&s| {
                        Resource::Service(self.service(node, s))
                    })
            }
            Key::Gateway => self.gateway(node),
        }
    }

    /// Pod labels by namespace and name (for the debug endpoint and tests).
    pub fn pod_labels(&self, node: &ProxyNode) -> Option<&BTreeMap<String, String>> {
        let i = self.pod_by_name.get(&node.namespace)?.get(&node.pod_name)?;
        Some(&self.pods[*i].labels)
    }

    fn service(&self, node: &ProxyNode, s: usize) -> OutService {
        let svc = &self.services[s];
        let labels = self.pod_labels(node).unwrap_or(&NO_LABELS);
        let client = Client {
            namespace: &node.namespace,
            labels,
            services: &self.services,
            drs: &self.drs,
        };
        let vs = self.vs.select(&svc.fqdn, &node.namespace);
        let default_retry = resilience::default_retry(self.settings.compatibility_version);
        let mut needed = Needed::new();
        let ports = svc
            .ports
            .iter()
            .map(|p| {
                needed.insert((s, p.port, None));
                let routes = match vs {
                    Some(vs) if routed_protocol(p.protocol) => port_routes(
                        vs,
                        p.port,
                        &self.services,
                        &client,
                        &mut needed,
                        &mut |_, _| {},
                    ),
                    _ => Vec::new(),
                };
                let tcp_route = vs.filter(|_| l4_protocol(p.protocol)).and_then(|vs| {
                    tcp_port_route(
                        vs,
                        p.port,
                        &self.services,
                        &client,
                        &mut needed,
                        &mut |_, _| {},
                    )
                });
                ServicePort {
                    port: p.port,
                    name: p.name.clone(),
                    protocol: p.protocol,
                    routes,
                    default_retry: routed_protocol(p.protocol).then(|| default_retry.clone()),
                    tcp_route,
                }
            })
            .collect();
        let mut clusters: Vec<Cluster> = needed
            .iter()
            .map(|(d, q, sub)| self.cluster(node, labels, *d, *q, sub.as_deref()))
            .collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        let mut domains = vec![
            svc.fqdn.clone(),
            format!("{}.{}.svc", svc.name, svc.namespace),
            format!("{}.{}", svc.name, svc.namespace),
        ];
        if node.namespace == svc.namespace {
            domains.push(svc.name.clone());
        }
        domains.extend(svc.addresses.iter().map(IpAddr::to_string));
        OutService {
            host: svc.fqdn.clone(),
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            addresses: svc.addresses.clone(),
            ports,
            domains,
            clusters,
        }
    }

    fn cluster(
        &self,
        node: &ProxyNode,
        labels: &BTreeMap<String, String>,
        d: usize,
        port: u16,
        subset: Option<&str>,
    ) -> Cluster {
        let svc = &self.services[d];
        let rules = self
            .drs
            .lookup(&node.namespace, labels, &svc.fqdn, &svc.namespace);
        let sub = subset.and_then(|s| rules.subset(s));
        let policy = rules.cluster_policy(port, sub);
        let load_balancer = if svc.headless() {
            // Istio: a headless Service's clusters go where the client dialled.
            LoadBalancer::Passthrough
        } else {
            policy.load_balancer
        };
        let endpoints = match (svc.port(port), subset, sub) {
            (None, _, _) | (Some(_), Some(_), None) => Vec::new(),
            (Some(p), _, sub) => p
                .endpoints
                .iter()
                .filter(|e| {
                    sub.is_none_or(|s| {
                        s.labels.is_empty()
                            || e.pod
                                .is_some_and(|i| labels_match(&s.labels, &self.pods[i].labels))
                    })
                })
                .map(|e| e.endpoint.clone())
                .collect(),
        };
        let tls = self.cluster_tls(policy.tls.as_ref(), &endpoints);
        Cluster {
            name: cluster_name(port, subset, &svc.fqdn),
            host: svc.fqdn.clone(),
            service_name: svc.name.clone(),
            service_namespace: svc.namespace.clone(),
            port,
            subset: subset.map(str::to_owned),
            load_balancer,
            consistent_hash: if svc.headless() {
                None
            } else {
                policy.consistent_hash
            },
            endpoints,
            connection_pool: policy.connection_pool,
            outlier_detection: policy.outlier_detection,
            tls,
            protocol: None,
        }
    }

    /// A cluster's transport security: the DestinationRule's `tls` block, else auto mTLS;
    /// the identities to expect are the block's `subjectAltNames`, else the
    /// ServiceAccounts of the cluster's pods (listed only where mTLS may be originated).
    fn cluster_tls(&self, block: Option<&policy::TlsBlock>, endpoints: &[Endpoint]) -> ClusterTls {
        let (mode, sans, sni) = match block {
            None => (ClusterTlsMode::Auto, &[][..], None),
            Some(b) => (b.mode, b.subject_alt_names.as_slice(), b.sni.clone()),
        };
        let may_mtls = match mode {
            ClusterTlsMode::Auto => endpoints.iter().any(|e| e.mtls),
            ClusterTlsMode::IstioMutual => true,
            ClusterTlsMode::Disable => false,
        };
        let identities = if !may_mtls {
            Vec::new()
        } else if !sans.is_empty() {
            sans.to_vec()
        } else {
            let mut ids: Vec<String> = endpoints
                .iter()
                .filter_map(|e| e.peer.as_ref())
                .filter(|p| {
                    !p.service_account.is_empty() && p.service_account != workloads::UNKNOWN
                })
                .map(|p| {
                    mesh_common::identity::spiffe_id(
                        &self.settings.trust_domain,
                        &p.namespace,
                        &p.service_account,
                    )
                })
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        ClusterTls {
            mode,
            identities,
            sni,
        }
    }

    /// The Services that select `pod` (indexes, in namespace and name order).
    fn services_of(&self, pod: &workloads::PodRec) -> Vec<usize> {
        let mut candidates: Vec<usize> = Vec::new();
        if let Some(by_label) = self.svc_by_selector.get(&pod.namespace) {
            for (k, v) in &pod.labels {
                if let Some(list) = by_label.get(&format!("{k}={v}")) {
                    candidates.extend(list);
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.retain(|&i| labels_match(&self.services[i].selector, &pod.labels));
        candidates
    }

    fn workload(&self, ip: IpAddr, p: usize) -> Workload {
        let pod = &self.pods[p];
        let services = self
            .services_of(pod)
            .into_iter()
            .map(|i| &self.services[i])
            .map(|s| InboundService {
                host: s.fqdn.clone(),
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                ports: s
                    .ports
                    .iter()
                    .filter_map(|sp| {
                        Some(InboundPort {
                            port: sp.port,
                            target_port: target_port(&sp.target, pod)?,
                            protocol: sp.protocol,
                        })
                    })
                    .collect(),
            })
            .collect();
        Workload {
            ip,
            pod: pod.name.clone(),
            meta: pod.meta.clone(),
            services,
            inbound_tls: self.pas.inbound(&pod.namespace, &pod.labels),
            authorization: self.aps.for_pod(&pod.namespace, &pod.labels),
        }
    }
}

/// Problems that show per Service port (a destination port the Service lacks, a rule left
/// without destinations there), found by translating each VirtualService for every port
/// it binds as if for a client that every source condition selects.
fn port_diagnostics(
    vs: &VsIndex,
    services: &[SvcRec],
    by_fqdn: &HashMap<String, usize>,
    diags: &mut Vec<Diagnostic>,
) {
    for v in vs.all() {
        let mut bound: Vec<usize> = Vec::new();
        for (_, h) in &v.hosts {
            match h {
                HostPattern::Exact(name) => bound.extend(by_fqdn.get(name)),
                HostPattern::Wildcard(_) => bound.extend(
                    services
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| h.matches(&s.fqdn))
                        .map(|(i, _)| i),
                ),
            }
        }
        bound.sort_unstable();
        bound.dedup();
        for s in bound {
            for p in &services[s].ports {
                let mut report = |field, message| {
                    diags.push(Diagnostic {
                        kind: istio::virtual_service::KIND.into(),
                        namespace: v.meta.namespace.clone(),
                        name: v.meta.name.clone(),
                        field,
                        message,
                    });
                };
                if routed_protocol(p.protocol) {
                    port_routes(
                        v,
                        p.port,
                        services,
                        &AnyClient,
                        &mut Needed::new(),
                        &mut report,
                    );
                }
                if l4_protocol(p.protocol) {
                    tcp_port_route(
                        v,
                        p.port,
                        services,
                        &AnyClient,
                        &mut Needed::new(),
                        &mut report,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
