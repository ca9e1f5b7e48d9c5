//! h2 on either side: h2 clients (prior knowledge), h2 upstreams for `http2`/`grpc`
//! ports, gRPC trailers through, and HTTP/1.1 upgrades spliced.

#![allow(clippy::unwrap_used)]

mod http_support;

use std::sync::atomic::Ordering;

use http_body_util::BodyExt;
use http_support::*;
use hyper::{Request, Version};
use hyper_util::rt::TokioIo;
use mesh_config::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn h2_client_to_http1_upstream() {
    let v1 = upstream("v1", Proto::H1).await;
    let svc = reviews(&[&v1], Protocol::Http, vec![]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let c = H2Client::connect(p.addr).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("http://reviews:9080/r/{i}"))
                .body(empty())
                .unwrap();
            let resp = c.send(req).await;
            assert_eq!(resp.version(), Version::HTTP_2);
            read(resp).await
        }));
    }
    for t in tasks {
        let (s, _, b) = t.await.unwrap();
        assert_eq!((s.as_u16(), b.as_str()), (200, "v1"));
    }
    let (_, path, seen) = v1.seen_last();
    assert!(path.starts_with("/r/"), "{path}");
    assert_eq!(seen["host"], "reviews:9080");
    assert_eq!(p.wait_requests(&["response_code=\"200\""], 10).await, 10);
}

#[tokio::test]
async fn http1_client_to_h2_upstream_is_multiplexed() {
    let v1 = upstream("v1", Proto::H2).await;
    let svc = reviews(&[&v1], Protocol::Http2, vec![]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    for _ in 0..5 {
        let (s, _, b) = c.get("reviews", "/x", &[]).await;
        assert_eq!((s.as_u16(), b.as_str()), (200, "v1"));
    }
    // Two other client connections at once share the same h2 connection.
    let (a, b) = tokio::join!(
        async {
            let mut c = H1Client::connect(p.addr).await;
            c.get("reviews", "/y", &[]).await.0
        },
        async {
            let mut c = H1Client::connect(p.addr).await;
            c.get("reviews", "/z", &[]).await.0
        }
    );
    assert_eq!((a.as_u16(), b.as_u16()), (200, 200));
    assert_eq!(v1.accepted.load(Ordering::SeqCst), 1);
    let (method, path, _) = v1.seen_last();
    assert_eq!(method, "GET");
    assert!(path == "/y" || path == "/z", "{path}");
}

#[tokio::test]
async fn grpc_over_h2_keeps_trailers() {
    let v1 = upstream("v1", Proto::H2).await;
    let svc = reviews(&[&v1], Protocol::Http2, vec![]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H2Client::connect(p.addr).await;
    let req = Request::post("http://reviews:9080/grpc.Svc/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body(&b"\0\0\0\0\x01x"[..]))
        .unwrap();
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
    let (_, _, seen) = v1.seen_last();
    assert_eq!(seen["te"], "trailers");
    let want = [
        "request_protocol=\"grpc\"",
        "grpc_response_status=\"0\"",
        "response_code=\"200\"",
    ];
    assert_eq!(p.wait_requests(&want, 1).await, 1);
    let text = p.metrics_text();
    assert_eq!(
        sum_series(
            &text,
            "istio_request_bytes_sum{",
            &["request_protocol=\"grpc\""]
        ),
        6
    );
    assert_eq!(
        sum_series(
            &text,
            "istio_response_bytes_sum{",
            &["request_protocol=\"grpc\""]
        ),
        7
    );
}

#[tokio::test]
async fn http1_upgrades_are_spliced() {
    let v1 = upstream("v1", Proto::H1).await;
    let svc = reviews(&[&v1], Protocol::Http, vec![]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let req = Request::get("/upgrade")
        .header("host", "reviews")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(empty())
        .unwrap();
    let mut resp = c.send(req).await;
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["upgrade"], "echo");
    let (_, _, seen) = v1.seen_last();
    assert_eq!(seen["upgrade"], "echo");
    let up = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut io = TokioIo::new(up);
    io.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(p.wait_requests(&["response_code=\"101\""], 1).await, 1);
}
