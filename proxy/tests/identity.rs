//! The proxy's workload identity against a fake CA on 127.0.0.1: an h2 server over
//! rustls that speaks Istio's `CreateCertificate` (signing the proxy's CSR with rcgen
//! and checking its bearer token), and also answers the config stream's path, so the
//! stream's TLS is seen too.
//!
//! Timings are bounds with slack, never speed targets: the first certificate, a
//! rotation of a 4 s certificate within ~2-3 s, renewal failures while the CA is down,
//! recovery when it returns, and a CA that answers with another identity.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Bytes;
use mesh_config::ca::{CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse};
use mesh_proxy::config::Config;
use mesh_proxy::identity::{IdentityStore, tls};
use mesh_proxy::orig_dst::FixedOriginalDst;
use mesh_proxy::{DrainTrigger, Proxy};
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NS: &str = "shop";
const SA: &str = "web";
const ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
const TOKEN: &str = "token-of-shop-web";

/// What the fake CA does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Sign for the identity the CSR asks, if the token is right.
    Sign,
    /// Sign, but for another identity.
    WrongIdentity,
}

struct CaState {
    mode: Mutex<Mode>,
    issued: AtomicU64,
    /// Requests on the config stream's path (the proxy's stream came over TLS).
    stream_requests: AtomicU64,
    key: KeyPair,
    params: CertificateParams,
}

struct FakeCa {
    addr: SocketAddr,
    root_pem: String,
    state: Arc<CaState>,
    tls: Arc<rustls::ServerConfig>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl FakeCa {
    async fn start() -> FakeCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "fake-ca.test");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let root_pem = params.self_signed(&key).unwrap().pem();
        // The CA's own serving certificate: for its IP, as a CA reached by address.
        let server_key = KeyPair::generate().unwrap();
        let mut sp = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::from_params(&params, &key);
        let server_cert = sp.signed_by(&server_key, &issuer).unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let state = Arc::new(CaState {
            mode: Mutex::new(Mode::Sign),
            issued: AtomicU64::new(0),
            stream_requests: AtomicU64::new(0),
            key,
            params,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut ca = FakeCa {
            addr,
            root_pem,
            state,
            tls: Arc::new(tls),
            task: None,
        };
        ca.serve(listener);
        ca
    }

    fn serve(&mut self, listener: TcpListener) {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let state = self.state.clone();
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        }));
    }

    /// The CA goes away: its port refuses connections.
    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// The CA comes back on the same port.
    async fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => return self.serve(l),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        }
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }
}

type Resp = http::Response<BoxBody<Bytes, Infallible>>;

fn grpc_error(code: u32, message: &str) -> Resp {
    http::Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", code.to_string())
        .header("grpc-message", message)
        .body(Empty::new().boxed())
        .unwrap()
}

async fn answer(state: &CaState, req: http::Request<hyper::body::Incoming>) -> Resp {
    if req.uri().path() == mesh_config::wire::STREAM_PATH {
        state.stream_requests.fetch_add(1, Ordering::Relaxed);
        return grpc_error(12, "not a control plane");
    }
    if req.uri().path() != CREATE_CERTIFICATE_PATH {
        return grpc_error(12, "unknown method");
    }
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return grpc_error(16, "token rejected by TokenReview: not a valid token");
    }
    let msg = IstioCertificateRequest::decode(&body[5..]).unwrap();
    let csr = CertificateSigningRequestParams::from_pem(&msg.csr).unwrap();
    let asked = match &csr.params.subject_alt_names[..] {
        [SanType::URI(u)] => u.as_str().to_owned(),
        other => return grpc_error(3, &format!("CSR SANs {other:?}")),
    };
    let mode = *state.mode.lock().unwrap();
    let san = match mode {
        Mode::Sign => asked,
        Mode::WrongIdentity => "spiffe://cluster.local/ns/shop/sa/admin".to_owned(),
    };
    let mut req = csr;
    req.params.subject_alt_names = vec![SanType::URI(san.as_str().try_into().unwrap())];
    let now = time::OffsetDateTime::now_utc();
    req.params.not_before = now - time::Duration::seconds(1);
    req.params.not_after = now + time::Duration::seconds(msg.validity_duration.max(1));
    req.params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let n = state.issued.fetch_add(1, Ordering::Relaxed) + 1;
    req.params.serial_number = Some(rcgen::SerialNumber::from_slice(&n.to_be_bytes()));
    let issuer = Issuer::from_params(&state.params, &state.key);
    let leaf = req.signed_by(&issuer).unwrap();
    let root = state.params.self_signed(&state.key).unwrap();
    let out = IstioCertificateResponse {
        cert_chain: vec![leaf.pem(), root.pem()],
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(out.len() as u32).to_be_bytes());
    frame.extend_from_slice(&out);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(
            Full::new(Bytes::from(frame))
                .with_trailers(async move { Some(Ok(trailers)) })
                .boxed(),
        )
        .unwrap()
}

/// A directory of its own for the root and token files, removed on drop.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(root_pem: &str, token: &str) -> Files {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mesh-proxy-identity-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("root-cert.pem"), root_pem).unwrap();
        std::fs::write(dir.join("istio-token"), format!("{token}\n")).unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Running {
    identity: Arc<IdentityStore>,
    admin: SocketAddr,
    metrics: SocketAddr,
    debug: SocketAddr,
    drain: DrainTrigger,
    task: tokio::task::JoinHandle<mesh_proxy::DrainReport>,
    _files: Files,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.drain.drain();
        self.task.abort();
    }
}

/// The proxy on loopback with the identity flags as the injector would write them
/// (parsed by the real CLI), the CA at `ca`.
async fn proxy(ca: &FakeCa, token: &str, extra: &[&str]) -> Running {
    let files = Files::new(&ca.root_pem, token);
    let addr = ca.addr.to_string();
    let root = files.path("root-cert.pem");
    let token_file = files.path("istio-token");
    let mut args = vec![
        "mesh-proxy",
        "--root-cert",
        &root,
        "--token-file",
        &token_file,
        "--control-plane",
        &addr,
        "--pod-namespace",
        NS,
        "--service-account",
        SA,
    ];
    args.extend_from_slice(extra);
    let parsed = match mesh_proxy::cli::Args::command_from(args, &|_| None).unwrap() {
        mesh_proxy::cli::Command::Run(a) => a.into_config().unwrap(),
        other => panic!("{other:?}"),
    };
    let mut config = Config::loopback();
    config.control_plane = parsed.control_plane.clone();
    config.workload_identity = parsed.workload_identity.clone();
    // Readiness waits for the certificate, not for a config nobody here sends.
    config.config_wait = Duration::from_millis(100);
    config.connect_timeout = Duration::from_secs(2);
    let p = Proxy::bind(config, Arc::new(FixedOriginalDst(ca.addr)))
        .await
        .unwrap();
    let identity = p.identity().unwrap();
    let addrs = p.addrs().clone();
    let drain = p.drain_trigger();
    Running {
        identity,
        admin: addrs.admin,
        metrics: addrs.metrics,
        debug: addrs.debug,
        drain,
        task: tokio::spawn(p.run()),
        _files: files,
    }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

async fn certs(r: &Running) -> serde_json::Value {
    let (status, body) = get(r.debug, "/certs").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits up to `bound` for `f` to hold.
async fn eventually<F, Fut>(bound: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    while !f().await {
        assert!(Instant::now() < deadline, "not within {bound:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn serial(r: &Running) -> Option<String> {
    r.identity.current().map(|c| c.serial.clone())
}

#[tokio::test]
async fn first_certificate_then_ready_and_reported() {
    let mut ca = FakeCa::start().await;
    ca.stop();
    let r = proxy(&ca, TOKEN, &[]).await;
    // No CA yet: not ready, and why.
    eventually(Duration::from_secs(5), "a failed first request", || async {
        r.identity.counts().1 > 0
    })
    .await;
    let (status, body) = get(r.admin, "/healthz/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no workload certificate") && body.contains("cannot reach the CA"),
        "{body}"
    );

    ca.restart().await;
    eventually(
        Duration::from_secs(15),
        "ready once the CA answers",
        || async { get(r.admin, "/healthz/ready").await.0 == 200 },
    )
    .await;
    let c = r.identity.current().unwrap();
    assert_eq!(c.spiffe_id, ID);
    assert!(c.certified.cert.len() == 1, "the leaf, not the root");

    let d = certs(&r).await;
    assert_eq!(d["identity"], ID);
    assert_eq!(d["certificate"]["serial"], c.serial.as_str());
    let left = d["certificate"]["seconds_to_expiry"].as_i64().unwrap();
    assert!((86_000..=86_400).contains(&left), "24h by default: {left}");
    assert!(
        d["certificate"]["not_after"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(d["roots"][0]["subject"], "O=fake-ca.test");
    assert_eq!(d["roots"][0]["sha256"].as_str().unwrap().len(), 95);
    assert!(
        d["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach the CA"),
        "{d}"
    );
    assert_eq!(d["consecutive_failures"], 0);

    let (_, m) = get(r.metrics, "/stats/prometheus").await;
    assert!(m.contains("\nmesh_proxy_cert_expiry_seconds 86"), "{m}");
    assert!(m.contains("\nmesh_proxy_cert_renewals_total 1\n"), "{m}");
    assert!(
        !m.contains("\nmesh_proxy_cert_renewal_failures_total 0\n"),
        "{m}"
    );

    // The config stream dialled the same address over TLS, verified for 127.0.0.1.
    eventually(
        Duration::from_secs(10),
        "the config stream over TLS",
        || async { ca.state.stream_requests.load(Ordering::Relaxed) > 0 },
    )
    .await;
}

#[tokio::test]
async fn a_refused_token_is_reported_with_the_cas_message() {
    let ca = FakeCa::start().await;
    let r = proxy(&ca, "someone-elses-token", &[]).await;
    eventually(Duration::from_secs(5), "a refused request", || async {
        r.identity.last_error().is_some()
    })
    .await;
    let e = r.identity.last_error().unwrap();
    assert!(
        e.contains("UNAUTHENTICATED") && e.contains("not a valid token"),
        "{e}"
    );
    let (status, body) = get(r.admin, "/healthz/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("UNAUTHENTICATED"), "{body}");
}

#[tokio::test]
async fn a_certificate_for_another_identity_is_rejected() {
    let ca = FakeCa::start().await;
    ca.set_mode(Mode::WrongIdentity);
    let r = proxy(&ca, TOKEN, &[]).await;
    eventually(Duration::from_secs(5), "a rejected answer", || async {
        r.identity.last_error().is_some()
    })
    .await;
    let e = r.identity.last_error().unwrap();
    assert!(e.contains("sa/admin") && e.contains(ID), "{e}");
    assert!(!r.identity.has_cert());
    assert_eq!(get(r.admin, "/healthz/ready").await.0, 503);
    // The CA mends its ways: the proxy gets its certificate.
    ca.set_mode(Mode::Sign);
    eventually(Duration::from_secs(10), "a certificate", || async {
        r.identity.has_cert()
    })
    .await;
}

/// An mTLS connection over loopback TCP between configs made from `server` and
/// `client` stores.
async fn mtls_pair(
    server: &Arc<IdentityStore>,
    client: &Arc<IdentityStore>,
) -> (
    tokio_rustls::server::TlsStream<TcpStream>,
    tokio_rustls::client::TlsStream<TcpStream>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(tls::server_config(server, tls::SERVER_ALPN).unwrap());
    let connector = tokio_rustls::TlsConnector::from(
        tls::client_config(client, vec![ID.to_owned()], tls::CLIENT_ALPN_TCP).unwrap(),
    );
    let name = ServerName::try_from(tls::sni(80, None, "web.shop.svc.cluster.local")).unwrap();
    let (s, c) = tokio::join!(
        async { acceptor.accept(l.accept().await.unwrap().0).await.unwrap() },
        async {
            connector
                .connect(name, TcpStream::connect(addr).await.unwrap())
                .await
                .unwrap()
        }
    );
    (s, c)
}

fn leaf_serial(certs: Option<&[CertificateDer<'_>]>) -> Vec<u8> {
    let leaf = &certs.unwrap()[0];
    // The fake CA numbers its serials 1, 2, ...: the last 8 bytes of the leaf's DER
    // serial are enough to tell two apart, read through the proxy's own DER reader.
    mesh_proxy::identity::der::describe(leaf).unwrap().serial
}

#[tokio::test]
async fn rotation_at_half_life_spares_an_open_connection() {
    let ca = FakeCa::start().await;
    let r = proxy(&ca, TOKEN, &["--cert-ttl", "4s"]).await;
    r.identity.wait_for_cert().await;
    let first = serial(&r).unwrap();
    let issued = Instant::now();
    let (mut s, mut c) = mtls_pair(&r.identity, &r.identity).await;
    assert_eq!(
        tls::peer_identity(s.get_ref().1.peer_certificates().unwrap()).as_deref(),
        Some(ID)
    );
    let before = leaf_serial(c.get_ref().1.peer_certificates());

    // Renewal at 1.8-2.2 s of a 4 s certificate.
    eventually(Duration::from_secs(6), "a new serial", || async {
        serial(&r).is_some_and(|s| s != first)
    })
    .await;
    let took = issued.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "renewed too early: {took:?}"
    );

    // The connection made before the rotation still carries bytes, both ways.
    c.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    s.write_all(b"and back..").await.unwrap();
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"and back..");
    // A new connection presents the new certificate.
    let (_s2, c2) = mtls_pair(&r.identity, &r.identity).await;
    assert_ne!(leaf_serial(c2.get_ref().1.peer_certificates()), before);
    // And it keeps rotating.
    let second = serial(&r).unwrap();
    eventually(Duration::from_secs(6), "a third serial", || async {
        serial(&r).is_some_and(|s| s != second)
    })
    .await;
    assert_eq!(
        r.identity.counts().1,
        0,
        "no failure: {:?}",
        r.identity.last_error()
    );
}

#[tokio::test]
async fn the_ca_down_keeps_the_certificate_and_renewal_recovers() {
    let mut ca = FakeCa::start().await;
    let r = proxy(&ca, TOKEN, &["--cert-ttl", "10s"]).await;
    r.identity.wait_for_cert().await;
    let held = serial(&r).unwrap();
    let not_after = r.identity.current().unwrap().not_after;
    ca.stop();
    // Renewal is due at 4.5-5.5 s: it fails, and the certificate stays.
    eventually(Duration::from_secs(9), "a failed renewal", || async {
        r.identity.counts().1 > 0
    })
    .await;
    assert_eq!(serial(&r).as_deref(), Some(held.as_str()));
    assert!(r.identity.has_cert());
    assert_eq!(get(r.admin, "/healthz/ready").await.0, 200, "still ready");
    let d = certs(&r).await;
    assert!(d["consecutive_failures"].as_u64().unwrap() >= 1, "{d}");
    assert!(
        d["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach the CA"),
        "{d}"
    );
    let (_, m) = get(r.metrics, "/stats/prometheus").await;
    assert!(
        !m.contains("\nmesh_proxy_cert_renewal_failures_total 0\n"),
        "{m}"
    );

    ca.restart().await;
    eventually(
        Duration::from_secs(8),
        "a renewal once the CA is back",
        || async { serial(&r).is_some_and(|s| s != held) },
    )
    .await;
    assert!(r.identity.current().unwrap().not_after > not_after);
    assert_eq!(certs(&r).await["consecutive_failures"], 0);
}
