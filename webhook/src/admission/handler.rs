//! AdmissionReview in, AdmissionReview out. Pure: no I/O, no clock, no globals, so the
//! whole admission decision can be tested on recorded JSON. The HTTP layer only reads the
//! body, calls [`review`] and writes what it returns.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::InjectConfig;
use crate::inject::{self, InjectRequest, NamespacePolicy, Outcome};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Why a body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not valid AdmissionReview JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported AdmissionReview apiVersion {found:?}: only {API_VERSION} is served")]
    ApiVersion { found: String },
    #[error("expected kind {KIND}, found {found:?}")]
    Kind { found: String },
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has an empty uid")]
    NoUid,
    #[error("AdmissionReview request for a Pod CREATE has no object")]
    NoObject,
}

/// The parts of `admission.k8s.io/v1` AdmissionReview we read. The object stays raw JSON
/// so fields our types do not model are never lost from the patch base.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<RequestIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    kind: GroupVersionKind,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut>,
    /// Admission warnings (`admission.k8s.io/v1`, Kubernetes >= 1.19): kubectl prints
    /// them to whoever created the pod.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// A `meta/v1` Status, as the API server shows it to the user who created the pod.
#[derive(Debug, Serialize)]
struct StatusOut {
    status: &'static str,
    message: String,
    reason: &'static str,
    code: u16,
}

/// What was decided, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A patch was returned.
    Injected { operations: usize },
    /// Already injected with the same config.
    Unchanged,
    /// The injection policy said no; the reason is human-readable.
    Skipped(String),
    /// Not a Pod CREATE: allowed untouched.
    NotPodCreate,
    /// The pod was denied; the message names the bad annotation.
    Denied(String),
}

/// Identity of the reviewed object, for the request's tracing span.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

/// The answer to one review.
#[derive(Debug)]
pub struct Answer {
    pub subject: Subject,
    pub decision: Decision,
    /// What the pod asked for that the injection does not do (also in the response's
    /// `warnings`), for the log.
    pub warnings: Vec<String>,
    /// Serialized AdmissionReview response.
    pub body: Vec<u8>,
}

/// Injection settings that are not part of the config file.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Whether the proxy goes in as a native sidecar (decided by the server from the
    /// config's `nativeSidecars` and the API server's version).
    pub native_sidecars: bool,
}

/// Answer one AdmissionReview body.
pub fn review(body: &[u8], cfg: &InjectConfig, settings: Settings) -> Result<Answer, ReviewError> {
    let rev: ReviewIn = serde_json::from_slice(body)?;
    if rev.api_version != API_VERSION {
        return Err(ReviewError::ApiVersion {
            found: rev.api_version,
        });
    }
    if rev.kind != KIND {
        return Err(ReviewError::Kind { found: rev.kind });
    }
    let req = rev.request.ok_or(ReviewError::NoRequest)?;
    if req.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    let subject = subject_of(&req);

    let is_pod_create = req.kind.group.is_empty()
        && req.kind.kind == "Pod"
        && req.operation == "CREATE"
        && req.sub_resource.as_deref().unwrap_or("").is_empty();
    if !is_pod_create {
        return Ok(answer(
            subject,
            Decision::NotPodCreate,
            allow(&req.uid, None),
        ));
    }
    let object = req.object.as_ref().ok_or(ReviewError::NoObject)?;
    let ireq = InjectRequest {
        template: object,
        namespace: req.namespace.as_deref(),
        namespace_policy: NamespacePolicy::Selected,
        native_sidecars: settings.native_sidecars,
        // Derived from the pod's ownerReferences and labels, as Istio's webhook does.
        workload: None,
    };
    let (result, warnings) = match inject::inject_with_warnings(&ireq, cfg) {
        Ok((outcome, warnings)) => (Ok(outcome), warnings),
        Err(e) => (Err(e), Vec::new()),
    };
    let (decision, mut out) = match result {
        Ok(Outcome::Patched(ops)) if !ops.is_empty() => {
            let n = ops.len();
            let patch = json_patch::Patch(ops);
            // A Patch of plain JSON values always serializes; fall back to denying the pod
            // rather than admitting it half-configured if that ever changes.
            match serde_json::to_vec(&patch) {
                Ok(bytes) => (
                    Decision::Injected { operations: n },
                    allow(
                        &req.uid,
                        Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                    ),
                ),
                Err(e) => {
                    let msg = format!("cannot serialize the injection patch: {e}");
                    (
                        Decision::Denied(msg.clone()),
                        deny(&req.uid, msg, 500, "InternalError"),
                    )
                }
            }
        }
        Ok(Outcome::Patched(_)) | Ok(Outcome::Unchanged) => {
            (Decision::Unchanged, allow(&req.uid, None))
        }
        Ok(Outcome::Skipped(reason)) => {
            (Decision::Skipped(reason.to_string()), allow(&req.uid, None))
        }
        Err(e) => {
            let msg = format!("sidecar injection refused: {e}");
            (
                Decision::Denied(msg.clone()),
                deny(&req.uid, msg, 400, "BadRequest"),
            )
        }
    };
    if out.allowed {
        out.warnings = admission_warnings(&warnings);
    }
    let mut a = answer(subject, decision, out);
    a.warnings = warnings;
    Ok(a)
}

/// The API server truncates each warning to 256 characters (and all of them to 4 KiB):
/// cut ours on a character boundary first, so the cut is ours, and say so.
fn admission_warnings(warnings: &[String]) -> Vec<String> {
    const MAX: usize = 256;
    warnings
        .iter()
        .map(|w| {
            if w.len() <= MAX {
                return w.clone();
            }
            let mut end = MAX - 3;
            while !w.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &w[..end])
        })
        .collect()
}

fn subject_of(req: &RequestIn) -> Subject {
    let meta = req.object.as_ref().and_then(|o| o.get("metadata"));
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let name = req
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| field("name"))
        .or_else(|| field("generateName").map(|g| format!("{g}*")))
        .unwrap_or_default();
    Subject {
        uid: req.uid.clone(),
        namespace: req
            .namespace
            .clone()
            .or_else(|| field("namespace"))
            .unwrap_or_default(),
        name,
    }
}

fn allow(uid: &str, patch: Option<String>) -> ResponseOut<'_> {
    ResponseOut {
        uid,
        allowed: true,
        patch_type: patch.as_ref().map(|_| "JSONPatch"),
        patch,
        status: None,
        warnings: Vec::new(),
    }
}

fn deny<'a>(uid: &'a str, message: String, code: u16, reason: &'static str) -> ResponseOut<'a> {
    ResponseOut {
        uid,
        allowed: false,
        patch_type: None,
        patch: None,
        status: Some(StatusOut {
            status: "Failure",
            message,
            reason,
            code,
        }),
        warnings: Vec::new(),
    }
}

fn answer(subject: Subject, decision: Decision, response: ResponseOut<'_>) -> Answer {
    let out = ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response,
    };
    // Serializing our own plain structs cannot fail; an empty body would be answered by
    // the API server's failurePolicy, never by a half-written response.
    let body = serde_json::to_vec(&out).unwrap_or_default();
    Answer {
        subject,
        decision,
        warnings: Vec::new(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_warnings_are_cut_where_the_api_server_would_cut_them() {
        let short = "proxy.istio.io/config: ignored: tracing".to_string();
        let long = format!("proxy.istio.io/config: {}", "é".repeat(200));
        let out = admission_warnings(&[short.clone(), long.clone()]);
        assert_eq!(out[0], short);
        assert!(out[1].len() <= 256 && out[1].ends_with("..."), "{}", out[1]);
        assert!(long.starts_with(out[1].trim_end_matches("...")));
    }
}
