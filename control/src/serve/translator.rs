//! The seam between the serving side and the translation: [`Translator`] builds a
//! [`View`] from the watched objects, a [`View`] answers one proxy's one key.
//!
//! The binary uses [`Istio`] ([`crate::translate::Snapshot`]); tests of the serving
//! machinery may plug their own (see `serve::run_with`).

use std::sync::Arc;

use mesh_config::{Key, Resource};

use crate::translate::{Diagnostic, MeshSettings, Objects, ProxyNode, Snapshot};

/// Cluster state → a queryable view, and what was wrong in it.
pub trait Translator: Send + Sync + 'static {
    fn build(&self, objects: Objects, settings: &MeshSettings) -> (Arc<dyn View>, Vec<Diagnostic>);
}

/// What each proxy gets for each key, for one snapshot of the cluster.
pub trait View: Send + Sync + 'static {
    fn resolve(&self, node: &ProxyNode, key: &Key) -> Resource;

    /// The identity the pod `node` names has on an authenticated stream (its
    /// ServiceAccount's SPIFFE id), for `/debug/config`; `None` if unknown.
    fn identity_of(&self, _node: &ProxyNode) -> Option<String> {
        None
    }
}

/// The real translation: [`Snapshot::build`] and [`Snapshot::resolve`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Istio;

impl Translator for Istio {
    fn build(&self, objects: Objects, settings: &MeshSettings) -> (Arc<dyn View>, Vec<Diagnostic>) {
        let (snap, diags) = Snapshot::build(objects, settings);
        (Arc::new(snap), diags)
    }
}

impl View for Snapshot {
    fn resolve(&self, node: &ProxyNode, key: &Key) -> Resource {
        Snapshot::resolve(self, node, key)
    }

    fn identity_of(&self, node: &ProxyNode) -> Option<String> {
        self.pod_identity(node)
    }
}
