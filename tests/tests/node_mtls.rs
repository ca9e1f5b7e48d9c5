//! Workload identity and mutual TLS on a real node (issue #13): mesh-control's CA signs
//! every injected proxy's certificate after a TokenReview of its projected token, the
//! proxies originate and accept Istio mTLS between them, and PeerAuthentication,
//! DestinationRule `tls` and AuthorizationPolicy, applied with kubectl as Istio's YAML,
//! decide what crosses. What an observer on the pod link sees is captured with tcpdump
//! in the server pod's network namespace.
//!
//! The app is examples/bookstore/resilience/httpbin.yaml (httpbin, sleep) in an injected
//! namespace, plus `legacy`: the same client image in a namespace without injection (no
//! sidecar, so no DNS capture either: it calls httpbin's ClusterIP).
//!
//! - `mtls_between_sidecars_and_plaintext_from_legacy`: sleep → httpbin: 200, nothing of
//!   the request in clear on the link, and httpbin's sidecar reports
//!   `connection_security_policy="mutual_tls"` with sleep's SPIFFE id as
//!   `source_principal`; legacy → httpbin (PERMISSIVE, the default): 200, the request in
//!   clear, reported as `none`. httpbin's app reads sleep's certificate in
//!   `x-forwarded-client-cert` (`By`, `Hash`, `Subject`, `URI`, as Istio's sidecars
//!   write it), and no such header from legacy, whose forged one is dropped.
//! - `strict_port_level_and_destination_rule_disable`: PeerAuthentication STRICT in the
//!   namespace → legacy gets no answer, sleep still 200; a workload policy with
//!   `portLevelMtls` PERMISSIVE on httpbin's port → legacy answered again; back to
//!   PERMISSIVE, a DestinationRule `tls.mode: DISABLE` → sleep's requests cross in clear.
//! - `authorization_policy_by_principal_and_path`: ALLOW for sleep's principal on `/get`
//!   → sleep 200 on `/get`, 403 on `/status/200`; another injected client (its own
//!   ServiceAccount) 403; legacy (no principal) 403.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mesh_tests::kube_node::{
    KubeNode, PodInfo, TestNamespace, image, install_mesh, metric_sum, proxy_metrics, repo_file,
    report,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(240);
/// How long an applied object may take to reach the proxies.
const CONFIG: Duration = Duration::from_secs(20);
const REQUESTS: &str = "istio_requests_total";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The app in an injected namespace, and a client without a sidecar in another.
struct World {
    node: &'static KubeNode,
    ns: TestNamespace,
    legacy_ns: TestNamespace,
    server: PodInfo,
    sleep: PodInfo,
    legacy: String,
    cluster_ip: String,
}

fn legacy_manifest(name: &str, sa: &str) -> String {
    let img = image("MESH_BOOKSTORE_IMAGE");
    format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\n\
         spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
         metadata: {{labels: {{app: {name}}}}}\n    spec:\n      serviceAccountName: {sa}\n      \
         terminationGracePeriodSeconds: 1\n      containers:\n      - name: sleep\n        \
         image: {img}\n        imagePullPolicy: IfNotPresent\n        \
         args: [serve, --port, \"9080\", --service, {name}, --shutdown-delay, \"0\"]\n        \
         securityContext: {{runAsUser: 1000, runAsNonRoot: true}}\n"
    )
}

impl World {
    fn start(prefix: &str) -> World {
        let node = KubeNode::get();
        install_mesh();
        let ns = TestNamespace::new(node, prefix, &["istio-injection=enabled"]);
        let legacy_ns = TestNamespace::new(node, &format!("{prefix}-legacy"), &[]);
        let app = std::fs::read_to_string(repo_file("examples/bookstore/resilience/httpbin.yaml"))
            .unwrap();
        let t0 = Instant::now();
        node.apply(&["-n", &ns.name], &app);
        node.apply(
            &["-n", &legacy_ns.name],
            &legacy_manifest("legacy", "legacy"),
        );
        let pods = node.wait_pods_ready(&ns.name, None, 2, READY);
        let legacy = node.wait_pods_ready(&legacy_ns.name, None, 1, READY);
        report(&format!(
            "mtls {prefix}: 2 injected pods 2/2 Ready (certificates issued) and 1 legacy pod in {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
        for p in &pods {
            assert_eq!(p.ready_column(), "2/2", "{}", p.summary());
        }
        let find = |prefix: &str| {
            pods.iter()
                .find(|p| p.name.starts_with(prefix))
                .unwrap()
                .clone()
        };
        let cluster_ip = node.kubectl_ok(&[
            "-n",
            &ns.name,
            "get",
            "service",
            "httpbin",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ]);
        World {
            node,
            server: find("httpbin-"),
            sleep: find("sleep-"),
            legacy: legacy[0].name.clone(),
            cluster_ip: cluster_ip.trim().to_owned(),
            ns,
            legacy_ns,
        }
    }

    fn apply(&self, yaml: &str) {
        self.node.apply(&["-n", &self.ns.name], yaml);
    }

    fn delete(&self, kind: &str, name: &str) {
        self.node.kubectl_ok(&[
            "-n",
            &self.ns.name,
            "delete",
            kind,
            name,
            "--ignore-not-found",
        ]);
    }

    /// `mesh-bookstore load` in `pod` of `ns`; its JSON line.
    fn load(&self, ns: &str, pod: &str, url: &str, count: u32) -> Value {
        let n = count.to_string();
        let r = self.node.exec(
            ns,
            pod,
            "sleep",
            &[
                "/mesh-bookstore",
                "load",
                url,
                "--count",
                &n,
                "--timeout",
                "3",
            ],
        );
        assert!(r.ok, "load {url} from {pod}: {}{}", r.stdout, r.stderr);
        serde_json::from_str(r.stdout.trim())
            .unwrap_or_else(|e| panic!("load printed no JSON ({e}): {}", r.stdout))
    }

    /// From sleep, by name (its sidecar answers the DNS query).
    fn sleep_gets(&self, path: &str, count: u32) -> Value {
        self.load(
            &self.ns.name,
            &self.sleep.name,
            &format!("http://httpbin:8000{path}"),
            count,
        )
    }

    /// From the legacy pod, by ClusterIP (it has no sidecar and the node no DNS).
    fn legacy_gets(&self, path: &str, count: u32) -> Value {
        self.load(
            &self.legacy_ns.name,
            &self.legacy,
            &format!("http://{}:8000{path}", self.cluster_ip),
            count,
        )
    }

    /// What crosses httpbin's pod link to its app port while `traffic` runs: tcpdump in
    /// the server pod's network namespace, payloads as text.
    fn capture(&self, traffic: impl FnOnce()) -> String {
        let pid = self.node.container_pid(self.server.container_id("httpbin"));
        let child = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "--"])
            .args([
                "timeout", "8", "tcpdump", "-i", "eth0", "-nn", "-l", "-A", "-s0",
            ])
            .args(["tcp", "port", "9080"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (Debian package tcpdump; scripts/test.sh installs it)");
        // tcpdump needs a moment before it sees packets.
        std::thread::sleep(Duration::from_millis(1500));
        traffic();
        let out = child.wait_with_output().expect("tcpdump output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains("IP "),
            "tcpdump saw no packet: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn server_metrics(&self) -> String {
        proxy_metrics(&self.server.ip)
    }

    fn sleep_id(&self) -> String {
        format!("spiffe://cluster.local/ns/{}/sa/sleep", self.ns.name)
    }
}

fn statuses(l: &Value, code: u16) -> u64 {
    l["statuses"][code.to_string()].as_u64().unwrap_or(0)
}

/// Polls until `ok` holds for a fresh load (config takes a moment to arrive).
fn until(what: &str, mut load: impl FnMut() -> Value, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + CONFIG;
    loop {
        let l = load();
        if ok(&l) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {CONFIG:?}; last {l}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn mtls_between_sidecars_and_plaintext_from_legacy() {
    let _one = serial();
    let w = World::start("mtls-wire");
    let marker = "marker-sleep-to-httpbin";
    let mut l = Value::Null;
    let wire = w.capture(|| l = w.sleep_gets(&format!("/get?{marker}"), 20));
    assert_eq!(statuses(&l, 200), 20, "{l}");
    assert!(
        !wire.contains(marker),
        "sleep's request crossed the pod link in clear:\n{wire}"
    );
    let m = w.server_metrics();
    let sleep_id = w.sleep_id();
    let mtls = metric_sum(
        &m,
        REQUESTS,
        &[
            "reporter=\"destination\"",
            "connection_security_policy=\"mutual_tls\"",
            &format!("source_principal=\"{sleep_id}\""),
            "response_code=\"200\"",
        ],
    );
    assert!(
        mtls >= 20,
        "httpbin's sidecar counted {mtls} mTLS requests from {sleep_id}:\n{m}"
    );

    let marker = "marker-legacy-to-httpbin";
    let mut l = Value::Null;
    let wire = w.capture(|| l = w.legacy_gets(&format!("/get?{marker}"), 5));
    assert_eq!(statuses(&l, 200), 5, "{l}");
    assert!(
        wire.contains(marker),
        "the legacy request was not seen in clear:\n{wire}"
    );
    let plain = metric_sum(
        &w.server_metrics(),
        REQUESTS,
        &[
            "reporter=\"destination\"",
            "connection_security_policy=\"none\"",
        ],
    );
    assert!(plain >= 5, "{plain} plaintext requests counted");

    // What the app reads (Istio's X-Forwarded-Client-Cert, as httpbin's /headers shows
    // it in Istio's mTLS tasks): httpbin's identity, the client certificate's hash, its
    // empty subject and sleep's SPIFFE id; a forged header never gets through.
    let forged =
        "x-forwarded-client-cert: By=spiffe://forged;URI=spiffe://cluster.local/ns/x/sa/admin";
    let xfcc_of = |ns: &str, pod: &str, url: &str| -> Option<String> {
        let r = w.node.exec(
            ns,
            pod,
            "sleep",
            &["/mesh-bookstore", "get", url, "--header", forged],
        );
        assert!(r.ok, "get {url} from {pod}: {}{}", r.stdout, r.stderr);
        let body: Value = serde_json::from_str(r.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.stdout));
        let headers = body["headers"].as_object().expect("headers").clone();
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-client-cert"))
            .map(|(_, v)| v.as_str().unwrap_or_default().to_owned())
    };
    let xfcc = xfcc_of(&w.ns.name, &w.sleep.name, "http://httpbin:8000/headers")
        .expect("httpbin saw no x-forwarded-client-cert from sleep");
    let by = format!("spiffe://cluster.local/ns/{}/sa/httpbin", w.ns.name);
    let hash = xfcc
        .strip_prefix(&format!("By={by};Hash="))
        .and_then(|r| r.strip_suffix(&format!(";Subject=\"\";URI={sleep_id}")))
        .unwrap_or_else(|| panic!("unexpected x-forwarded-client-cert {xfcc:?}"));
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{xfcc}"
    );
    let legacy_url = format!("http://{}:8000/headers", w.cluster_ip);
    let legacy_xfcc = xfcc_of(&w.legacy_ns.name, &w.legacy, &legacy_url);
    assert_eq!(
        legacy_xfcc, None,
        "a plaintext client's header reached the app"
    );
    report(&format!(
        "mtls wire: sleep -> httpbin 20/20 200 over mTLS (nothing in clear on the link, {mtls} counted mutual_tls from {sleep_id}); legacy -> httpbin 5/5 200 in clear ({plain} counted none); httpbin's app saw x-forwarded-client-cert {xfcc:?} from sleep and none from legacy (forged header dropped)"
    ));
}

#[test]
fn strict_port_level_and_destination_rule_disable() {
    let _one = serial();
    let w = World::start("mtls-strict");
    assert_eq!(statuses(&w.legacy_gets("/get", 3), 200), 3);
    w.apply(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\n\
         spec:\n  mtls: {mode: STRICT}\n",
    );
    let t0 = Instant::now();
    until(
        "STRICT refuses legacy",
        || w.legacy_gets("/get", 3),
        |l| statuses(l, 200) == 0,
    );
    let refused = metric_sum(
        &w.server_metrics(),
        "mesh_proxy_refused_connections_total",
        &["direction=\"inbound\"", "reason=\"plaintext_refused\""],
    );
    assert!(
        refused >= 3,
        "legacy got no answer, but httpbin's sidecar refused only {refused} plaintext connections"
    );
    report(&format!(
        "mtls STRICT: legacy refused {:.1} s after kubectl apply ({refused} plaintext connections refused by httpbin's sidecar)",
        t0.elapsed().as_secs_f64()
    ));
    assert_eq!(statuses(&w.sleep_gets("/get", 10), 200), 10);

    w.apply(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: httpbin}\n\
         spec:\n  selector: {matchLabels: {app: httpbin}}\n  mtls: {mode: STRICT}\n  \
         portLevelMtls:\n    9080: {mode: PERMISSIVE}\n",
    );
    until(
        "portLevelMtls lets legacy in",
        || w.legacy_gets("/get", 3),
        |l| statuses(l, 200) == 3,
    );
    w.delete("peerauthentication", "httpbin");
    w.delete("peerauthentication", "default");

    w.apply(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: httpbin}\n\
         spec:\n  host: httpbin\n  trafficPolicy:\n    tls: {mode: DISABLE}\n",
    );
    let marker = "marker-dr-disable";
    // The proxy keeps its pooled mTLS connections only for the old config: retry until a
    // request goes out plaintext.
    let deadline = Instant::now() + CONFIG;
    loop {
        let wire = w.capture(|| {
            w.sleep_gets(&format!("/get?{marker}"), 3);
        });
        if wire.contains(marker) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tls.mode DISABLE: sleep's request never crossed in clear"
        );
    }
    report(
        "mtls: STRICT refuses legacy, portLevelMtls exempts the port, DR tls DISABLE sends plaintext",
    );
}

#[test]
fn authorization_policy_by_principal_and_path() {
    let _one = serial();
    let w = World::start("mtls-authz");
    w.node
        .apply(&["-n", &w.ns.name], &legacy_manifest("other", "other"));
    let other = w
        .node
        .wait_pods_ready(&w.ns.name, Some("app=other"), 1, READY);
    let sleep_principal = format!("cluster.local/ns/{}/sa/sleep", w.ns.name);
    w.apply(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: httpbin}}\n\
         spec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  action: ALLOW\n  rules:\n  \
         - from:\n    - source: {{principals: [\"{sleep_principal}\"]}}\n    \
         to:\n    - operation: {{methods: [GET], paths: [\"/get\"]}}\n"
    ));
    until(
        "only sleep on /get",
        || w.sleep_gets("/status/200", 3),
        |l| statuses(l, 403) == 3,
    );
    assert_eq!(statuses(&w.sleep_gets("/get", 5), 200), 5);
    let o = w.load(&w.ns.name, &other[0].name, "http://httpbin:8000/get", 3);
    assert_eq!(statuses(&o, 403), 3, "another principal: {o}");
    assert_eq!(statuses(&w.legacy_gets("/get", 3), 403), 3);
    report(
        "mtls authz: sleep 200 on /get and 403 on /status/200; another ServiceAccount 403; no principal 403",
    );
}
