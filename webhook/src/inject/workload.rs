//! Who the proxy works for: the workload that owns the pod, as Istio derives it, and the
//! literal env values made from it and the pod's labels (workload name, owner, canonical
//! service and revision, app and version), which the proxy puts on its metrics.
//!
//! Istio's sources followed (github.com/istio/istio, read at 86c9f01f):
//! - `pkg/kube/util.go` `GetDeployMetaFromPod`: the webhook's derivation from the pod the
//!   API server shows it, implemented by [`derive()`];
//! - `pkg/kube/inject/inject.go` `IntoObject`: kube-inject names the document's own
//!   workload ([`for_document`]), a bare Pod goes through `GetDeployMetaFromPod`;
//! - the injection template
//!   (`manifests/charts/istio-control/istio-discovery/files/injection-template.yaml`):
//!   `ISTIO_META_WORKLOAD_NAME` (label `service.istio.io/workload-name`, else the
//!   workload's name; left out when empty), `ISTIO_META_OWNER` (left out without an
//!   apiVersion and a name), and the canonical-name / canonical-revision chains (which
//!   Istio writes as pod labels and we pass as env), implemented by [`proxy_env`].

use std::collections::BTreeMap;

use mesh_common::contract::proxy::env;

use super::request::Workload;
use super::view::PodView;

/// The labels that shape the values.
pub mod label {
    pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
    pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
    /// Istio's override of the workload name (`ISTIO_META_WORKLOAD_NAME` only).
    pub const WORKLOAD_NAME: &str = "service.istio.io/workload-name";
    pub const K8S_NAME: &str = "app.kubernetes.io/name";
    pub const K8S_VERSION: &str = "app.kubernetes.io/version";
    pub const APP: &str = "app";
    pub const VERSION: &str = "version";
    /// Set by the Deployment controller on its ReplicaSets' pods.
    pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
    /// Set by Argo Rollouts on its ReplicaSets' pods.
    pub const ROLLOUTS_POD_TEMPLATE_HASH: &str = "rollouts-pod-template-hash";
    /// Set by OpenShift's DeploymentConfig on its ReplicationControllers' pods.
    pub const DEPLOYMENT_CONFIG: &str = "deploymentconfig";
}

/// Istio's revision when no label names one.
pub const DEFAULT_REVISION: &str = "latest";

/// The workload of a pod as the API server shows it to the webhook at CREATE, by Istio's
/// `GetDeployMetaFromPod`:
/// - only a pod with `generateName` (every built-in controller sets it, a StatefulSet
///   next to the pod's name) is looked at further; a pod without one is its own workload
///   (kind `Pod`, `v1`, its name), whatever owns it (a Node's mirror pod, say);
/// - its controller `ownerReference` (`controller: true`) names the workload, with its
///   kind and apiVersion, except that:
///   - a ReplicaSet named `<name>-<pod-template-hash label>` is the Deployment `<name>`;
///   - a ReplicaSet named `<name>-<rollouts-pod-template-hash label>` is the Argo
///     Rollout `<name>` (apiVersion `v1alpha1`, as Istio writes it);
///   - a ReplicationController with a `deploymentconfig` label is that OpenShift
///     DeploymentConfig;
///   - a Job named `<name>-<8 to 10 digits>` (the CronJob controller's scheduled-time
///     suffix; Istio's `(.+)-\d{8,10}$`) is the CronJob `<name>`, `batch/v1`;
/// - no controller: the pod itself, whose name is empty when it only has `generateName`
///   (Istio too: the variables that need a name are then left out).
pub fn derive(view: &PodView) -> Workload {
    let own = Workload {
        name: view.name.clone(),
        kind: "Pod".into(),
        api_version: "v1".into(),
    };
    if view.generate_name.is_empty() {
        return own;
    }
    let Some(c) = view
        .owner_references
        .iter()
        .find(|r| r.controller == Some(true))
    else {
        return own;
    };
    let named = |name: &str, kind: &str, api_version: &str| Workload {
        name: name.to_string(),
        kind: kind.to_string(),
        api_version: api_version.to_string(),
    };
    let label = |k: &str| {
        view.labels
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let trimmed = |hash: &str| {
        c.name
            .strip_suffix(hash)
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty())
    };
    match c.kind.as_str() {
        "ReplicaSet" => {
            if let Some(d) = label(label::POD_TEMPLATE_HASH).and_then(trimmed) {
                return named(d, "Deployment", &c.api_version);
            }
            if let Some(r) = label(label::ROLLOUTS_POD_TEMPLATE_HASH).and_then(trimmed) {
                return named(r, "Rollout", "v1alpha1");
            }
        }
        "ReplicationController" => {
            if let Some(dc) = label(label::DEPLOYMENT_CONFIG) {
                return named(dc, "DeploymentConfig", &c.api_version);
            }
        }
        "Job" => {
            if let Some(cron) = cron_job_name(&c.name) {
                return named(cron, "CronJob", "batch/v1");
            }
        }
        _ => {}
    }
    named(&c.name, &c.kind, &c.api_version)
}

/// The CronJob of a Job named `<cronjob>-<8 to 10 ASCII digits>` (Istio's
/// `(.+)-\d{8,10}$`).
fn cron_job_name(job: &str) -> Option<&str> {
    let (name, digits) = job.rsplit_once('-')?;
    let ok = !name.is_empty()
        && (8..=10).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then_some(name)
}

/// kube-inject's workload for a document of `kind` (not a Pod: `None`, its template is
/// derived like the webhook's pod). The name is the document's own; the apiVersion is the
/// one the built-in controller writes into its pods' `ownerReferences` (`apps/v1`,
/// `batch/v1`, `v1`), which is what the webhook derives for the same pods: a document
/// still in `extensions/v1beta1` or `batch/v1beta1` (Istio's kube-inject keeps that
/// version) would otherwise give an owner the webhook never gives, and the webhook would
/// re-inject every such kube-injected pod.
pub fn for_document(kind: &str, name: &str) -> Option<Workload> {
    let api_version = match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => "apps/v1",
        "Job" | "CronJob" => "batch/v1",
        "ReplicationController" => "v1",
        _ => return None,
    };
    Some(Workload {
        name: name.to_string(),
        kind: kind.to_string(),
        api_version: api_version.to_string(),
    })
}

/// The identity env of the proxy container, in order: (name, literal value). Variables
/// without a value are left out (the proxy then says `unknown`), except
/// `CANONICAL_REVISION`, which is `latest` by default.
pub fn proxy_env(
    workload: &Workload,
    labels: &BTreeMap<String, String>,
) -> Vec<(&'static str, String)> {
    // Istio's `index .ObjectMeta.Labels k | default ...`: an empty value counts as absent.
    let label = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let first = |keys: &[&str]| keys.iter().find_map(|k| label(k));
    let mut out = Vec::new();
    let workload_name = label(label::WORKLOAD_NAME).unwrap_or(&workload.name);
    if !workload_name.is_empty() {
        out.push((env::WORKLOAD_NAME, workload_name.to_string()));
    }
    if !workload.api_version.is_empty() && !workload.name.is_empty() {
        out.push((
            env::OWNER,
            format!(
                "kubernetes://apis/{}/namespaces/$({})/{}s/{}",
                workload.api_version,
                env::POD_NAMESPACE,
                workload.kind.to_lowercase(),
                workload.name
            ),
        ));
    }
    // `| trunc 63 | trimAll "-_."`, as Istio's template does for the label.
    let service: String = first(&[label::CANONICAL_NAME, label::K8S_NAME, label::APP])
        .unwrap_or(&workload.name)
        .chars()
        .take(63)
        .collect();
    let service = service.trim_matches(['-', '_', '.']);
    if !service.is_empty() {
        out.push((env::CANONICAL_SERVICE, service.to_string()));
    }
    let revision = first(&[
        label::CANONICAL_REVISION,
        label::K8S_VERSION,
        label::VERSION,
    ])
    .unwrap_or(DEFAULT_REVISION);
    out.push((env::CANONICAL_REVISION, revision.to_string()));
    if let Some(app) = label(label::APP) {
        out.push((env::APP_NAME, app.to_string()));
    }
    if let Some(version) = label(label::VERSION) {
        out.push((env::APP_VERSION, version.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn view(meta: Value) -> PodView {
        PodView::read(&json!({"metadata": meta, "spec": {"containers": [{"name": "a"}]}})).unwrap()
    }

    fn owner(api: &str, kind: &str, name: &str) -> Value {
        json!([{"apiVersion": api, "kind": kind, "name": name, "uid": "u-1",
                "controller": true, "blockOwnerDeletion": true}])
    }

    fn w(name: &str, kind: &str, api: &str) -> Workload {
        Workload {
            name: name.into(),
            kind: kind.into(),
            api_version: api.into(),
        }
    }

    #[test]
    fn replica_set_with_its_hash_is_the_deployment() {
        let v = view(json!({
            "generateName": "reviews-v1-5d8f7c9b4-",
            "labels": {"app": "reviews", "pod-template-hash": "5d8f7c9b4"},
            "ownerReferences": owner("apps/v1", "ReplicaSet", "reviews-v1-5d8f7c9b4"),
        }));
        assert_eq!(derive(&v), w("reviews-v1", "Deployment", "apps/v1"));
    }

    #[test]
    fn replica_set_without_the_hash_is_itself() {
        for labels in [
            json!({"app": "rs"}),
            json!({"pod-template-hash": ""}),
            // The hash of another ReplicaSet: not this one's suffix.
            json!({"pod-template-hash": "other"}),
        ] {
            let v = view(json!({
                "generateName": "frontend-",
                "labels": labels,
                "ownerReferences": owner("apps/v1", "ReplicaSet", "frontend"),
            }));
            assert_eq!(
                derive(&v),
                w("frontend", "ReplicaSet", "apps/v1"),
                "{labels}"
            );
        }
        // The hash is the whole name: no Deployment name is left.
        let v = view(json!({
            "generateName": "abc-",
            "labels": {"pod-template-hash": "abc"},
            "ownerReferences": owner("apps/v1", "ReplicaSet", "abc"),
        }));
        assert_eq!(derive(&v), w("abc", "ReplicaSet", "apps/v1"));
    }

    #[test]
    fn job_with_a_schedule_suffix_is_the_cron_job() {
        for (job, want) in [
            ("backup-29000000", w("backup", "CronJob", "batch/v1")),
            ("backup-2900000000", w("backup", "CronJob", "batch/v1")),
            (
                "nightly-db-29123456",
                w("nightly-db", "CronJob", "batch/v1"),
            ),
            // 7 and 11 digits: not the CronJob controller's suffix.
            ("backup-2900000", w("backup-2900000", "Job", "batch/v1")),
            (
                "backup-29000000000",
                w("backup-29000000000", "Job", "batch/v1"),
            ),
            ("backup-2900000a", w("backup-2900000a", "Job", "batch/v1")),
            ("-29000000", w("-29000000", "Job", "batch/v1")),
            ("pi", w("pi", "Job", "batch/v1")),
        ] {
            let v = view(json!({
                "generateName": format!("{job}-"),
                "labels": {"job-name": job},
                "ownerReferences": owner("batch/v1", "Job", job),
            }));
            assert_eq!(derive(&v), want, "{job}");
        }
    }

    #[test]
    fn other_controllers_are_themselves() {
        for (kind, api, pod_name) in [
            ("StatefulSet", "apps/v1", "db-0"),
            ("DaemonSet", "apps/v1", ""),
            ("ReplicationController", "v1", ""),
            ("Job", "batch/v1", ""),
            ("TaskRun", "tekton.dev/v1", ""),
        ] {
            let name = if kind == "StatefulSet" { "db" } else { "ctl" };
            let v = view(json!({
                "name": pod_name,
                "generateName": format!("{name}-"),
                "labels": {"controller-revision-hash": "db-6c9f7d5b8"},
                "ownerReferences": owner(api, kind, name),
            }));
            assert_eq!(derive(&v), w(name, kind, api), "{kind}");
        }
    }

    #[test]
    fn istio_heuristics_for_rollouts_and_deployment_configs() {
        let v = view(json!({
            "generateName": "canary-6f7d8-",
            "labels": {"rollouts-pod-template-hash": "6f7d8"},
            "ownerReferences": owner("apps/v1", "ReplicaSet", "canary-6f7d8"),
        }));
        assert_eq!(derive(&v), w("canary", "Rollout", "v1alpha1"));
        let v = view(json!({
            "generateName": "web-3-",
            "labels": {"deploymentconfig": "web"},
            "ownerReferences": owner("v1", "ReplicationController", "web-3"),
        }));
        assert_eq!(derive(&v), w("web", "DeploymentConfig", "v1"));
    }

    #[test]
    fn bare_pods_are_themselves() {
        assert_eq!(
            derive(&view(json!({"name": "debug"}))),
            w("debug", "Pod", "v1")
        );
        // Only generateName, no controller: no name to give (Istio: empty too).
        assert_eq!(
            derive(&view(json!({"generateName": "worker-"}))),
            w("", "Pod", "v1")
        );
        assert_eq!(derive(&view(Value::Null)), w("", "Pod", "v1"));
        // A reference that is not the controller does not count.
        let mut refs = owner("apps/v1", "ReplicaSet", "x");
        refs[0]["controller"] = json!(false);
        let v = view(json!({"generateName": "x-", "ownerReferences": refs}));
        assert_eq!(derive(&v), w("", "Pod", "v1"));
        // No generateName: the pod is its own workload whatever owns it (a mirror pod).
        let v = view(json!({
            "name": "etcd-node1",
            "ownerReferences": owner("v1", "Node", "node1"),
        }));
        assert_eq!(derive(&v), w("etcd-node1", "Pod", "v1"));
    }

    #[test]
    fn documents_name_their_controllers_version() {
        assert_eq!(
            for_document("Deployment", "web"),
            Some(w("web", "Deployment", "apps/v1"))
        );
        assert_eq!(
            for_document("CronJob", "cron"),
            Some(w("cron", "CronJob", "batch/v1"))
        );
        assert_eq!(
            for_document("ReplicationController", "rc"),
            Some(w("rc", "ReplicationController", "v1"))
        );
        assert_eq!(for_document("Pod", "p"), None);
    }

    fn labels(v: Value) -> BTreeMap<String, String> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn env_of_a_deployment_pod() {
        let env = proxy_env(
            &w("reviews-v1", "Deployment", "apps/v1"),
            &labels(json!({"app": "reviews", "version": "v1", "pod-template-hash": "x"})),
        );
        assert_eq!(
            env,
            [
                (env::WORKLOAD_NAME, "reviews-v1".to_string()),
                (
                    env::OWNER,
                    "kubernetes://apis/apps/v1/namespaces/$(POD_NAMESPACE)/deployments/reviews-v1"
                        .to_string()
                ),
                (env::CANONICAL_SERVICE, "reviews".to_string()),
                (env::CANONICAL_REVISION, "v1".to_string()),
                (env::APP_NAME, "reviews".to_string()),
                (env::APP_VERSION, "v1".to_string()),
            ]
        );
    }

    #[test]
    fn canonical_labels_in_istios_order() {
        let wl = w("web", "StatefulSet", "apps/v1");
        let get = |l: Value, k: &str| {
            proxy_env(&wl, &labels(l))
                .into_iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v)
        };
        let all = json!({
            "service.istio.io/canonical-name": "svc", "app.kubernetes.io/name": "k8s",
            "app": "app", "service.istio.io/canonical-revision": "r1",
            "app.kubernetes.io/version": "k1", "version": "v1"
        });
        assert_eq!(
            get(all.clone(), env::CANONICAL_SERVICE).as_deref(),
            Some("svc")
        );
        assert_eq!(get(all, env::CANONICAL_REVISION).as_deref(), Some("r1"));
        let k8s = json!({"app.kubernetes.io/name": "k8s", "app": "app",
                         "app.kubernetes.io/version": "k1", "version": "v1"});
        assert_eq!(
            get(k8s.clone(), env::CANONICAL_SERVICE).as_deref(),
            Some("k8s")
        );
        assert_eq!(get(k8s, env::CANONICAL_REVISION).as_deref(), Some("k1"));
        let plain = json!({"app": "app", "version": "v1"});
        assert_eq!(
            get(plain.clone(), env::CANONICAL_SERVICE).as_deref(),
            Some("app")
        );
        assert_eq!(get(plain, env::CANONICAL_REVISION).as_deref(), Some("v1"));
        // Nothing (or empty values): the workload name, and `latest`; no APP_*.
        let none = json!({"app": "", "service.istio.io/canonical-name": ""});
        assert_eq!(
            get(none.clone(), env::CANONICAL_SERVICE).as_deref(),
            Some("web")
        );
        assert_eq!(
            get(none.clone(), env::CANONICAL_REVISION).as_deref(),
            Some("latest")
        );
        assert_eq!(get(none.clone(), env::APP_NAME), None);
        assert_eq!(get(none, env::APP_VERSION), None);
        // Istio's `trunc 63 | trimAll "-_."`.
        let long = format!("{}-x", "a".repeat(62));
        assert_eq!(
            get(json!({"app": long}), env::CANONICAL_SERVICE),
            Some("a".repeat(62))
        );
    }

    #[test]
    fn workload_name_label_and_missing_names() {
        let env = proxy_env(
            &w("reviews-v1", "Deployment", "apps/v1"),
            &labels(json!({"service.istio.io/workload-name": "reviews"})),
        );
        assert_eq!(env[0], (env::WORKLOAD_NAME, "reviews".to_string()));
        assert!(env[1].1.ends_with("/deployments/reviews-v1"), "{env:?}");
        assert_eq!(env[2], (env::CANONICAL_SERVICE, "reviews-v1".to_string()));
        // A pod with only generateName: nothing needs a name but the revision.
        assert_eq!(
            proxy_env(&w("", "Pod", "v1"), &BTreeMap::new()),
            [(env::CANONICAL_REVISION, "latest".to_string())]
        );
        let env = proxy_env(&w("p", "Pod", "v1"), &BTreeMap::new());
        assert_eq!(
            env[1],
            (
                env::OWNER,
                "kubernetes://apis/v1/namespaces/$(POD_NAMESPACE)/pods/p".to_string()
            )
        );
    }
}
