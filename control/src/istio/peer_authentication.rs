//! `PeerAuthentication` (`security.istio.io`, `v1beta1` and `v1`: one schema): `selector`,
//! `mtls.mode` and `portLevelMtls`. Modes are kept as written (an unknown one is the
//! translation's to report, so the error names the field).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::destination_rule::WorkloadSelector;
use super::{Meta, ParseError, nullable, parse_meta, parse_spec};

pub const KIND: &str = "PeerAuthentication";

/// One PeerAuthentication object.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerAuthentication {
    pub meta: Meta,
    pub spec: PeerAuthenticationSpec,
}

impl PeerAuthentication {
    /// From the API server's JSON (any served version).
    pub fn from_json(obj: &Value) -> Result<PeerAuthentication, ParseError> {
        let meta = parse_meta(KIND, obj)?;
        // An empty spec (`spec: {}`) is valid: mode UNSET, inherit.
        let spec = if obj.get("spec").is_none_or(Value::is_null) {
            PeerAuthenticationSpec::default()
        } else {
            parse_spec(KIND, &meta, obj)?
        };
        Ok(PeerAuthentication { meta, spec })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<MutualTls>,
    /// Keys are port numbers written as strings (a protobuf `map<uint32, ...>` in JSON).
    #[serde(deserialize_with = "nullable")]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

/// `mtls` / a `portLevelMtls` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MutualTls {
    /// `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT` (or the enum's number); absent: UNSET.
    pub mode: Option<Value>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_istios_shapes() {
        let pa = PeerAuthentication::from_json(&json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "selector": {"matchLabels": {"app": "reviews"}},
                "mtls": {"mode": "STRICT"},
                "portLevelMtls": {"8080": {"mode": "DISABLE"}}
            }
        }))
        .unwrap();
        assert_eq!(pa.meta.namespace, "shop");
        assert_eq!(pa.spec.mtls.unwrap().mode, Some(json!("STRICT")));
        assert_eq!(pa.spec.port_level_mtls["8080"].mode, Some(json!("DISABLE")));
        let empty = PeerAuthentication::from_json(&json!({
            "metadata": {"name": "e", "namespace": "shop"}, "spec": {}
        }))
        .unwrap();
        assert_eq!(empty.spec, PeerAuthenticationSpec::default());
        let no_spec = PeerAuthentication::from_json(&json!({"metadata": {"name": "e"}})).unwrap();
        assert_eq!(no_spec.spec, PeerAuthenticationSpec::default());
        let bad = PeerAuthentication::from_json(&json!({
            "metadata": {"name": "b"}, "spec": {"portLevelMtls": []}
        }))
        .unwrap_err();
        assert_eq!(bad.field, "spec.portLevelMtls");
    }
}
