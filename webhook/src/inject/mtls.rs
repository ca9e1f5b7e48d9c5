//! What a pod needs for a workload identity (`controlPlaneAuthPolicy: MUTUAL_TLS` with a
//! control plane, [`InjectConfig::workload_identity`]), with Istio's names, paths and
//! fields so that users recognise them:
//! - volume `istio-token`: a projected ServiceAccount token, audience `istio-ca`, 12 h,
//!   file `istio-token`, which the proxy shows the CA;
//! - volume `istiod-ca-cert`: ConfigMap `istio-ca-root-cert` (mesh-control publishes it in
//!   every namespace), the root the proxy verifies mesh-control and its peers against;
//! - both mounted read-only in `istio-proxy` at `/var/run/secrets/tokens` and
//!   `/var/run/secrets/istio`;
//! - the proxy flags `--root-cert` (and `--control-plane-san`, `--ca-address`,
//!   `--trust-domain` when the config sets them);
//! - the pod label `security.istio.io/tlsMode: istio`, which tells peers this pod takes
//!   mTLS. As Istio's injection template does, a value the pod already has is kept (a
//!   user's `disabled` opts the pod out of receiving auto mTLS).
//!
//! Only the data: [`super::containers`] puts the flags and mounts on the proxy,
//! [`super::rewrite`] adds the volumes and the label and records them in the status.

use mesh_common::contract::proxy::flag;
use mesh_common::identity as id;
use mesh_common::labels;
use serde_json::{Value, json};

use crate::config::InjectConfig;

/// The names of the volumes we add, in the order we add them.
pub const VOLUMES: [&str; 2] = [id::TOKEN_VOLUME, id::ROOT_CERT_VOLUME];

/// The labels we add (only when the pod has no value of its own) and their values.
pub const LABELS: [(&str, &str); 1] = [(labels::TLS_MODE, id::TLS_MODE_ISTIO)];

/// The value we write for label `key`, if it is one of ours.
pub fn label_value(key: &str) -> Option<&'static str> {
    LABELS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The pod volumes, as JSON, in [`VOLUMES`] order.
pub fn volumes() -> Vec<Value> {
    vec![
        json!({
            "name": id::TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": id::TOKEN_AUDIENCE,
                "expirationSeconds": id::TOKEN_EXPIRATION_SECONDS,
                "path": id::TOKEN_FILE_NAME,
            }}]},
        }),
        json!({
            "name": id::ROOT_CERT_VOLUME,
            "configMap": {"name": id::ROOT_CERT_CONFIGMAP},
        }),
    ]
}

/// `(volume, mountPath)` of the proxy's read-only mounts, in [`VOLUMES`] order.
pub const MOUNTS: [(&str, &str); 2] = [
    (id::TOKEN_VOLUME, id::TOKEN_DIR),
    (id::ROOT_CERT_VOLUME, id::ROOT_CERT_DIR),
];

/// The proxy flags that give it an identity (after `--control-plane`). The token file is
/// the proxy's default path, [`id::TOKEN_PATH`], so it is not written.
pub fn proxy_args(cfg: &InjectConfig) -> Vec<String> {
    let mut args = vec![flag::ROOT_CERT.to_string(), id::ROOT_CERT_PATH.to_string()];
    if !cfg.control_plane_san.is_empty() {
        args.extend([
            flag::CONTROL_PLANE_SAN.to_string(),
            cfg.control_plane_san.clone(),
        ]);
    }
    if !cfg.ca_address.is_empty() {
        args.extend([flag::CA_ADDRESS.to_string(), cfg.ca_address.clone()]);
    }
    if cfg.trust_domain != id::DEFAULT_TRUST_DOMAIN {
        args.extend([flag::TRUST_DOMAIN.to_string(), cfg.trust_domain.clone()]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paths_the_proxy_reads_are_under_the_mounts() {
        let token_mount = MOUNTS.iter().find(|(v, _)| *v == id::TOKEN_VOLUME).unwrap();
        assert_eq!(
            format!("{}/{}", token_mount.1, id::TOKEN_FILE_NAME),
            id::TOKEN_PATH
        );
        let root_mount = MOUNTS
            .iter()
            .find(|(v, _)| *v == id::ROOT_CERT_VOLUME)
            .unwrap();
        assert_eq!(
            format!("{}/{}", root_mount.1, id::ROOT_CERT_KEY),
            id::ROOT_CERT_PATH
        );
        let volumes = volumes();
        let names: Vec<&str> = volumes
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, VOLUMES);
    }

    #[test]
    fn optional_flags_only_when_set() {
        let cfg = InjectConfig::default();
        assert_eq!(
            proxy_args(&cfg),
            ["--root-cert", "/var/run/secrets/istio/root-cert.pem"]
        );
        let cfg = InjectConfig {
            control_plane_san: "mesh-control.mesh-system.svc".into(),
            ca_address: "ca.mesh-system.svc:15012".into(),
            trust_domain: "example.org".into(),
            ..InjectConfig::default()
        };
        assert_eq!(
            proxy_args(&cfg),
            [
                "--root-cert",
                "/var/run/secrets/istio/root-cert.pem",
                "--control-plane-san",
                "mesh-control.mesh-system.svc",
                "--ca-address",
                "ca.mesh-system.svc:15012",
                "--trust-domain",
                "example.org"
            ]
        );
    }
}
