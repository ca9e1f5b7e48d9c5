//! Inject or not: namespace, labels, annotations, hostNetwork.

use mesh_common::{NEVER_INJECTED_NAMESPACES, annotations, labels};

use super::error::InjectError;
use super::request::{InjectRequest, NamespacePolicy, SkipReason};
use super::view::PodView;

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
pub(crate) fn parse_switch(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "y" | "yes" | "on" => Some(true),
        "false" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

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
            workload: None,
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
            workload: None,
        };
        let e = skip_reason(&req, &PodView::read(&p).unwrap()).unwrap_err();
        assert!(e.to_string().contains("sidecar.istio.io/inject"), "{e}");
    }
}
