//! An ingress gateway's config against a real API server (kube-local through KUBECONFIG;
//! fails without it): our CRDs applied (as `kubectl apply -k deploy/` does), a Gateway,
//! a VirtualService and a `kubernetes.io/tls` Secret in the test's namespace, and an
//! in-process mesh-control with its CA and the real translation. A gateway proxy gets a
//! workload certificate from the CA, opens the config stream on the TLS port with it, and
//! gets its listener with the Secret's certificate and key; the same pod on the plaintext
//! port gets the listener without the key (and why); a new Secret is pushed to the
//! authenticated stream; `/debug/config` shows the certificate and hides the key. Then
//! `MUTUAL`: the client CA from Secret `web-cert-cacert` reaches the authenticated stream
//! with the certificate, not the plaintext one; with that Secret deleted the certificate
//! is withheld and `why` names what was looked for.
//!
//! The CA authenticates callers with a fake reviewer (token `good:<sa>` is `<sa>` of the
//! test's namespace; `ca_tokens.rs` tests the real TokenReview). The gateway pod has labels
//! of its own, so Gateways of other tests on the shared API server do not select it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use mesh_config::Resource;
use mesh_config::ca::{CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse};
use mesh_config::gateway::{Certificate, ClientCertificates, Gateway, TlsServerMode};
use mesh_config::wire::{Node, STREAM_PATH, StreamRequest, StreamResponse};

use mesh_control::ca::rootcert;
use mesh_control::ca::tokens::{AuthError, AuthFuture, Authenticator, Caller};
use mesh_control::serve::{Bound, CaConfig, Config};
use mesh_control::translate::{MeshSettings, NOT_AUTHENTICATED};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use support::{Namespace, get_until, kubeconfig, kubectl, repo_root};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate as TonicCert, Channel, ClientTlsConfig, Endpoint, Identity};

const TEST_LABEL: &str = "mesh-test.io/serve-gateway";
const SA: &str = "gw-sa";
const POD: &str = "ingress-0";

/// Token `good:<sa>` is `<sa>` in `namespace`.
struct FakeTokens {
    namespace: String,
}

impl Authenticator for FakeTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            match token.strip_prefix("good:") {
                Some(sa) => Ok(Caller {
                    namespace: self.namespace.clone(),
                    service_account: sa.to_owned(),
                }),
                None => Err(AuthError::Unauthenticated(format!(
                    "unknown token {token:?}"
                ))),
            }
        })
    }
}

struct Server {
    tls: SocketAddr,
    plaintext: SocketAddr,
    metrics: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// mesh-control with its CA in `ns` and the real translation; ready when this returns.
async fn server(ns: &Namespace) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,mesh_control=debug")
        .with_test_writer()
        .try_init();
    let client = kube::Client::try_default()
        .await
        .expect("kube client from KUBECONFIG");
    let ca = CaConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls_sans: vec!["127.0.0.1".into()],
        root_cert: Some(rootcert::Options {
            namespace_selector: Some(format!("{TEST_LABEL}={}", ns.name)),
        }),
        ..CaConfig::new(ns.name.clone())
    };
    let bound = Bound::bind_with(
        Config {
            plaintext_addr: "127.0.0.1:0".parse().unwrap(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            debounce: Duration::from_millis(200),
            crd_interval: Duration::from_secs(1),
            settings: MeshSettings::default(),
        },
        Some(ca),
    )
    .await
    .unwrap()
    .with_authenticator(Arc::new(FakeTokens {
        namespace: ns.name.clone(),
    }));
    let (tls, plaintext, metrics) = (
        bound.tls_addr.unwrap(),
        bound.plaintext_addr,
        bound.metrics_addr,
    );
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        bound
            .serve(client, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let (status, body) =
        get_until(metrics, "/readyz", Duration::from_secs(30), |s, _| s == 200).await;
    assert_eq!(status, 200, "not ready: {body}");
    Server {
        tls,
        plaintext,
        metrics,
        _stop: stop,
    }
}

/// The CA's root: the Secret it made in its namespace.
async fn root(ns: &str) -> String {
    let api: Api<Secret> = Api::namespaced(kube::Client::try_default().await.unwrap(), ns);
    let s = api.get("istio-ca-secret").await.unwrap();
    String::from_utf8(s.data.unwrap()["root-cert.pem"].0.clone()).unwrap()
}

fn tls_endpoint(addr: SocketAddr, root: &str, ns: &str, identity: Option<Identity>) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(TonicCert::from_pem(root))
        .domain_name(format!("mesh-control.{ns}.svc"));
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
}

/// A workload certificate for `sa` of `ns` from the CA, as the proxy gets its own: (chain
/// without the root, key), both PEM.
async fn workload_identity(s: &Server, root_pem: &str, ns: &str, sa: &str) -> (String, String) {
    let channel = tls_endpoint(s.tls, root_pem, ns, None)
        .connect()
        .await
        .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
            .as_str()
            .try_into()
            .unwrap(),
    )];
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer good:{sa}").parse().unwrap(),
    );
    let resp: IstioCertificateResponse = grpc
        .unary(
            req,
            PathAndQuery::from_static(CREATE_CERTIFICATE_PATH),
            tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let chain = resp.cert_chain[..resp.cert_chain.len() - 1].concat();
    (chain, key.serialize_pem())
}

/// One config stream over `channel` as `ns/POD`, subscribed to `gateway`.
struct Stream {
    tx: mpsc::Sender<StreamRequest>,
    rx: tonic::Streaming<StreamResponse>,
}

impl Stream {
    async fn open(channel: Channel, ns: &str) -> Stream {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(StreamRequest {
            node: Some(Node {
                pod_name: POD.into(),
                namespace: ns.into(),
                ip: "10.244.9.9".into(),
                proxy_version: "test".into(),
            }),
            subscribe: vec!["gateway".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static(STREAM_PATH),
                tonic_prost::ProstCodec::<StreamRequest, StreamResponse>::default(),
            )
            .await
            .unwrap()
            .into_inner();
        Stream { tx, rx }
    }

    /// ACKs every answer until the gateway's config satisfies `ok`; returns it.
    async fn until(&mut self, what: &str, ok: impl Fn(&Gateway) -> bool) -> Gateway {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = match tokio::time::timeout(left, self.rx.message()).await {
                Ok(Ok(Some(r))) => r,
                Ok(other) => panic!("{what}: the stream ended: {other:?}"),
                Err(_) => panic!("{what}: not within 20s; last answer: {last:?}"),
            };
            self.tx
                .send(StreamRequest {
                    response_nonce: r.nonce.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            for u in &r.resources {
                if u.key != "gateway" {
                    continue;
                }
                let res = Resource::from_json(&u.body).unwrap();
                res.validate().unwrap();
                if let Resource::Gateway(g) = &res
                    && ok(g)
                {
                    return g.clone();
                }
                last = Some(res);
            }
        }
    }
}

/// The SIMPLE server's certificate and why, if the gateway has it.
fn simple(g: &Gateway) -> Option<(Option<&Certificate>, &str)> {
    let l = g.listeners.iter().find(|l| l.number == 443)?;
    l.tls.iter().find_map(|s| match &s.mode {
        TlsServerMode::Simple {
            certificate,
            why,
            virtual_hosts,
            ..
        } if !virtual_hosts.is_empty() => Some((certificate.as_ref(), why.as_str())),
        _ => None,
    })
}

/// A listener-443 `MUTUAL` / `OPTIONAL_MUTUAL` server with routes: its certificate, its
/// client checks and why it has no certificate.
fn mutual(g: &Gateway) -> Option<(Option<&Certificate>, &ClientCertificates, &str)> {
    let l = g.listeners.iter().find(|l| l.number == 443)?;
    l.tls.iter().find_map(|s| match &s.mode {
        TlsServerMode::Simple {
            certificate,
            why,
            client_certificates: Some(cc),
            virtual_hosts,
            ..
        } if !virtual_hosts.is_empty() => Some((certificate.as_ref(), cc, why.as_str())),
        _ => None,
    })
}

/// A self-signed CA certificate named `cn`, PEM.
fn ca_cert(cn: &str) -> String {
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

/// The Gateway of the test, its server on 443 in `mode` with `credentialName: web-cert`.
fn gateway_yaml(n: &str, mode: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: web-gateway
spec:
  selector: {{istio: gw-{n}}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [web.example.com]
    tls: {{mode: {mode}, credentialName: web-cert}}
"
    )
}

/// A self-signed certificate for `host`: (chain, key), PEM.
fn tls_cert(host: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// Applies Secret `web-cert` (type kubernetes.io/tls) with `chain` and `key` (made by
/// `kubectl create secret tls --dry-run`, as a user does).
fn apply_secret(ns: &Namespace, chain: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&c, chain).unwrap();
    std::fs::write(&k, key).unwrap();
    let yaml = ns.kubectl(&[
        "create",
        "secret",
        "tls",
        "web-cert",
        "--cert",
        c.to_str().unwrap(),
        "--key",
        k.to_str().unwrap(),
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    ns.apply(&yaml);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_gets_its_listener_and_its_key_only_when_authenticated() {
    let kc = kubeconfig();
    let crds = repo_root().join("deploy/crds");
    kubectl(&kc, &["apply", "-k", crds.to_str().unwrap()], None);
    kubectl(
        &kc,
        &[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/gateways.networking.istio.io",
            "crd/virtualservices.networking.istio.io",
        ],
        None,
    );
    let ns = Namespace::new(&kc, "mc-gw");
    let n = ns.name.clone();
    kubectl(
        &kc,
        &["label", "namespace", &n, &format!("{TEST_LABEL}={n}")],
        None,
    );
    // The gateway pod (labels of its own), its Service (443 -> 8443), a backend with an
    // endpoint, the Gateway (v1beta1), the VirtualService (v1alpha3), the Secret.
    ns.apply(&format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {POD}
  labels: {{istio: gw-{n}, app: ingress}}
spec:
  serviceAccountName: {SA}
  containers:
  - name: istio-proxy
    image: mesh-proxy:dev
    ports: [{{name: https, containerPort: 8443}}]
---
apiVersion: v1
kind: Service
metadata:
  name: ingress
spec:
  selector: {{istio: gw-{n}}}
  ports: [{{name: https, port: 443, targetPort: https}}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [10.1.0.7]
  conditions: {{ready: true}}
---
{}---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: web
spec:
  hosts: [web.example.com]
  gateways: [web-gateway]
  http:
  - route:
    - destination: {{host: web}}
",
        gateway_yaml(&n, "SIMPLE")
    ));
    let (chain1, key1) = tls_cert("web.example.com");
    apply_secret(&ns, &chain1, &key1);

    let s = server(&ns).await;
    let root_pem = root(&n).await;
    let (id_chain, id_key) = workload_identity(&s, &root_pem, &n, SA).await;

    // The TLS port, with the pod's own workload certificate: the listener and the key.
    let channel = tls_endpoint(
        s.tls,
        &root_pem,
        &n,
        Some(Identity::from_pem(&id_chain, &id_key)),
    )
    .connect()
    .await
    .unwrap();
    let mut authed = Stream::open(channel, &n).await;
    let g = authed
        .until("the first certificate", |g| {
            simple(g).is_some_and(|(c, _)| c.is_some_and(|c| c.chain_pem == chain1))
        })
        .await;
    let l = &g.listeners[0];
    assert_eq!((l.port, l.number), (8443, 443), "{g:?}");
    assert_eq!(g.gateways, [format!("{n}/web-gateway")]);
    let (cert, why) = simple(&g).unwrap();
    assert_eq!(cert.unwrap().key_pem, key1);
    assert_eq!(why, "");
    let cluster = g
        .cluster(&format!("outbound|80||web.{n}.svc.cluster.local"))
        .unwrap();
    assert_eq!(cluster.protocol, Some(mesh_config::Protocol::Http));
    assert_eq!(cluster.endpoints[0].addr.to_string(), "10.1.0.7:8080");

    // The plaintext port: the same listener, no key, and why.
    let plain = Endpoint::from_shared(format!("http://{}", s.plaintext))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anonymous = Stream::open(plain, &n).await;
    let g = anonymous
        .until("the plaintext answer", |g| simple(g).is_some())
        .await;
    assert_eq!(simple(&g), Some((None, NOT_AUTHENTICATED)));
    // The TLS port without a client certificate: the same.
    let channel = tls_endpoint(s.tls, &root_pem, &n, None)
        .connect()
        .await
        .unwrap();
    let mut no_cert = Stream::open(channel, &n).await;
    let g = no_cert
        .until("the anonymous TLS answer", |g| simple(g).is_some())
        .await;
    assert_eq!(simple(&g), Some((None, NOT_AUTHENTICATED)));

    // A new certificate in the Secret: pushed to the authenticated stream.
    let (chain2, key2) = tls_cert("web.example.com");
    let t = Instant::now();
    apply_secret(&ns, &chain2, &key2);
    let g = authed
        .until("the rotated certificate", |g| {
            simple(g).is_some_and(|(c, _)| c.is_some_and(|c| c.chain_pem == chain2))
        })
        .await;
    eprintln!(
        "new certificate pushed {:?} after kubectl apply",
        t.elapsed()
    );
    assert_eq!(simple(&g).unwrap().0.unwrap().key_pem, key2);

    // /debug/config shows what the pod's authenticated stream gets, the key hidden.
    let path = format!("/debug/config?proxy={n}/{POD}&key=gateway");
    let (st, body) = get_until(s.metrics, &path, Duration::from_secs(5), |st, b| {
        st == 200 && b.contains("chainPem")
    })
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"keyPem\":\"<redacted>\""), "{body}");
    assert!(!body.contains("PRIVATE KEY"), "{body}");

    // MUTUAL, its client CA in Secret web-cert-cacert (Istio's layout, made as Istio's
    // task does): sent with the certificate to the authenticated stream.
    let client_ca = ca_cert("clients.example.com");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("clients.crt");
    std::fs::write(&ca_file, &client_ca).unwrap();
    let yaml = ns.kubectl(&[
        "create",
        "secret",
        "generic",
        "web-cert-cacert",
        &format!("--from-file=cacert={}", ca_file.display()),
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    ns.apply(&yaml);
    ns.apply(&gateway_yaml(&n, "MUTUAL"));
    let g = authed
        .until("the MUTUAL server and its client CA", |g| {
            mutual(g).is_some_and(|(c, cc, _)| c.is_some() && cc.ca_pem.trim() == client_ca.trim())
        })
        .await;
    let (cert, cc, why) = mutual(&g).unwrap();
    assert_eq!(cert.unwrap().key_pem, key2);
    assert!(cc.required, "{cc:?}");
    assert_eq!(why, "");
    // The plaintext stream: the client checks, but neither key nor CA.
    let g = anonymous
        .until("the plaintext MUTUAL answer", |g| mutual(g).is_some())
        .await;
    let (cert, cc, why) = mutual(&g).unwrap();
    assert!(cert.is_none() && cc.ca_pem.is_empty(), "{g:?}");
    assert_eq!(why, NOT_AUTHENTICATED);
    // The CA's Secret gone, and web-cert (kubernetes.io/tls) without ca.crt: no client CA,
    // so no certificate either (handshakes fail rather than let any client in), and why.
    ns.kubectl(&["delete", "secret", "web-cert-cacert"]);
    let g = authed
        .until("the certificate withheld without a CA", |g| {
            mutual(g).is_some_and(|(c, _, _)| c.is_none())
        })
        .await;
    let (_, _, why) = mutual(&g).unwrap();
    assert!(
        why.contains(&format!("{n}/web-cert-cacert")) && why.contains("ca.crt"),
        "{why}"
    );
}
