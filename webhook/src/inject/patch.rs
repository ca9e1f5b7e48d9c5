//! From (input, desired) templates to a small RFC 6902 patch.
//!
//! Only the places the injector changes are compared: `/metadata/labels`,
//! `/metadata/annotations` and the `/spec` lists. Rules: a missing list or map is `add`ed
//! whole; items only appended are `add .../-`; any other list change is a whole-list
//! `replace`; labels and annotations are added or replaced per key. A key is `remove`d only when it is the last key of its map (json-patch
//! removes from a map by swapping the last key into the hole, which would reorder it);
//! otherwise the parent map is replaced, so applying the patch gives exactly `desired`,
//! key order included.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

/// Spec fields the injector may change.
const SPEC_LISTS: [&str; 4] = [
    "initContainers",
    "containers",
    "volumes",
    "imagePullSecrets",
];

pub fn diff(old: &Value, new: &Value) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    diff_metadata(old, new, &mut ops);
    if let (Some(o), Some(n)) = (old.get("spec"), new.get("spec")) {
        if removes_inner_key(o, n) {
            ops.push(replace(&["spec"], n.clone()));
        } else {
            for key in SPEC_LISTS {
                diff_list(&["spec", key], o.get(key), n.get(key), &mut ops);
            }
        }
    }
    ops
}

fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: ptr(tokens),
        value,
    })
}

fn replace(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation {
        path: ptr(tokens),
        value,
    })
}

fn remove(tokens: &[&str]) -> PatchOperation {
    PatchOperation::Remove(RemoveOperation { path: ptr(tokens) })
}

/// True when `new` lacks a key of `old` that is not `old`'s last key.
fn removes_inner_key(old: &Value, new: &Value) -> bool {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return false;
    };
    let last = o.keys().next_back();
    o.keys().any(|k| !n.contains_key(k) && Some(k) != last)
}

/// Same keys in the same order and equal values.
fn identical(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((ka, va), (kb, vb))| ka == kb && identical(va, vb))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| identical(a, b))
        }
        _ => a == b,
    }
}

fn diff_list(
    path: &[&str],
    old: Option<&Value>,
    new: Option<&Value>,
    ops: &mut Vec<PatchOperation>,
) {
    match (old, new) {
        (None, None) => {}
        (None, Some(n)) => ops.push(add(path, n.clone())),
        (Some(_), None) => ops.push(remove(path)),
        (Some(o), Some(n)) => {
            if identical(o, n) {
                return;
            }
            match (o.as_array(), n.as_array()) {
                (Some(oa), Some(na))
                    if na.len() > oa.len() && oa.iter().zip(na).all(|(a, b)| identical(a, b)) =>
                {
                    let mut end = path.to_vec();
                    end.push("-");
                    for item in &na[oa.len()..] {
                        ops.push(add(&end, item.clone()));
                    }
                }
                _ => ops.push(replace(path, n.clone())),
            }
        }
    }
}

fn diff_metadata(old: &Value, new: &Value, ops: &mut Vec<PatchOperation>) {
    let (om, nm) = (old.get("metadata"), new.get("metadata"));
    let (om, nm) = match (om, nm) {
        (_, None) => return,
        (None, Some(n)) => return ops.push(add(&["metadata"], n.clone())),
        (Some(Value::Null), Some(n)) => return ops.push(replace(&["metadata"], n.clone())),
        (Some(o), Some(n)) => (o, n),
    };
    if removes_inner_key(om, nm) {
        return ops.push(replace(&["metadata"], nm.clone()));
    }
    // In the order the rewrite creates them, so maps both add land in the same order.
    for key in METADATA_MAPS {
        match (om.get(key), nm.get(key)) {
            (None, None) => {}
            (None, Some(n)) => ops.push(add(&["metadata", key], n.clone())),
            (Some(_), None) => ops.push(remove(&["metadata", key])),
            (Some(o), Some(n)) => match (o.as_object(), n.as_object()) {
                (Some(o), Some(n)) => diff_map(key, o, n, ops),
                _ if identical(o, n) => {}
                _ => ops.push(replace(&["metadata", key], n.clone())),
            },
        }
    }
}

/// Metadata maps the injector may change.
const METADATA_MAPS: [&str; 2] = ["annotations", "labels"];

fn diff_map(
    key: &str,
    o: &Map<String, Value>,
    n: &Map<String, Value>,
    ops: &mut Vec<PatchOperation>,
) {
    // Per-key ops keep the order only if `n` is `o`'s keys, in order, then new keys.
    let keeps_order = o.len() <= n.len() && o.keys().zip(n.keys()).all(|(a, b)| a == b);
    if !keeps_order {
        return ops.push(replace(&["metadata", key], Value::Object(n.clone())));
    }
    for (k, v) in n {
        match o.get(k) {
            Some(ov) if ov == v => {}
            Some(_) => ops.push(replace(&["metadata", key, k], v.clone())),
            None => ops.push(add(&["metadata", key, k], v.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(old: Value, new: Value) -> Vec<PatchOperation> {
        let ops = diff(&old, &new);
        let mut applied = old.clone();
        json_patch::patch(&mut applied, &ops).unwrap();
        assert!(
            identical(&applied, &new),
            "{applied}\n!=\n{new}\nops: {ops:?}"
        );
        ops
    }

    #[test]
    fn escapes_annotation_keys() {
        let ops = check(
            json!({"metadata": {"annotations": {"a": "1"}}, "spec": {}}),
            json!({"metadata": {"annotations": {"a": "1", "sidecar.istio.io/status": "{}"}}, "spec": {}}),
        );
        let text = serde_json::to_string(&ops).unwrap();
        assert!(
            text.contains("/metadata/annotations/sidecar.istio.io~1status"),
            "{text}"
        );
    }

    #[test]
    fn appends_creates_and_replaces() {
        let ops = check(
            json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}]}}),
            json!({"metadata": {"name": "x", "annotations": {"k": "v"}},
                   "spec": {"containers": [{"name": "a"}, {"name": "p"}], "initContainers": [{"name": "i"}]}}),
        );
        let text = serde_json::to_string(&ops).unwrap();
        assert!(
            text.contains(r#""op":"add","path":"/spec/containers/-""#),
            "{text}"
        );
        assert!(
            text.contains(r#""op":"add","path":"/spec/initContainers""#),
            "{text}"
        );
        assert!(
            text.contains(r#""op":"add","path":"/metadata/annotations""#),
            "{text}"
        );
        let ops = check(
            json!({"spec": {"initContainers": [{"name": "u"}], "containers": []}}),
            json!({"spec": {"initContainers": [{"name": "i"}, {"name": "u"}], "containers": []}}),
        );
        assert!(matches!(ops[0], PatchOperation::Replace(_)));
    }

    #[test]
    fn labels_are_patched_per_key_and_escaped() {
        let ops = check(
            json!({"metadata": {"labels": {"app": "a"}}, "spec": {}}),
            json!({"metadata": {"labels": {"app": "a", "security.istio.io/tlsMode": "istio"}}, "spec": {}}),
        );
        let text = serde_json::to_string(&ops).unwrap();
        assert_eq!(
            text,
            r#"[{"op":"add","path":"/metadata/labels/security.istio.io~1tlsMode","value":"istio"}]"#
        );
        // Both maps new: annotations, then labels, as the rewrite makes them.
        check(
            json!({"metadata": {"name": "x"}, "spec": {}}),
            json!({"metadata": {"name": "x", "annotations": {"a": "1"}, "labels": {"l": "1"}}, "spec": {}}),
        );
        check(
            json!({"metadata": {"name": "x", "labels": null}, "spec": {}}),
            json!({"metadata": {"name": "x", "labels": {"l": "1"}}, "spec": {}}),
        );
        check(
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {}}),
            json!({"metadata": {"labels": {"b": "2"}}, "spec": {}}),
        );
    }

    #[test]
    fn removal_keeps_key_order() {
        check(
            json!({"metadata": {"name": "x", "annotations": {"a": "1"}, "labels": {}}, "spec": {"initContainers": [], "containers": []}}),
            json!({"metadata": {"name": "x", "labels": {}}, "spec": {"containers": []}}),
        );
        check(
            json!({"metadata": {"annotations": {"a": "1", "b": "2", "c": "3"}}, "spec": {}}),
            json!({"metadata": {"annotations": {"a": "1", "c": "4"}}, "spec": {}}),
        );
        check(
            json!({"spec": {"containers": [], "initContainers": []}}),
            json!({"spec": {"containers": []}}),
        );
    }
}
