//! The proxy's workload identity against a fake CA on 127.0.0.1: an h2 server over
//! rustls that speaks Istio's `CreateCertificate` (signing the proxy's CSR with rcgen
//! and checking its bearer token), and also answers the config stream's path, so the
//! stream's TLS is seen too.
//!
//! Timings are bounds with slack, never speed targets: the first certificate, a
//! rotation of a 4 s certificate within ~2-3 s, renewal failures while the CA is down,
//! recovery when it returns, and a CA that answers with another identity.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod mesh_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mesh_proxy::identity::{IdentityStore, tls};
use mesh_proxy::orig_dst::FixedOriginalDst;
use mesh_proxy::{DrainTrigger, Proxy};
use mesh_support::*;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
/// ([`pod_config`]: parsed by the real CLI), the CA at `ca`.
async fn proxy(ca: &FakeCa, token: &str, extra: &[&str]) -> Running {
    let files = Files::new(&ca.root_pem, token);
    let mut config = pod_config(ca, &files, (NS, SA, "127.0.0.1"), extra);
    // Readiness waits for the certificate, not for a config nobody here sends.
    config.config_wait = Duration::from_millis(100);
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

async fn certs(r: &Running) -> serde_json::Value {
    let (status, body) = get(r.debug, "/certs").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
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
