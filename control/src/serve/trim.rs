//! What the watchers keep of each object: the stores hold every object mesh-control
//! watches for as long as it exists, so what the translation (`crate::translate`) and
//! the diagnostics never read is dropped as the watch delivers it.
//!
//! - Every kind: `metadata.managedFields` and the
//!   `kubectl.kubernetes.io/last-applied-configuration` annotation (a copy of the whole
//!   object as applied). The rest of the metadata stays: names, labels, the other
//!   annotations, owner references, uid, generation, resourceVersion.
//! - Pods, the largest objects watched, keep what `translate/workloads.rs` reads (the
//!   list is at [`pod`]): no images, commands, volumes, probes, resources, conditions
//!   or container statuses.
//! - Secrets keep their name, namespace, uid, resourceVersion and type, and of their data
//!   only a certificate and key pair a Gateway may use, and the client CA certificates and
//!   CRLs of such a Secret or of a `<name>-cacert` one ([`secret`]): nothing else of
//!   anyone's Secrets is held.
//!
//! Services, EndpointSlices, Namespaces and the Istio kinds are kept whole otherwise: the
//! translation reads most of them. A field the translation starts reading must be kept
//! here too; the test below builds the golden corpus with and without trimming and
//! requires the same answers.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

/// The annotation `kubectl apply` writes: the whole object once more.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What every kind drops.
pub fn metadata<K: Resource>(o: &mut K) {
    let md = o.meta_mut();
    md.managed_fields = None;
    if let Some(a) = md.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            md.annotations = None;
        }
    }
}

/// A Pod as the translation reads it: the metadata ([`metadata`]), and of the spec
/// `hostNetwork`, `serviceAccountName`, `serviceAccount`, each container's name and ports,
/// and the `istio-proxy` container's (regular or init) name, ports and env (the peer
/// metadata the injector wrote); other init containers go. Of the status: `phase`,
/// `podIP`, `podIPs`.
pub fn pod(p: &mut Pod) {
    metadata(p);
    if let Some(spec) = p.spec.take() {
        let keep = |c: Container| {
            let proxy = c.name == mesh_common::containers::PROXY;
            Container {
                env: if proxy { c.env } else { None },
                ports: c.ports,
                name: c.name,
                ..Container::default()
            }
        };
        let init: Vec<Container> = spec
            .init_containers
            .into_iter()
            .flatten()
            .filter(|c| c.name == mesh_common::containers::PROXY)
            .map(keep)
            .collect();
        p.spec = Some(PodSpec {
            containers: spec.containers.into_iter().map(keep).collect(),
            init_containers: (!init.is_empty()).then_some(init),
            host_network: spec.host_network,
            service_account_name: spec.service_account_name,
            service_account: spec.service_account,
            ..PodSpec::default()
        });
    }
    if let Some(status) = p.status.take() {
        p.status = Some(PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            pod_ips: status.pod_ips,
            ..PodStatus::default()
        });
    }
}

/// A Secret as the translation reads it (`translate/gateways.rs`): `type`, the metadata
/// that names it, and of `data` each pair of `cert` / `key` (Istio's generic layout) and
/// `tls.crt` / `tls.key` (`kubernetes.io/tls`) that is there whole; and, in a Secret
/// that keeps such a pair or whose name ends with `-cacert` (where a `MUTUAL` server's
/// client CA may be), the client CA certificates and CRLs `cacert`, `crl`, `ca.crt`,
/// `ca.crl` (public data).
pub fn secret(s: &mut Secret) {
    let ca_secret = s
        .metadata
        .name
        .as_deref()
        .is_some_and(|n| n.ends_with(crate::translate::CA_SECRET_SUFFIX));
    let md = std::mem::take(&mut s.metadata);
    s.metadata = ObjectMeta {
        name: md.name,
        namespace: md.namespace,
        uid: md.uid,
        resource_version: md.resource_version,
        ..ObjectMeta::default()
    };
    s.string_data = None;
    s.immutable = None;
    if let Some(mut data) = s.data.take() {
        let mut kept = std::collections::BTreeMap::new();
        for (c, k) in crate::translate::SECRET_KEYS {
            if data.contains_key(c) && data.contains_key(k) {
                for name in [c, k] {
                    if let Some(v) = data.remove(name) {
                        kept.insert(name.to_owned(), v);
                    }
                }
            }
        }
        if ca_secret || !kept.is_empty() {
            for (ca, crl) in crate::translate::CA_KEYS {
                for name in [ca, crl] {
                    if let Some(v) = data.remove(name) {
                        kept.insert(name.to_owned(), v);
                    }
                }
            }
        }
        s.data = (!kept.is_empty()).then_some(kept);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::DynamicObject;
    use mesh_config::Key;
    use serde_json::{Value, json};

    use super::*;
    use crate::translate::{MeshSettings, Objects, ProxyNode, Snapshot};

    fn corpus() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/translate")
    }

    fn yaml_docs(path: &Path) -> Vec<Value> {
        let text = fs::read_to_string(path).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        docs.into_iter().filter(|d| !d.is_null()).collect()
    }

    /// What a real cluster adds to a Pod that the translation never reads.
    fn fatten(pod: &mut Value) {
        let applied = serde_json::to_string(pod).unwrap();
        pod["metadata"]["annotations"][LAST_APPLIED] = applied.into();
        pod["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply"}]);
        if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("volumes".into(), json!([{"name": "v", "emptyDir": {}}]));
            spec.insert("nodeName".into(), "node-1".into());
            let init = spec.entry("initContainers").or_insert_with(|| json!([]));
            init.as_array_mut()
                .unwrap()
                .push(json!({"name": "setup", "image": "busybox", "ports": [{"name": "x", "containerPort": 1}]}));
            for c in spec["containers"].as_array_mut().into_iter().flatten() {
                c["image"] = "example/app:1".into();
                c["args"] = json!(["--serve"]);
                c["volumeMounts"] = json!([{"name": "v", "mountPath": "/v"}]);
                c["readinessProbe"] = json!({"httpGet": {"path": "/ready", "port": 8080}});
                if c["name"] != mesh_common::containers::PROXY {
                    c["env"] =
                        json!([{"name": "ISTIO_META_WORKLOAD_NAME", "value": "not-the-proxy"}]);
                }
            }
        }
        pod["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        pod["status"]["hostIP"] = "192.168.0.1".into();
        pod["status"]["containerStatuses"] = json!([{"name": "app", "ready": true,
            "restartCount": 0, "image": "example/app:1", "imageID": ""}]);
    }

    fn objects(docs: &[Value], trimmed: bool) -> Objects {
        let mut o = Objects::default();
        for d in docs {
            let mut d = d.clone();
            if trimmed && d["kind"] == "Pod" {
                fatten(&mut d);
            }
            let kind = d["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Namespace" => o
                    .namespaces
                    .push(Arc::new(serde_json::from_value(d).unwrap())),
                "Pod" => {
                    let mut p: Pod = serde_json::from_value(d).unwrap();
                    if trimmed {
                        pod(&mut p);
                    }
                    o.pods.push(Arc::new(p));
                }
                "Service" => {
                    let mut s: Service = serde_json::from_value(d).unwrap();
                    if trimmed {
                        metadata(&mut s);
                    }
                    o.services.push(Arc::new(s));
                }
                "EndpointSlice" => {
                    let mut s: EndpointSlice = serde_json::from_value(d).unwrap();
                    if trimmed {
                        metadata(&mut s);
                    }
                    o.endpoint_slices.push(Arc::new(s));
                }
                "Secret" => {
                    let mut s: Secret = serde_json::from_value(d).unwrap();
                    if trimmed {
                        s.metadata.labels = Some([("app".to_owned(), "shop".to_owned())].into());
                        if let Some(data) = s.data.as_mut() {
                            data.insert(
                                "password".into(),
                                k8s_openapi::ByteString(b"hunter2".to_vec()),
                            );
                        }
                        secret(&mut s);
                    }
                    o.secrets.push(Arc::new(s));
                }
                _ => {
                    let d = if trimmed {
                        // As the Istio watchers store them: dynamic objects, trimmed.
                        let mut dynamic: DynamicObject = serde_json::from_value(d).unwrap();
                        metadata(&mut dynamic);
                        serde_json::to_value(&dynamic).unwrap()
                    } else {
                        d
                    };
                    match kind.as_str() {
                        "VirtualService" => o.virtual_services.push(d),
                        "DestinationRule" => o.destination_rules.push(d),
                        "PeerAuthentication" => o.peer_authentications.push(d),
                        "AuthorizationPolicy" => o.authorization_policies.push(d),
                        "Gateway" => o.gateways.push(d),
                        other => panic!("unexpected kind {other:?}"),
                    }
                }
            }
        }
        o
    }

    /// Every case's diagnostics and answers, as text.
    fn answers(docs: &[Value], queries: &[Value], trimmed: bool) -> String {
        let (snap, diags) = Snapshot::build(objects(docs, trimmed), &MeshSettings::default());
        let mut out = format!("{diags:?}\n");
        for q in queries {
            let (ns, pod) = q["proxy"].as_str().unwrap().split_once('/').unwrap();
            let node = ProxyNode {
                identity: q["identity"].as_str().map(str::to_owned),
                ..ProxyNode::new(ns, pod)
            };
            let key: Key = q["key"].as_str().unwrap().parse().unwrap();
            out.push_str(&String::from_utf8(snap.resolve(&node, &key).to_json()).unwrap());
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_golden_corpus_answers_the_same_trimmed() {
        let mut cases = 0;
        for entry in fs::read_dir(corpus()).unwrap() {
            let path = entry.unwrap().path();
            if !path.join("input.yaml").is_file() {
                continue;
            }
            let head = fs::read_to_string(path.join("input.yaml")).unwrap();
            let mut docs = Vec::new();
            for line in head.lines().take_while(|l| l.starts_with('#')) {
                if let Some(base) = line.strip_prefix("# base:") {
                    docs.extend(yaml_docs(&corpus().join(base.trim())));
                }
            }
            docs.extend(yaml_docs(&path.join("input.yaml")));
            let queries = yaml_docs(&path.join("queries.yaml"));
            let queries: Vec<Value> = queries
                .into_iter()
                .flat_map(|q| match q {
                    Value::Array(a) => a,
                    q => vec![q],
                })
                .collect();
            assert!(!queries.is_empty(), "{}: no queries", path.display());
            assert_eq!(
                answers(&docs, &queries, false),
                answers(&docs, &queries, true),
                "{}",
                path.display()
            );
            cases += 1;
        }
        assert!(cases >= 20, "only {cases} cases found");
    }

    #[test]
    fn a_secret_keeps_only_a_whole_certificate_and_key_pair_and_client_cas() {
        let mut s: Secret = serde_json::from_value(json!({
            "metadata": {"name": "cert", "namespace": "gw", "uid": "u", "resourceVersion": "3",
                "labels": {"a": "b"}, "annotations": {LAST_APPLIED: "{}"},
                "managedFields": [{"manager": "kubectl"}]},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": "Q1JU", "tls.key": "S0VZ", "ca.crt": "Q0E=", "cert": "WA==",
                "tls.ocsp-staple": "Tw=="}
        }))
        .unwrap();
        secret(&mut s);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "cert", "namespace": "gw", "uid": "u", "resourceVersion": "3"},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": "Q1JU", "tls.key": "S0VZ", "ca.crt": "Q0E="}})
        );
        let mut opaque: Secret = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "app"},
            "type": "Opaque", "data": {"password": "cHc=", "key": "aw==", "cacert": "Q0E="}
        }))
        .unwrap();
        secret(&mut opaque);
        assert_eq!(
            opaque.data, None,
            "a CA is kept only beside a credential or in -cacert"
        );
        assert_eq!(opaque.metadata.name.as_deref(), Some("db"));
        let mut ca: Secret = serde_json::from_value(json!({
            "metadata": {"name": "cert-cacert", "namespace": "gw"},
            "type": "Opaque",
            "data": {"cacert": "Q0E=", "crl": "Q1JM", "ca.crl": "Qw==", "password": "cHc="}
        }))
        .unwrap();
        secret(&mut ca);
        assert_eq!(
            serde_json::to_value(ca.data).unwrap(),
            json!({"cacert": "Q0E=", "crl": "Q1JM", "ca.crl": "Qw=="})
        );
    }

    #[test]
    fn a_pod_keeps_what_the_translation_reads() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "r-1", "namespace": "shop", "generateName": "r-",
                "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "reviews"},
                "annotations": {LAST_APPLIED: "{}", "sidecar.istio.io/status": "{}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "r-abc", "uid": "u0", "controller": true}],
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {
                "serviceAccountName": "reviews", "hostNetwork": false, "nodeName": "n1",
                "initContainers": [
                    {"name": "istio-init", "image": "init"},
                    {"name": "istio-proxy", "image": "proxy", "restartPolicy": "Always",
                     "env": [{"name": "ISTIO_META_WORKLOAD_NAME", "value": "reviews-v1"}]}],
                "containers": [{"name": "app", "image": "app", "args": ["x"],
                    "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "http", "containerPort": 9080}]}],
                "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                "hostIP": "192.168.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        pod(&mut p);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "r-1", "namespace": "shop", "generateName": "r-",
                    "uid": "u1", "resourceVersion": "7",
                    "labels": {"app": "reviews"},
                    "annotations": {"sidecar.istio.io/status": "{}"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": "r-abc", "uid": "u0", "controller": true}]},
                "spec": {
                    "serviceAccountName": "reviews", "hostNetwork": false,
                    "initContainers": [{"name": "istio-proxy",
                        "env": [{"name": "ISTIO_META_WORKLOAD_NAME", "value": "reviews-v1"}]}],
                    "containers": [{"name": "app",
                        "ports": [{"name": "http", "containerPort": 9080}]}]},
                "status": {"phase": "Running", "podIP": "10.0.0.1",
                    "podIPs": [{"ip": "10.0.0.1"}]}
            })
        );
    }
}
