//! Inject or not: namespace, labels, annotations, hostNetwork. Also the typed, validated
//! view of the template every other step reads.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_common::{NEVER_INJECTED_NAMESPACES, annotations, labels};
use serde::Deserialize;
use serde_json::Value;

use super::status::Status;
use super::{InjectError, InjectRequest, NamespacePolicy, SkipReason};

/// What the core reads from a template, validated by the Kubernetes types.
#[derive(Debug)]
pub struct PodView {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub host_network: bool,
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
            labels: meta.labels.unwrap_or_default(),
            annotations,
            host_network: spec.host_network.unwrap_or(false),
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

/// `Some(reason)` when the pod must be left alone.
pub fn skip_reason(
    req: &InjectRequest<'_>,
    view: &PodView,
) -> Result<Option<SkipReason>, InjectError> {
    if let Some(ns) = req.namespace
        && NEVER_INJECTED_NAMESPACES.contains(&ns)
    {
        return Ok(Some(SkipReason::SystemNamespace(ns.to_string())));
    }
    if view.host_network {
        return Ok(Some(SkipReason::HostNetwork));
    }
    let label = match view.labels.get(labels::INJECT) {
        Some(v) => Some(parse_switch(v).ok_or_else(|| InjectError::InvalidPod {
            field: format!("metadata.labels[{}]", labels::INJECT),
            reason: format!("{v:?} is neither \"true\" nor \"false\""),
        })?),
        None => None,
    };
    let annotation = match view.annotations.get(annotations::INJECT) {
        Some(v) => Some(
            parse_switch(v).ok_or_else(|| InjectError::InvalidAnnotation {
                annotation: annotations::INJECT.to_string(),
                value: v.clone(),
                reason: "must be \"true\" or \"false\"".into(),
            })?,
        ),
        None => None,
    };
    // The label wins over the annotation.
    let opt_out = match (label, annotation) {
        (Some(false), _) => Some(SkipReason::LabelOptOut),
        (None, Some(false)) => Some(SkipReason::AnnotationOptOut),
        _ => None,
    };
    let reason = match req.namespace_policy {
        NamespacePolicy::Disabled => Some(SkipReason::NamespaceDisabled),
        NamespacePolicy::Selected | NamespacePolicy::Enabled | NamespacePolicy::Unknown => opt_out,
        // Only a label can pull a pod in from an unlabelled namespace (the webhook's
        // objectSelector sees labels only).
        NamespacePolicy::Unlabelled => match label {
            Some(true) => None,
            Some(false) => Some(SkipReason::LabelOptOut),
            None => Some(SkipReason::NotSelected),
        },
    };
    Ok(reason)
}

/// Istio's spellings of a yes/no switch.
fn parse_switch(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "y" | "yes" | "on" => Some(true),
        "false" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value, annotations: Value, host_network: bool) -> Value {
        json!({
            "metadata": {"name": "p", "labels": labels, "annotations": annotations},
            "spec": {"hostNetwork": host_network, "containers": [{"name": "app", "image": "app"}]}
        })
    }

    fn decide(p: &Value, ns: Option<&str>, policy: NamespacePolicy) -> Option<SkipReason> {
        let req = InjectRequest {
            template: p,
            namespace: ns,
            namespace_policy: policy,
            native_sidecars: false,
        };
        let view = PodView::read(p).unwrap();
        skip_reason(&req, &view).unwrap()
    }

    #[test]
    fn decision_table() {
        use NamespacePolicy::*;
        let none = json!({});
        let lt = json!({"sidecar.istio.io/inject": "true"});
        let lf = json!({"sidecar.istio.io/inject": "false"});
        let cases = [
            // (labels, annotations, namespace policy, expected skip)
            (&none, &none, Enabled, None),
            (&none, &none, Selected, None),
            (&none, &none, Unknown, None),
            (&none, &none, Disabled, Some(SkipReason::NamespaceDisabled)),
            (&none, &none, Unlabelled, Some(SkipReason::NotSelected)),
            (&lt, &none, Unlabelled, None),
            (&lt, &none, Disabled, Some(SkipReason::NamespaceDisabled)),
            (&none, &lt, Unlabelled, Some(SkipReason::NotSelected)),
            (&lf, &none, Enabled, Some(SkipReason::LabelOptOut)),
            (&none, &lf, Enabled, Some(SkipReason::AnnotationOptOut)),
            (&none, &lf, Unknown, Some(SkipReason::AnnotationOptOut)),
            (&lt, &lf, Enabled, None),
            (&lf, &lt, Enabled, Some(SkipReason::LabelOptOut)),
            (&lf, &lt, Unlabelled, Some(SkipReason::LabelOptOut)),
        ];
        for (i, (l, a, policy, want)) in cases.into_iter().enumerate() {
            let p = pod(l.clone(), a.clone(), false);
            assert_eq!(decide(&p, Some("default"), policy), want, "case {i}");
        }
    }

    #[test]
    fn system_namespaces_and_host_network_always_skip() {
        let lt = json!({"sidecar.istio.io/inject": "true"});
        for ns in NEVER_INJECTED_NAMESPACES {
            let p = pod(lt.clone(), json!({}), false);
            assert_eq!(
                decide(&p, Some(ns), NamespacePolicy::Enabled),
                Some(SkipReason::SystemNamespace(ns.into()))
            );
        }
        let p = pod(lt, json!({}), true);
        assert_eq!(
            decide(&p, Some("default"), NamespacePolicy::Enabled),
            Some(SkipReason::HostNetwork)
        );
    }

    #[test]
    fn bad_switch_value_names_the_annotation() {
        let p = pod(
            json!({}),
            json!({"sidecar.istio.io/inject": "maybe"}),
            false,
        );
        let req = InjectRequest {
            template: &p,
            namespace: None,
            namespace_policy: NamespacePolicy::Unknown,
            native_sidecars: false,
        };
        let e = skip_reason(&req, &PodView::read(&p).unwrap()).unwrap_err();
        assert!(e.to_string().contains("sidecar.istio.io/inject"), "{e}");
    }

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
