//! Shared by the deploy_* tests: find kubectl, render deploy/ with it, read
//! docker/images.env. Never skips: a missing kubectl or KUBECONFIG fails the test with
//! the steps that provide it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A suffix no other run (nor an earlier call in this one) uses for the objects a test
/// creates in the shared API server: process id, milliseconds, a counter.
pub fn run_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or(0);
    format!("{}-{t}-{n}", std::process::id() % 100_000)
}

/// `prefix-<run_id>`: a name for an object in the shared API server.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", run_id())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("webhook/ has a parent")
        .to_owned()
}

/// kubectl from `KUBECTL`, else kube-local's (`~/.kube-local/bin/kubectl`).
pub fn kubectl() -> PathBuf {
    if let Some(k) = std::env::var_os("KUBECTL") {
        let k = PathBuf::from(k);
        assert!(k.is_file(), "KUBECTL={} is not a file", k.display());
        return k;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let local = home.join(".kube-local/bin/kubectl");
    assert!(
        local.is_file(),
        "no kubectl: set KUBECTL, or build kube-local's with ../shared/kube-local/setup.sh \
         (it installs {})",
        local.display()
    );
    local
}

pub fn require_kubeconfig() -> String {
    std::env::var("KUBECONFIG").unwrap_or_else(|_| {
        panic!(
            "KUBECONFIG is not set: this test needs a real API server. Start one with \
             ../shared/kube-local/setup.sh && ../shared/kube-local/start.sh and \
             export KUBECONFIG=$HOME/.kube-local/run/kubeconfig (as .ci/run does)"
        )
    })
}

/// Runs kubectl with `args`, feeding `stdin`; `Err` carries its output when it fails.
pub fn kubectl_try(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(kubectl())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kubectl");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            // kubectl may exit (with its error on stderr) before reading all of it.
            if let Err(e) = pipe.write_all(s.as_bytes()) {
                assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe,
                    "kubectl stdin: {e}"
                );
            }
        }
    }
    let out = child.wait_with_output().expect("wait for kubectl");
    let stdout = String::from_utf8(out.stdout).expect("kubectl output is UTF-8");
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "kubectl {} failed ({}):\n{stdout}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs kubectl with `args`, feeding `stdin`; panics with its output when it fails.
pub fn kubectl_run(args: &[&str], stdin: Option<&str>) -> String {
    kubectl_try(args, stdin).unwrap_or_else(|e| panic!("{e}"))
}

/// A server process started by a test: killed (by its own PID) and reaped on drop.
pub struct ServerProcess(pub Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local_addr")
        .port()
}

/// `kubectl kustomize <repo>/<dir>`: the rendered YAML.
pub fn render_yaml(dir: &str) -> String {
    let path = repo_root().join(dir);
    kubectl_run(&["kustomize", path.to_str().expect("UTF-8 path")], None)
}

/// The rendered objects, in order.
pub fn render(dir: &str) -> Vec<Value> {
    let yaml = render_yaml(dir);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml)
        .unwrap_or_else(|e| panic!("rendered {dir} is not YAML: {e}"));
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    assert!(!docs.is_empty(), "{dir} rendered nothing");
    docs
}

pub fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("rendered manifests have no {kind} {name}"))
}

pub fn kinds(objs: &[Value]) -> Vec<String> {
    objs.iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// docker/images.env as a map.
pub fn images_env() -> BTreeMap<String, String> {
    let path = repo_root().join("docker/images.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: not KEY=value: {l}", path.display()));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}
