//! Restarting the webhook Deployment while pods are being created refuses no pod
//! (`kubectl rollout restart`, 2 replicas, failurePolicy Fail), on kube-node.
//!
//! Its own test binary: the restart must not overlap node_flow's tests, which count the
//! webhook's replicas.
//!
//! The load is what made it fail before: server-side dry-run pod creations through the
//! API server as fast as 16 parallel clients go (a few hundred per second here), each
//! answered with the mutated pod. Before, about 1 + 4 to 15 creations were refused with
//! `failed calling webhook ... EOF` right when an old replica ended its shutdown delay:
//! the API server's kept-alive connections to it were closed under a request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::process::Command;
use std::time::{Duration, Instant};

use mesh_tests::kube_node::{KubeNode, TestNamespace, install_mesh, report, run_with_timeout};

/// Server, CA, client certificate and key of the node's kubeconfig (files on disk).
fn api_credentials(node: &KubeNode) -> [String; 4] {
    let out = node.kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server} {.clusters[0].cluster.certificate-authority} \
         {.users[0].user.client-certificate} {.users[0].user.client-key}",
    ]);
    let parts: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
    assert_eq!(parts.len(), 4, "kubeconfig fields: {out:?}");
    [0, 1, 2, 3].map(|i| parts[i].clone())
}

/// What one batch of creations got back.
struct Batch {
    /// Each answer's HTTP status.
    codes: Vec<String>,
    /// How many answers were a pod with our sidecar in it.
    injected: usize,
}

/// Dry-run pod creations in one namespace, straight to the API server with the node's
/// admin credentials (read once, with the pod's JSON written once).
struct Load {
    ns: String,
    dir: std::path::PathBuf,
    body: std::path::PathBuf,
    credentials: [String; 4],
}

impl Load {
    fn new(node: &KubeNode, ns: &str, dir: &std::path::Path) -> Load {
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"generateName":"load-","namespace":"{ns}"}},"spec":{{"containers":[{{"name":"app","image":"local/busybox:1.35","command":["sleep","3600"]}}]}}}}"#
        );
        let body = dir.join("pod.json");
        std::fs::write(&body, pod).unwrap();
        Load {
            ns: ns.to_owned(),
            dir: dir.to_owned(),
            body,
            credentials: api_credentials(node),
        }
    }
}

/// One batch of `n` dry-run pod creations, 16 at a time.
fn create_batch(load: &Load, batch: u32, n: u32) -> Batch {
    let [server, ca, cert, key] = &load.credentials;
    let (ns, body) = (&load.ns, &load.body);
    let out_dir = load.dir.join(format!("b{batch}"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--parallel",
        "--parallel-max",
        "16",
        "--cacert",
        ca,
        "--cert",
        cert,
    ])
    .args(["--key", key, "-H", "Content-Type: application/json"])
    .arg("--data-binary")
    .arg(format!("@{}", body.display()))
    .arg("-o")
    .arg(out_dir.join("r#1.json"))
    .args(["-w", "%{http_code}\n"])
    .arg(format!(
        "{server}/api/v1/namespaces/{ns}/pods?dryRun=All&n=[1-{n}]"
    ));
    let r = run_with_timeout(cmd, None, Duration::from_secs(120));
    assert!(r.ok, "curl: {}{}", r.stdout, r.stderr);
    let codes: Vec<String> = r.stdout.lines().map(str::to_owned).collect();
    assert_eq!(codes.len(), n as usize, "{}", r.stderr);
    let bodies: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert_eq!(
        bodies.len(),
        n as usize,
        "answers written to {}",
        out_dir.display()
    );
    let has_sidecar = |b: &String| {
        serde_json::from_str::<serde_json::Value>(b)
            .ok()
            .and_then(|pod| pod.pointer("/spec/containers").cloned())
            .and_then(|c| c.as_array().cloned())
            .is_some_and(|c| c.iter().any(|c| c["name"] == "istio-proxy"))
    };
    let injected = bodies.iter().filter(|b| has_sidecar(b)).count();
    if injected < bodies.len() {
        let sample = bodies.iter().find(|b| !has_sidecar(b));
        eprintln!("an answer without the sidecar: {sample:.600?}");
    }
    Batch { codes, injected }
}

#[test]
fn restarting_the_webhook_while_pods_are_created_refuses_none() {
    let node = KubeNode::get();
    install_mesh();
    let ns = TestNamespace::new(node, "restart", &["istio-injection=enabled"]);
    let dir = std::env::temp_dir().join(format!("mesh-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let load = Load::new(node, &ns.name, &dir);

    // kube-proxy may still be programming the webhook Service's ClusterIP just after
    // the install: wait until one creation is answered, injected, before measuring.
    let warm = Instant::now();
    loop {
        let b = create_batch(&load, 0, 1);
        if b.codes == ["201"] && b.injected == 1 {
            break;
        }
        assert!(
            warm.elapsed() < Duration::from_secs(60),
            "the webhook never answered a creation: {:?}",
            b.codes
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut results = vec![create_batch(&load, 1, 50)];
    let started = Instant::now();
    node.kubectl_ok(&[
        "-n",
        "mesh-system",
        "rollout",
        "restart",
        "deployment/mesh-webhook",
    ]);
    let rollout = {
        let cmd = node.kubectl_cmd(&[
            "-n",
            "mesh-system",
            "rollout",
            "status",
            "deployment/mesh-webhook",
            "--timeout=180s",
        ]);
        std::thread::spawn(move || run_with_timeout(cmd, None, Duration::from_secs(200)))
    };
    let mut batch = 2;
    while !rollout.is_finished() {
        results.push(create_batch(&load, batch, 300));
        batch += 1;
    }
    let status = rollout.join().unwrap();
    assert!(status.ok, "rollout: {}{}", status.stdout, status.stderr);
    // The old replicas end their shutdown delay after the rollout is complete: keep
    // creating through it.
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        results.push(create_batch(&load, batch, 300));
        batch += 1;
    }
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let total: usize = results.iter().map(|b| b.codes.len()).sum();
    let refused: Vec<&String> = results
        .iter()
        .flat_map(|b| &b.codes)
        .filter(|c| *c != "201")
        .collect();
    let plain = total - results.iter().map(|b| b.injected).sum::<usize>();
    report(&format!(
        "webhook restart: {total} dry-run pod creations over {:.0} s: {} refused, {plain} without sidecar",
        took.as_secs_f64(),
        refused.len(),
    ));
    assert!(
        refused.is_empty(),
        "refused creations (HTTP status): {refused:?}"
    );
    assert_eq!(plain, 0, "creations answered without the sidecar");
}
