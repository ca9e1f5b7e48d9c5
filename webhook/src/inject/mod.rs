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
//! [`desired_template`] (the template the patch produces, for tests and tools),
//! [`SkipReason::NotInjected`] (uninject of a pod without status), and the submodules
//! are public for reuse.
//!
//! Submodules, in dependency order (each uses only those above it; this module uses them
//! all and none uses it):
//! - [`error`], [`request`]: the types of the API above ([`InjectError`], [`InjectRequest`],
//!   [`Outcome`], ...);
//! - [`overrides`]: the honoured annotations, validated and merged with the config;
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
    let desired = match desired_injected(req, cfg)? {
        Desired::Skip(r) => return Ok(Outcome::Skipped(r)),
        Desired::Unchanged => return Ok(Outcome::Unchanged),
        Desired::Template(t) => t,
    };
    Ok(Outcome::Patched(patch::diff(req.template, &desired)))
}

/// The template [`inject`]'s patch produces, or `None` when it would not patch. For tests
/// and tools that want the result rather than the patch.
pub fn desired_template(
    req: &InjectRequest<'_>,
    cfg: &InjectConfig,
) -> Result<Option<Value>, InjectError> {
    Ok(match desired_injected(req, cfg)? {
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

/// The injected template (used by [`inject`], and by tests that check the patch).
pub(crate) fn desired_injected(
    req: &InjectRequest<'_>,
    cfg: &InjectConfig,
) -> Result<Desired, InjectError> {
    let view = view::PodView::read(req.template)?;
    if let Some(reason) = policy::skip_reason(req, &view)? {
        return Ok(Desired::Skip(reason));
    }
    let role = role::select(&view)?;
    let mut ov = overrides::Overrides::read(&view.annotations, cfg)?;
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
    );
    let base = match &view.status {
        // Same hash, and everything the status records is still there (someone may have
        // deleted the proxy by hand): nothing to do.
        Some(st)
            if st.config_hash.as_deref() == Some(hash.as_str())
                && rewrite::recorded_containers_present(req.template, st) =>
        {
            return Ok(Desired::Unchanged);
        }
        Some(_) => rewrite::remove_injection(req.template, &view, false)?,
        None => req.template.clone(),
    };
    // From the template without a previous injection: its `istio-proxy`, if any, is the
    // user's own override as they wrote it.
    (ov.proxy_uid, ov.proxy_gid) = identity::effective_proxy_ids(&base, cfg)?;
    let mut built = containers::Built::cached(cfg, &config_hash, &ov, req.native_sidecars, role)?;
    built.proxy = containers::with_identity_env(built.proxy, &identity);
    Ok(Desired::Template(rewrite::apply_injection(
        req.template,
        base,
        &built,
        cfg,
        hash,
        req.native_sidecars,
        role,
    )?))
}
