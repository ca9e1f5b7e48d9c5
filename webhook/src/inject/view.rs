//! The pod view: the typed, validated reading of a template (a Pod, or a workload's pod
//! template) that every other step of the core reads.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use mesh_common::annotations;
use serde::Deserialize;
use serde_json::Value;

use super::error::InjectError;
use super::status::Status;

/// What the core reads from a template, validated by the Kubernetes types.
#[derive(Debug)]
pub struct PodView {
    /// `metadata.name` (empty when absent, as with only `generateName`).
    pub name: String,
    /// `metadata.generateName` (empty when absent).
    pub generate_name: String,
    /// `metadata.ownerReferences` (what the webhook sees for a controller's pod).
    pub owner_references: Vec<OwnerReference>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub host_network: bool,
    /// `spec.terminationGracePeriodSeconds`, when set (Kubernetes' default is 30).
    pub termination_grace_period_seconds: Option<i64>,
    /// The names of `spec.containers`, in order.
    pub containers: Vec<String>,
    /// The parsed `sidecar.istio.io/status` annotation, when present.
    pub status: Option<Status>,
}

impl PodView {
    pub fn read(template: &Value) -> Result<Self, InjectError> {
        let invalid = |field: &str, reason: String| InjectError::InvalidPod {
            field: field.to_string(),
            reason,
        };
        if !template.is_object() {
            return Err(invalid("template", "must be a mapping".into()));
        }
        // A common slip (`prometheus.io/port: 8080` unquoted) deserves a precise message.
        for map in ["labels", "annotations"] {
            let entries = template
                .get("metadata")
                .and_then(|m| m.get(map))
                .and_then(Value::as_object);
            for (k, v) in entries.into_iter().flatten() {
                if !v.is_string() {
                    return Err(invalid(
                        &format!("metadata.{map}[{k}]"),
                        format!("value {v} must be a string (quote it)"),
                    ));
                }
            }
        }
        let meta = match template.get("metadata") {
            None | Some(Value::Null) => ObjectMeta::default(),
            Some(m) => {
                ObjectMeta::deserialize(m).map_err(|e| invalid("metadata", e.to_string()))?
            }
        };
        let spec_value = template
            .get("spec")
            .ok_or_else(|| invalid("spec", "missing".into()))?;
        let spec = typed::<PodSpec>(spec_value, "spec")?;
        if !spec_value.get("containers").is_some_and(Value::is_array) {
            return Err(invalid("spec.containers", "missing".into()));
        }
        for (field, list) in [
            ("spec.containers", Some(&spec.containers)),
            ("spec.initContainers", spec.init_containers.as_ref()),
        ] {
            for c in list.into_iter().flatten() {
                if c.name.is_empty() {
                    return Err(invalid(field, "a container has no name".into()));
                }
            }
        }
        let annotations = meta.annotations.unwrap_or_default();
        let status = match annotations.get(annotations::STATUS) {
            Some(s) => Some(Status::parse(s)?),
            None => None,
        };
        Ok(PodView {
            containers: spec.containers.iter().map(|c| c.name.clone()).collect(),
            name: meta.name.unwrap_or_default(),
            generate_name: meta.generate_name.unwrap_or_default(),
            owner_references: meta.owner_references.unwrap_or_default(),
            labels: meta.labels.unwrap_or_default(),
            annotations,
            host_network: spec.host_network.unwrap_or(false),
            termination_grace_period_seconds: spec.termination_grace_period_seconds,
            status,
        })
    }
}

/// Read a value with a Kubernetes type; the error names the field (`spec.containers[0].args`).
fn typed<'a, T: Deserialize<'a>>(v: &'a Value, root: &str) -> Result<T, InjectError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        InjectError::InvalidPod {
            field: if path == "." {
                root.to_string()
            } else {
                format!("{root}.{path}")
            },
            reason: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_shape_is_validated() {
        for (t, field) in [
            (json!([]), "template"),
            (json!({"metadata": {}}), "spec"),
            (json!({"spec": {}}), "spec.containers"),
            (json!({"spec": {"containers": "x"}}), "spec.containers"),
            (
                json!({"spec": {"containers": [{"name": "a", "args": [{"k": 1}]}]}}),
                "spec.containers[0].args[0]",
            ),
            (
                json!({"metadata": {"annotations": {"a": 1}}, "spec": {"containers": []}}),
                "metadata.annotations[a]",
            ),
        ] {
            let e = PodView::read(&t).unwrap_err();
            assert!(
                matches!(&e, InjectError::InvalidPod { field: f, .. } if f == field),
                "{t}: {e}"
            );
        }
    }
}
