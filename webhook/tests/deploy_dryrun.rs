//! The rendered manifests pass `kubectl apply --dry-run=server` against a real API
//! server (kube-local v1.20.2 in CI, through KUBECONFIG): admission, defaulting and
//! validation of every object the server knows. Objects whose API the server lacks are
//! named on stderr as not checked: policy/v1 PodDisruptionBudget (Kubernetes >= 1.21)
//! and cert-manager.io objects (need cert-manager's CRDs); the strict typed parse in
//! deploy_manifests.rs covers those.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod deploy_support;

use deploy_support::{kubectl_run, render, require_kubeconfig};
use serde_json::Value;

fn served(api_versions: &str, obj: &Value) -> bool {
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    api_versions.lines().any(|l| l.trim() == api)
}

fn dry_run(dir: &str) {
    require_kubeconfig();
    let objs = render(dir);
    let api_versions = kubectl_run(&["api-versions"], None);
    let (checked, skipped): (Vec<&Value>, Vec<&Value>) =
        objs.iter().partition(|o| served(&api_versions, o));
    for o in &skipped {
        eprintln!(
            "{dir}: NOT CHECKED by the server (API {} not served by this cluster): {} {}",
            o["apiVersion"], o["kind"], o["metadata"]["name"]
        );
    }
    // Only the two APIs that kube-local v1.20 lacks may be skipped.
    for o in &skipped {
        let api = o["apiVersion"].as_str().unwrap();
        assert!(
            api == "policy/v1" || api.starts_with("cert-manager.io/"),
            "{dir}: the server does not serve {api} ({})",
            o["kind"]
        );
    }
    // Namespaced objects can be dry-run only into a namespace that exists.
    kubectl_run(
        &["apply", "-f", "-"],
        Some(
            &serde_json::to_string(&serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh-system"}
            }))
            .unwrap(),
        ),
    );
    // The PDB's spec is the same in policy/v1beta1, which v1.20 serves: check it as that.
    let mut items: Vec<Value> = checked.iter().map(|o| (*o).clone()).collect();
    for o in &skipped {
        if o["apiVersion"] == "policy/v1"
            && api_versions.lines().any(|l| l.trim() == "policy/v1beta1")
        {
            let mut beta = (*o).clone();
            beta["apiVersion"] = "policy/v1beta1".into();
            eprintln!(
                "{dir}: checking {} {} as policy/v1beta1 instead",
                o["kind"], o["metadata"]["name"]
            );
            items.push(beta);
        }
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let out = kubectl_run(
        &["apply", "--dry-run=server", "--validate=true", "-f", "-"],
        Some(&serde_json::to_string(&list).unwrap()),
    );
    eprintln!("{out}");
    for o in &items {
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(
            out.lines()
                .any(|l| l.contains(&format!("/{name} ")) && l.contains("(server dry run)")),
            "{dir}: no server dry-run result for {} {name}:\n{out}",
            o["kind"]
        );
    }
    assert!(
        checked.len() >= 6,
        "{dir}: only {} objects checked",
        checked.len()
    );
}

#[test]
fn base_passes_server_side_dry_run() {
    dry_run("deploy");
}

#[test]
fn cert_manager_overlay_passes_server_side_dry_run() {
    dry_run("deploy/overlays/cert-manager");
}

#[test]
fn with_istio_crds_overlay_passes_server_side_dry_run() {
    dry_run("deploy/overlays/with-istio-crds");
}
