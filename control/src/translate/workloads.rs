//! Pods as the mesh sees them: labels, IPs, named container ports, and the peer metadata
//! ([`PeerMeta`]) metrics label them with.
//!
//! The peer metadata is what the pod's own proxy reports about itself, so both ends of a
//! connection agree: the literal env the injector wrote into `istio-proxy`
//! (`ISTIO_META_WORKLOAD_NAME`, `CANONICAL_SERVICE`, `CANONICAL_REVISION`, `APP_NAME`,
//! `APP_VERSION`; see `mesh_common::contract::proxy::env`) where present, else the same
//! derivation the injector makes (`webhook/src/inject/workload.rs`, after Istio's
//! `GetDeployMetaFromPod`) from the pod as the API server shows it now.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Pod};
use mesh_common::contract::proxy::env;
use mesh_config::PeerMeta;

/// The labels that shape a pod's identity (Istio's names).
mod label {
    pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
    pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
    pub const WORKLOAD_NAME: &str = "service.istio.io/workload-name";
    pub const K8S_NAME: &str = "app.kubernetes.io/name";
    pub const K8S_VERSION: &str = "app.kubernetes.io/version";
    pub const APP: &str = "app";
    pub const VERSION: &str = "version";
    pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
    pub const ROLLOUTS_POD_TEMPLATE_HASH: &str = "rollouts-pod-template-hash";
    pub const DEPLOYMENT_CONFIG: &str = "deploymentconfig";
}

/// What Istio reports where nothing is known.
pub const UNKNOWN: &str = "unknown";

/// One pod, indexed.
#[derive(Debug, Clone)]
pub struct PodRec {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `status.podIPs` (else `status.podIP`); empty for a host-network or finished pod,
    /// whose IP is not its own.
    pub ips: Vec<IpAddr>,
    /// Named container ports (`containers[].ports[].name`), for named `targetPort`s.
    pub named_ports: BTreeMap<String, u16>,
    pub meta: PeerMeta,
}

impl PodRec {
    pub fn new(pod: &Pod) -> Option<PodRec> {
        let md = &pod.metadata;
        let name = md.name.clone().filter(|n| !n.is_empty())?;
        let namespace = md
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let labels = md.labels.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let mut ips = Vec::new();
        if !host_network
            && !finished
            && let Some(status) = &pod.status
        {
            let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
            for ip in listed.chain(status.pod_ip.as_deref()) {
                if let Ok(ip) = ip.parse::<IpAddr>()
                    && !ips.contains(&ip)
                {
                    ips.push(ip);
                }
            }
        }
        let mut named_ports = BTreeMap::new();
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
            for p in c.ports.iter().flatten() {
                if let (Some(n), Ok(port)) = (&p.name, u16::try_from(p.container_port))
                    && !n.is_empty()
                {
                    named_ports.entry(n.clone()).or_insert(port);
                }
            }
        }
        let meta = peer_meta(pod, &namespace, &name, &labels);
        Some(PodRec {
            namespace,
            name,
            labels,
            ips,
            named_ports,
            meta,
        })
    }
}

/// The `istio-proxy` container (a regular or a native-sidecar init container).
fn proxy_container(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == mesh_common::containers::PROXY)
}

fn peer_meta(
    pod: &Pod,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> PeerMeta {
    let proxy = proxy_container(pod);
    // A literal env value the injector wrote (a downward-API value is not one).
    let env_of = |k: &str| {
        proxy?
            .env
            .iter()
            .flatten()
            .find(|e| e.name == k)
            .and_then(|e| e.value.as_deref())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let label = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let first = |keys: &[&str]| keys.iter().find_map(|k| label(k));

    let workload = env_of(env::WORKLOAD_NAME)
        .or_else(|| label(label::WORKLOAD_NAME).map(str::to_owned))
        .unwrap_or_else(|| derive_workload_name(pod, name, labels));
    let canonical_service = env_of(env::CANONICAL_SERVICE).unwrap_or_else(|| {
        let raw: String = first(&[label::CANONICAL_NAME, label::K8S_NAME, label::APP])
            .unwrap_or(&workload)
            .chars()
            .take(63)
            .collect();
        raw.trim_matches(['-', '_', '.']).to_owned()
    });
    let canonical_revision = env_of(env::CANONICAL_REVISION).unwrap_or_else(|| {
        first(&[
            label::CANONICAL_REVISION,
            label::K8S_VERSION,
            label::VERSION,
        ])
        .unwrap_or("latest")
        .to_owned()
    });
    let app = env_of(env::APP_NAME).or_else(|| label(label::APP).map(str::to_owned));
    let version = env_of(env::APP_VERSION).or_else(|| label(label::VERSION).map(str::to_owned));
    let spec = pod.spec.as_ref();
    let service_account = spec
        .and_then(|s| {
            s.service_account_name
                .as_deref()
                .or(s.service_account.as_deref())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    let sidecar = proxy.is_some()
        || pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(mesh_common::annotations::STATUS));
    let known = |s: String| if s.is_empty() { UNKNOWN.to_owned() } else { s };
    PeerMeta {
        workload: known(workload),
        namespace: namespace.to_owned(),
        canonical_service: known(canonical_service),
        canonical_revision: known(canonical_revision),
        app: known(app.unwrap_or_default()),
        version: known(version.unwrap_or_default()),
        service_account,
        sidecar,
    }
}

/// The workload name as the injector derives it (Istio's `GetDeployMetaFromPod`): a pod
/// without `generateName` is its own workload; else its controller, where a ReplicaSet
/// named `<d>-<pod-template-hash>` is the Deployment `<d>` (or the Argo Rollout, with
/// `rollouts-pod-template-hash`), a ReplicationController with a `deploymentconfig` label
/// is that DeploymentConfig, and a Job named `<c>-<8 to 10 digits>` is the CronJob `<c>`.
/// Empty when there is no name to give (a bare pod with only `generateName`).
pub fn derive_workload_name(pod: &Pod, name: &str, labels: &BTreeMap<String, String>) -> String {
    let md = &pod.metadata;
    if md.generate_name.as_deref().unwrap_or_default().is_empty() {
        return name.to_owned();
    }
    let Some(c) = md
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
    else {
        return name.to_owned();
    };
    let label = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let trimmed = |hash: &str| {
        c.name
            .strip_suffix(hash)
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
    };
    let derived = match c.kind.as_str() {
        "ReplicaSet" => label(label::POD_TEMPLATE_HASH)
            .and_then(trimmed)
            .or_else(|| label(label::ROLLOUTS_POD_TEMPLATE_HASH).and_then(trimmed)),
        "ReplicationController" => label(label::DEPLOYMENT_CONFIG).map(str::to_owned),
        "Job" => cron_job_name(&c.name).map(str::to_owned),
        _ => None,
    };
    derived.unwrap_or_else(|| c.name.clone())
}

/// `<cronjob>-<8 to 10 digits>` → `<cronjob>`.
fn cron_job_name(job: &str) -> Option<&str> {
    let (name, digits) = job.rsplit_once('-')?;
    let ok = !name.is_empty()
        && (8..=10).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then_some(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{Value, json};

    fn pod(v: Value) -> PodRec {
        PodRec::new(&serde_json::from_value(v).unwrap()).unwrap()
    }

    fn owned(kind: &str, owner: &str, labels: Value) -> Value {
        json!({
            "metadata": {"name": format!("{owner}-x1"), "generateName": format!("{owner}-"),
                         "namespace": "ns", "labels": labels,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind,
                                              "name": owner, "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"podIP": "10.0.0.1"}
        })
    }

    #[test]
    fn workload_names_as_the_injector_derives_them() {
        let p = pod(owned(
            "ReplicaSet",
            "reviews-v1-5d8f7c9b4",
            json!({"app": "reviews", "version": "v1", "pod-template-hash": "5d8f7c9b4"}),
        ));
        assert_eq!(p.meta.workload, "reviews-v1");
        assert_eq!(p.meta.canonical_service, "reviews");
        assert_eq!(p.meta.canonical_revision, "v1");
        assert_eq!(
            (p.meta.app.as_str(), p.meta.version.as_str()),
            ("reviews", "v1")
        );
        assert!(!p.meta.sidecar);
        assert_eq!(p.meta.service_account, "default");
        assert_eq!(
            pod(owned("StatefulSet", "db", json!({}))).meta.workload,
            "db"
        );
        assert_eq!(
            pod(owned("Job", "backup-29000000", json!({})))
                .meta
                .workload,
            "backup"
        );
        assert_eq!(pod(owned("Job", "pi", json!({}))).meta.workload, "pi");
        // The ReplicaSet's hash label missing: the ReplicaSet itself.
        assert_eq!(
            pod(owned("ReplicaSet", "rs-abc", json!({}))).meta.workload,
            "rs-abc"
        );
        let bare = pod(json!({"metadata": {"name": "debug"}}));
        assert_eq!(bare.meta.workload, "debug");
        assert_eq!(bare.meta.canonical_service, "debug");
        assert_eq!(bare.meta.canonical_revision, "latest");
        assert_eq!(bare.meta.app, "unknown");
        assert_eq!(bare.namespace, "default");
    }

    #[test]
    fn the_proxy_env_wins() {
        let p = pod(json!({
            "metadata": {"name": "r-1", "generateName": "r-", "labels": {"app": "label-app"}},
            "spec": {"serviceAccountName": "bookinfo-reviews", "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 9080}]},
                {"name": "istio-proxy", "env": [
                    {"name": "ISTIO_META_WORKLOAD_NAME", "value": "reviews-v2"},
                    {"name": "CANONICAL_SERVICE", "value": "reviews"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ]}
            ]},
            "status": {"podIPs": [{"ip": "10.0.0.2"}, {"ip": "fd00::2"}], "podIP": "10.0.0.2"}
        }));
        assert_eq!(p.meta.workload, "reviews-v2");
        assert_eq!(p.meta.canonical_service, "reviews");
        assert_eq!(p.meta.app, "label-app");
        assert_eq!(p.meta.service_account, "bookinfo-reviews");
        assert!(p.meta.sidecar);
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.named_ports["http"], 9080);
    }

    #[test]
    fn host_network_and_finished_pods_have_no_ip_of_their_own() {
        let p = pod(
            json!({"metadata": {"name": "h"}, "spec": {"hostNetwork": true,
            "containers": []}, "status": {"podIP": "192.168.0.1"}}),
        );
        assert!(p.ips.is_empty());
        let p = pod(
            json!({"metadata": {"name": "j"}, "status": {"phase": "Succeeded",
            "podIP": "10.0.0.9"}}),
        );
        assert!(p.ips.is_empty());
    }
}
