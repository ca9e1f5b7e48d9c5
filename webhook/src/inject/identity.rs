//! The uid and gid the proxy really runs as, which `istio-init` must exclude from capture
//! (`-u`/`-g`), or the proxy's own traffic loops back into it.
//!
//! Our `istio-proxy` container always sets its own `securityContext.runAsUser` and
//! `runAsGroup` (the config's `proxyUid`/`proxyGid`), and in Kubernetes a container-level
//! value wins over the pod-level `spec.securityContext`; so a pod-level `runAsUser` does NOT
//! change the proxy's uid, and is ignored here. What can change it is the user's own
//! container named `istio-proxy`, which is merged into ours with the user's fields winning:
//! its `runAsUser`/`runAsGroup` are the effective ones. (Only if that override sets the
//! field to `null`, which removes our container-level value, does the pod-level one apply.)

use mesh_common::containers;
use serde_json::Value;

use super::error::InjectError;
use crate::config::InjectConfig;

/// The proxy's effective (uid, gid) in `template` (the template our containers are about
/// to be added to, i.e. with any previous injection already removed). An invalid value is
/// an error naming the field.
pub fn effective_proxy_ids(
    template: &Value,
    cfg: &InjectConfig,
) -> Result<(u32, u32), InjectError> {
    let Some((path, user)) = user_proxy(template) else {
        return Ok((cfg.proxy_uid, cfg.proxy_gid));
    };
    let ctx = user.get("securityContext");
    let pod_ctx = template.pointer("/spec/securityContext");
    let one = |key: &str, ours: u32| -> Result<u32, InjectError> {
        match ctx.and_then(|c| c.as_object()).and_then(|c| c.get(key)) {
            None => Ok(ours),
            // An explicit null removes our container-level value: the pod's applies, if any.
            Some(Value::Null) => match pod_ctx.and_then(|c| c.get(key)) {
                None | Some(Value::Null) => Ok(ours),
                Some(v) => id(v, &format!("spec.securityContext.{key}")),
            },
            Some(v) => id(v, &format!("{path}.securityContext.{key}")),
        }
    };
    Ok((
        one("runAsUser", cfg.proxy_uid)?,
        one("runAsGroup", cfg.proxy_gid)?,
    ))
}

/// The user's `istio-proxy` container and its path (`spec.containers[1]`), in either list.
fn user_proxy(template: &Value) -> Option<(String, &Value)> {
    let spec = template.get("spec")?;
    ["containers", "initContainers"]
        .into_iter()
        .find_map(|list| {
            spec.get(list)?
                .as_array()?
                .iter()
                .enumerate()
                .find(|(_, c)| c.get("name").and_then(Value::as_str) == Some(containers::PROXY))
                .map(|(i, c)| (format!("spec.{list}[{i}]"), c))
        })
}

/// A uid or gid: an integer in 0..=4294967295 (what iptables' owner match can name).
fn id(v: &Value, field: &str) -> Result<u32, InjectError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| InjectError::InvalidPod {
            field: field.to_string(),
            reason: format!("{v} is not a uid/gid (an integer from 0 to 4294967295)"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(spec: Value) -> Result<(u32, u32), InjectError> {
        effective_proxy_ids(&json!({ "spec": spec }), &InjectConfig::default())
    }

    #[test]
    fn the_user_override_wins_the_pod_level_does_not() {
        assert_eq!(
            ids(json!({"containers": [{"name": "app"}]})),
            Ok((1337, 1337))
        );
        assert_eq!(
            ids(json!({
                "securityContext": {"runAsUser": 1000, "runAsGroup": 3000},
                "containers": [{"name": "app"}]
            })),
            Ok((1337, 1337))
        );
        assert_eq!(
            ids(json!({"containers": [
                {"name": "app"},
                {"name": "istio-proxy", "securityContext": {"runAsUser": 1234}}
            ]})),
            Ok((1234, 1337))
        );
        assert_eq!(
            ids(json!({"initContainers": [
                {"name": "istio-proxy", "securityContext": {"runAsUser": 5, "runAsGroup": 6}}
            ], "containers": [{"name": "app"}]})),
            Ok((5, 6))
        );
        // null drops our container-level value; the pod-level one then applies.
        assert_eq!(
            ids(json!({
                "securityContext": {"runAsUser": 1000},
                "containers": [{"name": "istio-proxy", "securityContext": {"runAsUser": null}}]
            })),
            Ok((1000, 1337))
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        for (v, field) in [
            (json!(-1), "spec.containers[1].securityContext.runAsUser"),
            (
                json!("1234"),
                "spec.containers[1].securityContext.runAsUser",
            ),
            (json!(12.5), "spec.containers[1].securityContext.runAsUser"),
            (
                json!(4294967296u64),
                "spec.containers[1].securityContext.runAsUser",
            ),
        ] {
            let e = ids(json!({"containers": [
                {"name": "app"},
                {"name": "istio-proxy", "securityContext": {"runAsUser": v}}
            ]}))
            .unwrap_err();
            assert!(
                matches!(&e, InjectError::InvalidPod { field: f, .. } if f == field),
                "{v}: {e}"
            );
        }
        let e = ids(json!({"containers": [
            {"name": "istio-proxy", "securityContext": {"runAsGroup": -5}}
        ]}))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("spec.containers[0].securityContext.runAsGroup"),
            "{e}"
        );
    }
}
