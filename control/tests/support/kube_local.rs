//! kube-local for the tests of this crate, shared by `support/mod.rs` (the serve_* tests)
//! and `support/ca_kube.rs` (the ca_* tests): where it is, its kubectl, and running it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const HOW_TO_START: &str = "this test needs a real API server. Start kube-local with \
    ../shared/kube-local/setup.sh (once) && ../shared/kube-local/start.sh and \
    export KUBECONFIG=$HOME/.kube-local/run/kubeconfig";

/// KUBECONFIG, or a failure that says how to get one.
pub fn kubeconfig() -> String {
    std::env::var("KUBECONFIG").unwrap_or_else(|_| panic!("KUBECONFIG is not set: {HOW_TO_START}"))
}

pub fn kube_local_dir() -> PathBuf {
    std::env::var_os("KUBE_LOCAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".kube-local")
        })
}

/// kube-local's kubectl (v1.20), never the system's.
pub fn kubectl_path() -> PathBuf {
    let k = kube_local_dir().join("bin/kubectl");
    assert!(
        k.is_file(),
        "no {}: build kube-local with ../shared/kube-local/setup.sh",
        k.display()
    );
    k
}

/// Runs kubectl against `kubeconfig`; `Err` carries its output.
pub fn kubectl_try(kubeconfig: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write as _;
    let mut child = Command::new(kubectl_path())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kubectl");
    {
        let mut pipe = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            let _ = pipe.write_all(s.as_bytes());
        }
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
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
