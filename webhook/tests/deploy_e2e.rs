//! End to end against a real API server (KUBECONFIG; kube-local v1.20.2 in CI): the
//! `mesh-webhook serve` binary runs on loopback with certificates made here, is
//! registered by URL with the selectors of deploy/'s MutatingWebhookConfiguration (read
//! from the rendering, not copied) and the injection config of deploy/'s ConfigMap, and
//! pods created with kubectl are stored injected or untouched as Istio users expect.
//!
//! kube-local has no scheduler or kubelet: pods stay Pending, which is all this needs.
//! The registration is scoped to this run's namespaces by one extra namespaceSelector
//! expression (`mesh-e2e-run`), so pods elsewhere never reach this short-lived server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod deploy_support;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deploy_support::{
    ServerProcess, find, free_port, images_env, kubectl_run, render, require_kubeconfig, run_id,
};
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use serde_json::{Value, json};

/// Deletes the webhook registration even when the test fails, so no later pod creation
/// is sent to a server that is gone.
struct Registration(String);

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = Command::new(deploy_support::kubectl())
            .args([
                "delete",
                "mutatingwebhookconfiguration",
                &self.0,
                "--ignore-not-found",
            ])
            .output();
    }
}

/// CA + serving certificate for 127.0.0.1.
fn certificates(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "mesh-e2e-ca");
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::IpAddress(Ipv4Addr::LOCALHOST.into())];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (ca_cert.pem(), c, k)
}

/// `serviceAccountName: default` is what the ServiceAccount admission plugin (on in every
/// real cluster, off in kube-local) sets before any webhook sees a pod; without it the API
/// server refuses an injected pod's projected token volume.
fn pod(ns: &str, name: &str, labels: Value, annotations: Value, host_network: bool) -> Value {
    let mut spec = json!({"serviceAccountName": "default", "containers": [{"name": "app", "image": "example/app:1", "ports": [{"containerPort": 8080}]}]});
    if host_network {
        spec["hostNetwork"] = json!(true);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": spec
    })
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pods_created_with_kubectl_are_stored_injected_exactly_where_istio_would_inject() {
    require_kubeconfig();
    let objs = render("deploy");
    let images = images_env();
    let run = run_id();

    // The server, with deploy/'s injection config.
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = certificates(dir.path());
    let cm = find(&objs, "ConfigMap", "mesh-injection-config");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mesh-webhook"))
        .arg("serve")
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--config")
        .arg(&config)
        .arg("--addr")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mesh-webhook serve");
    let mut server = ServerProcess(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err() {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("mesh-webhook serve exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "mesh-webhook serve did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // deploy/'s webhook configuration, pointed at the loopback server, scoped to this run.
    let mut mwc = find(
        &objs,
        "MutatingWebhookConfiguration",
        "mesh-sidecar-injector",
    )
    .clone();
    let name = format!("mesh-e2e-{run}");
    mwc["metadata"] = json!({"name": name});
    let ca_b64 = serde_json::to_value(k8s_openapi::ByteString(ca_pem.into_bytes())).unwrap();
    for hook in mwc["webhooks"].as_array_mut().unwrap() {
        hook["clientConfig"] =
            json!({"url": format!("https://127.0.0.1:{port}/inject"), "caBundle": ca_b64});
        hook["namespaceSelector"]["matchExpressions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "mesh-e2e-run", "operator": "In", "values": [run]}));
    }
    let _registration = Registration(name.clone());
    kubectl_run(&["create", "-f", "-"], Some(&mwc.to_string()));

    let ns = |suffix: &str| format!("mesh-e2e-{suffix}-{run}");
    let (on, off, none) = (ns("on"), ns("off"), ns("none"));
    for (n, injection) in [
        (&on, Some("enabled")),
        (&off, Some("disabled")),
        (&none, None),
    ] {
        let mut labels = json!({"mesh-e2e-run": run});
        if let Some(v) = injection {
            labels["istio-injection"] = json!(v);
        }
        kubectl_run(
            &["create", "-f", "-"],
            Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": labels}}).to_string()),
        );
    }

    let t = json!({"sidecar.istio.io/inject": "true"});
    let f = json!({"sidecar.istio.io/inject": "false"});
    let e = json!({});
    // (namespace, pod, labels, annotations, hostNetwork, stored injected?)
    let cases = [
        (&on, "plain", &e, &e, false, true),
        (&on, "opted-out-label", &f, &e, false, false),
        (&on, "opted-out-annotation", &e, &f, false, false),
        (&on, "host-network", &e, &e, true, false),
        (&off, "plain", &e, &e, false, false),
        (&off, "label-true", &t, &e, false, false),
        (&none, "plain", &e, &e, false, false),
        (&none, "annotation-true", &e, &t, false, false),
        (&none, "label-true", &t, &e, false, true),
    ];
    let mut failures = Vec::new();
    for (namespace, pod_name, labels, annotations, host, want) in cases {
        let manifest = pod(
            namespace,
            pod_name,
            labels.clone(),
            annotations.clone(),
            host,
        )
        .to_string();
        kubectl_run(&["create", "-f", "-"], Some(&manifest));
        let stored: Value = serde_json::from_str(&kubectl_run(
            &["get", "pod", "-n", namespace, pod_name, "-o", "json"],
            None,
        ))
        .unwrap();
        let containers = names(&stored["spec"]["containers"]);
        let inits = names(&stored["spec"]["initContainers"]);
        let injected = containers.iter().chain(&inits).any(|c| c == "istio-proxy");
        eprintln!("{namespace}/{pod_name}: containers {containers:?} init {inits:?}");
        if injected != want {
            failures.push(format!(
                "{namespace}/{pod_name}: injected={injected}, want {want}"
            ));
            continue;
        }
        if want {
            assert!(
                inits.iter().any(|c| c == "istio-init"),
                "{namespace}/{pod_name}: no istio-init"
            );
            assert_eq!(containers[0], "app", "app container stays first");
            let all = stored["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .chain(stored["spec"]["initContainers"].as_array().unwrap());
            for c in all {
                match c["name"].as_str() {
                    Some("istio-proxy") => assert_eq!(c["image"], images["MESH_PROXY_IMAGE"]),
                    Some("istio-init") => assert_eq!(c["image"], images["MESH_INIT_IMAGE"]),
                    _ => {}
                }
            }
            assert!(
                stored["metadata"]["annotations"]["sidecar.istio.io/status"].is_string(),
                "{namespace}/{pod_name}: no status annotation"
            );
            // deploy/'s config gives the pod a workload identity, stored as injected.
            let volumes = names(&stored["spec"]["volumes"]);
            for v in ["istio-token", "istiod-ca-cert"] {
                assert!(
                    volumes.iter().any(|n| n == v),
                    "{namespace}/{pod_name}: no volume {v} in {volumes:?}"
                );
            }
            assert_eq!(
                stored["metadata"]["labels"]["security.istio.io/tlsMode"], "istio",
                "{namespace}/{pod_name}"
            );
        } else {
            assert!(inits.is_empty(), "{namespace}/{pod_name}: {inits:?}");
            assert_eq!(containers, ["app"], "{namespace}/{pod_name}");
        }
    }
    assert!(
        failures.is_empty(),
        "wrong injection decisions:\n{}",
        failures.join("\n")
    );

    // A pod as a Deployment's ReplicaSet creates it (generateName, the controller
    // ownerReference, pod-template-hash): the proxy is told the Deployment, not the pod.
    let rs_pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "reviews-v1-5d8f7c9b4-", "namespace": on,
            "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "5d8f7c9b4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "reviews-v1-5d8f7c9b4", "uid": "2f1b8c4e-7d3a-4b6e-9c0d-1a2b3c4d5e6f",
                "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"serviceAccountName": "default", "containers": [{"name": "app", "image": "example/app:1"}]}
    });
    let stored: Value = serde_json::from_str(&kubectl_run(
        &["create", "-f", "-", "-o", "json"],
        Some(&rs_pod.to_string()),
    ))
    .unwrap();
    let proxy = stored["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(stored["spec"]["initContainers"].as_array().unwrap())
        .find(|c| c["name"] == "istio-proxy")
        .expect("the ReplicaSet's pod is injected")
        .clone();
    let env: Vec<(String, String)> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("value").is_some())
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("ISTIO_META_WORKLOAD_NAME", "reviews-v1"),
        (
            "ISTIO_META_OWNER",
            // Stored as written; the kubelet expands $(POD_NAMESPACE) when it starts the
            // container.
            "kubernetes://apis/apps/v1/namespaces/$(POD_NAMESPACE)/deployments/reviews-v1",
        ),
        ("CANONICAL_SERVICE", "reviews"),
        ("CANONICAL_REVISION", "v1"),
        ("APP_NAME", "reviews"),
        ("APP_VERSION", "v1"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for w in &want {
        assert!(env.contains(w), "{w:?} not in the stored proxy env {env:?}");
    }

    // Istio's per-pod ProxyConfig: the honoured fields are stored as the proxy's flags and
    // env; what is not done (a field not honoured, the hold with this v1.20 API server's
    // regular sidecars) reaches kubectl as admission warnings, and the status records it.
    let tuned = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "tuned", "namespace": on, "annotations": {
            "proxy.istio.io/config": "concurrency: 3\nholdApplicationUntilProxyStarts: true\n\
                                      tracing: {sampling: 1}\nproxyMetadata: {FOO: bar}\n"}},
        "spec": {"serviceAccountName": "default",
                 "containers": [{"name": "app", "image": "example/app:1"}]}
    });
    let mut child = Command::new(deploy_support::kubectl())
        .args(["create", "-f", "-", "-o", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(tuned.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl create: {stderr}");
    let want = "Warning: proxy.istio.io/config: ignored (not honoured by this injector): tracing";
    assert!(
        stderr.contains(want),
        "{want:?} not in kubectl's stderr:\n{stderr}"
    );
    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
    let proxy = stored["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("the tuned pod is injected")
        .clone();
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--worker-threads", "3"]),
        "{args:?}"
    );
    assert!(
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "FOO" && e["value"] == "bar"),
        "{proxy}"
    );
    // holdApplicationUntilProxyStarts on a regular sidecar (v1.20 has no native ones):
    // the proxy first, its postStart hook waiting for it, as the API server stored it.
    assert_eq!(stored["spec"]["containers"][0]["name"], "istio-proxy");
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"],
        json!(["mesh-proxy", "wait"]),
        "{proxy}"
    );
    let status = stored["metadata"]["annotations"]["sidecar.istio.io/status"]
        .as_str()
        .unwrap();
    assert!(status.contains("\"warnings\":["), "{status}");

    for n in [&on, &off, &none] {
        let _ = Command::new(deploy_support::kubectl())
            .args(["delete", "namespace", n, "--wait=false"])
            .output();
    }
    drop(server);
}
