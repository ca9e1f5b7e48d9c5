//! `mesh-webhook serve --self-signed`, the way deploy/ starts it, against a real API
//! server (KUBECONFIG): before serving it fills the shared Secret, writes --cert/--key,
//! patches caBundle into its webhook configuration, and then serves a certificate that
//! a client verifies with that caBundle under the Service's DNS name. A second replica
//! started next to it serves the very same certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod deploy_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deploy_support::{ServerProcess, free_port, kubectl_run, require_kubeconfig, run_id};
use serde_json::{Value, json};

fn start(ns: &str, webhook: &str, dir: &std::path::Path, port: u16) -> ServerProcess {
    std::fs::create_dir_all(dir).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mesh-webhook"))
        .args(["serve", "--self-signed", "--service-name=mesh-webhook"])
        .arg(format!("--namespace={ns}"))
        .arg("--secret-name=mesh-webhook-certs")
        .arg(format!("--webhook-config-name={webhook}"))
        .arg(format!("--cert={}", dir.join("tls.crt").display()))
        .arg(format!("--key={}", dir.join("tls.key").display()))
        .arg(format!("--addr=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mesh-webhook serve --self-signed");
    ServerProcess(child)
}

/// GET /readyz through curl, verifying the server with `ca` as `host`.
fn readyz(ca: &std::path::Path, host: &str, port: u16) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "3", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}/readyz"))
        .output()
        .expect("curl (apt-get install -y curl, as .ci/run does)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn ca_bundle(webhook: &str) -> Vec<String> {
    let mwc: Value = serde_json::from_str(&kubectl_run(
        &["get", "mutatingwebhookconfiguration", webhook, "-o", "json"],
        None,
    ))
    .unwrap();
    mwc["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w["clientConfig"]["caBundle"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[test]
fn serve_self_signed_bootstraps_then_serves_what_the_ca_bundle_trusts() {
    require_kubeconfig();
    let run = run_id();
    let ns = format!("mesh-bs-serve-{run}");
    let webhook = format!("mesh-bs-serve-{run}");
    kubectl_run(&["create", "namespace", &ns], None);
    let hook = |n: &str| {
        json!({
            "name": n, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "clientConfig": {"url": "https://127.0.0.1:9/inject"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "objectSelector": {"matchLabels": {"mesh-test/never": "matches"}}
        })
    };
    kubectl_run(
        &["create", "-f", "-"],
        Some(
            &json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": webhook},
                "webhooks": [hook("namespace.sidecar-injector.mesh.io"), hook("object.sidecar-injector.mesh.io")]
            })
            .to_string(),
        ),
    );

    let dir = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = start(&ns, &webhook, &dir.path().join("a"), port_a);
    let mut b = start(&ns, &webhook, &dir.path().join("b"), port_b);

    // caBundle appears on both webhooks; decode it to a file for the client.
    let deadline = Instant::now() + Duration::from_secs(30);
    let bundle = loop {
        let bundles = ca_bundle(&webhook);
        if bundles.iter().all(|b| !b.is_empty()) {
            assert!(bundles.windows(2).all(|w| w[0] == w[1]));
            break bundles[0].clone();
        }
        for s in [&mut a, &mut b] {
            if let Ok(Some(status)) = s.0.try_wait() {
                panic!("mesh-webhook serve --self-signed exited: {status}");
            }
        }
        assert!(Instant::now() < deadline, "caBundle was never patched");
        std::thread::sleep(Duration::from_millis(200));
    };
    let pem: k8s_openapi::ByteString = serde_json::from_value(json!(bundle)).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pem.0).unwrap();

    let host = format!("mesh-webhook.{ns}.svc");
    for port in [port_a, port_b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match readyz(&ca_file, &host, port) {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no verified TLS on {port}: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
    // Both replicas serve the one certificate kept in the Secret.
    let secret: Value = serde_json::from_str(&kubectl_run(
        &[
            "-n",
            &ns,
            "get",
            "secret",
            "mesh-webhook-certs",
            "-o",
            "json",
        ],
        None,
    ))
    .unwrap();
    let stored: k8s_openapi::ByteString =
        serde_json::from_value(secret["data"]["tls.crt"].clone()).unwrap();
    for r in ["a", "b"] {
        assert_eq!(
            std::fs::read(dir.path().join(r).join("tls.crt")).unwrap(),
            stored.0,
            "replica {r} serves another certificate"
        );
    }
    // The certificate does not verify under a name that is not the Service's.
    assert!(readyz(&ca_file, "localhost", port_a).is_err());

    drop(a);
    drop(b);
    kubectl_run(&["delete", "mutatingwebhookconfiguration", &webhook], None);
}
