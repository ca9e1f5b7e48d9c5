//! AuthorizationPolicy: which policies apply to a workload, each checked and converted to
//! [`mesh_config::Authorization`] (the proxy evaluates them; the semantics are written
//! there).
//!
//! Scope, as Istio's: a policy applies to the pods of its namespace that its `selector`
//! selects (no selector: all of them); a policy in the root namespace applies to the
//! pods of every namespace (its selector, if any, still has to select them).
//!
//! Actions: `ALLOW` (the default) and `DENY`. `AUDIT` decides nothing and is reported and
//! left out. `CUSTOM` (an external authorizer) is not supported: reported, and applied as
//! `DENY` so that what it was meant to check is not let through unchecked. A policy with
//! `targetRef`/`targetRefs` binds a gateway or waypoint, not a sidecar: reported, left
//! out.
//!
//! A rule Istio's validation refuses (a port that is not 1-65535, an IP block that is not
//! an address or CIDR, an unknown `when` key, a condition without values, an empty value,
//! `principals` beside `serviceAccounts`) is reported and fails closed: in an `ALLOW`
//! policy it is dropped (it allows nothing), in a `DENY` policy it becomes a rule that
//! matches every request. `serviceAccounts: ["ns/sa"]` is read as the principal
//! `*/ns/<ns>/sa/<sa>` (any trust domain), as Istio matches it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use mesh_config::Authorization;
use mesh_config::authz::{AuthzPolicy, AuthzRule, Condition, Operation, Source};
use serde_json::Value;

use super::Diagnostic;
use super::hosts::labels_match;
use crate::istio::authorization_policy::{self as ap, AuthorizationPolicy};
use crate::istio::{Labels, Meta};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
}

/// One AuthorizationPolicy, checked.
#[derive(Debug, Clone)]
struct PreparedAp {
    selector: Option<Labels>,
    action: Action,
    policy: AuthzPolicy,
}

fn diag(meta: &Meta, field: String, message: String) -> Diagnostic {
    Diagnostic {
        kind: ap::KIND.into(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        field,
        message,
    }
}

/// Istio's `when` keys (`request.headers[...]` and `request.auth.claims[...]` take a
/// name in brackets).
fn known_key(key: &str) -> bool {
    const PLAIN: [&str; 10] = [
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "destination.ip",
        "destination.port",
        "connection.sni",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
    ];
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('['))
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|name| !name.is_empty())
    };
    PLAIN.contains(&key)
        || bracketed("request.headers")
        || bracketed("request.auth.claims")
        || key.starts_with("experimental.envoy.filters.")
}

fn cidr(text: &str) -> Result<String, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<IpNet>() {
        return Ok(n.trunc().to_string());
    }
    t.parse::<IpAddr>()
        .map(|a| IpNet::from(a).to_string())
        .map_err(|_| format!("{text:?} is not an IP address or CIDR"))
}

fn port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{text:?} is not a port number 1-65535")),
    }
}

fn values(list: &[String], field: &str) -> Result<Vec<String>, (String, String)> {
    if let Some(i) = list.iter().position(|v| v.is_empty()) {
        return Err((format!("{field}[{i}]"), "empty value".into()));
    }
    Ok(list.to_vec())
}

fn map<T>(
    list: &[String],
    field: &str,
    f: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, (String, String)> {
    list.iter()
        .enumerate()
        .map(|(i, v)| f(v).map_err(|e| (format!("{field}[{i}]"), e)))
        .collect()
}

fn service_accounts(list: &[String], field: &str) -> Result<Vec<String>, (String, String)> {
    map(list, field, |v| match v.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
            Ok(format!("*/ns/{ns}/sa/{sa}"))
        }
        _ => Err(format!("{v:?} is not <namespace>/<service account>")),
    })
}

fn source(s: &ap::Source, f: &str) -> Result<Source, (String, String)> {
    if !s.service_accounts.is_empty() && !s.principals.is_empty() {
        return Err((
            format!("{f}.serviceAccounts"),
            "serviceAccounts and principals cannot both be set".into(),
        ));
    }
    let mut principals = values(&s.principals, &format!("{f}.principals"))?;
    principals.extend(service_accounts(
        &s.service_accounts,
        &format!("{f}.serviceAccounts"),
    )?);
    let mut not_principals = values(&s.not_principals, &format!("{f}.notPrincipals"))?;
    not_principals.extend(service_accounts(
        &s.not_service_accounts,
        &format!("{f}.notServiceAccounts"),
    )?);
    Ok(Source {
        principals,
        not_principals,
        request_principals: values(&s.request_principals, &format!("{f}.requestPrincipals"))?,
        not_request_principals: values(
            &s.not_request_principals,
            &format!("{f}.notRequestPrincipals"),
        )?,
        namespaces: values(&s.namespaces, &format!("{f}.namespaces"))?,
        not_namespaces: values(&s.not_namespaces, &format!("{f}.notNamespaces"))?,
        ip_blocks: map(&s.ip_blocks, &format!("{f}.ipBlocks"), cidr)?,
        not_ip_blocks: map(&s.not_ip_blocks, &format!("{f}.notIpBlocks"), cidr)?,
        remote_ip_blocks: map(&s.remote_ip_blocks, &format!("{f}.remoteIpBlocks"), cidr)?,
        not_remote_ip_blocks: map(
            &s.not_remote_ip_blocks,
            &format!("{f}.notRemoteIpBlocks"),
            cidr,
        )?,
    })
}

fn operation(o: &ap::Operation, f: &str) -> Result<Operation, (String, String)> {
    Ok(Operation {
        hosts: values(&o.hosts, &format!("{f}.hosts"))?,
        not_hosts: values(&o.not_hosts, &format!("{f}.notHosts"))?,
        ports: map(&o.ports, &format!("{f}.ports"), port)?,
        not_ports: map(&o.not_ports, &format!("{f}.notPorts"), port)?,
        methods: values(&o.methods, &format!("{f}.methods"))?,
        not_methods: values(&o.not_methods, &format!("{f}.notMethods"))?,
        paths: values(&o.paths, &format!("{f}.paths"))?,
        not_paths: values(&o.not_paths, &format!("{f}.notPaths"))?,
    })
}

fn condition(c: &ap::Condition, f: &str) -> Result<Condition, (String, String)> {
    if !known_key(&c.key) {
        return Err((format!("{f}.key"), format!("unknown key {:?}", c.key)));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err((f.to_owned(), "needs values or notValues".into()));
    }
    let check = |list: &[String], field: &str| -> Result<Vec<String>, (String, String)> {
        match c.key.as_str() {
            "source.ip" | "remote.ip" | "destination.ip" => map(list, field, cidr),
            "destination.port" => map(list, field, |v| port(v).map(|p| p.to_string())),
            _ => values(list, field),
        }
    };
    Ok(Condition {
        key: c.key.clone(),
        values: check(&c.values, &format!("{f}.values"))?,
        not_values: check(&c.not_values, &format!("{f}.notValues"))?,
    })
}

fn rule(r: &ap::Rule, f: &str) -> Result<AuthzRule, (String, String)> {
    Ok(AuthzRule {
        from: r
            .from
            .iter()
            .enumerate()
            .map(|(i, e)| {
                source(
                    &e.source.clone().unwrap_or_default(),
                    &format!("{f}.from[{i}].source"),
                )
            })
            .collect::<Result<_, _>>()?,
        to: r
            .to
            .iter()
            .enumerate()
            .map(|(i, e)| {
                operation(
                    &e.operation.clone().unwrap_or_default(),
                    &format!("{f}.to[{i}].operation"),
                )
            })
            .collect::<Result<_, _>>()?,
        when: r
            .when
            .iter()
            .enumerate()
            .map(|(i, c)| condition(c, &format!("{f}.when[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}

fn action(v: Option<&Value>) -> Result<Option<Action>, &'static str> {
    let name = match v {
        None | Some(Value::Null) => "ALLOW",
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => "ALLOW",
            Some(1) => "DENY",
            Some(2) => "AUDIT",
            Some(3) => "CUSTOM",
            _ => "?",
        },
        Some(_) => "?",
    };
    match name {
        "ALLOW" => Ok(Some(Action::Allow)),
        "DENY" => Ok(Some(Action::Deny)),
        "AUDIT" => Ok(None),
        "CUSTOM" => Err("CUSTOM"),
        _ => Err("?"),
    }
}

impl PreparedAp {
    fn new(p: AuthorizationPolicy, diags: &mut Vec<Diagnostic>) -> Option<PreparedAp> {
        let AuthorizationPolicy { meta, spec } = p;
        if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
            diags.push(diag(
                &meta,
                "spec.targetRefs".into(),
                "targetRef(s) bind a gateway or waypoint, not sidecars; policy not applied".into(),
            ));
            return None;
        }
        let action = match action(spec.action.as_ref()) {
            Ok(Some(a)) => a,
            Ok(None) => {
                diags.push(diag(
                    &meta,
                    "spec.action".into(),
                    "AUDIT policies decide nothing and there is no audit log yet; policy not applied"
                        .into(),
                ));
                return None;
            }
            Err("CUSTOM") => {
                diags.push(diag(
                    &meta,
                    "spec.action".into(),
                    "CUSTOM (an external authorizer) is not supported; its rules deny instead, so \
                     nothing they cover is let through unchecked"
                        .into(),
                ));
                Action::Deny
            }
            Err(_) => {
                diags.push(diag(
                    &meta,
                    "spec.action".into(),
                    format!(
                        "unknown action {} (ALLOW, DENY, AUDIT or CUSTOM); object skipped",
                        spec.action
                            .as_ref()
                            .map(Value::to_string)
                            .unwrap_or_default()
                    ),
                ));
                return None;
            }
        };
        let mut rules = Vec::new();
        for (i, r) in spec.rules.iter().flatten().enumerate() {
            match rule(r, &format!("spec.rules[{i}]")) {
                Ok(r) => rules.push(r),
                Err((field, why)) => {
                    let what = match action {
                        Action::Allow => "rule skipped (it allows nothing)",
                        Action::Deny => {
                            rules.push(AuthzRule::default());
                            "the rule denies every request instead, so nothing it meant to deny gets through"
                        }
                    };
                    diags.push(diag(&meta, field, format!("{why}; {what}")));
                }
            }
        }
        Some(PreparedAp {
            selector: spec
                .selector
                .map(|s| s.match_labels)
                .filter(|l| !l.is_empty()),
            action,
            policy: AuthzPolicy {
                name: format!("{}/{}", meta.namespace, meta.name),
                rules,
            },
        })
    }
}

/// Every AuthorizationPolicy, by namespace.
#[derive(Debug, Default)]
pub struct ApIndex {
    by_ns: HashMap<String, Vec<PreparedAp>>,
    root: String,
}

impl ApIndex {
    pub fn new(objects: &[Value], root: &str, diags: &mut Vec<Diagnostic>) -> ApIndex {
        let mut by_ns: HashMap<String, Vec<PreparedAp>> = HashMap::new();
        for v in objects {
            match AuthorizationPolicy::from_json(v) {
                Ok(p) => {
                    let ns = p.meta.namespace.clone();
                    if let Some(p) = PreparedAp::new(p, diags) {
                        by_ns.entry(ns).or_default().push(p);
                    }
                }
                Err(e) => diags.push(e.into()),
            }
        }
        ApIndex {
            by_ns,
            root: root.to_owned(),
        }
    }

    /// The policies that apply to a pod in `namespace` with `labels`, each list by name.
    pub fn for_pod(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Authorization {
        let mut out = Authorization::default();
        let mut scopes = vec![namespace];
        if namespace != self.root {
            scopes.push(&self.root);
        }
        for ns in scopes {
            for p in self.by_ns.get(ns).into_iter().flatten() {
                if p.selector
                    .as_ref()
                    .is_some_and(|s| !labels_match(s, labels))
                {
                    continue;
                }
                match p.action {
                    Action::Allow => out.allow.push(p.policy.clone()),
                    Action::Deny => out.deny.push(p.policy.clone()),
                }
            }
        }
        out.allow.sort_by(|a, b| a.name.cmp(&b.name));
        out.deny.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn ap(ns: &str, name: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn scope_actions_and_fail_closed_rules() {
        let mut diags = Vec::new();
        let idx = ApIndex::new(
            &[
                ap(
                    "istio-system",
                    "mesh-deny",
                    json!({
                        "action": "DENY",
                        "rules": [{"from": [{"source": {"notNamespaces": ["foo", "bar"]}}]}]
                    }),
                ),
                ap(
                    "foo",
                    "allow-get",
                    json!({
                        "selector": {"matchLabels": {"app": "httpbin"}},
                        "rules": [
                            {"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}],
                             "to": [{"operation": {"methods": ["GET"], "ports": ["8080"]}}]},
                            {"to": [{"operation": {"ports": ["http"]}}]}
                        ]
                    }),
                ),
                ap(
                    "foo",
                    "deny-bad",
                    json!({
                        "action": "DENY",
                        "rules": [{"when": [{"key": "request.colour", "values": ["red"]}]}]
                    }),
                ),
                ap("foo", "deny-all", json!({})),
                ap("foo", "audit", json!({"action": "AUDIT", "rules": [{}]})),
                ap(
                    "foo",
                    "ext",
                    json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
                ),
                ap(
                    "foo",
                    "waypoint",
                    json!({"targetRefs": [{"kind": "Gateway", "name": "w"}]}),
                ),
                ap(
                    "foo",
                    "sa",
                    json!({
                        "selector": {"matchLabels": {"app": "other"}},
                        "rules": [{"from": [{"source": {"serviceAccounts": ["bar/sleep"],
                                                          "ipBlocks": ["10.1.2.3", "10.0.0.0/8"]}}]}]
                    }),
                ),
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
                ("allow-get", "spec.rules[1].to[0].operation.ports[0]"),
                ("deny-bad", "spec.rules[0].when[0].key"),
                ("audit", "spec.action"),
                ("ext", "spec.action"),
                ("waypoint", "spec.targetRefs"),
            ],
            "{diags:#?}"
        );
        let a = idx.for_pod("foo", &labels(&[("app", "httpbin")]));
        let names = |l: &[AuthzPolicy]| l.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a.allow), ["foo/allow-get", "foo/deny-all"]);
        assert_eq!(
            names(&a.deny),
            ["foo/deny-bad", "foo/ext", "istio-system/mesh-deny"]
        );
        // The bad allow rule is gone; the bad deny rule matches everything.
        assert_eq!(a.allow[0].rules.len(), 1);
        assert_eq!(a.allow[0].rules[0].to[0].ports, [8080]);
        assert_eq!(a.deny[0].rules, [AuthzRule::default()]);
        // An empty spec: ALLOW with no rules (denies all).
        assert!(a.allow[1].rules.is_empty());
        let other = idx.for_pod("foo", &labels(&[("app", "other")]));
        assert_eq!(names(&other.allow), ["foo/deny-all", "foo/sa"]);
        let src = &other.allow[1].rules[0].from[0];
        assert_eq!(src.principals, ["*/ns/bar/sa/sleep"]);
        assert_eq!(src.ip_blocks, ["10.1.2.3/32", "10.0.0.0/8"]);
        // Another namespace: only the mesh-wide policy.
        let bar = idx.for_pod("bar", &labels(&[]));
        assert!(bar.allow.is_empty());
        assert_eq!(names(&bar.deny), ["istio-system/mesh-deny"]);
    }
}
