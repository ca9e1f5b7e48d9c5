//! Workloads: a pod as the mesh sees it, for the peer labels of metrics and for the
//! inbound side's view of its own Services.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::authz::Authorization;
use crate::security::InboundTls;
use crate::service::Protocol;

/// Who a peer is: the labels Istio's metrics give a workload. Strings are never empty:
/// `unknown` where nothing is known, as Istio reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMeta {
    /// The owner's name, as the injector derives it (Deployment, StatefulSet, ...).
    pub workload: String,
    pub namespace: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub app: String,
    pub version: String,
    pub service_account: String,
    /// Whether the pod runs our (or Istio's) sidecar.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sidecar: bool,
}

/// A pod, answered for `addr/<pod ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub ip: IpAddr,
    pub pod: String,
    pub meta: PeerMeta,
    /// The Services whose selector picks this pod: what `destination_service` is on the
    /// inbound side, and the protocol of each port the pod serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<InboundService>,
    /// What the pod's proxy accepts (its PeerAuthentication, resolved).
    #[serde(default, skip_serializing_if = "InboundTls::is_default")]
    pub inbound_tls: InboundTls,
    /// The AuthorizationPolicies that select the pod.
    #[serde(default, skip_serializing_if = "Authorization::is_empty")]
    pub authorization: Authorization,
}

/// A Service as seen from one of its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundService {
    pub host: String,
    pub name: String,
    pub namespace: String,
    pub ports: Vec<InboundPort>,
}

/// A Service port and the pod port it targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundPort {
    pub port: u16,
    pub target_port: u16,
    pub protocol: Protocol,
}
