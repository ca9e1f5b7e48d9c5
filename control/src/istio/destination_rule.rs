//! `DestinationRule`: `host`, `exportTo`, `workloadSelector`, `subsets[]` and, in each
//! `trafficPolicy` (top level, per port, per subset and per port of a subset), the load
//! balancer, `connectionPool`, `outlierDetection` and `tls`. The other policy fields
//! (`loadBalancer.localityLbSetting`, `tunnel`, `proxyProtocol`, `retryBudget`,
//! `connectionPool.http.http2KeepAlive`, ...) are not declared, so they parse and are
//! ignored. Numbers are kept as `i64` and durations as text: their ranges are checked by
//! the translation.

use serde::Deserialize;
use serde_json::Value;

use super::{
    Labels, Meta, ParseError, PortSelector, int, nullable, opt_int, parse_meta, parse_spec,
};

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
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
    #[serde(deserialize_with = "nullable")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// `trafficPolicy.portLevelSettings[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

/// `trafficPolicy.tls` (`ClientTLSSettings`). With `ISTIO_MUTUAL` only `subjectAltNames`
/// and `sni` count (Istio ignores the certificate fields then); `SIMPLE` and `MUTUAL`
/// (TLS with the user's certificates) are not originated yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientTlsSettings {
    /// `DISABLE`, `SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL` (or the enum's number).
    pub mode: Option<Value>,
    #[serde(deserialize_with = "nullable")]
    pub subject_alt_names: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub sni: String,
}

/// `connectionPool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionPoolSettings {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

/// `connectionPool.tcp`. Durations are protobuf durations (`10s`, `0.5s`; `1m`, `100ms`
/// are accepted too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpSettings {
    /// `int32`; 0: unset (no limit).
    #[serde(deserialize_with = "int")]
    pub max_connections: i64,
    pub connect_timeout: Option<String>,
    /// Parsed (durations checked), not applied.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Parsed (checked), not applied.
    pub max_connection_duration: Option<String>,
    /// `0s`: no idle timeout.
    pub idle_timeout: Option<String>,
}

/// `connectionPool.tcp.tcpKeepalive`: parsed, not applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpKeepalive {
    #[serde(deserialize_with = "int")]
    pub probes: i64,
    pub time: Option<String>,
    pub interval: Option<String>,
}

/// `connectionPool.http`. The `int32` limits are 0 when unset, which Istio reads as "no
/// limit".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpSettings {
    #[serde(deserialize_with = "int")]
    pub http1_max_pending_requests: i64,
    #[serde(deserialize_with = "int")]
    pub http2_max_requests: i64,
    #[serde(deserialize_with = "int")]
    pub max_requests_per_connection: i64,
    #[serde(deserialize_with = "int")]
    pub max_retries: i64,
    pub idle_timeout: Option<String>,
    /// `DEFAULT`, `DO_NOT_UPGRADE`, `UPGRADE` (or its number): parsed, not applied.
    pub h2_upgrade_policy: Option<Value>,
    /// Parsed, not applied.
    #[serde(deserialize_with = "nullable")]
    pub use_client_protocol: bool,
    /// Parsed (checked), not applied.
    #[serde(deserialize_with = "int")]
    pub max_concurrent_streams: i64,
}

/// `outlierDetection`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    /// Deprecated `int32`; Istio ignores it (a warning at validation).
    #[serde(deserialize_with = "int")]
    pub consecutive_errors: i64,
    /// `UInt32Value`s: unset is not 0.
    #[serde(rename = "consecutive5xxErrors", deserialize_with = "opt_int")]
    pub consecutive_5xx_errors: Option<i64>,
    #[serde(deserialize_with = "opt_int")]
    pub consecutive_gateway_errors: Option<i64>,
    #[serde(deserialize_with = "opt_int")]
    pub consecutive_local_origin_failures: Option<i64>,
    #[serde(deserialize_with = "nullable")]
    pub split_external_local_origin_errors: bool,
    pub interval: Option<String>,
    pub base_ejection_time: Option<String>,
    #[serde(deserialize_with = "int")]
    pub max_ejection_percent: i64,
    #[serde(deserialize_with = "int")]
    pub min_health_percent: i64,
}

/// `loadBalancer`: `simple` or `consistentHash`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancerSettings {
    /// `LEAST_REQUEST`, `LEAST_CONN`, `ROUND_ROBIN`, `RANDOM`, `PASSTHROUGH`, `UNSPECIFIED`.
    pub simple: Option<String>,
    pub consistent_hash: Option<ConsistentHashLb>,
}

/// `loadBalancer.consistentHash`: one hash key, and the ring's size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsistentHashLb {
    pub http_header_name: Option<String>,
    pub http_cookie: Option<HttpCookie>,
    pub use_source_ip: Option<bool>,
    pub http_query_parameter_name: Option<String>,
    pub ring_hash: Option<RingHash>,
    pub maglev: Option<Maglev>,
    /// Deprecated: `ringHash.minimumRingSize`.
    #[serde(deserialize_with = "opt_int")]
    pub minimum_ring_size: Option<i64>,
}

/// `consistentHash.httpCookie`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpCookie {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub path: String,
    /// A duration; with it a missing cookie is made up (`0s`: a session cookie).
    pub ttl: Option<String>,
    /// Only checked for presence: not supported.
    #[serde(deserialize_with = "nullable")]
    pub attributes: Vec<serde_json::Value>,
}

/// `consistentHash.ringHash`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RingHash {
    #[serde(deserialize_with = "opt_int")]
    pub minimum_ring_size: Option<i64>,
}

/// `consistentHash.maglev`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Maglev {
    #[serde(deserialize_with = "opt_int")]
    pub table_size: Option<i64>,
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
    fn parses_connection_pool_and_outlier_detection() {
        let dr = DestinationRule::from_json(&json!({
            "metadata": {"name": "httpbin"},
            "spec": {
                "host": "httpbin",
                "trafficPolicy": {
                    "connectionPool": {
                        "tcp": {"maxConnections": 1, "connectTimeout": "30ms",
                                "tcpKeepalive": {"time": "7200s", "interval": "75s"},
                                "maxConnectionDuration": "1h", "idleTimeout": "0s"},
                        "http": {"http1MaxPendingRequests": "1", "maxRequestsPerConnection": 1,
                                 "http2MaxRequests": null, "idleTimeout": "1m",
                                 "h2UpgradePolicy": "UPGRADE", "useClientProtocol": false}
                    },
                    "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s",
                                         "baseEjectionTime": "3m", "maxEjectionPercent": 100,
                                         "consecutiveGatewayErrors": null},
                    "portLevelSettings": [{"port": {"number": 8000},
                                           "outlierDetection": {"consecutiveErrors": 7}}]
                },
                "subsets": [{"name": "v1", "trafficPolicy": {"portLevelSettings": [
                    {"port": {"number": 8000},
                     "connectionPool": {"tcp": {"maxConnections": -1}}}]}}]
            }
        }))
        .unwrap();
        let tp = dr.spec.traffic_policy.as_ref().unwrap();
        let cp = tp.connection_pool.as_ref().unwrap();
        let tcp = cp.tcp.as_ref().unwrap();
        assert_eq!(tcp.max_connections, 1);
        assert_eq!(tcp.idle_timeout.as_deref(), Some("0s"));
        let http = cp.http.as_ref().unwrap();
        assert_eq!(http.http1_max_pending_requests, 1);
        assert_eq!(http.http2_max_requests, 0);
        assert_eq!(http.max_requests_per_connection, 1);
        let od = tp.outlier_detection.as_ref().unwrap();
        assert_eq!(od.consecutive_5xx_errors, Some(1));
        assert_eq!(od.consecutive_gateway_errors, None);
        assert_eq!(od.base_ejection_time.as_deref(), Some("3m"));
        assert_eq!(od.max_ejection_percent, 100);
        let pls = &tp.port_level_settings[0];
        assert_eq!(
            pls.outlier_detection.as_ref().unwrap().consecutive_errors,
            7
        );
        let sub = dr.spec.subsets[0].traffic_policy.as_ref().unwrap();
        let sub_tcp = sub.port_level_settings[0].connection_pool.as_ref().unwrap();
        assert_eq!(sub_tcp.tcp.as_ref().unwrap().max_connections, -1);
        let e = DestinationRule::from_json(&json!({
            "metadata": {"name": "r"},
            "spec": {"host": "r", "trafficPolicy": {"outlierDetection": {"interval": 5}}}
        }))
        .unwrap_err();
        assert_eq!(e.field, "spec.trafficPolicy.outlierDetection.interval");
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
