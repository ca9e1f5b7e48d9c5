//! The `mesh-control` binary against a real API server (kube-local through KUBECONFIG;
//! fails without it), with the real translation: readiness, metrics, the stream, debug
//! endpoints, SIGTERM, and a restart that a reconnecting proxy does not notice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mesh_config::Resource;
use mesh_config::wire::StreamResponse;
use support::{
    MeshControl, Namespace, Proxy, get, get_until, keys, kubeconfig, kubectl, metric, repo_root,
    resource, service_yaml,
};

async fn ready(mc: &MeshControl) {
    let (st, body) = get_until(mc.metrics, "/readyz", Duration::from_secs(30), |s, _| {
        s == 200
    })
    .await;
    assert_eq!(st, 200, "not ready: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_readiness_metrics_debug_and_the_stream() {
    let kc = kubeconfig();
    let ns = Namespace::new(&kc, "mc-proc");
    let n = ns.name.clone();
    let mc = MeshControl::spawn(&kc, &["--debounce", "50ms"]);
    ready(&mc).await;
    assert_eq!(get(mc.metrics, "/healthz").await.0, 200);

    let k1 = "addr/192.0.2.10";
    let k2 = "host/nothing.example";
    let mut p = Proxy::connect(mc.plaintext, &n, "client", &[k1, k2, "bad key"]).await;
    let r = p.next(Duration::from_secs(5)).await;
    assert_eq!(keys(&r), [k1, k2]);
    assert_eq!(r.version, 1);
    // Outside the mesh: NotFound, with the real translation as with the stub.
    assert_eq!(resource(&r, k1), Resource::NotFound);
    p.ack(&r).await;

    let (_, body) = get_until(
        mc.metrics,
        "/debug/proxies",
        Duration::from_secs(3),
        |_, b| b.contains("\"lastAckedVersion\": 1"),
    )
    .await;
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["proxy"], format!("{n}/client"), "{body}");
    assert_eq!(list[0]["ip"], "10.244.0.9");
    assert_eq!(list[0]["keys"].as_array().unwrap().len(), 2, "{body}");
    let (st, body) = get(
        mc.metrics,
        &format!("/debug/config?proxy={n}/client&key={k1}"),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        Resource::from_json(body.as_bytes()).unwrap(),
        Resource::NotFound
    );
    assert_eq!(
        get(mc.metrics, "/debug/config?key=addr/1.2.3.4").await.0,
        400
    );
    let (st, body) = get(mc.metrics, "/debug/objects").await;
    assert_eq!(st, 200, "{body}");
    let objs: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        objs["counts"]["namespaces"].as_u64().unwrap() >= 1,
        "{body}"
    );
    assert_eq!(
        objs["endpointSlicesVersion"], "v1beta1",
        "kube-local is v1.20: {body}"
    );

    // A change in the cluster is seen (a build), and nothing is pushed for keys whose
    // content did not change.
    let m = get(mc.metrics, "/metrics").await.1;
    let builds = metric(&m, "mesh_control_snapshot_builds_total").unwrap();
    ns.apply(&service_yaml("seen", &[("http", 80)]));
    let (_, m) = get_until(mc.metrics, "/metrics", Duration::from_secs(3), |_, m| {
        metric(m, "mesh_control_snapshot_builds_total").unwrap() > builds
    })
    .await;
    assert!(
        metric(&m, "mesh_control_snapshot_builds_total").unwrap() > builds,
        "{m}"
    );
    p.quiet(Duration::from_millis(300)).await;

    for name in [
        "mesh_control_connected_proxies",
        "mesh_control_pushes_total",
        "mesh_control_push_duration_seconds",
        "mesh_control_config_rejected_total",
        "mesh_control_config_errors_total",
        "mesh_control_snapshot_builds_total",
    ] {
        assert!(
            m.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{m}"
        );
    }
    assert_eq!(
        metric(&m, "mesh_control_connected_proxies"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "mesh_control_pushes_total"), Some(1.0), "{m}");

    // SIGTERM: the stream ends (the proxy reconnects elsewhere), the process exits 0.
    let status = mc.stop();
    assert!(status.success(), "{status}");
    match p.next_or_end(Duration::from_secs(5)).await {
        Ok(None) | Err(_) => {}
        Ok(Some(r)) => panic!("unexpected response after shutdown: {r:?}"),
    }
}

fn contents(r: &StreamResponse) -> BTreeMap<String, (String, Vec<u8>)> {
    r.resources
        .iter()
        .map(|u| (u.key.clone(), (u.version.clone(), u.body.clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_gives_a_reconnecting_proxy_the_same_content() {
    let kc = kubeconfig();
    let ns = Namespace::new(&kc, "mc-restart");
    let n = ns.name.clone();
    ns.apply(&service_yaml("reviews", &[("http", 9080)]));
    let ip = ns.kubectl(&[
        "get",
        "service",
        "reviews",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let subs = [
        format!("host/reviews.{n}"),
        format!("addr/{}", ip.trim()),
        "addr/192.0.2.77".to_owned(),
    ];
    let subs: Vec<&str> = subs.iter().map(String::as_str).collect();

    let mc = MeshControl::spawn(&kc, &[]);
    ready(&mc).await;
    let mut p = Proxy::connect(mc.plaintext, &n, "client", &subs).await;
    let before = p.next(Duration::from_secs(5)).await;
    assert_eq!(before.resources.len(), 3);
    p.ack(&before).await;
    assert!(mc.stop().success());
    let _ = p.next_or_end(Duration::from_secs(5)).await;

    let started = Instant::now();
    let mc = MeshControl::spawn(&kc, &[]);
    let mut p = Proxy::connect(mc.plaintext, &n, "client", &subs).await;
    let after = p.next(Duration::from_secs(30)).await;
    eprintln!("reconnected and answered after {:?}", started.elapsed());
    assert_eq!(contents(&after), contents(&before));
}

/// The translation end to end: a Service, its pod and EndpointSlice, a VirtualService and a
/// DestinationRule in the shared API server (our CRDs applied, as `kubectl apply -k
/// deploy/` does), the real binary: the proxy gets the routes, an edit of the VirtualService
/// is pushed within a second as that key alone, and a bad VirtualService is reported as an
/// Event and counted while the rest keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translation_end_to_end() {
    let kc = kubeconfig();
    let crds = repo_root().join("deploy/crds");
    kubectl(&kc, &["apply", "-k", crds.to_str().unwrap()], None);
    for crd in ["virtualservices", "destinationrules"] {
        kubectl(
            &kc,
            &[
                "wait",
                "--for=condition=established",
                "--timeout=30s",
                &format!("crd/{crd}.networking.istio.io"),
            ],
            None,
        );
    }
    let ns = Namespace::new(&kc, "mc-e2e");
    let n = ns.name.clone();
    ns.apply(&format!(
        "{}---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {{exact: jason}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - route:
    - destination: {{host: reviews, subset: v1}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
",
        service_yaml("reviews", &[("http", 9080)])
    ));
    let mc = MeshControl::spawn(&kc, &["--crd-discovery-interval", "1s"]);
    ready(&mc).await;
    let key = format!("host/reviews.{n}");
    let routes = |r: &Resource| match r {
        Resource::Service(s) => s.ports.iter().map(|p| p.routes.len()).sum::<usize>(),
        _ => 0,
    };
    // Wait until the VirtualService is part of the answer.
    let path = format!("/debug/config?proxy={n}/client&key={key}");
    let (_, body) = get_until(mc.metrics, &path, Duration::from_secs(15), |s, b| {
        s == 200 && Resource::from_json(b.as_bytes()).is_ok_and(|r| routes(&r) == 2)
    })
    .await;
    assert_eq!(
        routes(&Resource::from_json(body.as_bytes()).unwrap()),
        2,
        "{body}"
    );
    let mut p = Proxy::connect(mc.plaintext, &n, "client", &[&key]).await;
    let r = p.next(Duration::from_secs(5)).await;
    assert_eq!(routes(&resource(&r, &key)), 2);
    p.ack(&r).await;

    let t = Instant::now();
    ns.kubectl(&[
        "patch",
        "virtualservices.networking.istio.io",
        "reviews",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/http/0"}]"#,
    ]);
    let r = p.next(Duration::from_secs(3)).await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(keys(&r), std::slice::from_ref(&key));
    assert_eq!(routes(&resource(&r, &key)), 1);
    p.ack(&r).await;

    // Named to sort after `reviews`: creation times have one-second resolution, and on a
    // tie the older VirtualService for a host is the one whose name sorts first (Istio's
    // order), which must stay `reviews` here.
    ns.apply(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: zz-broken
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {regex: \"(\"}
    route:
    - destination: {host: reviews}
",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = || {
        ns.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "reason=InvalidConfig",
            "-o",
            "json",
        ])
    };
    while !events().contains("\"zz-broken\"") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(events().contains("\"zz-broken\""), "{}", events());
    let m = get(mc.metrics, "/metrics").await.1;
    assert!(
        metric(
            &m,
            "mesh_control_config_errors_total{kind=\"VirtualService\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert_eq!(get(mc.metrics, "/readyz").await.0, 200);
    let (st, body) = get(mc.metrics, &path).await;
    assert_eq!(st, 200);
    assert!(
        routes(&Resource::from_json(body.as_bytes()).unwrap()) >= 1,
        "{body}"
    );
}
