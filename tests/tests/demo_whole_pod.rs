//! The README's whole-pod demo (`demo/whole-pod.sh`), run exactly as a user runs it, on
//! the binaries this `cargo test --workspace` built: the app's request must reach the
//! server through mesh-proxy (the script exits non-zero unless the proxy's outbound
//! counter moved), and nothing may be left behind, also when a step fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mesh_tests::bins::bin;
use mesh_tests::netns::require_root_and_tools;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("demo/whole-pod.sh")
}

fn run_demo(bin_dir: &Path) -> (Output, u32) {
    let child = Command::new("bash")
        .arg(script())
        .env("MESH_BIN_DIR", bin_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start demo/whole-pod.sh");
    let pid = child.id();
    (child.wait_with_output().expect("wait for the demo"), pid)
}

fn assert_no_leftovers(pid: u32) {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    for ns in [
        format!("mesh-demo-pod-{pid}"),
        format!("mesh-demo-srv-{pid}"),
    ] {
        assert!(
            !list.contains(&ns),
            "demo left namespace {ns} behind:\n{list}"
        );
    }
}

fn tools() {
    require_root_and_tools(&[
        "ip",
        "iptables",
        "iptables-restore",
        "curl",
        "socat",
        "setpriv",
    ]);
}

#[test]
fn whole_pod_demo_sends_the_apps_request_through_the_proxy_and_cleans_up() {
    tools();
    let bin_dir = bin("mesh-proxy").parent().unwrap().to_owned();
    assert!(bin("mesh-init").is_file());
    let (out, pid) = run_demo(&bin_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("reply: hello from the server namespace; you came from 198.18.0.2:"),
        "the server's answer is missing:\n{stdout}"
    );
    assert!(
        stdout.contains("ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"),
        "{stdout}"
    );
    let metric = stdout
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("istio_tcp_connections_opened_total{")
                && l.contains("direction=\"outbound\"")
                && l.contains("destination_port=\"8080\"")
        })
        .unwrap_or_else(|| panic!("no outbound connection metric in the demo output:\n{stdout}"));
    let count: u64 = metric.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1, "{metric}");
    assert!(
        stdout.contains("outbound connections opened to port 8080: 0 -> 1"),
        "{stdout}"
    );
    assert!(stdout.contains("RESULT: the app's request reached the server through mesh-proxy"));
    assert_no_leftovers(pid);
}

#[test]
fn whole_pod_demo_fails_loudly_and_still_cleans_up_when_the_proxy_is_broken() {
    tools();
    let dir = tempfile_dir();
    std::fs::copy(bin("mesh-init"), dir.join("mesh-init")).unwrap();
    std::fs::write(
        dir.join("mesh-proxy"),
        "#!/bin/sh\necho broken proxy >&2\nexit 3\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("mesh-proxy"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let (out, pid) = run_demo(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "demo passed with a broken proxy");
    assert!(
        stderr.contains("mesh-proxy did not become ready"),
        "{stderr}"
    );
    assert!(stderr.contains("cleaned up"), "{stderr}");
    assert_no_leftovers(pid);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
