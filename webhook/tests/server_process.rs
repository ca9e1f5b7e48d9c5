//! `mesh-webhook serve` as a process: it says where it listens, serves verified TLS, and on
//! SIGTERM stops accepting, finishes the request in flight, and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_support;
mod server_support;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use deploy_support::unique;
use rustls::pki_types::ServerName;
use server_support::{
    Pki, app_pod, base_serve_flags, client_config, pod_review, post_inject, request,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mesh-webhook serve` with the tests' base flags for `cert`/`key`, then `extra`.
fn spawn(cert: &Path, key: &Path, extra: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-webhook"))
        .arg("serve")
        .args(base_serve_flags(cert, key))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[mesh-webhook] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Proc { child, lines }
}

impl Proc {
    fn wait_line(&self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {what:?} within {timeout:?}"),
            }
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, sig).unwrap();
    }
}

fn listen_addr(line: &str) -> SocketAddr {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line:?}"));
    v.parse().unwrap()
}

#[tokio::test]
async fn sigterm_stops_accepting_and_finishes_the_request_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("process CA");
    let (cert, key) = pki.write(dir.path());
    let mut p = spawn(
        &cert,
        &key,
        &["--shutdown-grace", "10s", "--shutdown-delay", "1s"],
    );
    let addr = listen_addr(&p.wait_line("listening", Duration::from_secs(30)));
    let tls = client_config(&pki.ca_der);
    assert_eq!(
        request(addr, tls.clone(), "GET", "/healthz", None, vec![])
            .await
            .unwrap()
            .status,
        200
    );

    // Start a request and send only half of its body.
    let body = serde_json::to_vec(&pod_review("in-flight", "bookinfo", app_pod())).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    stream.write_all(&body[..half]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    p.signal(nix::sys::signal::Signal::SIGTERM);
    // During the shutdown delay: not ready, so the Service stops routing here, but a
    // request that still arrives is served.
    p.wait_line("shutdown delay", Duration::from_secs(10));
    let signalled = Instant::now();
    let ready = request(addr, tls.clone(), "GET", "/readyz", None, vec![])
        .await
        .unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("shutting down"), "{}", ready.text());
    let late = serde_json::to_vec(&pod_review("late", "bookinfo", app_pod())).unwrap();
    let a = post_inject(addr, tls.clone(), late).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.text().contains("\"patch\""), "{}", a.text());
    p.wait_line("shutting down", Duration::from_secs(10));
    assert!(
        signalled.elapsed() >= Duration::from_millis(500),
        "stopped accepting before the 1s shutdown delay ran out"
    );
    // No new connections once shutdown began.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting connections after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );

    // The request in flight still gets its full answer.
    stream.write_all(&body[half..]).await.unwrap();
    stream.flush().await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Answered during shutdown: the connection is not kept alive for another request.
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{reply}"
    );
    assert!(reply.contains("\"uid\":\"in-flight\""), "{reply}");
    assert!(reply.contains("\"patch\""), "{reply}");

    let st = p.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit status {st}");
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body) from `stream`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert!(
            n == 1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    buf.extend_from_slice(&body);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The API server keeps connections to the webhook alive and may write its next review on
/// an idle one at any moment. A connection that sat idle through the whole shutdown delay
/// is therefore not closed by the server, even once the listener is gone: its next request
/// is answered (with `Connection: close`), and only then does it end. The process does not
/// wait for the grace period once no connection is left.
#[tokio::test]
async fn an_idle_kept_alive_connection_survives_the_shutdown_delay_and_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("process CA");
    let (cert, key) = pki.write(dir.path());
    let mut p = spawn(
        &cert,
        &key,
        &["--shutdown-grace", "20s", "--shutdown-delay", "500ms"],
    );
    let addr = listen_addr(&p.wait_line("listening", Duration::from_secs(30)));
    let tls = client_config(&pki.ca_der);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stream.write_all(get).await.unwrap();
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );

    // Idle through SIGTERM, the delay, and the listener's close.
    p.signal(nix::sys::signal::Signal::SIGTERM);
    p.wait_line("shutting down", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after the delay");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited with a connection open"
    );

    // The review the API server writes now is answered, and the connection then ends.
    let review = serde_json::to_vec(&pod_review("after-delay", "bookinfo", app_pod())).unwrap();
    let head = format!(
        "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        review.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&review).await.unwrap();
    stream.flush().await.unwrap();
    let answer = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"uid\":\"after-delay\""), "{answer}");
    assert!(answer.contains("\"patch\""), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the server kept the connection open after Connection: close")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&rest));

    // No connection left: it exits now, well before the 20 s grace.
    let st = p.wait_exit(Duration::from_secs(5));
    assert!(st.success(), "exit status {st}");
}

#[test]
fn bad_flags_and_files_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-webhook"))
        .args([
            "serve",
            "--cert",
            "/nonexistent/tls.crt",
            "--key",
            "/nonexistent/tls.key",
            "--addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/tls.crt"), "{err}");

    let pki = Pki::new("x");
    let (cert, key) = pki.write(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-webhook"))
        .args([
            "serve",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--max-body-bytes",
            "lots",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-body-bytes"), "{err}");
}

/// `serve --self-signed` against a REAL API server (KUBECONFIG; kube-local in CI): before
/// it listens, the certificate is in the shared Secret and on disk, caBundle is patched into
/// our webhook configuration, and the server presents a certificate that verifies against
/// that CA under the Service's DNS name.
#[tokio::test]
async fn serve_self_signed_publishes_its_ca_and_serves_with_it() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use kube::api::{Api, DeleteParams, PostParams};

    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: this test needs a real API server. Start one with \
         ../shared/kube-local/setup.sh && ../shared/kube-local/start.sh and \
         export KUBECONFIG=$HOME/.kube-local/run/kubeconfig (as .ci/run does)"
    );
    let client = kube::Client::try_default().await.unwrap();
    let ns = unique("mesh-serve-ss");
    let mwc_name = unique("mesh-serve-ss-injector");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    // A webhook nothing selects, so it never touches anything else in the cluster.
    let mwc = serde_json::json!({
        "metadata": {"name": mwc_name},
        "webhooks": [{
            "name": "inject.mesh-serve-ss.example",
            "clientConfig": {"url": "https://127.0.0.1:9/inject"},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "namespaceSelector": {"matchLabels": {"mesh-serve-ss-never": "true"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]
        }]
    });
    mwcs.create(
        &PostParams::default(),
        &serde_json::from_value(mwc).unwrap(),
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        dir.path().join("certs/tls.crt"),
        dir.path().join("certs/tls.key"),
    );
    let (ns2, mwc2, client2) = (ns.clone(), mwc_name.clone(), client.clone());
    let body = tokio::spawn(async move {
        let mut p = spawn(
            &cert,
            &key,
            &[
                "--self-signed",
                "--namespace",
                &ns2,
                "--secret-name",
                "mesh-webhook-certs",
                "--service-name",
                "mesh-webhook",
                "--webhook-config-name",
                &mwc2,
            ],
        );
        let addr = listen_addr(&p.wait_line("listening", Duration::from_secs(60)));
        let secret = Api::<Secret>::namespaced(client2.clone(), &ns2)
            .get("mesh-webhook-certs")
            .await
            .unwrap();
        let data = secret.data.unwrap();
        let ca_pem = String::from_utf8(data["ca.crt"].0.clone()).unwrap();
        let bundle = data["ca-bundle.crt"].0.clone();
        assert_eq!(
            std::fs::read(&cert).unwrap(),
            data["tls.crt"].0,
            "the served file is the Secret's"
        );
        let got = Api::<MutatingWebhookConfiguration>::all(client2)
            .get(&mwc2)
            .await
            .unwrap();
        let hook = &got.webhooks.unwrap()[0];
        assert_eq!(
            hook.client_config.ca_bundle.as_ref().unwrap().0,
            bundle,
            "caBundle patched"
        );

        use rustls_pki_types::pem::PemObject as _;
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let tls = client_config(&ca);
        let name = format!("mesh-webhook.{ns2}.svc");
        let a =
            server_support::request_as(addr, tls.clone(), &name, "GET", "/readyz", None, vec![])
                .await
                .unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        let review = serde_json::to_vec(&pod_review("ss", "default", app_pod())).unwrap();
        let a = server_support::request_as(
            addr,
            tls,
            &name,
            "POST",
            "/inject",
            Some("application/json"),
            review,
        )
        .await
        .unwrap();
        assert!(a.text().contains("\"patch\""), "{}", a.text());
        p.signal(nix::sys::signal::Signal::SIGTERM);
        // The requests' kept-alive connections stay open and idle, which the server never
        // closes: it exits when --shutdown-grace (15s) ends, after --shutdown-delay (5s).
        assert!(p.wait_exit(Duration::from_secs(30)).success());
    })
    .await;
    let _ = mwcs.delete(&mwc_name, &DeleteParams::default()).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(e) = body {
        std::panic::resume_unwind(e.into_panic());
    }
}
