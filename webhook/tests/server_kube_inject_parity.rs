//! The webhook and kube-inject never disagree: every case of the golden corpus
//! (webhook/testdata/inject/, new files picked up automatically) goes through the REAL
//! HTTPS server as Pod AdmissionReviews, one per pod template (a workload's template
//! wrapped as the Pod its controller creates: generateName, a controller ownerReference,
//! the controller's labels), and the returned patch, applied with the test's own RFC 6902
//! applier, must give exactly (once what the wrapper added is taken off again) the pod
//! template in `<case>.yaml.injected`; that injected template, wrapped the same way, must
//! then come back from the webhook unchanged. Cases whose kube-inject run fails on an
//! annotation must be denied by the webhook with the same message; cases whose header
//! config is refused must stop the server from starting, with the same message. The
//! gateway cases (`gateway-*.yaml`: the istio/gateway chart's Deployment, the label form,
//! ...) are counted apart: issue #14's "kube-inject and the webhook inject a gateway-only
//! Deployment identically".
#![allow(clippy::unwrap_used)]

mod server_support;

use std::path::{Path, PathBuf};

use mesh_webhook::admission;
use mesh_webhook::{workloads, yaml};
use serde_json::{Value, json};
use server_support::{
    Pki, apply_patch, client_config, pod_review, post_inject, response_of, serve_args,
};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/inject")
}

fn parse_all(s: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for d in yaml::split_documents(s) {
        if let Some(v) = yaml::parse_document(&d).map_err(|e| e.to_string())? {
            out.push(v);
        }
    }
    Ok(out)
}

/// The header options the golden test honours: `# config: {...}`, `# mode: uninject`.
fn header(input: &str) -> (Option<String>, bool) {
    let mut cfg = None;
    let mut uninject = false;
    for line in input.lines().take_while(|l| l.starts_with('#')) {
        if let Some(c) = line.strip_prefix("# config:") {
            cfg = Some(c.trim().to_string());
        }
        if line.trim() == "# mode: uninject" {
            uninject = true;
        }
    }
    (cfg, uninject)
}

/// What [`as_pod`] added to a template, so exactly that can be taken off the result.
#[derive(Default)]
struct Added {
    /// The template had no `metadata`.
    metadata: bool,
    /// Keys added to `metadata` (`generateName`, `ownerReferences`, ...).
    keys: Vec<&'static str>,
    /// The template had no `metadata.labels`.
    labels_map: bool,
    /// Labels added to `metadata.labels`.
    labels: Vec<&'static str>,
}

impl Added {
    /// `pod` without what was added (the webhook only touches annotations and the spec).
    fn strip(&self, pod: &mut Value) {
        let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        for k in &self.keys {
            meta.shift_remove(*k);
        }
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            for k in &self.labels {
                labels.shift_remove(*k);
            }
            if self.labels_map && labels.is_empty() {
                meta.shift_remove("labels");
            }
        }
        if self.metadata && meta.is_empty() {
            pod.as_object_mut().unwrap().shift_remove("metadata");
        }
    }
}

/// A template as the Pod the API server shows the webhook at CREATE: a Pod document as
/// it is; a workload's template with what its controller adds when it creates the pod
/// (`generateName`, the namespace, an `ownerReference` with `controller: true` to the
/// ReplicaSet `<name>-<hash>` of a Deployment, to the Job `<name>-<scheduled minute>` of
/// a CronJob, or to the workload itself, and the controller's labels, such as
/// `pod-template-hash`), and what was added.
fn as_pod(doc: &Value, t: &workloads::TemplateRef, ns: &str) -> (Value, Added) {
    let tpl = doc.pointer(&t.pointer).unwrap();
    let mut added = Added::default();
    if t.pointer.is_empty() {
        return (tpl.clone(), added);
    }
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod"});
    for k in ["metadata", "spec"] {
        if let Some(v) = tpl.get(k) {
            pod[k] = v.clone();
        }
    }
    let name = t.workload.as_ref().map_or("", |w| w.name.as_str());
    if name.is_empty() {
        // A workload the API server would not accept: no controller to mimic.
        return (pod, added);
    }
    const HASH: &str = "7d4b9c6f58";
    const REVISION: &str = "6c9f7d5b8";
    const UID: &str = "0b6a3c3e-5f41-4d7e-9a1c-2f3e4d5c6b7a";
    let cron_job = format!("{name}-29123456");
    let (owner_kind, owner_api, owner, pod_name, labels): (
        &str,
        &str,
        String,
        _,
        Vec<(&str, String)>,
    ) = match t.kind.as_str() {
        "Deployment" => (
            "ReplicaSet",
            "apps/v1",
            format!("{name}-{HASH}"),
            None,
            vec![("pod-template-hash", HASH.to_string())],
        ),
        "ReplicaSet" => ("ReplicaSet", "apps/v1", name.to_string(), None, vec![]),
        "StatefulSet" => (
            "StatefulSet",
            "apps/v1",
            name.to_string(),
            Some(format!("{name}-0")),
            vec![
                ("controller-revision-hash", format!("{name}-{REVISION}")),
                ("statefulset.kubernetes.io/pod-name", format!("{name}-0")),
            ],
        ),
        "DaemonSet" => (
            "DaemonSet",
            "apps/v1",
            name.to_string(),
            None,
            vec![
                ("controller-revision-hash", REVISION.to_string()),
                ("pod-template-generation", "1".to_string()),
            ],
        ),
        "ReplicationController" => (
            "ReplicationController",
            "v1",
            name.to_string(),
            None,
            vec![],
        ),
        "Job" => (
            "Job",
            "batch/v1",
            name.to_string(),
            None,
            vec![
                ("controller-uid", UID.to_string()),
                ("job-name", name.to_string()),
            ],
        ),
        "CronJob" => (
            "Job",
            "batch/v1",
            cron_job.clone(),
            None,
            vec![
                ("controller-uid", UID.to_string()),
                ("job-name", cron_job.clone()),
            ],
        ),
        other => panic!("{}: no controller known for kind {other}", t.label),
    };
    if pod.get("metadata").is_none_or(Value::is_null) {
        pod["metadata"] = json!({});
        added.metadata = true;
    }
    let meta = pod["metadata"].as_object_mut().unwrap();
    let mut add = |meta: &mut serde_json::Map<String, Value>, k: &'static str, v: Value| {
        if !meta.contains_key(k) {
            meta.insert(k.to_string(), v);
            added.keys.push(k);
        }
    };
    if let Some(n) = pod_name {
        add(meta, "name", json!(n));
    }
    add(meta, "generateName", json!(format!("{owner}-")));
    add(meta, "namespace", json!(ns));
    add(
        meta,
        "ownerReferences",
        json!([{"apiVersion": owner_api, "kind": owner_kind, "name": owner, "uid": UID,
                "controller": true, "blockOwnerDeletion": true}]),
    );
    if meta.get("labels").is_none_or(Value::is_null) {
        meta.insert("labels".into(), json!({}));
        added.labels_map = true;
    }
    let map = meta["labels"].as_object_mut().unwrap();
    for (k, v) in labels {
        if !map.contains_key(k) {
            map.insert(k.to_string(), json!(v));
            added.labels.push(k);
        }
    }
    (pod, added)
}

/// `metadata` and `spec` only: what a template and the Pod made from it share.
fn template_part(v: &Value) -> Value {
    json!({"metadata": v.get("metadata").cloned().unwrap_or(Value::Null), "spec": v.get("spec").cloned().unwrap_or(Value::Null)})
}

#[tokio::test]
async fn webhook_patches_give_the_kube_inject_goldens() {
    let pki = Pki::new("parity CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.write(dir.path());
    let tls = client_config(&pki.ca_der);

    let mut names: Vec<String> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 30, "corpus too small: {}", names.len());

    let (mut compared, mut denied, mut not_applicable) = (0usize, 0usize, Vec::new());
    let mut unchanged = 0usize;
    let mut gateways = 0usize;
    let mut failures = Vec::new();
    for name in &names {
        let input = std::fs::read_to_string(corpus().join(name)).unwrap();
        let (cfg, uninject) = header(&input);
        if uninject {
            not_applicable.push(format!("{name} (uninject)"));
            continue;
        }
        let injected = std::fs::read_to_string(corpus().join(format!("{name}.injected"))).ok();
        let err = std::fs::read_to_string(corpus().join(format!("{name}.err"))).ok();
        let Ok(docs) = parse_all(&input) else {
            not_applicable.push(format!("{name} (not YAML: nothing reaches a webhook)"));
            continue;
        };

        // A server with this case's config, as its ConfigMap. nativeSidecars: auto is
        // resolved the way kube-inject resolves it when no cluster can be asked: the
        // version probe gets a kubeconfig that does not exist and falls back.
        let mut args = serve_args(&cert, &key);
        args.native_sidecars = None;
        args.kubeconfig = Some(dir.path().join("no-such-kubeconfig"));
        let mut config_path = None;
        if let Some(c) = &cfg {
            let p = dir.path().join(format!("{name}.config.yaml"));
            std::fs::write(&p, c).unwrap();
            args.config = Some(p.clone());
            config_path = Some(p);
        }
        let server = match admission::start(args).await {
            Ok(s) => s,
            Err(e) => {
                // A config the injector refuses: the server refuses to start with the
                // error kube-inject gives (the golden names the case header as origin).
                let said = config_path.map_or(e.to_string(), |p| {
                    e.to_string()
                        .replace(&p.display().to_string(), "case header")
                });
                match &err {
                    Some(want) if want.trim() == said.trim() => denied += 1,
                    _ => failures.push(format!(
                        "{name}: the server does not start ({e}); kube-inject said {err:?}"
                    )),
                }
                continue;
            }
        };
        let addr = server.addr;
        server_support::eventually_ready(addr, tls.clone(), std::time::Duration::from_secs(20))
            .await;

        let golden_docs = injected.as_deref().map(|g| parse_all(g).unwrap());
        let mut denial: Option<String> = None;
        for (i, doc) in docs.iter().enumerate() {
            let Ok(templates) = workloads::find_templates(doc) else {
                continue;
            };
            for t in templates {
                let ns = t.namespace.clone().unwrap_or_else(|| "default".to_string());
                let (pod, added) = as_pod(doc, &t, &ns);
                let uid = format!("{name}-{i}-{}", t.pointer);
                let body = serde_json::to_vec(&pod_review(&uid, &ns, pod.clone())).unwrap();
                let a = post_inject(addr, tls.clone(), body).await;
                if a.status != 200 {
                    failures.push(format!(
                        "{name}: {}: HTTP {} {}",
                        t.label,
                        a.status,
                        a.text()
                    ));
                    continue;
                }
                let resp = response_of(&a.json(), &uid);
                if resp["allowed"] == false {
                    let msg = resp["status"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    denial.get_or_insert(msg);
                    continue;
                }
                let mut out = match server_support::patch_of(&resp) {
                    Some(p) => match apply_patch(&pod, &p) {
                        Ok(v) => v,
                        Err(e) => {
                            failures
                                .push(format!("{name}: {}: patch does not apply: {e}", t.label));
                            continue;
                        }
                    },
                    None => pod.clone(),
                };
                let Some(golden) = &golden_docs else { continue };
                added.strip(&mut out);
                let want = template_part(golden[i].pointer(&t.pointer).unwrap());
                let got = template_part(&out);
                if want != got {
                    failures.push(format!(
                        "{name}: {}: webhook and kube-inject disagree\n--- kube-inject\n{}\n--- webhook\n{}",
                        t.label,
                        serde_json::to_string_pretty(&want).unwrap(),
                        serde_json::to_string_pretty(&got).unwrap()
                    ));
                } else {
                    compared += 1;
                    if name.starts_with("gateway-") {
                        gateways += 1;
                    }
                }
                // kube-inject's output reaching the webhook (`kubectl apply` of it in an
                // injected namespace) is left alone: same workload, same values, same hash.
                let (again, _) = as_pod(&golden[i], &t, &ns);
                let again_uid = format!("{uid}-again");
                let body = serde_json::to_vec(&pod_review(&again_uid, &ns, again)).unwrap();
                let a = post_inject(addr, tls.clone(), body).await;
                let resp = response_of(&a.json(), &again_uid);
                if resp["allowed"] != true {
                    failures.push(format!(
                        "{name}: {}: the webhook denies kube-inject's output: {}",
                        t.label, resp["status"]
                    ));
                } else if let Some(p) = server_support::patch_of(&resp) {
                    failures.push(format!(
                        "{name}: {}: the webhook patches kube-inject's output again: {p}",
                        t.label
                    ));
                } else {
                    unchanged += 1;
                }
            }
        }
        match (&err, denial) {
            (Some(e), Some(msg)) => {
                // kube-inject: "document N (Kind/name), line L: <core error>";
                // webhook: "sidecar injection refused: <core error>".
                let core = msg
                    .strip_prefix("sidecar injection refused: ")
                    .unwrap_or(&msg);
                if e.contains(core) {
                    denied += 1;
                } else {
                    failures.push(format!(
                        "{name}: kube-inject says {e:?}, webhook denies with {msg:?}"
                    ));
                }
            }
            (Some(e), None) => not_applicable.push(format!(
                "{name} (kube-inject error not about a pod: {})",
                e.trim()
            )),
            (None, Some(msg)) => failures.push(format!(
                "{name}: webhook denied ({msg}) but kube-inject succeeded"
            )),
            (None, None) => {}
        }
        server.shutdown().await;
    }
    eprintln!(
        "parity: {compared} pod templates identical ({gateways} of them gateways), {unchanged} kube-injected ones left alone, {denied} error cases denied alike; not applicable: {not_applicable:#?}"
    );
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(compared >= 30, "too few templates compared: {compared}");
    assert!(
        gateways >= 4,
        "too few gateway templates compared: {gateways}"
    );
    assert!(
        unchanged >= 30,
        "too few kube-injected templates re-reviewed: {unchanged}"
    );
    assert!(denied >= 10, "too few error cases compared: {denied}");
}
