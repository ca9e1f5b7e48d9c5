//! The CA and the TLS port against a real API server (kube-local through KUBECONFIG;
//! fails without it): `CreateCertificate` over TLS (mesh-control's certificate verified
//! against the mesh's root, server name `mesh-control.<ns>.svc`), its refusals and their
//! status codes, the config stream on the same TLS port, the plaintext port without the
//! CA, the serving certificate renewed without dropping open connections, the root
//! published as ConfigMap `istio-ca-root-cert`, and the binary refusing to start without
//! its CA.
//!
//! In-process servers use a fake [`Authenticator`] (token `good:<sa>` is ServiceAccount
//! `<sa>` of the test's namespace; the real TokenReview is `ca_tokens.rs`'s) and keep the
//! root ConfigMap in their own labelled namespace only, so tests sharing an API server do
//! not see each other's roots. The binary's own run uses a private API server, where it
//! may publish everywhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime};

use http::uri::PathAndQuery;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use mesh_config::ca::{CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse};
use mesh_config::wire::{Node, STREAM_PATH, StreamRequest, StreamResponse};
use mesh_control::ca::rootcert;
use mesh_control::ca::tokens::{AuthError, AuthFuture, Authenticator, Caller};
use mesh_control::serve::{Bound, CaConfig, Config};
use mesh_control::translate::MeshSettings;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use support::{
    Namespace, PrivateCluster, ServicesOnly, get, get_until, kubeconfig, kubectl, metric,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const TEST_LABEL: &str = "mesh-test.io/ca-grpc";

/// Token `good:<sa>` is `<sa>` in `namespace`; anything else is refused.
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
                    "the fake reviewer does not know token {token:?}"
                ))),
            }
        })
    }
}

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,mesh_control=debug")
        .with_test_writer()
        .try_init();
}

struct Server {
    ns: Namespace,
    tls: SocketAddr,
    plaintext: SocketAddr,
    metrics: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// An in-process server with its CA in a fresh namespace; ready when this returns.
async fn server(prefix: &str, tune: impl FnOnce(&mut CaConfig)) -> Server {
    init_log();
    let kc = kubeconfig();
    let ns = Namespace::new(&kc, prefix);
    kubectl(
        &kc,
        &[
            "label",
            "namespace",
            &ns.name,
            &format!("{TEST_LABEL}={}", ns.name),
        ],
        None,
    );
    let client = kube::Client::try_default()
        .await
        .expect("kube client from KUBECONFIG");
    let mut ca = CaConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls_sans: vec!["127.0.0.1".into(), "mesh.example.test".into()],
        root_cert: Some(rootcert::Options {
            namespace_selector: Some(format!("{TEST_LABEL}={}", ns.name)),
        }),
        ..CaConfig::new(ns.name.clone())
    };
    tune(&mut ca);
    let bound = Bound::bind_with(
        Config {
            plaintext_addr: "127.0.0.1:0".parse().unwrap(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            debounce: Duration::from_millis(50),
            crd_interval: Duration::from_secs(5),
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
    let translator = Arc::new(ServicesOnly {
        namespace: ns.name.clone(),
    });
    tokio::spawn(async move {
        bound
            .serve_with(client, translator, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let (status, body) =
        get_until(metrics, "/readyz", Duration::from_secs(30), |s, _| s == 200).await;
    assert_eq!(status, 200, "not ready: {body}");
    Server {
        ns,
        tls,
        plaintext,
        metrics,
        _stop: stop,
    }
}

/// The mesh's root, as a user (or the injector's volume) finds it: the ConfigMap in the
/// namespace, once mesh-control has published it.
async fn root_from_configmap(ns: &str) -> String {
    let client = kube::Client::try_default().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(root) = api
            .get_opt("istio-ca-root-cert")
            .await
            .unwrap()
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("root-cert.pem").cloned())
        {
            return root;
        }
        assert!(
            Instant::now() < deadline,
            "no ConfigMap istio-ca-root-cert in {ns} within 30s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn root_from_secret(ns: &str) -> String {
    let client = kube::Client::try_default().await.unwrap();
    let api: Api<Secret> = Api::namespaced(client, ns);
    let s = api.get("istio-ca-secret").await.unwrap();
    String::from_utf8(s.data.unwrap()["root-cert.pem"].0.clone()).unwrap()
}

/// A tonic channel to the TLS port, verifying mesh-control's certificate against `root`
/// for `server_name`.
async fn tls_channel(addr: SocketAddr, root: &str, server_name: &str) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root))
                .domain_name(server_name),
        )
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn create_certificate(
    channel: Channel,
    token: Option<&str>,
    csr: &str,
    validity: i64,
) -> Result<IstioCertificateResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: validity,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    grpc.unary(
        req,
        PathAndQuery::from_static(CREATE_CERTIFICATE_PATH),
        tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

fn csr(sans: Vec<SanType>) -> String {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = sans;
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn ders(pem_text: &str) -> Vec<CertificateDer<'static>> {
    pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

/// The URI SANs of the chain's leaf, after verifying the chain as a TLS peer would.
fn verified_leaf_uris(chain: &[String]) -> Vec<String> {
    let leaf = ders(&chain[0]).remove(0);
    let inter: Vec<_> = chain[1..chain.len() - 1]
        .iter()
        .flat_map(|p| ders(p))
        .collect();
    let roots = ders(chain.last().unwrap());
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();
    webpki::EndEntityCert::try_from(&leaf)
        .unwrap()
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &inter,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .expect("the leaf chains to the root");
    let (_, c) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    c.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => (*u).to_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// One config stream over `channel`: subscribes to `key`, returns the first response.
async fn config_stream(
    channel: Channel,
    ns: &str,
    key: &str,
) -> (
    mpsc::Sender<StreamRequest>,
    tonic::Streaming<StreamResponse>,
    StreamResponse,
) {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(StreamRequest {
        node: Some(Node {
            pod_name: "client".into(),
            namespace: ns.into(),
            ip: "10.244.0.9".into(),
            proxy_version: "test".into(),
        }),
        subscribe: vec![key.to_owned()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(STREAM_PATH),
            tonic_prost::ProstCodec::<StreamRequest, StreamResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a response within 10s")
        .unwrap()
        .expect("a response");
    (tx, stream, first)
}

/// A raw TLS handshake (rustls, verifying against `root` for `name`): the leaf, the
/// protocol version and the ALPN protocol.
async fn handshake(
    addr: SocketAddr,
    root: &str,
    name: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<
    (
        CertificateDer<'static>,
        rustls::ProtocolVersion,
        Option<Vec<u8>>,
    ),
    String,
> {
    let mut roots = rustls::RootCertStore::empty();
    for r in ders(root) {
        roots.add(r).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, s) = tls.get_ref();
    Ok((
        s.peer_certificates().unwrap()[0].clone(),
        s.protocol_version().unwrap(),
        s.alpn_protocol().map(<[u8]>::to_vec),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_certificate_over_tls_issues_the_callers_spiffe_id() {
    let s = server("ca-grpc-issue", |_| {}).await;
    let ns = s.ns.name.clone();
    let root = root_from_configmap(&ns).await;
    assert_eq!(root, root_from_secret(&ns).await);

    let channel = tls_channel(s.tls, &root, &format!("mesh-control.{ns}.svc"))
        .await
        .unwrap();
    let id = format!("spiffe://cluster.local/ns/{ns}/sa/reviews");
    let resp = create_certificate(
        channel.clone(),
        Some("good:reviews"),
        &csr(vec![uri(&id)]),
        0,
    )
    .await
    .unwrap();
    assert_eq!(
        resp.cert_chain.len(),
        2,
        "leaf and root: {:?}",
        resp.cert_chain
    );
    assert_eq!(resp.cert_chain[1], root);
    assert_eq!(
        verified_leaf_uris(&resp.cert_chain),
        std::slice::from_ref(&id)
    );
    // No validity asked: 24 h (+ the minute of clock skew before now).
    let leaf = ders(&resp.cert_chain[0]).remove(0);
    let (_, c) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let life = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
    assert_eq!(life, 86_400 + 60);
    // A lifetime asked for is granted.
    let resp = create_certificate(
        channel.clone(),
        Some("good:reviews"),
        &csr(vec![uri(&id)]),
        600,
    )
    .await
    .unwrap();
    let leaf = ders(&resp.cert_chain[0]).remove(0);
    let (_, c) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    assert_eq!(
        c.validity().not_after.timestamp() - c.validity().not_before.timestamp(),
        660
    );

    // Every other name of the serving certificate verifies too.
    for name in [
        "mesh-control".to_owned(),
        format!("mesh-control.{ns}"),
        format!("mesh-control.{ns}.svc.cluster.local"),
        "mesh.example.test".to_owned(),
        "127.0.0.1".to_owned(),
    ] {
        handshake(s.tls, &root, &name, rustls::ALL_VERSIONS)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let e = handshake(s.tls, &root, "mesh-control.other.svc", rustls::ALL_VERSIONS)
        .await
        .unwrap_err();
    assert!(
        e.contains("NotValidForName") || e.contains("not valid for name"),
        "{e}"
    );
    // Another root does not verify it.
    let stranger =
        mesh_control::ca::authority::Authority::self_signed("x", SystemTime::now()).unwrap();
    assert!(
        handshake(
            s.tls,
            stranger.root_pem(),
            &format!("mesh-control.{ns}.svc"),
            rustls::ALL_VERSIONS
        )
        .await
        .is_err()
    );
    // TLS 1.3 and 1.2, ALPN h2.
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (_, got, alpn) = handshake(s.tls, &root, &format!("mesh-control.{ns}.svc"), &[v])
            .await
            .unwrap();
        assert_eq!(got, v.version);
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    }

    let (_, m) = get_until(s.metrics, "/metrics", Duration::from_secs(3), |_, m| {
        metric(m, "mesh_control_ca_certificates_issued_total") == Some(2.0)
    })
    .await;
    assert_eq!(
        metric(&m, "mesh_control_ca_certificates_issued_total"),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_what_was_wrong_with_grpc_codes() {
    let s = server("ca-grpc-refuse", |c| {
        c.max_workload_cert_ttl = Duration::from_secs(48 * 3600);
    })
    .await;
    let ns = s.ns.name.clone();
    let root = root_from_secret(&ns).await;
    let channel = tls_channel(s.tls, &root, &format!("mesh-control.{ns}.svc"))
        .await
        .unwrap();
    let id = format!("spiffe://cluster.local/ns/{ns}/sa/reviews");
    let good = csr(vec![uri(&id)]);

    let e = create_certificate(channel.clone(), None, &good, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(
        e.message(),
        "no bearer token in the request's authorization metadata"
    );

    let e = create_certificate(channel.clone(), Some("stolen"), &good, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("does not know token \"stolen\""),
        "{e:?}"
    );

    // A CSR for another ServiceAccount.
    let other = format!("spiffe://cluster.local/ns/{ns}/sa/admin");
    let e = create_certificate(
        channel.clone(),
        Some("good:reviews"),
        &csr(vec![uri(&other)]),
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(
        e.message(),
        format!("the CSR asks for URI:{other}, but this caller may be issued only URI:{id}")
    );
    // One more SAN than allowed.
    let e = create_certificate(
        channel.clone(),
        Some("good:reviews"),
        &csr(vec![
            uri(&id),
            SanType::DnsName("reviews.example".try_into().unwrap()),
        ]),
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("DNS:reviews.example"), "{e:?}");

    let e = create_certificate(channel.clone(), Some("good:reviews"), "not a csr", 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("bad CSR: "), "{e:?}");

    let e = create_certificate(channel.clone(), Some("good:reviews"), &good, 49 * 3600)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(
        e.message(),
        "requested TTL 49h is greater than the max allowed TTL 48h"
    );

    let (_, m) = get(s.metrics, "/metrics").await;
    for (reason, n) in [
        ("unauthenticated", 2.0),
        ("identity", 2.0),
        ("bad_csr", 1.0),
        ("ttl", 1.0),
        ("internal", 0.0),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("mesh_control_ca_requests_refused_total{{reason=\"{reason}\"}}")
            ),
            Some(n),
            "{reason}: {m}"
        );
    }
    assert_eq!(
        metric(&m, "mesh_control_ca_certificates_issued_total"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_stream_runs_on_the_tls_port_and_the_ca_never_on_plaintext() {
    let s = server("ca-grpc-stream", |_| {}).await;
    let ns = s.ns.name.clone();
    s.ns.apply(&support::service_yaml("ratings", &[("http", 9080)]));
    let root = root_from_secret(&ns).await;
    let channel = tls_channel(s.tls, &root, &format!("mesh-control.{ns}.svc"))
        .await
        .unwrap();
    let key = format!("host/ratings.{ns}.svc.cluster.local");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_tx, _rx, r) = config_stream(channel.clone(), &ns, &key).await;
        let res = mesh_config::Resource::from_json(&r.resources[0].body).unwrap();
        if matches!(res, mesh_config::Resource::Service(_)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Service never showed up on the TLS stream: {res:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The plaintext port has the stream, not the CA.
    let plain = Endpoint::from_shared(format!("http://{}", s.plaintext))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let id = format!("spiffe://cluster.local/ns/{ns}/sa/default");
    let e = create_certificate(plain.clone(), Some("good:default"), &csr(vec![uri(&id)]), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    let (_tx, _rx, r) = config_stream(plain, &ns, &key).await;
    assert_eq!(r.resources.len(), 1);
    // The TLS port refuses plaintext h2.
    let plaintext_to_tls = tokio::time::timeout(Duration::from_secs(10), async {
        match Endpoint::from_shared(format!("http://{}", s.tls))
            .unwrap()
            .connect()
            .await
        {
            Ok(ch) => create_certificate(ch, Some("good:default"), &csr(vec![uri(&id)]), 0)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("a plaintext client on the TLS port is refused, not left hanging");
    assert!(plaintext_to_tls.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_certificate_is_renewed_at_half_life_without_dropping_connections() {
    // A 4 s certificate: renewed at 2 s, expired at 4 s.
    let s = server("ca-grpc-renew", |c| {
        c.serving_cert_ttl = Duration::from_secs(4);
    })
    .await;
    let ns = s.ns.name.clone();
    let name = format!("mesh-control.{ns}.svc");
    let root = root_from_secret(&ns).await;
    let (first, _, _) = handshake(s.tls, &root, &name, rustls::ALL_VERSIONS)
        .await
        .unwrap();
    let channel = tls_channel(s.tls, &root, &name).await.unwrap();
    let (tx, mut stream, _) = config_stream(channel.clone(), &ns, "host/a.example").await;

    tokio::time::sleep(Duration::from_millis(2600)).await;
    let (second, _, _) = handshake(s.tls, &root, &name, rustls::ALL_VERSIONS)
        .await
        .unwrap();
    assert_ne!(first, second, "a new certificate after half its life");

    // Past the first certificate's expiry: the stream opened under it still answers,
    // and new connections verify.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    tx.send(StreamRequest {
        subscribe: vec!["host/b.example".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an answer on the old connection")
        .unwrap()
        .unwrap();
    assert_eq!(r.resources[0].key, "host/b.example");
    let id = format!("spiffe://cluster.local/ns/{ns}/sa/default");
    create_certificate(channel, Some("good:default"), &csr(vec![uri(&id)]), 0)
        .await
        .expect("the old channel still issues");
    let fresh = tls_channel(s.tls, &root, &name).await.unwrap();
    create_certificate(fresh, Some("good:default"), &csr(vec![uri(&id)]), 0)
        .await
        .expect("a new connection verifies the renewed certificate");
}

/// `mesh-control serve` as the user runs it; its stderr lines.
struct Process {
    child: std::process::Child,
    lines: std_mpsc::Receiver<String>,
}

impl Process {
    fn spawn(kubeconfig: &str, extra: &[&str]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-control"))
            .args([
                "serve",
                "--plaintext-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
                "--addr",
                "127.0.0.1:0",
                "--log",
                "info,mesh_control=debug",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("POD_NAMESPACE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[mesh-control] {line}");
                let _ = tx.send(line);
            }
        });
        Process { child, lines }
    }

    fn wait_line(&self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => panic!("no mesh-control log line containing {what:?} within {timeout:?}"),
            }
        }
    }

    /// The exit status within `timeout`, and every line it wrote.
    fn exit(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "mesh-control did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        let out: Vec<String> = self.lines.try_iter().collect();
        (status, out.join("\n"))
    }

    fn term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_non_zero_naming_what_is_wrong_with_its_ca() {
    let kc = kubeconfig();
    // A namespace that does not exist: the root cannot be stored.
    let missing = support::unique("ca-grpc-nons");
    let p = Process::spawn(&kc, &["--ca-namespace", &missing]);
    let (status, out) = p.exit(Duration::from_secs(30));
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "CA: cannot create Secret {missing}/istio-ca-secret"
        )),
        "{out}"
    );
    assert!(
        !out.contains("listening"),
        "nothing is served without the CA: {out}"
    );

    // A cacerts Secret whose key is not the certificate's.
    let ns = Namespace::new(&kc, "ca-grpc-badca");
    let a = mesh_control::ca::authority::Authority::self_signed("x", SystemTime::now()).unwrap();
    let other = KeyPair::generate().unwrap().serialize_pem();
    let dir = tempfile::tempdir().unwrap();
    for (f, v) in [
        ("ca-cert.pem", a.ca_cert_pem()),
        ("ca-key.pem", other.as_str()),
        ("root-cert.pem", a.root_pem()),
    ] {
        std::fs::write(dir.path().join(f), v).unwrap();
    }
    let from = |f: &str| format!("--from-file={}", dir.path().join(f).display());
    ns.kubectl(&[
        "create",
        "secret",
        "generic",
        "cacerts",
        &from("ca-cert.pem"),
        &from("ca-key.pem"),
        &from("root-cert.pem"),
    ]);
    let p = Process::spawn(&kc, &["--ca-namespace", &ns.name]);
    let (status, out) = p.exit(Duration::from_secs(30));
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "CA: Secret {}/cacerts, key ca-key.pem: the key is not the one of the certificate in ca-cert.pem",
            ns.name
        )),
        "{out}"
    );

    // Settings that cannot work.
    let p = Process::spawn(
        &kc,
        &[
            "--workload-cert-ttl",
            "100h",
            "--max-workload-cert-ttl",
            "48h",
        ],
    );
    let (status, out) = p.exit(Duration::from_secs(30));
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("--workload-cert-ttl 100h is longer than --max-workload-cert-ttl 48h"),
        "{out}"
    );
}

/// The binary with the real TokenReview and the root published to every namespace: on a
/// private API server, so no other test's namespaces get this root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_tls_and_publishes_its_root() {
    let cluster = PrivateCluster::start();
    let kc = cluster.kubeconfig.clone();
    kubectl(&kc, &["create", "namespace", "mesh-system"], None);
    kubectl(&kc, &["create", "namespace", "bookstore"], None);
    let p = Process::spawn(&kc, &["--tls-san", "127.0.0.1"]);
    let line = p.wait_line("listening", Duration::from_secs(60));
    let tls: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tls="))
        .unwrap_or_else(|| panic!("no tls= in {line:?}"))
        .parse()
        .unwrap();
    let root = kubectl(
        &kc,
        &[
            "-n",
            "mesh-system",
            "get",
            "secret",
            "istio-ca-secret",
            "-o",
            "go-template={{index .data \"root-cert.pem\" | base64decode}}",
        ],
        None,
    );
    // The ConfigMap in every namespace holds it.
    let deadline = Instant::now() + Duration::from_secs(30);
    for ns in ["default", "bookstore", "mesh-system"] {
        loop {
            let got = support::kubectl_try(
                &kc,
                &[
                    "-n",
                    ns,
                    "get",
                    "configmap",
                    "istio-ca-root-cert",
                    "-o",
                    "jsonpath={.data.root-cert\\.pem}",
                ],
                None,
            );
            if got.as_deref().ok() == Some(root.as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ns}: no root ConfigMap: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let channel = tls_channel(tls, &root, "mesh-control.mesh-system.svc")
        .await
        .unwrap();
    let (_tx, _rx, r) = config_stream(channel.clone(), "bookstore", "host/nothing.example").await;
    assert_eq!(r.resources.len(), 1);
    // The real reviewer: no token, a token the API server does not know.
    let id = "spiffe://cluster.local/ns/bookstore/sa/default";
    let e = create_certificate(channel.clone(), None, &csr(vec![uri(id)]), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = create_certificate(channel.clone(), Some("not-a-token"), &csr(vec![uri(id)]), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    p.wait_line("certificate request refused", Duration::from_secs(5));
    // The IP SAN from --tls-san.
    let ip_channel = tls_channel(tls, &root, "127.0.0.1").await;
    assert!(ip_channel.is_ok(), "{ip_channel:?}");

    p.term();
    let (status, out) = p.exit(Duration::from_secs(15));
    assert!(status.success(), "{status}: {out}");
    drop(cluster);
}
