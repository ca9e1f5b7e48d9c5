//! mesh-control's RBAC, as a real API server (KUBECONFIG) authorizes it: deploy/'s
//! ClusterRole and ClusterRoleBinding, applied under names unique to this run (so runs and
//! other users of the same API server never share them) and bound to a ServiceAccount of
//! that name, let it read what it translates and write Events, in any namespace, and
//! nothing else. deploy_manifests.rs holds the names and the exact rule set.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod deploy_support;

use deploy_support::{find, kubectl_run, kubectl_try, render, require_kubeconfig, unique};
use serde_json::{Value, json};

const NS: &str = "mesh-system";

/// Deletes the run's objects (by name) on drop, also when an assertion failed.
struct Cleanup(Vec<(String, Option<String>, String)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (kind, ns, name) in &self.0 {
            let mut args = vec!["delete", kind.as_str(), name.as_str(), "--ignore-not-found"];
            if let Some(ns) = ns {
                args.extend(["-n", ns.as_str()]);
            }
            let _ = kubectl_try(&args, None);
        }
    }
}

#[test]
fn control_plane_may_read_what_it_translates_and_write_events_only() {
    require_kubeconfig();
    let objs = render("deploy");
    let name = unique("mesh-control-rbac");
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": NS}});
    let mut role: Value = find(&objs, "ClusterRole", "mesh-control").clone();
    role["metadata"] = json!({"name": name});
    let mut binding: Value = find(&objs, "ClusterRoleBinding", "mesh-control").clone();
    binding["metadata"] = json!({"name": name});
    binding["roleRef"]["name"] = json!(name);
    assert_eq!(binding["subjects"].as_array().unwrap().len(), 1);
    binding["subjects"][0]["name"] = json!(name);
    binding["subjects"][0]["namespace"] = json!(NS);

    let _cleanup = Cleanup(vec![
        ("clusterrolebinding".into(), None, name.clone()),
        ("clusterrole".into(), None, name.clone()),
        ("serviceaccount".into(), Some(NS.into()), name.clone()),
    ]);
    kubectl_run(
        &["apply", "-f", "-"],
        Some(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}).to_string(),
        ),
    );
    kubectl_run(
        &["apply", "-f", "-"],
        Some(
            &json!({"apiVersion": "v1", "kind": "List", "items": [sa, role, binding]}).to_string(),
        ),
    );

    // A SubjectAccessReview per question (kubectl 1.20's `auth can-i` loses the group of
    // a kind whose CRD the server lacks), as the API server would authorize the
    // ServiceAccount's requests.
    let user = format!("system:serviceaccount:{NS}:{name}");
    let can = |verb: &str, group: &str, resource: &str| {
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NS}"),
                           "system:authenticated"],
                "resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                       "subresource": sub, "namespace": "shop"}
            }
        });
        let out = kubectl_run(
            &["create", "-o", "json", "-f", "-"],
            Some(&review.to_string()),
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        v["status"]["allowed"] == true
    };
    let mut wrong = Vec::new();
    for (group, resource) in [
        ("", "services"),
        ("", "pods"),
        ("", "namespaces"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.istio.io", "virtualservices"),
        ("networking.istio.io", "destinationrules"),
        ("networking.istio.io", "gateways"),
        ("security.istio.io", "peerauthentications"),
        ("security.istio.io", "authorizationpolicies"),
        // A Gateway's credentialName: read, never written outside mesh-system.
        ("", "secrets"),
    ] {
        for verb in ["get", "list", "watch"] {
            if !can(verb, group, resource) {
                wrong.push(format!("cannot {verb} {group}/{resource}"));
            }
        }
        for verb in ["create", "update", "patch", "delete"] {
            if can(verb, group, resource) {
                wrong.push(format!("may {verb} {group}/{resource}"));
            }
        }
    }
    for group in ["", "events.k8s.io"] {
        for verb in ["create", "patch"] {
            if !can(verb, group, "events") {
                wrong.push(format!("cannot {verb} {group}/events"));
            }
        }
        if can("delete", group, "events") {
            wrong.push(format!("may delete {group}/events"));
        }
    }
    // The CA: TokenReviews, and ConfigMap istio-ca-root-cert in every namespace.
    for (verb, group, resource, want) in [
        ("create", "authentication.k8s.io", "tokenreviews", true),
        ("get", "", "configmaps", true),
        ("list", "", "configmaps", true),
        ("watch", "", "configmaps", true),
        ("create", "", "configmaps", true),
        ("update", "", "configmaps", true),
        ("patch", "", "configmaps", true),
        ("delete", "", "configmaps", false),
    ] {
        if can(verb, group, resource) != want {
            let may = if want { "cannot" } else { "may" };
            wrong.push(format!("{may} {verb} {group}/{resource}"));
        }
    }
    for (verb, group, resource) in [
        ("list", "", "endpoints"),
        ("list", "networking.istio.io", "serviceentries"),
        ("update", "", "services/status"),
        ("create", "", "pods"),
        (
            "patch",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
        ),
        ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
    ] {
        if can(verb, group, resource) {
            wrong.push(format!("may {verb} {group}/{resource}"));
        }
    }
    assert!(wrong.is_empty(), "mesh-control's RBAC: {wrong:#?}");
}
