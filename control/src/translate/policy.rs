//! DestinationRules: which one a client proxy uses for a host, its subsets, and each
//! cluster's load balancer, connection pool and outlier detection.
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
//! Policy of a cluster (Istio's `MergeSubsetTrafficPolicy` and `MergeTrafficPolicy`,
//! `pilot/pkg/networking/util/util.go`, `pilot/pkg/model/destination_rule.go`), for each
//! of its three blocks, `loadBalancer`, `connectionPool` and `outlierDetection`: the top
//! level, replaced whole by the `portLevelSettings` entry for the cluster's port (a port
//! entry does not inherit: a block it lacks is the default, not the top level's); for a
//! subset, then each block its `trafficPolicy` sets, replacing that block whole (blocks
//! it does not set stay the top level's); but when the subset's policy has an entry for
//! the port, that entry alone (a block it lacks is the default). A block is never merged
//! field by field. Defaults: `LEAST_REQUEST`, no connection limits, no outlier detection.
//!
//! `loadBalancer.simple`: `LEAST_REQUEST` (default, also `UNSPECIFIED` and `LEAST_CONN`,
//! its deprecated alias), `ROUND_ROBIN`, `RANDOM`, `PASSTHROUGH`.
//! `loadBalancer.consistentHash` ([`lb_block`]): exactly one key of `httpHeaderName`
//! (lower-cased), `httpCookie` (`name`, `path`, `ttl`), `useSourceIp`,
//! `httpQueryParameterName`, sent as the cluster's `consistentHash` with `LEAST_REQUEST`
//! for requests without the key; `ringHash.minimumRingSize`, `maglev.tableSize` and the
//! deprecated `minimumRingSize` are range-checked and not sent (the proxy's rendezvous
//! hashing has no table). No key, several, a cookie without a name, a bad `ttl` or
//! size: reported, `LEAST_REQUEST`. Beside `simple`: reported, the hash wins. A headless
//! Service's clusters stay `PASSTHROUGH`, unhashed. `localityLbSetting`, `tunnel`,
//! `proxyProtocol` and `retryBudget` are ignored without a diagnostic. `tls` is the fourth block, merged like the others: `ISTIO_MUTUAL` (with
//! its `subjectAltNames` and `sni`) and `DISABLE` override auto mTLS; `SIMPLE` and
//! `MUTUAL` are reported and the block ignored (auto mTLS stays); an unknown mode refuses
//! the rule. `connectionPool` and `outlierDetection` are converted by `resilience`; a
//! value there that Istio's validation refuses (a negative limit, a duration under 1 ms,
//! a percentage over 100, ...) skips the whole DestinationRule with a diagnostic, as
//! Istio's webhook would have refused it (its subsets are then unknown too).

use std::collections::{BTreeMap, HashMap};

use mesh_config::resilience::{ConnectionPool, OutlierDetection};
use mesh_config::{ClusterTlsMode, HashKey, LoadBalancer};
use serde_json::Value;

use super::Diagnostic;
use super::hosts::{HostPattern, Visibility, labels_match, resolve_config_host};
use super::resilience::{self, Bad, Note};
use crate::istio::destination_rule::{
    self, ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, DestinationRule,
    LoadBalancerSettings, OutlierDetection as IOutlier, TrafficPolicy,
};
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

/// The blocks of a `trafficPolicy` (or of one of its `portLevelSettings`) the
/// translation applies; `None`: the block is not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Blocks {
    pub lb: Option<LbBlock>,
    pub pool: Option<ConnectionPool>,
    pub outlier: Option<OutlierDetection>,
    pub tls: Option<TlsBlock>,
}

/// A `loadBalancer` block: the simple balancer, or a consistent hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbBlock {
    pub simple: LoadBalancer,
    pub hash: Option<HashKey>,
}

/// A `tls` block the mesh applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsBlock {
    /// `IstioMutual` or `Disable` (never `Auto`).
    pub mode: ClusterTlsMode,
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
}

/// A `trafficPolicy`, checked.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub top: Blocks,
    /// `portLevelSettings`: port → its blocks (the first entry for a port counts).
    pub ports: BTreeMap<u32, Blocks>,
}

impl Policy {
    /// What this policy says for `port`: its port entry, whole, else the top level.
    fn for_port(&self, port: u16) -> &Blocks {
        self.ports.get(&u32::from(port)).unwrap_or(&self.top)
    }
}

/// What one cluster gets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterPolicy {
    pub load_balancer: LoadBalancer,
    pub consistent_hash: Option<HashKey>,
    pub connection_pool: ConnectionPool,
    pub outlier_detection: Option<OutlierDetection>,
    /// `None`: auto mTLS.
    pub tls: Option<TlsBlock>,
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

/// A `loadBalancer` block at `field`. `consistentHash` beside `simple` wins (reported:
/// Istio's schema has them as a oneof); a hash that cannot be applied (no key or more
/// than one, a cookie without a name, a bad `ttl`, a ring size of 0 or over Envoy's
/// maximum) is reported and the block is `LEAST_REQUEST`, as it would be without it.
fn lb_block(
    lb: Option<&LoadBalancerSettings>,
    meta: &Meta,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<LbBlock> {
    let lb = lb?;
    let Some(ch) = &lb.consistent_hash else {
        return Some(LbBlock {
            simple: simple_lb(lb, meta, field, diags),
            hash: None,
        });
    };
    let f = format!("{field}.consistentHash");
    if lb.simple.is_some() {
        diags.push(diag(
            meta,
            format!("{field}.simple"),
            "simple and consistentHash are both set (one of them only, in Istio's API); \
             consistentHash used"
                .into(),
        ));
    }
    match consistent_hash(ch, &f) {
        Ok(hash) => Some(LbBlock {
            simple: LoadBalancer::LeastRequest,
            hash: Some(hash),
        }),
        Err((field, why)) => {
            diags.push(diag(meta, field, format!("{why}; LEAST_REQUEST used")));
            Some(LbBlock::default())
        }
    }
}

fn consistent_hash(ch: &ConsistentHashLb, f: &str) -> Result<HashKey, Bad> {
    fn nonempty(s: &Option<String>) -> Option<&str> {
        s.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
    let mut keys = Vec::new();
    if let Some(h) = nonempty(&ch.http_header_name) {
        keys.push(HashKey::Header(h.to_ascii_lowercase()));
    }
    if let Some(c) = &ch.http_cookie {
        let name = c.name.trim();
        if name.is_empty() {
            return Err((format!("{f}.httpCookie.name"), "missing".into()));
        }
        let ttl_ms = match c.ttl.as_deref() {
            None => None,
            Some(t) => Some(
                mesh_common::duration::parse(t)
                    .map_err(|e| (format!("{f}.httpCookie.ttl"), e.to_string()))?
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
            ),
        };
        keys.push(HashKey::Cookie {
            name: name.to_owned(),
            path: Some(c.path.trim().to_owned()).filter(|p| !p.is_empty()),
            ttl_ms,
        });
    }
    if ch.use_source_ip == Some(true) {
        keys.push(HashKey::SourceIp);
    }
    if let Some(q) = nonempty(&ch.http_query_parameter_name) {
        keys.push(HashKey::QueryParameter(q.to_owned()));
    }
    if keys.len() != 1 {
        return Err((
            f.to_owned(),
            format!(
                "{} hash keys (exactly one of httpHeaderName, httpCookie, useSourceIp, \
                 httpQueryParameterName is needed)",
                keys.len()
            ),
        ));
    }
    let (size, size_field) = match (&ch.ring_hash, &ch.maglev, ch.minimum_ring_size) {
        (Some(r), _, _) => (r.minimum_ring_size, format!("{f}.ringHash.minimumRingSize")),
        (None, Some(m), _) => (m.table_size, format!("{f}.maglev.tableSize")),
        (None, None, s) => (s, format!("{f}.minimumRingSize")),
    };
    // Checked as Istio's validation does, then not needed: the proxy's consistent hash
    // has no table to size (rendezvous hashing).
    if let Some(n) = size.filter(|n| !(0..=i64::from(MAX_RING_SIZE)).contains(n)) {
        return Err((size_field, format!("{n} is not within 0-{MAX_RING_SIZE}")));
    }
    Ok(keys.remove(0))
}

/// The largest ring or table size taken (Envoy's `maximum_ring_size` default).
const MAX_RING_SIZE: u32 = 8 << 20;

fn simple_lb(
    lb: &LoadBalancerSettings,
    meta: &Meta,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> LoadBalancer {
    match lb.simple.as_deref() {
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
    }
}

/// `tls` at `field`: `Ok(None)` when absent or not applied (reported).
fn tls_block(
    tls: Option<&ClientTlsSettings>,
    meta: &Meta,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> Result<Option<TlsBlock>, Bad> {
    let Some(tls) = tls else {
        return Ok(None);
    };
    let mode_field = format!("{field}.mode");
    let name = match &tls.mode {
        None | Some(Value::Null) => "DISABLE".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => "DISABLE".into(),
            Some(1) => "SIMPLE".into(),
            Some(2) => "MUTUAL".into(),
            Some(3) => "ISTIO_MUTUAL".into(),
            _ => return Err((mode_field, format!("unknown TLS mode {n} (0-3)"))),
        },
        Some(other) => {
            return Err((
                mode_field,
                format!("TLS mode must be a string, not {other}"),
            ));
        }
    };
    let mode = match name.as_str() {
        "DISABLE" => ClusterTlsMode::Disable,
        "ISTIO_MUTUAL" => ClusterTlsMode::IstioMutual,
        "SIMPLE" | "MUTUAL" => {
            diags.push(diag(
                meta,
                mode_field,
                format!(
                    "TLS mode {name} (TLS with your own certificates) is not supported yet; \
                     this tls block is ignored and auto mTLS applies"
                ),
            ));
            return Ok(None);
        }
        other => {
            return Err((
                mode_field,
                format!("unknown TLS mode {other:?} (DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)"),
            ));
        }
    };
    Ok(Some(TlsBlock {
        mode,
        subject_alt_names: tls.subject_alt_names.clone(),
        sni: Some(tls.sni.trim().to_owned()).filter(|s| !s.is_empty()),
    }))
}

/// The blocks of a `trafficPolicy` or port entry at `field`.
#[allow(clippy::too_many_arguments)]
fn blocks(
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&IOutlier>,
    tls: Option<&ClientTlsSettings>,
    meta: &Meta,
    field: &str,
    diags: &mut Vec<Diagnostic>,
    notes: &mut Vec<Note>,
) -> Result<Blocks, Bad> {
    Ok(Blocks {
        tls: tls_block(tls, meta, &format!("{field}.tls"), diags)?,
        lb: lb_block(lb, meta, &format!("{field}.loadBalancer"), diags),
        pool: pool
            .map(|p| resilience::connection_pool(p, &format!("{field}.connectionPool")))
            .transpose()?,
        outlier: outlier
            .map(|o| resilience::outlier_detection(o, &format!("{field}.outlierDetection"), notes))
            .transpose()?,
    })
}

fn policy(
    tp: Option<&TrafficPolicy>,
    meta: &Meta,
    field: &str,
    diags: &mut Vec<Diagnostic>,
    notes: &mut Vec<Note>,
) -> Result<Option<Policy>, Bad> {
    let Some(tp) = tp else {
        return Ok(None);
    };
    let top = blocks(
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
        meta,
        field,
        diags,
        notes,
    )?;
    let mut ports = BTreeMap::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let f = format!("{field}.portLevelSettings[{i}]");
        let b = blocks(
            p.load_balancer.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            p.tls.as_ref(),
            meta,
            &f,
            diags,
            notes,
        )?;
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
        ports.entry(n).or_insert(b);
    }
    Ok(Some(Policy { top, ports }))
}

/// The top-level policy and the subsets of `spec`; `Err` refuses the whole rule.
fn policies(
    spec: &destination_rule::DestinationRuleSpec,
    meta: &Meta,
    diags: &mut Vec<Diagnostic>,
    notes: &mut Vec<Note>,
) -> Result<(Option<Policy>, Vec<SubsetRec>), Bad> {
    let top = policy(
        spec.traffic_policy.as_ref(),
        meta,
        "spec.trafficPolicy",
        diags,
        notes,
    )?;
    let mut subsets: Vec<SubsetRec> = Vec::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        let policy = policy(
            s.traffic_policy.as_ref(),
            meta,
            &format!("{f}.trafficPolicy"),
            diags,
            notes,
        )?;
        if s.name.is_empty() {
            diags.push(diag(
                meta,
                format!("{f}.name"),
                "missing; subset ignored".into(),
            ));
            continue;
        }
        if subsets.iter().any(|o| o.name == s.name) {
            diags.push(diag(
                meta,
                format!("{f}.name"),
                format!("subset {:?} is defined twice; this one is ignored", s.name),
            ));
            continue;
        }
        subsets.push(SubsetRec {
            name: s.name.clone(),
            labels: s.labels.clone(),
            policy,
        });
    }
    Ok((top, subsets))
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
        // This rule's own diagnostics, kept only if it is not refused as a whole.
        let mut mine = Vec::new();
        let mut notes = Vec::new();
        let checked = policies(&spec, &meta, &mut mine, &mut notes);
        let (top, subsets) = match checked {
            Ok(v) => v,
            Err((field, message)) => {
                diags.push(diag(&meta, field, format!("{message}; object skipped")));
                return None;
            }
        };
        diags.extend(mine);
        diags.extend(
            notes
                .into_iter()
                .map(|(field, message)| diag(&meta, field, message)),
        );
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

    /// The blocks that apply to the cluster for `port` (and `subset`), unset ones `None`.
    fn blocks(&self, port: u16, subset: Option<&SubsetRec>) -> Blocks {
        let mut b = self
            .top()
            .map(|t| t.for_port(port).clone())
            .unwrap_or_default();
        if let Some(p) = subset.and_then(|s| s.policy.as_ref()) {
            match p.ports.get(&u32::from(port)) {
                // The subset's port entry replaces everything (Istio's `hasPortLevel`).
                Some(entry) => b = entry.clone(),
                None => {
                    let t = &p.top;
                    if t.lb.is_some() {
                        b.lb.clone_from(&t.lb);
                    }
                    if t.pool.is_some() {
                        b.pool.clone_from(&t.pool);
                    }
                    if t.outlier.is_some() {
                        b.outlier.clone_from(&t.outlier);
                    }
                    if t.tls.is_some() {
                        b.tls.clone_from(&t.tls);
                    }
                }
            }
        }
        b
    }

    /// The balancer, connection pool and outlier detection of the cluster for `port`
    /// (and `subset`).
    pub fn cluster_policy(&self, port: u16, subset: Option<&SubsetRec>) -> ClusterPolicy {
        let b = self.blocks(port, subset);
        ClusterPolicy {
            load_balancer: b.lb.as_ref().map(|l| l.simple).unwrap_or_default(),
            consistent_hash: b.lb.and_then(|l| l.hash),
            connection_pool: b.pool.unwrap_or_default(),
            outlier_detection: b.outlier,
            tls: b.tls,
        }
    }

    /// The balancer of the cluster for `port` (and `subset`).
    #[cfg(test)]
    pub fn load_balancer(&self, port: u16, subset: Option<&SubsetRec>) -> LoadBalancer {
        self.cluster_policy(port, subset).load_balancer
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

    /// Istio's `MergeSubsetTrafficPolicy`, block by block: a port entry replaces the
    /// level it is in; a subset replaces the blocks it sets; a subset's port entry
    /// replaces everything; a block is never merged field by field.
    #[test]
    fn pool_and_outlier_blocks_merge_whole() {
        let r = dr(
            "default",
            "r",
            "2024-01-01T00:00:00Z",
            json!({
                "host": "reviews",
                "trafficPolicy": {
                    "loadBalancer": {"simple": "RANDOM"},
                    "connectionPool": {"tcp": {"maxConnections": 10},
                                       "http": {"http2MaxRequests": 20}},
                    "outlierDetection": {"consecutive5xxErrors": 3},
                    "portLevelSettings": [
                        {"port": {"number": 9090},
                         "connectionPool": {"http": {"maxRetries": 4}}}]
                },
                "subsets": [
                    {"name": "plain", "labels": {"version": "v1"}},
                    {"name": "pool", "labels": {"version": "v2"},
                     "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "1s"}}}},
                    {"name": "port", "labels": {"version": "v3"},
                     "trafficPolicy": {
                         "outlierDetection": {"interval": "1s"},
                         "portLevelSettings": [
                             {"port": {"number": 9080},
                              "outlierDetection": {"consecutiveGatewayErrors": 2}}]}}
                ]
            }),
        );
        let idx = DrIndex::new(vec![r], "istio-system", &mut Vec::new());
        let m = idx.lookup("default", &BTreeMap::new(), H, "default");
        let top_pool = ConnectionPool {
            max_connections: Some(10),
            max_requests: Some(20),
            ..ConnectionPool::default()
        };
        let top_outlier = OutlierDetection {
            consecutive_5xx_errors: 3,
            ..OutlierDetection::default()
        };
        let p = |port, sub: Option<&str>| m.cluster_policy(port, sub.and_then(|s| m.subset(s)));
        assert_eq!(
            p(9080, None),
            ClusterPolicy {
                load_balancer: LoadBalancer::Random,
                consistent_hash: None,
                connection_pool: top_pool.clone(),
                outlier_detection: Some(top_outlier.clone()),
                tls: None,
            }
        );
        // The port entry, whole: no balancer, no outlier detection of the top level's.
        let only_retries = ConnectionPool {
            max_retries: Some(4),
            ..ConnectionPool::default()
        };
        assert_eq!(
            p(9090, None),
            ClusterPolicy {
                connection_pool: only_retries.clone(),
                ..ClusterPolicy::default()
            }
        );
        assert_eq!(p(9080, Some("plain")), p(9080, None));
        assert_eq!(p(9090, Some("plain")), p(9090, None));
        // The subset's pool replaces the top level's whole (no maxConnections left).
        let sub_pool = ConnectionPool {
            connect_timeout_ms: Some(1000),
            ..ConnectionPool::default()
        };
        for port in [9080, 9090] {
            let c = p(port, Some("pool"));
            assert_eq!(c.connection_pool, sub_pool, "{port}");
        }
        assert_eq!(p(9080, Some("pool")).outlier_detection, Some(top_outlier));
        assert_eq!(p(9080, Some("pool")).load_balancer, LoadBalancer::Random);
        assert_eq!(
            p(9090, Some("pool")).load_balancer,
            LoadBalancer::LeastRequest
        );
        // The subset's own port entry alone.
        assert_eq!(
            p(9080, Some("port")),
            ClusterPolicy {
                outlier_detection: Some(OutlierDetection {
                    consecutive_gateway_errors: 2,
                    ..OutlierDetection::default()
                }),
                ..ClusterPolicy::default()
            }
        );
        // Elsewhere the subset's outlier block over the port-resolved top level.
        assert_eq!(
            p(9090, Some("port")),
            ClusterPolicy {
                connection_pool: only_retries,
                outlier_detection: Some(OutlierDetection {
                    interval_ms: 1000,
                    ..OutlierDetection::default()
                }),
                ..ClusterPolicy::default()
            }
        );
    }

    #[test]
    fn a_refused_value_skips_the_rule() {
        let prepare = |spec: Value| {
            let v = json!({"metadata": {"name": "bad", "namespace": "default"}, "spec": spec});
            let mut d = Vec::new();
            let r = PreparedDr::new(
                DestinationRule::from_json(&v).unwrap(),
                "cluster.local",
                &mut d,
            );
            (r.is_some(), d)
        };
        let (kept, d) = prepare(json!({
            "host": "reviews",
            "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}},
            "subsets": [{"name": "v1", "trafficPolicy": {"portLevelSettings": [
                {"port": {"number": 9080},
                 "outlierDetection": {"maxEjectionPercent": 150}}]}}]
        }));
        assert!(!kept);
        // Only the refusal: what else the rule said no longer matters.
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].field,
            "spec.subsets[0].trafficPolicy.portLevelSettings[0].outlierDetection.maxEjectionPercent"
        );
        assert!(d[0].message.ends_with("; object skipped"), "{:?}", d[0]);
        let (kept, d) = prepare(json!({
            "host": "reviews",
            "trafficPolicy": {"outlierDetection": {"consecutiveErrors": 2}}
        }));
        assert!(kept);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].field,
            "spec.trafficPolicy.outlierDetection.consecutiveErrors"
        );
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
