//! AuthorizationPolicy as data: the policies that apply to one workload, evaluated by its
//! proxy on the inbound side, with Istio's semantics:
//!
//! - a request that any `deny` policy matches is denied (403 for HTTP, the connection
//!   closed for TCP); else, when there is no `allow` policy, it is allowed; else it is
//!   allowed only if some `allow` policy matches;
//! - a policy matches when any of its rules does; a rule when each of its parts does:
//!   some `from` entry (none: any source), some `to` entry (none: any operation), every
//!   `when` condition; inside an entry every field set must match, and a field matches
//!   when any of its values does (its `not*` twin: when none does);
//! - values are Istio's: exact, `prefix*`, `*suffix`, or `*` (any non-empty value; so
//!   `principals: ["*"]` means "any mTLS-authenticated peer"); principals are written
//!   without `spiffe://` (`cluster.local/ns/default/sa/sleep`); hosts compare without
//!   case; ip blocks are CIDRs (a bare address is its /32 or /128);
//! - on a TCP connection, a rule that needs an HTTP field (`hosts`, `methods`, `paths`,
//!   `requestPrincipals`, a `request.*` condition) never matches in an `allow` policy,
//!   and in a `deny` policy that field is left out (so it denies more), as Istio does.

use serde::{Deserialize, Serialize};

/// The policies that apply to one workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<AuthzPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AuthzPolicy>,
}

impl Authorization {
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }
}

/// One AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzPolicy {
    /// `<namespace>/<name>`, for logs and the access log.
    pub name: String,
    /// No rules: the policy matches nothing (an `allow` policy without rules denies all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
}

/// One `rules[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Source>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Operation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `from[].source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// CIDRs of the connection's peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// CIDRs of the original client (`X-Forwarded-For`); the same as `ip_blocks` for a
    /// sidecar, which trusts no forwarding header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `to[].operation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Workload (container) ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// `when[]`: `key` is one of Istio's attributes (`source.ip`, `source.namespace`,
/// `source.principal`, `remote.ip`, `destination.ip`, `destination.port`,
/// `connection.sni`, `request.headers[<name>]`, `request.auth.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

impl Condition {
    /// Whether the attribute exists only for HTTP requests.
    pub fn is_http_only(&self) -> bool {
        self.key.starts_with("request.")
    }
}

impl Source {
    pub fn has_http_fields(&self) -> bool {
        !self.request_principals.is_empty() || !self.not_request_principals.is_empty()
    }
}

impl Operation {
    pub fn has_http_fields(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }
}

/// Istio's value match: exact, `prefix*`, `*suffix`, or `*` for any non-empty value.
pub fn value_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_value_patterns() {
        assert!(value_matches("*", "cluster.local/ns/a/sa/b"));
        assert!(!value_matches("*", ""));
        assert!(value_matches("/api/*", "/api/v1"));
        assert!(value_matches("/api/*", "/api/"));
        assert!(!value_matches("/api/*", "/apis"));
        assert!(value_matches("*/sa/sleep", "cluster.local/ns/a/sa/sleep"));
        assert!(value_matches("GET", "GET"));
        assert!(!value_matches("GET", "get"));
    }

    #[test]
    fn wire_shape() {
        let a = Authorization {
            deny: vec![],
            allow: vec![AuthzPolicy {
                name: "foo/httpbin".into(),
                rules: vec![AuthzRule {
                    from: vec![Source {
                        principals: vec!["cluster.local/ns/foo/sa/sleep".into()],
                        ..Source::default()
                    }],
                    to: vec![Operation {
                        methods: vec!["GET".into()],
                        ports: vec![8080],
                        ..Operation::default()
                    }],
                    when: vec![],
                }],
            }],
        };
        let json = serde_json::to_string(&a).expect("serializes");
        assert_eq!(
            json,
            r#"{"allow":[{"name":"foo/httpbin","rules":[{"from":[{"principals":["cluster.local/ns/foo/sa/sleep"]}],"to":[{"ports":[8080],"methods":["GET"]}]}]}]}"#
        );
        assert_eq!(
            serde_json::from_str::<Authorization>(&json).expect("parses"),
            a
        );
    }
}
