//! The real server on loopback (port 0) with certificates made at test time, spoken to by a
//! TLS client that verifies the certificate against the test CA. Covers injection end to
//! end, bad input, old TLS versions, certificate rotation and config reload on disk.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mesh_webhook::admission;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;
use server_support::{
    Pki, app_pod, apply_patch, client_config, eventually, eventually_metric, names, patch_of,
    pod_review, post_inject, request, response_of, serve_args, served_cert,
};

async fn inject(
    addr: SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
    uid: &str,
    pod: Value,
) -> Value {
    let body = serde_json::to_vec(&pod_review(uid, "bookinfo", pod.clone())).unwrap();
    let a = post_inject(addr, tls, body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.content_type, "application/json");
    let resp = response_of(&a.json(), uid);
    match patch_of(&resp) {
        Some(p) => apply_patch(&pod, &p).unwrap(),
        None => pod,
    }
}

/// Swap `dir/..data` to a new folder holding `files`, and keep `dir/<name>` symlinks
/// pointing through it, the way the kubelet updates a mounted Secret or ConfigMap.
fn kubelet_swap(dir: &Path, version: &str, files: &[(&str, &[u8])]) {
    let ts = dir.join(version);
    std::fs::create_dir(&ts).unwrap();
    for (name, content) in files {
        std::fs::write(ts.join(name), content).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

#[tokio::test]
async fn injects_over_verified_tls_and_survives_bad_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA");
    let (cert, key) = pki.write(dir.path());
    let server = admission::start(serve_args(&cert, &key)).await.unwrap();
    let addr = server.addr;
    let tls = client_config(&pki.ca_der);

    let h = request(addr, tls.clone(), "GET", "/healthz", None, vec![])
        .await
        .unwrap();
    assert_eq!((h.status, h.text().trim()), (200, "ok"));
    assert_eq!(
        request(addr, tls.clone(), "GET", "/readyz", None, vec![])
            .await
            .unwrap()
            .status,
        200
    );

    let pod = app_pod();
    let out = inject(addr, tls.clone(), "uid-1", pod.clone()).await;
    assert_eq!(names(&out, "initContainers"), ["istio-init"]);
    assert_eq!(names(&out, "containers"), ["reviews", "istio-proxy"]);
    assert_eq!(
        out["spec"]["someFutureField"],
        pod["spec"]["someFutureField"]
    );
    assert_eq!(
        out["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "reviews"
    );

    // A client that trusts another CA cannot talk to us...
    let other = client_config(&Pki::new("other CA").ca_der);
    let err = request(addr, other, "GET", "/healthz", None, vec![])
        .await
        .unwrap_err();
    assert!(err.contains("TLS handshake"), "{err}");
    // ...nor can one that speaks plain HTTP; neither stops the server.
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    drop(plain);
    // Connect and drop without a word.
    drop(std::net::TcpStream::connect(addr).unwrap());

    let out = inject(addr, tls.clone(), "uid-2", pod).await;
    assert_eq!(names(&out, "containers"), ["reviews", "istio-proxy"]);
    let m = request(addr, tls, "GET", "/metrics", None, vec![])
        .await
        .unwrap();
    assert!(
        m.content_type.starts_with("text/plain"),
        "{}",
        m.content_type
    );
    assert!(
        m.text().contains("sidecar_injection_success_total 2"),
        "{}",
        m.text()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_400_415_413_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA");
    let (cert, key) = pki.write(dir.path());
    // Default limit: 8 MiB.
    let server = admission::start(serve_args(&cert, &key)).await.unwrap();
    let (addr, tls) = (server.addr, client_config(&pki.ca_der));
    let good = serde_json::to_vec(&pod_review("good", "bookinfo", app_pod())).unwrap();

    let a = request(
        addr,
        tls.clone(),
        "POST",
        "/inject",
        Some("application/json"),
        b"[1,2".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 400, "{}", a.text());
    let a = post_inject(addr, tls.clone(), b"{\"kind\":\"Pod\"}".to_vec()).await;
    assert_eq!(a.status, 400, "{}", a.text());
    let a = request(
        addr,
        tls.clone(),
        "POST",
        "/inject",
        Some("text/yaml"),
        good.clone(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 415, "{}", a.text());
    assert!(a.text().contains("application/json"));
    // 9 MiB: a valid review padded with whitespace, so only its size is wrong.
    let mut big = good.clone();
    big.pop();
    big.extend(std::iter::repeat_n(b' ', 9 << 20));
    big.push(b'}');
    let a = post_inject(addr, tls.clone(), big).await;
    assert_eq!(a.status, 413, "{}", a.text());
    // Just under the limit is fine.
    let mut under = good.clone();
    under.pop();
    under.extend(std::iter::repeat_n(b' ', (8 << 20) - good.len() - 16));
    under.push(b'}');
    let a = post_inject(addr, tls.clone(), under).await;
    assert_eq!(a.status, 200, "{}", a.text());

    let a = post_inject(addr, tls.clone(), good).await;
    assert_eq!(a.status, 200);
    assert!(patch_of(&response_of(&a.json(), "good")).is_some());
    assert_eq!(
        request(addr, tls, "GET", "/nope", None, vec![])
            .await
            .unwrap()
            .status,
        404
    );
    server.shutdown().await;
}

/// A TLS 1.0/1.1 ClientHello (no supported_versions extension), by hand: rustls must refuse
/// it for its version.
fn legacy_client_hello(minor: u8) -> Vec<u8> {
    let mut body = vec![0x03, minor];
    body.extend([0x42; 32]); // random
    body.push(0); // session id
    body.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE_{ECDSA,RSA}_AES128_GCM_SHA256
    body.extend([0x01, 0x00]); // null compression
    // signature_algorithms (ecdsa_secp256r1_sha256, rsa_pkcs1_sha256): without it rustls
    // stops before looking at the version, and the test would prove nothing.
    // supported_groups (secp256r1) and ec_point_formats (uncompressed) likewise.
    body.extend([0x00, 0x18]); // extensions length
    body.extend([0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01]);
    body.extend([0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17]);
    body.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    let mut hs = vec![0x01, 0x00, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend(hs);
    rec
}

#[tokio::test]
async fn tls_1_0_and_1_1_are_refused_1_2_and_1_3_served() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA");
    let (cert, key) = pki.write(dir.path());
    let server = admission::start(serve_args(&cert, &key)).await.unwrap();
    let addr = server.addr;
    let send_hello = |minor: u8| {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&legacy_client_hello(minor)).unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            buf.truncate(n);
            buf
        })
    };
    // Control: the very same hello saying TLS 1.2 gets a ServerHello (handshake record).
    let reply = send_hello(3).await.unwrap();
    assert_eq!(
        reply.first(),
        Some(&0x16),
        "TLS 1.2 hello should be answered: {reply:?}"
    );
    for minor in [1u8, 2] {
        let reply = send_hello(minor).await.unwrap();
        // Either an alert record (0x15) or a closed connection; never a handshake (0x16).
        assert!(
            reply.first() != Some(&0x16),
            "TLS 1.{} got a handshake reply: {reply:?}",
            minor - 1
        );
        // rustls answers a well-formed hello of an old version with a fatal
        // protocol_version alert (70): proof it was understood and refused.
        assert_eq!(reply.len(), 7, "one alert record expected, got {reply:?}");
        assert_eq!(reply[0], 0x15, "expected an alert record, got {reply:?}");
        assert_eq!(
            &reply[5..],
            &[2, 70],
            "fatal protocol_version alert, got {reply:?}"
        );
    }
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(server_support::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let a = request(
            addr,
            std::sync::Arc::new(cfg),
            "GET",
            "/healthz",
            None,
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(a.status, 200, "{version:?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn rotated_certificate_is_served_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::new("CA one");
    let second = Pki::new("CA two");
    kubelet_swap(
        dir.path(),
        "..v1",
        &[
            ("tls.crt", first.cert_pem.as_bytes()),
            ("tls.key", first.key_pem.as_bytes()),
        ],
    );
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let server = admission::start(serve_args(&cert, &key)).await.unwrap();
    let addr = server.addr;
    let (tls1, tls2) = (client_config(&first.ca_der), client_config(&second.ca_der));
    assert_eq!(
        request(addr, tls1.clone(), "GET", "/healthz", None, vec![])
            .await
            .unwrap()
            .status,
        200
    );
    assert!(
        request(addr, tls2.clone(), "GET", "/healthz", None, vec![])
            .await
            .is_err()
    );

    // A half-done rotation (new cert, old key) is rejected; the old pair keeps serving.
    kubelet_swap(
        dir.path(),
        "..v2",
        &[
            ("tls.crt", second.cert_pem.as_bytes()),
            ("tls.key", first.key_pem.as_bytes()),
        ],
    );
    eventually_metric(
        addr,
        tls1.clone(),
        "mesh_webhook_cert_reloads_total{result=\"failed\"} 1",
        "the mismatched pair to be rejected",
    )
    .await;
    assert_eq!(
        request(addr, tls1.clone(), "GET", "/healthz", None, vec![])
            .await
            .unwrap()
            .status,
        200
    );

    // The full rotation lands: the new certificate, from the new CA, without a restart.
    kubelet_swap(
        dir.path(),
        "..v3",
        &[
            ("tls.crt", second.cert_pem.as_bytes()),
            ("tls.key", second.key_pem.as_bytes()),
        ],
    );
    let der = eventually(
        "the new certificate to be served",
        Duration::from_secs(10),
        || {
            let tls2 = tls2.clone();
            async move { served_cert(addr, tls2).await.ok() }
        },
    )
    .await;
    let expected =
        rustls_pki_types::CertificateDer::from_pem_slice(second.cert_pem.as_bytes()).unwrap();
    assert_eq!(der, expected.to_vec());
    let out = inject(addr, tls2, "after-rotation", app_pod()).await;
    assert_eq!(names(&out, "containers"), ["reviews", "istio-proxy"]);
    let err = request(addr, tls1, "GET", "/healthz", None, vec![])
        .await
        .unwrap_err();
    assert!(
        err.contains("TLS handshake"),
        "old CA no longer verifies: {err}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn injection_config_is_reloaded_and_a_broken_one_is_ignored() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA");
    let (cert, key) = pki.write(certs.path());
    let cm = tempfile::tempdir().unwrap();
    kubelet_swap(
        cm.path(),
        "..v1",
        &[("config.yaml", b"proxyImage: example/proxy:one\n")],
    );
    let mut args = serve_args(&cert, &key);
    args.config = Some(cm.path().join("config.yaml"));
    let server = admission::start(args).await.unwrap();
    let (addr, tls) = (server.addr, client_config(&pki.ca_der));
    let proxy_image = |pod: &Value| {
        pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "istio-proxy")
            .map(|c| c["image"].as_str().unwrap().to_string())
    };
    let out = inject(addr, tls.clone(), "c1", app_pod()).await;
    assert_eq!(proxy_image(&out).as_deref(), Some("example/proxy:one"));

    kubelet_swap(
        cm.path(),
        "..v2",
        &[("config.yaml", b"proxyImage: example/proxy:two\n")],
    );
    eventually("the new config to be used", Duration::from_secs(10), || {
        let tls = tls.clone();
        async move {
            let out = inject(addr, tls, "c2", app_pod()).await;
            (proxy_image(&out).as_deref() == Some("example/proxy:two")).then_some(())
        }
    })
    .await;

    // A typo'd key is rejected; the last good config stays in force.
    kubelet_swap(
        cm.path(),
        "..v3",
        &[("config.yaml", b"proxyImag: example/proxy:three\n")],
    );
    eventually_metric(
        addr,
        tls.clone(),
        "mesh_webhook_config_reloads_total{result=\"failed\"} 1",
        "the broken config to be rejected",
    )
    .await;
    let out = inject(addr, tls.clone(), "c3", app_pod()).await;
    assert_eq!(proxy_image(&out).as_deref(), Some("example/proxy:two"));
    assert_eq!(
        request(addr, tls, "GET", "/readyz", None, vec![])
            .await
            .unwrap()
            .status,
        200
    );
    server.shutdown().await;
}

#[tokio::test]
async fn startup_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA");
    let (cert, key) = pki.write(dir.path());
    let missing = dir.path().join("nope.crt");
    let err = admission::start(serve_args(&missing, &key))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.crt"), "{err}");
    std::fs::write(dir.path().join("bad.yaml"), "nativeSidecars: sometimes\n").unwrap();
    let mut args = serve_args(&cert, &key);
    args.config = Some(dir.path().join("bad.yaml"));
    let err = admission::start(args).await.unwrap_err().to_string();
    assert!(err.contains("bad.yaml"), "{err}");
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408_and_the_server_keeps_serving() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA");
    let (cert, key) = pki.write(dir.path());
    let mut args = serve_args(&cert, &key);
    args.body_timeout = Duration::from_millis(300);
    let server = admission::start(args).await.unwrap();
    let (addr, tls) = (server.addr, client_config(&pki.ca_der));

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"apiVersion\":",
        )
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("no answer to a stalled body")
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");

    let out = inject(addr, tls.clone(), "after-408", app_pod()).await;
    assert_eq!(names(&out, "containers"), ["reviews", "istio-proxy"]);
    let m = request(addr, tls, "GET", "/metrics", None, vec![])
        .await
        .unwrap();
    assert!(
        m.text()
            .contains("sidecar_injection_requests_total{result=\"timeout\"} 1"),
        "{}",
        m.text()
    );
    server.shutdown().await;
}
