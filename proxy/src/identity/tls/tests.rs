//! Real handshakes over in-memory pipes between configs made from stores.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::*;
use crate::identity::der;
use crate::identity::store::IdentityStore;
use crate::identity::testca::TestCa;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const REVIEWS: &str = "spiffe://cluster.local/ns/shop/sa/reviews";

fn store(ca: &TestCa, id: &str) -> Arc<IdentityStore> {
    IdentityStore::fixed(ca.issue(id, 3600), ca.roots(), "cluster.local")
}

type Outcome = (
    Result<server::TlsStream<DuplexStream>, std::io::Error>,
    Result<client::TlsStream<DuplexStream>, std::io::Error>,
);

async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> Outcome {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::join!(
        TlsAcceptor::from(server).accept(a),
        TlsConnector::from(client).connect(name, b)
    )
}

fn leaf_serial(certs: Option<&[CertificateDer<'_>]>) -> String {
    der::hex(&der::describe(&certs.unwrap()[0]).unwrap().serial)
}

#[tokio::test]
async fn mutual_tls_both_sides_see_the_others_spiffe_id() {
    let ca = TestCa::new();
    let (web, reviews) = (store(&ca, WEB), store(&ca, REVIEWS));
    let srv = server_config(&reviews, SERVER_ALPN).unwrap();
    let cli = client_config(&web, vec![REVIEWS.to_owned()], CLIENT_ALPN_HTTP11).unwrap();
    // The name dialled is only SNI: nothing checks it.
    let sni = sni(9080, None, "reviews.shop.svc.cluster.local");
    let (s, c) = handshake(srv, cli, &sni).await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    {
        let (_, conn) = s.get_ref();
        assert_eq!(
            peer_identity(conn.peer_certificates().unwrap()).as_deref(),
            Some(WEB)
        );
        assert_eq!(conn.server_name(), Some(sni.as_str()));
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }
    {
        let (_, conn) = c.get_ref();
        assert_eq!(
            peer_identity(conn.peer_certificates().unwrap()).as_deref(),
            Some(REVIEWS)
        );
    }
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused_by_name() {
    let ca = TestCa::new();
    let (web, reviews) = (store(&ca, WEB), store(&ca, REVIEWS));
    let ratings = "spiffe://cluster.local/ns/shop/sa/ratings";
    let cli = client_config(&web, vec![ratings.to_owned()], CLIENT_ALPN_TCP).unwrap();
    let (_, c) = handshake(server_config(&reviews, SERVER_ALPN).unwrap(), cli, "x").await;
    let e = c.unwrap_err().to_string();
    assert!(e.contains(REVIEWS) && e.contains(ratings), "{e}");
}

#[tokio::test]
async fn no_expected_identity_means_any_of_our_trust_domain() {
    let ca = TestCa::new();
    let web = store(&ca, WEB);
    let cli = client_config(&web, Vec::new(), CLIENT_ALPN_TCP).unwrap();
    let (_, c) = handshake(
        server_config(&store(&ca, REVIEWS), SERVER_ALPN).unwrap(),
        cli.clone(),
        "x",
    )
    .await;
    assert_eq!(
        c.unwrap().get_ref().1.alpn_protocol(),
        Some(ALPN_PEER_EXCHANGE)
    );
    // Same root, another trust domain: refused.
    let foreign = "spiffe://other.domain/ns/shop/sa/reviews";
    let other = IdentityStore::fixed(ca.issue(foreign, 3600), ca.roots(), "other.domain");
    let (_, c) = handshake(server_config(&other, SERVER_ALPN).unwrap(), cli, "x").await;
    let e = c.unwrap_err().to_string();
    assert!(e.contains(foreign) && e.contains("cluster.local"), "{e}");
}

#[tokio::test]
async fn a_client_of_another_root_or_without_a_certificate_is_refused() {
    let ca = TestCa::new();
    let srv = server_config(&store(&ca, REVIEWS), SERVER_ALPN).unwrap();
    // Another mesh: its certificate does not chain to our root (and its server does
    // not chain to its root either, so the client trusts ours explicitly here).
    let stranger = TestCa::new();
    let outsider = IdentityStore::fixed(stranger.issue(WEB, 3600), ca.roots(), "cluster.local");
    let cli = client_config(&outsider, vec![REVIEWS.to_owned()], &[]).unwrap();
    let (s, c) = handshake(srv.clone(), cli, "x").await;
    let e = s.unwrap_err().to_string();
    // Both test roots are named O=cluster.local: webpki finds "our" root by name and
    // its signature fails; a root of another name is an unknown issuer.
    assert!(
        e.contains("BadSignature") || e.contains("UnknownIssuer"),
        "{e}"
    );
    // The client finished its side in TLS 1.3; the server's alert arrives on read.
    if let Ok(mut c) = c {
        let mut buf = [0u8; 1];
        assert!(c.read(&mut buf).await.is_err() || buf == [0]);
    }

    // No client certificate at all.
    let anonymous = rustls::ClientConfig::builder_with_provider(crate::identity::provider())
        .with_protocol_versions(crate::identity::PROTOCOLS)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier {
            store: store(&ca, WEB),
            expected: Vec::new(),
        }))
        .with_no_client_auth();
    let (s, _) = handshake(srv, Arc::new(anonymous), "x").await;
    let e = s.unwrap_err().to_string();
    assert!(
        e.contains("NoCertificatesPresented") || e.contains("certificate"),
        "{e}"
    );
}

#[tokio::test]
async fn an_expired_peer_is_refused() {
    let ca = TestCa::new();
    let old = IdentityStore::fixed(
        ca.issue_window(REVIEWS, -100, -10),
        ca.roots(),
        "cluster.local",
    );
    let cli = client_config(&store(&ca, WEB), vec![REVIEWS.to_owned()], &[]).unwrap();
    let (_, c) = handshake(server_config(&old, &[]).unwrap(), cli, "x").await;
    let e = c.unwrap_err().to_string();
    assert!(e.contains("expired"), "{e}");
}

#[tokio::test]
async fn rotation_reaches_new_handshakes_and_spares_open_connections() {
    let ca = TestCa::new();
    let server_store = store(&ca, REVIEWS);
    let srv = server_config(&server_store, SERVER_ALPN).unwrap();
    let cli = client_config(&store(&ca, WEB), vec![REVIEWS.to_owned()], CLIENT_ALPN_H2).unwrap();
    let (s, c) = handshake(srv.clone(), cli.clone(), "x").await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    let first = leaf_serial(c.get_ref().1.peer_certificates());
    assert_eq!(c.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    server_store.install(ca.issue(REVIEWS, 3600), ca.roots());

    // The open connection still carries bytes both ways.
    c.write_all(b"after").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    s.write_all(b"reply").await.unwrap();
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"reply");
    // A new connection gets the new certificate.
    let (_, c2) = handshake(srv, cli, "x").await;
    let second = leaf_serial(c2.unwrap().get_ref().1.peer_certificates());
    assert_ne!(first, second);
}

#[tokio::test]
async fn envoys_offers_land_on_the_peer_exchange_for_tcp_and_on_http_for_http() {
    let ca = TestCa::new();
    let srv = server_config(&store(&ca, REVIEWS), SERVER_ALPN).unwrap();
    let envoy_tcp: &[&[u8]] = &[ALPN_PEER_EXCHANGE, ALPN_ISTIO];
    let istio_only: &[&[u8]] = &[ALPN_ISTIO];
    for (offer, want) in [
        (envoy_tcp, ALPN_PEER_EXCHANGE),
        (CLIENT_ALPN_TCP, ALPN_PEER_EXCHANGE),
        (istio_only, b"istio"),
        (CLIENT_ALPN_HTTP10, b"istio"),
        (CLIENT_ALPN_HTTP11, b"http/1.1"),
        (CLIENT_ALPN_H2, b"h2"),
    ] {
        let cli = client_config(&store(&ca, WEB), Vec::new(), offer).unwrap();
        let (_, c) = handshake(srv.clone(), cli, "x").await;
        assert_eq!(c.unwrap().get_ref().1.alpn_protocol(), Some(want));
    }
}

#[test]
fn istio_sni_and_alpn_spellings() {
    assert_eq!(
        sni(9080, None, "reviews.shop.svc.cluster.local"),
        "outbound_.9080_._.reviews.shop.svc.cluster.local"
    );
    assert_eq!(
        sni(80, Some("v2"), "reviews.shop.svc.cluster.local"),
        "outbound_.80_.v2_.reviews.shop.svc.cluster.local"
    );
    assert!(ServerName::try_from(sni(80, Some("v2"), "a.b.svc.cluster.local")).is_ok());
    assert_eq!(CLIENT_ALPN_H2, [&b"istio-h2"[..], b"istio", b"h2"]);
    assert_eq!(ALPN_PEER_EXCHANGE, b"istio-peer-exchange");
    assert_eq!(ALPN_HTTP10, b"istio-http/1.0");
    assert_eq!(ALPN_HTTP11, b"istio-http/1.1");
}

#[test]
fn peer_identity_of_nothing_or_garbage_is_none() {
    assert_eq!(peer_identity(&[]), None);
    assert_eq!(
        peer_identity(&[CertificateDer::from(vec![0x30, 0x00])]),
        None
    );
    let ca = TestCa::new();
    let cert = ca.issue(WEB, 60);
    assert_eq!(peer_identity(&cert.certified.cert).as_deref(), Some(WEB));
}
