//! `DestinationRule`: `host`, `exportTo`, `workloadSelector`, `subsets[]` and the load
//! balancer of `trafficPolicy` (top level, per port, per subset). The other policy fields
//! (`connectionPool`, `outlierDetection`, `tls`, `loadBalancer.consistentHash`, ...) are
//! not declared, so they parse and are ignored.

use serde::Deserialize;
use serde_json::Value;

use super::{Labels, Meta, ParseError, PortSelector, nullable, parse_meta, parse_spec};

pub const KIND: &str = "DestinationRule";

/// One DestinationRule object.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRule {
    pub meta: Meta,
    pub spec: DestinationRuleSpec,
}

impl DestinationRule {
    /// From the API server's JSON (any served version).
    pub fn from_json(obj: &Value) -> Result<DestinationRule, ParseError> {
        let meta = parse_meta(KIND, obj)?;
        let spec = parse_spec(KIND, &meta, obj)?;
        Ok(DestinationRule { meta, spec })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DestinationRuleSpec {
    #[serde(deserialize_with = "nullable")]
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(deserialize_with = "nullable")]
    pub subsets: Vec<Subset>,
    #[serde(deserialize_with = "nullable")]
    pub export_to: Vec<String>,
    pub workload_selector: Option<WorkloadSelector>,
}

/// `trafficPolicy` (top level or a subset's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(deserialize_with = "nullable")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// `trafficPolicy.portLevelSettings[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancerSettings>,
}

/// `loadBalancer`: only `simple` is read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancerSettings {
    /// `LEAST_REQUEST`, `LEAST_CONN`, `ROUND_ROBIN`, `RANDOM`, `PASSTHROUGH`, `UNSPECIFIED`.
    pub simple: Option<String>,
}

/// `subsets[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Subset {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub labels: Labels,
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `workloadSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadSelector {
    #[serde(deserialize_with = "nullable")]
    pub match_labels: Labels,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_subsets_and_policies() {
        let dr = DestinationRule::from_json(&json!({
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {
                "host": "reviews",
                "trafficPolicy": {
                    "loadBalancer": {"simple": "RANDOM"},
                    "connectionPool": {"tcp": {"maxConnections": 100}},
                    "portLevelSettings": [{"port": {"number": 9080},
                                           "loadBalancer": {"simple": "ROUND_ROBIN"}}]
                },
                "subsets": [{"name": "v1", "labels": {"version": "v1"},
                             "trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"},
                                               "tls": {"mode": "ISTIO_MUTUAL"}}}]
            }
        }))
        .unwrap();
        let tp = dr.spec.traffic_policy.as_ref().unwrap();
        assert_eq!(
            tp.load_balancer.as_ref().unwrap().simple.as_deref(),
            Some("RANDOM")
        );
        assert_eq!(
            tp.port_level_settings[0].port.as_ref().unwrap().number,
            9080
        );
        assert_eq!(dr.spec.subsets[0].labels["version"], "v1");
    }

    #[test]
    fn errors_name_the_field() {
        let e = DestinationRule::from_json(&json!({
            "metadata": {"name": "r", "namespace": "n"},
            "spec": {"host": "r", "subsets": [{"name": "v1", "labels": ["version"]}]}
        }))
        .unwrap_err();
        assert_eq!(e.field, "spec.subsets[0].labels");
    }
}
