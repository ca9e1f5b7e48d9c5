//! `AuthorizationPolicy` (`security.istio.io`, `v1beta1` and `v1`: one schema):
//! `selector`, `action`, `rules[].from/to/when`, and the fields that mark a policy the
//! mesh does not apply (`provider` with `CUSTOM`, `targetRef(s)`). Values are kept as
//! written; the translation checks them (ports, CIDRs, condition keys), so the error
//! names the rule and field.

use serde::Deserialize;
use serde_json::Value;

use super::destination_rule::WorkloadSelector;
use super::{Meta, ParseError, nullable, parse_meta, parse_spec};

pub const KIND: &str = "AuthorizationPolicy";

/// One AuthorizationPolicy object.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationPolicy {
    pub meta: Meta,
    pub spec: AuthorizationPolicySpec,
}

impl AuthorizationPolicy {
    /// From the API server's JSON (any served version). An empty or absent spec is an
    /// ALLOW policy without rules: it denies every request to the namespace's workloads.
    pub fn from_json(obj: &Value) -> Result<AuthorizationPolicy, ParseError> {
        let meta = parse_meta(KIND, obj)?;
        let spec = if obj.get("spec").is_none_or(Value::is_null) {
            AuthorizationPolicySpec::default()
        } else {
            parse_spec(KIND, &meta, obj)?
        };
        Ok(AuthorizationPolicy { meta, spec })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (default), `DENY`, `AUDIT`, `CUSTOM`, or the enum's number.
    pub action: Option<Value>,
    /// `None`: absent (no rules: the policy matches nothing).
    pub rules: Option<Vec<Rule>>,
    pub provider: Option<Value>,
    pub target_ref: Option<Value>,
    #[serde(deserialize_with = "nullable")]
    pub target_refs: Vec<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    #[serde(deserialize_with = "nullable")]
    pub from: Vec<From>,
    #[serde(deserialize_with = "nullable")]
    pub to: Vec<To>,
    #[serde(deserialize_with = "nullable")]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct From {
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct To {
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    #[serde(deserialize_with = "nullable")]
    pub principals: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub not_principals: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub request_principals: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub not_request_principals: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub namespaces: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub not_namespaces: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub ip_blocks: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub not_ip_blocks: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub service_accounts: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub not_service_accounts: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    #[serde(deserialize_with = "nullable")]
    pub hosts: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub not_hosts: Vec<String>,
    /// Port numbers as strings (Istio's type is `repeated string`).
    #[serde(deserialize_with = "nullable")]
    pub ports: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub not_ports: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub methods: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub not_methods: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub paths: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    #[serde(deserialize_with = "nullable")]
    pub key: String,
    #[serde(deserialize_with = "nullable")]
    pub values: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub not_values: Vec<String>,
}
