//! Which of Istio's injection templates a pod asks for, and so what its proxy is: a
//! sidecar (Istio's `sidecar` template, the default) or a gateway (Istio's `gateway`
//! template, which the `istio/gateway` Helm chart asks for).
//!
//! A pod is a gateway when
//! - its annotation `inject.istio.io/templates` is `gateway`; or
//! - it has no such annotation, its only container is `istio-proxy` (the chart's
//!   `image: auto` one), and its injection switch (the label `sidecar.istio.io/inject`,
//!   else the annotation of that name, the label winning as everywhere) says `true`: a
//!   pod that asks to be injected and has nothing but the proxy can only be a gateway. The
//!   same pod without the switch stays an error ("no application container"), as before.
//!
//! `inject.istio.io/templates` naming anything else is an error naming the annotation:
//! Istio's other templates (`grpc-agent`, `spire`, a custom one of its config), a list of
//! several (which Istio merges in order), or an empty value (Istio: template `""` not
//! found). We have none of those, and injecting a sidecar instead would be a guess.
//!
//! A gateway, as Istio's gateway template injects it (what is built where: see
//! [`super::containers`] and [`super::rewrite`]):
//! - no `istio-init`, no capture: the proxy gets `--role gateway` and never
//!   `--dns-capture`; a user's container named `istio-init` is theirs, left as it is;
//! - the user's `istio-proxy` (in `spec.containers`; in `spec.initContainers` it is an
//!   error naming it) is completed from ours, their fields winning as for any override,
//!   `image: auto` meaning ours; the proxy is a regular container even with native
//!   sidecars (the hash ignores the layout, so the webhook and kube-inject agree on any
//!   cluster);
//! - other containers of the pod (the chart's `additionalContainers`) are kept, not
//!   captured, and the first of them is the default container, as with Istio; with none
//!   there is no default-container annotation;
//! - the workload identity's volumes and mounts, but not the label
//!   `security.istio.io/tlsMode`, which Istio's gateway template does not write (peers do
//!   not originate mTLS to a gateway);
//! - no pod-level sysctl, no added capability: see [`super::containers`] on ports below
//!   1024.

use mesh_common::{annotations, containers, labels};

use super::error::InjectError;
use super::policy::parse_switch;
use super::view::PodView;

/// Istio's annotation naming the injection templates a pod asks for.
pub const TEMPLATES_ANNOTATION: &str = "inject.istio.io/templates";

/// Istio's name of the default template.
pub const SIDECAR_TEMPLATE: &str = "sidecar";

/// Istio's name of the gateway template.
pub const GATEWAY_TEMPLATE: &str = "gateway";

/// What the injected proxy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// An app pod's proxy, with `istio-init` and the capture.
    #[default]
    Sidecar,
    /// A gateway pod's proxy: no `istio-init`, no capture, `--role gateway`.
    Gateway,
}

/// The role the pod asks for (see the module docs). `view` is the template as given, with
/// or without a previous injection: a previous injection changes neither the annotation
/// nor which containers other than `istio-proxy` the pod has, so both give one answer.
pub fn select(view: &PodView) -> Result<Role, InjectError> {
    if let Some(value) = view.annotations.get(TEMPLATES_ANNOTATION) {
        return parse_templates(value);
    }
    let only_proxy =
        !view.containers.is_empty() && view.containers.iter().all(|c| c == containers::PROXY);
    if !only_proxy {
        return Ok(Role::Sidecar);
    }
    // The label wins over the annotation; policy has already refused malformed values.
    let switch = view
        .labels
        .get(labels::INJECT)
        .or_else(|| view.annotations.get(annotations::INJECT))
        .and_then(|v| parse_switch(v));
    Ok(if switch == Some(true) {
        Role::Gateway
    } else {
        Role::Sidecar
    })
}

/// `inject.istio.io/templates`: one template we have.
fn parse_templates(value: &str) -> Result<Role, InjectError> {
    let bad = |reason: String| InjectError::InvalidAnnotation {
        annotation: TEMPLATES_ANNOTATION.to_string(),
        value: value.to_string(),
        reason,
    };
    let names: Vec<&str> = value.split(',').map(str::trim).collect();
    let known = format!("this injector has {SIDECAR_TEMPLATE:?} and {GATEWAY_TEMPLATE:?}");
    match names.as_slice() {
        [SIDECAR_TEMPLATE] => Ok(Role::Sidecar),
        [GATEWAY_TEMPLATE] => Ok(Role::Gateway),
        [""] => Err(bad(format!("names no template; {known}"))),
        [one] => Err(bad(format!("unknown template {one:?}; {known}"))),
        _ => Err(bad(format!(
            "names {} templates; this injector applies one: {SIDECAR_TEMPLATE:?} or {GATEWAY_TEMPLATE:?}",
            names.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn role(meta: Value, containers: Value) -> Result<Role, InjectError> {
        select(
            &PodView::read(&json!({"metadata": meta, "spec": {"containers": containers}})).unwrap(),
        )
    }

    #[test]
    fn the_annotation_or_a_proxy_only_pod_that_asks_for_injection_is_a_gateway() {
        let proxy = json!([{"name": "istio-proxy", "image": "auto"}]);
        let with_app = json!([{"name": "app"}, {"name": "istio-proxy", "image": "auto"}]);
        let gw = json!({"annotations": {"inject.istio.io/templates": "gateway"}});
        assert_eq!(role(gw.clone(), proxy.clone()), Ok(Role::Gateway));
        assert_eq!(role(gw, with_app.clone()), Ok(Role::Gateway));
        let spaced = json!({"annotations": {"inject.istio.io/templates": " gateway "}});
        assert_eq!(role(spaced, proxy.clone()), Ok(Role::Gateway));
        let label = json!({"labels": {"sidecar.istio.io/inject": "true"}});
        assert_eq!(role(label.clone(), proxy.clone()), Ok(Role::Gateway));
        assert_eq!(role(label, with_app.clone()), Ok(Role::Sidecar));
        let annotation = json!({"annotations": {"sidecar.istio.io/inject": "true"}});
        assert_eq!(role(annotation, proxy.clone()), Ok(Role::Gateway));
        // The label wins over the annotation.
        let both = json!({"labels": {"sidecar.istio.io/inject": "false"},
                          "annotations": {"sidecar.istio.io/inject": "true"}});
        assert_eq!(role(both, proxy.clone()), Ok(Role::Sidecar));
        // No switch, or the sidecar template asked for: a sidecar (and so the "no
        // application container" error it always was).
        assert_eq!(role(json!({}), proxy.clone()), Ok(Role::Sidecar));
        let sidecar = json!({"labels": {"sidecar.istio.io/inject": "true"},
                             "annotations": {"inject.istio.io/templates": "sidecar"}});
        assert_eq!(role(sidecar, proxy), Ok(Role::Sidecar));
        assert_eq!(role(json!({}), json!([])), Ok(Role::Sidecar));
    }

    #[test]
    fn other_templates_are_errors_naming_the_annotation() {
        for (value, why) in [
            ("grpc-agent", "unknown template \"grpc-agent\""),
            ("Gateway", "unknown template \"Gateway\""),
            ("", "names no template"),
            (" ", "names no template"),
            ("sidecar,spire", "names 2 templates"),
            ("gateway,", "names 2 templates"),
        ] {
            let e = role(
                json!({"annotations": {"inject.istio.io/templates": value}}),
                json!([{"name": "istio-proxy"}]),
            )
            .unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("annotation inject.istio.io/templates") && msg.contains(why),
                "{value:?}: {msg}"
            );
        }
    }
}
