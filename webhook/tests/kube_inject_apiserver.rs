//! kube-inject's output is accepted by a real API server, read back by Kubernetes' own YAML
//! parser (YAML 1.1: where unquoted `on`, `yes`, `0755` would change type), and validated
//! by it: container ports, probes, quantities (request <= limit), security contexts, names.
//!
//! Needs a real API server through `KUBECONFIG` (kube-local v1.20.2 in CI, as .ci/run sets
//! it up) and fails loudly without one. It creates one namespace, removed on drop, and
//! otherwise only runs `kubectl apply --dry-run=server`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::Path;

mod deploy_support;

use deploy_support::{kubectl_try, require_kubeconfig};
use mesh_webhook::config::InjectConfig;
use mesh_webhook::kube_inject::{self, Mode};
use mesh_webhook::yaml;
use serde_json::Value;

/// A namespace of our own, deleted on drop (also when the test fails).
struct TestNamespace(String);

impl TestNamespace {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("kube-inject-{}-{nanos}", std::process::id());
        kubectl_try(&["create", "namespace", &name], None).unwrap();
        TestNamespace(name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl_try(&["delete", "namespace", &self.0, "--wait=false"], None);
    }
}

fn testdata(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// What the ServiceAccount admission plugin does at create, before validation, on every
/// real cluster (kube-local runs without it): a pod template without a
/// `serviceAccountName` gets `default`. Without it the API server refuses the injected
/// projected token volume (`must not be specified when serviceAccountName is not set`).
fn default_service_account(o: &mut Value) {
    let spec = match o["kind"].as_str() {
        Some("Pod") => o.get_mut("spec"),
        Some("CronJob") => o.pointer_mut("/spec/jobTemplate/spec/template/spec"),
        _ => o.pointer_mut("/spec/template/spec"),
    };
    if let Some(spec) = spec.and_then(Value::as_object_mut) {
        spec.entry("serviceAccountName")
            .or_insert_with(|| Value::String("default".into()));
    }
}

/// Every object of a stream (List items flattened), moved into `ns`; Namespaces dropped.
fn objects_in(stream: &str, ns: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for doc in yaml::split_documents(stream) {
        let Some(v) = yaml::parse_document(&doc).unwrap() else {
            continue;
        };
        let items = match v.get("items").and_then(Value::as_array) {
            Some(items) => items.clone(),
            None => vec![v],
        };
        for mut o in items {
            if o["kind"] == "Namespace" {
                continue;
            }
            o["metadata"]["namespace"] = Value::String(ns.to_string());
            default_service_account(&mut o);
            out.push(o);
        }
    }
    out
}

/// Inject, then have the API server validate (dry run) everything; returns what it answered.
fn server_dry_run(input: &str, ns: &str) -> Vec<Value> {
    let cfg = InjectConfig::default();
    let injected = kube_inject::rewrite(
        input,
        Mode::Inject {
            cfg: &cfg,
            native_sidecars: false,
        },
    )
    .unwrap()
    .output;
    // Send YAML, not JSON: the point is that Kubernetes' YAML reader gets what we meant.
    let objs = objects_in(&injected, ns);
    let stream: Vec<String> = objs.iter().map(|o| yaml::to_yaml(o).unwrap()).collect();
    let answer = kubectl_try(
        &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
        Some(&stream.join("---\n")),
    )
    .unwrap_or_else(|e| panic!("{e}\n--- sent:\n{}", stream.join("---\n")));
    let v: Value = serde_json::from_str(&answer).unwrap();
    match v.get("items").and_then(Value::as_array) {
        Some(items) => items.clone(),
        None => vec![v],
    }
}

fn pod_spec(o: &Value) -> &Value {
    if o["kind"] == "Pod" {
        &o["spec"]
    } else {
        &o["spec"]["template"]["spec"]
    }
}

#[test]
fn injected_manifests_pass_api_server_validation() {
    require_kubeconfig();
    let ns = TestNamespace::new();

    // The example app, and golden inputs covering the annotations and layouts a v1.20
    // server can validate (native sidecars need >= 1.29; unknown-field cases are
    // deliberately invalid for a server).
    let mut inputs = vec![testdata("../examples/bookstore.yaml")];
    for case in [
        "pod-basic",
        "pod-existing-annotations",
        "pod-user-init-containers",
        "annotations-traffic",
        "annotations-inbound-none",
        "annotations-proxy",
        "annotations-proxy-limit-only",
        "config-custom",
        "override-istio-proxy-first",
        "label-wins-over-annotation",
        "istio-injected",
        "list",
        "pod-no-metadata",
        "yaml-quoting",
    ] {
        inputs.push(testdata(&format!("testdata/inject/{case}.yaml")));
    }
    let mut injected_pods = 0;
    for input in &inputs {
        for o in server_dry_run(input, &ns.0) {
            if !matches!(
                o["kind"].as_str(),
                Some("Pod" | "Deployment" | "ReplicaSet")
            ) {
                continue;
            }
            let spec = pod_spec(&o);
            let names: Vec<&str> = spec["containers"]
                .as_array()
                .unwrap()
                .iter()
                .chain(spec["initContainers"].as_array().into_iter().flatten())
                .filter_map(|c| c["name"].as_str())
                .collect();
            if names.contains(&"istio-proxy") {
                assert!(names.contains(&"istio-init"), "{names:?}");
                // The workload identity survives validation as injected.
                let volumes: Vec<&str> = spec["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v["name"].as_str())
                    .collect();
                for v in ["istio-token", "istiod-ca-cert"] {
                    assert!(volumes.contains(&v), "{v} not in {volumes:?}");
                }
                let labels = if o["kind"] == "Pod" {
                    &o["metadata"]["labels"]
                } else {
                    &o["spec"]["template"]["metadata"]["labels"]
                };
                assert!(
                    labels["security.istio.io/tlsMode"].is_string(),
                    "no tlsMode label: {labels}"
                );
                injected_pods += 1;
            }
        }
    }
    assert!(
        injected_pods >= 15,
        "only {injected_pods} injected pods checked"
    );
}

/// The strings a YAML 1.1 reader would retype come back from the API server unchanged,
/// and `defaultMode: 0644` means what it meant (420).
#[test]
fn api_server_reads_our_yaml_as_we_meant_it() {
    require_kubeconfig();
    let ns = TestNamespace::new();
    let out = server_dry_run(&testdata("testdata/inject/yaml-quoting.yaml"), &ns.0);
    let deploy = out.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let spec = pod_spec(deploy);
    let env: Vec<(&str, &str)> = spec["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        env,
        [
            ("A", "on"),
            ("B", "0755"),
            ("C", "1e3"),
            ("D", "~"),
            ("E", "null"),
            ("F", ""),
            ("G", "12:30"),
            ("H", "y"),
            ("I", "multi\nline\n")
        ]
    );
    assert_eq!(spec["volumes"][0]["configMap"]["defaultMode"], 420);
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["on"], "yes");
    let args = spec["initContainers"][0]["args"].as_array().unwrap();
    assert_eq!(
        args.iter().map(|a| a.as_str().unwrap()).collect::<Vec<_>>(),
        mesh_common::DEFAULT_INIT_ARGS
    );
}

/// Gateways (issue #14): the istio/gateway chart's Deployment, the label form and a gateway
/// with another container, kube-injected, pass validation as gateways: the proxy keeps
/// `--role gateway`, its env and ports, there is no istio-init, and the chart's pod-level
/// sysctl is still there (the API server accepts it on v1.20; only a v1.20 kubelet refuses
/// to run it, see `inject::containers`).
#[test]
fn injected_gateways_pass_api_server_validation() {
    require_kubeconfig();
    let ns = TestNamespace::new();
    let mut gateways = 0;
    for case in [
        "gateway-helm-annotation",
        "gateway-label",
        "gateway-with-app-container",
    ] {
        let input = testdata(&format!("testdata/inject/{case}.yaml"));
        for o in server_dry_run(&input, &ns.0) {
            if !matches!(o["kind"].as_str(), Some("Pod" | "Deployment")) {
                continue;
            }
            let spec = pod_spec(&o);
            assert!(
                spec["initContainers"]
                    .as_array()
                    .is_none_or(|i| i.iter().all(|c| c["name"] != "istio-init")),
                "{case}: {spec}"
            );
            let proxy = spec["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "istio-proxy")
                .unwrap_or_else(|| panic!("{case}: no istio-proxy"));
            assert_eq!(proxy["args"][0], "--role", "{case}");
            assert_eq!(proxy["args"][1], "gateway", "{case}");
            assert!(proxy["env"].as_array().unwrap().len() >= 4, "{case}");
            assert_eq!(proxy["ports"].as_array().unwrap().len(), 2, "{case}");
            if case == "gateway-helm-annotation" {
                assert_eq!(
                    spec["securityContext"]["sysctls"][0]["name"],
                    "net.ipv4.ip_unprivileged_port_start"
                );
            }
            gateways += 1;
        }
    }
    assert_eq!(gateways, 3);
}
