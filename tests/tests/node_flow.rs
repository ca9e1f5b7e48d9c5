//! The users' flow on a real node: kube-node (a single-node Kubernetes v1.20.2 with a
//! kubelet, docker and kube-proxy, no registry, no DNS) with the images docker/build.sh
//! built into it, the mesh installed with `kubectl apply -k deploy/`, and then what an
//! Istio user types: label a namespace, apply an app, `kubectl get pods` says 2/2, traffic
//! goes through both sidecars, `nsenter -t PID -n iptables -t nat -L -n -v` shows the
//! ISTIO_* chains with counters, opt-outs stay plain, a Job ends with /quitquitquit, and
//! kube-inject's output runs as the webhook's does.
//!
//! scripts/test.sh starts kube-node, builds the images and exports KUBE_NODE_KUBECONFIG;
//! without a node every test here fails, loudly (mesh_tests::kube_node). Each test works
//! in namespaces of its own, deleted when it ends, pass or fail; the mesh (namespace
//! mesh-system) is installed once per run and goes with the node (kube-node's stop.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mesh_common::containers::{INIT, PROXY};
use mesh_tests::bins::bin;
use mesh_tests::kube_node::{
    DeleteOnDrop, KubeNode, PDB_WORKAROUND, PodInfo, TestNamespace, eventually, image, in_netns,
    install_mesh, metric_sum, proxy_metrics, quantity_kib, repo_file, report, rss_kib,
    run_with_timeout,
};
use serde_json::Value;

/// Generous on 2 shared cores; kube-node's own smoke test sees ~3 s.
const READY: Duration = Duration::from_secs(180);
const REQUESTS: &str = "istio_requests_total";

fn example() -> String {
    std::fs::read_to_string(repo_file("examples/web-local.yaml")).unwrap()
}

fn injected_ns(node: &'static KubeNode, prefix: &str) -> TestNamespace {
    install_mesh();
    TestNamespace::new(node, prefix, &["istio-injection=enabled"])
}

fn cluster_ip(node: &KubeNode, ns: &str, svc: &str) -> String {
    let ip = node.kubectl_ok(&[
        "-n",
        ns,
        "get",
        "service",
        svc,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert!(!ip.trim().is_empty(), "service {ns}/{svc} has no ClusterIP");
    ip.trim().to_owned()
}

/// Applies examples/web-local.yaml into `ns` and waits for its 3 pods to be ready;
/// returns them and how long that took.
fn apply_example(node: &KubeNode, ns: &str, yaml: &str) -> (Vec<PodInfo>, Duration) {
    let t0 = Instant::now();
    node.apply(&["-n", ns], yaml);
    let pods = node.wait_pods_ready(ns, None, 3, READY);
    (pods, t0.elapsed())
}

/// Every pod carries our two containers in the right places, istio-init exited 0 and
/// `kubectl get pods` would say 2/2.
fn assert_injected(node: &KubeNode, ns: &str, pods: &[PodInfo]) {
    for p in pods {
        assert_eq!(p.ready_column(), "2/2", "{}", p.summary());
        assert_eq!(p.init_containers, [INIT], "{}", p.summary());
        assert_eq!(
            p.containers.last().map(String::as_str),
            Some(PROXY),
            "{}",
            p.summary()
        );
        let init = &p.init_statuses[0];
        assert_eq!(
            init.exit_code,
            Some(0),
            "{}: istio-init did not exit 0\n{}",
            p.name,
            node.diagnose(ns)
        );
        assert!(
            !p.injection_status.is_empty(),
            "{}: no sidecar.istio.io/status",
            p.name
        );
    }
    // Nothing was pulled: every image was already on the node (IfNotPresent, fixed tags).
    let pulls = node.kubectl_ok(&[
        "-n",
        ns,
        "get",
        "events",
        "--field-selector",
        "reason=Pulling",
        "-o",
        "name",
    ]);
    assert!(pulls.trim().is_empty(), "{ns}: images were pulled: {pulls}");
}

/// Runs `n` requests from the client pod's app container to `url` (one wget each, as a
/// user would with kubectl exec); returns the bodies, one per request ("FAIL" for a
/// failed one).
fn requests(node: &KubeNode, ns: &str, client: &str, url: &str, n: u32) -> Vec<String> {
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do i=$((i+1)); timeout 10 wget -qO- {url} || echo FAIL; done"
    );
    let r = node.exec(ns, client, "sleep", &["sh", "-c", &script]);
    assert!(r.ok, "kubectl exec {client}: {}{}", r.stdout, r.stderr);
    r.stdout.lines().map(|l| l.trim().to_owned()).collect()
}

fn by_app<'a>(pods: &'a [PodInfo], prefix: &str) -> Vec<&'a PodInfo> {
    pods.iter().filter(|p| p.name.starts_with(prefix)).collect()
}

/// `iptables -t nat -L CHAIN -n -v -x` inside the pod's network namespace, as rows of
/// (packets, rest of the line).
fn nat_chain(pid: u32, chain: &str) -> Vec<(u64, String)> {
    let r = in_netns(
        pid,
        "iptables",
        &["-t", "nat", "-L", chain, "-n", "-v", "-x"],
    );
    assert!(
        r.ok,
        "iptables -t nat -L {chain} in the pod (PID {pid}): {}",
        r.stderr
    );
    r.stdout
        .lines()
        .skip(2)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let pkts = it.next()?.parse().ok()?;
            Some((pkts, it.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// Packets counted by the rules of `chain` that jump to or do `target`.
fn nat_packets(pid: u32, chain: &str, target: &str) -> u64 {
    nat_chain(pid, chain)
        .iter()
        .filter(|(_, rest)| rest.split_whitespace().nth(1) == Some(target))
        .map(|(p, _)| p)
        .sum()
}

#[test]
fn deploy_installs_the_webhook_with_two_ready_replicas() {
    let node = KubeNode::get();
    let mesh = install_mesh();
    report(&format!(
        "kubectl apply -k deploy/ -> 2 ready replicas and caBundle: {:.1} s",
        mesh.ready_after.as_secs_f64()
    ));
    for obj in [
        "namespace/mesh-system",
        "serviceaccount/mesh-webhook",
        "clusterrole.rbac.authorization.k8s.io/mesh-webhook",
        "role.rbac.authorization.k8s.io/mesh-webhook",
        "configmap/mesh-injection-config",
        "service/mesh-webhook",
        "deployment.apps/mesh-webhook",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/mesh-sidecar-injector",
    ] {
        assert!(
            mesh.apply.stdout.contains(obj),
            "kubectl apply -k deploy/ did not apply {obj}:\n{}{}",
            mesh.apply.stdout,
            mesh.apply.stderr
        );
    }
    if mesh.server_minor < 21 {
        // v1.20 serves policy/v1beta1 only: the PDB, and only it, fails.
        let errors: Vec<&str> = mesh
            .apply
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert!(
            !errors.is_empty(),
            "expected the policy/v1 PDB to fail on 1.{}",
            mesh.server_minor
        );
        for e in errors {
            assert!(
                e.contains("PodDisruptionBudget") && e.contains("policy/v1"),
                "kubectl apply -k deploy/ failed on more than the policy/v1 PDB: {e}"
            );
        }
        let w = mesh.pdb_workaround.as_ref().unwrap();
        assert!(
            w.stdout.contains("poddisruptionbudget.policy/mesh-webhook"),
            "`{PDB_WORKAROUND}` made no PDB: {}",
            w.stdout
        );
    } else {
        assert!(mesh.apply.ok, "{}", mesh.apply.stderr);
    }
    let min = node.kubectl_ok(&[
        "-n",
        "mesh-system",
        "get",
        "pdb",
        "mesh-webhook",
        "-o",
        "jsonpath={.spec.minAvailable}",
    ]);
    assert_eq!(min.trim(), "1");

    // The self-signed bootstrap: the Secret both replicas share.
    let keys = node.kubectl_ok(&[
        "-n",
        "mesh-system",
        "get",
        "secret",
        "mesh-webhook-certs",
        "-o",
        "jsonpath={.type} {.data.tls\\.crt}",
    ]);
    assert!(
        keys.starts_with("kubernetes.io/tls ") && keys.len() > 100,
        "Secret mesh-webhook-certs: {keys}"
    );

    // Both replicas run the image images.env names, not injected, as uid 65532.
    let pods = node.wait_pods_ready(
        "mesh-system",
        Some("app.kubernetes.io/name=mesh-webhook"),
        2,
        READY,
    );
    let want = image("MESH_WEBHOOK_IMAGE");
    for p in &pods {
        assert_eq!(p.containers, ["webhook"], "{}", p.summary());
        assert!(!p.is_injected(), "{} was injected", p.name);
        let img = node.kubectl_ok(&[
            "-n",
            "mesh-system",
            "get",
            "pod",
            &p.name,
            "-o",
            "jsonpath={.spec.containers[0].image}",
        ]);
        assert_eq!(img, want);
        let pid = node.container_pid(p.container_id("webhook"));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid.split_whitespace().nth(1) == Some("65532"),
            "{}: {uid}",
            p.name
        );
    }

    // The API server reaches the webhook through its Service: a server-side dry run of a
    // pod in a labelled namespace comes back injected.
    let ns = TestNamespace::new(node, "dry", &["istio-injection=enabled"]);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: probe\nspec:\n  containers:\n    - name: app\n      image: local/busybox:1.35\n";
    let r = node.kubectl_stdin(
        &[
            "-n",
            &ns.name,
            "create",
            "--dry-run=server",
            "-f",
            "-",
            "-o",
            "jsonpath={.spec.containers[*].name}",
        ],
        pod,
    );
    assert!(r.ok, "dry-run create through the webhook: {}", r.stderr);
    assert_eq!(r.stdout.trim(), "app istio-proxy");

    // Memory: what each replica holds now, against what deploy/ requests for it.
    let request = node.kubectl_ok(&[
        "-n",
        "mesh-system",
        "get",
        "deployment",
        "mesh-webhook",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].resources.requests.memory}",
    ]);
    for p in &pods {
        let pid = node.container_pid(p.container_id("webhook"));
        let rss = rss_kib(pid);
        report(&format!(
            "webhook {} RSS {rss} KiB (PID {pid}); deploy/ requests {request} ({} KiB)",
            p.name,
            quantity_kib(&request)
        ));
        assert!(
            rss < quantity_kib(&request),
            "webhook RSS {rss} KiB is over its request {request}"
        );
    }
}

#[test]
fn example_app_runs_injected_and_both_proxies_count_its_requests() {
    let node = KubeNode::get();
    let ns = injected_ns(node, "flow");
    let (pods, took) = apply_example(node, &ns.name, &example());
    report(&format!(
        "kubectl apply -> all 3 pods 2/2 Ready: {:.1} s",
        took.as_secs_f64()
    ));
    assert_injected(node, &ns.name, &pods);
    let proxy_image = image("MESH_PROXY_IMAGE");
    let images = node.kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "pods",
        "-o",
        r#"jsonpath={range .items[*]}{.spec.containers[?(@.name=="istio-proxy")].image} {.spec.initContainers[0].image}{"\n"}{end}"#,
    ]);
    for line in images.lines() {
        assert_eq!(line, format!("{proxy_image} {}", image("MESH_INIT_IMAGE")));
    }

    let client = by_app(&pods, "sleep")[0];
    let servers = by_app(&pods, "web-");
    assert_eq!(servers.len(), 2);
    let ip = cluster_ip(node, &ns.name, "web");
    let client_pid = node.container_pid(client.container_id(PROXY));
    let idle_rss = rss_kib(client_pid);

    // Each side's series, named after its Deployment and labels by the injector (never
    // the pod name), as Kiali and Grafana group by them. Port 80 is named `http`, so both
    // proxies see requests (istio_requests_total), not just connections: the client's
    // (reporter source) knows the server from mesh-control, the server's (reporter
    // destination) knows the client the same way.
    let client_ns = format!(r#"source_workload_namespace="{}""#, ns.name);
    let server_ns = format!(r#"destination_workload_namespace="{}""#, ns.name);
    let dest_service = format!(r#"destination_service="web.{}.svc.cluster.local""#, ns.name);
    let common = [
        r#"source_workload="sleep""#,
        client_ns.as_str(),
        r#"source_app="sleep""#,
        r#"source_canonical_service="sleep""#,
        r#"destination_workload="web""#,
        server_ns.as_str(),
        r#"destination_app="web""#,
        r#"destination_version="v1""#,
        r#"destination_canonical_service="web""#,
        r#"destination_canonical_revision="v1""#,
        dest_service.as_str(),
        r#"destination_service_name="web""#,
        r#"request_protocol="http""#,
        r#"response_code="200""#,
    ];
    let client_series: Vec<&str> = [r#"reporter="source""#].into_iter().chain(common).collect();
    let server_series: Vec<&str> = [r#"reporter="destination""#]
        .into_iter()
        .chain(common)
        .collect();
    let out_before = metric_sum(&proxy_metrics(&client.ip), REQUESTS, &client_series);
    let in_before: Vec<u64> = servers
        .iter()
        .map(|s| metric_sum(&proxy_metrics(&s.ip), REQUESTS, &server_series))
        .collect();

    // Through the Service's ClusterIP, from the app container.
    let n = 40;
    let bodies = requests(node, &ns.name, &client.name, &format!("http://{ip}/"), n);
    assert_eq!(bodies.len(), n as usize, "{bodies:?}");
    assert!(
        !bodies.iter().any(|b| b == "FAIL"),
        "failed requests: {bodies:?}"
    );
    let answered: BTreeSet<&str> = bodies.iter().map(String::as_str).collect();
    let names: BTreeSet<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        answered, names,
        "not every replica answered (or someone else did)"
    );

    // The client's proxy counted exactly the requests sent, each server's proxy exactly
    // the ones it answered (kubelet's probes come from no workload: other series).
    let client_metrics = proxy_metrics(&client.ip);
    let out_after = metric_sum(&client_metrics, REQUESTS, &client_series);
    assert_eq!(
        out_after - out_before,
        u64::from(n),
        "client requests {out_before} -> {out_after}\n{client_metrics}"
    );
    for (s, before) in servers.iter().zip(&in_before) {
        let served = bodies.iter().filter(|b| *b == &s.name).count() as u64;
        let text = proxy_metrics(&s.ip);
        let after = metric_sum(&text, REQUESTS, &server_series);
        assert_eq!(
            after - before,
            served,
            "{}: inbound requests {before} -> {after}, served {served}\n{text}",
            s.name
        );
    }
    let line = client_metrics
        .lines()
        .find(|l| l.starts_with(REQUESTS) && l.contains(r#"reporter="source""#))
        .unwrap();
    report(&format!("client metric today: {line}"));

    // The pod's nat table, as `nsenter -t PID -n iptables -t nat -L -n -v` shows it.
    for chain in [
        "ISTIO_OUTPUT",
        "ISTIO_REDIRECT",
        "ISTIO_INBOUND",
        "ISTIO_IN_REDIRECT",
    ] {
        assert!(
            !nat_chain(client_pid, chain).is_empty(),
            "{chain} is empty in {}",
            client.name
        );
    }
    assert!(nat_packets(client_pid, "OUTPUT", "ISTIO_OUTPUT") >= u64::from(n));
    let redirected = nat_packets(client_pid, "ISTIO_REDIRECT", "REDIRECT");
    assert!(
        redirected >= u64::from(n),
        "ISTIO_REDIRECT counted {redirected} connections, sent {n}"
    );
    let rules = nat_chain(client_pid, "ISTIO_REDIRECT");
    assert!(
        rules.iter().any(|(_, r)| r.contains("redir ports 15001")),
        "{rules:?}"
    );
    for s in &servers {
        let pid = node.container_pid(s.container_id(PROXY));
        assert!(
            nat_packets(pid, "PREROUTING", "ISTIO_INBOUND") > 0,
            "{}",
            s.name
        );
        let inbound = nat_packets(pid, "ISTIO_IN_REDIRECT", "REDIRECT");
        assert!(inbound > 0, "{}: nothing redirected to 15006", s.name);
        let rules = nat_chain(pid, "ISTIO_INBOUND");
        for port in ["dpt:15090", "dpt:15021"] {
            assert!(
                rules
                    .iter()
                    .any(|(_, r)| r.contains("RETURN") && r.contains(port)),
                "{rules:?}"
            );
        }
    }

    // Memory of the proxy in a real pod, idle and after the requests, against what the
    // injection config requests for it.
    let busy_rss = rss_kib(client_pid);
    let request = node.kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "pod",
        &client.name,
        "-o",
        r#"jsonpath={.spec.containers[?(@.name=="istio-proxy")].resources.requests.memory}"#,
    ]);
    let server_rss: Vec<u64> = servers
        .iter()
        .map(|s| rss_kib(node.container_pid(s.container_id(PROXY))))
        .collect();
    report(&format!(
        "proxy RSS: client {idle_rss} KiB idle, {busy_rss} KiB after {n} requests; servers {server_rss:?} KiB; \
         injection config requests {request} ({} KiB)",
        quantity_kib(&request)
    ));
    assert!(busy_rss < quantity_kib(&request));
}

#[test]
fn opt_outs_get_no_sidecar() {
    let node = KubeNode::get();
    install_mesh();
    let plain = TestNamespace::new(node, "plain", &[]);
    let labelled = TestNamespace::new(node, "optout", &["istio-injection=enabled"]);
    let pod = |name: &str, labels: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  terminationGracePeriodSeconds: 1\n{extra}  containers:\n    - name: app\n      image: local/busybox:1.35\n      imagePullPolicy: IfNotPresent\n      command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
        )
    };
    node.apply(&["-n", &plain.name], &pod("unlabelled-ns", "", ""));
    node.apply(
        &["-n", &labelled.name],
        &pod("opted-out", "sidecar.istio.io/inject: \"false\"", ""),
    );
    node.apply(
        &["-n", &labelled.name],
        &pod("host-network", "", "  hostNetwork: true\n"),
    );
    // v1.20 has no kubernetes.io/metadata.name label, so the webhooks' NotIn on it
    // matches kube-system too: the injector's own list of never-injected namespaces is
    // what keeps this pod (which asks for injection) plain.
    let system_pod = format!("mesh-optout-{}", std::process::id());
    let _cleanup = DeleteOnDrop::new(node, &["-n", "kube-system", "pod", &system_pod]);
    node.apply(
        &["-n", "kube-system"],
        &pod(&system_pod, "sidecar.istio.io/inject: \"true\"", ""),
    );
    node.apply(&["-n", &labelled.name], &pod("control", "", ""));

    for (ns, name) in [
        (plain.name.as_str(), "unlabelled-ns"),
        (labelled.name.as_str(), "opted-out"),
        (labelled.name.as_str(), "host-network"),
        ("kube-system", system_pod.as_str()),
    ] {
        let p = eventually(&format!("{ns}/{name} running"), READY, || {
            let p = node.pod(ns, name);
            if p.all_ready() {
                Ok(p)
            } else {
                Err(p.summary())
            }
        });
        assert!(
            !p.is_injected(),
            "{ns}/{name} was injected: {}",
            p.summary()
        );
        assert_eq!(p.containers, ["app"]);
        assert!(p.init_containers.is_empty());
        assert!(p.injection_status.is_empty());
        assert_eq!(p.ready_column(), "1/1");
    }
    // The same pod without an opt-out, in the labelled namespace, is injected.
    let control = eventually("the control pod 2/2", READY, || {
        let p = node.pod(&labelled.name, "control");
        if p.all_ready() {
            Ok(p)
        } else {
            Err(p.summary())
        }
    });
    assert!(control.is_injected(), "{}", control.summary());
    assert_eq!(control.ready_column(), "2/2");
}

#[test]
fn job_that_calls_quitquitquit_completes() {
    let node = KubeNode::get();
    let ns = injected_ns(node, "job");
    // The app waits for its proxy, does its work through it, then tells it to exit:
    // POST /quitquitquit on the admin port (v1.20 has no native sidecars).
    let job = r#"apiVersion: batch/v1
kind: Job
metadata:
  name: quit
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 150
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: task
          image: local/busybox:1.35
          imagePullPolicy: IfNotPresent
          command:
            - sh
            - -c
            - |
              until wget -qO- http://127.0.0.1:15021/healthz/ready; do sleep 0.5; done
              echo work done
              wget -qO- --post-data= http://127.0.0.1:15021/quitquitquit
"#;
    let t0 = Instant::now();
    node.apply(&["-n", &ns.name], job);
    eventually("Job quit to complete", READY, || {
        let r = node.kubectl(&[
            "-n",
            &ns.name,
            "get",
            "job",
            "quit",
            "-o",
            "jsonpath={.status.succeeded}/{.status.failed}",
        ]);
        match r.stdout.trim() {
            "1/" => Ok(()),
            s if s.ends_with("/1") => panic!("Job quit failed: {s}\n{}", node.diagnose(&ns.name)),
            s => Err(format!("{s} {}\n{}", r.stderr, node.diagnose(&ns.name))),
        }
    });
    report(&format!(
        "Job with /quitquitquit completed in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    let exits = node.kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "pods",
        "-l",
        "job-name=quit",
        "-o",
        r#"jsonpath={range .items[0].status.initContainerStatuses[*]}{.name}={.state.terminated.exitCode} {end}{range .items[0].status.containerStatuses[*]}{.name}={.state.terminated.exitCode} {end}"#,
    ]);
    let exits: BTreeSet<&str> = exits.split_whitespace().collect();
    assert_eq!(
        exits,
        BTreeSet::from(["istio-init=0", "task=0", "istio-proxy=0"])
    );
    let logs = node.kubectl_ok(&["-n", &ns.name, "logs", "job/quit", "-c", "task"]);
    assert!(logs.contains("work done"), "{logs}");
}

/// The injected parts of a pod as the API server stored them: istio-init, istio-proxy and
/// the status annotation.
fn injected_parts(node: &KubeNode, ns: &str, pod: &str) -> Value {
    let pod: Value =
        serde_json::from_str(&node.kubectl_ok(&["-n", ns, "get", "pod", pod, "-o", "json"]))
            .unwrap();
    let find = |list: &str, name: &str| {
        let mut c = pod["spec"][list]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or(Value::Null);
        // The ServiceAccount token's Secret has a name of its own in each namespace.
        if let Some(mounts) = c["volumeMounts"].as_array_mut() {
            mounts.retain(|m| m["mountPath"] != "/var/run/secrets/kubernetes.io/serviceaccount");
        }
        c
    };
    let annotations = &pod["metadata"]["annotations"];
    serde_json::json!({
        "init": find("initContainers", INIT),
        "proxy": find("containers", PROXY),
        "status": annotations["sidecar.istio.io/status"],
        "default-container": annotations["kubectl.kubernetes.io/default-container"],
    })
}

#[test]
fn kube_inject_output_runs_like_webhook_injection() {
    let node = KubeNode::get();
    install_mesh();
    // kube-inject with the injection config the webhook serves (deploy/'s ConfigMap).
    let config = node.kubectl_ok(&[
        "-n",
        "mesh-system",
        "get",
        "configmap",
        "mesh-injection-config",
        "-o",
        "jsonpath={.data.config\\.yaml}",
    ]);
    let dir = std::env::temp_dir().join(format!("mesh-node-kube-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = std::process::Command::new(bin("mesh-webhook"));
    cmd.arg("kube-inject")
        .arg("-f")
        .arg(repo_file("examples/web-local.yaml"))
        .arg("--config")
        .arg(&config_path);
    let injected = run_with_timeout(cmd, None, Duration::from_secs(30));
    std::fs::remove_dir_all(&dir).ok();
    assert!(injected.ok, "kube-inject: {}", injected.stderr);

    // An unlabelled namespace: only kube-inject's rewrite is there.
    let offline = TestNamespace::new(node, "kinject", &[]);
    let webhook = TestNamespace::new(node, "kwebhook", &["istio-injection=enabled"]);
    node.apply(&["-n", &webhook.name], &example());
    let (pods, took) = apply_example(node, &offline.name, &injected.stdout);
    report(&format!(
        "kube-inject | kubectl apply -> all 3 pods 2/2 Ready: {:.1} s",
        took.as_secs_f64()
    ));
    assert_injected(node, &offline.name, &pods);
    let webhook_pods = node.wait_pods_ready(&webhook.name, None, 3, READY);
    assert_injected(node, &webhook.name, &webhook_pods);

    // The same containers, arguments, security and status annotation either way.
    for app in ["web-", "sleep-"] {
        let a = injected_parts(node, &offline.name, &by_app(&pods, app)[0].name);
        let b = injected_parts(node, &webhook.name, &by_app(&webhook_pods, app)[0].name);
        assert_eq!(
            a, b,
            "{app}: kube-inject (target/*/mesh-webhook) and the webhook (the image in the node) \
             disagree; an image older than this checkout? (docker/build.sh)\nkube-inject: {a:#}\nwebhook: {b:#}"
        );
    }

    // And it serves: both replicas answer through both proxies.
    let client = by_app(&pods, "sleep")[0];
    let ip = cluster_ip(node, &offline.name, "web");
    let bodies = requests(
        node,
        &offline.name,
        &client.name,
        &format!("http://{ip}/"),
        20,
    );
    assert!(!bodies.iter().any(|b| b == "FAIL"), "{bodies:?}");
    let answered: BTreeSet<&str> = bodies.iter().map(String::as_str).collect();
    let names: BTreeSet<&str> = by_app(&pods, "web-")
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(answered, names);
}

/// Deleting one of two server pods while a client sends a request every 100 ms through
/// the Service loses no request. The deleted pod's proxy gets SIGTERM while kube-proxy
/// is still removing the pod's endpoint (0.1-0.3 s here): it turns not-ready but keeps
/// accepting for `--drain-delay` (5 s), so the connections that still arrive are
/// served; before, it closed its listeners at once and about every second try lost a
/// request ("connection reset", 0.14-0.29 s after the delete).
#[test]
fn deleting_a_server_pod_under_steady_requests_loses_none() {
    let node = KubeNode::get();
    let ns = injected_ns(node, "del");
    let (pods, _) = apply_example(node, &ns.name, &example());
    assert_injected(node, &ns.name, &pods);
    let client = by_app(&pods, "sleep")[0].name.clone();
    let servers = by_app(&pods, "web-");
    assert_eq!(servers.len(), 2);
    let victim = servers[0].name.clone();
    let ip = cluster_ip(node, &ns.name, "web");

    let n = 80;
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do i=$((i+1)); timeout 5 wget -qO- http://{ip}/ || echo FAIL; sleep 0.1; done"
    );
    let cmd = node.kubectl_cmd(&[
        "-n", &ns.name, "exec", &client, "-c", "sleep", "--", "sh", "-c", &script,
    ]);
    let started = Instant::now();
    let run = std::thread::spawn(move || run_with_timeout(cmd, None, Duration::from_secs(90)));
    std::thread::sleep(Duration::from_secs(2));
    let deleted_at = started.elapsed();
    node.kubectl_ok(&["-n", &ns.name, "delete", "pod", &victim, "--wait=false"]);
    let r = run.join().expect("request loop");
    assert!(r.ok, "kubectl exec {client}: {}{}", r.stdout, r.stderr);
    let bodies: Vec<&str> = r.stdout.lines().map(str::trim).collect();
    assert_eq!(bodies.len(), n, "{bodies:?}");
    let failed = bodies.iter().filter(|b| **b == "FAIL").count();
    report(&format!(
        "pod deleted {:.1} s into {n} requests at 10/s: {failed} failed",
        deleted_at.as_secs_f64()
    ));
    assert_eq!(
        failed, 0,
        "requests lost while {victim} was deleted: {bodies:?}"
    );
    assert!(
        bodies.contains(&victim.as_str()),
        "{victim} never answered before its deletion: {bodies:?}"
    );
    let last = bodies[bodies.len() - 10..].to_vec();
    assert!(
        !last.contains(&victim.as_str()),
        "{victim} still answered at the end: {last:?}"
    );
}
