//! The real node the `node_*` tests run on: kube-node (`../shared/kube-node/`), a
//! single-node Kubernetes v1.20.2 in its own network namespace, with the mesh's images
//! built into its docker by `docker/build.sh` (scripts/test.sh does all of it).
//!
//! Environment (scripts/test.sh exports it; by hand, after kube-node's start.sh):
//! - `KUBE_NODE_KUBECONFIG`: the node's kubeconfig (`$HOME/.kube-node/run/kubeconfig`). A
//!   variable of its own, so `KUBECONFIG` can keep pointing at the kube-local API server
//!   the webhook tests use.
//! - `KUBE_NODE_KUBECTL` (default: `bin/kubectl` beside that `run/` folder, kubectl v1.20.2;
//!   never `/usr/bin/kubectl`, which may be another build).
//! - `KUBE_NODE_DOCKER_HOST` (default: `unix://` + `docker.sock` in that `run/` folder).
//! - `MESH_NODE_REPORT` (optional): a file the tests append their measurements to
//!   ([`report`]; scripts/test.sh prints it at the end, as cargo test hides a passing
//!   test's output).
//!
//! Without them, or with a node that does not answer, every test fails with a message
//! that says so: never a skip.
//!
//! Pods are looked at from the host as an operator would: their containers' PIDs come
//! from the node's docker, `/proc/PID` gives memory, and `nsenter -t PID -n` enters the
//! pod's network namespace. Pod IPs (198.18.0.0/24) are routed to the node from the host.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long one kubectl or docker call may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// The repository root (this crate lives in `tests/`). Cargo sets CARGO_MANIFEST_DIR for
/// the test process too; that one wins over the path compiled in, which is another
/// checkout's when a shared target folder was built from there.
pub fn repo_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|d| d.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A repository file, e.g. `examples/web-local.yaml`.
pub fn repo_file(rel: &str) -> PathBuf {
    repo_root().join(rel)
}

/// Prints a measurement (timings, memory) on stderr and appends it to `MESH_NODE_REPORT`.
pub fn report(line: &str) {
    eprintln!("{line}");
    if let Some(path) = env_path("MESH_NODE_REPORT") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("cannot append to MESH_NODE_REPORT={}: {e}", path.display());
        }
    }
}

/// What a finished command said.
#[derive(Debug, Clone)]
pub struct Run {
    pub ok: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(out: Output) -> Run {
        Run {
            ok: out.status.success(),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `cmd` with `stdin` (if any), killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> Run {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_owned();
        std::thread::spawn(move || {
            // A command that exits before reading its input is not an error here.
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    // Drain both pipes on threads, so a chatty command never blocks on a full pipe.
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run::from_output(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// The node, found from the environment (see the module docs).
pub struct KubeNode {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub docker_host: String,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

const HOW: &str = "run the tests with scripts/test.sh (it sets up and starts kube-node, builds \
                   the images into it and exports KUBE_NODE_KUBECONFIG), or by hand: \
                   ../shared/kube-node/start.sh; . $HOME/.kube-node/run/env; docker/build.sh; \
                   export KUBE_NODE_KUBECONFIG=$KUBECONFIG";

impl KubeNode {
    /// The node from `KUBE_NODE_KUBECONFIG` & co., checked once per test process to be
    /// up (node Ready) and to hold the mesh's images. Panics, loudly, otherwise.
    pub fn get() -> &'static KubeNode {
        static NODE: OnceLock<Result<KubeNode, String>> = OnceLock::new();
        match NODE.get_or_init(KubeNode::connect) {
            Ok(node) => node,
            Err(e) => panic!("kube-node is not available: {e}\n  ({HOW})"),
        }
    }

    fn connect() -> Result<KubeNode, String> {
        let kubeconfig = env_path("KUBE_NODE_KUBECONFIG")
            .ok_or("KUBE_NODE_KUBECONFIG is not set (the node tests never skip)")?;
        if !kubeconfig.is_file() {
            return Err(format!(
                "KUBE_NODE_KUBECONFIG={} is not a file (is kube-node started?)",
                kubeconfig.display()
            ));
        }
        let run_dir = kubeconfig
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let kubectl = env_path("KUBE_NODE_KUBECTL").unwrap_or_else(|| {
            run_dir
                .parent()
                .map(|d| d.join("bin/kubectl"))
                .unwrap_or_default()
        });
        if !kubectl.is_file() {
            return Err(format!(
                "no kubectl at {} (set KUBE_NODE_KUBECTL to kube-node's bin/kubectl)",
                kubectl.display()
            ));
        }
        let docker_host = std::env::var("KUBE_NODE_DOCKER_HOST")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| format!("unix://{}", run_dir.join("docker.sock").display()));
        // Never let a request to a stopped node leave the machine: kube-node's API address
        // sits on its veth (a local /30); without it, it would go out the default route.
        let config = std::fs::read_to_string(&kubeconfig)
            .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
        let host = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: https://"))
            .and_then(|rest| rest.rsplit_once(':').map(|(h, _)| h.to_owned()))
            .ok_or_else(|| format!("no `server: https://HOST:PORT` in {}", kubeconfig.display()))?;
        let route = run_with_timeout(
            {
                let mut c = Command::new("ip");
                c.args(["-o", "route", "get", &host]);
                c
            },
            None,
            Duration::from_secs(10),
        );
        if !route.ok || route.stdout.contains(" via ") {
            return Err(format!(
                "its API server {host} is not on a local link: not started, or stopped \
                 (ip route get {host}: {}{})",
                route.stdout.trim(),
                route.stderr.trim()
            ));
        }
        let node = KubeNode {
            kubeconfig,
            kubectl,
            docker_host,
        };
        let ready = node.kubectl(&[
            "get",
            "nodes",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
        ]);
        if !ready.ok {
            return Err(format!(
                "`kubectl get nodes` failed ({}): {}",
                ready.status,
                ready.stderr.trim()
            ));
        }
        if !ready.stdout.lines().any(|l| l.ends_with("=True")) {
            return Err(format!("no Ready node: {}", ready.stdout.trim()));
        }
        let images = node.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        if !images.ok {
            return Err(format!(
                "the node's docker at {} does not answer: {}",
                node.docker_host,
                images.stderr.trim()
            ));
        }
        for (key, image) in images_env() {
            if key.ends_with("_IMAGE") && !images.stdout.lines().any(|l| l == image) {
                return Err(format!(
                    "{image} ({key} in docker/images.env) is not in the node's docker: \
                     DOCKER_HOST={} docker/build.sh",
                    node.docker_host
                ));
            }
        }
        Ok(node)
    }

    /// A `kubectl` command for this node (its kubeconfig, a request timeout).
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=60s")
            .args(args);
        cmd
    }

    /// Runs kubectl; the caller looks at the outcome.
    pub fn kubectl(&self, args: &[&str]) -> Run {
        run_with_timeout(self.kubectl_cmd(args), None, CALL_TIMEOUT)
    }

    /// Runs kubectl with `stdin`; the caller looks at the outcome.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Run {
        run_with_timeout(self.kubectl_cmd(args), Some(stdin), CALL_TIMEOUT)
    }

    /// Runs kubectl and returns its stdout; panics with its stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let r = self.kubectl(args);
        assert!(
            r.ok,
            "kubectl {} failed ({}): {}{}",
            args.join(" "),
            r.status,
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// `kubectl apply -f -` of `yaml` (extra args first, e.g. `-n NS`); panics on failure.
    pub fn apply(&self, extra: &[&str], yaml: &str) -> String {
        let mut args = vec!["apply"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-f", "-"]);
        let r = self.kubectl_stdin(&args, yaml);
        assert!(
            r.ok,
            "kubectl {} failed ({}): {}{}\n--- input:\n{yaml}",
            args.join(" "),
            r.status,
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// Runs `docker` against the node's engine.
    pub fn docker(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.docker_host).args(args);
        run_with_timeout(cmd, None, CALL_TIMEOUT)
    }

    /// The host PID of a container, from its status' `containerID` (`docker://ID`).
    pub fn container_pid(&self, container_id: &str) -> u32 {
        let id = container_id
            .strip_prefix("docker://")
            .unwrap_or(container_id);
        let r = self.docker(&["inspect", "-f", "{{.State.Pid}}", id]);
        assert!(r.ok, "docker inspect {id}: {}", r.stderr);
        let pid: u32 = r
            .stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("docker inspect {id}: no PID in {:?}", r.stdout));
        assert!(pid > 0, "container {id} is not running (PID 0)");
        pid
    }

    /// `kubectl exec` into `container` of `pod`; the caller looks at the outcome.
    pub fn exec(&self, ns: &str, pod: &str, container: &str, cmd: &[&str]) -> Run {
        let mut args = vec!["-n", ns, "exec", pod, "-c", container, "--"];
        args.extend_from_slice(cmd);
        self.kubectl(&args)
    }

    /// The minor version of the API server (20 for v1.20.2).
    pub fn server_minor(&self) -> u32 {
        let v = self.kubectl_ok(&["version", "-o", "json"]);
        // "serverVersion": { "major": "1", "minor": "20", ... }
        let server = v
            .split_once("\"serverVersion\"")
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("no serverVersion in {v}"));
        let minor = server
            .split_once("\"minor\":")
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("no minor in {server}"));
        minor
            .trim_start()
            .trim_start_matches('"')
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("bad server minor in {server}"))
    }

    /// Pods, events and recent warnings of `ns`, for failure messages.
    pub fn diagnose(&self, ns: &str) -> String {
        let pods = self.kubectl(&["-n", ns, "get", "pods", "-o", "wide"]);
        let events = self.kubectl(&["-n", ns, "get", "events", "--sort-by=.lastTimestamp"]);
        let describe = self.kubectl(&["-n", ns, "describe", "pods"]);
        let tail = |s: &str, n: usize| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "--- kubectl -n {ns} get pods -o wide\n{}{}\n--- events (last 30)\n{}\n--- describe pods (last 80 lines)\n{}",
            pods.stdout,
            pods.stderr,
            tail(&events.stdout, 30),
            tail(&describe.stdout, 80)
        )
    }

    /// Every pod of `ns` (optionally only those matching the label `selector`).
    pub fn pods(&self, ns: &str, selector: Option<&str>) -> Vec<PodInfo> {
        let mut args = vec!["-n", ns, "get", "pods", "-o", POD_JSONPATH];
        if let Some(sel) = selector {
            args.extend_from_slice(&["-l", sel]);
        }
        let out = self.kubectl_ok(&args);
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(PodInfo::parse)
            .collect()
    }

    /// One pod of `ns`.
    pub fn pod(&self, ns: &str, name: &str) -> PodInfo {
        let out = self.kubectl_ok(&["-n", ns, "get", "pod", name, "-o", POD_JSONPATH_ONE]);
        PodInfo::parse(out.trim())
    }

    /// Waits until `ns` has exactly `count` pods (matching `selector`) and every one is
    /// Running with all its containers ready; returns them. Panics with the namespace's
    /// pods and events after `timeout`.
    pub fn wait_pods_ready(
        &self,
        ns: &str,
        selector: Option<&str>,
        count: usize,
        timeout: Duration,
    ) -> Vec<PodInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let pods = self.pods(ns, selector);
            if pods.len() == count && pods.iter().all(PodInfo::all_ready) {
                return pods;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{ns}: wanted {count} pods all Running and ready within {timeout:?}, have {:?}\n{}",
                    pods.iter().map(PodInfo::summary).collect::<Vec<_>>(),
                    self.diagnose(ns)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// docker/images.env as (key, value) pairs.
pub fn images_env() -> Vec<(String, String)> {
    let path = repo_file("docker/images.env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// One value of docker/images.env.
pub fn image(key: &str) -> String {
    images_env()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("docker/images.env has no {key}"))
}

// One line per pod, fields split by '|', lists by ',', a container's parts by ':'.
// Containers: name:ready:restarts:containerID; init: name:exitCode:containerID.
macro_rules! pod_fields {
    () => {
        concat!(
            "{.metadata.name}|{.status.phase}|{.status.podIP}|{.spec.hostNetwork}|",
            "{range .spec.initContainers[*]}{.name},{end}|{range .spec.containers[*]}{.name},{end}|",
            "{range .status.initContainerStatuses[*]}{.name}:{.state.terminated.exitCode}:{.containerID},{end}|",
            "{range .status.containerStatuses[*]}{.name}:{.ready}:{.restartCount}:{.containerID},{end}|",
            r"{.metadata.annotations.sidecar\.istio\.io/status}"
        )
    };
}
const POD_JSONPATH: &str = concat!(
    "jsonpath={range .items[*]}",
    pod_fields!(),
    r#"{"\n"}{end}"#
);
const POD_JSONPATH_ONE: &str = concat!("jsonpath=", pod_fields!());

/// A container's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub name: String,
    pub ready: bool,
    pub restarts: u32,
    pub id: String,
}

/// An init container's status: its exit code once it has terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitState {
    pub name: String,
    pub exit_code: Option<i32>,
    pub id: String,
}

/// What the node tests look at in a pod.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub name: String,
    pub phase: String,
    pub ip: String,
    pub host_network: bool,
    /// Names in the spec, in order.
    pub init_containers: Vec<String>,
    pub containers: Vec<String>,
    pub init_statuses: Vec<InitState>,
    pub statuses: Vec<ContainerState>,
    /// The `sidecar.istio.io/status` annotation (empty when not injected).
    pub injection_status: String,
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').filter(|x| !x.is_empty())
}

impl PodInfo {
    fn parse(line: &str) -> PodInfo {
        let f: Vec<&str> = line.splitn(9, '|').collect();
        assert_eq!(f.len(), 9, "unexpected pod line {line:?}");
        PodInfo {
            name: f[0].to_owned(),
            phase: f[1].to_owned(),
            ip: f[2].to_owned(),
            host_network: f[3] == "true",
            init_containers: list(f[4]).map(str::to_owned).collect(),
            containers: list(f[5]).map(str::to_owned).collect(),
            init_statuses: list(f[6])
                .map(|c| {
                    let mut p = c.splitn(3, ':');
                    InitState {
                        name: p.next().unwrap_or_default().to_owned(),
                        exit_code: p.next().and_then(|x| x.parse().ok()),
                        id: p.next().unwrap_or_default().to_owned(),
                    }
                })
                .collect(),
            statuses: list(f[7])
                .map(|c| {
                    let mut p = c.splitn(4, ':');
                    ContainerState {
                        name: p.next().unwrap_or_default().to_owned(),
                        ready: p.next() == Some("true"),
                        restarts: p.next().and_then(|x| x.parse().ok()).unwrap_or(0),
                        id: p.next().unwrap_or_default().to_owned(),
                    }
                })
                .collect(),
            injection_status: f[8].to_owned(),
        }
    }

    /// Running, and every container ready (`kubectl get pods` shows N/N).
    pub fn all_ready(&self) -> bool {
        self.phase == "Running"
            && !self.statuses.is_empty()
            && self.statuses.len() == self.containers.len()
            && self.statuses.iter().all(|c| c.ready)
    }

    /// `READY` as `kubectl get pods` prints it, e.g. `2/2`.
    pub fn ready_column(&self) -> String {
        format!(
            "{}/{}",
            self.statuses.iter().filter(|c| c.ready).count(),
            self.containers.len()
        )
    }

    /// One line for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "{} {} {} init={:?} containers={:?}",
            self.name,
            self.phase,
            self.ready_column(),
            self.init_statuses
                .iter()
                .map(|i| format!("{}:{:?}", i.name, i.exit_code))
                .collect::<Vec<_>>(),
            self.containers
        )
    }

    /// The docker container ID of container `name` (panics when it has none yet).
    pub fn container_id(&self, name: &str) -> &str {
        self.statuses
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.id.as_str())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| panic!("{}: no running container {name}", self.summary()))
    }

    /// Whether the injector added its containers.
    pub fn is_injected(&self) -> bool {
        self.containers
            .iter()
            .any(|c| c == mesh_common::containers::PROXY)
            || self
                .init_containers
                .iter()
                .any(|c| c == mesh_common::containers::INIT)
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call, valid as a namespace name.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 100_000)
        .unwrap_or(0);
    format!("{prefix}-{}-{t}-{n}", std::process::id() % 100_000)
}

/// A namespace that is deleted when this value drops (also when the test fails).
pub struct TestNamespace {
    pub name: String,
    node: &'static KubeNode,
}

impl TestNamespace {
    /// Creates namespace `prefix-…` with `labels` (`key=value`), set at creation so the
    /// webhook's namespaceSelector sees them for the first pod already.
    pub fn new(node: &'static KubeNode, prefix: &str, labels: &[&str]) -> TestNamespace {
        let name = unique_name(prefix);
        let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
        if !labels.is_empty() {
            yaml.push_str("  labels:\n");
            for l in labels {
                let (k, v) = l
                    .split_once('=')
                    .unwrap_or_else(|| panic!("label {l} is not key=value"));
                yaml.push_str(&format!("    {k}: \"{v}\"\n"));
            }
        }
        node.apply(&[], &yaml);
        // The ServiceAccount controller makes `default` soon after; pods need it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !node
            .kubectl(&["-n", &name, "get", "serviceaccount", "default"])
            .ok
        {
            assert!(
                Instant::now() < deadline,
                "namespace {name}: no ServiceAccount default after 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        TestNamespace { name, node }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let r = self.node.kubectl(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
        if !r.ok {
            eprintln!("cleanup: deleting namespace {}: {}", self.name, r.stderr);
        }
    }
}

/// Polls `probe` every 250 ms until it returns `Some`, or panics after `timeout` with
/// `what` and the last `Err` the probe gave.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Resident set size (`VmRSS`) of a host process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Runs `program args` in the network namespace of host process `pid` (`nsenter -t PID -n`).
pub fn in_netns(pid: u32, program: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new("nsenter");
    cmd.arg("-t")
        .arg(pid.to_string())
        .arg("-n")
        .arg("--")
        .arg(program)
        .args(args);
    run_with_timeout(cmd, None, CALL_TIMEOUT)
}

/// The mesh installed with `kubectl apply -k deploy/`, as the tests found it.
#[derive(Debug, Clone)]
pub struct MeshInstall {
    /// What `kubectl apply -k deploy/` said, verbatim.
    pub apply: Run,
    /// The API server's minor version.
    pub server_minor: u32,
    /// The workaround's output, when the server has no `policy/v1` (v1.20).
    pub pdb_workaround: Option<Run>,
    /// From the start of `kubectl apply -k deploy/` to 2 ready replicas with caBundle set.
    pub ready_after: Duration,
}

/// What the node tests install: the default install for a cluster without DNS
/// (deploy/overlays/kube-node: mesh-control at a fixed ClusterIP, DNS capture on).
pub const DEPLOY_DIR: &str = "deploy/overlays/kube-node";

/// deploy/README.md's one-line workaround for servers without `policy/v1` (< 1.21), for
/// [`DEPLOY_DIR`].
pub const PDB_WORKAROUND: &str = "kubectl kustomize deploy/overlays/kube-node | sed 's#^apiVersion: policy/v1$#apiVersion: policy/v1beta1#' | kubectl apply -f -";

/// Installs the mesh once per test process (`kubectl apply -k deploy/overlays/kube-node`, and on servers
/// older than 1.21 deploy/README.md's PDB workaround), then waits for 2 ready webhook
/// replicas, both caBundles and the Service's 2 endpoints. Panics with the details when
/// it cannot.
pub fn install_mesh() -> &'static MeshInstall {
    static MESH: OnceLock<Result<MeshInstall, String>> = OnceLock::new();
    match MESH.get_or_init(|| {
        std::panic::catch_unwind(do_install_mesh).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".into())
        })
    }) {
        Ok(m) => m,
        Err(e) => panic!("installing the mesh with kubectl apply -k {DEPLOY_DIR} failed: {e}"),
    }
}

fn do_install_mesh() -> MeshInstall {
    let node = KubeNode::get();
    let started = Instant::now();
    let mut cmd = node.kubectl_cmd(&["apply", "-k"]);
    cmd.arg(repo_file(DEPLOY_DIR));
    let apply = run_with_timeout(cmd, None, CALL_TIMEOUT);
    let server_minor = node.server_minor();
    let pdb_workaround = if server_minor < 21 {
        // The line deploy/README.md gives, run as written (kubectl from this node's PATH).
        let mut sh = Command::new("sh");
        let bin_dir = node.kubectl.parent().expect("kubectl has a folder");
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        sh.arg("-c")
            .arg(PDB_WORKAROUND)
            .current_dir(repo_root())
            .env("PATH", path)
            .env("KUBECONFIG", &node.kubeconfig);
        let r = run_with_timeout(sh, None, CALL_TIMEOUT);
        assert!(
            r.ok,
            "the PDB workaround `{PDB_WORKAROUND}` failed: {}{}",
            r.stdout, r.stderr
        );
        Some(r)
    } else {
        assert!(
            apply.ok,
            "kubectl apply -k {DEPLOY_DIR} failed: {}{}",
            apply.stdout, apply.stderr
        );
        None
    };
    let ns = "mesh-system";
    for deployment in ["mesh-webhook", "mesh-control"] {
        eventually(
            &format!("2 ready {deployment} replicas"),
            Duration::from_secs(180),
            || {
                let r = node.kubectl(&[
                    "-n",
                    ns,
                    "get",
                    "deployment",
                    deployment,
                    "-o",
                    "jsonpath={.status.readyReplicas}/{.status.replicas}",
                ]);
                if r.stdout.trim() == "2/2" {
                    Ok(())
                } else {
                    Err(format!("{} {}\n{}", r.stdout, r.stderr, node.diagnose(ns)))
                }
            },
        );
    }
    eventually(
        "caBundle in both webhooks of mesh-sidecar-injector",
        Duration::from_secs(60),
        || {
            let r = node.kubectl(&[
                "get",
                "mutatingwebhookconfiguration",
                "mesh-sidecar-injector",
                "-o",
                r#"jsonpath={range .webhooks[*]}{.name}={.clientConfig.caBundle}{"\n"}{end}"#,
            ]);
            let lines: Vec<&str> = r.stdout.lines().collect();
            if lines.len() == 2
                && lines
                    .iter()
                    .all(|l| l.split_once('=').is_some_and(|(_, ca)| ca.len() > 100))
            {
                Ok(())
            } else {
                Err(format!("{} {}", r.stdout, r.stderr))
            }
        },
    );
    eventually(
        "2 endpoints behind Service mesh-webhook",
        Duration::from_secs(60),
        || {
            let r = node.kubectl(&[
                "-n",
                ns,
                "get",
                "endpoints",
                "mesh-webhook",
                "-o",
                "jsonpath={range .subsets[*].addresses[*]}{.ip} {end}",
            ]);
            if r.stdout.split_whitespace().count() == 2 {
                Ok(())
            } else {
                Err(format!("{} {}", r.stdout, r.stderr))
            }
        },
    );
    MeshInstall {
        apply,
        server_minor,
        pdb_workaround,
        ready_after: started.elapsed(),
    }
}

/// Deletes one object when dropped (also when the test fails): `kubectl delete ARGS`.
pub struct DeleteOnDrop {
    node: &'static KubeNode,
    args: Vec<String>,
}

impl DeleteOnDrop {
    /// `args` name the object as `kubectl delete` takes it, e.g. `["-n", "kube-system", "pod", "x"]`.
    pub fn new(node: &'static KubeNode, args: &[&str]) -> DeleteOnDrop {
        DeleteOnDrop {
            node,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let mut args = vec!["delete"];
        args.extend(self.args.iter().map(String::as_str));
        args.extend(["--wait=false", "--ignore-not-found"]);
        let r = self.node.kubectl(&args);
        if !r.ok {
            eprintln!("cleanup: kubectl {}: {}", args.join(" "), r.stderr);
        }
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The Prometheus text of the proxy in the pod at `pod_ip` (`:15090/stats/prometheus`,
/// where the pod's `prometheus.io/*` annotations send a scraper).
pub fn proxy_metrics(pod_ip: &str) -> String {
    let addr: SocketAddr = format!("{pod_ip}:{}", mesh_common::PROXY_METRICS_PORT)
        .parse()
        .unwrap_or_else(|e| panic!("pod IP {pod_ip:?}: {e}"));
    match http_get(addr, mesh_common::PROXY_METRICS_PATH) {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET {addr}/stats/prometheus: {status} {body}"),
        Err(e) => panic!("GET {addr}/stats/prometheus: {e}"),
    }
}

/// Sum of every series of `name` whose label text contains all of `labels`
/// (e.g. `direction="inbound"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A Kubernetes memory quantity (`128Mi`, `1Gi`, `64M`, plain bytes) in KiB.
pub fn quantity_kib(q: &str) -> u64 {
    let q = q.trim();
    let split = q
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: f64 = num.parse().unwrap_or_else(|_| panic!("bad quantity {q:?}"));
    let bytes = match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        _ => panic!("unknown quantity unit in {q:?}"),
    };
    (n * bytes / 1024.0) as u64
}
