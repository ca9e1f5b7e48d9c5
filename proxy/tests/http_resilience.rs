//! Timeouts, retries, circuit breaking and outlier detection on the outbound path,
//! against real upstreams on loopback: what a client sees, what the upstreams see,
//! and what the metrics count.

#![allow(clippy::unwrap_used)]

mod http_support;

use std::time::{Duration, Instant};

use http_support::*;
use hyper::Request;
use mesh_config::{ConnectionPool, OutlierDetection, Protocol, RetryOn, RetryPolicy, RouteAction};

fn retry(attempts: u32, on: &[RetryOn]) -> RetryPolicy {
    RetryPolicy {
        attempts,
        per_try_timeout_ms: None,
        retry_on: on.to_vec(),
        retriable_status_codes: vec![],
        avoid_previous_hosts: true,
        backoff_ms: None,
    }
}

/// One catch-all route to the default cluster with `timeout_ms` and `retry`.
fn routed(
    ups: &[&Upstream],
    timeout_ms: Option<u64>,
    r: Option<RetryPolicy>,
) -> mesh_config::Service {
    let mut svc = reviews(ups, Protocol::Http, vec![]);
    let mut rt = route(
        "all",
        vec![],
        RouteAction::Route(vec![mesh_config::WeightedCluster {
            cluster: cluster_name(None),
            weight: 100,
            request_headers: Default::default(),
            response_headers: Default::default(),
        }]),
    );
    rt.timeout_ms = timeout_ms;
    rt.retry = r;
    svc.ports[0].routes = vec![rt];
    svc
}

fn seen(u: &Upstream) -> usize {
    u.seen.lock().unwrap().len()
}

#[tokio::test]
async fn route_timeout_is_504_ut_after_the_timeout() {
    let v1 = upstream("v1", Proto::H1).await;
    let svc = routed(&[&v1], Some(300), Some(retry(2, &[RetryOn::FiveXx])));
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let t = Instant::now();
    let (s, _, b) = c.get("reviews", "/delay/2000", &[]).await;
    let took = t.elapsed();
    assert_eq!((s.as_u16(), b.as_str()), (504, "upstream request timeout"));
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(
        p.wait_requests(&["response_code=\"504\"", "response_flags=\"UT\""], 1)
            .await,
        1
    );
    // A fast request on the same route is untouched.
    let (s, _, _) = c.get("reviews", "/", &[]).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn per_try_timeout_moves_to_another_endpoint() {
    let slow = upstream("slow", Proto::H1).await;
    let fast = upstream("fast", Proto::H1).await;
    let mut r = retry(2, &[RetryOn::FiveXx]);
    r.per_try_timeout_ms = Some(100);
    let mut svc = routed(&[&slow, &fast], None, Some(r));
    // The slow one answers /delay/.. late, the fast one answers at once: give the slow
    // upstream a path that sleeps and the fast one the same path (it sleeps too), so
    // instead make only the slow one slow by sending the request to it first.
    svc.clusters[0].load_balancer = mesh_config::LoadBalancer::RoundRobin;
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    // Every try of /delay/500 times out after 100 ms: 3 tries, then 504 UT,URX.
    let t = Instant::now();
    let (s, _, _) = c.get("reviews", "/delay/500", &[]).await;
    assert_eq!(s, 504);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(seen(&slow) + seen(&fast), 3);
    assert_eq!(
        p.wait_requests(&["response_code=\"504\"", "response_flags=\"UT,URX\""], 1)
            .await,
        1
    );
}

#[tokio::test]
async fn retries_on_5xx_hide_failures_and_attempts_0_does_not() {
    let v1 = upstream("v1", Proto::H1).await;
    // 2 failures, then success: 3 attempts are enough.
    let svc = routed(&[&v1], None, Some(retry(3, &[RetryOn::FiveXx])));
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, _, _) = c.get("reviews", "/fail-first/2", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(seen(&v1), 3);
    assert_eq!(p.wait_requests(&["response_code=\"200\""], 1).await, 1);
    assert!(
        p.metrics_text().is_empty() || p.requests(&["response_code=\"503\""]) == 0,
        "retried tries are not requests of their own"
    );

    // No retries: the first 503 is the answer.
    let v2 = upstream("v2", Proto::H1).await;
    let svc = routed(&[&v2], None, None);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, _, _) = c.get("reviews", "/fail-first/2", &[]).await;
    assert_eq!(s, 503);
    assert_eq!(seen(&v2), 1);
    assert_eq!(
        p.wait_requests(&["response_code=\"503\"", "response_flags=\"-\""], 1)
            .await,
        1
    );
}

#[tokio::test]
async fn retries_exhausted_pass_the_last_answer_with_urx() {
    let bad = upstream_failing("bad", 503).await;
    let svc = routed(&[&bad], None, Some(retry(2, &[RetryOn::GatewayError])));
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, h, _) = c.get("reviews", "/", &[]).await;
    assert_eq!(s, 503);
    assert_eq!(h["x-upstream"], "bad", "the upstream's own answer");
    assert_eq!(seen(&bad), 3);
    assert_eq!(
        p.wait_requests(&["response_code=\"503\"", "response_flags=\"URX\""], 1)
            .await,
        1
    );
    // 500 is not a gateway error: not retried.
    let svc = {
        let b500 = upstream_failing("b500", 500).await;
        let s = routed(&[&b500], None, Some(retry(2, &[RetryOn::GatewayError])));
        let p = proxy(StaticResolver::with(&s), cluster_ip(), Side::Outbound).await;
        let mut c = H1Client::connect(p.addr).await;
        let (st, _, _) = c.get("reviews", "/", &[]).await;
        assert_eq!(st, 500);
        assert_eq!(seen(&b500), 1);
        s
    };
    drop(svc);
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint() {
    let bad = upstream_failing("bad", 503).await;
    let good = upstream("good", Proto::H1).await;
    let svc = routed(&[&bad, &good], None, Some(retry(1, &[RetryOn::FiveXx])));
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    for _ in 0..30 {
        let (s, h, _) = c.get("reviews", "/", &[]).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-upstream"], "good");
    }
    // Each request that went to `bad` first was retried once, on `good`.
    assert_eq!(seen(&good), 30);
    assert!(seen(&bad) > 0 && seen(&bad) < 30, "{}", seen(&bad));
}

#[tokio::test]
async fn a_streamed_body_is_not_replayed() {
    let v1 = upstream("v1", Proto::H1).await;
    let svc = routed(&[&v1], None, Some(retry(3, &[RetryOn::FiveXx])));
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    // Longer than what the proxy holds for a retry: streamed once, never replayed.
    let big = vec![b'x'; 256 << 10];
    let req = Request::post("/fail-first/1")
        .header("host", "reviews")
        .body(body(big))
        .unwrap();
    let (s, _, _) = read(c.send(req).await).await;
    assert_eq!(s, 503);
    assert_eq!(seen(&v1), 1);
    // A short body is held and replayed.
    let req = Request::post("/fail-first/2")
        .header("host", "reviews")
        .body(body("short"))
        .unwrap();
    let (s, _, _) = read(c.send(req).await).await;
    assert_eq!(s, 200);
    assert_eq!(seen(&v1), 3);
}

#[tokio::test]
async fn pending_overflow_is_503_uo_with_x_envoy_overloaded() {
    let v1 = upstream("v1", Proto::H1).await;
    let mut svc = routed(&[&v1], None, None);
    svc.clusters[0].connection_pool = ConnectionPool {
        max_connections: Some(1),
        max_pending_requests: Some(1),
        max_requests_per_connection: Some(1),
        ..Default::default()
    };
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    // 4 slow requests at once, each on its own client connection: the first is pending
    // while its connection is made, then sent; at most one more waits for that only
    // connection, the others overflow at once.
    let mut ok = 0;
    let mut over = 0;
    for (s, h, b) in concurrent_gets(p.addr, 4, "/delay/300").await {
        match s.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(h["x-envoy-overloaded"], "true");
                assert!(b.ends_with("reset reason: overflow"), "{b}");
                over += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        (1..=2).contains(&ok) && ok + over == 4,
        "{ok} ok, {over} overflowed"
    );
    assert_eq!(v1.max_open.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        p.wait_requests(&["response_code=\"503\"", "response_flags=\"UO\""], over)
            .await,
        over
    );
    // One at a time: no overflow, one connection per request.
    let mut c = H1Client::connect(p.addr).await;
    for _ in 0..5 {
        let (s, _, _) = c.get("reviews", "/", &[]).await;
        assert_eq!(s, 200);
    }
    assert_eq!(
        v1.accepted.load(std::sync::atomic::Ordering::SeqCst),
        ok as usize + 5
    );
}

#[tokio::test]
async fn max_connections_queues_requests_on_one_connection() {
    let v1 = upstream("v1", Proto::H1).await;
    let mut svc = routed(&[&v1], None, None);
    svc.clusters[0].connection_pool = ConnectionPool {
        max_connections: Some(1),
        ..Default::default()
    };
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    for (s, _, _) in concurrent_gets(p.addr, 5, "/delay/50").await {
        assert_eq!(s, 200);
    }
    assert_eq!(v1.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(v1.max_open.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn max_requests_refuses_the_one_over() {
    let v1 = upstream("v1", Proto::H1).await;
    let mut svc = routed(&[&v1], None, None);
    svc.clusters[0].connection_pool = ConnectionPool {
        max_requests: Some(1),
        ..Default::default()
    };
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let addr = p.addr;
    let slow = tokio::spawn(async move {
        let mut c = H1Client::connect(addr).await;
        c.get("reviews", "/delay/300", &[]).await.0
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, h, _) = c.get("reviews", "/", &[]).await;
    assert_eq!(s, 503);
    assert_eq!(h["x-envoy-overloaded"], "true");
    assert_eq!(slow.await.unwrap(), 200);
    let (s, _, _) = c.get("reviews", "/", &[]).await;
    assert_eq!(s, 200);
    let stats = {
        let lb = mesh_proxy::http::LbStates::default();
        let mut out = String::new();
        lb.render_clusters(&mut out);
        out
    };
    assert!(
        stats.is_empty(),
        "a fresh LbStates has no clusters: {stats}"
    );
}

#[tokio::test]
async fn max_requests_per_connection_1_disables_keep_alive() {
    let v1 = upstream("v1", Proto::H1).await;
    let mut svc = routed(&[&v1], None, None);
    svc.clusters[0].connection_pool = ConnectionPool {
        max_requests_per_connection: Some(1),
        ..Default::default()
    };
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    for _ in 0..4 {
        assert_eq!(c.get("reviews", "/", &[]).await.0, 200);
    }
    assert_eq!(v1.accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
}

fn outlier(max_ejection_percent: u32, base_ms: u64) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx_errors: 1,
        interval_ms: 100,
        base_ejection_time_ms: base_ms,
        max_ejection_percent,
        ..OutlierDetection::default()
    }
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_at_its_first_5xx_and_comes_back() {
    let bad = upstream_failing("bad", 503).await;
    let good = upstream("good", Proto::H1).await;
    let mut svc = routed(&[&bad, &good], None, None);
    svc.clusters[0].outlier_detection = Some(outlier(100, 1000));
    svc.clusters[0].load_balancer = mesh_config::LoadBalancer::RoundRobin;
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let mut codes = Vec::new();
    for _ in 0..20 {
        codes.push(c.get("reviews", "/", &[]).await.0.as_u16());
    }
    // At most the first two requests can reach `bad` (round robin starts anywhere).
    assert_eq!(seen(&bad), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 503).count(), 1);
    // After the ejection (1 s, rounded to the 100 ms interval), it is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..4 {
        c.get("reviews", "/", &[]).await;
    }
    assert_eq!(
        seen(&bad),
        2,
        "back in rotation, then ejected again (for 2 s)"
    );
}

#[tokio::test]
async fn the_default_retry_does_not_hide_a_503_but_503_retries_do() {
    let bad = upstream_failing("bad", 503).await;
    let good = upstream("good", Proto::H1).await;
    // Istio 1.24's default: 503 is not retried.
    let svc = reviews(&[&bad, &good], Protocol::Http, vec![]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let mut failed = 0;
    for _ in 0..20 {
        if c.get("reviews", "/", &[]).await.0 == 503 {
            failed += 1;
        }
    }
    assert!(failed > 0);
    // The pre-1.24 default also retries 503 (on another host): invisible.
    let mut svc = reviews(&[&bad, &good], Protocol::Http, vec![]);
    let mut r = istio_default_retry();
    r.retry_on.push(RetryOn::RetriableStatusCodes);
    r.retriable_status_codes = vec![503];
    svc.ports[0].default_retry = Some(r);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    for _ in 0..20 {
        assert_eq!(c.get("reviews", "/", &[]).await.0, 200);
    }
}

#[tokio::test]
async fn every_endpoint_ejected_is_503_uh_and_max_ejection_percent_keeps_one() {
    let a = upstream_failing("a", 503).await;
    let b = upstream_failing("b", 503).await;
    let mut svc = routed(&[&a, &b], None, None);
    svc.clusters[0].outlier_detection = Some(outlier(100, 5000));
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    for _ in 0..6 {
        c.get("reviews", "/", &[]).await;
    }
    assert_eq!(seen(&a) + seen(&b), 2, "each ejected at its first 503");
    let (s, _, body) = c.get("reviews", "/", &[]).await;
    assert_eq!((s.as_u16(), body.as_str()), (503, "no healthy upstream"));
    assert!(p.wait_requests(&["response_flags=\"UH\""], 1).await >= 1);

    // 50 %: the second can never be ejected.
    let a = upstream_failing("a", 503).await;
    let b = upstream_failing("b", 503).await;
    let mut svc = routed(&[&a, &b], None, None);
    svc.clusters[0].outlier_detection = Some(outlier(50, 5000));
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    for _ in 0..10 {
        let (s, _, _) = c.get("reviews", "/", &[]).await;
        assert_eq!(s, 503, "the upstream's 503, never UH");
    }
    assert_eq!(p.requests(&["response_flags=\"UH\""]), 0);
    let one = seen(&a).min(seen(&b));
    assert_eq!(one, 1, "one was ejected after its first answer");
}

/// A resolver whose Service can be replaced, compiled with one `LbStates` as the
/// proxy's config client does (so state carries over updates).
struct SwapResolver {
    states: mesh_proxy::http::LbStates,
    svc: std::sync::Mutex<std::sync::Arc<mesh_proxy::http::CompiledService>>,
}

impl SwapResolver {
    fn new(svc: &mesh_config::Service) -> std::sync::Arc<SwapResolver> {
        let states = mesh_proxy::http::LbStates::default();
        let c = mesh_proxy::http::CompiledService::compile_in(svc, &states).unwrap();
        std::sync::Arc::new(SwapResolver {
            states,
            svc: std::sync::Mutex::new(std::sync::Arc::new(c)),
        })
    }

    fn update(&self, svc: &mesh_config::Service) {
        let c = mesh_proxy::http::CompiledService::compile_in(svc, &self.states).unwrap();
        *self.svc.lock().unwrap() = std::sync::Arc::new(c);
    }
}

impl mesh_proxy::http::Resolver for SwapResolver {
    fn service_for_host<'a>(
        &'a self,
        _host: &'a str,
    ) -> mesh_proxy::http::BoxFuture<'a, Option<std::sync::Arc<mesh_proxy::http::CompiledService>>>
    {
        Box::pin(async move { Some(self.svc.lock().unwrap().clone()) })
    }
    fn service_for_addr(
        &self,
        _ip: std::net::IpAddr,
    ) -> mesh_proxy::http::BoxFuture<'_, Option<std::sync::Arc<mesh_proxy::http::CompiledService>>>
    {
        Box::pin(async move { Some(self.svc.lock().unwrap().clone()) })
    }
    fn peer(
        &self,
        _ip: std::net::IpAddr,
    ) -> mesh_proxy::http::BoxFuture<'_, Option<mesh_config::PeerMeta>> {
        Box::pin(async { None })
    }
    fn inbound_service(
        &self,
        _port: u16,
    ) -> mesh_proxy::http::BoxFuture<'_, Option<mesh_proxy::http::LocalService>> {
        Box::pin(async { None })
    }
}

#[tokio::test]
async fn limits_applied_while_connections_are_pooled_take_effect_at_once() {
    let v1 = upstream("v1", Proto::H1).await;
    let open = routed(&[&v1], None, None);
    let resolver = SwapResolver::new(&open);
    let p = proxy_with_resolver(resolver.clone(), cluster_ip(), Side::Outbound).await;
    // Several idle kept-alive connections in the pool.
    for (s, _, _) in concurrent_gets(p.addr, 4, "/delay/50").await {
        assert_eq!(s, 200);
    }
    assert!(v1.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    // Now the circuit breaker: one connection, no keep-alive, one pending.
    let mut limited = open.clone();
    limited.clusters[0].connection_pool = ConnectionPool {
        max_connections: Some(1),
        max_pending_requests: Some(1),
        max_requests_per_connection: Some(1),
        ..Default::default()
    };
    resolver.update(&limited);
    let before = v1.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let mut c = H1Client::connect(p.addr).await;
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(3), c.get("reviews", "/", &[])).await;
        assert_eq!(r.expect("answered, not hung").0, 200);
    }
    assert_eq!(
        v1.accepted.load(std::sync::atomic::Ordering::SeqCst) - before,
        5
    );
    // The connections pooled under the old (unlimited) config are closed, not left
    // idle beside the one the limit allows.
    let mut now_open = usize::MAX;
    for _ in 0..100 {
        now_open = v1.open.load(std::sync::atomic::Ordering::SeqCst);
        if now_open <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        now_open <= 1,
        "{now_open} upstream connections open under maxConnections 1"
    );
    // And back to no limits: still answered.
    resolver.update(&open);
    for _ in 0..3 {
        assert_eq!(c.get("reviews", "/", &[]).await.0, 200);
    }
}

#[tokio::test]
async fn ejections_do_not_outlive_the_outlier_policy() {
    let bad = upstream_failing("bad", 503).await;
    let good = upstream("good", Proto::H1).await;
    let mut with = routed(&[&bad, &good], None, None);
    with.clusters[0].outlier_detection = Some(outlier(100, 60_000));
    let resolver = SwapResolver::new(&with);
    let p = proxy_with_resolver(resolver.clone(), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    for _ in 0..6 {
        c.get("reviews", "/", &[]).await;
    }
    assert_eq!(seen(&bad), 1, "ejected for a minute");
    // The rule goes, then comes back: the endpoint starts afresh, as in a new cluster.
    let mut without = with.clone();
    without.clusters[0].outlier_detection = None;
    resolver.update(&without);
    resolver.update(&with);
    for _ in 0..6 {
        c.get("reviews", "/", &[]).await;
    }
    assert_eq!(
        seen(&bad),
        2,
        "back in rotation, ejected again at its first 503"
    );
}

#[tokio::test]
async fn retries_in_flight_stay_under_max_retries() {
    let bad = upstream_failing("bad", 503).await;
    let mut svc = routed(&[&bad], None, Some(retry(3, &[RetryOn::FiveXx])));
    svc.clusters[0].connection_pool = ConnectionPool {
        max_retries: Some(1),
        ..Default::default()
    };
    let resolver = SwapResolver::new(&svc);
    let p = proxy_with_resolver(resolver.clone(), cluster_ip(), Side::Outbound).await;
    // Three slow failing requests at once: only one retry may be in flight at a time,
    // so some retries are not made (the upstream's 503 is the answer).
    for (s, _, _) in concurrent_gets(p.addr, 3, "/delay/200").await {
        assert_eq!(s, 503);
    }
    let tries = seen(&bad);
    assert!(
        (4..12).contains(&tries),
        "{tries} tries for 3 requests of 4 tries each"
    );
    let mut stats = String::new();
    resolver.states.render_clusters(&mut stats);
    let of = |name: &str| {
        format!(
            "envoy_cluster_{name}{{cluster_name=\"{}\"}} ",
            cluster_name(None)
        )
    };
    let overflow: u64 = stats
        .lines()
        .find(|l| l.starts_with(&of("upstream_rq_retry_overflow")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    let retries: u64 = stats
        .lines()
        .find(|l| l.starts_with(&of("upstream_rq_retry")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(overflow >= 1, "{stats}");
    assert_eq!(
        retries as usize + 3,
        tries,
        "every try after the first is a counted retry"
    );
}

#[tokio::test]
async fn over_h2_upstreams_retries_and_max_connections_hold_too() {
    let v1 = upstream("v1", Proto::H2).await;
    let mut svc = routed(&[&v1], None, Some(retry(3, &[RetryOn::FiveXx])));
    svc.ports[0].protocol = Protocol::Http2;
    svc.clusters[0].connection_pool = ConnectionPool {
        max_connections: Some(1),
        max_requests_per_connection: Some(3),
        ..Default::default()
    };
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    // A held (empty) body, retried over h2 until the upstream stops failing.
    let (s, _, _) = tokio::time::timeout(
        Duration::from_secs(5),
        H1Client::connect(p.addr)
            .await
            .get("reviews", "/fail-first/2", &[]),
    )
    .await
    .expect("phase 1");
    assert_eq!(s, 200);
    assert_eq!(seen(&v1), 3);
    // One multiplexed connection at a time, renewed after 3 requests.
    let all = tokio::time::timeout(
        Duration::from_secs(5),
        concurrent_gets(p.addr, 4, "/delay/50"),
    )
    .await
    .expect("phase 2");
    for (s, _, _) in all {
        assert_eq!(s, 200);
    }
    assert_eq!(v1.max_open.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(v1.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn max_connections_below_the_endpoint_count_starves_no_endpoint() {
    let a = upstream("a", Proto::H1).await;
    let b = upstream("b", Proto::H1).await;
    let mut svc = routed(&[&a, &b], None, None);
    svc.clusters[0].connection_pool = ConnectionPool {
        max_connections: Some(1),
        ..Default::default()
    };
    svc.clusters[0].load_balancer = mesh_config::LoadBalancer::RoundRobin;
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    // a's idle connection stays pooled; b still gets one of its own (Envoy's rule).
    for _ in 0..6 {
        let r = tokio::time::timeout(Duration::from_secs(3), c.get("reviews", "/", &[])).await;
        assert_eq!(r.expect("answered, not starved").0, 200);
    }
    assert_eq!(seen(&a), 3);
    assert_eq!(seen(&b), 3);
    assert_eq!(a.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(b.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}
