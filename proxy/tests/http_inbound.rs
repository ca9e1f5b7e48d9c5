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

/// AuthorizationPolicy on the inbound side (no mTLS yet, so by method, path and source
/// address): a denied request gets Istio's 403 `RBAC: access denied` and never reaches
/// the app; the rest do. Counted at `reporter="destination"` with their codes.
#[tokio::test]
async fn authorization_policies_deny_with_403_before_the_app() {
    use mesh_config::authz::{AuthzPolicy, AuthzRule, Operation, Source};
    let app = upstream("app", Proto::H1).await;
    let mut r = resolver_for_app();
    let own = mesh_config::Workload {
        ip: "127.0.0.1".parse().unwrap(),
        pod: "reviews-v1-0".into(),
        meta: peer("v1"),
        services: vec![],
        inbound_tls: Default::default(),
        authorization: mesh_config::Authorization {
            deny: vec![AuthzPolicy {
                name: "default/no-admin".into(),
                rules: vec![AuthzRule {
                    to: vec![Operation {
                        paths: vec!["/admin/*".into()],
                        ..Operation::default()
                    }],
                    ..AuthzRule::default()
                }],
            }],
            allow: vec![AuthzPolicy {
                name: "default/viewer".into(),
                rules: vec![AuthzRule {
                    from: vec![Source {
                        ip_blocks: vec!["127.0.0.0/8".into()],
                        ..Source::default()
                    }],
                    to: vec![Operation {
                        methods: vec!["GET".into()],
                        ..Operation::default()
                    }],
                    ..AuthzRule::default()
                }],
            }],
        },
    };
    r.own = Some(std::sync::Arc::new(own));
    let p = proxy(r, app.addr, Side::Inbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, _, b) = c.get("reviews:9080", "/reviews/0", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    let (s, _, b) = c.get("reviews:9080", "/admin/users?all=1", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (403, "RBAC: access denied"));
    let req = Request::post("/reviews/0")
        .header("host", "reviews:9080")
        .body(empty())
        .unwrap();
    let (s, _, b) = read(c.send(req).await).await;
    assert_eq!((s.as_u16(), b.as_str()), (403, "RBAC: access denied"));
    // The app saw only the allowed request.
    let seen: Vec<String> = app
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.1.clone())
        .collect();
    assert_eq!(seen, ["/reviews/0"]);
    let code = |c: &str| format!("response_code=\"{c}\"");
    assert_eq!(
        p.wait_requests(&["reporter=\"destination\"", &code("403")], 2)
            .await,
        2
    );
}
