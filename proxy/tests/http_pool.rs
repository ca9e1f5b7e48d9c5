//! Upstream connections are kept alive and reused, across requests and across client
//! connections of the same worker.

#![allow(clippy::unwrap_used)]

mod http_support;

use std::sync::atomic::Ordering;

use http_support::*;
use mesh_config::Protocol;

#[tokio::test]
async fn http1_upstream_connections_are_reused() {
    let v1 = upstream("v1", Proto::H1).await;
    let svc = reviews(&[&v1], Protocol::Http, vec![]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let n = 30;
    for _ in 0..n {
        let (s, _, b) = c.get("reviews", "/", &[]).await;
        assert_eq!((s.as_u16(), b.as_str()), (200, "v1"));
    }
    // Three more client connections, one after the other: the pool is the worker's.
    for _ in 0..3 {
        let mut c = H1Client::connect(p.addr).await;
        let (s, _, _) = c.get("reviews", "/", &[]).await;
        assert_eq!(s, 200);
    }
    let accepted = v1.accepted.load(Ordering::SeqCst);
    // One connection does it; a hand-back racing the next request may add one.
    assert!(
        accepted <= 2,
        "{accepted} upstream connections for {n} requests"
    );
    assert_eq!(p.engine.upstream_connects(), accepted as u64);
    assert!(p.engine.upstream_reuses() >= n as u64 + 3 - 2);
    assert!(p.engine.pooled_connections() >= 1);
}

#[tokio::test]
async fn concurrent_requests_open_parallel_connections_then_reuse_them() {
    let v1 = upstream("v1", Proto::H1).await;
    let svc = reviews(&[&v1], Protocol::Http, vec![]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    for _round in 0..3 {
        for (s, _, _) in concurrent_gets(p.addr, 4, "/").await {
            assert_eq!(s, 200);
        }
    }
    let accepted = v1.accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= 8,
        "{accepted} connections for 12 requests, 4 at a time"
    );
    assert_eq!(p.wait_requests(&["response_code=\"200\""], 12).await, 12);
}

#[tokio::test]
async fn drain_closes_keep_alive_connections_gracefully() {
    let v1 = upstream("v1", Proto::H1).await;
    let svc = reviews(&[&v1], Protocol::Http, vec![]);
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let p = proxy_with_drain(
        StaticResolver::with(&svc),
        cluster_ip(),
        Side::Outbound,
        Some(drain_rx),
    )
    .await;
    let mut c = H1Client::connect(p.addr).await;
    let mut h2 = H2Client::connect(p.addr).await;
    assert_eq!(c.get("reviews", "/", &[]).await.0, 200);
    let req = hyper::Request::get("http://reviews/")
        .body(empty())
        .unwrap();
    assert_eq!(h2.send(req).await.status(), 200);
    drain_tx.send_replace(true);
    // Both connections are closed by the proxy once idle (HTTP/1.1) or after GOAWAY (h2).
    for _ in 0..200 {
        if c.is_closed() && h2.is_closed() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("connections still open after the drain");
}
