//! What a caller asks the core (a template and what is known about its namespace) and what
//! the core answers (skip, unchanged, or a patch).

use std::fmt;

use serde_json::Value;

/// What the caller knows about the namespace's wish for injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespacePolicy {
    /// Webhook: the API server's namespace/object selectors already chose this pod; inject
    /// unless the pod opts out (label, or annotation when there is no label).
    Selected,
    /// Namespace labelled `istio-injection=enabled`: inject unless the pod opts out.
    Enabled,
    /// Namespace labelled `istio-injection=disabled`: never inject.
    Disabled,
    /// Namespace without the label: inject only when the pod *label* says `true`.
    Unlabelled,
    /// kube-inject: no namespace information; inject unless the pod opts out, as
    /// `istioctl kube-inject` does.
    Unknown,
}

/// The workload a pod belongs to, as Istio names it (its `DeploymentMeta` and `TypeMeta`):
/// what `ISTIO_META_WORKLOAD_NAME`, `ISTIO_META_OWNER` and the canonical service fall back
/// on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    /// `reviews-v1`; empty when there is none to give (a bare pod with only
    /// `generateName`): the variables that need it are then left out.
    pub name: String,
    /// `Deployment`, `StatefulSet`, ... `CronJob`, `Pod`.
    pub kind: String,
    /// `apps/v1`, `batch/v1`, `v1`.
    pub api_version: String,
}

/// One injection request.
#[derive(Debug, Clone, Copy)]
pub struct InjectRequest<'a> {
    /// An object with `metadata` and `spec`: a Pod, or a workload's pod template.
    pub template: &'a Value,
    /// The namespace, when known (pod's own, the workload's, or the admission request's).
    pub namespace: Option<&'a str>,
    pub namespace_policy: NamespacePolicy,
    /// Proxy as a native sidecar; the caller resolves `nativeSidecars: auto`.
    pub native_sidecars: bool,
    /// The workload the template belongs to, when the caller knows it: kube-inject passes
    /// the document's own (see [`crate::workloads::TemplateRef::workload`]). `None` (the
    /// webhook, and kube-inject for a bare Pod): derived from the template's metadata
    /// (controller `ownerReferences`, `pod-template-hash`, name) as Istio derives it from
    /// the pod the API server shows the webhook; see [`super::workload::derive()`].
    pub workload: Option<&'a Workload>,
}

/// Why a pod was left alone. `Display` is the human reason (kube-inject prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `kube-system`, `kube-public`, `kube-node-lease`.
    SystemNamespace(String),
    /// `spec.hostNetwork: true`: capturing would rewrite the node's own iptables.
    HostNetwork,
    /// The pod label `sidecar.istio.io/inject` says `false`.
    LabelOptOut,
    /// The annotation `sidecar.istio.io/inject` says `false` (and no label overrides it).
    AnnotationOptOut,
    /// The namespace is labelled `istio-injection=disabled`.
    NamespaceDisabled,
    /// Unlabelled namespace and no pod label asking for injection.
    NotSelected,
    /// Only used by uninject: nothing records an injection.
    NotInjected,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use mesh_common::{annotations, labels};
        match self {
            SkipReason::SystemNamespace(ns) => {
                write!(f, "namespace {ns} is never injected")
            }
            SkipReason::HostNetwork => write!(f, "pod uses hostNetwork: true"),
            SkipReason::LabelOptOut => write!(f, "pod label {}=false", labels::INJECT),
            SkipReason::AnnotationOptOut => {
                write!(f, "pod annotation {}=false", annotations::INJECT)
            }
            SkipReason::NamespaceDisabled => write!(
                f,
                "namespace is labelled {}=disabled",
                labels::NAMESPACE_INJECTION
            ),
            SkipReason::NotSelected => write!(
                f,
                "namespace is not labelled {}=enabled and the pod has no {}=true label",
                labels::NAMESPACE_INJECTION,
                labels::INJECT
            ),
            SkipReason::NotInjected => write!(f, "no {} annotation", annotations::STATUS),
        }
    }
}

/// The core's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Skipped(SkipReason),
    /// Already injected with the same config: nothing to do.
    Unchanged,
    /// RFC 6902 operations relative to the template root.
    Patched(Vec<json_patch::PatchOperation>),
}
