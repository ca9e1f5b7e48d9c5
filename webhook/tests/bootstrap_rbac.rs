//! Self-managed certificates work with exactly the RBAC deploy/ grants, and with no
//! more: the bootstrap runs as the webhook's ServiceAccount (impersonated through the
//! admin kubeconfig of a real API server, KUBECONFIG), creates and rotates its Secret,
//! patches its own webhook configuration, and is refused another configuration or a
//! Secret in another namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod deploy_support;

use std::time::{Duration, SystemTime};

use deploy_support::{find, kubectl_run, render, require_kubeconfig};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::Api;
use mesh_webhook::bootstrap::{self, BootstrapOptions};
use serde_json::{Value, json};

const NS: &str = "mesh-system";

fn arg(args: &Value, flag: &str) -> String {
    args.as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str().unwrap().strip_prefix(&format!("{flag}=")))
        .unwrap_or_else(|| panic!("deploy/ passes no {flag}"))
        .to_owned()
}

/// A copy of `mwc` under `name` whose webhooks can never match a pod.
fn harmless(mwc: &Value, name: &str) -> Value {
    let mut m = mwc.clone();
    m["metadata"] = json!({"name": name});
    for hook in m["webhooks"].as_array_mut().unwrap() {
        hook["objectSelector"] = json!({"matchLabels": {"mesh-test/never": "matches"}});
        hook["failurePolicy"] = json!("Ignore");
    }
    m
}

async fn as_service_account() -> kube::Client {
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{NS}:mesh-webhook"));
    kube::Client::try_from(config).expect("impersonating client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_runs_with_deploys_rbac_and_nothing_more() {
    require_kubeconfig();
    let objs = render("deploy");
    // The identity and its grants, for real (the webhook's: mesh-control's are
    // deploy_control_rbac.rs').
    let grants: Vec<&Value> = objs
        .iter()
        .filter(|o| {
            o["kind"] == "Namespace"
                || (o["metadata"]["name"] == "mesh-webhook"
                    && matches!(
                        o["kind"].as_str(),
                        Some(
                            "ServiceAccount"
                                | "ClusterRole"
                                | "ClusterRoleBinding"
                                | "Role"
                                | "RoleBinding"
                        )
                    ))
        })
        .collect();
    assert_eq!(grants.len(), 6);
    kubectl_run(
        &["apply", "-f", "-"],
        Some(&json!({"apiVersion": "v1", "kind": "List", "items": grants}).to_string()),
    );
    let container =
        &find(&objs, "Deployment", "mesh-webhook")["spec"]["template"]["spec"]["containers"][0];
    let args = &container["args"];
    let (secret, webhook, service) = (
        arg(args, "--secret-name"),
        arg(args, "--webhook-config-name"),
        arg(args, "--service-name"),
    );
    let mwc = find(&objs, "MutatingWebhookConfiguration", &webhook);
    kubectl_run(
        &["apply", "-f", "-"],
        Some(&harmless(mwc, &webhook).to_string()),
    );
    let other = "mesh-rbac-test-other";
    kubectl_run(
        &["apply", "-f", "-"],
        Some(&harmless(mwc, other).to_string()),
    );
    kubectl_run(
        &["-n", NS, "delete", "secret", &secret, "--ignore-not-found"],
        None,
    );

    let sa = as_service_account().await;
    let dir = tempfile::tempdir().unwrap();
    let opts = BootstrapOptions::new(
        NS,
        &service,
        &secret,
        &webhook,
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
    );
    // create, get, patch
    let first = bootstrap::bootstrap(sa.clone(), &opts)
        .await
        .unwrap_or_else(|e| panic!("bootstrap as the ServiceAccount: {e}"));
    let stored = Api::<MutatingWebhookConfiguration>::all(sa.clone())
        .get(&webhook)
        .await
        .unwrap();
    for w in stored.webhooks.unwrap() {
        assert_eq!(
            w.client_config.ca_bundle.unwrap().0,
            first.ca_bundle_pem.as_bytes()
        );
    }
    // update (rotation)
    let later = SystemTime::now() + Duration::from_secs(250 * 86_400);
    let renewed = bootstrap::bootstrap_at(sa.clone(), &opts, later)
        .await
        .unwrap_or_else(|e| panic!("rotation as the ServiceAccount: {e}"));
    assert_ne!(renewed.cert_pem, first.cert_pem);

    // Not another webhook configuration...
    let mut wrong = opts.clone();
    wrong.webhook_config_name = other.to_owned();
    let err = bootstrap::bootstrap(sa.clone(), &wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("MutatingWebhookConfiguration {other}")) && err.contains("forbidden"),
        "{err}"
    );
    // ...nor Secrets elsewhere, nor another Secret here.
    let mut wrong = opts.clone();
    wrong.namespace = "default".to_owned();
    let err = bootstrap::bootstrap(sa.clone(), &wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Secret default/") && err.contains("forbidden"),
        "{err}"
    );
    let mut wrong = opts.clone();
    wrong.secret_name = "someone-elses-secret".to_owned();
    let err = bootstrap::bootstrap(sa, &wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("someone-elses-secret") && err.contains("forbidden"),
        "{err}"
    );

    kubectl_run(
        &[
            "delete",
            "mutatingwebhookconfiguration",
            other,
            &webhook,
            "--ignore-not-found",
        ],
        None,
    );
}
