//! Our CRDs (deploy/crds) on Kubernetes v1.20, and mesh-control following them as they
//! come and go. Runs on a private kube-local instance (own etcd and API server on free
//! loopback ports, empty, stopped after): the test installs and deletes cluster-scoped
//! CRDs, which other tests on the shared API server rely on. Needs kube-local set up and
//! KUBECONFIG set (fails otherwise, saying how).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use mesh_config::Resource;
use serde_json::Value;
use support::{
    MeshControl, PrivateCluster, Proxy, get, get_until, keys, kubectl, kubectl_try, repo_root,
    resource,
};

async fn objects(mc: &MeshControl) -> Value {
    let (st, body) = get(mc.metrics, "/debug/objects").await;
    assert_eq!(st, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn objects_until(mc: &MeshControl, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let (_, body) = get_until(
        mc.metrics,
        "/debug/objects",
        Duration::from_secs(15),
        |s, b| s == 200 && serde_json::from_str::<Value>(b).is_ok_and(|v| ok(&v)),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: {body}"));
    assert!(ok(&v), "{what}: {body}");
    v
}

fn vs(version: &str, name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/{version}
kind: VirtualService
metadata:
  name: {name}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {{prefix: /{name}}}
    route:
    - destination: {{host: reviews, subset: v1}}
      weight: 100
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_apply_on_v1_20_and_mesh_control_follows_them() {
    let cluster = PrivateCluster::start();
    let kc = cluster.kubeconfig.clone();
    let mc = MeshControl::spawn(&kc, &["--crd-discovery-interval", "300ms"]);

    // Ready without the CRDs; nothing Istio watched yet.
    let (st, body) = get_until(mc.metrics, "/readyz", Duration::from_secs(30), |s, _| {
        s == 200
    })
    .await;
    assert_eq!(st, 200, "{body}");
    let o = objects(&mc).await;
    assert_eq!(o["virtualServices"]["version"], Value::Null, "{o}");
    assert_eq!(o["destinationRules"]["version"], Value::Null, "{o}");
    assert_eq!(o["endpointSlicesVersion"], "v1beta1", "{o}");

    // Our CRDs apply on v1.20 (kubectl 1.20's client-side validation included).
    let dir = repo_root().join("deploy/crds");
    kubectl(&kc, &["apply", "-k", dir.to_str().unwrap()], None);
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
    objects_until(&mc, "CRDs seen", |o| {
        o["virtualServices"]["version"] == "v1" && o["destinationRules"]["version"] == "v1"
    })
    .await;

    // Objects written in every served version are all seen.
    kubectl(&kc, &["create", "namespace", "bookinfo"], None);
    let mut yaml = [
        vs("v1alpha3", "vs-a3"),
        vs("v1beta1", "vs-b1"),
        vs("v1", "vs-v1"),
    ]
    .join("---\n");
    yaml.push_str(
        "---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - name: v1
    labels: {version: v1}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: reviews-1
  labels: {kubernetes.io/service-name: reviews}
addressType: IPv4
endpoints:
- addresses: [10.1.0.5]
  conditions: {ready: true}
  topology: {kubernetes.io/hostname: node-1}
ports:
- {name: http, port: 9080, protocol: TCP}
",
    );
    kubectl(&kc, &["-n", "bookinfo", "apply", "-f", "-"], Some(&yaml));
    let o = objects_until(&mc, "every version seen", |o| {
        o["virtualServices"]["objects"]
            .as_array()
            .is_some_and(|a| a.len() == 3)
            && o["destinationRules"]["objects"]
                .as_array()
                .is_some_and(|a| a.len() == 1)
    })
    .await;
    assert_eq!(
        o["virtualServices"]["objects"],
        serde_json::json!(["bookinfo/vs-a3", "bookinfo/vs-b1", "bookinfo/vs-v1"]),
        "{o}"
    );
    assert!(o["counts"]["endpointSlices"].as_u64().unwrap() >= 1, "{o}");
    // Read back in another version: one schema, the same object.
    let got = kubectl(
        &kc,
        &[
            "-n",
            "bookinfo",
            "get",
            "virtualservices.v1beta1.networking.istio.io",
            "vs-a3",
            "-o",
            "json",
        ],
        None,
    );
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["spec"]["http"][0]["route"][0]["weight"], 100, "{got}");

    // Restarted, mesh-control is ready only once it has listed the Istio kinds too: the
    // first answer a proxy gets at once is the one it had before, the VirtualService's
    // routes and all (never a moment of a config without them, or without the policies).
    kubectl(
        &kc,
        &["-n", "bookinfo", "apply", "-f", "-"],
        Some(&support::service_yaml("reviews", &[("http", 9080)])),
    );
    let mut p = Proxy::connect(mc.plaintext, "bookinfo", "client", &["host/reviews"]).await;
    let before = loop {
        let r = p.next(Duration::from_secs(10)).await;
        p.ack(&r).await;
        if let Resource::Service(svc) = resource(&r, "host/reviews") {
            break svc;
        }
    };
    // The oldest VirtualService for the host is the sidecars' (Istio's rule; ties by
    // name): its route is there.
    let bound: Vec<&str> = (before.ports.iter())
        .flat_map(|port| &port.routes)
        .map(|r| r.virtual_service.as_str())
        .collect();
    assert_eq!(bound, ["bookinfo/vs-a3"], "{before:?}");
    drop(p);
    assert!(mc.stop().success());
    let mc = MeshControl::spawn(&kc, &["--crd-discovery-interval", "300ms"]);
    get_until(mc.metrics, "/readyz", Duration::from_secs(30), |s, _| {
        s == 200
    })
    .await;
    let mut p = Proxy::connect(mc.plaintext, "bookinfo", "client", &["host/reviews"]).await;
    let first = p.next(Duration::from_secs(5)).await;
    assert_eq!(
        resource(&first, "host/reviews"),
        Resource::Service(before),
        "the first answer after the restart"
    );
    drop(p);

    // The structural schema refuses what Istio's refuses at the top level...
    let e = kubectl_try(
        &kc,
        &["-n", "bookinfo", "apply", "--validate=false", "-f", "-"],
        Some("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: nohost}\nspec: {subsets: []}\n"),
    )
    .unwrap_err();
    assert!(e.contains("host"), "{e}");
    // ...and keeps what it leaves to mesh-control: a bad rule is accepted by the API
    // server, and mesh-control goes on serving.
    kubectl(
        &kc,
        &["-n", "bookinfo", "apply", "-f", "-"],
        Some(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec:\n  hosts: [reviews]\n  http:\n  - match:\n    - uri: {regex: \"(\"}\n    route: [{destination: {host: reviews}}]\n    timeout: not-a-duration\n",
        ),
    );
    objects_until(&mc, "bad VS seen", |o| {
        o["virtualServices"]["objects"]
            .as_array()
            .is_some_and(|a| a.len() == 4)
    })
    .await;
    assert_eq!(get(mc.metrics, "/readyz").await.0, 200);
    let mut p = Proxy::connect(mc.plaintext, "bookinfo", "client", &["host/reviews"]).await;
    assert_eq!(
        keys(&p.next(Duration::from_secs(5)).await),
        ["host/reviews"]
    );

    // A CRD that goes away stops its watcher; mesh-control stays up and ready.
    kubectl(
        &kc,
        &["delete", "crd", "destinationrules.networking.istio.io"],
        None,
    );
    objects_until(&mc, "DR CRD gone", |o| {
        o["destinationRules"]["version"].is_null()
    })
    .await;
    assert_eq!(get(mc.metrics, "/readyz").await.0, 200);
    let o = objects(&mc).await;
    assert_eq!(o["virtualServices"]["version"], "v1", "{o}");
    drop(p);
    assert!(mc.stop().success());
    drop(cluster);
}
