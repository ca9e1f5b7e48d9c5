//! The proxy's own answers when forwarding fails (UF, UH, UC), and passthrough to the
//! original destination when no Service is known.

#![allow(clippy::unwrap_used)]

mod http_support;

use http_support::*;
use hyper::Request;
use mesh_config::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test]
async fn connect_failure_is_503_uf_after_retries() {
    let dead = closed_port().await;
    let mut svc = reviews(&[], Protocol::Http, vec![]);
    svc.clusters = vec![cluster(None, &[(dead, Some(peer("v1")))])];
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, h, b) = c.get("reviews", "/", &[]).await;
    assert_eq!(s, 503);
    assert!(
        b.starts_with("upstream connect error or disconnect/reset before headers"),
        "{b}"
    );
    assert_eq!(h["content-type"], "text/plain");
    let want = [
        "response_code=\"503\"",
        "response_flags=\"UF,URX\"",
        "destination_workload=\"reviews-v1\"",
    ];
    assert_eq!(p.wait_requests(&want, 1).await, 1);
    // The connection stays usable.
    let (s, _, _) = c.get("reviews", "/", &[]).await;
    assert_eq!(s, 503);
}

#[tokio::test]
async fn no_serving_endpoint_is_503_uh() {
    let v1 = upstream("v1", Proto::H1).await;
    let mut svc = reviews(&[&v1], Protocol::Http, vec![]);
    for c in &mut svc.clusters {
        for e in &mut c.endpoints {
            e.serving = false;
        }
    }
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, _, b) = c.get("reviews", "/", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (503, "no healthy upstream"));
    assert_eq!(
        p.wait_requests(&["response_code=\"503\"", "response_flags=\"UH\""], 1)
            .await,
        1
    );
    assert_eq!(v1.seen.lock().unwrap().len(), 0);
    // A gRPC client gets a trailers-only gRPC answer instead.
    let req = Request::post("/pkg.Svc/Method")
        .header("host", "reviews")
        .header("content-type", "application/grpc")
        .body(empty())
        .unwrap();
    let (s, h, _) = read(c.send(req).await).await;
    assert_eq!(s, 200);
    assert_eq!(h["grpc-status"], "14");
    assert_eq!(h["grpc-message"], "no healthy upstream");
    let want = [
        "request_protocol=\"grpc\"",
        "response_code=\"200\"",
        "grpc_response_status=\"14\"",
        "response_flags=\"UH\"",
    ];
    assert_eq!(p.wait_requests(&want, 1).await, 1);
}

#[tokio::test]
async fn upstream_reset_before_headers_is_503_uc() {
    // Reads the request, then closes without answering.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.shutdown().await;
        }
    });
    let mut svc = reviews(&[], Protocol::Http, vec![]);
    svc.clusters = vec![cluster(None, &[(addr, None)])];
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, _, b) = c.get("reviews", "/", &[]).await;
    assert_eq!(s, 503);
    assert!(b.contains("reset before headers"), "{b}");
    assert_eq!(
        p.wait_requests(&["response_code=\"503\"", "response_flags=\"UC\""], 1)
            .await,
        1
    );
}

#[tokio::test]
async fn unknown_destination_passes_through_unchanged() {
    let ext = upstream("external", Proto::H1).await;
    // Nothing known: the request goes to the original destination as it is.
    let p = proxy(StaticResolver::default(), ext.addr, Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, _, b) = c.get("example.com", "/some/path?x=1", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "external"));
    let (_, path, seen) = ext.seen_last();
    assert_eq!(path, "/some/path?x=1");
    assert_eq!(seen["host"], "example.com");
    let want = [
        "destination_service=\"example.com\"",
        "destination_service_name=\"PassthroughCluster\"",
        "destination_service_namespace=\"unknown\"",
        "destination_workload=\"unknown\"",
        "response_code=\"200\"",
    ];
    assert_eq!(p.wait_requests(&want, 1).await, 1);
}

#[tokio::test]
async fn authority_picks_the_service_and_falls_back_to_the_original_destination() {
    let v1 = upstream("v1", Proto::H1).await;
    let svc = reviews(&[&v1], Protocol::Http, vec![]);
    // The client dialled some other address; the Host header names reviews.
    let elsewhere = closed_port().await;
    let p = proxy(StaticResolver::with(&svc), elsewhere, Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    // Host names the service, but on another port than the one dialled: not it, and
    // the original destination is unknown: passthrough (and nothing listens there).
    let (s, _, _) = c.get("reviews:1234", "/", &[]).await;
    assert_eq!(s, 503);
    // The dialled port matches the Service's (9080): by host.
    let p = proxy(
        StaticResolver::with(&svc),
        std::net::SocketAddr::new(elsewhere.ip(), 9080),
        Side::Outbound,
    )
    .await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, _, b) = c.get("Reviews.Default.svc.cluster.local.", "/", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "v1"));
    // An unknown Host on the ClusterIP: the ClusterIP's Service.
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, _, b) = c.get("localhost", "/", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "v1"));
}
