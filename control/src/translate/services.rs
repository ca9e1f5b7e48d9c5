//! Services, their ports and their endpoints (from EndpointSlices), indexed by FQDN and
//! ClusterIP.
//!
//! - Only TCP ports count (Istio does not proxy UDP or SCTP); each port's protocol is
//!   [`Protocol::select`] of its `appProtocol` and name.
//! - `ExternalName` Services are left out (Istio makes them DNS aliases; not supported
//!   yet). A Service with `clusterIP: None` is headless: no addresses.
//! - A port's endpoints: every address of every slice labelled
//!   `kubernetes.io/service-name: <service>` in the Service's namespace, at the slice
//!   port whose name is the Service port's name; `serving` is `conditions.serving`, else
//!   `ready`, else true; `terminating` is `conditions.terminating`. Ready endpoints come
//!   first, then terminating but serving ones, then the rest, each by address. An address
//!   in two slices (during a slice rewrite) is kept once, from the first slice by name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_config::{Endpoint, Protocol};

use super::hosts::service_fqdn;
use super::workloads::PodRec;

/// The label an EndpointSlice names its Service by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone)]
pub struct SvcRec {
    pub name: String,
    pub namespace: String,
    pub fqdn: String,
    pub addresses: Vec<IpAddr>,
    /// Sorted by port number.
    pub ports: Vec<PortRec>,
    /// `spec.selector`; empty: the Service selects no pods (its slices are its own).
    pub selector: BTreeMap<String, String>,
    /// Gateways map their port numbers through this Service (not labelled
    /// `networking.istio.io/disable-gateway-port-translation`).
    pub gateway_port_translation: bool,
}

impl SvcRec {
    pub fn port(&self, port: u16) -> Option<&PortRec> {
        self.ports.iter().find(|p| p.port == port)
    }

    pub fn headless(&self) -> bool {
        self.addresses.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct PortRec {
    pub port: u16,
    pub name: String,
    pub protocol: Protocol,
    pub target: Target,
    pub endpoints: Vec<EpRec>,
}

/// `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Number(u16),
    /// A container port name, resolved per pod.
    Named(String),
}

/// One endpoint and the pod behind it (an index into the snapshot's pods).
#[derive(Debug, Clone)]
pub struct EpRec {
    pub endpoint: Endpoint,
    pub pod: Option<usize>,
}

impl SvcRec {
    /// `None` for a Service we do not serve (no name, `ExternalName`).
    pub fn new(svc: &Service, domain: &str) -> Option<SvcRec> {
        let md = &svc.metadata;
        let name = md.name.clone().filter(|n| !n.is_empty())?;
        let namespace = md
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let mut addresses = Vec::new();
        let listed = spec.cluster_ips.iter().flatten().map(String::as_str);
        for ip in listed.chain(spec.cluster_ip.as_deref()) {
            if let Ok(ip) = ip.parse::<IpAddr>()
                && !addresses.contains(&ip)
            {
                addresses.push(ip);
            }
        }
        let mut ports: Vec<PortRec> = Vec::new();
        for p in spec.ports.iter().flatten() {
            if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
                continue;
            }
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            if port == 0 || ports.iter().any(|q| q.port == port) {
                continue;
            }
            let pname = p.name.clone().unwrap_or_default();
            let target = match &p.target_port {
                Some(IntOrString::Int(n)) => u16::try_from(*n)
                    .ok()
                    .filter(|n| *n != 0)
                    .map_or(Target::Number(port), Target::Number),
                Some(IntOrString::String(s)) if !s.is_empty() => match s.parse::<u16>() {
                    Ok(n) if n != 0 => Target::Number(n),
                    _ => Target::Named(s.clone()),
                },
                _ => Target::Number(port),
            };
            ports.push(PortRec {
                port,
                protocol: Protocol::select(p.app_protocol.as_deref(), &pname),
                name: pname,
                target,
                endpoints: Vec::new(),
            });
        }
        ports.sort_by_key(|p| p.port);
        Some(SvcRec {
            fqdn: service_fqdn(&name, &namespace, domain),
            name,
            namespace,
            addresses,
            ports,
            selector: spec.selector.unwrap_or_default(),
            gateway_port_translation: !md
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(super::gateways::DISABLE_PORT_TRANSLATION)),
        })
    }

    /// Fills each port's endpoints from the Service's slices (sorted by name).
    pub fn fill_endpoints(
        &mut self,
        slices: &[&EndpointSlice],
        pod_by_name: &HashMap<String, HashMap<String, usize>>,
        pod_by_ip: &HashMap<IpAddr, usize>,
    ) {
        for port in &mut self.ports {
            let mut seen = HashSet::new();
            let mut eps = Vec::new();
            for slice in slices {
                if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                    continue;
                }
                let Some(number) = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|sp| sp.name.as_deref().unwrap_or_default() == port.name)
                    .and_then(|sp| sp.port)
                    .and_then(|n| u16::try_from(n).ok())
                else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let cond = ep.conditions.clone().unwrap_or_default();
                    let serving = cond.serving.or(cond.ready).unwrap_or(true);
                    let terminating = cond.terminating.unwrap_or(false);
                    let by_ref = ep
                        .target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| {
                            let ns = r.namespace.as_deref().unwrap_or(&self.namespace);
                            pod_by_name.get(ns)?.get(r.name.as_deref()?).copied()
                        });
                    for a in &ep.addresses {
                        let Ok(ip) = a.parse::<IpAddr>() else {
                            continue;
                        };
                        let addr = SocketAddr::new(ip, number);
                        if !seen.insert(addr) {
                            continue;
                        }
                        let pod = by_ref.or_else(|| pod_by_ip.get(&ip).copied());
                        eps.push(EpRec {
                            endpoint: Endpoint {
                                addr,
                                serving,
                                terminating,
                                mtls: false,
                                peer: None,
                            },
                            pod,
                        });
                    }
                }
            }
            eps.sort_by_key(|e| (rank(&e.endpoint), e.endpoint.addr));
            port.endpoints = eps;
        }
    }
}

/// Ready first, then terminating but serving, then not serving.
fn rank(e: &Endpoint) -> u8 {
    match (e.serving, e.terminating) {
        (true, false) => 0,
        (true, true) => 1,
        (false, _) => 2,
    }
}

/// The pod port a Service port targets on `pod`: a number as is, a name through the
/// pod's container ports (`None` when the pod has no such port: Kubernetes leaves the pod
/// out of that port's endpoints too).
pub fn target_port(target: &Target, pod: &PodRec) -> Option<u16> {
    match target {
        Target::Number(n) => Some(*n),
        Target::Named(name) => pod.named_ports.get(name).copied(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn ports_protocols_and_targets() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00::20"],
                     "selector": {"app": "reviews"},
                     "ports": [{"name": "http", "port": 9080, "targetPort": "web"},
                               {"name": "grpc", "port": 9090, "appProtocol": "grpc",
                                "targetPort": 19090},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let s = SvcRec::new(&svc, "cluster.local").unwrap();
        assert_eq!(s.fqdn, "reviews.default.svc.cluster.local");
        assert_eq!(s.addresses.len(), 2);
        assert_eq!(s.ports.len(), 2);
        assert_eq!(s.ports[0].target, Target::Named("web".into()));
        assert_eq!(s.ports[1].protocol, Protocol::Http2);
        assert_eq!(s.ports[1].target, Target::Number(19090));
        let headless: Service = serde_json::from_value(json!({
            "metadata": {"name": "db"}, "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
        }))
        .unwrap();
        let h = SvcRec::new(&headless, "cluster.local").unwrap();
        assert!(h.headless());
        assert_eq!(h.ports[0].target, Target::Number(5432));
        let ext: Service = serde_json::from_value(json!({
            "metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "x.com"}
        }))
        .unwrap();
        assert!(SvcRec::new(&ext, "cluster.local").is_none());
    }
}
