//! Cluster state → per-proxy config, with no I/O.
//!
//! [`Snapshot::build`] indexes everything the watchers hold ([`Objects`]) once per change
//! and reports bad objects ([`Diagnostic`]) while skipping only what is bad (one rule or
//! one object at a time). [`Snapshot::resolve`] answers one proxy's one key.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_config::{Key, Resource};

/// Everything mesh-control watches, as the API server returned it.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    /// `discovery.k8s.io/v1` (a `v1beta1` slice is converted to it by the watcher).
    pub endpoint_slices: Vec<EndpointSlice>,
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
    /// `networking.istio.io` objects of any served version, as JSON
    /// (`apiVersion`, `kind`, `metadata`, `spec`).
    pub virtual_services: Vec<serde_json::Value>,
    pub destination_rules: Vec<serde_json::Value>,
}

/// Mesh-wide settings.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// Istio's `rootNamespace`: DestinationRules there apply mesh-wide (last in lookup).
    pub root_namespace: String,
    pub cluster_domain: String,
    pub trust_domain: String,
}

impl Default for MeshSettings {
    fn default() -> MeshSettings {
        MeshSettings {
            root_namespace: "istio-system".into(),
            cluster_domain: mesh_config::CLUSTER_DOMAIN.into(),
            trust_domain: mesh_config::DEFAULT_TRUST_DOMAIN.into(),
        }
    }
}

/// The proxy asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyNode {
    pub namespace: String,
    pub pod_name: String,
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

/// The indexed state; cheap to query, rebuilt on every (debounced) change.
#[derive(Debug, Default)]
pub struct Snapshot {
    _private: (),
}

impl Snapshot {
    /// Indexes `objects`; every bad object or rule is reported and left out.
    pub fn build(objects: Objects, settings: &MeshSettings) -> (Snapshot, Vec<Diagnostic>) {
        let _ = (objects, settings);
        (Snapshot::default(), Vec::new())
    }

    /// What `node` gets for `key`.
    pub fn resolve(&self, node: &ProxyNode, key: &Key) -> Resource {
        let _ = (node, key);
        Resource::NotFound
    }

    /// Pod labels by namespace and name (for the debug endpoint and tests).
    pub fn pod_labels(&self, node: &ProxyNode) -> Option<&BTreeMap<String, String>> {
        let _ = node;
        None
    }
}
