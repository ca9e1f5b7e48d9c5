//! Unit tests of the assembled translation (the goldens in `testdata/translate/` cover
//! Istio's cases one by one).
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn node(ns: &str, pod: &str) -> ProxyNode {
    ProxyNode {
        namespace: ns.into(),
        pod_name: pod.into(),
    }
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
        o.services.push(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "app"},
                "spec": {"clusterIP": format!("10.96.{}.{}", s / 250, s % 250),
                         "selector": {"app": name},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
            }))
            .unwrap(),
        );
        let mut endpoints = Vec::new();
        for p in 0..PODS_PER_SERVICE {
            let pod = format!("{name}-{p}");
            // One pod in ten of each Service runs a proxy (1,000 in all).
            let containers = if p == 0 {
                json!([{"name": "app"}, {"name": "istio-proxy"}])
            } else {
                json!([{"name": "app"}])
            };
            o.pods.push(
                serde_json::from_value(json!({
                    "metadata": {"name": pod, "namespace": "app",
                                 "labels": {"app": name, "version": format!("v{}", p % 2)}},
                    "spec": {"containers": containers},
                    "status": {"podIP": pod_ip(s, p)}
                }))
                .unwrap(),
            );
            endpoints.push(json!({"addresses": [pod_ip(s, p)],
                                  "targetRef": {"kind": "Pod", "namespace": "app", "name": pod}}));
        }
        o.endpoint_slices.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-x"), "namespace": "app",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": endpoints
            }))
            .unwrap(),
        );
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
