//! DestinationRules: which one a client proxy uses for a host, its subsets, and the load
//! balancer of each cluster.
//!
//! Lookup, as Istio's `PushContext.destinationRule` for a client in namespace `C` and a
//! Service in namespace `S`: the DestinationRules of `C`, else those of `S`, else those of
//! the root namespace, counting in each only the ones exported to `C` (`exportTo`; a
//! rule with a `workloadSelector` only counts in its own namespace, for the proxies it
//! selects, and is preferred there over one without). Within a namespace the most
//! specific host wins (the exact name over `*.ns.svc.cluster.local` over `*`); rules for
//! that same host are merged in age order: subsets are added unless one of the same name
//! is already there, and the oldest top-level `trafficPolicy` is kept (both reported at
//! build).
//!
//! One difference from Istio, on purpose: a rule the client may not use (not exported to
//! it, or a `workloadSelector` that does not select it) is set aside before the most
//! specific host is chosen, so it never hides a less specific rule the client may use
//! (in Istio it can, and the client then gets no rule from that namespace).
//!
//! Load balancer of a cluster (Istio's `MergeTrafficPolicy`): the top-level
//! `loadBalancer`, replaced by the `portLevelSettings` entry for the port (a port entry
//! does not inherit: without its own `loadBalancer` it is the default); for a subset,
//! then its `loadBalancer`, then its own port entry. `simple`: `LEAST_REQUEST` (default,
//! also `UNSPECIFIED` and `LEAST_CONN`, its deprecated alias), `ROUND_ROBIN`, `RANDOM`,
//! `PASSTHROUGH`. A `loadBalancer` without `simple` (`consistentHash`,
//! `localityLbSetting`) is the default: not translated yet, like `connectionPool`,
//! `outlierDetection`, `tls` and `proxyProtocol`, which are ignored without a diagnostic.

use std::collections::{BTreeMap, HashMap};

use mesh_config::LoadBalancer;

use super::Diagnostic;
use super::hosts::{HostPattern, Visibility, labels_match, resolve_config_host};
use crate::istio::destination_rule::{self, DestinationRule, LoadBalancerSettings, TrafficPolicy};
use crate::istio::{Labels, Meta};

/// One DestinationRule, checked.
#[derive(Debug, Clone)]
pub struct PreparedDr {
    pub meta: Meta,
    pub host: HostPattern,
    pub export: Visibility,
    pub selector: Option<Labels>,
    pub top: Option<Policy>,
    pub subsets: Vec<SubsetRec>,
}

#[derive(Debug, Clone)]
pub struct SubsetRec {
    pub name: String,
    pub labels: Labels,
    pub policy: Option<Policy>,
}

/// The load-balancing part of a `trafficPolicy`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `Some` when `loadBalancer` is set.
    pub lb: Option<LoadBalancer>,
    /// `portLevelSettings`: port → its `loadBalancer` (default when unset).
    pub ports: BTreeMap<u32, LoadBalancer>,
}

impl Policy {
    /// The balancer this policy gives `port`, if it says anything about it.
    fn for_port(&self, port: u16) -> Option<LoadBalancer> {
        self.ports.get(&u32::from(port)).copied().or(self.lb)
    }
}

fn diag(meta: &Meta, field: String, message: String) -> Diagnostic {
    Diagnostic {
        kind: destination_rule::KIND.into(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        field,
        message,
    }
}

fn simple_lb(
    lb: Option<&LoadBalancerSettings>,
    meta: &Meta,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<LoadBalancer> {
    let lb = lb?;
    Some(match lb.simple.as_deref() {
        None | Some("UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN") => LoadBalancer::LeastRequest,
        Some("ROUND_ROBIN") => LoadBalancer::RoundRobin,
        Some("RANDOM") => LoadBalancer::Random,
        Some("PASSTHROUGH") => LoadBalancer::Passthrough,
        Some(other) => {
            diags.push(diag(
                meta,
                format!("{field}.simple"),
                format!("unknown load balancer {other:?}; LEAST_REQUEST used"),
            ));
            LoadBalancer::LeastRequest
        }
    })
}

fn policy(
    tp: Option<&TrafficPolicy>,
    meta: &Meta,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Policy> {
    let tp = tp?;
    let lb = simple_lb(
        tp.load_balancer.as_ref(),
        meta,
        &format!("{field}.loadBalancer"),
        diags,
    );
    let mut ports = BTreeMap::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let f = format!("{field}.portLevelSettings[{i}]");
        let Some(n) = p
            .port
            .as_ref()
            .map(|p| p.number)
            .filter(|n| (1..=65535).contains(n))
        else {
            diags.push(diag(
                meta,
                format!("{f}.port"),
                "missing or invalid port number; entry ignored".into(),
            ));
            continue;
        };
        let lb = simple_lb(
            p.load_balancer.as_ref(),
            meta,
            &format!("{f}.loadBalancer"),
            diags,
        )
        .unwrap_or_default();
        ports.entry(n).or_insert(lb);
    }
    Some(Policy { lb, ports })
}

impl PreparedDr {
    pub fn new(dr: DestinationRule, domain: &str, diags: &mut Vec<Diagnostic>) -> Option<Self> {
        let DestinationRule { meta, spec } = dr;
        if spec.host.trim().is_empty() {
            diags.push(diag(
                &meta,
                "spec.host".into(),
                "missing; rule skipped".into(),
            ));
            return None;
        }
        let host = HostPattern::new(&resolve_config_host(&spec.host, &meta.namespace, domain));
        let top = policy(
            spec.traffic_policy.as_ref(),
            &meta,
            "spec.trafficPolicy",
            diags,
        );
        let mut subsets: Vec<SubsetRec> = Vec::new();
        for (i, s) in spec.subsets.iter().enumerate() {
            let f = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                diags.push(diag(
                    &meta,
                    format!("{f}.name"),
                    "missing; subset ignored".into(),
                ));
                continue;
            }
            if subsets.iter().any(|o| o.name == s.name) {
                diags.push(diag(
                    &meta,
                    format!("{f}.name"),
                    format!("subset {:?} is defined twice; this one is ignored", s.name),
                ));
                continue;
            }
            subsets.push(SubsetRec {
                name: s.name.clone(),
                labels: s.labels.clone(),
                policy: policy(
                    s.traffic_policy.as_ref(),
                    &meta,
                    &format!("{f}.trafficPolicy"),
                    diags,
                ),
            });
        }
        let selector = spec.workload_selector.map(|w| w.match_labels);
        let export = if selector.is_some() {
            // Istio: a rule with a workload selector is never exported.
            Visibility::from_export_to(&[".".into()], &meta.namespace)
        } else {
            Visibility::from_export_to(&spec.export_to, &meta.namespace)
        };
        Some(PreparedDr {
            meta,
            host,
            export,
            selector,
            top,
            subsets,
        })
    }
}

/// The rules a client uses for one host, oldest first; empty when none.
#[derive(Debug, Clone, Default)]
pub struct Merged<'a> {
    pub parts: Vec<&'a PreparedDr>,
}

impl<'a> Merged<'a> {
    /// The first (oldest) definition of subset `name`.
    pub fn subset(&self, name: &str) -> Option<&'a SubsetRec> {
        self.parts
            .iter()
            .find_map(|d| d.subsets.iter().find(|s| s.name == name))
    }

    fn top(&self) -> Option<&'a Policy> {
        self.parts.iter().find_map(|d| d.top.as_ref())
    }

    /// The balancer of the cluster for `port` (and `subset`).
    pub fn load_balancer(&self, port: u16, subset: Option<&SubsetRec>) -> LoadBalancer {
        let mut lb = self.top().and_then(|t| t.for_port(port));
        if let Some(p) = subset.and_then(|s| s.policy.as_ref()) {
            if let Some(l) = p.lb {
                lb = Some(l);
            }
            if let Some(l) = p.ports.get(&u32::from(port)) {
                lb = Some(*l);
            }
        }
        lb.unwrap_or_default()
    }
}

/// The rules of one namespace, by host.
#[derive(Debug, Default)]
struct NsRules {
    exact: HashMap<String, Vec<usize>>,
    /// Most specific first, then oldest.
    wildcard: Vec<usize>,
}

/// Every DestinationRule, indexed by namespace and host.
#[derive(Debug, Default)]
pub struct DrIndex {
    rules: Vec<PreparedDr>,
    by_ns: HashMap<String, NsRules>,
    root: String,
}

impl DrIndex {
    /// `rules` in any order; reports conflicts between rules merged for one host.
    pub fn new(mut rules: Vec<PreparedDr>, root: &str, diags: &mut Vec<Diagnostic>) -> DrIndex {
        rules.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
        let mut by_ns: HashMap<String, NsRules> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            let ns = by_ns.entry(r.meta.namespace.clone()).or_default();
            match &r.host {
                HostPattern::Exact(h) => ns.exact.entry(h.clone()).or_default().push(i),
                HostPattern::Wildcard(_) => ns.wildcard.push(i),
            }
        }
        for ns in by_ns.values_mut() {
            // Stable: equal specificity stays oldest first.
            ns.wildcard
                .sort_by_key(|&i| std::cmp::Reverse(rules[i].host.specificity()));
        }
        let index = DrIndex {
            rules,
            by_ns,
            root: root.to_owned(),
        };
        index.report_merge_conflicts(diags);
        index
    }

    fn report_merge_conflicts(&self, diags: &mut Vec<Diagnostic>) {
        let mut groups: BTreeMap<(&str, &HostPattern), Vec<&PreparedDr>> = BTreeMap::new();
        for r in self.rules.iter().filter(|r| r.selector.is_none()) {
            groups
                .entry((r.meta.namespace.as_str(), &r.host))
                .or_default()
                .push(r);
        }
        for group in groups.values().filter(|g| g.len() > 1) {
            for (i, r) in group.iter().enumerate() {
                let older = &group[..i];
                if r.top.is_some()
                    && let Some(o) = older.iter().find(|o| o.top.is_some())
                {
                    diags.push(diag(
                        &r.meta,
                        "spec.trafficPolicy".into(),
                        format!(
                            "ignored: the older DestinationRule {}/{} for host {} sets one",
                            o.meta.namespace, o.meta.name, r.host
                        ),
                    ));
                }
                for (j, s) in r.subsets.iter().enumerate() {
                    if let Some(o) = older
                        .iter()
                        .find(|o| o.subsets.iter().any(|t| t.name == s.name))
                    {
                        diags.push(diag(
                            &r.meta,
                            format!("spec.subsets[{j}]"),
                            format!(
                                "subset {:?} ignored: the older DestinationRule {}/{} for host {} defines it",
                                s.name, o.meta.namespace, o.meta.name, r.host
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// The rules a proxy in `client_ns` with `client_labels` uses for the Service `host`
    /// in `service_ns`.
    pub fn lookup(
        &self,
        client_ns: &str,
        client_labels: &BTreeMap<String, String>,
        host: &str,
        service_ns: &str,
    ) -> Merged<'_> {
        let mut tried: [&str; 3] = ["", "", ""];
        for (k, ns) in [client_ns, service_ns, self.root.as_str()]
            .into_iter()
            .enumerate()
        {
            if tried[..k].contains(&ns) {
                continue;
            }
            tried[k] = ns;
            let m = self.lookup_in(ns, client_ns, client_labels, host);
            if !m.parts.is_empty() {
                return m;
            }
        }
        Merged::default()
    }

    fn lookup_in(
        &self,
        ns: &str,
        client_ns: &str,
        client_labels: &BTreeMap<String, String>,
        host: &str,
    ) -> Merged<'_> {
        let Some(rules) = self.by_ns.get(ns) else {
            return Merged::default();
        };
        let usable = |r: &&PreparedDr| {
            r.export.visible_to(client_ns)
                && match &r.selector {
                    None => true,
                    Some(sel) => ns == client_ns && labels_match(sel, client_labels),
                }
        };
        let exact: Vec<&PreparedDr> = rules
            .exact
            .get(host)
            .into_iter()
            .flatten()
            .map(|&i| &self.rules[i])
            .filter(usable)
            .collect();
        let candidates = if exact.is_empty() {
            let mut best = None;
            let mut out = Vec::new();
            for r in rules.wildcard.iter().map(|&i| &self.rules[i]) {
                if !r.host.matches(host) || !usable(&r) {
                    continue;
                }
                match best {
                    None => best = Some(&r.host),
                    Some(b) if *b != r.host => continue,
                    Some(_) => {}
                }
                out.push(r);
            }
            out
        } else {
            exact
        };
        // A rule selecting this proxy wins alone; else the rules without a selector merge.
        if let Some(sel) = candidates.iter().find(|r| r.selector.is_some()) {
            return Merged { parts: vec![sel] };
        }
        Merged { parts: candidates }
    }

    /// Whether any rule for `host` defines subset `name` (for build-time diagnostics:
    /// which rule applies depends on the client).
    pub fn any_defines(&self, host: &str, name: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.host.matches(host) && r.subsets.iter().any(|s| s.name == name))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{Value, json};

    fn dr(ns: &str, name: &str, ts: &str, spec: Value) -> PreparedDr {
        let v = json!({"metadata": {"name": name, "namespace": ns,
                                    "creationTimestamp": ts}, "spec": spec});
        let mut d = Vec::new();
        let r = PreparedDr::new(
            DestinationRule::from_json(&v).unwrap(),
            "cluster.local",
            &mut d,
        );
        assert!(d.is_empty(), "{d:?}");
        r.unwrap()
    }

    const H: &str = "reviews.default.svc.cluster.local";

    #[test]
    fn lookup_order_and_export() {
        let rules = vec![
            dr(
                "istio-system",
                "root",
                "2024-01-01T00:00:00Z",
                json!({"host": "*.local", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}),
            ),
            dr(
                "default",
                "svc-ns",
                "2024-01-01T00:00:00Z",
                json!({"host": "reviews", "exportTo": ["."],
                      "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}),
            ),
            dr(
                "client",
                "client-ns",
                "2024-01-01T00:00:00Z",
                json!({"host": H, "trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}}}),
            ),
        ];
        let mut d = Vec::new();
        let idx = DrIndex::new(rules, "istio-system", &mut d);
        let none = BTreeMap::new();
        let lb = |ns: &str| {
            idx.lookup(ns, &none, H, "default")
                .load_balancer(9080, None)
        };
        assert_eq!(lb("client"), LoadBalancer::Passthrough);
        assert_eq!(lb("default"), LoadBalancer::RoundRobin);
        // The Service namespace's rule is private: others fall through to the root's.
        assert_eq!(lb("elsewhere"), LoadBalancer::Random);
        assert!(d.is_empty());
    }

    #[test]
    fn port_and_subset_overrides() {
        let r = dr(
            "default",
            "r",
            "2024-01-01T00:00:00Z",
            json!({
                "host": "reviews",
                "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"},
                                  "portLevelSettings": [{"port": {"number": 9090}}]},
                "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"},
                     "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
                    {"name": "v3", "labels": {"version": "v3"},
                     "trafficPolicy": {"portLevelSettings": [
                         {"port": {"number": 9080}, "loadBalancer": {"simple": "PASSTHROUGH"}}]}}
                ]
            }),
        );
        let idx = DrIndex::new(vec![r], "istio-system", &mut Vec::new());
        let m = idx.lookup("default", &BTreeMap::new(), H, "default");
        let s = |n| m.subset(n);
        assert_eq!(m.load_balancer(9080, None), LoadBalancer::Random);
        // A port entry without a balancer: the default, not the top level's.
        assert_eq!(m.load_balancer(9090, None), LoadBalancer::LeastRequest);
        assert_eq!(m.load_balancer(9080, s("v1")), LoadBalancer::Random);
        assert_eq!(m.load_balancer(9080, s("v2")), LoadBalancer::RoundRobin);
        assert_eq!(m.load_balancer(9090, s("v2")), LoadBalancer::RoundRobin);
        assert_eq!(m.load_balancer(9080, s("v3")), LoadBalancer::Passthrough);
        assert_eq!(m.load_balancer(9090, s("v3")), LoadBalancer::LeastRequest);
    }

    #[test]
    fn merging_and_conflicts() {
        let a = dr(
            "default",
            "a",
            "2024-01-01T00:00:00Z",
            json!({
            "host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
        );
        let b = dr(
            "default",
            "b",
            "2024-01-02T00:00:00Z",
            json!({
            "host": H, "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
            "subsets": [{"name": "v1", "labels": {"version": "other"}},
                        {"name": "v2", "labels": {"version": "v2"}}]}),
        );
        let mut d = Vec::new();
        let idx = DrIndex::new(vec![b, a], "istio-system", &mut d);
        let m = idx.lookup("default", &BTreeMap::new(), H, "default");
        assert_eq!(m.load_balancer(9080, None), LoadBalancer::Random);
        assert_eq!(m.subset("v1").unwrap().labels["version"], "v1");
        assert!(m.subset("v2").is_some());
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().all(|d| d.name == "b"));
    }

    #[test]
    fn workload_selector_rules_are_local_and_preferred() {
        let plain = dr(
            "default",
            "plain",
            "2024-01-01T00:00:00Z",
            json!({
            "host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}),
        );
        let sel = dr(
            "default",
            "sel",
            "2024-01-02T00:00:00Z",
            json!({
            "host": "reviews", "workloadSelector": {"matchLabels": {"app": "productpage"}},
            "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}),
        );
        let idx = DrIndex::new(vec![plain, sel], "istio-system", &mut Vec::new());
        let pp: BTreeMap<_, _> = [("app".to_string(), "productpage".to_string())].into();
        let lb = |ns, l: &BTreeMap<String, String>| {
            idx.lookup(ns, l, H, "default").load_balancer(9080, None)
        };
        assert_eq!(lb("default", &pp), LoadBalancer::RoundRobin);
        assert_eq!(lb("default", &BTreeMap::new()), LoadBalancer::Random);
        assert_eq!(lb("other", &pp), LoadBalancer::Random);
    }
}
