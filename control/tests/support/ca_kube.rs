//! Shared by the ca_* tests: the API server (kube-local through KUBECONFIG; never skipped:
//! without it a test fails and says how to start it), kube-local's files, unique names,
//! objects deleted when the test ends (also when it fails), polling, and base64url for
//! hand-made JWTs. Uses only kube and std, so it does not depend on the rest of the crate.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "kube_local.rs"]
mod kube_local;
#[allow(unused_imports)] // each test crate uses its part
pub use kube_local::{HOW_TO_START, kube_local_dir, kubeconfig, kubectl_path};

use std::future::Future;
use std::time::{Duration, Instant};

/// A client from KUBECONFIG, or a failure that says why.
pub async fn client() -> kube::Client {
    let _ = kubeconfig();
    kube::Client::try_default()
        .await
        .unwrap_or_else(|e| panic!("kube client from KUBECONFIG: {e}: {HOW_TO_START}"))
}

pub fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,mesh_control=debug")
        .with_test_writer()
        .try_init();
}

/// Runs kubectl against KUBECONFIG; `Err` carries its output.
pub fn kubectl_try(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    kube_local::kubectl_try(&kubeconfig(), args, stdin)
}

pub fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    kubectl_try(args, stdin).unwrap_or_else(|e| panic!("{e}"))
}

/// `prefix-<pid>-<millis>-<n>`, a valid namespace name for a short prefix.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 10_000_000)
        .unwrap_or(0);
    format!("{prefix}-{}-{t}-{n}", std::process::id() % 100_000)
}

/// Objects (`kind`, namespace, name) deleted, without waiting, when dropped: at the end of
/// the test, also when an assertion failed.
#[derive(Default)]
pub struct Cleanup(Vec<(String, Option<String>, String)>);

impl Cleanup {
    pub fn namespace(&mut self, name: &str) {
        self.0.push(("namespace".into(), None, name.into()));
    }
    pub fn cluster(&mut self, kind: &str, name: &str) {
        self.0.push((kind.into(), None, name.into()));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (kind, ns, name) in self.0.iter().rev() {
            let mut args = vec![
                "delete",
                kind.as_str(),
                name.as_str(),
                "--ignore-not-found",
                "--wait=false",
            ];
            if let Some(ns) = ns {
                args.extend(["-n", ns.as_str()]);
            }
            if let Err(e) = kubectl_try(&args, None) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `limit`; the panic says
/// what was awaited and what `last` said about the last state.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let t0 = Instant::now();
    let mut last = String::from("(never polled)");
    while t0.elapsed() < limit {
        match f().await {
            Ok(v) => return (v, t0.elapsed()),
            Err(state) => last = state,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {limit:?}; last: {last}");
}

/// Unpadded base64url (RFC 4648 §5), for JWTs.
pub fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[test]
fn base64url_matches_rfc4648_vectors() {
    for (input, want) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64url(input.as_bytes()), want, "{input:?}");
    }
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
}
