//! A fake CA (and config stream) for the proxy's tests, on 127.0.0.1: an h2 server over
//! rustls that speaks Istio's `CreateCertificate` (signing the proxy's CSR with rcgen
//! and checking its bearer token) and answers the config stream: with an error, or,
//! once [`FakeCa::serve_config`] gave it resources, with one response holding them all.

#![allow(dead_code, unused_imports, clippy::unwrap_used)] // each test uses its part

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

pub const NS: &str = "shop";
pub const SA: &str = "web";
pub const ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
pub const TOKEN: &str = "token-of-shop-web";

/// What the fake CA does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Sign for the identity the CSR asks, if the token is right.
    Sign,
    /// Sign, but for another identity.
    WrongIdentity,
}

pub struct CaState {
    pub mode: Mutex<Mode>,
    pub issued: AtomicU64,
    /// Requests on the config stream's path (the proxy's stream came over TLS).
    pub stream_requests: AtomicU64,
    /// What the config stream answers (whole); empty: an error.
    pub resources: Mutex<Vec<(String, mesh_config::Resource)>>,
    /// Bumped by [`FakeCa::serve_config`]: open streams send the new resources.
    pub config_version: tokio::sync::watch::Sender<u64>,
    pub key: KeyPair,
    pub params: CertificateParams,
}

pub struct FakeCa {
    pub addr: SocketAddr,
    pub root_pem: String,
    pub state: Arc<CaState>,
    pub tls: Arc<rustls::ServerConfig>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl FakeCa {
    pub async fn start() -> FakeCa {
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
            resources: Mutex::new(Vec::new()),
            config_version: tokio::sync::watch::channel(0).0,
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

    pub fn serve(&mut self, listener: TcpListener) {
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
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// The CA comes back on the same port.
    pub async fn restart(&mut self) {
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

    /// From now on the config stream answers with `resources` (key, resource); open
    /// streams get them as a new response.
    pub fn serve_config(&self, resources: Vec<(String, mesh_config::Resource)>) {
        *self.state.resources.lock().unwrap() = resources;
        self.state.config_version.send_modify(|v| *v += 1);
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }
}

pub type Resp = http::Response<BoxBody<Bytes, Infallible>>;

pub fn grpc_error(code: u32, message: &str) -> Resp {
    http::Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", code.to_string())
        .header("grpc-message", message)
        .body(Empty::new().boxed())
        .unwrap()
}

pub async fn answer(state: &Arc<CaState>, req: http::Request<hyper::body::Incoming>) -> Resp {
    if req.uri().path() == mesh_config::wire::STREAM_PATH {
        state.stream_requests.fetch_add(1, Ordering::Relaxed);
        let resources = state.resources.lock().unwrap().clone();
        if resources.is_empty() {
            return grpc_error(12, "not a control plane");
        }
        return config_stream(state, resources, req.into_body());
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

/// One response of the config stream, as a gRPC frame.
fn config_frame(version: u64, resources: Vec<(String, mesh_config::Resource)>) -> Bytes {
    use mesh_config::wire::{ResourceUpdate, StreamResponse};
    let msg = StreamResponse {
        version,
        nonce: format!("n{version}"),
        resources: resources
            .into_iter()
            .map(|(key, r)| ResourceUpdate {
                key,
                version: version.to_string(),
                body: r.to_json(),
            })
            .collect(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    Bytes::from(frame)
}

/// The config stream as a fake control plane answers it: one response with every
/// resource, then one more each time [`FakeCa::serve_config`] changes them (the
/// proxy's requests and ACKs are read and dropped).
fn config_stream(
    state: &Arc<CaState>,
    resources: Vec<(String, mesh_config::Resource)>,
    mut requests: hyper::body::Incoming,
) -> Resp {
    let mut changes = state.config_version.subscribe();
    let first = config_frame(1, resources);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(4);
    let state = state.clone();
    tokio::spawn(async move {
        let _ = tx.send(Ok(hyper::body::Frame::data(first))).await;
        let mut version = 1;
        loop {
            tokio::select! {
                // Read (and ignore) the proxy's requests and ACKs until it goes away.
                r = requests.frame() => if !matches!(r, Some(Ok(_))) { break },
                c = changes.changed() => {
                    if c.is_err() {
                        break;
                    }
                    version += 1;
                    let now = state.resources.lock().unwrap().clone();
                    if tx.send(Ok(hyper::body::Frame::data(config_frame(version, now)))).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(tx);
    });
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx))
                .boxed(),
        )
        .unwrap()
}

/// The config of a proxy for pod `ns/sa` at `ip` with the identity flags as the injector
/// writes them (parsed by the real CLI), `extra` flags after them (`--role gateway`),
/// pointed at `ca` for its certificate and config, its files in `files`; on loopback
/// otherwise ([`Config::loopback`]), 2 s connect timeout.
pub fn pod_config(
    ca: &FakeCa,
    files: &Files,
    (ns, sa, ip): (&str, &str, &str),
    extra: &[&str],
) -> Config {
    let addr = ca.addr.to_string();
    let (root, token) = (files.path("root-cert.pem"), files.path("istio-token"));
    let mut args = vec![
        "mesh-proxy",
        "--root-cert",
        &root,
        "--token-file",
        &token,
        "--control-plane",
        &addr,
        "--pod-namespace",
        ns,
        "--service-account",
        sa,
        "--workload-name",
        sa,
        "--instance-ip",
        ip,
    ];
    args.extend(extra);
    let parsed = match mesh_proxy::cli::Args::command_from(args, &|_| None).unwrap() {
        mesh_proxy::cli::Command::Run(a) => a.into_config().unwrap(),
        other => panic!("{other:?}"),
    };
    let mut config = Config::loopback();
    config.control_plane = parsed.control_plane.clone();
    config.workload_identity = parsed.workload_identity.clone();
    config.identity = parsed.identity.clone();
    config.gateway = parsed.gateway.clone();
    if parsed.outbound.is_empty() && parsed.inbound.is_empty() {
        // A gateway: no capture listeners, as the CLI says.
        config.outbound.clear();
        config.inbound.clear();
    }
    config.connect_timeout = Duration::from_secs(2);
    config
}

/// A directory of its own for the root and token files, removed on drop.
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn new(root_pem: &str, token: &str) -> Files {
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

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
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

/// Waits up to `bound` for `f` to hold.
pub async fn eventually<F, Fut>(bound: Duration, what: &str, mut f: F)
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
