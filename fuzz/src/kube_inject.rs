//! Target `kube_inject`: bytes are a multi-document YAML stream, fed to
//! `kube_inject::rewrite` the way `mesh-webhook kube-inject -f -` does. Header comments set
//! the config as in the golden corpus (`# config: {nativeSidecars: true, ...}`), so the
//! golden cases are the seeds and the fuzzer can also vary the config.
//!
//! Checked, as webhook/tests/golden.rs and the kube-inject unit tests check them:
//! - no panic (kube-inject and kube-uninject, on the input as it is);
//! - kube-inject(kube-inject(x)) == kube-inject(x), byte for byte;
//! - kube-uninject(kube-inject(x)) parses to the same documents as x (templates up to the
//!   empty lists and maps injection had to create), for every document none of whose
//!   templates recorded an earlier injection;
//! - kube-uninject is idempotent too;
//! - the webhook agrees that x is acceptable: each pod template of x, wrapped as a Pod
//!   AdmissionReview (server_kube_inject_parity.rs' plain wrapping), is allowed, and any
//!   patch it returns applies.

use mesh_webhook::admission::handler::Decision;
use mesh_webhook::config::InjectConfig;
use mesh_webhook::kube_inject::{self, Mode};
use mesh_webhook::{workloads, yaml};
use serde_json::{Value, json};

use crate::{has_status, normalized, short, text};

/// The config the golden test would use for this input (`# config:` header line), or
/// `None` when that config is invalid (then only no-panic is checked).
pub fn header_config(input: &str) -> Option<InjectConfig> {
    let mut cfg = InjectConfig::default();
    for line in input.lines().take_while(|l| l.starts_with('#')) {
        if let Some(c) = line.strip_prefix("# config:") {
            cfg = InjectConfig::from_yaml_str(c.trim(), "case header").ok()?;
        }
    }
    Some(cfg)
}

/// The documents of a stream, parsed (empty ones dropped), as the golden test reads them.
pub fn parse_all(s: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for d in yaml::split_documents(s) {
        if let Some(v) = yaml::parse_document(&d).map_err(|e| e.to_string())? {
            out.push(v);
        }
    }
    Ok(out)
}

/// A template as the Pod the API server would show the webhook (parity test's `as_pod`).
fn as_pod(doc: &Value, pointer: &str) -> Option<Value> {
    let t = doc.pointer(pointer)?;
    if pointer.is_empty() {
        return Some(t.clone());
    }
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod"});
    for k in ["metadata", "spec"] {
        if let Some(v) = t.get(k) {
            pod[k] = v.clone();
        }
    }
    Some(pod)
}

/// A Pod CREATE review, as the webhook tests build them.
pub fn pod_review(uid: &str, namespace: &str, pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// `doc` with every template at `pointers` normalized.
fn with_templates_normalized(mut doc: Value, pointers: &[String]) -> Value {
    for p in pointers {
        if let Some(t) = doc.pointer_mut(p) {
            *t = normalized(std::mem::take(t));
        }
    }
    doc
}

/// The whole property set for one stream.
pub fn check(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    // kube-uninject on whatever came in: no panic, and idempotent.
    if let Ok(u) = kube_inject::rewrite(input, Mode::Uninject) {
        let u2 = kube_inject::rewrite(&u.output, Mode::Uninject).unwrap_or_else(|e| {
            panic!(
                "kube-uninject fails on its own output: {e}\n{}",
                short(&u.output)
            )
        });
        assert!(
            u2.output == u.output,
            "kube-uninject twice != once\n--- once\n{}\n--- twice\n{}",
            short(&u.output),
            short(&u2.output)
        );
    }

    let Some(cfg) = header_config(input) else {
        crate::note!("kube_inject: invalid config header");
        let _ = kube_inject::rewrite(
            input,
            Mode::Inject {
                cfg: &InjectConfig::default(),
                native_sidecars: false,
            },
        );
        return;
    };
    let native = cfg.native_sidecars.resolve(None);
    let mode = Mode::Inject {
        cfg: &cfg,
        native_sidecars: native,
    };
    let once = match kube_inject::rewrite(input, mode) {
        Ok(once) => once,
        Err(e) => {
            crate::note!("kube_inject: refused: {e}");
            return;
        }
    };
    crate::note!(
        "kube_inject: {} template(s) changed; checking twice == once, uninject, the webhook accepts it",
        once.changed
    );

    // Twice == once.
    let twice = kube_inject::rewrite(&once.output, mode).unwrap_or_else(|e| {
        panic!(
            "kube-inject fails on its own output: {e}\n{}",
            short(&once.output)
        )
    });
    assert!(
        twice.output == once.output,
        "kube-inject twice != once\n--- input\n{}\n--- once\n{}\n--- twice\n{}",
        short(input),
        short(&once.output),
        short(&twice.output)
    );

    let original = parse_all(input).expect("kube-inject accepted a stream that does not parse");
    let injected = parse_all(&once.output).unwrap_or_else(|e| {
        panic!(
            "kube-inject wrote YAML that does not parse: {e}\n{}",
            short(&once.output)
        )
    });
    assert_eq!(
        original.len(),
        injected.len(),
        "kube-inject changed the number of documents\n--- input\n{}\n--- output\n{}",
        short(input),
        short(&once.output)
    );

    // Uninject of the injection gives the documents back.
    let back = kube_inject::rewrite(&once.output, Mode::Uninject).unwrap_or_else(|e| {
        panic!(
            "kube-uninject fails on kube-inject's output: {e}\n{}",
            short(&once.output)
        )
    });
    let restored = parse_all(&back.output).unwrap_or_else(|e| {
        panic!(
            "kube-uninject wrote YAML that does not parse: {e}\n{}",
            short(&back.output)
        )
    });
    assert_eq!(
        original.len(),
        restored.len(),
        "kube-uninject changed the number of documents"
    );

    for (i, ((orig, inj), rest)) in original.iter().zip(&injected).zip(&restored).enumerate() {
        let templates = workloads::find_templates(orig)
            .expect("kube-inject accepted a document whose templates cannot be found");
        let pointers: Vec<String> = templates.iter().map(|t| t.pointer.clone()).collect();
        let recorded = pointers
            .iter()
            .any(|p| orig.pointer(p).is_some_and(has_status));
        if !recorded {
            crate::note!(
                "kube_inject: document {}: checking uninject restores it",
                i + 1
            );
            let want = with_templates_normalized(orig.clone(), &pointers);
            let got = with_templates_normalized(rest.clone(), &pointers);
            assert!(
                want == got,
                "kube-uninject(kube-inject(x)) != x in document {}\n--- x\n{}\n--- injected\n{}\n--- uninjected\n{}",
                i + 1,
                short(&text(orig)),
                short(&text(inj)),
                short(&text(rest))
            );
        }

        // The webhook accepts what kube-inject accepted: each template, as a Pod CREATE
        // review, is answered (invariants checked by the admission target's review), not
        // denied, and any patch applies. (Not compared field by field: the webhook sees a
        // bare Pod where kube-inject sees the workload, so the proxy's identity env
        // differs by design; server_kube_inject_parity.rs mimics the controller for that.)
        for t in &templates {
            let Some(pod) = as_pod(orig, &t.pointer) else {
                continue;
            };
            let ns = t.namespace.clone().unwrap_or_else(|| "default".to_string());
            let uid = Value::String("fuzz".into());
            let body = serde_json::to_vec(&pod_review("fuzz", &ns, pod.clone()))
                .expect("a JSON value serializes");
            let r = crate::admission::review(&body, &pod, &uid, &cfg, native)
                .unwrap_or_else(|| panic!("the webhook refuses the review of {}", t.label));
            if let Decision::Denied(msg) = &r.decision {
                panic!(
                    "the webhook denies {} ({msg}) but kube-inject accepted it\n--- x\n{}",
                    t.label,
                    short(input)
                );
            }
        }
    }
}
