//! The serving machinery against a real API server (kube-local through KUBECONFIG; fails
//! without it), with a test translation (`support::ServicesOnly`: Services only) so that
//! it does not wait for the real one: real watchers, debounce, snapshot builds, the gRPC
//! stream, ACK/NACK, unsubscribe, several proxies, Events for bad objects, metrics.
//! Each test runs its own in-process server that looks at the test's namespace only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_config::Resource;
use mesh_config::wire::{Node, StreamRequest};
use mesh_control::serve::{Bound, Config};
use mesh_control::translate::MeshSettings;
use support::{
    INVALID_LABEL, Namespace, Proxy, ServicesOnly, get, get_until, keys, kubeconfig, metric,
    resource, service_yaml,
};
use tokio::sync::oneshot;

/// The debounce of these servers: long enough to tell "at once" from "after the debounce",
/// and for the API server to take the three objects of one `kubectl apply` within one
/// quiet period on a loaded machine (at 400 ms a burst was split 2 times in 7 under heavy
/// parallel load).
const DEBOUNCE: Duration = Duration::from_millis(1000);

struct Server {
    plaintext: SocketAddr,
    metrics: SocketAddr,
    _stop: oneshot::Sender<()>,
}

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,mesh_control=debug")
        .with_test_writer()
        .try_init();
}

/// An in-process server whose translation sees only `ns`; ready when this returns.
async fn server(ns: &str) -> Server {
    init_log();
    let _ = kubeconfig();
    let client = kube::Client::try_default()
        .await
        .expect("kube client from KUBECONFIG");
    let bound = Bound::bind(Config {
        plaintext_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        debounce: DEBOUNCE,
        crd_interval: Duration::from_secs(5),
        settings: MeshSettings::default(),
    })
    .await
    .unwrap();
    let (plaintext, metrics) = (bound.plaintext_addr, bound.metrics_addr);
    let (stop, stopped) = oneshot::channel::<()>();
    let translator = Arc::new(ServicesOnly {
        namespace: ns.to_owned(),
    });
    tokio::spawn(async move {
        bound
            .serve_with(client, translator, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let (status, body) =
        get_until(metrics, "/readyz", Duration::from_secs(30), |s, _| s == 200).await;
    assert_eq!(status, 200, "not ready: {body}");
    Server {
        plaintext,
        metrics,
        _stop: stop,
    }
}

/// Waits until the server resolves `key` (for a proxy in `ns`) to a Service matching `ok`.
async fn wait_config(s: &Server, ns: &str, key: &str, ok: impl Fn(&Resource) -> bool) {
    let path = format!("/debug/config?proxy={ns}/waiter&key={key}");
    let (status, body) = get_until(s.metrics, &path, Duration::from_secs(10), |st, b| {
        st == 200 && Resource::from_json(b.as_bytes()).is_ok_and(|r| ok(&r))
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        ok(&Resource::from_json(body.as_bytes()).unwrap()),
        "{key}: {body}"
    );
}

fn ports(r: &Resource) -> Vec<u16> {
    match r {
        Resource::Service(s) => s.ports.iter().map(|p| p.port).collect(),
        _ => vec![],
    }
}

fn add_port(ns: &Namespace, svc: &str, name: &str, port: u16) {
    let patch = format!(
        r#"[{{"op":"add","path":"/spec/ports/-","value":{{"name":"{name}","port":{port}}}}}]"#
    );
    ns.kubectl(&["patch", "service", svc, "--type=json", "-p", &patch]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_subscriptions_at_once_and_pushes_only_what_changed() {
    let ns = Namespace::new(&kubeconfig(), "mc-stream");
    let n = ns.name.clone();
    ns.apply(&format!(
        "{}---\n{}",
        service_yaml("a", &[("http", 80)]),
        service_yaml("b", &[("http", 80)])
    ));
    let s = server(&n).await;
    wait_config(&s, &n, &format!("host/b.{n}"), |r| ports(r) == [80]).await;

    let a = format!("host/a.{n}.svc.cluster.local");
    let b = format!("host/b.{n}");
    let outside = "addr/192.0.2.1";
    let started = Instant::now();
    let mut p = Proxy::connect(s.plaintext, &n, "client-1", &[&a, &b, outside]).await;
    let r1 = p.next(Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < DEBOUNCE,
        "the first answer must not wait for the debounce: {:?}",
        started.elapsed()
    );
    assert_eq!(keys(&r1), {
        let mut k = vec![a.clone(), b.clone(), outside.to_owned()];
        k.sort();
        k
    });
    assert_eq!(r1.version, 1);
    assert!(!r1.nonce.is_empty());
    assert_eq!(ports(&resource(&r1, &a)), [80]);
    assert_eq!(resource(&r1, outside), Resource::NotFound);
    p.ack(&r1).await;

    // A later subscription is answered at once too, alone.
    let cluster_ip = ns.kubectl(&["get", "service", "b", "-o", "jsonpath={.spec.clusterIP}"]);
    let by_ip = format!("addr/{}", cluster_ip.trim());
    let t = Instant::now();
    p.subscribe(&[&by_ip]).await;
    let r2 = p.next(Duration::from_secs(5)).await;
    assert!(t.elapsed() < DEBOUNCE, "{:?}", t.elapsed());
    assert_eq!(keys(&r2), [by_ip.as_str()]);
    assert!(matches!(resource(&r2, &by_ip), Resource::Service(ref svc) if svc.name == "b"));
    assert!(r2.version > r1.version);
    p.ack(&r2).await;

    // One change: one push, only the changed key. (How fast is bench/control's push
    // latency, measured; here the kubectl process alone can take a second on a busy
    // machine.)
    let t = Instant::now();
    add_port(&ns, "a", "http-alt", 81);
    let r3 = p.next(Duration::from_secs(10)).await;
    eprintln!("push {:?} after kubectl started", t.elapsed());
    assert_eq!(keys(&r3), [a.as_str()]);
    assert_eq!(ports(&resource(&r3, &a)), [80, 81]);
    // The version of unchanged content is its hash: the same as before.
    let v = |r: &mesh_config::wire::StreamResponse, k: &str| {
        r.resources
            .iter()
            .find(|u| u.key == k)
            .unwrap()
            .version
            .clone()
    };
    assert_ne!(v(&r3, &a), v(&r1, &a));
    p.ack(&r3).await;
    p.quiet(DEBOUNCE * 2).await;

    // A burst (three Services in one apply, one of them ours) is one build and one push.
    let builds_before = metric(
        &get(s.metrics, "/metrics").await.1,
        "mesh_control_snapshot_builds_total",
    )
    .unwrap();
    ns.apply(&format!(
        "{}---\n{}---\n{}",
        service_yaml("b", &[("http", 80), ("grpc", 90)]),
        service_yaml("c1", &[("http", 80)]),
        service_yaml("c2", &[("http", 80)])
    ));
    let r4 = p.next(Duration::from_secs(3)).await;
    assert_eq!(keys(&r4), {
        let mut k = vec![b.clone(), by_ip.clone()];
        k.sort();
        k
    });
    p.ack(&r4).await;
    p.quiet(DEBOUNCE * 2).await;
    let m = get(s.metrics, "/metrics").await.1;
    let builds = metric(&m, "mesh_control_snapshot_builds_total").unwrap();
    assert!(
        builds - builds_before <= 2.0,
        "{builds_before} -> {builds}\n{m}"
    );

    // What /debug says.
    let (st, body) = get(s.metrics, "/debug/proxies").await;
    assert_eq!(st, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let me = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["proxy"] == format!("{n}/client-1"))
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(me["lastAckedVersion"], r4.version, "{body}");
    assert_eq!(me["keys"].as_array().unwrap().len(), 4, "{body}");
    let (st, body) = get(
        s.metrics,
        &format!("/debug/config?proxy={n}/client-1&key={a}"),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        ports(&Resource::from_json(body.as_bytes()).unwrap()),
        [80, 81]
    );
    assert_eq!(
        get(s.metrics, "/debug/config?proxy=x&key=host/a").await.0,
        400
    );
    assert_eq!(
        get(s.metrics, "/debug/config?proxy=a/b&key=nope").await.0,
        400
    );

    // Metrics.
    let m = get(s.metrics, "/metrics").await.1;
    assert_eq!(
        metric(&m, "mesh_control_connected_proxies"),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(&m, "mesh_control_pushes_total").unwrap() >= 4.0,
        "{m}"
    );
    assert!(
        metric(&m, "mesh_control_push_duration_seconds_count").unwrap() >= 2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "mesh_control_config_rejected_total"),
        Some(0.0),
        "{m}"
    );
    drop(p);
    let (_, m) = get_until(s.metrics, "/metrics", Duration::from_secs(5), |_, m| {
        metric(m, "mesh_control_connected_proxies") == Some(0.0)
    })
    .await;
    assert_eq!(
        metric(&m, "mesh_control_connected_proxies"),
        Some(0.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_content_is_not_resent_until_it_changes() {
    let ns = Namespace::new(&kubeconfig(), "mc-nack");
    let n = ns.name.clone();
    ns.apply(&service_yaml("c", &[("http", 80)]));
    let s = server(&n).await;
    let c = format!("host/c.{n}");
    wait_config(&s, &n, &c, |r| ports(r) == [80]).await;
    let mut p = Proxy::connect(s.plaintext, &n, "nacker", &[&c]).await;
    let mut q = Proxy::connect(s.plaintext, &n, "acker", &[&c]).await;
    let r1 = p.next(Duration::from_secs(5)).await;
    p.ack(&r1).await;
    let q1 = q.next(Duration::from_secs(5)).await;
    q.ack(&q1).await;

    add_port(&ns, "c", "http-2", 82);
    let r2 = p.next(Duration::from_secs(3)).await;
    assert_eq!(ports(&resource(&r2, &c)), [80, 82]);
    p.nack(&r2, "test: refused").await;
    let q2 = q.next(Duration::from_secs(3)).await;
    q.ack(&q2).await;
    let (_, m) = get_until(s.metrics, "/metrics", Duration::from_secs(3), |_, m| {
        metric(m, "mesh_control_config_rejected_total") == Some(1.0)
    })
    .await;
    assert_eq!(
        metric(&m, "mesh_control_config_rejected_total"),
        Some(1.0),
        "{m}"
    );

    // Another object changes: a new snapshot, the same content for c: not resent.
    ns.apply(&service_yaml("other", &[("http", 80)]));
    p.quiet(DEBOUNCE * 3).await;
    q.quiet(Duration::from_millis(100)).await;

    // New content is sent again, to both.
    add_port(&ns, "c", "http-3", 83);
    let r3 = p.next(Duration::from_secs(3)).await;
    assert_eq!(ports(&resource(&r3, &c)), [80, 82, 83]);
    assert!(r3.version > r2.version);
    p.ack(&r3).await;
    let q3 = q.next(Duration::from_secs(3)).await;
    assert_eq!(keys(&q3), [c.as_str()]);

    // The ACK is on its way: wait until mesh-control has taken it.
    let acked = |b: &str| {
        serde_json::from_str::<serde_json::Value>(b).is_ok_and(|l| {
            l.as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["proxy"] == format!("{n}/nacker") && x["lastAckedVersion"] == r3.version
                })
            })
        })
    };
    let (_, body) = get_until(
        s.metrics,
        "/debug/proxies",
        Duration::from_secs(3),
        |_, b| acked(b),
    )
    .await;
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let nacker = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["proxy"] == format!("{n}/nacker"))
        .unwrap();
    assert_eq!(nacker["lastAckedVersion"], r3.version, "{body}");
    assert!(nacker["keys"][0]["rejected"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_bad_keys_and_several_proxies() {
    let ns = Namespace::new(&kubeconfig(), "mc-subs");
    let n = ns.name.clone();
    ns.apply(&format!(
        "{}---\n{}",
        service_yaml("e", &[("http", 80)]),
        service_yaml("f", &[("http", 80)])
    ));
    let s = server(&n).await;
    let e = format!("host/e.{n}");
    let f = format!("host/f.{n}");
    wait_config(&s, &n, &f, |r| ports(r) == [80]).await;

    // A bad key is ignored; the stream goes on.
    let mut p1 = Proxy::connect(s.plaintext, &n, "p1", &[&e, "svc/nope", &f]).await;
    let r = p1.next(Duration::from_secs(5)).await;
    let mut want = vec![e.clone(), f.clone()];
    want.sort();
    assert_eq!(keys(&r), want);
    p1.ack(&r).await;
    // Another namespace's proxy, the FQDN form.
    let f_fqdn = format!("host/f.{n}.svc.cluster.local");
    let mut p2 = Proxy::connect(s.plaintext, "elsewhere", "p2", &[&f_fqdn]).await;
    let r = p2.next(Duration::from_secs(5)).await;
    assert_eq!(ports(&resource(&r, &f_fqdn)), [80]);
    p2.ack(&r).await;
    let m = get(s.metrics, "/metrics").await.1;
    assert_eq!(
        metric(&m, "mesh_control_connected_proxies"),
        Some(2.0),
        "{m}"
    );

    // f changes: both get it; only f.
    add_port(&ns, "f", "http-2", 81);
    let r1 = p1.next(Duration::from_secs(3)).await;
    assert_eq!(keys(&r1), [f.as_str()]);
    let r2 = p2.next(Duration::from_secs(3)).await;
    assert_eq!(keys(&r2), [f_fqdn.as_str()]);
    p1.ack(&r1).await;
    p2.ack(&r2).await;

    // e changes after p1 unsubscribed: nothing.
    p1.unsubscribe(&[&e]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    add_port(&ns, "e", "http-2", 81);
    p1.quiet(DEBOUNCE * 3).await;
    p2.quiet(Duration::from_millis(100)).await;
    // Subscribed again: answered at once with what is there now.
    p1.subscribe(&[&e]).await;
    let r = p1.next(Duration::from_secs(2)).await;
    assert_eq!(keys(&r), [e.as_str()]);
    assert_eq!(ports(&resource(&r, &e)), [80, 81]);

    // A deleted Service: its keys become NotFound.
    ns.kubectl(&["delete", "service", "f"]);
    let r1 = p1.next(Duration::from_secs(3)).await;
    assert_eq!(resource(&r1, &f), Resource::NotFound);
    let r2 = p2.next(Duration::from_secs(3)).await;
    assert_eq!(resource(&r2, &f_fqdn), Resource::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_request_without_node_is_refused() {
    let ns = Namespace::new(&kubeconfig(), "mc-node");
    let s = server(&ns.name).await;
    let first = StreamRequest {
        subscribe: vec!["addr/10.0.0.1".into()],
        ..Default::default()
    };
    let mut p = match Proxy::open(s.plaintext, first, "", "").await {
        Ok(p) => p,
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
            return;
        }
    };
    let err = p.next_or_end(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("node"), "{err}");
    // A good stream still works.
    let mut ok = Proxy::open(
        s.plaintext,
        StreamRequest {
            node: Some(Node {
                pod_name: "p".into(),
                namespace: ns.name.clone(),
                ip: String::new(),
                proxy_version: String::new(),
            }),
            subscribe: vec!["addr/10.0.0.1".into()],
            ..Default::default()
        },
        &ns.name,
        "p",
    )
    .await
    .unwrap();
    assert_eq!(
        keys(&ok.next(Duration::from_secs(5)).await),
        ["addr/10.0.0.1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_object_is_reported_once_as_an_event_and_the_rest_is_served() {
    let kc = kubeconfig();
    let ns = Namespace::new(&kc, "mc-bad");
    let n = ns.name.clone();
    let bad = service_yaml("bad", &[("http", 80)]).replace(
        "metadata:\n  name: bad\n",
        &format!("metadata:\n  name: bad\n  labels:\n    {INVALID_LABEL}: \"true\"\n"),
    );
    ns.apply(&format!(
        "{bad}---\n{}",
        service_yaml("good", &[("http", 80)])
    ));
    let s = server(&n).await;
    let good = format!("host/good.{n}");
    wait_config(&s, &n, &good, |r| ports(r) == [80]).await;
    let mut p = Proxy::connect(s.plaintext, &n, "p", &[&good, &format!("host/bad.{n}")]).await;
    let r = p.next(Duration::from_secs(5)).await;
    assert_eq!(ports(&resource(&r, &good)), [80]);
    assert_eq!(resource(&r, &format!("host/bad.{n}")), Resource::NotFound);

    let events = || -> Vec<serde_json::Value> {
        let out = ns.kubectl(&["get", "events", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == "InvalidConfig")
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut evs = events();
    while evs.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        evs = events();
    }
    assert_eq!(evs.len(), 1, "{evs:#?}");
    let ev = &evs[0];
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["involvedObject"]["kind"], "Service");
    assert_eq!(ev["involvedObject"]["name"], "bad");
    assert_eq!(ev["source"]["component"], "mesh-control");
    assert!(
        ev["message"].as_str().unwrap().contains("marked invalid"),
        "{ev}"
    );

    // More builds (another object changes): no second Event, counted once.
    add_port(&ns, "good", "http-2", 81);
    let r = p.next(Duration::from_secs(3)).await;
    assert_eq!(keys(&r), [good.as_str()]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events().len(), 1);
    let m = get(s.metrics, "/metrics").await.1;
    assert_eq!(
        metric(&m, "mesh_control_config_errors_total{kind=\"Service\"}"),
        Some(1.0),
        "{m}"
    );
    // A new generation of the bad object (its labels change): a new Event.
    ns.kubectl(&["label", "service", "bad", "touched=yes"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while events().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(events().len(), 2);
    assert_eq!(get(s.metrics, "/readyz").await.0, 200);
}
