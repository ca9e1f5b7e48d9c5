//! The webhook and kube-inject never disagree: every case of the golden corpus
//! (webhook/testdata/inject/, new files picked up automatically) goes through the REAL
//! HTTPS server as Pod AdmissionReviews, one per pod template (workload templates wrapped
//! as Pods), and the returned patch, applied with the test's own RFC 6902 applier, must
//! give exactly the pod template in `<case>.yaml.injected`. Cases whose kube-inject run
//! fails on an annotation must be denied by the webhook with the same message.
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

/// A template as the Pod the API server would show the webhook.
fn as_pod(doc: &Value, pointer: &str) -> Value {
    let t = doc.pointer(pointer).unwrap();
    if pointer.is_empty() {
        return t.clone();
    }
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod"});
    for k in ["metadata", "spec"] {
        if let Some(v) = t.get(k) {
            pod[k] = v.clone();
        }
    }
    pod
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
        if let Some(c) = &cfg {
            let p = dir.path().join(format!("{name}.config.yaml"));
            std::fs::write(&p, c).unwrap();
            args.config = Some(p);
        }
        let server = admission::start(args).await.unwrap();
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
                let pod = as_pod(doc, &t.pointer);
                let ns = t.namespace.clone().unwrap_or_else(|| "default".to_string());
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
                let out = match server_support::patch_of(&resp) {
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
        "parity: {compared} pod templates identical, {denied} error cases denied alike; not applicable: {not_applicable:#?}"
    );
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(compared >= 30, "too few templates compared: {compared}");
    assert!(denied >= 10, "too few error cases compared: {denied}");
}
