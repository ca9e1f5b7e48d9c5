//! The properties the fuzz targets check, as plain functions (each target is a one-line
//! wrapper), plus the seed-corpus generator that scripts/fuzz.sh runs.
//!
//! Every property here is one the webhook's own tests already hold on hand-written cases
//! (webhook/tests/golden.rs, webhook/tests/inject_properties.rs,
//! webhook/tests/server_kube_inject_parity.rs, common's list and log tests); the fuzzer
//! only widens the inputs. A violated property is a panic, which libFuzzer reports as a
//! crash and saves the input under fuzz/artifacts/<target>/.
//!
//! Only the webhook's public, highest-level entry points are called:
//! `admission::handler::review` (what `POST /inject` runs on the body),
//! `kube_inject::rewrite` (kube-inject / kube-uninject), `inject::uninject` (the core's
//! uninject, which the status annotation drives), and the `yaml` / `workloads` helpers that
//! the golden tests use to read documents back.

pub mod admission;
pub mod grammar;
pub mod kube_inject;
pub mod seeds;

use std::sync::OnceLock;

use serde_json::{Map, Value};

/// With `MESH_FUZZ_VERBOSE=1`, each target says on stderr which checks an input reached
/// (run a target binary on its corpus with `-runs=0` to see what the seeds cover).
pub fn verbose() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::env::var_os("MESH_FUZZ_VERBOSE").is_some_and(|v| v == "1"))
}

/// Print a progress note when [`verbose`].
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        if $crate::verbose() {
            eprintln!($($arg)*);
        }
    };
}

/// The status annotation every injected template carries.
pub const STATUS: &str = mesh_common::annotations::STATUS;

/// Whether a template (`metadata` + `spec`) already records an injection. Uninject of a
/// fresh injection gives back the original only when the original recorded none (with a
/// recorded one, the earlier injection is removed too, which is the point of re-injection).
pub fn has_status(template: &Value) -> bool {
    template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(STATUS))
        .is_some()
}

fn is_empty_or_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn drop_if_empty(obj: &mut Map<String, Value>, key: &str) {
    if obj.get(key).is_some_and(is_empty_or_null) {
        obj.shift_remove(key);
    }
}

/// What injection may have had to create and uninject cannot know was not there, dropped:
/// an empty (or null) `metadata.annotations`, `metadata.labels`, `metadata`,
/// `spec.initContainers`, `spec.volumes` and `spec.imagePullSecrets`. This is
/// inject_properties.rs' `normalized`, widened to `null` (which Kubernetes reads as absent)
/// and to the other lists the status annotation can record.
pub fn normalized(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            drop_if_empty(m, "annotations");
            drop_if_empty(m, "labels");
        }
        drop_if_empty(obj, "metadata");
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            for k in ["initContainers", "volumes", "imagePullSecrets"] {
                drop_if_empty(spec, k);
            }
        }
    }
    v
}

/// Compact JSON, for messages and key-order-sensitive comparisons.
pub fn text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<unprintable: {e}>"))
}

/// Truncated for panic messages (a crash report should stay readable).
pub fn short(s: &str) -> String {
    const MAX: usize = 4000;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}
