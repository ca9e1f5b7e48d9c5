//! The config mesh-control sends each mesh-proxy, as plain data.
//!
//! A proxy asks for what it talks to, on first use, by [`Key`]: an address it saw as an
//! original destination or a source, or a host name it saw in a request or a DNS query.
//! mesh-control answers each key with one [`Resource`]: a [`Service`] (its ports, the
//! HTTP routes of the VirtualServices bound to it, and the clusters those routes send to,
//! with their endpoints), a [`Workload`] (a pod: who it is, which Services select it), or
//! [`Resource::NotFound`]; an ingress gateway asks for [`Key::Gateway`], its own
//! listeners ([`gateway::Gateway`]). So a proxy's memory grows with what it talks to, not with the
//! mesh.
//!
//! Everything here is data with serde derives (JSON on the wire, in golden tests and in
//! `/config_dump`), plus [`wire`]: the protobuf envelope of the gRPC stream that carries
//! it. Both mesh-control and mesh-proxy depend on this crate; it depends on no runtime.
//!
//! Modules, in dependency order: [`key`], [`service`] (ports, protocols), [`route`]
//! (matches and actions), [`resilience`] (timeouts, retries, limits, ejection),
//! [`cluster`] (endpoints and their load balancing),
//! [`workload`], [`gateway`] (an ingress gateway's listeners), [`resource`] (what one key resolves to, and its validation), [`wire`].

pub mod authz;
pub mod ca;
pub mod cluster;
pub mod gateway;
pub mod key;
pub mod resilience;
pub mod resource;
pub mod route;
pub mod security;
pub mod service;
pub mod wire;
pub mod workload;

pub use authz::Authorization;
pub use cluster::{Cluster, Endpoint, HashKey, LoadBalancer};
pub use gateway::{
    Certificate, ClientCertificates, GatewayListener, TlsRoute, TlsServer, TlsServerMode,
    VirtualHost,
};
pub use key::{Key, KeyError};
pub use resilience::{ConnectionPool, OutlierDetection, RetryOn, RetryPolicy};
pub use resource::{Resource, ValidationError};
pub use route::{
    CorsPolicy, Fault, FaultAbort, FaultDelay, HeaderEdit, HeaderMatch, HttpRoute, Mirror,
    Redirect, RegexRewrite, RequestMatch, Rewrite, RouteAction, StringMatch, WeightedCluster,
};
pub use security::{ClusterTls, ClusterTlsMode, InboundTls, MtlsMode};
pub use service::{Protocol, Service, ServicePort, TcpCluster, TcpRoute};
pub use workload::{InboundPort, InboundService, PeerMeta, Workload};

/// The trust domain when nothing else says (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The DNS suffix of Service hosts (`<name>.<namespace>.svc.<suffix>`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";
