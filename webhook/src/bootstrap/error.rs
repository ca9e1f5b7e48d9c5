//! What can go wrong while bootstrapping or rotating the certificates.

use std::path::PathBuf;

/// Why bootstrapping or rotating the certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("invalid {field}: {reason}")]
    InvalidOption { field: &'static str, reason: String },
    #[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    #[error("Kubernetes API: cannot {action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("MutatingWebhookConfiguration {name} has no webhooks whose caBundle could be set")]
    NoWebhooks { name: String },
    #[error("{what} is not a usable certificate: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Secret {object} changed under every one of {attempts} conditional writes; giving up for now"
    )]
    Contention { object: String, attempts: usize },
}
