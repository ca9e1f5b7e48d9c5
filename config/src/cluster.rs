//! Clusters: a Service port (and subset), with its endpoints and how to pick one.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::resilience::{ConnectionPool, OutlierDetection};
use crate::security::ClusterTls;
use crate::service::Protocol;
use crate::workload::PeerMeta;

/// `outbound|<port>|<subset>|<host>`, Envoy's and Istio's cluster name.
pub fn cluster_name(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or(""))
}

/// Where requests for one Service port (and subset) go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// [`cluster_name`] of the fields below.
    pub name: String,
    /// The Service's FQDN; with `port`, what `destination_service` says.
    pub host: String,
    pub service_name: String,
    pub service_namespace: String,
    /// The Service port.
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    pub load_balancer: LoadBalancer,
    /// `loadBalancer.consistentHash`: a request (or connection) with this key goes to
    /// the endpoint its hash picks (the same while the endpoints stay); one without the
    /// key is balanced by `load_balancer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<HashKey>,
    /// Ready endpoints first; only `serving` ones get new requests.
    pub endpoints: Vec<Endpoint>,
    /// `trafficPolicy.connectionPool` (empty: no limits).
    #[serde(default, skip_serializing_if = "ConnectionPool::is_unlimited")]
    pub connection_pool: ConnectionPool,
    /// `trafficPolicy.outlierDetection`; `None`: endpoints are never ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// `trafficPolicy.tls`, else auto mTLS.
    #[serde(default, skip_serializing_if = "ClusterTls::is_default")]
    pub tls: ClusterTls,
    /// The Service port's protocol, in a gateway's clusters: a gateway has no Service
    /// port of its own to take the upstream protocol from (h2 for `http2`/`grpc`, else
    /// HTTP/1.1). Sidecars use their port's; `None` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

/// `trafficPolicy.loadBalancer.simple`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    /// Istio's default: two endpoints at random, the one with fewer requests in flight.
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    /// Istio's `PASSTHROUGH`: to the address the client dialled.
    Passthrough,
}

/// What a request is hashed by (`loadBalancer.consistentHash`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum HashKey {
    /// `httpHeaderName`, lower case.
    Header(String),
    /// `httpCookie`: with `ttl_ms`, a request without the cookie gets one made up,
    /// sent back in `Set-Cookie` (`Max-Age`, `0`: a session cookie), and is hashed by it.
    #[serde(rename_all = "camelCase")]
    Cookie {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// `useSourceIp`: the client's address (HTTP and TCP).
    SourceIp,
    /// `httpQueryParameterName`.
    QueryParameter(String),
}

/// One endpoint: a pod IP and the port its container listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// EndpointSlice `conditions.serving` (ready, or terminating but still serving).
    pub serving: bool,
    /// EndpointSlice `conditions.terminating`: no new requests unless nothing else is left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminating: bool,
    /// Auto mTLS: the pod is labelled `security.istio.io/tlsMode: istio` and its
    /// PeerAuthentication does not `DISABLE` mTLS on this port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mtls: bool,
    /// Who answers there, for `destination_*` labels; `None` when no pod is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerMeta>,
}
