//! Timeouts, retries, connection-pool limits and outlier detection: what a VirtualService
//! route's `timeout`/`retries` and a DestinationRule's `connectionPool`/`outlierDetection`
//! become, with Istio's defaults already filled in by mesh-control (a proxy applies these
//! values as they are; an absent limit is no limit).

use serde::{Deserialize, Serialize};

/// Envoy's `retry_on` conditions, as Istio's `retries.retryOn` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx response, a reset or disconnect before the response head, a connect
    /// failure, or a per-try timeout.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503 or 504, a connect failure, or a per-try timeout.
    GatewayError,
    /// A reset or disconnect before the response head, or a per-try timeout.
    Reset,
    /// The connection could not be made.
    ConnectFailure,
    /// 409.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// The h2 upstream refused the stream (`REFUSED_STREAM`): it never saw the request.
    RefusedStream,
    /// A status in [`RetryPolicy::retriable_status_codes`].
    RetriableStatusCodes,
    /// gRPC status in the response head: `CANCELLED` (1).
    Cancelled,
    /// `DEADLINE_EXCEEDED` (4).
    DeadlineExceeded,
    /// `INTERNAL` (13).
    Internal,
    /// `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted,
    /// `UNAVAILABLE` (14).
    Unavailable,
}

impl RetryOn {
    /// Every condition, with its name in `retryOn`.
    pub const ALL: [(RetryOn, &'static str); 12] = [
        (RetryOn::FiveXx, "5xx"),
        (RetryOn::GatewayError, "gateway-error"),
        (RetryOn::Reset, "reset"),
        (RetryOn::ConnectFailure, "connect-failure"),
        (RetryOn::Retriable4xx, "retriable-4xx"),
        (RetryOn::RefusedStream, "refused-stream"),
        (RetryOn::RetriableStatusCodes, "retriable-status-codes"),
        (RetryOn::Cancelled, "cancelled"),
        (RetryOn::DeadlineExceeded, "deadline-exceeded"),
        (RetryOn::Internal, "internal"),
        (RetryOn::ResourceExhausted, "resource-exhausted"),
        (RetryOn::Unavailable, "unavailable"),
    ];

    /// The condition named `name` in `retryOn` (exact, lower case).
    pub fn from_name(name: &str) -> Option<RetryOn> {
        RetryOn::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(r, _)| *r)
    }

    pub fn name(self) -> &'static str {
        RetryOn::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map_or("", |(_, n)| n)
    }
}

/// A route's retry policy (`retries`, or Istio's default when the route has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try (`retries.attempts`, at least 1).
    pub attempts: u32,
    /// `perTryTimeout`; `None`: each try may take what is left of the route's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// When to retry; empty: never.
    pub retry_on: Vec<RetryOn>,
    /// Statuses retried under [`RetryOn::RetriableStatusCodes`] (`retryOn: "503"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// Retry on another endpoint than those already tried, when there is one
    /// (Envoy's `previous_hosts`; Istio's `retryIgnorePreviousHosts`, default true).
    pub avoid_previous_hosts: bool,
    /// `backoff`: the base of the jittered exponential pause between tries (at most ten
    /// times it); `None`: Envoy's 25 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}

/// `trafficPolicy.connectionPool` for one cluster, per client proxy. `None`: no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`: upstream connections to all the cluster's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `tcp.connectTimeout` (else the proxy's `--connect-timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// `tcp.idleTimeout`: a TCP (L4) connection with no bytes either way for this long is
    /// closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_idle_timeout_ms: Option<u64>,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`: requests in flight to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// `http.maxRequestsPerConnection` (1: no keep-alive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxRetries`: retries in flight to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// `http.idleTimeout`: an upstream HTTP connection idle this long is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_idle_timeout_ms: Option<u64>,
}

impl ConnectionPool {
    pub fn is_unlimited(&self) -> bool {
        *self == ConnectionPool::default()
    }
}

/// `trafficPolicy.outlierDetection`, with Istio's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (and, unless split, local-origin failures) that eject
    /// an endpoint; 0: off. Istio's default 5.
    pub consecutive_5xx_errors: u32,
    /// Consecutive 502/503/504 (and, unless split, local-origin failures); 0: off
    /// (the default).
    pub consecutive_gateway_errors: u32,
    /// `splitExternalLocalOriginErrors`: connect failures, resets and timeouts count
    /// only towards [`OutlierDetection::consecutive_local_origin_failures`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_external_local_origin_errors: bool,
    /// Used when split; Istio's default 5.
    pub consecutive_local_origin_failures: u32,
    /// `interval` (default 10 s): an ejection ends at the first multiple of it, counted
    /// from the ejection, at or after the ejection time.
    pub interval_ms: u64,
    /// `baseEjectionTime` (default 30 s), times the number of times the endpoint was
    /// ejected (capped at 300 s, as Envoy does).
    pub base_ejection_time_ms: u64,
    /// `maxEjectionPercent` (default 10): an ejection that would take more than this
    /// share of the endpoints out does not happen.
    pub max_ejection_percent: u32,
    /// `minHealthPercent` (default 0): below this share of endpoints in rotation,
    /// ejections are ignored (Envoy's panic mode); 0: never.
    pub min_health_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failures: 5,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_names_round_trip() {
        for (r, n) in RetryOn::ALL {
            assert_eq!(RetryOn::from_name(n), Some(r));
            assert_eq!(r.name(), n);
            assert_eq!(serde_json::to_string(&r).ok(), Some(format!("\"{n}\"")));
        }
        assert_eq!(RetryOn::from_name("5XX"), None);
    }
}
