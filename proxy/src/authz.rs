//! AuthorizationPolicy on the inbound side: [`Policies::evaluate`] decides one connection
//! or request against the [`Authorization`] mesh-control computed for this workload,
//! compiled once when the config arrives ([`Policies::compile`]: every CIDR parsed, a bad
//! one refuses the config, so a rule can never be silently weakened by a block that does
//! not parse). Pure: the flows gather the attributes ([`Attributes`]) and act on the
//! [`Decision`] (403 with `RBAC: access denied` for HTTP, a closed connection for TCP, as
//! Istio's sidecars do). The semantics are written in `mesh_config::authz`.

use std::net::IpAddr;
use std::ops::Deref;

use ipnet::IpNet;
use mesh_config::authz::{AuthzPolicy, AuthzRule, Condition, Operation, Source, value_matches};
use mesh_config::{Authorization, ValidationError, Workload};

/// What one connection (and, for HTTP, one request) is.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    /// The peer's verified identity as a principal (`cluster.local/ns/foo/sa/sleep`);
    /// `None` without mTLS.
    pub principal: Option<&'a str>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    /// The workload port the connection was for.
    pub destination_port: u16,
    /// The TLS SNI the client sent, with mTLS.
    pub sni: Option<&'a str>,
    /// `None` for a TCP connection.
    pub http: Option<HttpAttributes<'a>>,
}

/// The request's part of the attributes.
#[derive(Debug, Clone)]
pub struct HttpAttributes<'a> {
    /// `Host` / `:authority`.
    pub host: &'a str,
    pub method: &'a str,
    /// The request target; its query is not part of what `paths` match.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// The outcome, naming the policy that decided where one did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by this DENY policy (`<ns>/<name>`).
    Denied(String),
    /// ALLOW policies exist and none matched.
    NotAllowed,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        *self == Decision::Allow
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Allow,
    Deny,
}

/// A workload as the inbound side uses it: the config as received (through `Deref`)
/// and its AuthorizationPolicies compiled.
#[derive(Debug)]
pub struct CompiledWorkload {
    workload: Workload,
    pub authz: Policies,
}

impl CompiledWorkload {
    pub fn compile(w: &Workload) -> Result<CompiledWorkload, ValidationError> {
        Ok(CompiledWorkload {
            authz: Policies::compile(&w.authorization).map_err(|why| ValidationError {
                what: format!("workload {} ({})", w.pod, w.ip),
                why,
            })?,
            workload: w.clone(),
        })
    }
}

impl Deref for CompiledWorkload {
    type Target = Workload;
    fn deref(&self) -> &Workload {
        &self.workload
    }
}

/// One workload's DENY and ALLOW policies, their CIDRs parsed.
#[derive(Debug, Default)]
pub struct Policies {
    deny: Vec<Policy>,
    allow: Vec<Policy>,
}

#[derive(Debug)]
struct Policy {
    name: String,
    rules: Vec<Rule>,
}

/// A rule with the networks of its `from` sources and `when` conditions, index for index.
#[derive(Debug)]
struct Rule {
    rule: AuthzRule,
    /// An ALLOW rule with an HTTP-only field, which never matches a TCP connection.
    needs_http: bool,
    sources: Vec<SourceNets>,
    /// `Some` for the conditions on an address (`source.ip`, `remote.ip`,
    /// `destination.ip`).
    conditions: Vec<Option<Nets>>,
}

#[derive(Debug, Default)]
struct SourceNets {
    ip: Nets,
    remote: Nets,
}

/// A pair of lists: the address must be in one of `any` (when it is not empty) and in
/// none of `none`.
#[derive(Debug, Default)]
struct Nets {
    any: Vec<IpNet>,
    none: Vec<IpNet>,
}

impl Nets {
    fn parse(any: &[String], none: &[String], field: &str) -> Result<Nets, String> {
        let list = |l: &[String], f: String| {
            l.iter()
                .map(|b| {
                    b.parse::<IpNet>()
                        .map_err(|_| format!("{f}: {b:?} is not a CIDR"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Nets {
            any: list(any, field.to_owned())?,
            none: list(none, format!("not{}", capitalize(field)))?,
        })
    }

    fn matches(&self, ip: IpAddr) -> bool {
        (self.any.is_empty() || self.any.iter().any(|n| n.contains(&ip)))
            && !self.none.iter().any(|n| n.contains(&ip))
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

impl Policy {
    fn compile(p: &AuthzPolicy, kind: Kind) -> Result<Policy, String> {
        let rules = p
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::compile(r, kind).map_err(|e| format!("{}: rules[{i}].{e}", p.name)))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            name: p.name.clone(),
            rules,
        })
    }
}

impl Rule {
    fn compile(r: &AuthzRule, kind: Kind) -> Result<Rule, String> {
        let sources = r
            .from
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let at = |e: String| format!("from[{i}].source.{e}");
                Ok(SourceNets {
                    ip: Nets::parse(&s.ip_blocks, &s.not_ip_blocks, "ipBlocks").map_err(at)?,
                    remote: Nets::parse(
                        &s.remote_ip_blocks,
                        &s.not_remote_ip_blocks,
                        "remoteIpBlocks",
                    )
                    .map_err(at)?,
                })
            })
            .collect::<Result<_, String>>()?;
        let conditions = r
            .when
            .iter()
            .enumerate()
            .map(|(i, c)| match c.key.as_str() {
                "source.ip" | "remote.ip" | "destination.ip" => {
                    Nets::parse(&c.values, &c.not_values, "values")
                        .map(Some)
                        .map_err(|e| format!("when[{i}] ({}).{e}", c.key))
                }
                _ => Ok(None),
            })
            .collect::<Result<_, String>>()?;
        let needs_http = kind == Kind::Allow
            && (r.from.iter().any(Source::has_http_fields)
                || r.to.iter().any(Operation::has_http_fields)
                || r.when.iter().any(Condition::is_http_only));
        Ok(Rule {
            rule: r.clone(),
            needs_http,
            sources,
            conditions,
        })
    }

    fn matches(&self, a: &Attributes<'_>) -> bool {
        let tcp = a.http.is_none();
        if tcp && self.needs_http {
            return false;
        }
        let r = &self.rule;
        (r.from.is_empty()
            || r.from
                .iter()
                .zip(&self.sources)
                .any(|(s, nets)| source_matches(s, nets, a)))
            && (r.to.is_empty() || r.to.iter().any(|o| operation_matches(o, a)))
            && r.when
                .iter()
                .zip(&self.conditions)
                .all(|(c, nets)| (tcp && c.is_http_only()) || condition_matches(c, nets, a))
    }
}

impl Policies {
    /// Parses every CIDR of `authz`; an error names the policy, the rule and the field.
    pub fn compile(authz: &Authorization) -> Result<Policies, String> {
        let all = |list: &[AuthzPolicy], kind| {
            list.iter()
                .map(|p| Policy::compile(p, kind))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Policies {
            deny: all(&authz.deny, Kind::Deny)?,
            allow: all(&authz.allow, Kind::Allow)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }

    /// Deny first, then allow; no ALLOW policy: allowed.
    pub fn evaluate(&self, a: &Attributes<'_>) -> Decision {
        let matches = |p: &Policy| p.rules.iter().any(|r| r.matches(a));
        if let Some(p) = self.deny.iter().find(|p| matches(p)) {
            return Decision::Denied(p.name.clone());
        }
        if self.allow.is_empty() || self.allow.iter().any(matches) {
            Decision::Allow
        } else {
            Decision::NotAllowed
        }
    }
}

/// A field: matches when unset, or when some pattern matches the value (`None`: the
/// attribute is absent, matched by no pattern).
fn any(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| value_matches(p, v)))
}

/// A `not*` field: matches when unset, or when no pattern matches the value.
fn none(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || !value.is_some_and(|v| patterns.iter().any(|p| value_matches(p, v)))
}

/// The namespace of a principal in Istio's form (`<td>/ns/<ns>/sa/<sa>`).
fn namespace_of(principal: Option<&str>) -> Option<&str> {
    let rest = principal?.split_once("/ns/")?.1;
    let (ns, sa) = rest.split_once("/sa/")?;
    (!ns.is_empty() && !sa.is_empty() && !ns.contains('/')).then_some(ns)
}

fn source_matches(s: &Source, nets: &SourceNets, a: &Attributes<'_>) -> bool {
    let ns = namespace_of(a.principal);
    let http = a.http.is_some();
    any(&s.principals, a.principal)
        && none(&s.not_principals, a.principal)
        // No RequestAuthentication: a request never has a verified JWT principal. On TCP
        // (a DENY rule) these HTTP fields are left out.
        && (!http || any(&s.request_principals, None))
        && (!http || none(&s.not_request_principals, None))
        && any(&s.namespaces, ns)
        && none(&s.not_namespaces, ns)
        && nets.ip.matches(a.source_ip)
        // No X-Forwarded-For is trusted: the original client is the peer.
        && nets.remote.matches(a.source_ip)
}

fn operation_matches(o: &Operation, a: &Attributes<'_>) -> bool {
    let port_ok = (o.ports.is_empty() || o.ports.contains(&a.destination_port))
        && !o.not_ports.contains(&a.destination_port);
    let Some(h) = &a.http else {
        // TCP (a DENY rule: HTTP fields are left out).
        return port_ok;
    };
    let host = h.host.to_ascii_lowercase();
    let host_any = |list: &[String]| {
        list.iter()
            .any(|p| value_matches(&p.to_ascii_lowercase(), &host))
    };
    let path = h.path.split_once('?').map_or(h.path, |(p, _)| p);
    port_ok
        && (o.hosts.is_empty() || host_any(&o.hosts))
        && !host_any(&o.not_hosts)
        && any(&o.methods, Some(h.method))
        && none(&o.not_methods, Some(h.method))
        && any(&o.paths, Some(path))
        && none(&o.not_paths, Some(path))
}

fn condition_matches(c: &Condition, nets: &Option<Nets>, a: &Attributes<'_>) -> bool {
    let str_cond = |v: Option<&str>| any(&c.values, v) && none(&c.not_values, v);
    if let Some(nets) = nets {
        let ip = if c.key == "destination.ip" {
            a.destination_ip
        } else {
            a.source_ip
        };
        return nets.matches(ip);
    }
    match c.key.as_str() {
        "destination.port" => str_cond(Some(&a.destination_port.to_string())),
        "source.namespace" => str_cond(namespace_of(a.principal)),
        "source.principal" => str_cond(a.principal),
        "connection.sni" => str_cond(a.sni),
        key => {
            if let (Some(name), Some(h)) = (
                key.strip_prefix("request.headers[")
                    .and_then(|k| k.strip_suffix(']')),
                &a.http,
            ) {
                let vals: Vec<&str> = h
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let hit = |list: &[String]| {
                    vals.iter()
                        .any(|v| list.iter().any(|p| value_matches(p, v)))
                };
                (c.values.is_empty() || hit(&c.values)) && !hit(&c.not_values)
            } else {
                // `request.auth.*` (no JWT is ever verified) and the experimental keys:
                // the attribute is absent.
                str_cond(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mesh_config::authz::AuthzRule;

    fn policy(name: &str, rules: Vec<AuthzRule>) -> AuthzPolicy {
        AuthzPolicy {
            name: name.into(),
            rules,
        }
    }

    fn from_principals(p: &[&str]) -> Source {
        Source {
            principals: p.iter().map(|s| (*s).into()).collect(),
            ..Source::default()
        }
    }

    fn attrs<'a>(principal: Option<&'a str>, http: Option<HttpAttributes<'a>>) -> Attributes<'a> {
        Attributes {
            principal,
            source_ip: "10.244.2.3".parse().unwrap(),
            destination_ip: "10.244.1.1".parse().unwrap(),
            destination_port: 8080,
            sni: None,
            http,
        }
    }

    fn req<'a>(method: &'a str, path: &'a str, headers: &'a http::HeaderMap) -> HttpAttributes<'a> {
        HttpAttributes {
            host: "HTTPBIN.foo:8000",
            method,
            path,
            headers,
        }
    }

    const SLEEP: &str = "cluster.local/ns/foo/sa/sleep";
    const BAR: &str = "cluster.local/ns/bar/sa/sleep";

    fn evaluate(authz: &Authorization, a: &Attributes<'_>) -> Decision {
        Policies::compile(authz).unwrap().evaluate(a)
    }

    #[test]
    fn istio_order_deny_then_allow() {
        let h = http::HeaderMap::new();
        let viewer = policy(
            "foo/viewer",
            vec![AuthzRule {
                from: vec![from_principals(&[SLEEP])],
                to: vec![Operation {
                    methods: vec!["GET".into()],
                    paths: vec!["/status/*".into(), "/get".into()],
                    hosts: vec!["httpbin.foo*".into()],
                    ..Operation::default()
                }],
                when: vec![],
            }],
        );
        let no_post_from_bar = policy(
            "istio-system/no-post",
            vec![AuthzRule {
                from: vec![Source {
                    namespaces: vec!["bar".into()],
                    ..Source::default()
                }],
                to: vec![Operation {
                    methods: vec!["POST".into()],
                    ..Operation::default()
                }],
                when: vec![],
            }],
        );
        let authz = Authorization {
            deny: vec![no_post_from_bar],
            allow: vec![viewer],
        };
        let ev = |p, m, path| evaluate(&authz, &attrs(p, Some(req(m, path, &h))));
        assert_eq!(ev(Some(SLEEP), "GET", "/get?x=1"), Decision::Allow);
        assert_eq!(ev(Some(SLEEP), "GET", "/status/418"), Decision::Allow);
        assert_eq!(ev(Some(SLEEP), "GET", "/headers"), Decision::NotAllowed);
        assert_eq!(ev(Some(SLEEP), "POST", "/get"), Decision::NotAllowed);
        assert_eq!(ev(None, "GET", "/get"), Decision::NotAllowed);
        assert_eq!(
            ev(Some(BAR), "POST", "/get"),
            Decision::Denied("istio-system/no-post".into())
        );
        // No policies: allowed; an ALLOW policy without rules: nothing is.
        assert!(evaluate(&Authorization::default(), &attrs(None, None)).allowed());
        let nothing = Authorization {
            deny: vec![],
            allow: vec![policy("foo/allow-nothing", vec![])],
        };
        assert_eq!(
            evaluate(&nothing, &attrs(Some(SLEEP), None)),
            Decision::NotAllowed
        );
        // `rules: [{}]` allows everything, a DENY with `{}` denies everything.
        let all = Authorization {
            deny: vec![],
            allow: vec![policy("foo/all", vec![AuthzRule::default()])],
        };
        assert!(evaluate(&all, &attrs(None, None)).allowed());
    }

    #[test]
    fn tcp_connections_and_http_only_fields() {
        let get_only = AuthzRule {
            to: vec![Operation {
                methods: vec!["GET".into()],
                ..Operation::default()
            }],
            ..AuthzRule::default()
        };
        // ALLOW with an HTTP field never matches TCP...
        let allow = Authorization {
            deny: vec![],
            allow: vec![policy("foo/get", vec![get_only.clone()])],
        };
        assert_eq!(
            evaluate(&allow, &attrs(Some(SLEEP), None)),
            Decision::NotAllowed
        );
        // ...and in DENY the HTTP field is left out, so it denies the connection.
        let deny = Authorization {
            deny: vec![policy("foo/no-get", vec![get_only])],
            allow: vec![],
        };
        assert_eq!(
            evaluate(&deny, &attrs(Some(SLEEP), None)),
            Decision::Denied("foo/no-get".into())
        );
        // Ports, principals, namespaces and ip blocks work on TCP.
        let port_rule = Authorization {
            deny: vec![],
            allow: vec![policy(
                "foo/port",
                vec![AuthzRule {
                    from: vec![Source {
                        namespaces: vec!["bar".into()],
                        ip_blocks: vec!["10.244.2.0/24".into()],
                        ..Source::default()
                    }],
                    to: vec![Operation {
                        ports: vec![8080],
                        ..Operation::default()
                    }],
                    when: vec![Condition {
                        key: "source.principal".into(),
                        values: vec!["*/sa/sleep".into()],
                        not_values: vec![],
                    }],
                }],
            )],
        };
        assert!(evaluate(&port_rule, &attrs(Some(BAR), None)).allowed());
        assert!(!evaluate(&port_rule, &attrs(Some(SLEEP), None)).allowed());
        let mut other_port = attrs(Some(BAR), None);
        other_port.destination_port = 9090;
        assert!(!evaluate(&port_rule, &other_port).allowed());
    }

    #[test]
    fn not_fields_and_headers() {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        let rule = AuthzRule {
            from: vec![Source {
                not_principals: vec!["*".into()],
                ..Source::default()
            }],
            when: vec![Condition {
                key: "request.headers[x-user]".into(),
                values: vec!["ali*".into()],
                not_values: vec![],
            }],
            ..AuthzRule::default()
        };
        let deny = Authorization {
            deny: vec![policy("foo/anon-alice", vec![rule])],
            allow: vec![],
        };
        // Without mTLS (no principal) and with the header: denied.
        assert!(!evaluate(&deny, &attrs(None, Some(req("GET", "/", &h)))).allowed());
        // With a principal: notPrincipals ["*"] does not match.
        assert!(evaluate(&deny, &attrs(Some(SLEEP), Some(req("GET", "/", &h)))).allowed());
        let empty = http::HeaderMap::new();
        assert!(evaluate(&deny, &attrs(None, Some(req("GET", "/", &empty)))).allowed());
    }

    #[test]
    fn address_blocks_and_conditions() {
        let deny_ip = |key: &str, values: &[&str], not_values: &[&str]| Authorization {
            deny: vec![policy(
                "foo/ip",
                vec![AuthzRule {
                    when: vec![Condition {
                        key: key.into(),
                        values: values.iter().map(|v| (*v).into()).collect(),
                        not_values: not_values.iter().map(|v| (*v).into()).collect(),
                    }],
                    ..AuthzRule::default()
                }],
            )],
            allow: vec![],
        };
        // The client is 10.244.2.3, the pod 10.244.1.1.
        let tcp = attrs(None, None);
        assert!(!evaluate(&deny_ip("source.ip", &["10.244.2.0/24"], &[]), &tcp).allowed());
        assert!(evaluate(&deny_ip("source.ip", &["10.244.1.0/24"], &[]), &tcp).allowed());
        assert!(
            evaluate(
                &deny_ip("source.ip", &["10.0.0.0/8"], &["10.244.2.3/32"]),
                &tcp
            )
            .allowed()
        );
        assert!(!evaluate(&deny_ip("destination.ip", &["10.244.1.1/32"], &[]), &tcp).allowed());
        assert!(evaluate(&deny_ip("destination.ip", &["fd00::/8"], &[]), &tcp).allowed());
        let not_blocks = Authorization {
            deny: vec![],
            allow: vec![policy(
                "foo/not-from-there",
                vec![AuthzRule {
                    from: vec![Source {
                        not_ip_blocks: vec!["10.244.2.0/24".into()],
                        ..Source::default()
                    }],
                    ..AuthzRule::default()
                }],
            )],
        };
        assert_eq!(evaluate(&not_blocks, &tcp), Decision::NotAllowed);
    }

    #[test]
    fn a_block_that_does_not_parse_refuses_the_config() {
        let bad = |src: Source, when: Vec<Condition>| Authorization {
            deny: vec![policy(
                "foo/bad",
                vec![
                    AuthzRule::default(),
                    AuthzRule {
                        from: vec![Source::default(), src],
                        when,
                        ..AuthzRule::default()
                    },
                ],
            )],
            allow: vec![],
        };
        let e = Policies::compile(&bad(
            Source {
                not_ip_blocks: vec!["10.0.0.0/8".into(), "10.1.2.3".into()],
                ..Source::default()
            },
            vec![],
        ))
        .unwrap_err();
        assert_eq!(
            e,
            "foo/bad: rules[1].from[1].source.notIpBlocks: \"10.1.2.3\" is not a CIDR"
        );
        let e = Policies::compile(&bad(
            Source::default(),
            vec![Condition {
                key: "remote.ip".into(),
                values: vec!["nowhere".into()],
                not_values: vec![],
            }],
        ))
        .unwrap_err();
        assert_eq!(
            e,
            "foo/bad: rules[1].when[0] (remote.ip).values: \"nowhere\" is not a CIDR"
        );
        // Strings elsewhere are patterns, not addresses.
        let fine = bad(
            Source::default(),
            vec![Condition {
                key: "source.principal".into(),
                values: vec!["nowhere".into()],
                not_values: vec![],
            }],
        );
        assert!(Policies::compile(&fine).is_ok());
    }
}
