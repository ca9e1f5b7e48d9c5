//! A Service as a client's proxy needs it: where it is, its ports and their protocols, the
//! HTTP routes bound to it, the TCP route of each L4 port, and the clusters they send to.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::resilience::RetryPolicy;
use crate::route::HttpRoute;

/// One Kubernetes Service, resolved for the asking proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// The FQDN: `reviews.default.svc.cluster.local`.
    pub host: String,
    pub name: String,
    pub namespace: String,
    /// ClusterIPs (none for a headless Service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// The names a request for this Service may carry in `Host`/`:authority`, without a
    /// port, lower case, as Istio generates them for the asking proxy: the FQDN,
    /// `name.ns.svc`, `name.ns`, the ClusterIPs, and the bare `name` only for a proxy in
    /// the same namespace. A proxy matches each with and without `:<port>`.
    pub domains: Vec<String>,
    /// Every cluster the ports' routes name, and each port's default cluster.
    pub clusters: Vec<Cluster>,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub protocol: Protocol,
    /// The HTTP routes of the VirtualServices bound to this host that apply to this port
    /// (a `match.port` for another port is left out at config time), in Istio's order:
    /// the first whose match holds takes the request. Each destination is resolved to a
    /// cluster with an explicit port. Empty: every request goes to the port's default
    /// cluster ([`Service::default_cluster`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<HttpRoute>,
    /// The retry policy of requests no route takes (the port's default route): Istio's
    /// default policy; `None`: no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_retry: Option<RetryPolicy>,
    /// The `tcp[]` route of the VirtualService bound to this host that takes this port's
    /// L4 connections (a `tcp` port, or a sniffed one whose client did not speak HTTP),
    /// resolved for the asking proxy: its matches (`port`, `sourceLabels`,
    /// `sourceNamespace`, `gateways`) are all known at config time, so at most one rule
    /// applies. `None`: every connection goes to the port's default cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_route: Option<TcpRoute>,
}

/// A `tcp[]` rule for one port: each connection goes to one of its clusters, picked by
/// weight (share = weight / sum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// `namespace/name` of the VirtualService, and the rule's index in its `tcp[]`.
    pub virtual_service: String,
    pub rule: usize,
    pub clusters: Vec<TcpCluster>,
}

/// One destination of a [`TcpRoute`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpCluster {
    pub cluster: String,
    /// At least 1.
    pub weight: u32,
}

/// What a port speaks, by Istio's rules: the port's `appProtocol`, else the prefix of its
/// name before the first `-` (`http-web` → HTTP), else [`Protocol::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (and h2 if the client speaks it with prior knowledge).
    Http,
    /// h2, also `grpc` and `grpc-web`.
    Http2,
    /// Opaque bytes: `tcp`, `tls`, `https`, `mongo`, `mysql`, `redis`, and anything the
    /// proxy must not parse. Spliced, untouched.
    Tcp,
    /// No name or an unknown prefix: sniffed from the client's first bytes.
    Unknown,
}

impl Protocol {
    /// Istio's protocol selection for a Service port.
    pub fn select(app_protocol: Option<&str>, port_name: &str) -> Protocol {
        if let Some(p) = app_protocol.filter(|p| !p.is_empty()) {
            // `kubernetes.io/h2c` and friends: the part after the last `/`.
            let p = p.rsplit('/').next().unwrap_or(p);
            return Protocol::from_name(p);
        }
        let prefix = port_name.split('-').next().unwrap_or(port_name);
        Protocol::from_name(prefix)
    }

    fn from_name(name: &str) -> Protocol {
        match name.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" | "grpc" | "grpc-web" | "h2c" => Protocol::Http2,
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
            _ => Protocol::Unknown,
        }
    }

    /// Whether requests on this port are parsed as HTTP without sniffing.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2)
    }
}

impl Service {
    /// The port `port`, if the Service has it.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// The cluster a request to `port` goes to when no route says otherwise.
    pub fn default_cluster(&self, port: u16) -> String {
        crate::cluster::cluster_name(port, None, &self.host)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_selection_follows_istio() {
        assert_eq!(Protocol::select(None, "http"), Protocol::Http);
        assert_eq!(Protocol::select(None, "http-web"), Protocol::Http);
        assert_eq!(Protocol::select(None, "grpc-api"), Protocol::Http2);
        assert_eq!(Protocol::select(None, "tcp-db"), Protocol::Tcp);
        assert_eq!(Protocol::select(None, "mysql"), Protocol::Tcp);
        assert_eq!(Protocol::select(None, "web"), Protocol::Unknown);
        assert_eq!(Protocol::select(None, ""), Protocol::Unknown);
        assert_eq!(Protocol::select(Some("http"), "tcp"), Protocol::Http);
        assert_eq!(
            Protocol::select(Some("kubernetes.io/h2c"), ""),
            Protocol::Http2
        );
        assert_eq!(Protocol::select(Some(""), "http"), Protocol::Http);
    }
}
