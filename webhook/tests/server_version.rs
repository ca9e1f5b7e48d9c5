//! `nativeSidecars: auto`: the server asks the API server for `/version` with the real kube
//! client (through a kubeconfig) and injects native sidecars only from 1.29 on, falling back
//! to regular sidecars when it cannot tell. The API server here is a small HTTPS stand-in
//! on loopback that answers `/version` as the given release would; the real one named by
//! `KUBECONFIG` (kube-local in CI) is asked too, and that test fails without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod server_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Bytes;
use mesh_webhook::admission::{self, state::ClusterSupport};
use serde_json::json;
use server_support::{
    Pki, app_pod, apply_patch, client_config, eventually_ready, names, patch_of, pod_review,
    post_inject, response_of,
};

/// An HTTPS stand-in for the API server: `GET /version` answers `status` with `body`.
async fn fake_apiserver(
    pki: &Pki,
    status: u16,
    body: String,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let store = Arc::new(mesh_webhook::admission::certs::CertStore::new(
        mesh_webhook::admission::certs::certified_key_from_pem(
            pki.cert_pem.as_bytes(),
            pki.key_pem.as_bytes(),
            Path::new("fake.crt"),
            Path::new("fake.key"),
        )
        .unwrap(),
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(
        mesh_webhook::admission::certs::server_config(store).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move {
                            let (code, b) = if req.uri().path() == "/version" {
                                (status, body)
                            } else {
                                (404, "{}".to_string())
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(code)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(b)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

fn kubeconfig(dir: &Path, server: SocketAddr, ca_pem: &str) -> std::path::PathBuf {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: https://{server}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: test-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: u\ncurrent-context: fake\n"
    );
    let p = dir.join(format!("kubeconfig-{}", server.port()));
    std::fs::write(&p, text).unwrap();
    p
}

fn version_json(minor: &str) -> String {
    json!({
        "major": "1", "minor": minor, "gitVersion": format!("v1.{}.0", minor.trim_end_matches('+')),
        "gitCommit": "0000", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.22", "compiler": "gc", "platform": "linux/amd64"
    })
    .to_string()
}

/// Start the webhook with `nativeSidecars: auto` asking `kubeconfig`, wait until ready,
/// inject a pod, and say what the cluster was found to support and where the proxy went.
async fn auto_injection(kubeconfig: Option<&Path>) -> (ClusterSupport, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("webhook CA");
    let (cert, key) = pki.write(dir.path());
    let mut args = server_support::serve_args(&cert, &key);
    args.native_sidecars = None;
    args.kubeconfig = kubeconfig.map(Path::to_path_buf);
    let server = admission::start(args).await.unwrap();
    let (addr, tls) = (server.addr, client_config(&pki.ca_der));
    eventually_ready(addr, tls.clone(), Duration::from_secs(30)).await;
    let body = serde_json::to_vec(&pod_review("v", "default", app_pod())).unwrap();
    let a = post_inject(addr, tls, body).await;
    let out = apply_patch(&app_pod(), &patch_of(&response_of(&a.json(), "v")).unwrap()).unwrap();
    let support = server.state.cluster_support();
    server.shutdown().await;
    (support, names(&out, "initContainers"))
}

#[tokio::test]
async fn native_sidecars_from_1_29_on_regular_before_and_when_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let api_pki = Pki::new("apiserver CA");

    for (minor, support, init) in [
        (
            "30",
            ClusterSupport::Native,
            vec!["istio-init", "istio-proxy"],
        ),
        (
            "29+",
            ClusterSupport::Native,
            vec!["istio-init", "istio-proxy"],
        ),
        ("28", ClusterSupport::NotNative, vec!["istio-init"]),
    ] {
        let (api, task) = fake_apiserver(&api_pki, 200, version_json(minor)).await;
        let kc = kubeconfig(dir.path(), api, &api_pki.ca_pem);
        assert_eq!(
            auto_injection(Some(&kc)).await,
            (support, init.iter().map(|s| s.to_string()).collect()),
            "1.{minor}"
        );
        task.abort();
    }

    // Cannot tell: the API server errors, is not trusted, or there is no config at all.
    let (api, task) = fake_apiserver(&api_pki, 500, "{}".to_string()).await;
    let kc = kubeconfig(dir.path(), api, &api_pki.ca_pem);
    assert_eq!(
        auto_injection(Some(&kc)).await,
        (ClusterSupport::Unknown, vec!["istio-init".to_string()])
    );
    task.abort();
    let (api, task) = fake_apiserver(&api_pki, 200, version_json("30")).await;
    let untrusted = kubeconfig(dir.path(), api, &Pki::new("someone else").ca_pem);
    assert_eq!(
        auto_injection(Some(&untrusted)).await,
        (ClusterSupport::Unknown, vec!["istio-init".to_string()])
    );
    task.abort();
    let missing = dir.path().join("missing-kubeconfig");
    assert_eq!(
        auto_injection(Some(&missing)).await,
        (ClusterSupport::Unknown, vec!["istio-init".to_string()])
    );
}

#[tokio::test]
async fn a_real_cluster_is_asked_when_kubeconfig_is_set() {
    let kc = std::env::var_os("KUBECONFIG").expect(
        "KUBECONFIG is not set: this test asks a real API server. Start one with \
         ../shared/kube-local/setup.sh && ../shared/kube-local/start.sh and \
         export KUBECONFIG=$HOME/.kube-local/run/kubeconfig (as .ci/run does)",
    );
    let kc = std::path::PathBuf::from(kc);
    let version = mesh_webhook::admission::version::probe(Some(&kc))
        .await
        .unwrap();
    let (support, init) = auto_injection(Some(&kc)).await;
    if version.supports_native_sidecars() {
        assert_eq!(
            (support, init),
            (
                ClusterSupport::Native,
                vec!["istio-init".into(), "istio-proxy".into()]
            )
        );
    } else {
        assert_eq!(
            (support, init),
            (ClusterSupport::NotNative, vec!["istio-init".to_string()])
        );
    }
    eprintln!("real API server {version}: {support:?}");
}
