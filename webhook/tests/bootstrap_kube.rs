//! Self-managed certificates against a REAL API server (kube-local, through KUBECONFIG):
//! replicas racing at start end with one CA, caBundle is patched into every webhook,
//! rotation renews the serving certificate and rolls the CA over, and the whole thing
//! works with exactly the RBAC that deploy/ grants.
//!
//! These tests never skip: without KUBECONFIG they fail and say how to start kube-local.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod deploy_support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use deploy_support::unique;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use mesh_webhook::bootstrap::{self, BootstrapOptions, Material};

async fn client() -> kube::Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: these tests need a real API server. Start one with \
         ../shared/kube-local/setup.sh && ../shared/kube-local/start.sh and \
         export KUBECONFIG=$HOME/.kube-local/run/kubeconfig (as .ci/run does)"
    );
    kube::Client::try_default()
        .await
        .expect("cannot build a client from KUBECONFIG")
}

async fn make_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// A webhook configuration shaped like deploy/'s (two webhooks) that can never match a
/// pod: its objectSelector wants a label no object has.
async fn make_webhook_config(client: &kube::Client, name: &str) {
    let hook = |n: &str| {
        serde_json::json!({
            "name": n,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"url": "https://127.0.0.1:9/inject"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "objectSelector": {"matchLabels": {"mesh-test/never": "matches"}}
        })
    };
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook("namespace.sidecar-injector.mesh.io"), hook("object.sidecar-injector.mesh.io")]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mwc)
        .await
        .unwrap_or_else(|e| panic!("create MutatingWebhookConfiguration {name}: {e}"));
}

async fn delete_webhook_config(client: &kube::Client, name: &str) {
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

fn options(ns: &str, webhook: &str, dir: &Path, replica: &str) -> BootstrapOptions {
    BootstrapOptions::new(
        ns,
        "mesh-webhook",
        "mesh-webhook-certs",
        webhook,
        &dir.join(replica).join("tls.crt"),
        &dir.join(replica).join("tls.key"),
    )
}

async fn ca_bundles(client: &kube::Client, name: &str) -> Vec<Vec<u8>> {
    let mwc = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await
        .unwrap();
    mwc.webhooks
        .unwrap()
        .into_iter()
        .map(|w| w.client_config.ca_bundle.map(|b| b.0).unwrap_or_default())
        .collect()
}

async fn stored(client: &kube::Client, ns: &str) -> Secret {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get("mesh-webhook-certs")
        .await
        .unwrap()
}

fn secret_value(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// The serving certificate verifies against a CA in the bundle (signature checked).
fn assert_chains(material: &Material) {
    let (_, leaf_pem) = x509_parser::pem::parse_x509_pem(material.cert_pem.as_bytes()).unwrap();
    let leaf = leaf_pem.parse_x509().unwrap();
    let verified = x509_parser::pem::Pem::iter_from_buffer(material.ca_bundle_pem.as_bytes())
        .map(|p| p.unwrap())
        .any(|p| {
            let ca = p.parse_x509().unwrap();
            leaf.verify_signature(Some(ca.public_key())).is_ok()
        });
    assert!(
        verified,
        "serving certificate is not signed by any CA in the bundle"
    );
}

async fn assert_consistent(client: &kube::Client, ns: &str, webhook: &str, m: &Material) {
    let secret = stored(client, ns).await;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret_value(&secret, "ca.crt"), m.ca_cert_pem);
    assert_eq!(secret_value(&secret, "tls.crt"), m.cert_pem);
    assert_eq!(secret_value(&secret, "ca-bundle.crt"), m.ca_bundle_pem);
    let bundles = ca_bundles(client, webhook).await;
    assert_eq!(bundles.len(), 2);
    for b in bundles {
        assert_eq!(
            String::from_utf8(b).unwrap(),
            m.ca_bundle_pem,
            "caBundle not patched"
        );
    }
    assert_chains(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_racing_at_start_end_with_one_ca() {
    let client = client().await;
    for round in 0..4 {
        let ns = unique("mesh-bs-race");
        let webhook = unique("mesh-bs-race");
        make_namespace(&client, &ns).await;
        make_webhook_config(&client, &webhook).await;
        let dir = tempfile::tempdir().unwrap();
        let replicas: Vec<_> = (0..3)
            .map(|i| options(&ns, &webhook, dir.path(), &format!("replica-{i}")))
            .collect();
        // Each replica with its own client, all started at once.
        let mut tasks = Vec::new();
        for opts in replicas.clone() {
            let c = kube::Client::try_default().await.unwrap();
            tasks.push(tokio::spawn(
                async move { bootstrap::bootstrap(c, &opts).await },
            ));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(
                t.await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e}")),
            );
        }
        for r in &results[1..] {
            assert_eq!(
                r, &results[0],
                "round {round}: replicas ended with different material"
            );
        }
        assert_consistent(&client, &ns, &webhook, &results[0]).await;
        for opts in &replicas {
            assert_eq!(
                std::fs::read_to_string(&opts.cert_file).unwrap(),
                results[0].cert_pem
            );
            assert_eq!(
                std::fs::read_to_string(&opts.key_file).unwrap(),
                results[0].key_pem
            );
        }
        // A replica that starts later (or restarts) serves the same, and writes nothing.
        let rv = stored(&client, &ns).await.metadata.resource_version;
        let again = bootstrap::bootstrap(client.clone(), &replicas[0])
            .await
            .unwrap();
        assert_eq!(again, results[0]);
        assert_eq!(stored(&client, &ns).await.metadata.resource_version, rv);
        delete_webhook_config(&client, &webhook).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_renews_the_leaf_then_rolls_the_ca_over() {
    let client = client().await;
    let ns = unique("mesh-bs-rot");
    let webhook = unique("mesh-bs-rot");
    make_namespace(&client, &ns).await;
    make_webhook_config(&client, &webhook).await;
    let dir = tempfile::tempdir().unwrap();
    let a = options(&ns, &webhook, dir.path(), "a");
    let b = options(&ns, &webhook, dir.path(), "b");
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);

    let first = bootstrap::bootstrap_at(client.clone(), &a, now)
        .await
        .unwrap();
    assert_consistent(&client, &ns, &webhook, &first).await;

    // 250 of 365 days later: less than a third left, both replicas decide to renew at
    // once; one write wins and both serve it. The CA stays.
    let (ra, rb) = tokio::join!(
        bootstrap::bootstrap_at(client.clone(), &a, now + day * 250),
        bootstrap::bootstrap_at(client.clone(), &b, now + day * 250)
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra, rb, "racing renewals must converge");
    assert_ne!(
        ra.cert_pem, first.cert_pem,
        "serving certificate not renewed"
    );
    assert_eq!(
        ra.ca_cert_pem, first.ca_cert_pem,
        "CA must not change on a leaf renewal"
    );
    assert_consistent(&client, &ns, &webhook, &ra).await;
    assert_eq!(std::fs::read_to_string(&b.cert_file).unwrap(), ra.cert_pem);

    // 2500 days in: the CA has less than a third of its 10 years left. A new CA comes,
    // the old one stays in caBundle so certificates it issued keep working.
    let rolled = bootstrap::bootstrap_at(client.clone(), &a, now + day * 2500)
        .await
        .unwrap();
    assert_ne!(rolled.ca_cert_pem, first.ca_cert_pem);
    assert!(rolled.ca_bundle_pem.starts_with(&rolled.ca_cert_pem));
    assert!(
        rolled.ca_bundle_pem.contains(&first.ca_cert_pem),
        "old CA dropped from the bundle during rollover"
    );
    assert_consistent(&client, &ns, &webhook, &rolled).await;

    // After the old CA expires it leaves the bundle (and caBundle).
    let later = bootstrap::bootstrap_at(client.clone(), &b, now + day * 3651)
        .await
        .unwrap();
    assert_eq!(later.ca_cert_pem, rolled.ca_cert_pem);
    assert_eq!(later.ca_bundle_pem, rolled.ca_cert_pem);
    assert_consistent(&client, &ns, &webhook, &later).await;
    delete_webhook_config(&client, &webhook).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_webhook_configuration_is_an_error_that_names_it() {
    let client = client().await;
    let ns = unique("mesh-bs-miss");
    make_namespace(&client, &ns).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = options(&ns, "mesh-no-such-webhook-config", dir.path(), "a");
    let err = bootstrap::bootstrap(client.clone(), &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MutatingWebhookConfiguration mesh-no-such-webhook-config"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edited_secret_is_replaced_with_working_material() {
    let client = client().await;
    let ns = unique("mesh-bs-edit");
    let webhook = unique("mesh-bs-edit");
    make_namespace(&client, &ns).await;
    make_webhook_config(&client, &webhook).await;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "mesh-webhook-certs", "namespace": ns},
        "type": "kubernetes.io/tls",
        "stringData": {"ca.crt": "garbage", "tls.crt": "garbage", "tls.key": "garbage"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = bootstrap::bootstrap(client.clone(), &options(&ns, &webhook, dir.path(), "a"))
        .await
        .unwrap();
    assert_consistent(&client, &ns, &webhook, &m).await;
    delete_webhook_config(&client, &webhook).await;
}
