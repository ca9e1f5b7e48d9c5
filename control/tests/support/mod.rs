//! Shared by the serve_* tests: the API server (kube-local through KUBECONFIG; never
//! skipped: without it a test fails and says how to start it), kubectl, namespaces that
//! are deleted after the test, the `mesh-control` process, a config-stream client, a raw
//! HTTP GET, and a small test translation (`ServicesOnly`) so that the serving machinery
//! can be tested before the real one lands.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use mesh_config::wire::{Node, STREAM_PATH, StreamRequest, StreamResponse};
use mesh_config::{Key, Protocol, Resource, Service, ServicePort};
use mesh_control::serve::translator::{Translator, View};
use mesh_control::translate::{Diagnostic, MeshSettings, Objects, ProxyNode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

mod kube_local;
#[allow(unused_imports)] // each test crate uses its part
pub use kube_local::{HOW_TO_START, kube_local_dir, kubeconfig, kubectl_path, kubectl_try};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn kubectl(kubeconfig: &str, args: &[&str], stdin: Option<&str>) -> String {
    kubectl_try(kubeconfig, args, stdin).unwrap_or_else(|e| panic!("{e}"))
}

/// `prefix-<pid>-<millis>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 10_000_000)
        .unwrap_or(0);
    format!("{prefix}-{}-{t}-{n}", std::process::id() % 100_000)
}

/// A namespace for one test, deleted (without waiting) when dropped.
pub struct Namespace {
    pub name: String,
    kubeconfig: String,
}

impl Namespace {
    pub fn new(kubeconfig: &str, prefix: &str) -> Namespace {
        let name = unique(prefix);
        kubectl(kubeconfig, &["create", "namespace", &name], None);
        Namespace {
            name,
            kubeconfig: kubeconfig.to_owned(),
        }
    }

    pub fn apply(&self, yaml: &str) -> String {
        kubectl(
            &self.kubeconfig,
            &["-n", &self.name, "apply", "-f", "-"],
            Some(yaml),
        )
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        kubectl(&self.kubeconfig, &a, None)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = kubectl_try(
            &self.kubeconfig,
            &["delete", "namespace", &self.name, "--wait=false"],
            None,
        );
    }
}

/// A Service with a fixed ClusterIP-less spec and the given ports (`name:port`).
pub fn service_yaml(name: &str, ports: &[(&str, u16)]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector:\n    app: {name}\n  ports:\n"
    );
    for (n, p) in ports {
        y.push_str(&format!("  - name: {n}\n    port: {p}\n"));
    }
    y
}

/// The `mesh-control` binary, killed (by its own PID) and reaped when dropped.
pub struct MeshControl {
    child: Child,
    lines: std_mpsc::Receiver<String>,
    pub plaintext: SocketAddr,
    pub metrics: SocketAddr,
}

impl MeshControl {
    /// `mesh-control serve` on loopback `:0` ports, without the CA (`--no-ca`: no TLS
    /// port, no Secrets; `ca_grpc.rs` runs it with one), with `extra` flags.
    pub fn spawn(kubeconfig: &str, extra: &[&str]) -> MeshControl {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-control"))
            .args([
                "serve",
                "--no-ca",
                "--plaintext-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log",
                "info,mesh_control=debug",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
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
                if tx.send(line).is_err() {
                    // The test stopped reading: keep draining so the process never blocks.
                    continue;
                }
            }
        });
        let mut mc = MeshControl {
            child,
            lines,
            plaintext: "0.0.0.0:0".parse().unwrap(),
            metrics: "0.0.0.0:0".parse().unwrap(),
        };
        let line = mc.wait_line("listening", Duration::from_secs(30));
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .parse()
                .unwrap()
        };
        mc.plaintext = field("plaintext=");
        mc.metrics = field("metrics=");
        mc
    }

    pub fn wait_line(&self, what: &str, timeout: Duration) -> String {
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

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "mesh-control did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MeshControl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.1: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n..];
        s = s.strip_prefix("\r\n").unwrap_or(s);
    }
    out
}

/// Polls `GET path` until `ok(status, body)` or the timeout; returns the last answer.
pub async fn get_until(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    ok: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let r = match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => get(addr, path).await,
            Err(e) => (0, e.to_string()),
        };
        if ok(r.0, &r.1) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of an unlabelled (or exactly labelled) series in a scrape.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// One proxy's config stream.
pub struct Proxy {
    tx: mpsc::Sender<StreamRequest>,
    rx: Streaming<StreamResponse>,
    pub namespace: String,
    pub pod: String,
}

impl Proxy {
    /// Connects as `namespace/pod` and subscribes to `keys` in the first request.
    pub async fn connect(addr: SocketAddr, namespace: &str, pod: &str, keys: &[&str]) -> Proxy {
        let first = StreamRequest {
            node: Some(Node {
                pod_name: pod.into(),
                namespace: namespace.into(),
                ip: "10.244.0.9".into(),
                proxy_version: "test".into(),
            }),
            subscribe: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        };
        Self::open(addr, first, namespace, pod).await.unwrap()
    }

    /// Opens a stream whose first request is `first`.
    pub async fn open(
        addr: SocketAddr,
        first: StreamRequest,
        namespace: &str,
        pod: &str,
    ) -> Result<Proxy, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let resp = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static(STREAM_PATH),
                tonic_prost::ProstCodec::<StreamRequest, StreamResponse>::default(),
            )
            .await?;
        Ok(Proxy {
            tx,
            rx: resp.into_inner(),
            namespace: namespace.into(),
            pod: pod.into(),
        })
    }

    pub async fn send(&self, req: StreamRequest) {
        self.tx.send(req).await.unwrap();
    }

    pub async fn subscribe(&self, keys: &[&str]) {
        self.send(StreamRequest {
            subscribe: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn unsubscribe(&self, keys: &[&str]) {
        self.send(StreamRequest {
            unsubscribe: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn ack(&self, r: &StreamResponse) {
        self.send(StreamRequest {
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&self, r: &StreamResponse, why: &str) {
        self.send(StreamRequest {
            response_nonce: r.nonce.clone(),
            error: why.into(),
            ..Default::default()
        })
        .await;
    }

    /// The next response, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> StreamResponse {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("the stream ended"),
            Ok(Err(s)) => panic!("stream error: {s}"),
            Err(_) => panic!("no response within {timeout:?}"),
        }
    }

    /// The next message or the end of the stream, within `timeout`.
    pub async fn next_or_end(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<StreamResponse>, tonic::Status> {
        tokio::time::timeout(timeout, self.rx.message())
            .await
            .unwrap_or_else(|_| panic!("nothing within {timeout:?}"))
    }

    /// Asserts nothing arrives for `d`.
    pub async fn quiet(&mut self, d: Duration) {
        if let Ok(r) = tokio::time::timeout(d, self.rx.message()).await {
            panic!("expected no response, got {r:?}");
        }
    }
}

/// Keys of a response.
pub fn keys(r: &StreamResponse) -> Vec<String> {
    let mut k: Vec<String> = r.resources.iter().map(|u| u.key.clone()).collect();
    k.sort();
    k
}

/// The resource for `key` in `r`.
pub fn resource(r: &StreamResponse, key: &str) -> Resource {
    let u = r
        .resources
        .iter()
        .find(|u| u.key == key)
        .unwrap_or_else(|| panic!("{key} not in {:?}", keys(r)));
    Resource::from_json(&u.body).unwrap()
}

/// A label that makes [`ServicesOnly`] report a Service as invalid.
pub const INVALID_LABEL: &str = "test.mesh/invalid";

/// A test translation: each Service of one namespace (the test's: servers of tests that
/// run side by side do not see each other's objects) is answered for its FQDN (and short
/// names from the asking proxy's namespace) and its ClusterIP with its ports and nothing
/// else; a Service labelled [`INVALID_LABEL`] is left out and reported.
pub struct ServicesOnly {
    pub namespace: String,
}

struct ServicesView {
    by_host: HashMap<String, Service>,
    by_ip: HashMap<IpAddr, String>,
}

impl Translator for ServicesOnly {
    fn build(&self, objects: Objects, settings: &MeshSettings) -> (Arc<dyn View>, Vec<Diagnostic>) {
        let mut view = ServicesView {
            by_host: HashMap::new(),
            by_ip: HashMap::new(),
        };
        let mut diags = Vec::new();
        for s in &objects.services {
            if s.metadata.namespace.as_deref() != Some(self.namespace.as_str()) {
                continue;
            }
            let name = s.metadata.name.clone().unwrap_or_default();
            let namespace = s.metadata.namespace.clone().unwrap_or_default();
            if s.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(INVALID_LABEL))
            {
                diags.push(Diagnostic {
                    kind: "Service".into(),
                    namespace,
                    name,
                    field: format!("metadata.labels.{INVALID_LABEL}"),
                    message: "marked invalid by the test; Service skipped".into(),
                });
                continue;
            }
            let host = format!("{name}.{namespace}.svc.{}", settings.cluster_domain);
            let spec = s.spec.clone().unwrap_or_default();
            let addresses: Vec<IpAddr> = spec
                .cluster_ip
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            for ip in &addresses {
                view.by_ip.insert(*ip, host.clone());
            }
            let ports = spec
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    let n = p.name.unwrap_or_default();
                    ServicePort {
                        port: u16::try_from(p.port).unwrap_or(0),
                        protocol: Protocol::select(p.app_protocol.as_deref(), &n),
                        name: n,
                        routes: vec![],
                        default_retry: None,
                        tcp_route: None,
                    }
                })
                .collect();
            view.by_host.insert(
                host.clone(),
                Service {
                    host: host.clone(),
                    name,
                    namespace,
                    addresses,
                    ports,
                    domains: vec![host],
                    clusters: vec![],
                },
            );
        }
        (Arc::new(view), diags)
    }
}

impl View for ServicesView {
    fn resolve(&self, node: &ProxyNode, key: &Key) -> Resource {
        let host = match key {
            Key::Address(ip) => match self.by_ip.get(ip) {
                Some(h) => h.clone(),
                None => return Resource::NotFound,
            },
            Key::Host(h) => h.clone(),
            Key::Gateway => return Resource::NotFound,
        };
        let candidates = [
            host.clone(),
            format!("{host}.cluster.local"),
            format!("{host}.svc.cluster.local"),
            format!("{host}.{}.svc.cluster.local", node.namespace),
        ];
        for c in candidates {
            if let Some(s) = self.by_host.get(&c) {
                return Resource::Service(s.clone());
            }
        }
        Resource::NotFound
    }
}

/// A private kube-local instance (its own etcd and kube-apiserver on free loopback ports,
/// its own empty data), for tests that change cluster-scoped objects (CRDs) other tests
/// rely on. Stopped by stop.sh (only the PIDs it started) when dropped.
pub struct PrivateCluster {
    pub kubeconfig: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivateCluster {
    pub fn start() -> PrivateCluster {
        // Required like the shared one, so a missing setup fails the same way.
        let _ = kubeconfig();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/kube-local/start.sh");
        assert!(script.is_file(), "no {}: {HOW_TO_START}", script.display());
        let dir = tempfile::tempdir().unwrap();
        let (api, etcd, peer) = (free_port(), free_port(), free_port());
        let out = Command::new("bash")
            .arg(&script)
            .env("KUBE_LOCAL_RUN", dir.path().join("run"))
            .env("KUBE_LOCAL_ETCD_DATA", dir.path().join("etcd"))
            .env("KUBE_LOCAL_API_PORT", api.to_string())
            .env("KUBE_LOCAL_ETCD_PORT", etcd.to_string())
            .env("KUBE_LOCAL_ETCD_PEER_PORT", peer.to_string())
            .output()
            .unwrap();
        let pc = PrivateCluster {
            kubeconfig: dir.path().join("run/kubeconfig").display().to_string(),
            dir,
        };
        assert!(
            out.status.success(),
            "private kube-local did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pc
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/kube-local/stop.sh");
        let _ = Command::new("bash")
            .arg(script)
            .env("KUBE_LOCAL_RUN", self.dir.path().join("run"))
            .stdout(Stdio::null())
            .status();
    }
}
