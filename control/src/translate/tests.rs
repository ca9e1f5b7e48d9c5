//! Unit tests of the assembled translation (the goldens in `testdata/translate/` cover
//! Istio's cases one by one).
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn node(ns: &str, pod: &str) -> ProxyNode {
    ProxyNode::new(ns, pod)
}

#[test]
fn an_empty_snapshot_knows_nothing() {
    let s = Snapshot::default();
    let n = node("default", "p");
    assert_eq!(
        s.resolve(&n, &"addr/10.0.0.1".parse().unwrap()),
        Resource::NotFound
    );
    assert_eq!(s.resolve(&n, &Key::host("reviews")), Resource::NotFound);
    assert_eq!(s.pod_labels(&n), None);
}

/// The size `build` and `resolve` are meant for (1,000 Services, 10,000 endpoints,
/// 1,000 pods with proxies, a VirtualService and a DestinationRule per Service): every
/// answer is found through the indexes and is right. No timing: the cost model is in
/// the module docs (`resolve` only touches the asked Service, its VirtualService and the
/// clusters its routes name).
#[test]
fn mesh_sized_snapshot() {
    const SERVICES: usize = 1000;
    const PODS_PER_SERVICE: usize = 10;
    let mut o = Objects::default();
    let pod_ip = |s: usize, p: usize| format!("10.{}.{}.{}", 1 + s / 250, s % 250, 1 + p);
    for s in 0..SERVICES {
        let name = format!("svc-{s}");
        o.services.push(arc(json!({
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"clusterIP": format!("10.96.{}.{}", s / 250, s % 250),
                     "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        })));
        let mut endpoints = Vec::new();
        for p in 0..PODS_PER_SERVICE {
            let pod = format!("{name}-{p}");
            // One pod in ten of each Service runs a proxy (1,000 in all).
            let containers = if p == 0 {
                json!([{"name": "app"}, {"name": "istio-proxy"}])
            } else {
                json!([{"name": "app"}])
            };
            o.pods.push(arc(json!({
                "metadata": {"name": pod, "namespace": "app",
                             "labels": {"app": name, "version": format!("v{}", p % 2)}},
                "spec": {"containers": containers},
                "status": {"podIP": pod_ip(s, p)}
            })));
            endpoints.push(json!({"addresses": [pod_ip(s, p)],
                                  "targetRef": {"kind": "Pod", "namespace": "app", "name": pod}}));
        }
        o.endpoint_slices.push(arc(json!({
            "metadata": {"name": format!("{name}-x"), "namespace": "app",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints
        })));
        o.destination_rules.push(json!({
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"host": name, "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}
        }));
        o.virtual_services.push(json!({
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"hosts": [name], "http": [
                {"match": [{"headers": {"x-canary": {"exact": "1"}}}],
                 "route": [{"destination": {"host": name, "subset": "v1"}}]},
                {"route": [{"destination": {"host": format!("svc-{}", (s + 1) % SERVICES)}}]}
            ]}
        }));
    }
    let (snap, diags) = Snapshot::build(o, &MeshSettings::default());
    assert!(diags.is_empty(), "{diags:?}");
    for s in (0..SERVICES).step_by(37) {
        let client = node("app", &format!("svc-{}-0", (s + 7) % SERVICES));
        let Resource::Service(svc) = snap.resolve(&client, &Key::host(&format!("svc-{s}"))) else {
            panic!("svc-{s} not found");
        };
        let routes = &svc.ports[0].routes;
        assert_eq!(routes.len(), 2);
        // Default cluster, v1 subset, and the next Service's default cluster.
        assert_eq!(svc.clusters.len(), 3);
        let v1 = svc
            .clusters
            .iter()
            .find(|c| c.subset.as_deref() == Some("v1"))
            .unwrap();
        assert_eq!(v1.endpoints.len(), PODS_PER_SERVICE / 2);
        let ip: IpAddr = pod_ip(s, 3).parse().unwrap();
        let Resource::Workload(w) = snap.resolve(&client, &Key::Address(ip)) else {
            panic!("pod {ip} not found");
        };
        assert_eq!(w.services.len(), 1);
        assert_eq!(w.services[0].ports[0].target_port, 8080);
        assert!(!w.meta.sidecar);
    }
}

#[test]
fn diagnostics_are_sorted_and_deduplicated() {
    let vs = json!({"metadata": {"name": "x", "namespace": "a"}, "spec": {"hosts": []}});
    let o = Objects {
        virtual_services: vec![vs.clone(), vs],
        ..Objects::default()
    };
    let (_, diags) = Snapshot::build(o, &MeshSettings::default());
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].field, "spec.hosts");
}

/// `--compatibility-version 1.23` (the golden cases run with the default settings): the
/// default retry policy also retries 503s, on routes without `retries` and on the port's
/// default route; a route's own `retryOn` is its own, an empty one takes the default's.
#[test]
fn compatibility_version_1_23_retries_503_by_default() {
    let o = Objects {
        services: vec![arc(json!({
            "metadata": {"name": "web", "namespace": "app"},
            "spec": {"clusterIP": "10.96.0.5", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80},
                               {"name": "tcp-db", "port": 5432}]}
        }))],
        virtual_services: vec![json!({
            "metadata": {"name": "web", "namespace": "app"},
            "spec": {"hosts": ["web"], "http": [
                {"name": "own", "match": [{"uri": {"prefix": "/own"}}],
                 "route": [{"destination": {"host": "web"}}],
                 "retries": {"attempts": 3, "retryOn": "5xx"}},
                {"name": "attempts-only", "match": [{"uri": {"prefix": "/a"}}],
                 "route": [{"destination": {"host": "web"}}],
                 "retries": {"attempts": 4}},
                {"name": "none", "match": [{"uri": {"prefix": "/none"}}],
                 "route": [{"destination": {"host": "web"}}],
                 "retries": {"attempts": 0}},
                {"name": "default", "route": [{"destination": {"host": "web"}}]}
            ]}
        })],
        ..Objects::default()
    };
    let resolve = |compat: Option<&str>| {
        let settings = MeshSettings {
            compatibility_version: compat.map(|v| v.parse().unwrap()),
            ..MeshSettings::default()
        };
        let (snap, diags) = Snapshot::build(o.clone(), &settings);
        assert!(diags.is_empty(), "{diags:?}");
        let Resource::Service(svc) = snap.resolve(&node("app", "client"), &Key::host("web")) else {
            panic!("web not found");
        };
        svc
    };
    let old = resolve(Some("1.23"));
    let want = resilience::default_retry(Some(CompatibilityVersion {
        major: 1,
        minor: 23,
    }));
    assert_eq!(want.retriable_status_codes, vec![503]);
    let http = old.port(80).unwrap();
    assert_eq!(http.default_retry.as_ref(), Some(&want));
    assert_eq!(old.port(5432).unwrap().default_retry, None);
    let retry = |name: &str| {
        http.routes
            .iter()
            .find(|r| r.name == name)
            .unwrap()
            .retry
            .clone()
    };
    assert_eq!(retry("default"), Some(want.clone()));
    let own = retry("own").unwrap();
    assert_eq!(own.retry_on, vec![mesh_config::resilience::RetryOn::FiveXx]);
    assert!(own.retriable_status_codes.is_empty());
    let attempts_only = retry("attempts-only").unwrap();
    assert_eq!(attempts_only.attempts, 4);
    assert_eq!(
        (attempts_only.retry_on, attempts_only.retriable_status_codes),
        (want.retry_on.clone(), vec![503])
    );
    assert_eq!(retry("none"), None);
    // 1.24, and unset: no 503.
    for compat in [Some("1.24"), None] {
        let new = resolve(compat);
        let p = new.port(80).unwrap();
        assert_eq!(p.default_retry, Some(resilience::default_retry(None)));
        assert!(p.routes.iter().all(|r| {
            r.retry
                .as_ref()
                .is_none_or(|r| r.retriable_status_codes.is_empty())
        }));
    }
}

fn arc<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> std::sync::Arc<T> {
    std::sync::Arc::new(serde_json::from_value(v).unwrap())
}
