//! mTLS between two HTTP engines on loopback: a client-side engine (outbound, its
//! connector holding a workload identity) sends to a cluster whose endpoint is a
//! "server-side" listener that terminates mTLS (as the flow does, with
//! `MeshTls::accept`) and serves the stream inbound to the app. Certificates come from
//! a CA made here with rcgen.
//!
//! What a user sees: answers through mTLS, TLS bytes on the wire, Istio's principals
//! and `connection_security_policy` on both reporters, a server with the wrong identity
//! refused (503 `UF`, the app never reached), `DISABLE` and auto mTLS staying plaintext,
//! AuthorizationPolicy by principal, pooled mTLS connections (one handshake for many
//! requests, never shared with plaintext ones), outlier detection of a failing
//! handshake. Timings are generous bounds, never speed targets.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod http_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http_support::*;
use mesh_config::authz::{AuthzPolicy, AuthzRule, Source};
use mesh_config::{
    ClusterTls, ClusterTlsMode, Endpoint, HeaderMatch, OutlierDetection, Protocol, RequestMatch,
    RouteAction, Service,
};
use mesh_proxy::http::{LocalService, MeshTls};
use mesh_proxy::identity::exchange::NodeMetadata;
use mesh_proxy::identity::{IdentityStore, Roots, ca_client, csr};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

const TRUST_DOMAIN: &str = "cluster.local";
/// The client's workload.
const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";
/// Another client.
const OTHER: &str = "spiffe://cluster.local/ns/foo/sa/other";
/// The server's workload (reviews' ServiceAccount).
const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews";
/// A server that is not reviews.
const RATINGS: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-ratings";

/// The mesh's CA: a self-signed root that signs workload certificates.
struct Ca {
    key: KeyPair,
    params: CertificateParams,
    root_pem: String,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, TRUST_DOMAIN);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_pem = params.self_signed(&key).unwrap().pem();
        Ca {
            key,
            params,
            root_pem,
        }
    }

    /// A workload's mTLS: a fresh key, a certificate for `id` valid for an hour.
    fn mesh_tls(&self, id: &str) -> Arc<MeshTls> {
        let key = csr::generate(id).unwrap();
        let mut req = CertificateSigningRequestParams::from_pem(&key.csr_pem).unwrap();
        req.params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        let now = time::OffsetDateTime::now_utc();
        req.params.not_before = now - time::Duration::seconds(60);
        req.params.not_after = now + time::Duration::seconds(3600);
        req.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        req.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = req
            .signed_by(&Issuer::from_params(&self.params, &self.key))
            .unwrap();
        let chain = vec![leaf.pem(), self.root_pem.clone()];
        let path = Path::new("test-root.pem");
        let roots = Roots::from_pem(self.root_pem.as_bytes(), path).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let cert = ca_client::accept(&chain, key, id, &roots, path, now).unwrap();
        MeshTls::new(
            IdentityStore::fixed(cert, roots, TRUST_DOMAIN),
            &NodeMetadata::default(),
        )
        .unwrap()
    }
}

/// The server side's view: productpage calls from 127.0.0.1, the pod port is reviews'.
fn server_resolver(protocol: Protocol) -> StaticResolver {
    let mut r = StaticResolver::default();
    let mut productpage = peer("v1");
    productpage.workload = "productpage-v1".into();
    productpage.app = "productpage".into();
    productpage.canonical_service = "productpage".into();
    r.peers.insert("127.0.0.1".parse().unwrap(), productpage);
    r.local = Some(LocalService {
        host: HOST.into(),
        name: "reviews".into(),
        namespace: "default".into(),
        protocol,
    });
    r
}

/// The server side: an inbound engine with `id`'s mTLS in front of `app`.
async fn server(ca: &Ca, id: &str, app: &Upstream, r: StaticResolver) -> Proxy {
    proxy_with_tls(r, app.addr, Side::Inbound, ca.mesh_tls(id)).await
}

/// reviews on 9080 (`protocol`): its default cluster with one endpoint at `addr`
/// (auto mTLS says `mtls`), its TLS `tls`.
fn reviews_at(
    addr: std::net::SocketAddr,
    mtls: bool,
    tls: ClusterTls,
    protocol: Protocol,
) -> Service {
    let mut svc = reviews(&[], protocol, vec![]);
    svc.clusters[0].endpoints = vec![endpoint(addr, mtls)];
    svc.clusters[0].tls = tls;
    svc
}

fn endpoint(addr: std::net::SocketAddr, mtls: bool) -> Endpoint {
    Endpoint {
        addr,
        serving: true,
        terminating: false,
        mtls,
        peer: Some(peer("v1")),
    }
}

/// Auto mTLS (no DestinationRule), reviews' identities listed.
fn auto_tls(identities: &[&str]) -> ClusterTls {
    ClusterTls {
        mode: ClusterTlsMode::Auto,
        identities: identities.iter().map(|s| (*s).to_owned()).collect(),
        sni: None,
    }
}

/// The client side: an outbound engine with `id`'s mTLS, knowing `svc`.
async fn client(ca: &Ca, id: &str, svc: &Service) -> Proxy {
    proxy_with_tls(
        StaticResolver::with(svc),
        cluster_ip(),
        Side::Outbound,
        ca.mesh_tls(id),
    )
    .await
}

fn log_lines(p: &Proxy) -> Vec<serde_json::Value> {
    p.log
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (bounded) until the access log has `n` lines.
async fn wait_log(p: &Proxy, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..200 {
        if p.log.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    log_lines(p)
}

fn principal(side: &str, id: &str) -> String {
    format!("{side}_principal=\"{id}\"")
}

#[tokio::test]
async fn requests_go_over_mtls_and_both_reporters_name_the_principals() {
    let ca = Ca::new();
    let app = upstream("app", Proto::H1).await;
    let srv = server(&ca, REVIEWS, &app, server_resolver(Protocol::Http)).await;
    let svc = reviews_at(srv.addr, true, auto_tls(&[REVIEWS]), Protocol::Http);
    let cli = client(&ca, SLEEP, &svc).await;
    let mut c = H1Client::connect(cli.addr).await;
    for _ in 0..2 {
        let (s, _, b) = c.get("reviews:9080", "/reviews/0", &[]).await;
        assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    }
    // On the wire: a TLS handshake record first, one handshake for both requests.
    assert_eq!(srv.tls_first_bytes.load(Ordering::SeqCst), 1);
    assert_eq!(srv.tls_handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(srv.plaintext_conns.load(Ordering::SeqCst), 0);
    assert_eq!(cli.engine.upstream_connects(), 1);
    assert_eq!(app.seen.lock().unwrap().len(), 2);
    // The destination knows the connection was mTLS and who called.
    let dest = [
        "reporter=\"destination\"",
        &principal("source", SLEEP),
        &principal("destination", REVIEWS),
        "connection_security_policy=\"mutual_tls\"",
        "source_workload=\"productpage-v1\"",
        "destination_workload=\"reviews-v1\"",
        "response_code=\"200\"",
    ];
    assert_eq!(
        srv.wait_requests(&dest, 2).await,
        2,
        "{}",
        srv.metrics_text()
    );
    // The source names us and the server it verified; its policy label says unknown.
    let src = [
        "reporter=\"source\"",
        &principal("source", SLEEP),
        &principal("destination", REVIEWS),
        "connection_security_policy=\"unknown\"",
        "destination_workload=\"reviews-v1\"",
        "response_code=\"200\"",
    ];
    assert_eq!(
        cli.wait_requests(&src, 2).await,
        2,
        "{}",
        cli.metrics_text()
    );
    // The access logs name the peers.
    let l = wait_log(&srv, 2).await;
    assert_eq!(l[0]["direction"], "inbound");
    assert_eq!(l[0]["downstream_peer_uri_san"], SLEEP);
    assert!(l[0]["upstream_peer_uri_san"].is_null());
    let l = wait_log(&cli, 2).await;
    assert_eq!(l[1]["direction"], "outbound");
    assert_eq!(l[1]["upstream_peer_uri_san"], REVIEWS);
    assert!(l[1]["upstream_transport_failure_reason"].is_null());
}

#[tokio::test]
async fn h2_upstreams_go_over_mtls_too() {
    let ca = Ca::new();
    let app = upstream("app", Proto::H2).await;
    let srv = server(&ca, REVIEWS, &app, server_resolver(Protocol::Http2)).await;
    let svc = reviews_at(srv.addr, true, auto_tls(&[REVIEWS]), Protocol::Http2);
    let cli = client(&ca, SLEEP, &svc).await;
    let mut c = H1Client::connect(cli.addr).await;
    for _ in 0..3 {
        let (s, _, b) = c.get("reviews", "/", &[]).await;
        assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    }
    assert_eq!(srv.tls_handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(cli.engine.upstream_connects(), 1);
    let dest = [
        "reporter=\"destination\"",
        &principal("source", SLEEP),
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert_eq!(srv.wait_requests(&dest, 3).await, 3);
    let src = ["reporter=\"source\"", &principal("destination", REVIEWS)];
    assert_eq!(cli.wait_requests(&src, 3).await, 3);
}

/// `ISTIO_MUTUAL` to a server whose identity is not in the cluster's list: the
/// handshake fails, the request gets 503 `UF` naming the identity, and the app never
/// sees it.
#[tokio::test]
async fn a_server_with_an_unexpected_identity_is_a_connect_failure() {
    let ca = Ca::new();
    let app = upstream("app", Proto::H1).await;
    let srv = server(&ca, REVIEWS, &app, server_resolver(Protocol::Http)).await;
    let tls = ClusterTls {
        mode: ClusterTlsMode::IstioMutual,
        identities: vec![RATINGS.into()],
        sni: None,
    };
    // Not labelled for auto mTLS: ISTIO_MUTUAL originates it anyway.
    let svc = reviews_at(srv.addr, false, tls, Protocol::Http);
    let cli = client(&ca, SLEEP, &svc).await;
    let mut c = H1Client::connect(cli.addr).await;
    let (s, _, b) = c.get("reviews", "/", &[]).await;
    assert_eq!(s, 503);
    assert!(b.starts_with("upstream connect error"), "{b}");
    assert!(b.contains("transport failure reason: TLS error"), "{b}");
    assert!(
        b.contains(&format!("the peer is {REVIEWS}, expected {RATINGS}")),
        "the body names what the server presented and what was expected: {b}"
    );
    assert!(app.seen.lock().unwrap().is_empty());
    assert_eq!(srv.tls_handshakes.load(Ordering::SeqCst), 0);
    // Tried as a connect failure (Istio's default retry: twice more).
    assert_eq!(srv.tls_first_bytes.load(Ordering::SeqCst), 3);
    let want = [
        "reporter=\"source\"",
        "response_code=\"503\"",
        "response_flags=\"UF,URX\"",
    ];
    assert_eq!(
        cli.wait_requests(&want, 1).await,
        1,
        "{}",
        cli.metrics_text()
    );
    let l = wait_log(&cli, 1).await;
    assert_eq!(l[0]["response_flags"], "UF,URX");
    let reason = l[0]["upstream_transport_failure_reason"].as_str().unwrap();
    assert!(reason.contains(REVIEWS), "{reason}");
    // Nothing was pooled from the failed handshakes; the next request tries again.
    let (s, _, _) = c.get("reviews", "/", &[]).await;
    assert_eq!(s, 503);
    assert_eq!(srv.tls_first_bytes.load(Ordering::SeqCst), 6);
}

/// `DISABLE` (even to an endpoint labelled for mTLS) and auto mTLS to an endpoint
/// without the label stay plaintext: a plain app answers, a PERMISSIVE server sees
/// plaintext and reports `none`.
#[tokio::test]
async fn disable_and_unlabelled_endpoints_stay_plaintext() {
    let ca = Ca::new();
    let app = upstream("app", Proto::H1).await;
    let disable = ClusterTls {
        mode: ClusterTlsMode::Disable,
        identities: vec![REVIEWS.into()],
        sni: None,
    };
    // Straight to a plaintext HTTP server: it could not answer TLS.
    let svc = reviews_at(app.addr, true, disable.clone(), Protocol::Http);
    let cli = client(&ca, SLEEP, &svc).await;
    let mut c = H1Client::connect(cli.addr).await;
    let (s, _, b) = c.get("reviews", "/", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    let svc = reviews_at(app.addr, false, auto_tls(&[REVIEWS]), Protocol::Http);
    let cli2 = client(&ca, SLEEP, &svc).await;
    let mut c2 = H1Client::connect(cli2.addr).await;
    let (s, _, b) = c2.get("reviews", "/", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    // No principals at the source without mTLS.
    let src = [
        "reporter=\"source\"",
        &principal("source", "unknown"),
        &principal("destination", "unknown"),
    ];
    assert_eq!(cli.wait_requests(&src, 1).await, 1);
    assert_eq!(cli2.wait_requests(&src, 1).await, 1);
    // Through a server that takes both: plaintext arrives, reported as such.
    let srv = server(&ca, REVIEWS, &app, server_resolver(Protocol::Http)).await;
    let svc = reviews_at(srv.addr, true, disable, Protocol::Http);
    let cli3 = client(&ca, SLEEP, &svc).await;
    let mut c3 = H1Client::connect(cli3.addr).await;
    let (s, _, b) = c3.get("reviews", "/", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    assert_eq!(srv.plaintext_conns.load(Ordering::SeqCst), 1);
    assert_eq!(srv.tls_first_bytes.load(Ordering::SeqCst), 0);
    let dest = [
        "reporter=\"destination\"",
        "connection_security_policy=\"none\"",
        &principal("source", "unknown"),
        &principal("destination", "unknown"),
    ];
    assert_eq!(srv.wait_requests(&dest, 1).await, 1);
}

/// A proxy without a workload identity cannot originate mTLS: it connects in
/// plaintext where the cluster asks for mTLS.
#[tokio::test]
async fn without_an_identity_the_client_connects_in_plaintext() {
    let ca = Ca::new();
    let app = upstream("app", Proto::H1).await;
    let srv = server(&ca, REVIEWS, &app, server_resolver(Protocol::Http)).await;
    let tls = ClusterTls {
        mode: ClusterTlsMode::IstioMutual,
        ..ClusterTls::default()
    };
    let svc = reviews_at(srv.addr, true, tls, Protocol::Http);
    let cli = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(cli.addr).await;
    let (s, _, b) = c.get("reviews", "/", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    assert_eq!(srv.plaintext_conns.load(Ordering::SeqCst), 1);
    assert_eq!(srv.tls_first_bytes.load(Ordering::SeqCst), 0);
}

/// One endpoint reached by two clusters, one with mTLS and one without: their
/// connections are pooled apart (each reused by its own cluster's requests).
#[tokio::test]
async fn mtls_and_plaintext_connections_to_one_address_are_pooled_apart() {
    let ca = Ca::new();
    let app = upstream("app", Proto::H1).await;
    let srv = server(&ca, REVIEWS, &app, server_resolver(Protocol::Http)).await;
    let plain = RequestMatch {
        headers: vec![HeaderMatch {
            name: "x-plain".into(),
            value: None,
        }],
        ..RequestMatch::default()
    };
    let routes = vec![
        route(
            "plain",
            vec![plain],
            RouteAction::Route(vec![to("v2", 100)]),
        ),
        route("mtls", vec![], RouteAction::Route(vec![to("v1", 100)])),
    ];
    let mut svc = reviews(&[], Protocol::Http, routes);
    for (subset, tls) in [
        ("v1", auto_tls(&[REVIEWS])),
        (
            "v2",
            ClusterTls {
                mode: ClusterTlsMode::Disable,
                ..ClusterTls::default()
            },
        ),
    ] {
        let mut c = cluster(Some(subset), &[]);
        c.endpoints = vec![endpoint(srv.addr, true)];
        c.tls = tls;
        svc.clusters.push(c);
    }
    let cli = client(&ca, SLEEP, &svc).await;
    let mut c = H1Client::connect(cli.addr).await;
    for _ in 0..2 {
        let (s, _, _) = c.get("reviews", "/", &[]).await;
        assert_eq!(s, 200);
        let (s, _, _) = c.get("reviews", "/", &[("x-plain", "1")]).await;
        assert_eq!(s, 200);
    }
    assert_eq!(srv.tls_handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(srv.plaintext_conns.load(Ordering::SeqCst), 1);
    assert_eq!(cli.engine.upstream_connects(), 2);
    let mtls = [
        "reporter=\"destination\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let none = [
        "reporter=\"destination\"",
        "connection_security_policy=\"none\"",
    ];
    assert_eq!(srv.wait_requests(&mtls, 2).await, 2);
    assert_eq!(srv.wait_requests(&none, 2).await, 2);
}

/// AuthorizationPolicy by principal: only `cluster.local/ns/foo/sa/sleep` may call;
/// another identity, and a plaintext caller (no principal), get 403.
#[tokio::test]
async fn authorization_policies_see_the_client_principal() {
    let ca = Ca::new();
    let app = upstream("app", Proto::H1).await;
    let mut r = server_resolver(Protocol::Http);
    r.own = Some(Arc::new(mesh_config::Workload {
        ip: "127.0.0.1".parse().unwrap(),
        pod: "reviews-v1-0".into(),
        meta: peer("v1"),
        services: vec![],
        inbound_tls: Default::default(),
        authorization: mesh_config::Authorization {
            deny: vec![],
            allow: vec![AuthzPolicy {
                name: "default/only-sleep".into(),
                rules: vec![AuthzRule {
                    from: vec![Source {
                        principals: vec!["cluster.local/ns/foo/sa/sleep".into()],
                        ..Source::default()
                    }],
                    ..AuthzRule::default()
                }],
            }],
        },
    }));
    let srv = server(&ca, REVIEWS, &app, r).await;
    let svc = reviews_at(srv.addr, true, auto_tls(&[REVIEWS]), Protocol::Http);
    let sleep = client(&ca, SLEEP, &svc).await;
    let other = client(&ca, OTHER, &svc).await;
    let plain = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let (s, _, b) = H1Client::connect(sleep.addr)
        .await
        .get("reviews", "/from-sleep", &[])
        .await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    for p in [&other, &plain] {
        let (s, _, b) = H1Client::connect(p.addr)
            .await
            .get("reviews", "/from-elsewhere", &[])
            .await;
        assert_eq!((s.as_u16(), b.as_str()), (403, "RBAC: access denied"));
    }
    let seen: Vec<String> = app
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.1.clone())
        .collect();
    assert_eq!(seen, ["/from-sleep"]);
    let denied = [
        "reporter=\"destination\"",
        "response_code=\"403\"",
        &principal("source", OTHER),
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert_eq!(srv.wait_requests(&denied, 1).await, 1);
}

/// A failed handshake counts in outlier detection as a connect failure does: the
/// endpoint presenting the wrong identity is ejected after it, the request retried to
/// the other, and later requests never dial it again.
#[tokio::test]
async fn a_failing_handshake_ejects_the_endpoint() {
    let ca = Ca::new();
    let app = upstream("app", Proto::H1).await;
    let good = server(&ca, REVIEWS, &app, server_resolver(Protocol::Http)).await;
    let bad = server(&ca, RATINGS, &app, server_resolver(Protocol::Http)).await;
    let mut svc = reviews_at(good.addr, true, auto_tls(&[REVIEWS]), Protocol::Http);
    svc.clusters[0].endpoints.push(endpoint(bad.addr, true));
    svc.clusters[0].outlier_detection = Some(OutlierDetection {
        consecutive_5xx_errors: 1,
        max_ejection_percent: 100,
        base_ejection_time_ms: 60_000,
        interval_ms: 60_000,
        ..OutlierDetection::default()
    });
    let cli = client(&ca, SLEEP, &svc).await;
    let mut c = H1Client::connect(cli.addr).await;
    for _ in 0..6 {
        let (s, _, b) = c.get("reviews", "/", &[]).await;
        assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    }
    assert_eq!(bad.tls_first_bytes.load(Ordering::SeqCst), 1);
    assert_eq!(bad.tls_handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(good.tls_handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(app.seen.lock().unwrap().len(), 6);
}

/// The app behind the server sidecar learns who called from `x-forwarded-client-cert`,
/// as an Istio sidecar writes it: our identity (`By`), the client certificate's SHA-256,
/// its empty subject and its SPIFFE id. What a client sends in that header itself is
/// never believed: the outbound sidecar drops it, and so does an inbound side reached
/// in plaintext.
#[tokio::test]
async fn the_app_sees_the_client_certificate_in_x_forwarded_client_cert() {
    const FORGED: &str = "By=spiffe://cluster.local/ns/default/sa/bookinfo-reviews;URI=spiffe://cluster.local/ns/foo/sa/admin";
    let ca = Ca::new();
    let app = upstream("app", Proto::H1).await;
    let srv = server(&ca, REVIEWS, &app, server_resolver(Protocol::Http)).await;
    let svc = reviews_at(srv.addr, true, auto_tls(&[REVIEWS]), Protocol::Http);
    let cli = client(&ca, SLEEP, &svc).await;
    let mut c = H1Client::connect(cli.addr).await;
    let (s, _, _) = c
        .get("reviews:9080", "/", &[("x-forwarded-client-cert", FORGED)])
        .await;
    assert_eq!(s.as_u16(), 200);
    let (_, _, h) = app.seen_last();
    let values: Vec<&str> = h
        .get_all("x-forwarded-client-cert")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(values.len(), 1, "{values:?}");
    let v = values[0];
    let hash = v
        .strip_prefix(&format!("By={REVIEWS};Hash="))
        .and_then(|r| r.strip_suffix(&format!(";Subject=\"\";URI={SLEEP}")))
        .unwrap_or_else(|| panic!("unexpected element {v:?}"));
    assert_eq!(hash.len(), 64, "{v}");
    assert!(
        hash.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{v}"
    );
    // A second request on the same connection carries the same element.
    c.get("reviews:9080", "/", &[]).await;
    let (_, _, h2) = app.seen_last();
    assert_eq!(h2.get("x-forwarded-client-cert").unwrap(), v);
    // Straight to the server's inbound side in plaintext: the forged header is dropped.
    let mut plain = H1Client::connect(srv.addr).await;
    let (s, _, _) = plain
        .get("reviews:9080", "/", &[("x-forwarded-client-cert", FORGED)])
        .await;
    assert_eq!(s.as_u16(), 200);
    let (_, _, h3) = app.seen_last();
    assert!(h3.get("x-forwarded-client-cert").is_none(), "{h3:?}");
}
