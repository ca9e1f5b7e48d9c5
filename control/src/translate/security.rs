//! PeerAuthentication: what each workload's proxy accepts inbound, and so (auto mTLS)
//! whether clients originate mTLS to it.
//!
//! Resolution, as Istio's `PeerAuthentication` docs and `GetPoliciesForWorkload` say, for
//! a pod in namespace `N`: the mesh-wide policy (no `selector`, in the root namespace),
//! then the namespace-wide one (no `selector`, in `N`), then the workload's (a `selector`
//! whose `matchLabels` the pod has, in `N`); where several could apply at one level, the
//! oldest wins (creation time, then name) and the others are reported. A `mode` of
//! `UNSET` (or no `mtls` at all) inherits the level above; the mesh's default is
//! `PERMISSIVE`. `portLevelMtls` (workload policies only) sets the mode of one workload
//! port; an `UNSET` entry inherits the workload's mode.
//!
//! Refused whole, with a diagnostic, as Istio's validation refuses them: an unknown mode,
//! `portLevelMtls` without a `selector`, a port number outside 1–65535. A selector with
//! empty `matchLabels` is taken as no selector (Istio does the same).
//!
//! Auto mTLS (Istio's `enableAutoMtls`, on by default): a client originates mTLS to an
//! endpoint whose pod carries `security.istio.io/tlsMode: istio` unless that pod's mode
//! for the endpoint's port is `DISABLE`; a DestinationRule's `tls.mode` overrides it
//! (`policy`).

use std::collections::{BTreeMap, HashMap};

use mesh_config::{InboundTls, MtlsMode};
use serde_json::Value;

use super::Diagnostic;
use super::hosts::labels_match;
use crate::istio::peer_authentication::{self, MutualTls, PeerAuthentication};
use crate::istio::{Labels, Meta};

/// One PeerAuthentication, checked.
#[derive(Debug, Clone)]
pub struct PreparedPa {
    pub meta: Meta,
    /// `None`: namespace-wide (mesh-wide in the root namespace).
    pub selector: Option<Labels>,
    /// `None`: `UNSET`, inherit.
    pub mode: Option<MtlsMode>,
    pub ports: BTreeMap<u16, Option<MtlsMode>>,
}

fn diag(meta: &Meta, field: String, message: String) -> Diagnostic {
    Diagnostic {
        kind: peer_authentication::KIND.into(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        field,
        message,
    }
}

/// Istio's `PeerAuthentication.MutualTLS.Mode`, by name or number.
fn mode(m: Option<&MutualTls>) -> Result<Option<MtlsMode>, String> {
    let Some(v) = m.and_then(|m| m.mode.as_ref()) else {
        return Ok(None);
    };
    match v {
        Value::Null => Ok(None),
        Value::String(s) => match s.as_str() {
            "UNSET" => Ok(None),
            "DISABLE" => Ok(Some(MtlsMode::Disable)),
            "PERMISSIVE" => Ok(Some(MtlsMode::Permissive)),
            "STRICT" => Ok(Some(MtlsMode::Strict)),
            other => Err(format!(
                "unknown mode {other:?} (UNSET, DISABLE, PERMISSIVE or STRICT)"
            )),
        },
        Value::Number(n) => match n.as_u64() {
            Some(0) => Ok(None),
            Some(1) => Ok(Some(MtlsMode::Disable)),
            Some(2) => Ok(Some(MtlsMode::Permissive)),
            Some(3) => Ok(Some(MtlsMode::Strict)),
            _ => Err(format!("unknown mode {n} (0-3)")),
        },
        other => Err(format!("mode must be a string, not {other}")),
    }
}

impl PreparedPa {
    pub fn new(pa: PeerAuthentication, diags: &mut Vec<Diagnostic>) -> Option<PreparedPa> {
        let PeerAuthentication { meta, spec } = pa;
        let skip = |field: String, why: String, diags: &mut Vec<Diagnostic>| {
            diags.push(diag(&meta, field, format!("{why}; object skipped")));
        };
        let selector = spec
            .selector
            .map(|s| s.match_labels)
            .filter(|l| !l.is_empty());
        let top = match mode(spec.mtls.as_ref()) {
            Ok(m) => m,
            Err(e) => {
                skip("spec.mtls.mode".into(), e, diags);
                return None;
            }
        };
        if selector.is_none() && !spec.port_level_mtls.is_empty() {
            skip(
                "spec.portLevelMtls".into(),
                "portLevelMtls needs a selector (a namespace- or mesh-wide policy cannot have one)"
                    .into(),
                diags,
            );
            return None;
        }
        let mut ports = BTreeMap::new();
        for (k, v) in &spec.port_level_mtls {
            let field = format!("spec.portLevelMtls[{k}]");
            let port = match k.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    skip(field, format!("{k:?} is not a port number 1-65535"), diags);
                    return None;
                }
            };
            match mode(Some(v)) {
                Ok(m) => {
                    ports.insert(port, m);
                }
                Err(e) => {
                    skip(format!("{field}.mode"), e, diags);
                    return None;
                }
            }
        }
        Some(PreparedPa {
            meta,
            selector,
            mode: top,
            ports,
        })
    }
}

/// The policies of one namespace, oldest first.
#[derive(Debug, Default)]
struct NsPolicies {
    wide: Vec<PreparedPa>,
    workload: Vec<PreparedPa>,
}

/// Every PeerAuthentication, by namespace.
#[derive(Debug, Default)]
pub struct PaIndex {
    by_ns: HashMap<String, NsPolicies>,
    root: String,
}

impl PaIndex {
    pub fn new(objects: &[Value], root: &str, diags: &mut Vec<Diagnostic>) -> PaIndex {
        let mut by_ns: HashMap<String, NsPolicies> = HashMap::new();
        for v in objects {
            let pa = match PeerAuthentication::from_json(v) {
                Ok(pa) => pa,
                Err(e) => {
                    diags.push(e.into());
                    continue;
                }
            };
            let Some(p) = PreparedPa::new(pa, diags) else {
                continue;
            };
            let ns = by_ns.entry(p.meta.namespace.clone()).or_default();
            if p.selector.is_some() {
                ns.workload.push(p);
            } else {
                ns.wide.push(p);
            }
        }
        for (namespace, ns) in &mut by_ns {
            ns.wide
                .sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
            ns.workload
                .sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
            if let Some((first, rest)) = ns.wide.split_first() {
                let scope = if *namespace == root {
                    "mesh-wide"
                } else {
                    "namespace-wide"
                };
                for p in rest {
                    diags.push(diag(
                        &p.meta,
                        "spec.selector".into(),
                        format!(
                            "another {scope} PeerAuthentication ({}) is older; this one is ignored",
                            first.meta.name
                        ),
                    ));
                }
            }
        }
        PaIndex {
            by_ns,
            root: root.to_owned(),
        }
    }

    /// What a pod in `namespace` with `labels` accepts.
    pub fn inbound(&self, namespace: &str, labels: &BTreeMap<String, String>) -> InboundTls {
        let wide = |ns: &str| self.by_ns.get(ns).and_then(|p| p.wide.first());
        let mesh = wide(&self.root).and_then(|p| p.mode);
        let mut mode = mesh.unwrap_or_default();
        if namespace != self.root
            && let Some(m) = wide(namespace).and_then(|p| p.mode)
        {
            mode = m;
        }
        let workload = self.by_ns.get(namespace).and_then(|p| {
            p.workload
                .iter()
                .find(|w| w.selector.as_ref().is_some_and(|s| labels_match(s, labels)))
        });
        let Some(w) = workload else {
            return InboundTls {
                mode,
                ports: BTreeMap::new(),
            };
        };
        if let Some(m) = w.mode {
            mode = m;
        }
        InboundTls {
            mode,
            ports: w
                .ports
                .iter()
                .map(|(p, m)| (*p, m.unwrap_or(mode)))
                .filter(|(_, m)| *m != mode)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn pa(ns: &str, name: &str, ts: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": ns, "creationTimestamp": ts},
               "spec": spec})
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn levels_inherit_and_the_oldest_wins() {
        let t1 = "2024-01-01T00:00:00Z";
        let t2 = "2024-02-01T00:00:00Z";
        let mut diags = Vec::new();
        let idx = PaIndex::new(
            &[
                pa(
                    "istio-system",
                    "mesh",
                    t1,
                    json!({"mtls": {"mode": "STRICT"}}),
                ),
                pa(
                    "shop",
                    "ns-old",
                    t1,
                    json!({"mtls": {"mode": "PERMISSIVE"}}),
                ),
                pa("shop", "ns-new", t2, json!({"mtls": {"mode": "DISABLE"}})),
                pa(
                    "shop",
                    "rev",
                    t2,
                    json!({
                        "selector": {"matchLabels": {"app": "reviews"}},
                        "portLevelMtls": {"9080": {"mode": "STRICT"}, "9090": {"mode": "UNSET"}}
                    }),
                ),
                pa(
                    "shop",
                    "rev-newer",
                    "2024-03-01T00:00:00Z",
                    json!({
                        "selector": {"matchLabels": {"app": "reviews"}},
                        "mtls": {"mode": "DISABLE"}
                    }),
                ),
                pa("unset", "u", t1, json!({"mtls": {}})),
            ],
            "istio-system",
            &mut diags,
        );
        // The mesh says STRICT; a namespace without its own policy (or an UNSET one)
        // inherits it.
        assert_eq!(idx.inbound("other", &labels(&[])).mode, MtlsMode::Strict);
        assert_eq!(idx.inbound("unset", &labels(&[])).mode, MtlsMode::Strict);
        // The older namespace policy wins and is reported.
        assert_eq!(idx.inbound("shop", &labels(&[])).mode, MtlsMode::Permissive);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].name, "ns-new");
        // The oldest workload policy: UNSET inherits the namespace's PERMISSIVE, one
        // port STRICT, the UNSET port inherits (and so is not listed).
        let rev = idx.inbound("shop", &labels(&[("app", "reviews")]));
        assert_eq!(rev.mode, MtlsMode::Permissive);
        assert_eq!(rev.ports, BTreeMap::from([(9080, MtlsMode::Strict)]));
        assert_eq!(rev.mode_for(9090), MtlsMode::Permissive);
        // No policy anywhere: PERMISSIVE.
        let none = PaIndex::new(&[], "istio-system", &mut Vec::new());
        assert_eq!(none.inbound("a", &labels(&[])), InboundTls::default());
    }

    #[test]
    fn refused_objects_are_reported_and_skipped() {
        let t = "2024-01-01T00:00:00Z";
        let mut diags = Vec::new();
        let idx = PaIndex::new(
            &[
                pa("a", "bad-mode", t, json!({"mtls": {"mode": "STRICTER"}})),
                pa(
                    "b",
                    "ports-no-selector",
                    t,
                    json!({"portLevelMtls": {"80": {"mode": "DISABLE"}}}),
                ),
                pa(
                    "c",
                    "bad-port",
                    t,
                    json!({
                        "selector": {"matchLabels": {"app": "x"}},
                        "portLevelMtls": {"0": {"mode": "DISABLE"}}
                    }),
                ),
                pa("d", "numeric", t, json!({"mtls": {"mode": 3}})),
                json!({"metadata": {"name": "bad-type", "namespace": "e"}, "spec": {"mtls": "STRICT"}}),
            ],
            "istio-system",
            &mut diags,
        );
        let fields: Vec<(&str, &str)> = diags
            .iter()
            .map(|d| (d.name.as_str(), d.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("bad-mode", "spec.mtls.mode"),
                ("ports-no-selector", "spec.portLevelMtls"),
                ("bad-port", "spec.portLevelMtls[0]"),
                ("bad-type", "spec.mtls"),
            ]
        );
        assert!(diags.iter().all(|d| d.message.ends_with("object skipped")));
        assert!(
            diags[0].message.contains("STRICTER"),
            "{}",
            diags[0].message
        );
        assert_eq!(idx.inbound("a", &labels(&[])).mode, MtlsMode::Permissive);
        assert_eq!(idx.inbound("d", &labels(&[])).mode, MtlsMode::Strict);
    }
}
