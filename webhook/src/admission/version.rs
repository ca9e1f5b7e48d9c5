//! `nativeSidecars: auto`: ask the API server for its version. Native sidecars
//! (init containers with `restartPolicy: Always`) exist from Kubernetes 1.29 on; when the
//! version cannot be learned we say why and fall back to regular sidecars, which work
//! everywhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::state::{AppState, ClusterSupport};

/// First minor release of Kubernetes 1.x with native sidecars on by default.
pub const NATIVE_SIDECARS_MINOR: u32 = 29;

/// How long one attempt may take before we give up and fall back.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no Kubernetes client config (neither in-cluster nor KUBECONFIG/~/.kube/config): {0}")]
    NoConfig(String),
    #[error("reading kubeconfig {}: {detail}", path.display())]
    Kubeconfig { path: PathBuf, detail: String },
    #[error("building the Kubernetes client: {0}")]
    Client(String),
    #[error("GET /version failed: {0}")]
    Request(String),
    #[error("GET /version timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot read a version from major={major:?} minor={minor:?} gitVersion={git:?}")]
    Unparsable {
        major: String,
        minor: String,
        git: String,
    },
}

/// A Kubernetes release as `/version` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubeVersion {
    pub fn supports_native_sidecars(self) -> bool {
        self.major > 1 || (self.major == 1 && self.minor >= NATIVE_SIDECARS_MINOR)
    }
}

impl std::fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

fn leading_number(s: &str) -> Option<u32> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Parse `/version`: managed clusters report minors like `"29+"`; some report nothing
/// useful there but a `gitVersion` like `v1.29.3-gke.1`.
pub fn parse_version(
    major: &str,
    minor: &str,
    git_version: &str,
) -> Result<KubeVersion, ProbeError> {
    if let (Some(major), Some(minor)) = (leading_number(major), leading_number(minor)) {
        return Ok(KubeVersion { major, minor });
    }
    let mut parts = git_version.trim_start_matches('v').split('.');
    match (
        parts.next().and_then(leading_number),
        parts.next().and_then(leading_number),
    ) {
        (Some(major), Some(minor)) => Ok(KubeVersion { major, minor }),
        _ => Err(ProbeError::Unparsable {
            major: major.to_string(),
            minor: minor.to_string(),
            git: git_version.to_string(),
        }),
    }
}

async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ProbeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|e| ProbeError::Kubeconfig {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ProbeError::Kubeconfig {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ProbeError::NoConfig(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| ProbeError::Client(e.to_string()))
}

/// Ask the API server once.
pub async fn probe(kubeconfig: Option<&Path>) -> Result<KubeVersion, ProbeError> {
    let attempt = async {
        let c = client(kubeconfig).await?;
        let info = c
            .apiserver_version()
            .await
            .map_err(|e| ProbeError::Request(e.to_string()))?;
        parse_version(&info.major, &info.minor, &info.git_version)
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .map_err(|_| ProbeError::Timeout(ATTEMPT_TIMEOUT))?
}

/// Probe now and then every `every`, publishing what was learned into `state`.
pub async fn keep_probing(state: Arc<AppState>, kubeconfig: Option<PathBuf>, every: Duration) {
    let mut last: Option<ClusterSupport> = None;
    loop {
        let found = match probe(kubeconfig.as_deref()).await {
            Ok(v) => {
                let s = if v.supports_native_sidecars() {
                    ClusterSupport::Native
                } else {
                    ClusterSupport::NotNative
                };
                if last != Some(s) {
                    tracing::info!(
                        version = %v,
                        native_sidecars = v.supports_native_sidecars(),
                        "API server version learned for nativeSidecars: auto"
                    );
                }
                s
            }
            Err(e) => {
                // Keep a previously learned answer: a brief API outage does not change
                // what the cluster supports.
                let keep = state.cluster_support();
                if last.is_none() || keep == ClusterSupport::Unknown {
                    tracing::warn!(error = %e, "cannot tell the API server version; nativeSidecars: auto falls back to regular sidecars");
                } else {
                    tracing::warn!(error = %e, "cannot refresh the API server version; keeping the previous answer");
                }
                keep
            }
        };
        state.set_cluster_support(found);
        state.set_probe_settled();
        last = Some(found);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_clusters_report() {
        let v = parse_version("1", "29", "v1.29.0").unwrap();
        assert_eq!(
            v,
            KubeVersion {
                major: 1,
                minor: 29
            }
        );
        assert!(v.supports_native_sidecars());
        assert!(
            !parse_version("1", "28+", "v1.28.3-gke.1")
                .unwrap()
                .supports_native_sidecars()
        );
        assert!(
            parse_version("1", "30+", "")
                .unwrap()
                .supports_native_sidecars()
        );
        assert!(
            parse_version("", "", "v1.31.2")
                .unwrap()
                .supports_native_sidecars()
        );
        assert!(
            !parse_version("1", "20", "v1.20.2")
                .unwrap()
                .supports_native_sidecars()
        );
        assert!(
            parse_version("2", "0", "")
                .unwrap()
                .supports_native_sidecars()
        );
        let e = parse_version("x", "", "garbage").unwrap_err();
        assert!(e.to_string().contains("garbage"), "{e}");
    }
}
