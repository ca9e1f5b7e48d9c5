//! L7 traffic management on a real node: mesh-control and the proxies' HTTP path with
//! Istio's own VirtualService and DestinationRule YAML (examples/bookstore/networking/, in
//! the shape of Istio's bookinfo samples), applied with kubectl as a user would.
//!
//! The app is examples/bookstore/reviews-local.yaml: `reviews` in three versions and a client.
//! The client calls `http://reviews:9080/` by name: kube-node has no cluster DNS, the
//! client's proxy answers it (the kube-node overlay turns DNS capture on). Each scenario
//! runs `mesh-bookstore load` in the client pod and reads, from its JSON line, which
//! versions answered with which status.
//!
//! Its own test binary: the scenarios edit one VirtualService in turn, and restarting
//! mesh-control must not overlap node_flow.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::{Duration, Instant};

use mesh_tests::kube_node::{
    KubeNode, TestNamespace, eventually, install_mesh, metric_sum, proxy_metrics, repo_file, report,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(180);
const REQUESTS: &str = "istio_requests_total";
const URL: &str = "http://reviews:9080/";

fn networking(name: &str) -> String {
    std::fs::read_to_string(repo_file(&format!(
        "examples/bookstore/networking/{name}.yaml"
    )))
    .unwrap()
}

struct App {
    node: &'static KubeNode,
    ns: TestNamespace,
    client: String,
    client_ip: String,
    /// (version, pod IP) of each reviews pod.
    servers: Vec<(String, String)>,
}

/// One `mesh-bookstore load` run in the client pod.
#[derive(Debug)]
struct Load {
    sent: u64,
    errors: u64,
    raw: Value,
}

impl Load {
    fn version(&self, v: &str) -> u64 {
        self.raw["versions"][v].as_u64().unwrap_or(0)
    }
    fn status(&self, s: &str) -> u64 {
        self.raw["statuses"][s].as_u64().unwrap_or(0)
    }
    fn by(&self, v: &str, s: &str) -> u64 {
        self.raw["by"][format!("{v} {s}")].as_u64().unwrap_or(0)
    }
    fn share(&self, v: &str) -> f64 {
        self.version(v) as f64 / self.sent as f64
    }
    fn p50_ms(&self) -> f64 {
        self.raw["p50_ms"].as_f64().unwrap_or(f64::NAN)
    }
    fn max_ms(&self) -> f64 {
        self.raw["max_ms"].as_f64().unwrap_or(f64::NAN)
    }
}

/// One answer as `mesh-bookstore get --include` printed it.
#[derive(Debug)]
struct Got {
    status: u16,
    /// The status line and the header lines.
    head: Vec<String>,
    body: String,
}

impl Got {
    fn parse(out: &str) -> Option<Got> {
        let (head, body) = out.split_once("\n\n")?;
        let head: Vec<String> = head.lines().map(str::to_owned).collect();
        let status = head.first()?.split_whitespace().nth(1)?.parse().ok()?;
        Some(Got {
            status,
            head,
            body: body.to_owned(),
        })
    }

    /// The value of header `name` (lowercase), `""` when absent.
    fn header(&self, name: &str) -> &str {
        self.head[1..]
            .iter()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.trim())
    }
}

impl App {
    fn start() -> App {
        App::start_in("l7")
    }

    /// The app in a namespace of its own, `prefix-…`.
    fn start_in(prefix: &str) -> App {
        let node = KubeNode::get();
        install_mesh();
        let ns = TestNamespace::new(node, prefix, &["istio-injection=enabled"]);
        let yaml =
            std::fs::read_to_string(repo_file("examples/bookstore/reviews-local.yaml")).unwrap();
        let t0 = Instant::now();
        node.apply(&["-n", &ns.name], &yaml);
        let pods = node.wait_pods_ready(&ns.name, None, 4, READY);
        report(&format!(
            "bookstore: kubectl apply -> 4 pods 2/2 Ready in {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
        for p in &pods {
            assert_eq!(p.ready_column(), "2/2", "{}", p.summary());
        }
        let client = pods.iter().find(|p| p.name.starts_with("client-")).unwrap();
        let servers = pods
            .iter()
            .filter_map(|p| {
                let v = p.name.strip_prefix("reviews-")?.split('-').next()?;
                Some((v.to_owned(), p.ip.clone()))
            })
            .collect();
        App {
            node,
            client: client.name.clone(),
            client_ip: client.ip.clone(),
            servers,
            ns,
        }
    }

    fn apply(&self, yaml: &str) {
        self.node.apply(&["-n", &self.ns.name], yaml);
    }

    fn load(&self, args: &[&str]) -> Load {
        self.load_from(URL, args)
    }

    fn load_from(&self, url: &str, args: &[&str]) -> Load {
        let mut cmd = vec!["/mesh-bookstore", "load", url];
        cmd.extend_from_slice(args);
        let r = self.node.exec(&self.ns.name, &self.client, "client", &cmd);
        assert!(
            r.ok,
            "mesh-bookstore load {args:?}: {}{}",
            r.stdout, r.stderr
        );
        let raw: Value = serde_json::from_str(r.stdout.trim())
            .unwrap_or_else(|e| panic!("load printed no JSON ({e}): {}", r.stdout));
        Load {
            sent: raw["sent"].as_u64().unwrap(),
            errors: raw["errors"].as_u64().unwrap(),
            raw,
        }
    }

    /// Loads in small batches until `ok` holds for one (the config reached the client's
    /// proxy), for up to 15 s; returns how long that took.
    fn until(&self, what: &str, args: &[&str], ok: impl Fn(&Load) -> bool) -> Duration {
        self.until_from(URL, what, args, ok)
    }

    fn until_from(
        &self,
        url: &str,
        what: &str,
        args: &[&str],
        ok: impl Fn(&Load) -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        loop {
            let l = self.load_from(url, args);
            if ok(&l) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "{what}: still {:?}",
                l.raw
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `mesh-bookstore get --include URL ARGS` in the client pod (any status).
    fn get(&self, url: &str, args: &[&str]) -> Got {
        let mut cmd = vec!["/mesh-bookstore", "get", url, "--include"];
        cmd.extend_from_slice(args);
        let r = self.node.exec(&self.ns.name, &self.client, "client", &cmd);
        Got::parse(&r.stdout)
            .unwrap_or_else(|| panic!("mesh-bookstore get {args:?}: {}{}", r.stdout, r.stderr))
    }

    /// [`App::get`] until `ok` holds (the config reached the client's proxy), for up to
    /// 15 s.
    fn get_until(&self, what: &str, url: &str, args: &[&str], ok: impl Fn(&Got) -> bool) -> Got {
        eventually(what, Duration::from_secs(15), || {
            let g = self.get(url, args);
            if ok(&g) { Ok(g) } else { Err(format!("{g:?}")) }
        })
    }

    fn client_metrics(&self) -> String {
        proxy_metrics(&self.client_ip)
    }
}

fn within(share: f64, want: f64, tol: f64) -> bool {
    (share - want).abs() <= tol
}

#[test]
fn bookstore_routing_shifting_faults_and_metrics() {
    let app = App::start();

    // No VirtualService: every endpoint of the Service, each version about a third, once
    // all three pods' endpoints reached the client's proxy (a pod Ready a moment ago may
    // not be in the EndpointSlice yet). One request at a time: with several in flight,
    // LEAST_REQUEST (the default) rightly sends fewer to an endpoint that answers more
    // slowly, and on this shared machine one pod often does for a while.
    app.until("all three versions answer", &["--count", "60"], |l| {
        ["v1", "v2", "v3"].iter().all(|v| l.version(v) > 0)
    });
    let l = app.load(&["--count", "1500"]);
    assert_eq!(l.errors, 0, "{:?}", l.raw);
    for v in ["v1", "v2", "v3"] {
        assert!(within(l.share(v), 1.0 / 3.0, 0.06), "{v}: {:?}", l.raw);
    }
    report(&format!("no VirtualService: {}", l.raw["versions"]));

    // The subsets, then everything to v1.
    app.apply(&networking("destination-rule-all"));
    app.apply(&networking("virtual-service-all-v1"));
    let took = app.until("all to v1", &["--count", "20"], |l| l.version("v1") == 20);
    report(&format!("virtual-service-all-v1 in effect after {took:?}"));
    let l = app.load(&["--count", "300", "--concurrency", "4"]);
    assert_eq!((l.version("v1"), l.errors), (300, 0), "{:?}", l.raw);

    // 50/50 v1/v3.
    app.apply(&networking("virtual-service-reviews-50-v3"));
    app.until("50/50 reaches v3", &["--count", "40"], |l| {
        l.version("v3") > 0
    });
    let l = app.load(&["--count", "2000", "--concurrency", "4"]);
    assert_eq!(l.errors, 0, "{:?}", l.raw);
    assert_eq!(l.version("v1") + l.version("v3"), 2000, "{:?}", l.raw);
    assert!(within(l.share("v1"), 0.5, 0.05), "{:?}", l.raw);
    report(&format!("50/50: {}", l.raw["versions"]));

    // 80/20 v1/v2 (the sample is v1beta1: every served version is read).
    app.apply(&networking("virtual-service-reviews-80-20"));
    app.until("80/20 reaches v2", &["--count", "40"], |l| {
        l.version("v2") > 0 && l.version("v3") == 0
    });
    let l = app.load(&["--count", "2000", "--concurrency", "4"]);
    assert_eq!(l.version("v1") + l.version("v2"), 2000, "{:?}", l.raw);
    assert!(within(l.share("v1"), 0.8, 0.04), "{:?}", l.raw);
    report(&format!("80/20: {}", l.raw["versions"]));

    // end-user: jason to v2, everyone else to v1 (v1).
    app.apply(&networking("virtual-service-reviews-jason-v2-v1"));
    app.until(
        "jason to v2",
        &["--count", "10", "--header", "end-user: jason"],
        |l| l.version("v2") == 10,
    );
    let l = app.load(&["--count", "200", "--header", "end-user: jason"]);
    assert_eq!(l.version("v2"), 200, "{:?}", l.raw);
    let l = app.load(&["--count", "200", "--header", "end-user: someone"]);
    assert_eq!(l.version("v1"), 200, "{:?}", l.raw);
    let l = app.load(&["--count", "200"]);
    assert_eq!(l.version("v1"), 200, "{:?}", l.raw);

    // Every request counted by the client's proxy, per destination version and code.
    let before = app.client_metrics();
    let server = |v: &str| {
        let ip = &app.servers.iter().find(|(sv, _)| sv == v).unwrap().1;
        proxy_metrics(ip)
    };
    let servers_before = [server("v1"), server("v2")];
    let l = app.load(&["--count", "100", "--header", "end-user: jason"]);
    let m = app.load(&["--count", "150"]);
    let after = app.client_metrics();
    let servers_after = [server("v1"), server("v2")];
    let ns = format!(r#"source_workload_namespace="{}""#, app.ns.name);
    for (version, want) in [("v2", l.by("v2", "200")), ("v1", m.by("v1", "200"))] {
        let labels = [
            r#"reporter="source""#,
            r#"source_workload="client""#,
            ns.as_str(),
            r#"destination_service_name="reviews""#,
            r#"response_code="200""#,
            &format!(r#"destination_version="{version}""#),
        ];
        let got = metric_sum(&after, REQUESTS, &labels) - metric_sum(&before, REQUESTS, &labels);
        assert_eq!(
            got, want,
            "{version}: client proxy counted {got}, sent {want}\n{after}"
        );
        // And the server's proxy, as the destination reporter, the same requests.
        let i = usize::from(version == "v2");
        let labels = [
            r#"reporter="destination""#,
            r#"source_workload="client""#,
            ns.as_str(),
            r#"destination_service_name="reviews""#,
            r#"response_code="200""#,
            &format!(r#"destination_version="{version}""#),
        ];
        let got = metric_sum(&servers_after[i], REQUESTS, &labels)
            - metric_sum(&servers_before[i], REQUESTS, &labels);
        assert_eq!(
            got, want,
            "{version}: server proxy counted {got}, sent {want}\n{}",
            servers_after[i]
        );
    }

    // Mirroring (Istio's task): everything to v1, and a copy of each request to v2,
    // whose answers nobody sees. v2's proxy counts the copies as the destination
    // reporter, from the client; the client's proxy counts only what it was answered.
    app.apply(&networking("virtual-service-reviews-mirror-v2"));
    let mirrored = |before: &str| {
        let labels = [
            r#"reporter="destination""#,
            r#"source_workload="client""#,
            ns.as_str(),
            r#"destination_version="v2""#,
            r#"response_code="200""#,
        ];
        metric_sum(&server("v2"), REQUESTS, &labels) - metric_sum(before, REQUESTS, &labels)
    };
    let v2_before = server("v2");
    app.until("copies reach v2", &["--count", "20"], |l| {
        l.version("v1") == 20 && mirrored(&v2_before) > 0
    });
    // The copies of those probes may still be on their way: wait until v2's count stops
    // moving, so that none of them is counted with the measured requests below.
    let mut settled = server("v2");
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = server("v2");
        if mirrored(&settled) == 0 || t0.elapsed() > Duration::from_secs(10) {
            break;
        }
        settled = now;
    }
    let (client_before, v2_before) = (app.client_metrics(), server("v2"));
    let l = app.load(&["--count", "200", "--concurrency", "4"]);
    assert_eq!((l.version("v1"), l.errors), (200, 0), "{:?}", l.raw);
    // The copies are sent as the requests go out; the last ones may still be on their
    // way to v2 when the client is done.
    let t0 = Instant::now();
    while mirrored(&v2_before) < 200 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let copies = mirrored(&v2_before);
    let source_v2 = {
        let labels = [r#"reporter="source""#, r#"destination_version="v2""#];
        metric_sum(&app.client_metrics(), REQUESTS, &labels)
            - metric_sum(&client_before, REQUESTS, &labels)
    };
    report(&format!(
        "mirror to v2: 200 requests answered by v1, {copies} copies counted by v2's proxy, \
         {source_v2} v2 requests at the client's"
    ));
    assert_eq!((copies, source_v2), (200, 0));

    // Sticky sessions: no VirtualService (every version), the DestinationRule hashing
    // by end-user. Each user's requests all reach one version, and users spread.
    app.node
        .kubectl_ok(&["-n", &app.ns.name, "delete", "virtualservice", "reviews"]);
    app.apply(&networking("destination-rule-reviews-sticky"));
    app.until(
        "sticky by end-user",
        &["--count", "20", "--header", "end-user: alice"],
        |l| ["v1", "v2", "v3"].iter().any(|v| l.version(v) == 20),
    );
    let mut homes = Vec::new();
    for u in 0..9 {
        let header = format!("end-user: user-{u}");
        let l = app.load(&["--count", "30", "--concurrency", "2", "--header", &header]);
        let home = ["v1", "v2", "v3"]
            .into_iter()
            .find(|v| l.version(v) == 30)
            .unwrap_or_else(|| panic!("user-{u} was not kept on one version: {:?}", l.raw));
        homes.push(home);
    }
    let distinct: std::collections::BTreeSet<_> = homes.iter().collect();
    report(&format!(
        "consistentHash by end-user: 9 users x 30 requests, each on one version: {homes:?}"
    ));
    assert!(distinct.len() >= 2, "9 users all on {distinct:?}");
    app.apply(&networking("destination-rule-all"));

    // CORS and a regex rewrite (virtual-service-reviews-cors-rewrite): the client's
    // proxy answers an allowed origin's preflight itself, decorates that origin's other
    // answers, forwards other origins' preflights to the app; /books/<id>/reviews
    // reaches the app as /reviews/<id>.
    app.apply(&networking("virtual-service-reviews-cors-rewrite"));
    const SHOP: &str = "Origin: https://shop.example";
    let rewritten = app.get_until(
        "the regex rewrite",
        "http://reviews:9080/books/42/reviews?page=2",
        &[],
        |r| r.body.contains(r#""path":"/reviews/42?page=2""#),
    );
    assert_eq!(rewritten.header("x-version"), "v1", "{rewritten:?}");
    assert!(
        rewritten
            .body
            .contains(r#""x-envoy-original-path":"/books/42/reviews?page=2""#),
        "{rewritten:?}"
    );
    let preflight = app.get_until(
        "the CORS policy",
        URL,
        &[
            "--method",
            "OPTIONS",
            "--header",
            SHOP,
            "--header",
            "Access-Control-Request-Method: POST",
        ],
        |r| !r.header("access-control-allow-origin").is_empty(),
    );
    // Answered by the client's sidecar: the app never saw it (no X-Version, no body).
    assert_eq!(preflight.status, 200, "{preflight:?}");
    assert_eq!(preflight.header("x-version"), "", "{preflight:?}");
    assert_eq!(preflight.body, "", "{preflight:?}");
    for (name, want) in [
        ("access-control-allow-origin", "https://shop.example"),
        ("access-control-allow-methods", "GET,POST"),
        ("access-control-allow-headers", "x-shop-token"),
        ("access-control-allow-credentials", "true"),
        ("access-control-max-age", "86400"),
    ] {
        assert_eq!(preflight.header(name), want, "{name}: {preflight:?}");
    }
    let actual = app.get(URL, &["--header", SHOP]);
    assert_eq!(
        (
            actual.status,
            actual.header("x-version"),
            actual.header("access-control-allow-origin"),
            actual.header("access-control-expose-headers"),
            actual.header("access-control-allow-credentials"),
        ),
        (200, "v1", "https://shop.example", "x-version", "true"),
        "{actual:?}"
    );
    let other = app.get(
        URL,
        &[
            "--method",
            "OPTIONS",
            "--header",
            "Origin: https://elsewhere.example",
            "--header",
            "Access-Control-Request-Method: POST",
        ],
    );
    assert_eq!(
        (
            other.status,
            other.header("x-version"),
            other.header("access-control-allow-origin")
        ),
        (200, "v1", ""),
        "{other:?}"
    );
    assert!(other.body.contains(r#""method":"OPTIONS""#), "{other:?}");
    report(&format!(
        "CORS: preflight from https://shop.example answered by the client's proxy ({}); \
         from another origin forwarded to {}; regex rewrite /books/42/reviews -> {}",
        preflight.head.join(" | "),
        other.header("x-version"),
        rewritten
            .body
            .split(r#""path":"#)
            .nth(1)
            .and_then(|p| p.split(',').next())
            .unwrap_or("?")
    ));

    // Delay 7 s for jason only.
    app.apply(&networking("virtual-service-reviews-jason-delay"));
    app.until(
        "delay for jason",
        &["--count", "1", "--header", "end-user: jason"],
        |l| l.p50_ms() > 6000.0,
    );
    let slow = app.load(&["--count", "3", "--header", "end-user: jason"]);
    let fast = app.load(&["--count", "50"]);
    report(&format!(
        "delay 7s: jason p50 {:.1} ms max {:.1} ms; others p50 {:.2} ms max {:.2} ms",
        slow.p50_ms(),
        slow.max_ms(),
        fast.p50_ms(),
        fast.max_ms()
    ));
    assert!((slow.p50_ms() - 7000.0).abs() <= 100.0, "{:?}", slow.raw);
    assert_eq!(slow.version("v1"), 3);
    assert!(fast.max_ms() < 1000.0, "{:?}", fast.raw);

    // Abort 500 for jason, 100 %.
    app.apply(&networking("virtual-service-reviews-jason-abort"));
    app.until(
        "abort for jason",
        &["--count", "5", "--header", "end-user: jason"],
        |l| l.status("500") == 5,
    );
    let l = app.load(&["--count", "200", "--header", "end-user: jason"]);
    assert_eq!(l.status("500"), 200, "{:?}", l.raw);
    let l = app.load(&["--count", "200"]);
    assert_eq!(l.by("v1", "200"), 200, "{:?}", l.raw);

    // Abort 503 for half of everyone.
    app.apply(&networking("virtual-service-reviews-abort-50"));
    app.until("abort 50%", &["--count", "40"], |l| {
        l.status("503") > 0 && l.status("200") > 0 && l.status("500") == 0
    });
    let l = app.load(&["--count", "2000", "--concurrency", "4"]);
    let aborted = l.status("503") as f64 / l.sent as f64;
    assert!(within(aborted, 0.5, 0.05), "{:?}", l.raw);
    assert_eq!(l.status("503") + l.by("v1", "200"), 2000, "{:?}", l.raw);
    report(&format!("abort 50%: {}", l.raw["statuses"]));

    // 50/50 to 100/0 while a client loops: nothing fails, and within 1 s all go to v1.
    app.apply(&networking("virtual-service-reviews-50-v3"));
    app.until("50/50 again", &["--count", "40"], |l| {
        l.version("v3") > 0 && l.status("503") == 0
    });
    let looping = {
        let node = app.node;
        let ns = app.ns.name.clone();
        let client = app.client.clone();
        std::thread::spawn(move || {
            let r = node.exec(
                &ns,
                &client,
                "client",
                &[
                    "/mesh-bookstore",
                    "load",
                    URL,
                    "--count",
                    "400",
                    "--rate",
                    "100",
                ],
            );
            r.stdout
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    let edited = Instant::now();
    app.apply(&networking("virtual-service-all-v1"));
    let took = app.until("all v1 after the edit", &["--count", "20"], |l| {
        l.version("v1") == 20
    });
    let l: Value = serde_json::from_str(looping.join().unwrap().trim()).unwrap();
    report(&format!(
        "edit 50/50 -> all v1: in effect after {took:?} (measured from kubectl apply {:?} ago); loop: {}",
        edited.elapsed(),
        l["statuses"]
    ));
    assert_eq!(l["errors"], 0, "{l}");
    assert_eq!(l["statuses"]["200"], 400, "{l}");
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // A VirtualService with an invalid regex: reported as an Event, the rest routes on.
    app.apply(
        "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {regex: \"([a-z\"}
    route:
    - destination: {host: reviews, subset: v3}
  - route:
    - destination: {host: reviews, subset: v2}
",
    );
    app.until(
        "the good rule of a VirtualService with a bad regex",
        &["--count", "20"],
        |l| l.version("v2") == 20,
    );
    let t0 = Instant::now();
    loop {
        let ev = app.node.kubectl(&[
            "-n",
            &app.ns.name,
            "get",
            "events",
            "--field-selector",
            "reason=InvalidConfig",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.name}: {.message}{\"\\n\"}{end}",
        ]);
        if ev.stdout.contains("reviews") && ev.stdout.contains("regex") {
            report(&format!("InvalidConfig event: {}", ev.stdout.trim()));
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no InvalidConfig event: {}{}",
            ev.stdout,
            ev.stderr
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // mesh-control restarted (both replicas) while requests flow: the proxies keep their
    // last config, nothing fails.
    let looping = {
        let node = app.node;
        let ns = app.ns.name.clone();
        let client = app.client.clone();
        std::thread::spawn(move || {
            let r = node.exec(
                &ns,
                &client,
                "client",
                &[
                    "/mesh-bookstore",
                    "load",
                    URL,
                    "--count",
                    "1500",
                    "--rate",
                    "100",
                ],
            );
            r.stdout
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    app.node.kubectl_ok(&[
        "-n",
        "mesh-system",
        "delete",
        "pods",
        "-l",
        "app.kubernetes.io/name=mesh-control",
        "--wait=false",
    ]);
    let l: Value = serde_json::from_str(looping.join().unwrap().trim()).unwrap();
    report(&format!("mesh-control pods deleted mid-run: {}", l["by"]));
    assert_eq!(l["errors"], 0, "{l}");
    assert_eq!(l["by"]["v2 200"], 1500, "{l}");
    app.node.wait_pods_ready(
        "mesh-system",
        Some("app.kubernetes.io/name=mesh-control"),
        2,
        READY,
    );
}

/// A port that declares no protocol is sniffed, but a server-first protocol is never held
/// up waiting for the client: the greeting arrives at once, and the connection is counted
/// as TCP, labelled with its Service.
/// Istio's TCP traffic shifting (the shape of samples/tcp-echo's tcp-echo-20-v2.yaml, for
/// sidecars): a `tcp` port's L4 connections follow the VirtualService's `tcp[]` weights,
/// one pick per connection, and the client's TCP metrics say which version each went
/// to. The app's HTTP is carried opaquely here: the port is named `tcp`, and every
/// request closes its connection (`Connection: close`), so each is a new connection.
#[test]
fn tcp_traffic_shifting_by_connection() {
    let app = App::start_in("l7l4");
    app.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: reviews-l4, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports:
    - {name: tcp, port: 9000, targetPort: 9080}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-l4}
spec:
  host: reviews-l4
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-l4}
spec:
  hosts: [reviews-l4]
  tcp:
  - match:
    - port: 9000
    route:
    - destination: {host: reviews-l4, port: {number: 9000}, subset: v1}
"#,
    );
    const L4_URL: &str = "http://reviews-l4:9000/";
    let close = ["--header", "Connection: close"];
    let all_v1 = app.until_from(
        L4_URL,
        "tcp[] all to v1",
        &["--count", "30", close[0], close[1]],
        |l| l.errors == 0 && l.version("v1") == 30,
    );
    report(&format!(
        "tcp[] 100 % v1: every connection to v1 {:.2} s after kubectl apply",
        all_v1.as_secs_f64()
    ));
    app.apply(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-l4}
spec:
  hosts: [reviews-l4]
  tcp:
  - match:
    - port: 9000
    route:
    - destination: {host: reviews-l4, port: {number: 9000}, subset: v1}
      weight: 80
    - destination: {host: reviews-l4, port: {number: 9000}, subset: v3}
      weight: 20
"#,
    );
    app.until_from(
        L4_URL,
        "tcp[] 80/20 applied",
        &["--count", "50", close[0], close[1]],
        |l| l.version("v3") > 0,
    );
    let series = |m: &str, v: &str| {
        metric_sum(
            m,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"source\"",
                "destination_service_name=\"reviews-l4\"",
                &format!("destination_version=\"{v}\""),
            ],
        )
    };
    let before = app.client_metrics();
    let l = app.load_from(L4_URL, &["--count", "1000", close[0], close[1]]);
    let after = app.client_metrics();
    let connections = l.raw["connections"].as_u64().unwrap_or(0);
    report(&format!(
        "tcp[] 80/20 v1/v3: {} connections, v1 {} ({:.1} %), v3 {} ({:.1} %), v2 {}, errors {}",
        connections,
        l.version("v1"),
        100.0 * l.share("v1"),
        l.version("v3"),
        100.0 * l.share("v3"),
        l.version("v2"),
        l.errors
    ));
    // Each connection resolves reviews-l4 through the client's proxy (its DNS): say what
    // that proxy's DNS did if one failed.
    let dns = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("mesh_proxy_dns_queries_total"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert_eq!(
        (l.sent, l.errors, connections),
        (1000, 0, 1000),
        "{:?}\nthe client proxy's DNS before: {}\nafter: {}",
        l.raw,
        dns(&before),
        dns(&after)
    );
    assert_eq!(l.version("v2"), 0, "{:?}", l.raw);
    assert!(within(l.share("v1"), 0.80, 0.04), "{:?}", l.raw);
    // Kiali's TCP edges: the client's proxy counted each connection by the version it
    // went to.
    for v in ["v1", "v3"] {
        assert_eq!(
            series(&after, v) - series(&before, v),
            l.version(v),
            "connections to {v} by istio_tcp_connections_opened_total"
        );
    }
}

#[test]
fn a_server_first_protocol_on_an_unnamed_port_is_not_held_up() {
    let node = KubeNode::get();
    install_mesh();
    let ns = TestNamespace::new(node, "l7tcp", &["istio-injection=enabled"]);
    node.apply(
        &["-n", &ns.name],
        r#"apiVersion: v1
kind: Service
metadata: {name: greeter}
spec:
  selector: {app: greeter}
  ports:
    - {name: greeting, port: 7000, targetPort: 7000}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: greeter, labels: {app: greeter}}
spec:
  selector: {matchLabels: {app: greeter}}
  template:
    metadata: {labels: {app: greeter, version: v1}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: greeter
          image: local/busybox:1.35
          imagePullPolicy: IfNotPresent
          # Speaks first, like a database or an SMTP server.
          command: [nc, -ll, -p, "7000", -e, /bin/echo, hello-from-server]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: caller, labels: {app: caller}}
spec:
  selector: {matchLabels: {app: caller}}
  template:
    metadata: {labels: {app: caller}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: caller
          image: local/busybox:1.35
          imagePullPolicy: IfNotPresent
          command: [sleep, "3600"]
"#,
    );
    let pods = node.wait_pods_ready(&ns.name, None, 2, READY);
    let caller = pods.iter().find(|p| p.name.starts_with("caller-")).unwrap();
    let ip = node
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "get",
            "service",
            "greeter",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .trim()
        .to_owned();
    // The client sends nothing (its stdin stays open and silent); within 1 s the
    // server's greeting must be there.
    let script = format!("timeout 1 sh -c 'sleep 5 | nc {ip} 7000'; true");
    let r = node.exec(&ns.name, &caller.name, "caller", &["sh", "-c", &script]);
    report(&format!(
        "server-first on an unnamed port: the client read {:?} within its 1 s",
        r.stdout.trim()
    ));
    assert!(
        r.stdout.contains("hello-from-server"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let m = proxy_metrics(&caller.ip);
    let opened = metric_sum(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            r#"reporter="source""#,
            r#"source_workload="caller""#,
            r#"destination_service_name="greeter""#,
        ],
    );
    assert!(opened >= 1, "no TCP series for greeter\n{m}");
}
