//! Where the pod template sits in each supported kind, and in `kind: List`.

use serde_json::Value;

use crate::inject::{Workload, workload};

/// A pod template found in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    /// JSON pointer from the document root to the template (`""` for a Pod).
    pub pointer: String,
    /// `Kind/name`, with `List item N` in front for items of a List.
    pub label: String,
    /// The template's namespace, or its workload's.
    pub namespace: Option<String>,
    /// The workload's kind (`Pod`, `Deployment`, ... `CronJob`).
    pub kind: String,
    /// The workload, for [`crate::inject::InjectRequest::workload`]: the document's own
    /// name and kind, with the apiVersion its controller writes into its pods'
    /// ownerReferences (see [`workload::for_document`]); `None` for a Pod, whose workload
    /// the core derives from its metadata as the webhook does.
    pub workload: Option<Workload>,
}

/// Why a document that should hold a pod template does not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{label}: {reason}")]
pub struct WorkloadError {
    pub label: String,
    pub reason: String,
}

/// The path of the pod template for a supported `apiVersion`/`kind`; `None` for every other
/// kind (passed through untouched). A CRD that happens to reuse a kind name in another API
/// group is not mistaken for the built-in one.
pub fn template_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("", "Pod") => Some(&[]),
        ("", "ReplicationController") => Some(&["spec", "template"]),
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            Some(&["spec", "template"])
        }
        ("batch", "Job") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// `Kind/name` of an object, for messages.
pub fn describe(obj: &Value) -> String {
    let kind = str_at(obj, &["kind"]).unwrap_or("(no kind)");
    match str_at(obj, &["metadata", "name"]).or_else(|| str_at(obj, &["metadata", "generateName"]))
    {
        Some(name) => format!("{kind}/{name}"),
        None => kind.to_string(),
    }
}

/// Every pod template in a document (a `List`'s items included), in document order.
pub fn find_templates(doc: &Value) -> Result<Vec<TemplateRef>, WorkloadError> {
    let mut out = Vec::new();
    let kind = str_at(doc, &["kind"]).unwrap_or_default();
    // `kind: List` (what `kubectl get -o yaml` writes) and typed lists (`PodList`, ...):
    // each item is checked by its own apiVersion and kind.
    if kind.ends_with("List") {
        if let Some(items) = doc.get("items").and_then(Value::as_array) {
            for (i, item) in items.iter().enumerate() {
                if let Some(t) = one(item, &format!("/items/{i}"), &format!("List item {i} "))? {
                    out.push(t);
                }
            }
        }
        return Ok(out);
    }
    if let Some(t) = one(doc, "", "")? {
        out.push(t);
    }
    Ok(out)
}

fn one(obj: &Value, base: &str, prefix: &str) -> Result<Option<TemplateRef>, WorkloadError> {
    let kind = str_at(obj, &["kind"]).unwrap_or_default();
    let api = str_at(obj, &["apiVersion"]).unwrap_or_default();
    let Some(path) = template_path(api, kind) else {
        return Ok(None);
    };
    let label = format!("{prefix}{}", describe(obj));
    let template = path.iter().try_fold(obj, |v, k| v.get(k));
    let Some(template) = template.filter(|t| t.is_object()) else {
        return Err(WorkloadError {
            label,
            reason: format!("{kind} has no pod template at {}", path.join(".")),
        });
    };
    let namespace = str_at(template, &["metadata", "namespace"])
        .or_else(|| str_at(obj, &["metadata", "namespace"]))
        .map(str::to_string);
    let mut pointer = base.to_string();
    for k in path {
        pointer.push('/');
        pointer.push_str(k);
    }
    let name = str_at(obj, &["metadata", "name"]).unwrap_or_default();
    Ok(Some(TemplateRef {
        pointer,
        label,
        namespace,
        kind: kind.to_string(),
        workload: workload::for_document(kind, name),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_and_paths() {
        let spec = json!({"containers": []});
        let cases = [
            (
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "a"}, "spec": spec}),
                "",
            ),
            (
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": {"spec": spec}}}),
                "/spec/template",
            ),
            (
                json!({"apiVersion": "batch/v1beta1", "kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}}),
                "/spec/jobTemplate/spec/template",
            ),
        ];
        for (doc, ptr) in cases {
            let t = find_templates(&doc).unwrap();
            assert_eq!(t.len(), 1);
            assert_eq!(t[0].pointer, ptr);
        }
        // The document names the workload (a Pod's is derived by the core); a CronJob
        // still in batch/v1beta1 is named as its Jobs' pods will show it.
        let cron = json!({"apiVersion": "batch/v1beta1", "kind": "CronJob", "metadata": {"name": "c"},
                          "spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}});
        let t = find_templates(&cron).unwrap();
        assert_eq!(
            t[0].workload,
            Some(Workload {
                name: "c".into(),
                kind: "CronJob".into(),
                api_version: "batch/v1".into()
            })
        );
        let pod =
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec});
        assert_eq!(find_templates(&pod).unwrap()[0].workload, None);
        let crd = json!({"apiVersion": "example.com/v1", "kind": "Deployment", "spec": {}});
        assert!(find_templates(&crd).unwrap().is_empty());
        let svc = json!({"apiVersion": "v1", "kind": "Service"});
        assert!(find_templates(&svc).unwrap().is_empty());
    }

    #[test]
    fn list_items_and_missing_template() {
        let doc = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service"},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "n"},
             "spec": {"template": {"spec": {"containers": []}}}}
        ]});
        let t = find_templates(&doc).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].pointer, "/items/1/spec/template");
        assert_eq!(t[0].label, "List item 1 Deployment/d");
        assert_eq!(t[0].namespace.as_deref(), Some("n"));
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {}});
        let e = find_templates(&bad).unwrap_err();
        assert!(e.to_string().contains("Deployment/x"), "{e}");
    }
}
