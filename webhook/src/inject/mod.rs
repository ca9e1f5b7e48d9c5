//! The injection core: a pod template in, a decision and an RFC 6902 patch out.
//!
//! Pure and deterministic: no I/O, no clock, no randomness. The admission server returns the
//! patch to the API server; `kube-inject` applies the very same patch to the raw YAML
//! document at the template's path. Because both entry points use one patch, they cannot
//! disagree.
//!
//! How it works: the template stays a raw `serde_json::Value` (so fields our Kubernetes types
//! do not model are never dropped). k8s-openapi types read and validate it and build our
//! containers. The core builds the *desired* template (a clone of the input with our
//! changes) and then emits a small patch touching only `/metadata/labels`,
//! `/metadata/annotations` and the `/spec` lists `initContainers`, `containers`, `volumes`,
//! `imagePullSecrets`: `add .../-` when items are only appended, a whole-array `replace`
//! when the order changes, `add` of a missing array or map, per-key `add`/`replace` of
//! labels and annotations (JSON-pointer escaped, e.g. `sidecar.istio.io~1status`). Removing a key that is not its map's last
//! (only re-injection and uninject do) replaces that map, `/metadata` or `/spec`, whole,
//! because a json-patch `remove` would reorder the keys. Applying the patch to the input
//! yields exactly the desired template, key order included (the golden tests check this
//! for every case). A `Patched` patch is never empty.
//!
//! The status annotation `sidecar.istio.io/status` is JSON, for example
//! `{"initContainers":["istio-init"],"containers":["istio-proxy"],
//!   "volumes":["istio-token","istiod-ca-cert"],
//!   "annotations":["kubectl.kubernetes.io/default-container","prometheus.io/scrape",..],
//!   "labels":["security.istio.io/tlsMode"],"configHash":"dd85827f515456af"}` (plus
//!   `"overrides":[..]` when the user had one).
//! - `initContainers`, `containers`, `volumes` (and `imagePullSecrets` when present) name
//!   what was added, with Istio's keys, so a pod injected by Istio can be re-injected or
//!   uninjected by us (its volumes are removed too). Our volumes are the workload
//!   identity's ([`mtls`]: `istio-token`, `istiod-ca-cert`, with
//!   `controlPlaneAuthPolicy: MUTUAL_TLS`); a pod volume of the same name is the user's
//!   and wins (kept, not recorded), as a user's `istio-proxy` overrides ours.
//! - `annotations` names the annotations we added (default-container and `prometheus.io/*`,
//!   never one the user had set), so uninject removes exactly those.
//! - `labels` (ours, absent when empty) names the labels we added:
//!   `security.istio.io/tlsMode: istio`, only when the pod had no value of its own (as
//!   Istio's template keeps one). Removal takes a recorded label only while it still
//!   holds the value we wrote; removing an Istio injection (a status without
//!   `configHash`) takes `tlsMode: istio` too, which Istio's template always writes.
//! - `configHash` hashes the injection config together with everything else that shapes the
//!   result: native or regular sidecar, the honoured annotations' values, and the values of
//!   the proxy's identity env (below). Equal hash
//!   (and the recorded containers still there): [`Outcome::Unchanged`]. Any other hash (or none, as with Istio's status): the recorded
//!   injection is removed and redone. So editing `sidecar.istio.io/proxyCPU` on an injected
//!   template and re-running kube-inject applies it.
//! - `overrides` keeps each user container named `istio-proxy`/`istio-init` as the user
//!   wrote it, with its list (`containers`/`initContainers`) and index, so re-injection
//!   re-merges it and uninject puts it back exactly where it was.
//! - `warnings` (ours, absent when empty): what the pod's ProxyConfig asks for that this
//!   injection does not do, in words (below). Also in the hash.
//!
//! Istio's ProxyConfig (`proxy.istio.io/config` over the config's `defaultConfig`; see
//! [`crate::proxy_config`]): `concurrency` → `--worker-threads`,
//! `terminationDrainDuration` → `--drain-delay` (both last in the proxy's args),
//! `proxyMetadata` → env on `istio-proxy` after our own (a name of ours takes the user's
//! value in place), `ISTIO_META_DNS_CAPTURE` → `--dns-capture` on both containers,
//! `holdApplicationUntilProxyStarts` → a regular sidecar goes first among the containers
//! with a `postStart` hook `mesh-proxy wait` (the kubelet starts the next container only
//! once it returns: once the proxy is ready), as Istio's injector does; a native
//! sidecar's startup probe does that already.
//! A bad value is an [`InjectError::InvalidAnnotation`] naming the field; what is accepted
//! but not done is a warning ([`inject_with_warnings`]): fields not honoured, a drain not
//! shorter than the pod's
//! `terminationGracePeriodSeconds` (default 30), `concurrency: 0` without a CPU limit to
//! count cores by, an `ISTIO_META_DNS_CAPTURE` that is no boolean. The webhook returns
//! them as admission warnings and logs them; kube-inject prints them.
//!
//! The proxy's identity: `istio-proxy` gets, as literal env values computed here, the
//! workload the pod belongs to as Istio derives it (`ISTIO_META_WORKLOAD_NAME`,
//! `ISTIO_META_OWNER`), its canonical service and revision (`CANONICAL_SERVICE`,
//! `CANONICAL_REVISION`) and its `app` / `version` labels (`APP_NAME`, `APP_VERSION`); see
//! [`workload`]. The workload is [`InjectRequest::workload`] when the caller names it
//! (kube-inject: the document's), else derived from the template's metadata as the API
//! server shows the pod to the webhook (controller `ownerReferences`, `pod-template-hash`).
//! Hashing the values, not their inputs, is what lets the webhook leave a kube-injected
//! Deployment's pod alone: it derives the same Deployment from the pod's ReplicaSet that
//! kube-inject read from the document. Uninject removes them with the container.
//!
//! Gateways: a pod that asks for Istio's `gateway` template (`inject.istio.io/templates:
//! gateway`, or a proxy-only pod labelled for injection; see [`role`]) gets only the
//! proxy, completed from the user's own `istio-proxy` (`image: auto` meaning ours), with
//! `--role gateway`: no `istio-init`, no capture, no tlsMode label, never a native
//! sidecar. Its status records no init containers, so uninject and re-injection work as
//! for sidecars, and the role is in the hash, so switching template re-injects.
//!
//! Deviations from the requested API shape: none in signatures. Additions:
//! [`inject_with_warnings`] ([`inject`] and its warnings),
//! [`desired_template`] (the template the patch produces, for tests and tools),
//! [`SkipReason::NotInjected`] (uninject of a pod without status), and the submodules
//! are public for reuse.
//!
//! Submodules, in dependency order (each uses only those above it; this module uses them
//! all and none uses it):
//! - [`error`], [`request`]: the types of the API above ([`InjectError`], [`InjectRequest`],
//!   [`Outcome`], ...);
//! - [`overrides`]: the honoured annotations (and the ProxyConfig's honoured fields),
//!   validated and merged with the config;
//! - [`status`]: the status annotation (format and hash);
//! - [`view`]: the typed, validated view of a template (reads the status annotation);
//! - [`workload`]: the workload a pod belongs to, and the proxy's identity env;
//! - [`policy`]: inject or not;
//! - [`role`]: sidecar or gateway (Istio's `inject.istio.io/templates`);
//! - [`identity`]: the proxy's effective uid/gid (a user's `istio-proxy` override);
//! - [`mtls`]: the workload identity's volumes, mounts, proxy flags and label (data);
//! - [`containers`]: our two containers, and merging a user's override into one;
//! - [`rewrite`]: adding an injection to a template, or removing a recorded one;
//! - [`patch`]: from (input, desired) templates to the RFC 6902 patch.

pub mod containers;
pub mod error;
pub mod identity;
pub mod mtls;
pub mod overrides;
pub mod patch;
pub mod policy;
pub mod request;
pub mod rewrite;
pub mod role;
pub mod status;
pub mod view;
pub mod workload;

use serde_json::Value;

use crate::config::InjectConfig;

pub use error::InjectError;
pub use request::{InjectRequest, NamespacePolicy, Outcome, SkipReason, Workload};

/// Decide and, when injecting, return the patch. See the module docs.
pub fn inject(req: &InjectRequest<'_>, cfg: &InjectConfig) -> Result<Outcome, InjectError> {
    inject_with_warnings(req, cfg).map(|(outcome, _)| outcome)
}

/// [`inject`], and what the pod asked for that the injection does not do, in words
/// (empty when skipped): the webhook returns them as admission warnings, kube-inject
/// prints them; they are recorded in the status annotation too.
pub fn inject_with_warnings(
    req: &InjectRequest<'_>,
    cfg: &InjectConfig,
) -> Result<(Outcome, Vec<String>), InjectError> {
    let (desired, warnings) = desired_injected(req, cfg)?;
    let outcome = match desired {
        Desired::Skip(r) => Outcome::Skipped(r),
        Desired::Unchanged => Outcome::Unchanged,
        Desired::Template(t) => Outcome::Patched(patch::diff(req.template, &t)),
    };
    Ok((outcome, warnings))
}

/// The template [`inject`]'s patch produces, or `None` when it would not patch. For tests
/// and tools that want the result rather than the patch.
pub fn desired_template(
    req: &InjectRequest<'_>,
    cfg: &InjectConfig,
) -> Result<Option<Value>, InjectError> {
    Ok(match desired_injected(req, cfg)?.0 {
        Desired::Template(t) => Some(t),
        Desired::Skip(_) | Desired::Unchanged => None,
    })
}

/// Remove exactly what the status annotation records (and restore a user's overridden
/// container). `Skipped(NotInjected)` when there is no status annotation.
pub fn uninject(template: &Value) -> Result<Outcome, InjectError> {
    let view = view::PodView::read(template)?;
    if view.status.is_none() {
        return Ok(Outcome::Skipped(SkipReason::NotInjected));
    }
    let removed = rewrite::remove_injection(template, &view, true)?;
    Ok(Outcome::Patched(patch::diff(template, &removed)))
}

/// The desired template, or why there is none.
pub(crate) enum Desired {
    Skip(SkipReason),
    Unchanged,
    Template(Value),
}

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What the effective ProxyConfig asks of the pod's lifecycle that cannot be done as
/// asked: a drain that outlasts the grace period.
fn lifecycle_warnings(reading: &overrides::Reading, view: &view::PodView) -> Vec<String> {
    let pc = &reading.proxy_config;
    let from = overrides::source;
    let mut out = Vec::new();
    if let Some(d) = pc.drain_duration() {
        let grace = view
            .termination_grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        if u64::try_from(grace).map_or(true, |g| d.as_secs_f64() >= g as f64) {
            out.push(format!(
                "{}: terminationDrainDuration {} is not shorter than the pod's \
                 terminationGracePeriodSeconds ({grace}): the kubelet kills the proxy before \
                 its drain starts",
                from(reading.annotated.termination_drain_duration.is_some()),
                pc.termination_drain_duration.as_deref().unwrap_or_default()
            ));
        }
    }
    out
}

/// The injected template (used by [`inject`], and by tests that check the patch), and
/// the warnings about it.
pub(crate) fn desired_injected(
    req: &InjectRequest<'_>,
    cfg: &InjectConfig,
) -> Result<(Desired, Vec<String>), InjectError> {
    let view = view::PodView::read(req.template)?;
    if let Some(reason) = policy::skip_reason(req, &view)? {
        return Ok((Desired::Skip(reason), Vec::new()));
    }
    let role = role::select(&view)?;
    if role == role::Role::Gateway && cfg.control_plane_address.is_empty() {
        // A gateway's listeners and routes come from mesh-control (mesh-proxy refuses
        // --role gateway without --control-plane): injecting one that cannot start
        // would only move the error to the pod's log.
        return Err(InjectError::Gateway {
            reason: "the injection config has no controlPlaneAddress, and a gateway's \
                     listeners come from mesh-control"
                .into(),
        });
    }
    let reading = overrides::Overrides::read_all(&view.annotations, cfg)?;
    let mut warnings = reading.warnings.clone();
    warnings.extend(lifecycle_warnings(&reading, &view));
    let mut ov = reading.overrides;
    let derived;
    let wl = match req.workload {
        Some(w) => w,
        None => {
            derived = workload::derive(&view);
            &derived
        }
    };
    let identity = workload::proxy_env(wl, &view.labels);
    let config_hash = cfg.hash();
    let hash = status::injection_hash(
        &config_hash,
        req.native_sidecars,
        role,
        &view.annotations,
        &identity,
        &warnings,
    );
    let base = match &view.status {
        // Same hash, and everything the status records is still there (someone may have
        // deleted the proxy by hand): nothing to do.
        Some(st)
            if st.config_hash.as_deref() == Some(hash.as_str())
                && rewrite::recorded_containers_present(req.template, st) =>
        {
            return Ok((Desired::Unchanged, warnings));
        }
        Some(_) => rewrite::remove_injection(req.template, &view, false)?,
        None => req.template.clone(),
    };
    // From the template without a previous injection: its `istio-proxy`, if any, is the
    // user's own override as they wrote it.
    (ov.proxy_uid, ov.proxy_gid) = identity::effective_proxy_ids(&base, cfg)?;
    let mut built = containers::Built::cached(cfg, &config_hash, &ov, req.native_sidecars, role)?;
    built.proxy = containers::with_identity_env(built.proxy, &identity);
    built.proxy = containers::with_proxy_metadata(built.proxy, &ov.proxy_metadata);
    let template = rewrite::apply_injection(
        req.template,
        base,
        &built,
        cfg,
        rewrite::Stamp {
            hash,
            warnings: warnings.clone(),
        },
        req.native_sidecars,
        role,
    )?;
    Ok((Desired::Template(template), warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(pod: &Value, native: bool, cfg: &InjectConfig) -> (Outcome, Vec<String>) {
        let req = InjectRequest {
            template: pod,
            namespace: Some("default"),
            namespace_policy: NamespacePolicy::Selected,
            native_sidecars: native,
            workload: None,
        };
        inject_with_warnings(&req, cfg).unwrap()
    }

    fn pod(config: &str, extra_spec: Value) -> Value {
        let mut spec = json!({"containers": [{"name": "app", "image": "app"}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
            s.extend(e.clone());
        }
        json!({"metadata": {"name": "p", "annotations": {"proxy.istio.io/config": config}},
               "spec": spec})
    }

    #[test]
    fn hold_puts_a_regular_sidecar_first_with_a_wait_hook() {
        let cfg = InjectConfig::default();
        let with = |config: &str| {
            let mut p = pod(config, json!({}));
            p["spec"]["containers"] = json!([{"name": "app", "image": "app"}]);
            p
        };
        let names = |t: &Value| -> Vec<String> {
            t["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let desired = |p: &Value, native: bool| {
            let req = InjectRequest {
                template: p,
                namespace: Some("default"),
                namespace_policy: NamespacePolicy::Selected,
                native_sidecars: native,
                workload: None,
            };
            desired_template(&req, &cfg).unwrap().unwrap()
        };
        let hold = with("holdApplicationUntilProxyStarts: true");
        let (_, w) = run(&hold, false, &cfg);
        assert!(w.is_empty(), "{w:?}");
        let t = desired(&hold, false);
        assert_eq!(names(&t), ["istio-proxy", "app"]);
        assert_eq!(
            t["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"],
            json!(["mesh-proxy", "wait"])
        );
        // Native sidecars hold with their startup probe; without the field, no hook.
        let native = desired(&hold, true);
        assert!(
            native["spec"]["initContainers"][1]
                .get("lifecycle")
                .is_none()
        );
        let off = desired(&with("holdApplicationUntilProxyStarts: false"), false);
        assert_eq!(names(&off), ["app", "istio-proxy"]);
        assert!(off["spec"]["containers"][1].get("lifecycle").is_none());
    }

    #[test]
    fn a_drain_that_outlasts_the_grace_period_is_warned_about() {
        let cfg = InjectConfig::default();
        let warned = |drain: &str, spec: Value| {
            !run(
                &pod(&format!("terminationDrainDuration: {drain}"), spec),
                false,
                &cfg,
            )
            .1
            .is_empty()
        };
        assert!(!warned("29.9s", json!({})), "under the default 30 s");
        assert!(warned("30s", json!({})));
        assert!(warned("1m", json!({"terminationGracePeriodSeconds": 45})));
        assert!(!warned("1m", json!({"terminationGracePeriodSeconds": 90})));
        assert!(warned("1s", json!({"terminationGracePeriodSeconds": 0})));
    }

    #[test]
    fn warnings_are_recorded_and_hashed_and_skips_have_none() {
        let cfg = InjectConfig::default();
        let p = pod("{terminationDrainDuration: 45s, tracing: {}}", json!({}));
        let req = InjectRequest {
            template: &p,
            namespace: Some("default"),
            namespace_policy: NamespacePolicy::Selected,
            native_sidecars: false,
            workload: None,
        };
        let injected = desired_template(&req, &cfg).unwrap().unwrap();
        let status = view::PodView::read(&injected).unwrap().status.unwrap();
        assert_eq!(status.warnings.len(), 2, "{:?}", status.warnings);
        // Injected again: unchanged, the same warnings.
        let (outcome, w) = run(&injected, false, &cfg);
        assert_eq!(outcome, Outcome::Unchanged);
        assert_eq!(w, status.warnings);
        // Only the grace period changed: the warning, the hash and so the pod change.
        let drain = pod("terminationDrainDuration: 40s", json!({}));
        let req = InjectRequest {
            template: &drain,
            ..req
        };
        let mut injected = desired_template(&req, &cfg).unwrap().unwrap();
        injected["spec"]["terminationGracePeriodSeconds"] = json!(60);
        let (outcome, w) = run(&injected, false, &cfg);
        assert!(
            matches!(outcome, Outcome::Patched(_)) && w.is_empty(),
            "{outcome:?} {w:?}"
        );
        // A skipped pod's annotation is not even read.
        let mut skipped = pod("concurrency: 1000", json!({"hostNetwork": true}));
        assert!(matches!(run(&skipped, false, &cfg), (Outcome::Skipped(_), w) if w.is_empty()));
        skipped["spec"]["hostNetwork"] = json!(false);
        let req = InjectRequest {
            template: &skipped,
            ..req
        };
        assert!(inject_with_warnings(&req, &cfg).is_err());
    }
}
