//! Bodies are streamed, not buffered, in both directions, and counted.

#![allow(clippy::unwrap_used)]

mod http_support;

use http_body_util::BodyExt;
use http_support::*;
use hyper::Request;
use hyper::body::Bytes;
use mesh_config::Protocol;
use tokio::sync::mpsc;

#[tokio::test]
async fn large_post_is_forwarded_and_counted() {
    let v1 = upstream("v1", Proto::H1).await;
    let svc = reviews(&[&v1], Protocol::Http, vec![]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let size = 8 << 20;
    let req = Request::post("/count")
        .header("host", "reviews")
        .body(body(vec![7u8; size]))
        .unwrap();
    let (s, _, b) = read(c.send(req).await).await;
    assert_eq!(s, 200);
    assert_eq!(b, size.to_string());
    assert_eq!(p.wait_requests(&["response_code=\"200\""], 1).await, 1);
    let text = p.metrics_text();
    assert_eq!(
        sum_series(
            &text,
            "istio_request_bytes_sum{",
            &["response_code=\"200\""]
        ),
        size as u64
    );
    assert_eq!(
        sum_series(
            &text,
            "istio_response_bytes_sum{",
            &["response_code=\"200\""]
        ),
        size.to_string().len() as u64
    );
}

/// The upstream echoes each chunk as it comes: the client sees chunk k come back before
/// it sends chunk k+1, which no buffering proxy could do.
async fn echo_interleaves(proto: Proto, client_h2: bool) {
    let v1 = upstream("v1", proto).await;
    let port_protocol = match proto {
        Proto::H1 => Protocol::Http,
        Proto::H2 => Protocol::Http2,
    };
    let svc = reviews(&[&v1], port_protocol, vec![]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let req = Request::post(if client_h2 {
        "http://reviews:9080/echo"
    } else {
        "/echo"
    })
    .header("host", "reviews")
    .body(ChannelBody(rx).boxed())
    .unwrap();
    let chunk = vec![b'x'; 64 << 10];
    tx.send(Bytes::from(chunk.clone())).await.unwrap();
    let resp = if client_h2 {
        H2Client::connect(p.addr).await.send(req).await
    } else {
        H1Client::connect(p.addr).await.send(req).await
    };
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let rounds = 20;
    for round in 0..rounds {
        let mut got = 0;
        while got < chunk.len() {
            let frame = body.frame().await.unwrap().unwrap();
            got += frame.data_ref().map_or(0, |d| d.len());
        }
        assert_eq!(got, chunk.len(), "round {round}");
        if round + 1 < rounds {
            tx.send(Bytes::from(chunk.clone())).await.unwrap();
        }
    }
    drop(tx);
    while let Some(f) = body.frame().await {
        assert!(f.unwrap().data_ref().is_none_or(|d| d.is_empty()));
    }
    let total = (rounds * chunk.len()) as u64;
    assert_eq!(p.wait_requests(&["response_code=\"200\""], 1).await, 1);
    let text = p.metrics_text();
    assert_eq!(sum_series(&text, "istio_request_bytes_sum{", &[]), total);
    assert_eq!(sum_series(&text, "istio_response_bytes_sum{", &[]), total);
}

#[tokio::test]
async fn bodies_stream_both_ways_http1() {
    echo_interleaves(Proto::H1, false).await;
}

#[tokio::test]
async fn bodies_stream_both_ways_h2() {
    echo_interleaves(Proto::H2, true).await;
}

#[tokio::test]
async fn bodies_stream_h2_client_to_http1_upstream() {
    echo_interleaves(Proto::H1, true).await;
}
