//! Inbound: requests from a peer to the pod's app, reported by the destination.

#![allow(clippy::unwrap_used)]

mod http_support;

use http_support::*;
use hyper::Request;
use mesh_config::Protocol;
use mesh_proxy::http::LocalService;

fn resolver_for_app() -> StaticResolver {
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
        protocol: Protocol::Http,
    });
    r
}

#[tokio::test]
async fn inbound_requests_reach_the_app_and_are_reported_by_the_destination() {
    let app = upstream("app", Proto::H1).await;
    let p = proxy(resolver_for_app(), app.addr, Side::Inbound).await;
    let mut c = H1Client::connect(p.addr).await;
    for _ in 0..3 {
        let (s, _, b) = c.get("reviews:9080", "/reviews/0?x=1", &[]).await;
        assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    }
    let (s, _, _) = c.get("reviews:9080", "/status/503", &[]).await;
    assert_eq!(s, 503);
    let (_, path, seen) = app.seen_last();
    assert_eq!(path, "/status/503");
    assert_eq!(seen["host"], "reviews:9080");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-request-id"].len(), 36);
    let want = [
        "reporter=\"destination\"",
        "source_workload=\"productpage-v1\"",
        "source_app=\"productpage\"",
        "destination_workload=\"reviews-v1\"",
        "destination_app=\"reviews\"",
        "destination_service=\"reviews.default.svc.cluster.local\"",
        "destination_service_name=\"reviews\"",
        "destination_service_namespace=\"default\"",
        "connection_security_policy=\"none\"",
        "response_code=\"200\"",
    ];
    assert_eq!(p.wait_requests(&want, 3).await, 3);
    assert_eq!(
        p.wait_requests(
            &[
                "reporter=\"destination\"",
                "response_code=\"503\"",
                "response_flags=\"-\""
            ],
            1
        )
        .await,
        1
    );
    assert_eq!(app.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn inbound_h2_port_talks_h2_to_the_app() {
    let app = upstream("app", Proto::H2).await;
    let mut r = resolver_for_app();
    if let Some(l) = r.local.as_mut() {
        l.protocol = Protocol::Http2;
    }
    let p = proxy(r, app.addr, Side::Inbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, _, b) = c.get("reviews", "/", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    // An h2 client, the app speaking h2 as well.
    let mut c = H2Client::connect(p.addr).await;
    let req = Request::get("http://reviews/x").body(empty()).unwrap();
    let (s, _, b) = read(c.send(req).await).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
}

#[tokio::test]
async fn app_not_listening_is_503_uf_without_retries() {
    let dead = closed_port().await;
    let p = proxy(resolver_for_app(), dead, Side::Inbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, _, b) = c.get("reviews", "/", &[]).await;
    assert_eq!(s, 503);
    assert!(b.starts_with("upstream connect error"), "{b}");
    assert_eq!(
        p.wait_requests(&["reporter=\"destination\"", "response_flags=\"UF\""], 1)
            .await,
        1
    );
    let log = p.log.lock().unwrap().clone();
    let l: serde_json::Value = serde_json::from_str(&log[0]).unwrap();
    assert_eq!(l["direction"], "inbound");
    assert_eq!(l["response_flags"], "UF");
    assert_eq!(l["upstream_host"], dead.to_string());
}
