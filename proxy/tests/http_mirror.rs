//! `mirror` / `mirrors` through the HTTP engine on loopback: the copy reaches the
//! mirror with its body and a `-shadow` authority, the client gets the route's answer
//! whatever the mirror does (hangs, is down), a share mirrors about that share, a body
//! too long to hold is not mirrored, and the source metrics count the client's
//! requests only.

#![allow(clippy::unwrap_used)]

mod http_support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use http_support::*;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_config::{Mirror, Protocol, RouteAction};
use tokio::net::TcpListener;

/// What a recording upstream saw of one request: Host, path, body.
type Seen = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// An upstream that reads each request whole and records it, then answers with its
/// name, or never answers (`hang`).
async fn recorder(name: &str, hang: bool) -> (Upstream, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (s, acc, n) = (seen.clone(), accepted.clone(), name.to_owned());
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let (s, n) = (s.clone(), n.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (s, n) = (s.clone(), n.clone());
                    async move {
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        s.lock().unwrap().push((host, path, body));
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(n))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let up = Upstream {
        name: name.to_owned(),
        addr,
        accepted,
        open: Arc::default(),
        max_open: Arc::default(),
        seen: Arc::default(),
    };
    (up, seen)
}

fn mirrored(mirrors: Vec<Mirror>) -> mesh_config::HttpRoute {
    let mut r = route("mirrored", vec![], RouteAction::Route(vec![to("v1", 100)]));
    r.mirrors = mirrors;
    r
}

fn mirror(subset: &str, percentage: f64) -> Mirror {
    Mirror {
        cluster: cluster_name(Some(subset)),
        percentage,
    }
}

async fn wait_seen(seen: &Seen, n: usize) -> Vec<(String, String, Bytes)> {
    for _ in 0..500 {
        if seen.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen.lock().unwrap().clone()
}

fn post(path: &str, body: &'static [u8]) -> Request<ReqBody> {
    Request::post(path)
        .header("host", "reviews:9080")
        .header("x-request-id", "mirror-test-1")
        .body(http_support::body(Bytes::from_static(body)))
        .unwrap()
}

#[tokio::test]
async fn a_copy_goes_to_each_mirror_with_its_body_and_a_shadow_authority() {
    let (v1, seen1) = recorder("v1", false).await;
    let (v2, seen2) = recorder("v2", false).await;
    let (v3, seen3) = recorder("v3", false).await;
    let svc = reviews(
        &[&v1, &v2, &v3],
        Protocol::Http,
        vec![mirrored(vec![mirror("v2", 100.0), mirror("v3", 100.0)])],
    );
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (status, _, body) = read(c.send(post("/reviews/1", b"a review")).await).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "v1"));
    assert_eq!(
        wait_seen(&seen1, 1).await,
        vec![(
            "reviews:9080".into(),
            "/reviews/1".into(),
            Bytes::from_static(b"a review")
        )]
    );
    for seen in [&seen2, &seen3] {
        assert_eq!(
            wait_seen(seen, 1).await,
            vec![(
                "reviews-shadow:9080".into(),
                "/reviews/1".into(),
                Bytes::from_static(b"a review")
            )]
        );
    }
    // Only the client's request is in the source metrics.
    let want = ["reporter=\"source\"", "response_code=\"200\""];
    assert_eq!(p.wait_requests(&want, 1).await, 1);
    assert_eq!(p.requests(&["destination_version=\"v2\""]), 0);
    assert_eq!(p.requests(&["destination_version=\"v3\""]), 0);
}

#[tokio::test]
async fn the_client_never_waits_for_a_mirror_that_hangs_or_is_down() {
    let (v1, _) = recorder("v1", false).await;
    let (v2, seen2) = recorder("v2", true).await;
    let down = closed_port().await;
    let mut svc = reviews(
        &[&v1, &v2],
        Protocol::Http,
        vec![mirrored(vec![mirror("v2", 100.0), mirror("v3", 100.0)])],
    );
    // v3: an endpoint nothing listens on.
    svc.clusters
        .push(cluster(Some("v3"), &[(down, Some(peer("v3")))]));
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    for i in 0..5 {
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            read(c.send(post("/reviews/1", b"x")).await).await
        })
        .await
        .unwrap_or_else(|_| panic!("request {i} waited for its mirror"));
        assert_eq!((answer.0.as_u16(), answer.2.as_str()), (200, "v1"));
    }
    // The hanging mirror got every copy (each on a connection of its own: none came
    // back to the pool).
    assert_eq!(wait_seen(&seen2, 5).await.len(), 5);
}

#[tokio::test]
async fn a_share_of_requests_is_mirrored() {
    let (v1, _) = recorder("v1", false).await;
    let (v2, seen2) = recorder("v2", false).await;
    let (v3, seen3) = recorder("v3", false).await;
    let svc = reviews(
        &[&v1, &v2, &v3],
        Protocol::Http,
        vec![mirrored(vec![mirror("v2", 50.0), mirror("v3", 0.0)])],
    );
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let n = 400;
    for _ in 0..n {
        let (status, _, body) = c.get("reviews:9080", "/reviews/1", &[]).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "v1"));
    }
    // Copies are sent before the request goes out: all of them have been by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = seen2.lock().unwrap().len();
    // 50% of 400: ±60 is beyond 6 standard deviations.
    assert!((140..=260).contains(&got), "{got} of {n} mirrored");
    assert_eq!(seen3.lock().unwrap().len(), 0);
}

#[tokio::test]
async fn a_body_too_long_to_hold_is_not_mirrored() {
    let (v1, seen1) = recorder("v1", false).await;
    let (v2, seen2) = recorder("v2", false).await;
    let svc = reviews(
        &[&v1, &v2],
        Protocol::Http,
        vec![mirrored(vec![mirror("v2", 100.0)])],
    );
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    static LONG: [u8; 100 << 10] = [b'z'; 100 << 10];
    let (status, _, _) = read(c.send(post("/upload", &LONG)).await).await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(wait_seen(&seen1, 1).await[0].2.len(), LONG.len());
    // A short one after it is.
    let (status, _, _) = read(c.send(post("/short", b"s")).await).await;
    assert_eq!(status.as_u16(), 200);
    let seen = wait_seen(&seen2, 1).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].1, "/short");
}
