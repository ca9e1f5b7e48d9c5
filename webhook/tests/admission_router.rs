//! The admission router without a socket (tower `oneshot`), on AdmissionReview JSON recorded
//! in webhook/testdata/admission/. Patches are applied with the independent applier in
//! server_support, never with the json-patch crate the server uses.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use mesh_webhook::admission::{AppState, NativeMode, server};
use mesh_webhook::config::InjectConfig;
use serde_json::Value;
use server_support::{apply_patch, names, patch_of, response_of};
use tower::ServiceExt as _;

fn recorded(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/admission")
        .join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn state(native: NativeMode, limit: usize) -> Arc<AppState> {
    let s = Arc::new(AppState::new(InjectConfig::default(), Some(native), limit));
    s.set_tls_loaded();
    s
}

async fn call(
    s: &Arc<AppState>,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    let resp = server::router(s.clone())
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

async fn review(s: &Arc<AppState>, rev: &Value) -> Value {
    let (status, body) = call(
        s,
        "POST",
        "/inject",
        Some("application/json"),
        serde_json::to_vec(rev).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    response_of(&answer, rev["request"]["uid"].as_str().unwrap())
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn plain_pod_gets_init_and_proxy_and_annotations_created() {
    let s = state(NativeMode::False, 1 << 20);
    let rev = recorded("pod-create.json");
    let pod = &rev["request"]["object"];
    assert!(
        pod["metadata"].get("annotations").is_none() && pod["spec"].get("initContainers").is_none()
    );
    let resp = review(&s, &rev).await;
    let patch = patch_of(&resp).expect("a patch");
    let out = apply_patch(pod, &patch).unwrap();
    assert_eq!(names(&out, "initContainers"), ["istio-init"]);
    assert_eq!(names(&out, "containers"), ["productpage", "istio-proxy"]);
    let ann = &out["metadata"]["annotations"];
    assert!(ann["sidecar.istio.io/status"].is_string(), "{ann}");
    assert_eq!(
        ann["kubectl.kubernetes.io/default-container"],
        "productpage"
    );
    // Nothing the server does not model is lost.
    assert_eq!(
        out["metadata"]["managedFields"],
        pod["metadata"]["managedFields"]
    );
    assert_eq!(out["spec"]["tolerations"], pod["spec"]["tolerations"]);
    let init = &out["spec"]["initContainers"][0];
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.windows(2).any(|w| w == ["-u", "1337"]), "{args:?}");
    let proxy = &out["spec"]["containers"][1];
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
}

#[tokio::test]
async fn annotated_pod_patch_escapes_the_slash_and_keeps_user_init_first() {
    let s = state(NativeMode::False, 1 << 20);
    let rev = recorded("pod-create-annotated-init.json");
    let resp = review(&s, &rev).await;
    let patch = patch_of(&resp).expect("a patch");
    let paths: Vec<&str> = patch
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.iter().any(|p| p.contains("sidecar.istio.io~1status")),
        "status annotation path must be escaped: {paths:?}"
    );
    let out = apply_patch(&rev["request"]["object"], &patch).unwrap();
    assert_eq!(names(&out, "initContainers"), ["migrate", "istio-init"]);
    assert_eq!(out["metadata"]["annotations"]["example.com/team"], "books");
}

#[tokio::test]
async fn native_sidecar_mode_puts_proxy_in_init_containers() {
    let s = state(NativeMode::True, 1 << 20);
    let rev = recorded("pod-create-annotated-init.json");
    let out = apply_patch(
        &rev["request"]["object"],
        &patch_of(&review(&s, &rev).await).unwrap(),
    )
    .unwrap();
    let init = names(&out, "initContainers");
    assert_eq!(
        init,
        ["istio-init", "istio-proxy", "migrate"],
        "native: init + proxy at the head"
    );
    assert_eq!(out["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(names(&out, "containers"), ["productpage"]);
}

#[tokio::test]
async fn reinjecting_the_result_changes_nothing() {
    let s = state(NativeMode::False, 1 << 20);
    let mut rev = recorded("pod-create.json");
    let once = apply_patch(
        &rev["request"]["object"],
        &patch_of(&review(&s, &rev).await).unwrap(),
    )
    .unwrap();
    rev["request"]["object"] = once;
    rev["request"]["uid"] = "again".into();
    assert_eq!(
        patch_of(&review(&s, &rev).await),
        None,
        "already injected with the same config"
    );
}

/// The istio/gateway chart's pod as the API server hands it to the webhook (defaulted:
/// `imagePullPolicy: Always` for `image: auto`, canonical quantities, the token volume)
/// is injected as a gateway, even by a webhook that injects native sidecars, and exactly
/// as kube-inject injects the same pod.
#[tokio::test]
async fn gateway_pod_is_injected_as_a_gateway_as_kube_inject_does() {
    let s = state(NativeMode::True, 1 << 20);
    let rev = recorded("pod-create-gateway.json");
    let pod = &rev["request"]["object"];
    let out = apply_patch(pod, &patch_of(&review(&s, &rev).await).expect("a patch")).unwrap();
    assert!(out["spec"].get("initContainers").is_none(), "{out:#}");
    assert_eq!(names(&out, "containers"), ["istio-proxy"]);
    let proxy = &out["spec"]["containers"][0];
    assert_eq!(proxy["image"], InjectConfig::default().proxy_image);
    assert!(proxy.get("imagePullPolicy").is_none(), "{proxy:#}");
    assert!(proxy.get("restartPolicy").is_none(), "{proxy:#}");
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["--role", "gateway"], "{args:?}");
    assert!(args.contains(&"--root-cert"), "{args:?}");
    let ports: Vec<i64> = proxy["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [15090, 15021]);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert!(
        proxy["securityContext"]["capabilities"]
            .get("add")
            .is_none()
    );
    // The chart's own fields win or stay: its resources, its service-account mount, the
    // API server's defaults, its pod-level sysctl, its prometheus annotations.
    assert_eq!(proxy["resources"]["limits"]["cpu"], "2");
    assert_eq!(proxy["terminationMessagePath"], "/dev/termination-log");
    let mounts: Vec<&str> = proxy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounts,
        ["istio-token", "istiod-ca-cert", "kube-api-access-7qz4m"]
    );
    assert_eq!(
        out["spec"]["securityContext"],
        pod["spec"]["securityContext"]
    );
    let ann = &out["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/port"], "15020");
    assert!(ann.get("kubectl.kubernetes.io/default-container").is_none());
    assert!(
        out["metadata"]["labels"]
            .get("security.istio.io/tlsMode")
            .is_none()
    );

    // kube-inject of the same pod (a Pod document: the workload is derived as the
    // webhook derives it) gives exactly the same pod (up to key order, which this test's
    // own patch applier does not keep).
    let cfg = InjectConfig::default();
    let text = mesh_webhook::yaml::to_yaml(pod).unwrap();
    let mode = mesh_webhook::kube_inject::Mode::Inject {
        cfg: &cfg,
        native_sidecars: true,
    };
    let offline = mesh_webhook::kube_inject::rewrite(&text, mode)
        .unwrap()
        .output;
    let docs = mesh_webhook::yaml::split_documents(&offline);
    assert_eq!(docs.len(), 1, "{offline}");
    let offline = mesh_webhook::yaml::parse_document(&docs[0])
        .unwrap()
        .unwrap();
    assert_eq!(
        offline, out,
        "webhook and kube-inject disagree on the gateway pod"
    );

    // And the injected pod reviewed again is left alone.
    let mut again = rev.clone();
    again["request"]["object"] = out;
    again["request"]["uid"] = "again".into();
    assert_eq!(patch_of(&review(&s, &again).await), None);
}

#[tokio::test]
async fn user_istio_proxy_is_merged_not_duplicated() {
    let s = state(NativeMode::False, 1 << 20);
    let rev = recorded("pod-create-proxy-override.json");
    let out = apply_patch(
        &rev["request"]["object"],
        &patch_of(&review(&s, &rev).await).unwrap(),
    )
    .unwrap();
    assert_eq!(
        names(&out, "containers")
            .iter()
            .filter(|n| *n == "istio-proxy")
            .count(),
        1
    );
    let proxy = out["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .unwrap();
    assert_eq!(proxy["resources"]["requests"]["cpu"], "250m", "{proxy}");
    assert!(
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "EXTRA"),
        "{proxy}"
    );
}

#[tokio::test]
async fn bad_annotations_deny_naming_the_annotation() {
    let s = state(NativeMode::False, 1 << 20);
    for (file, annotation) in [
        (
            "pod-create-bad-cidr.json",
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
        ),
        (
            "pod-create-star-exclude.json",
            "traffic.sidecar.istio.io/excludeInboundPorts",
        ),
    ] {
        let resp = review(&s, &recorded(file)).await;
        assert_eq!(resp["allowed"], false, "{file}: {resp}");
        assert!(
            resp.get("patch").is_none(),
            "{file}: no patch with a denial"
        );
        let msg = resp["status"]["message"].as_str().unwrap();
        assert!(msg.contains(annotation), "{file}: {msg}");
        assert_eq!(resp["status"]["code"], 400);
    }
    let (_, m) = call(&s, "GET", "/metrics", None, vec![]).await;
    let m = String::from_utf8(m).unwrap();
    assert_eq!(
        metric(&m, "sidecar_injection_failure_total{type=\"inject\"}"),
        2
    );
    assert_eq!(
        metric(&m, "sidecar_injection_requests_total{result=\"denied\"}"),
        2
    );
}

#[tokio::test]
async fn skips_and_non_pod_creates_are_allowed_untouched() {
    let s = state(NativeMode::False, 1 << 20);
    for file in [
        "pod-create-opt-out.json",
        "pod-create-host-network.json",
        "pod-create-kube-system.json",
    ] {
        assert_eq!(patch_of(&review(&s, &recorded(file)).await), None, "{file}");
    }
    for file in [
        "pod-update.json",
        "deployment-create.json",
        "pod-ephemeral-update.json",
    ] {
        assert_eq!(patch_of(&review(&s, &recorded(file)).await), None, "{file}");
    }
    let (_, m) = call(&s, "GET", "/metrics", None, vec![]).await;
    let m = String::from_utf8(m).unwrap();
    assert_eq!(
        metric(&m, "sidecar_injection_skip_total{reason=\"policy\"}"),
        3
    );
    assert_eq!(
        metric(
            &m,
            "sidecar_injection_skip_total{reason=\"not_pod_create\"}"
        ),
        3
    );
    assert_eq!(
        metric(&m, "sidecar_injection_requests_total{result=\"allowed\"}"),
        6
    );
    assert_eq!(metric(&m, "sidecar_injection_success_total"), 0);
    assert_eq!(metric(&m, "sidecar_injection_time_seconds_count"), 6);
}

#[tokio::test]
async fn bad_requests_get_400_415_413_and_the_router_keeps_working() {
    let s = state(NativeMode::False, 64 * 1024);
    let good = serde_json::to_vec(&recorded("pod-create.json")).unwrap();

    let (st, body) = call(
        &s,
        "POST",
        "/inject",
        Some("application/json"),
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not valid AdmissionReview JSON"));

    let wrong_version = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#;
    let (st, body) = call(
        &s,
        "POST",
        "/inject",
        Some("application/json"),
        wrong_version.to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("v1beta1"));

    let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
    assert_eq!(
        call(
            &s,
            "POST",
            "/inject",
            Some("application/json"),
            no_request.to_vec()
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );

    for ct in [Some("text/plain"), Some("application/yaml"), None] {
        let (st, _) = call(&s, "POST", "/inject", ct, good.clone()).await;
        assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
    }
    let (st, _) = call(
        &s,
        "POST",
        "/inject",
        Some("application/json; charset=utf-8"),
        good.clone(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "parameters on the media type are fine");

    let mut big = good.clone();
    big.pop();
    big.extend(std::iter::repeat_n(b' ', 70 * 1024));
    big.push(b'}');
    let (st, _) = call(&s, "POST", "/inject", Some("application/json"), big).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);

    let (st, body) = call(&s, "POST", "/inject", Some("application/json"), good).await;
    assert_eq!(st, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        patch_of(&response_of(
            &answer,
            "3f1e2d4c-0001-4b5a-9c8d-7e6f5a4b3c2d"
        ))
        .is_some()
    );

    assert_eq!(
        call(&s, "GET", "/inject", None, vec![]).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let (_, m) = call(&s, "GET", "/metrics", None, vec![]).await;
    let m = String::from_utf8(m).unwrap();
    assert_eq!(
        metric(
            &m,
            "sidecar_injection_requests_total{result=\"bad_request\"}"
        ),
        3
    );
    assert_eq!(
        metric(
            &m,
            "sidecar_injection_requests_total{result=\"unsupported_media_type\"}"
        ),
        3
    );
    assert_eq!(
        metric(&m, "sidecar_injection_requests_total{result=\"too_large\"}"),
        1
    );
    assert_eq!(metric(&m, "sidecar_injection_success_total"), 2);
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints() {
    let s = Arc::new(AppState::new(InjectConfig::default(), None, 1024));
    assert_eq!(
        call(&s, "GET", "/healthz", None, vec![]).await.0,
        StatusCode::OK
    );
    let (st, body) = call(&s, "GET", "/readyz", None, vec![]).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("certificate"));
    s.set_tls_loaded();
    let (st, body) = call(&s, "GET", "/readyz", None, vec![]).await;
    assert_eq!(
        st,
        StatusCode::SERVICE_UNAVAILABLE,
        "auto mode waits for the version probe"
    );
    assert!(String::from_utf8_lossy(&body).contains("version"));
    s.set_probe_settled();
    assert_eq!(
        call(&s, "GET", "/readyz", None, vec![]).await.0,
        StatusCode::OK
    );
    let (st, body) = call(&s, "GET", "/metrics", None, vec![]).await;
    assert_eq!(st, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    for name in [
        "sidecar_injection_requests_total",
        "sidecar_injection_success_total",
        "sidecar_injection_skip_total",
        "sidecar_injection_failure_total",
        "sidecar_injection_time_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
}

/// From SIGTERM on, every answer closes its connection, so the API server's next
/// request dials again and reaches a ready replica instead of a connection that is
/// about to be closed under it.
#[tokio::test]
async fn answers_close_the_connection_once_shutting_down() {
    let s = state(NativeMode::False, 1024);
    let connection = |s: &Arc<AppState>, path: &'static str| {
        let s = s.clone();
        async move {
            let resp = server::router(s)
                .oneshot(Request::builder().uri(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            resp.headers()
                .get("connection")
                .map(|v| v.to_str().unwrap().to_owned())
        }
    };
    assert_eq!(connection(&s, "/healthz").await, None);
    s.set_shutting_down();
    for path in ["/healthz", "/readyz", "/metrics", "/inject"] {
        assert_eq!(
            connection(&s, path).await.as_deref(),
            Some("close"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn auto_mode_follows_what_the_cluster_supports() {
    use mesh_webhook::admission::state::ClusterSupport;
    let s = Arc::new(AppState::new(InjectConfig::default(), None, 1 << 20));
    s.set_tls_loaded();
    s.set_probe_settled();
    let rev = recorded("pod-create.json");
    let inject = |s: Arc<AppState>| {
        let rev = rev.clone();
        async move {
            let out = apply_patch(
                &rev["request"]["object"],
                &patch_of(&review(&s, &rev).await).unwrap(),
            )
            .unwrap();
            names(&out, "initContainers")
        }
    };
    // Default config says auto; unknown -> regular sidecars.
    assert_eq!(inject(s.clone()).await, ["istio-init"]);
    s.set_cluster_support(ClusterSupport::Native);
    assert_eq!(inject(s.clone()).await, ["istio-init", "istio-proxy"]);
    s.set_cluster_support(ClusterSupport::NotNative);
    assert_eq!(inject(s.clone()).await, ["istio-init"]);
}
#[test]
fn the_test_patch_applier_follows_rfc6902() {
    let doc = serde_json::json!({"foo": ["bar", "baz"], "a/b": 1, "m~n": 2});
    let p = serde_json::json!([
        {"op": "add", "path": "/foo/1", "value": "qux"},
        {"op": "add", "path": "/foo/-", "value": "end"},
        {"op": "replace", "path": "/a~1b", "value": 3},
        {"op": "remove", "path": "/m~0n"},
        {"op": "copy", "from": "/foo/0", "path": "/c"},
        {"op": "move", "from": "/c", "path": "/d"},
        {"op": "test", "path": "/d", "value": "bar"}
    ]);
    assert_eq!(
        server_support::apply_patch(&doc, &p).unwrap(),
        serde_json::json!({"foo": ["bar", "qux", "baz", "end"], "a/b": 3, "d": "bar"})
    );
    // Adding under a missing parent is an error, as RFC 6902 says.
    assert!(
        server_support::apply_patch(
            &doc,
            &serde_json::json!([{"op": "add", "path": "/x/y", "value": 1}])
        )
        .is_err()
    );
    assert!(
        server_support::apply_patch(
            &doc,
            &serde_json::json!([{"op": "remove", "path": "/foo/5"}])
        )
        .is_err()
    );
    assert!(
        server_support::apply_patch(
            &doc,
            &serde_json::json!([{"op": "test", "path": "/a~1b", "value": 2}])
        )
        .is_err()
    );
}

/// `proxy.istio.io/config`: the honoured fields are in the patch, what is not done comes
/// back as admission warnings (kubectl prints them); a bad field denies the pod naming the
/// annotation and the field; a pod without one gets no `warnings` key at all.
#[tokio::test]
async fn proxy_config_annotation_is_patched_warned_or_denied() {
    let s = state(NativeMode::False, 1 << 20);
    let plain = review(&s, &recorded("pod-create.json")).await;
    assert!(plain.get("warnings").is_none(), "{plain}");

    let with = |config: &str| {
        let mut rev = recorded("pod-create.json");
        rev["request"]["object"]["metadata"]["annotations"] =
            serde_json::json!({"proxy.istio.io/config": config});
        rev
    };
    let rev = with("concurrency: 3\nholdApplicationUntilProxyStarts: true\ntracing: {}\n");
    let resp = review(&s, &rev).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let warnings: Vec<&str> = resp["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings: {resp}"))
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    // The hold is honoured (the proxy first, a postStart hook): only tracing is warned of.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("proxy.istio.io/config: ignored"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("tracing"), "{warnings:?}");
    assert!(warnings.iter().all(|w| w.len() <= 256), "{warnings:?}");
    let out = apply_patch(&rev["request"]["object"], &patch_of(&resp).unwrap()).unwrap();
    let proxy = out["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .unwrap();
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--worker-threads", "3"]),
        "{args:?}"
    );

    let resp = review(&s, &with("concurrency: 65")).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("proxy.istio.io/config") && msg.contains("field concurrency"),
        "{msg}"
    );
    assert!(resp.get("warnings").is_none(), "{resp}");
}
