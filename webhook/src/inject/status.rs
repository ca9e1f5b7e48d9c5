//! The status annotation `sidecar.istio.io/status`: what an injection added, and the hash
//! that tells whether re-injecting would change anything. Format: see the `inject` module
//! docs. Reading and writing the template around it is [`super::rewrite`]'s job.

use std::collections::BTreeMap;

use mesh_common::annotations as ann;
use mesh_common::containers;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::InjectError;
use super::overrides::HONOURED;
use super::role::Role;
use crate::config::hex16;

/// A user's own container that was merged into ours, and where it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverrideRecord {
    /// `containers` or `initContainers`.
    pub field: String,
    pub index: usize,
    pub container: Value,
}

/// The parsed `sidecar.istio.io/status` annotation. Unknown keys (Istio's `revision`,
/// `imagePullSecrets` as null) are accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub init_containers: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub containers: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub volumes: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub image_pull_secrets: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub annotations: Vec<String>,
    /// Pod labels we added (`security.istio.io/tlsMode`, when the pod had no value of its
    /// own). Our key: Istio's status records no labels.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<OverrideRecord>,
    /// What the pod asked for (in `proxy.istio.io/config`, or the config's
    /// `defaultConfig`) that this injection does not do, in words: the one place the
    /// owner of a Deployment's pod can read them (admission warnings go to the
    /// ReplicaSet controller). Our key; absent when there are none.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub warnings: Vec<String>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

impl Status {
    pub fn parse(s: &str) -> Result<Self, InjectError> {
        let invalid = |reason: String| InjectError::InvalidAnnotation {
            annotation: ann::STATUS.to_string(),
            value: s.to_string(),
            reason,
        };
        let status: Status = serde_json::from_str(s)
            .map_err(|e| invalid(format!("not the JSON this injector writes: {e}")))?;
        // Uninject and re-injection put override records back into the pod as written:
        // only a container of ours, in one of the two container lists, may come back.
        for (i, r) in status.overrides.iter().enumerate() {
            if r.field != "containers" && r.field != "initContainers" {
                return Err(invalid(format!(
                    "overrides[{i}].field is {:?}, not containers or initContainers",
                    r.field
                )));
            }
            let name = r.container.get("name").and_then(Value::as_str);
            // Only an object has a `name`, so this also refuses non-objects.
            if !matches!(name, Some(containers::PROXY | containers::INIT)) {
                return Err(invalid(format!(
                    "overrides[{i}].container is not a container named {} or {}",
                    containers::PROXY,
                    containers::INIT
                )));
            }
        }
        Ok(status)
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Hash of everything that shapes an injection: the config, native or regular sidecar or
/// gateway, the honoured annotations' values, the warnings recorded in the status (so
/// what changes only them, say the pod's `terminationGracePeriodSeconds`, re-injects
/// too), and the proxy's identity env (workload,
/// owner, canonical service and revision, app and version: the values, so what changes
/// them, a label or the owner, re-injects, and the webhook and kube-inject agree whenever
/// the values do). Equal hash means re-injecting would change nothing. A gateway is never
/// a native sidecar, so `native` does not count for it: a gateway kube-injected without a
/// cluster to ask is left alone by a webhook whose cluster has native sidecars.
pub fn injection_hash(
    config_hash: &str,
    native: bool,
    role: Role,
    annotations: &BTreeMap<String, String>,
    identity: &[(&str, String)],
    warnings: &[String],
) -> String {
    let mut h = Sha256::new();
    h.update(config_hash.as_bytes());
    h.update(match (role, native) {
        (Role::Gateway, _) => "\0gateway",
        (Role::Sidecar, true) => "\0native",
        (Role::Sidecar, false) => "\0regular",
    });
    for k in HONOURED {
        if let Some(v) = annotations.get(k) {
            h.update(b"\0");
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
        }
    }
    for (k, v) in identity {
        h.update(b"\0env:");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    for w in warnings {
        h.update(b"\0warning:");
        h.update(w.as_bytes());
    }
    hex16(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_records_must_be_our_containers_in_a_container_list() {
        let ok = r#"{"containers":["istio-proxy"],"overrides":[{"field":"containers","index":1,"container":{"name":"istio-proxy","image":"mine"}}]}"#;
        assert_eq!(Status::parse(ok).unwrap().overrides.len(), 1);
        for (bad, why) in [
            (
                r#"{"overrides":[{"field":"","index":1,"container":{}}]}"#,
                "overrides[0].field",
            ),
            (
                r#"{"overrides":[{"field":"containers","index":1,"container":{}}]}"#,
                "overrides[0].container",
            ),
            (
                r#"{"overrides":[{"field":"containers","index":0,"container":{"name":"app"}}]}"#,
                "overrides[0].container",
            ),
            (
                r#"{"overrides":[{"field":"volumes","index":0,"container":{"name":"istio-proxy"}}]}"#,
                "overrides[0].field",
            ),
        ] {
            let e = Status::parse(bad).unwrap_err().to_string();
            assert!(e.contains(ann::STATUS) && e.contains(why), "{bad}: {e}");
        }
    }
}
