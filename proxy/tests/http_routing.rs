//! Outbound routing through the HTTP engine on loopback: weights, header routing,
//! faults, rewrites, redirects, header edits, and the request metrics they produce.

#![allow(clippy::unwrap_used)]

mod http_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http_support::*;
use mesh_config::{
    CorsPolicy, Fault, FaultAbort, FaultDelay, HeaderMatch, Protocol, Redirect, RequestMatch,
    Rewrite, RouteAction, StringMatch,
};

fn header_is(name: &str, v: &str) -> RequestMatch {
    RequestMatch {
        headers: vec![HeaderMatch {
            name: name.into(),
            value: Some(StringMatch::Exact(v.into())),
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn weights_split_traffic_and_metrics_count_each_version() {
    let (v1, v2, v3) = (
        upstream("v1", Proto::H1).await,
        upstream("v2", Proto::H1).await,
        upstream("v3", Proto::H1).await,
    );
    let svc = reviews(
        &[&v1, &v2, &v3],
        Protocol::Http,
        vec![route(
            "split",
            vec![],
            RouteAction::Route(vec![to("v1", 50), to("v3", 50)]),
        )],
    );
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let n = 400;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..n {
        let (status, _, body) = c.get("reviews:9080", "/reviews/1", &[]).await;
        assert_eq!(status, 200);
        *counts.entry(body).or_default() += 1;
    }
    assert_eq!(counts.keys().len(), 2, "{counts:?}");
    let (a, b) = (counts["v1"], counts["v3"]);
    assert_eq!(a + b, n);
    // 50/50 of 400: ±60 is beyond 6 standard deviations.
    assert!((140..=260).contains(&a), "{counts:?}");
    for (version, count) in [("v1", a), ("v3", b)] {
        let want = [
            "reporter=\"source\"",
            "source_workload=\"productpage-v1\"",
            "destination_version=\"",
            "response_code=\"200\"",
            "response_flags=\"-\"",
        ];
        let dv = format!("destination_version=\"{version}\"");
        let dw = format!("destination_workload=\"reviews-{version}\"");
        let mut want = want.to_vec();
        want.push(&dv);
        want.push(&dw);
        want.push("destination_service=\"reviews.default.svc.cluster.local\"");
        want.push("destination_service_name=\"reviews\"");
        assert_eq!(
            p.wait_requests(&want, u64::from(count)).await,
            u64::from(count)
        );
    }
    assert_eq!(p.requests(&["destination_version=\"v2\""]), 0);
    assert_eq!(v2.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    let text = p.metrics_text();
    assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram"));
    let v1_count = sum_series(
        &text,
        "istio_response_bytes_count{",
        &["destination_version=\"v1\""],
    );
    assert_eq!(v1_count, u64::from(a));
}

#[tokio::test]
async fn header_routing_and_no_route() {
    let (v1, v2) = (
        upstream("v1", Proto::H1).await,
        upstream("v2", Proto::H1).await,
    );
    let svc = reviews(
        &[&v1, &v2],
        Protocol::Http,
        vec![
            route(
                "jason",
                vec![header_is("end-user", "jason")],
                RouteAction::Route(vec![to("v2", 1)]),
            ),
            route(
                "api",
                vec![RequestMatch {
                    uri: Some(StringMatch::Prefix("/api".into())),
                    ..Default::default()
                }],
                RouteAction::Route(vec![to("v1", 1)]),
            ),
        ],
    );
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    for _ in 0..3 {
        let (s, _, b) = c.get("reviews", "/x", &[("end-user", "jason")]).await;
        assert_eq!((s.as_u16(), b.as_str()), (200, "v2"));
        let (s, _, b) = c.get("reviews.default", "/api/v", &[]).await;
        assert_eq!((s.as_u16(), b.as_str()), (200, "v1"));
    }
    let (s, h, b) = c.get("reviews", "/nothing", &[]).await;
    assert_eq!(s, 404);
    assert_eq!(b, "");
    assert!(h.get("x-upstream").is_none());
    let want = [
        "response_code=\"404\"",
        "response_flags=\"NR\"",
        "destination_service_name=\"reviews\"",
    ];
    assert_eq!(p.wait_requests(&want, 1).await, 1);
    assert_eq!(
        p.requests(&["destination_version=\"v2\"", "response_code=\"200\""]),
        3
    );
    // The access log says which route took each request.
    let log = p.log.lock().unwrap().clone();
    let jason: serde_json::Value = serde_json::from_str(&log[0]).unwrap();
    assert_eq!(jason["route_name"], "jason");
    assert_eq!(jason["upstream_host"], v2.addr.to_string());
    assert_eq!(jason["response_code"], 200);
    let nr: serde_json::Value = serde_json::from_str(log.last().unwrap()).unwrap();
    assert_eq!(nr["response_flags"], "NR");
    assert_eq!(nr["path"], "/nothing");
}

#[tokio::test]
async fn abort_and_delay_faults() {
    let v1 = upstream("v1", Proto::H1).await;
    let mut abort = route(
        "abort",
        vec![header_is("x-fault", "abort")],
        RouteAction::Route(vec![to("v1", 1)]),
    );
    abort.fault = Some(Fault {
        delay: None,
        abort: Some(FaultAbort {
            http_status: Some(418),
            grpc_status: None,
            percentage: 100.0,
        }),
    });
    let mut delay = route(
        "delay",
        vec![header_is("x-fault", "delay")],
        RouteAction::Route(vec![to("v1", 1)]),
    );
    delay.fault = Some(Fault {
        delay: Some(FaultDelay {
            fixed_delay_ms: 300,
            percentage: 100.0,
        }),
        abort: None,
    });
    let svc = reviews(&[&v1], Protocol::Http, vec![abort, delay]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, h, b) = c.get("reviews", "/", &[("x-fault", "abort")]).await;
    assert_eq!(s, 418);
    assert_eq!(b, "fault filter abort");
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(
        v1.seen.lock().unwrap().len(),
        0,
        "an abort never reaches upstream"
    );
    let started = Instant::now();
    let (s, _, b) = c.get("reviews", "/", &[("x-fault", "delay")]).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!((s.as_u16(), b.as_str()), (200, "v1"));
    assert_eq!(
        p.wait_requests(&["response_code=\"418\"", "response_flags=\"FI\""], 1)
            .await,
        1
    );
    assert_eq!(
        p.wait_requests(&["response_code=\"200\"", "response_flags=\"DI\""], 1)
            .await,
        1
    );
}

#[tokio::test]
async fn rewrites_header_edits_redirects_and_direct_responses() {
    let v1 = upstream("v1", Proto::H1).await;
    let mut rw = route(
        "rewrite",
        vec![RequestMatch {
            uri: Some(StringMatch::Prefix("/old".into())),
            ..Default::default()
        }],
        RouteAction::Route(vec![{
            let mut d = to("v1", 1);
            d.request_headers.set = vec![("x-dest".into(), "dest".into())];
            d.response_headers.add = vec![("x-resp".into(), "dest".into())];
            d
        }]),
    );
    rw.rewrite = Some(Rewrite {
        uri: Some("/new".into()),
        authority: Some("ratings:9080".into()),
        uri_regex: None,
    });
    rw.request_headers.set = vec![("x-dest".into(), "route".into())];
    rw.request_headers.add = vec![("x-added".into(), "1".into())];
    rw.request_headers.remove = vec!["x-secret".into()];
    rw.response_headers.add = vec![("x-resp".into(), "route".into())];
    rw.response_headers.remove = vec!["x-upstream".into()];
    let rd = route(
        "redirect",
        vec![RequestMatch {
            uri: Some(StringMatch::Exact("/login".into())),
            ..Default::default()
        }],
        RouteAction::Redirect(Redirect {
            uri: Some("/signin".into()),
            authority: Some("auth.example.com".into()),
            port: None,
            scheme: Some("https".into()),
            code: 302,
        }),
    );
    let dr = route(
        "direct",
        vec![RequestMatch {
            uri: Some(StringMatch::Exact("/health".into())),
            ..Default::default()
        }],
        RouteAction::DirectResponse {
            status: 200,
            body: "ok".into(),
        },
    );
    let mut rx = route(
        "regex-rewrite",
        vec![RequestMatch {
            uri: Some(StringMatch::Prefix("/service/".into())),
            ..Default::default()
        }],
        RouteAction::Route(vec![to("v1", 1)]),
    );
    rx.rewrite = Some(Rewrite {
        uri: None,
        authority: None,
        uri_regex: Some(mesh_config::RegexRewrite {
            pattern: "^/service/([^/]+)(/.*)$".into(),
            substitution: r"\2/instance/\1".into(),
        }),
    });
    let svc = reviews(&[&v1], Protocol::Http, vec![rw, rd, dr, rx]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, h, b) = c
        .get(
            "reviews:9080",
            "/old/page?q=1",
            &[
                ("x-secret", "s"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "1"),
            ],
        )
        .await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "v1"));
    let (_, path, seen) = v1.seen_last();
    assert_eq!(path, "/new/page?q=1");
    assert_eq!(seen["x-envoy-original-path"], "/old/page?q=1");
    assert_eq!(seen["host"], "ratings:9080");
    assert_eq!(
        seen["x-dest"], "route",
        "route-level set wins over the destination's"
    );
    assert_eq!(seen["x-added"], "1");
    assert!(seen.get("x-secret").is_none());
    assert!(
        seen.get("x-hop").is_none(),
        "named in Connection: hop-by-hop"
    );
    assert_eq!(
        seen["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(seen["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
    let id = seen["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(
        h.get_all("x-resp").iter().collect::<Vec<_>>(),
        ["dest", "route"]
    );
    assert!(h.get("x-upstream").is_none());
    // A request id the client sent is kept.
    c.get("reviews", "/old", &[("x-request-id", "mine")]).await;
    assert_eq!(v1.seen_last().2["x-request-id"], "mine");

    let (s, h, b) = c.get("reviews", "/login?next=%2F", &[]).await;
    assert_eq!(s, 302);
    assert_eq!(h["location"], "https://auth.example.com/signin?next=%2F");
    assert_eq!(b, "");
    let (s, h, b) = c.get("reviews", "/health", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "ok"));
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(v1.seen.lock().unwrap().len(), 2);
    assert_eq!(p.wait_requests(&["response_code=\"302\""], 1).await, 1);

    let (s, _, b) = c
        .get("reviews", "/service/ratings/v2/stars?id=7", &[])
        .await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "v1"));
    let (_, path, seen) = v1.seen_last();
    assert_eq!(path, "/v2/stars/instance/ratings?id=7");
    assert_eq!(
        seen["x-envoy-original-path"],
        "/service/ratings/v2/stars?id=7"
    );
    // The route taken, the pattern not matched: the path goes as it came.
    let (s, _, _) = c.get("reviews", "/service/only", &[]).await;
    assert_eq!(s, 200);
    let (_, path, seen) = v1.seen_last();
    assert_eq!(path, "/service/only");
    assert!(seen.get("x-envoy-original-path").is_none());
}

#[tokio::test]
async fn grpc_abort_is_a_trailers_only_grpc_status() {
    let v1 = upstream("v1", Proto::H2).await;
    let mut abort = route("abort", vec![], RouteAction::Route(vec![to("v1", 1)]));
    abort.fault = Some(Fault {
        delay: None,
        abort: Some(FaultAbort {
            http_status: None,
            grpc_status: Some(14),
            percentage: 100.0,
        }),
    });
    let svc = reviews(&[&v1], Protocol::Http2, vec![abort]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H2Client::connect(p.addr).await;
    let req = hyper::Request::post("http://reviews:9080/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .body(body(&b"\0\0\0\0\0"[..]))
        .unwrap();
    let (s, h, b) = read(c.send(req).await).await;
    assert_eq!(s, 200);
    assert_eq!(h["grpc-status"], "14");
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(b, "");
    let want = [
        "request_protocol=\"grpc\"",
        "grpc_response_status=\"14\"",
        "response_flags=\"FI\"",
    ];
    assert_eq!(p.wait_requests(&want, 1).await, 1);
    assert_eq!(v1.seen.lock().unwrap().len(), 0);
}

#[tokio::test]
async fn cors_preflights_are_answered_and_responses_decorated() {
    let v1 = upstream("v1", Proto::H1).await;
    let mut api = route(
        "api",
        vec![RequestMatch {
            uri: Some(StringMatch::Prefix("/api".into())),
            ..Default::default()
        }],
        RouteAction::Route(vec![to("v1", 1)]),
    );
    api.cors = Some(CorsPolicy {
        allow_origins: vec![StringMatch::Exact("https://example.com".into())],
        allow_methods: vec!["POST".into(), "GET".into()],
        allow_headers: vec!["X-Foo-Bar".into()],
        expose_headers: vec!["x-trace-id".into()],
        max_age_s: Some(86400),
        allow_credentials: true,
        answer_unmatched_preflights: false,
    });
    // The same policy on a route that aborts: the proxy's own answer is decorated too.
    let mut aborted = route(
        "aborted",
        vec![RequestMatch {
            uri: Some(StringMatch::Prefix("/broken".into())),
            ..Default::default()
        }],
        RouteAction::Route(vec![to("v1", 1)]),
    );
    aborted.cors = api.cors.clone();
    aborted.fault = Some(Fault {
        delay: None,
        abort: Some(FaultAbort {
            http_status: Some(503),
            grpc_status: None,
            percentage: 100.0,
        }),
    });
    let svc = reviews(&[&v1], Protocol::Http, vec![api, aborted]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let preflight = |origin: &str| {
        hyper::Request::options("/api/items")
            .header("host", "reviews:9080")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "x-foo-bar")
            .body(empty())
            .unwrap()
    };

    let (s, h, b) = read(c.send(preflight("https://example.com")).await).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, ""));
    assert_eq!(h["access-control-allow-origin"], "https://example.com");
    assert_eq!(h["access-control-allow-methods"], "POST,GET");
    assert_eq!(h["access-control-allow-headers"], "X-Foo-Bar");
    assert_eq!(h["access-control-max-age"], "86400");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(
        v1.seen.lock().unwrap().is_empty(),
        "an allowed preflight never reaches the app"
    );

    // From another origin the preflight is the app's business.
    let (s, h, b) = read(c.send(preflight("https://evil.example")).await).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "v1"));
    assert!(h.get("access-control-allow-origin").is_none());
    assert_eq!(v1.seen.lock().unwrap().len(), 1);

    let (s, h, _) = c
        .get(
            "reviews:9080",
            "/api/items",
            &[("origin", "https://example.com")],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(h["access-control-allow-origin"], "https://example.com");
    assert_eq!(h["access-control-expose-headers"], "x-trace-id");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h.get("access-control-allow-methods").is_none());
    let (_, h, _) = c.get("reviews:9080", "/api/items", &[]).await;
    assert!(h.get("access-control-allow-origin").is_none(), "no Origin");

    let (s, h, b) = c
        .get(
            "reviews:9080",
            "/broken",
            &[("origin", "https://example.com")],
        )
        .await;
    assert_eq!((s.as_u16(), b.as_str()), (503, "fault filter abort"));
    assert_eq!(h["access-control-allow-origin"], "https://example.com");
    // A preflight on the aborting route is answered before the fault, as Envoy's
    // filter order has it.
    let mut pf = preflight("https://example.com");
    *pf.uri_mut() = "/broken".parse().unwrap();
    let (s, _, _) = read(c.send(pf).await).await;
    assert_eq!(s, 200);
    assert_eq!(
        p.wait_requests(&["response_code=\"200\"", "response_flags=\"-\""], 5)
            .await,
        5,
        "the two answered preflights are counted with the three forwarded requests"
    );
    assert_eq!(
        p.requests(&["response_code=\"503\"", "response_flags=\"FI\""]),
        1
    );
}
