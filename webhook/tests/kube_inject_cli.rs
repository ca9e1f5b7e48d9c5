//! `mesh-webhook kube-inject` / `kube-uninject` as a user runs them: the real binary, files,
//! standard input and output, exit codes and messages.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mesh-webhook"))
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        // A command that fails before reading its input (a bad --config, say) closes the
        // pipe: that write error is expected, and the exit status and stderr tell the story.
        if let Err(e) = input.write_all(s.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n    - name: web\n      image: nginx\n";

#[test]
fn stdin_to_stdout() {
    let out = run(&["kube-inject", "-f", "-"], Some(POD));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let y = text(&out.stdout);
    assert!(y.contains("name: istio-proxy"), "{y}");
    assert!(y.contains("name: istio-init"), "{y}");
    assert!(
        y.contains("kubectl.kubernetes.io/default-container: web"),
        "{y}"
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn twice_equals_once_and_uninject_restores() {
    let once = run(&["kube-inject", "-f", "-"], Some(POD));
    let once = text(&once.stdout);
    let twice = run(&["kube-inject", "-f", "-"], Some(&once));
    assert!(twice.status.success());
    assert_eq!(text(&twice.stdout), once);
    assert!(
        text(&twice.stderr).contains("already injected"),
        "{}",
        text(&twice.stderr)
    );
    let back = run(&["kube-uninject", "-f", "-"], Some(&once));
    assert!(back.status.success(), "{}", text(&back.stderr));
    let back = text(&back.stdout);
    assert!(!back.contains("istio"), "{back}");
    assert_eq!(
        back,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: web\n    image: nginx\n"
    );
}

#[test]
fn skip_reasons_on_stderr() {
    let input = format!(
        "{POD}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: host\nspec:\n  hostNetwork: true\n  containers: [{{name: h, image: h}}]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: optout\n  labels: {{sidecar.istio.io/inject: \"false\"}}\nspec:\n  containers: [{{name: o, image: o}}]\n"
    );
    let out = run(&["kube-inject", "-f", "-"], Some(&input));
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("document 2 (Pod/host): skipped: pod uses hostNetwork: true"),
        "{err}"
    );
    assert!(
        err.contains("document 3 (Pod/optout): skipped: pod label sidecar.istio.io/inject=false"),
        "{err}"
    );
    // Skipped documents are copied verbatim.
    assert!(text(&out.stdout).contains("  containers: [{name: h, image: h}]\n"));
}

#[test]
fn output_file_is_written_and_untouched_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.yaml");
    let out_s = out_path.to_str().unwrap();

    let ok = run(&["kube-inject", "-f", "-", "-o", out_s], Some(POD));
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(ok.stdout.is_empty());
    let written = std::fs::read_to_string(&out_path).unwrap();
    assert!(written.contains("istio-proxy"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o644,
        "a new -o file gets the usual mode, not the temp file's 0600"
    );

    // A bad annotation in the second document: non-zero exit, message naming the document,
    // its kind/name, the line and the annotation; nothing on stdout; the file untouched.
    let bad = format!(
        "{POD}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\n  annotations:\n    traffic.sidecar.istio.io/excludeInboundPorts: \"*\"\nspec:\n  containers: [{{name: b, image: b}}]\n"
    );
    let out = run(&["kube-inject", "-f", "-", "-o", out_s], Some(&bad));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "document 2 (Pod/bad), line 15: annotation traffic.sidecar.istio.io/excludeInboundPorts"
        ),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), written);
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // Invalid YAML: the same guarantees.
    let out = run(
        &["kube-inject", "-f", "-", "-o", out_s],
        Some("a: 1\n---\nkind: Pod\nmetadata: {name: [x\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(err.contains("<stdin>: document 2 (Pod), line"), "{err}");
    assert!(err.contains("invalid YAML"), "{err}");
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), written);
}

#[test]
fn invalid_yaml_writes_nothing_to_stdout() {
    let file = repo_file("webhook/testdata/inject/err-invalid-yaml.yaml");
    let out = run(&["kube-inject", "-f", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("err-invalid-yaml.yaml: document 2 (Pod/broken), line 11"),
        "{err}"
    );
}

#[test]
fn missing_input_and_bad_config_are_named() {
    let out = run(&["kube-inject", "-f", "/nonexistent/app.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/app.yaml"),
        "{}",
        text(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mesh.yaml");
    std::fs::write(&cfg, "proxyImage: x\nnativeSidecar: true\n").unwrap();
    let out = run(
        &["kube-inject", "-f", "-", "--config", cfg.to_str().unwrap()],
        Some(POD),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("mesh.yaml") && err.contains("nativeSidecar"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // Usage errors are clap's (exit 2).
    let out = run(&["kube-inject"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_proxy_log_level_names_the_field_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mesh.yaml");
    std::fs::write(&cfg, "proxyLogLevel: chatty\n").unwrap();
    let out = run(
        &["kube-inject", "-f", "-", "--config", cfg.to_str().unwrap()],
        Some(POD),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("mesh.yaml") && err.contains("proxyLogLevel") && err.contains("chatty"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn config_file_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mesh.yaml");
    std::fs::write(
        &cfg,
        "proxyImage: registry.example.com/proxy:7\nnativeSidecars: true\n",
    )
    .unwrap();
    let out = run(
        &["kube-inject", "-f", "-", "--config", cfg.to_str().unwrap()],
        Some(POD),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let y = text(&out.stdout);
    assert!(y.contains("image: registry.example.com/proxy:7"), "{y}");
    assert!(y.contains("restartPolicy: Always"), "{y}");
}

#[test]
fn bad_control_plane_auth_policy_names_the_file_the_field_and_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mesh.yaml");
    std::fs::write(&cfg, "controlPlaneAuthPolicy: STRICT\n").unwrap();
    let out = run(
        &["kube-inject", "-f", "-", "--config", cfg.to_str().unwrap()],
        Some(POD),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("mesh.yaml")
            && err.contains("`controlPlaneAuthPolicy`")
            && err.contains("\"STRICT\" is not MUTUAL_TLS or NONE"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// kube-node's config (deploy/overlays/kube-node): the proxy dials the IP, verifies the
/// name, and the pod has its identity.
#[test]
fn kube_node_identity_config_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mesh.yaml");
    std::fs::write(
        &cfg,
        "controlPlaneAddress: 198.19.0.15:15012\ncontrolPlaneSan: mesh-control.mesh-system.svc\n",
    )
    .unwrap();
    let out = run(
        &["kube-inject", "-f", "-", "--config", cfg.to_str().unwrap()],
        Some(POD),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let y = text(&out.stdout);
    for want in [
        "    - --control-plane\n    - 198.19.0.15:15012\n    - --root-cert\n    - /var/run/secrets/istio/root-cert.pem\n    - --control-plane-san\n    - mesh-control.mesh-system.svc\n",
        "    security.istio.io/tlsMode: istio\n",
        "  - name: istio-token\n",
        "      name: istio-ca-root-cert\n",
    ] {
        assert!(y.contains(want), "{want:?} not in\n{y}");
    }
    // Uninject takes all of it away again.
    let back = run(&["kube-uninject", "-f", "-"], Some(&y));
    assert!(back.status.success(), "{}", text(&back.stderr));
    let b = text(&back.stdout);
    for gone in ["tlsMode", "istio-token", "istiod-ca-cert", "root-cert"] {
        assert!(!b.contains(gone), "{gone} left after uninject:\n{b}");
    }
}

/// The README's first command.
#[test]
fn bookstore_example_injects_every_deployment() {
    let file = repo_file("examples/bookstore.yaml");
    let out = run(&["kube-inject", "-f", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let y = text(&out.stdout);
    let deployments = y.matches("\nkind: Deployment\n").count();
    assert_eq!(deployments, 6);
    assert_eq!(
        y.matches("  - name: istio-proxy\n").count(),
        deployments,
        "{y}"
    );
    assert_eq!(y.matches("\nkind: Service\n").count(), 4);
    for v in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        assert!(y.contains(&format!("name: {v}\n")), "{v}");
    }
    // Injected again: unchanged.
    let again = run(&["kube-inject", "-f", "-"], Some(&y));
    assert_eq!(text(&again.stdout), y);
}
