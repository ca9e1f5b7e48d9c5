//! `kube-inject` / `kube-uninject`: multi-document YAML in, YAML out.
//!
//! Each document is parsed to a raw `serde_json::Value`; for every pod template in it the
//! core returns a patch, which is applied to the raw document at the template's path (the
//! same patch the webhook would return, so the two cannot disagree). Documents nothing
//! changed in are copied verbatim (comments and all); changed ones are re-written (fields
//! and their order kept, comments not). Any error stops the whole run: the caller writes
//! nothing.

use std::fmt;

use serde_json::Value;

use crate::config::InjectConfig;
use crate::inject::{self, InjectError, InjectRequest, NamespacePolicy, Outcome};
use crate::workloads::{self, TemplateRef};
use crate::yaml::{self, RawDoc};

/// Which rewrite to run.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    Inject {
        cfg: &'a InjectConfig,
        native_sidecars: bool,
    },
    Uninject,
}

/// The rewritten stream and one note per template left alone (for stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub output: String,
    pub notes: Vec<String>,
    /// Templates changed.
    pub changed: usize,
}

/// Where in the input an error is: document index (1-based), `Kind/name` when known, line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocPos {
    pub index: usize,
    pub label: Option<String>,
    pub line: usize,
}

impl fmt::Display for DocPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        if let Some(l) = &self.label {
            write!(f, " ({l})")?;
        }
        write!(f, ", line {}", self.line)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KubeInjectError {
    #[error("{pos}, column {column}: invalid YAML: {message}")]
    Yaml {
        pos: DocPos,
        column: usize,
        message: String,
    },
    // The core's error is part of this message, so it is not also a `source` (anyhow's
    // `{:#}` would print it twice).
    #[error("{pos}: {error}")]
    Inject { pos: DocPos, error: InjectError },
    #[error("{pos}: {reason}")]
    Document { pos: DocPos, reason: String },
}

/// Rewrite a whole stream. Nothing partial: either every document is handled or an error.
pub fn rewrite(input: &str, mode: Mode<'_>) -> Result<Rewrite, KubeInjectError> {
    let mut out = String::with_capacity(input.len() + input.len() / 2);
    let mut notes = Vec::new();
    let mut changed = 0;
    let mut index = 0;
    for doc in yaml::split_documents(input) {
        let value = if doc.is_empty() {
            None
        } else {
            index += 1;
            yaml::parse_document(&doc).map_err(|e| KubeInjectError::Yaml {
                pos: DocPos {
                    index,
                    label: guess_label(doc.text),
                    line: e.line,
                },
                column: e.column,
                message: e.message,
            })?
        };
        let Some(mut value) = value else {
            out.push_str(doc.text);
            continue;
        };
        let n = rewrite_document(&doc, index, &mut value, mode, &mut notes)?;
        if n == 0 {
            out.push_str(doc.text);
            if !doc.text.ends_with('\n') {
                out.push('\n');
            }
            continue;
        }
        changed += n;
        if doc.has_marker {
            // Keep the marker line (and its comment), but not content that started on it:
            // the document is written again below.
            match doc.text.split_inclusive('\n').next() {
                Some(first) if yaml::is_bare_marker(first) && first.ends_with('\n') => {
                    out.push_str(first)
                }
                _ => out.push_str("---\n"),
            }
        }
        let text = yaml::to_yaml(&value).map_err(|reason| KubeInjectError::Document {
            pos: doc_pos(&doc, index, None),
            reason: format!("cannot write YAML: {reason}"),
        })?;
        out.push_str(&text);
    }
    Ok(Rewrite {
        output: out,
        notes,
        changed,
    })
}

/// `Kind/name` of a document that does not parse, read from its top-level `kind:` and its
/// metadata's `name:` lines, for the error message.
fn guess_label(text: &str) -> Option<String> {
    let value = |l: &str, key: &str| {
        l.strip_prefix(key)
            .map(|v| {
                v.split(" #")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_matches(['"', '\''])
                    .to_string()
            })
            .filter(|v| !v.is_empty())
    };
    let kind = text.lines().find_map(|l| value(l, "kind:"))?;
    let mut in_meta = false;
    let mut name = None;
    for l in text.lines() {
        if !l.starts_with([' ', '\t']) {
            in_meta = l.starts_with("metadata:");
        } else if in_meta && let Some(n) = value(l.trim_start(), "name:") {
            name = Some(n);
            break;
        }
    }
    Some(match name {
        Some(n) => format!("{kind}/{n}"),
        None => kind,
    })
}

/// The first content line of a document (after its marker and leading comments).
fn doc_pos(doc: &RawDoc<'_>, index: usize, label: Option<String>) -> DocPos {
    let offset = doc
        .text
        .lines()
        .enumerate()
        .position(|(i, l)| {
            let t = l.trim();
            !(t.is_empty()
                || t.starts_with('#')
                || (i == 0 && doc.has_marker && yaml::is_bare_marker(l)))
        })
        .unwrap_or(0);
    DocPos {
        index,
        label,
        line: doc.first_line + offset,
    }
}

/// The line of a bad annotation inside the document, when it can be found.
fn annotation_line(doc: &RawDoc<'_>, annotation: &str) -> Option<usize> {
    doc.text
        .lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches(['"', '\'']);
            t.starts_with(annotation)
        })
        .map(|i| doc.first_line + i)
}

/// Rewrite the templates of one parsed document in place; returns how many changed.
fn rewrite_document(
    doc: &RawDoc<'_>,
    index: usize,
    value: &mut Value,
    mode: Mode<'_>,
    notes: &mut Vec<String>,
) -> Result<usize, KubeInjectError> {
    let templates = workloads::find_templates(value).map_err(|e| KubeInjectError::Document {
        pos: doc_pos(doc, index, Some(e.label.clone())),
        reason: e.reason,
    })?;
    let mut changed = 0;
    for TemplateRef {
        pointer,
        label,
        namespace,
        kind,
        workload,
    } in templates
    {
        let Some(template) = value.pointer(&pointer) else {
            continue;
        };
        let outcome = match mode {
            Mode::Inject {
                cfg,
                native_sidecars,
            } => inject::inject_with_warnings(
                &InjectRequest {
                    template,
                    namespace: namespace.as_deref(),
                    namespace_policy: NamespacePolicy::Unknown,
                    native_sidecars,
                    workload: workload.as_ref(),
                },
                cfg,
            ),
            Mode::Uninject => inject::uninject(template).map(|o| (o, Vec::new())),
        };
        // The core's message is kept verbatim (fields relative to the pod template), so it
        // reads the same as the webhook's denial.
        let outcome = outcome.map_err(|error| {
            let mut pos = doc_pos(doc, index, Some(label.clone()));
            if let InjectError::InvalidAnnotation { annotation, .. } = &error
                && let Some(line) = annotation_line(doc, annotation)
            {
                pos.line = line;
            }
            KubeInjectError::Inject { pos, error }
        })?;
        let (outcome, warnings) = outcome;
        for w in warnings {
            notes.push(format!("document {index} ({label}): warning: {w}"));
        }
        match outcome {
            Outcome::Skipped(reason) => {
                notes.push(format!("document {index} ({label}): skipped: {reason}"));
            }
            Outcome::Unchanged => notes.push(format!(
                "document {index} ({label}): already injected with this config, unchanged"
            )),
            Outcome::Patched(ops) => {
                let target =
                    value
                        .pointer_mut(&pointer)
                        .ok_or_else(|| KubeInjectError::Document {
                            pos: doc_pos(doc, index, Some(label.clone())),
                            reason: format!("template vanished at {pointer}"),
                        })?;
                json_patch::patch(target, &ops).map_err(|e| KubeInjectError::Document {
                    pos: doc_pos(doc, index, Some(label.clone())),
                    reason: format!("internal error applying the injection patch: {e}"),
                })?;
                changed += 1;
                if let Mode::Inject {
                    native_sidecars: false,
                    cfg,
                } = mode
                    && (kind == "Job" || kind == "CronJob")
                {
                    notes.push(format!(
                        "document {index} ({label}): note: with a regular sidecar the Job's pod \
                         completes only once something calls POST :{}{} on the proxy; \
                         `nativeSidecars: true` (Kubernetes >= 1.29) needs nothing",
                        cfg.admin_port,
                        mesh_common::PROXY_QUIT_PATH
                    ));
                }
            }
        }
    }
    Ok(changed)
}

/// A file of `n` Deployments (with a Service every tenth), for benchmarks and tests.
pub fn generate_deployments(n: usize) -> String {
    let mut s = String::with_capacity(n * 900);
    for i in 0..n {
        s.push_str(&format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{i}\n  namespace: bench\n  labels:\n    app: app-{i}\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: app-{i}\n  template:\n    metadata:\n      labels:\n        app: app-{i}\n        version: v1\n      annotations:\n        example.com/owner: team-{team}\n    spec:\n      serviceAccountName: app-{i}\n      containers:\n        - name: app\n          image: registry.example.com/app:{i}\n          ports:\n            - containerPort: 8080\n              name: http\n          env:\n            - name: MODE\n              value: \"on\"\n          resources:\n            requests:\n              cpu: 50m\n              memory: 64Mi\n          readinessProbe:\n            httpGet:\n              path: /ready\n              port: 8080\n",
            team = i % 7
        ));
        if i % 10 == 0 {
            s.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: app-{i}\n  namespace: bench\nspec:\n  selector:\n    app: app-{i}\n  ports:\n    - port: 80\n      targetPort: 8080\n"
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inject_default(s: &str) -> Result<Rewrite, KubeInjectError> {
        rewrite(
            s,
            Mode::Inject {
                cfg: &InjectConfig::default(),
                native_sidecars: false,
            },
        )
    }

    #[test]
    fn generated_file_injects_every_deployment_and_is_idempotent() {
        let input = generate_deployments(25);
        let once = inject_default(&input).unwrap();
        assert_eq!(once.changed, 25);
        assert_eq!(once.output.matches("name: istio-proxy").count(), 25);
        assert_eq!(once.output.matches("kind: Service").count(), 3);
        let twice = inject_default(&once.output).unwrap();
        assert_eq!(twice.output, once.output);
        assert_eq!(twice.changed, 0);
        let back = rewrite(&once.output, Mode::Uninject).unwrap();
        assert_eq!(back.changed, 25);
        let reparsed: Vec<Value> = yaml::split_documents(&back.output)
            .iter()
            .filter_map(|d| yaml::parse_document(d).unwrap())
            .collect();
        let original: Vec<Value> = yaml::split_documents(&input)
            .iter()
            .filter_map(|d| yaml::parse_document(d).unwrap())
            .collect();
        assert_eq!(reparsed, original);
    }

    #[test]
    fn yaml_error_names_document_and_line() {
        let s = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: [unclosed\n";
        let e = inject_default(s).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("document 2"), "{msg}");
        assert!(msg.contains("line 7") || msg.contains("line 8"), "{msg}");
    }
}
