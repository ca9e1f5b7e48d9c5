//! The template rewrite: add our containers, volumes, label and annotations to a template,
//! or remove exactly what a status annotation records (putting a user's overridden
//! container back). A gateway ([`Role::Gateway`], see [`super::role`]) gets only the
//! proxy, no `istio-init`, and no `security.istio.io/tlsMode` label.

use mesh_common::{PROXY_METRICS_PATH, annotations as ann, containers, labels};
use serde_json::{Map, Value, json};

use super::containers::{Built, merge_override};
use super::error::InjectError;
use super::mtls;
use super::role::Role;
use super::status::{OverrideRecord, Status};
use super::view::PodView;
use crate::config::InjectConfig;

fn pod_err(field: &str, reason: &str) -> InjectError {
    InjectError::InvalidPod {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

fn name_of(c: &Value) -> Option<&str> {
    c.get("name").and_then(Value::as_str)
}

/// Move a list out of `spec` (leaving `null` in its place, so re-inserting keeps the key's
/// position); a missing or `null` list is empty.
fn take_array(spec: &mut Map<String, Value>, key: &str) -> Result<Vec<Value>, InjectError> {
    let Some(slot) = spec.get_mut(key) else {
        return Ok(Vec::new());
    };
    match slot.take() {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => Ok(a),
        other => {
            *slot = other;
            Err(pod_err(&format!("spec.{key}"), "must be a list"))
        }
    }
}

/// Store `items` under `key`; an empty list removes the key when `drop_empty`.
fn put_array(spec: &mut Map<String, Value>, key: &str, items: Vec<Value>, drop_empty: bool) {
    if items.is_empty() && drop_empty {
        spec.shift_remove(key);
    } else {
        spec.insert(key.to_string(), Value::Array(items));
    }
}

fn spec_mut(t: &mut Value) -> Result<&mut Map<String, Value>, InjectError> {
    t.get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| pod_err("spec", "must be a mapping"))
}

/// The `metadata` map `key` (`annotations` or `labels`), created when missing (metadata
/// too).
fn meta_map_mut<'a>(
    t: &'a mut Value,
    key: &str,
) -> Result<&'a mut Map<String, Value>, InjectError> {
    let root = t
        .as_object_mut()
        .ok_or_else(|| pod_err("template", "must be a mapping"))?;
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if meta.is_null() {
        *meta = Value::Object(Map::new());
    }
    let meta = meta
        .as_object_mut()
        .ok_or_else(|| pod_err("metadata", "must be a mapping"))?;
    let map = meta.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if map.is_null() {
        *map = Value::Object(Map::new());
    }
    map.as_object_mut()
        .ok_or_else(|| pod_err(&format!("metadata.{key}"), "must be a mapping"))
}

/// The labels a recorded injection added and their values. Ours are in the status; an
/// Istio status records none, but Istio's injection template always writes
/// `security.istio.io/tlsMode` (keeping a value already there), so its `istio` is taken
/// for Istio's too: a pod without a sidecar must not tell peers it takes mTLS.
fn recorded_labels(status: &Status) -> Vec<(&str, &'static str)> {
    if status.config_hash.is_none() {
        return vec![(labels::TLS_MODE, mesh_common::identity::TLS_MODE_ISTIO)];
    }
    status
        .labels
        .iter()
        .filter_map(|k| Some((k.as_str(), mtls::label_value(k)?)))
        .collect()
}

/// Whether every container the status records is in the template (in either list).
pub fn recorded_containers_present(template: &Value, status: &Status) -> bool {
    let names: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| template.get("spec")?.get(*k)?.as_array())
        .flatten()
        .filter_map(name_of)
        .collect();
    status
        .containers
        .iter()
        .chain(&status.init_containers)
        .all(|n| names.contains(&n.as_str()))
}

/// The template without what the status annotation records; a recorded user override is
/// put back where it was. With `drop_empty`, lists and the annotation map left empty are
/// removed (uninject); without, they stay in place so re-injection keeps the key order.
pub fn remove_injection(
    template: &Value,
    view: &PodView,
    drop_empty: bool,
) -> Result<Value, InjectError> {
    let Some(status) = &view.status else {
        return Ok(template.clone());
    };
    let mut t = template.clone();
    let spec = spec_mut(&mut t)?;
    let ours: Vec<&str> = status
        .containers
        .iter()
        .chain(&status.init_containers)
        .map(String::as_str)
        .collect();
    let keep = |c: &Value| !name_of(c).is_some_and(|n| ours.contains(&n));

    let had_init = spec.contains_key("initContainers");
    let mut init: Vec<Value> = take_array(spec, "initContainers")?
        .into_iter()
        .filter(keep)
        .collect();
    let mut apps: Vec<Value> = take_array(spec, "containers")?
        .into_iter()
        .filter(keep)
        .collect();
    let mut restore: Vec<&OverrideRecord> = status.overrides.iter().collect();
    restore.sort_by_key(|r| r.index);
    // Inserting in increasing original index restores each list exactly.
    for r in restore {
        let list = if r.field == "initContainers" {
            &mut init
        } else {
            &mut apps
        };
        let at = r.index.min(list.len());
        list.insert(at, r.container.clone());
    }
    if had_init {
        put_array(spec, "initContainers", init, drop_empty);
    }
    spec.insert("containers".into(), Value::Array(apps));

    for (key, names) in [
        ("volumes", &status.volumes),
        ("imagePullSecrets", &status.image_pull_secrets),
    ] {
        if names.is_empty() || !spec.contains_key(key) {
            continue;
        }
        let kept: Vec<Value> = take_array(spec, key)?
            .into_iter()
            .filter(|v| !name_of(v).is_some_and(|n| names.iter().any(|x| x == n)))
            .collect();
        put_array(spec, key, kept, drop_empty);
    }

    if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
        let empty = match meta.get_mut("annotations").and_then(Value::as_object_mut) {
            Some(a) => {
                a.shift_remove(ann::STATUS);
                for k in &status.annotations {
                    a.shift_remove(k.as_str());
                }
                a.is_empty() && drop_empty
            }
            None => false,
        };
        if empty {
            meta.shift_remove("annotations");
        }
        // A recorded label goes only while it still says what the injection wrote: a
        // value the user set since is theirs.
        let empty = match meta.get_mut("labels").and_then(Value::as_object_mut) {
            Some(l) => {
                for (k, v) in recorded_labels(status) {
                    if l.get(k).and_then(Value::as_str) == Some(v) {
                        l.shift_remove(k);
                    }
                }
                l.is_empty() && drop_empty
            }
            None => false,
        };
        if empty {
            meta.shift_remove("labels");
        }
    }
    Ok(t)
}

/// Add the identity's volumes to `spec.volumes`; a volume the pod already has under one of
/// those names is the user's and wins (as a user's `istio-proxy` overrides ours): it is
/// kept as written and not recorded. Returns the names added.
fn add_identity_volumes(spec: &mut Map<String, Value>) -> Result<Vec<String>, InjectError> {
    let present = spec.contains_key("volumes");
    let mut volumes = take_array(spec, "volumes")?;
    let mut added = Vec::new();
    for v in mtls::volumes() {
        let name = name_of(&v).unwrap_or_default().to_string();
        if volumes.iter().any(|u| name_of(u) == Some(name.as_str())) {
            continue;
        }
        volumes.push(v);
        added.push(name);
    }
    if present || !volumes.is_empty() {
        spec.insert("volumes".into(), Value::Array(volumes));
    }
    Ok(added)
}

/// Istio's `image: auto` in a user's container of ours: "the injector's image". The
/// user's container without it, so ours stays (the override record keeps it as written).
///
/// Its `imagePullPolicy` goes too (unlike Istio, which keeps it): the API server defaults
/// `Always` for the tagless name `auto` before the webhook sees the pod, so the webhook
/// cannot tell it from one the user wrote, and kube-inject, reading the manifest, never
/// sees it; honouring it would make the two disagree, and pull our image at every start
/// (which fails on a node without a registry). The pull policy of our image is the
/// config's `imagePullPolicy`.
fn without_auto_image(user: &Value) -> Value {
    let mut u = user.clone();
    if u.get("image").and_then(Value::as_str) == Some(AUTO_IMAGE)
        && let Some(m) = u.as_object_mut()
    {
        m.shift_remove("image");
        m.shift_remove("imagePullPolicy");
    }
    u
}

/// The image name by which a user's `istio-proxy`/`istio-init` asks for ours (Istio's).
pub const AUTO_IMAGE: &str = "auto";

/// What the status annotation records besides what was added: the injection's hash and
/// its warnings (see [`Status`]).
#[derive(Debug, Clone, Default)]
pub struct Stamp {
    pub hash: String,
    pub warnings: Vec<String>,
}

/// Add our containers and annotations (and, with a workload identity, its volumes and
/// label) to a template that carries no injection. A gateway gets the proxy only.
pub fn apply_injection(
    original: &Value,
    base: Value,
    built: &Built,
    cfg: &InjectConfig,
    stamp: Stamp,
    native: bool,
    role: Role,
) -> Result<Value, InjectError> {
    let gateway = role == Role::Gateway;
    let mut t = base;
    let spec = spec_mut(&mut t)?;
    let had_init = spec.contains_key("initContainers");
    let mut init = take_array(spec, "initContainers")?;
    let mut apps = take_array(spec, "containers")?;

    // A user's container named like ours is an override: take it out, merge it into ours.
    let mut overrides: Vec<OverrideRecord> = Vec::new();
    let mut user_init: Option<Value> = None;
    let mut user_proxy: Option<Value> = None;
    for (field, list) in [("initContainers", &mut init), ("containers", &mut apps)] {
        let mut i = 0;
        let mut removed = 0;
        while i < list.len() {
            let name = name_of(&list[i]).unwrap_or_default().to_string();
            if gateway && field == "initContainers" && name == containers::PROXY {
                return Err(pod_err(
                    &format!("spec.{field}[{i}]"),
                    "a gateway's istio-proxy must be in spec.containers: the gateway \
                     template adds no init containers and no native sidecar",
                ));
            }
            let slot = if name == containers::INIT && !gateway {
                // A gateway has no istio-init: a container of that name is the user's own.
                &mut user_init
            } else if name == containers::PROXY {
                &mut user_proxy
            } else {
                i += 1;
                continue;
            };
            if slot.is_some() {
                return Err(pod_err(
                    &format!("spec.{field}"),
                    &format!("more than one container named {name}"),
                ));
            }
            let c = list.remove(i);
            overrides.push(OverrideRecord {
                field: field.to_string(),
                // Index in the list as the user wrote it, so restoring in index order
                // puts everything back where it was.
                index: i + removed,
                container: c.clone(),
            });
            removed += 1;
            *slot = Some(c);
        }
    }
    // A gateway may have no other container (the usual case): then no default container.
    let first_app = apps.first().and_then(name_of).map(str::to_string);
    if first_app.is_none() && !gateway {
        return Err(pod_err(
            "spec.containers",
            "no application container (only the proxy's own)",
        ));
    }

    let init_c = match &user_init {
        Some(u) => merge_override(&built.init, &without_auto_image(u)),
        None => built.init.clone(),
    };
    let proxy_c = match &user_proxy {
        Some(u) => merge_override(&built.proxy, &without_auto_image(u)),
        None => built.proxy.clone(),
    };
    let status = if gateway {
        apps.push(proxy_c);
        Status {
            containers: vec![containers::PROXY.into()],
            ..Default::default()
        }
    } else if native {
        init.splice(0..0, [init_c, proxy_c]);
        Status {
            init_containers: vec![containers::INIT.into(), containers::PROXY.into()],
            ..Default::default()
        }
    } else {
        init.push(init_c);
        if built.proxy_first {
            // First, so its postStart hook (`mesh-proxy wait`) holds the app containers.
            apps.insert(0, proxy_c);
        } else {
            apps.push(proxy_c);
        }
        Status {
            init_containers: vec![containers::INIT.into()],
            containers: vec![containers::PROXY.into()],
            ..Default::default()
        }
    };
    // A gateway adds no init container: the list stays as the pod had it (or absent).
    if !gateway || had_init {
        spec.insert("initContainers".into(), Value::Array(init));
    }
    spec.insert("containers".into(), Value::Array(apps));
    let volumes = if cfg.workload_identity() {
        add_identity_volumes(spec)?
    } else {
        Vec::new()
    };
    // Lists a previous injection's removal emptied (say, Istio's volumes, or a sidecar's
    // istio-init on a pod that is now a gateway) go away.
    for key in ["volumes", "imagePullSecrets", "initContainers"] {
        let emptied = spec
            .get(key)
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
            && original
                .pointer(&format!("/spec/{key}"))
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
        if emptied {
            spec.shift_remove(key);
        }
    }

    // The annotations map first: created before a labels map we may create, the two keep
    // one order whether this is a first injection or a re-injection of one without labels.
    meta_map_mut(&mut t, "annotations")?;
    // Labels: only where the pod has no value of its own (Istio's template keeps one).
    let mut added_labels: Vec<String> = Vec::new();
    // Istio's gateway template writes no tlsMode label: nothing originates mTLS to a gateway.
    if cfg.workload_identity() && !gateway {
        let l = meta_map_mut(&mut t, "labels")?;
        for (k, v) in mtls::LABELS {
            if !l.contains_key(k) {
                l.insert(k.to_string(), Value::String(v.to_string()));
                added_labels.push(k.to_string());
            }
        }
    }
    // A labels map a previous injection's removal emptied goes away.
    let labels_emptied = t
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
        && original
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .is_some_and(|l| !l.is_empty());
    if labels_emptied && let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.shift_remove("labels");
    }

    let a = meta_map_mut(&mut t, "annotations")?;
    let mut added: Vec<String> = Vec::new();
    let mut set = |a: &mut Map<String, Value>, k: &str, v: String| {
        a.insert(k.to_string(), Value::String(v));
        added.push(k.to_string());
    };
    if let Some(first_app) = first_app
        && !a.contains_key(ann::DEFAULT_CONTAINER)
    {
        set(a, ann::DEFAULT_CONTAINER, first_app);
    }
    let prom = [
        ann::PROMETHEUS_SCRAPE,
        ann::PROMETHEUS_PORT,
        ann::PROMETHEUS_PATH,
    ];
    if cfg.prometheus_annotations && !prom.iter().any(|k| a.contains_key(*k)) {
        set(a, ann::PROMETHEUS_SCRAPE, "true".into());
        set(a, ann::PROMETHEUS_PORT, cfg.metrics_port.to_string());
        set(a, ann::PROMETHEUS_PATH, PROXY_METRICS_PATH.into());
    }
    let status = Status {
        volumes,
        annotations: added,
        labels: added_labels,
        config_hash: Some(stamp.hash),
        overrides,
        warnings: stamp.warnings,
        ..status
    };
    a.insert(ann::STATUS.into(), json!(status.to_json()));
    Ok(t)
}
