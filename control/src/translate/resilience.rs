//! Timeouts, retries, connection pools and outlier detection: Istio's fields as the proxy
//! takes them ([`mesh_config::resilience`]), with Istio's defaults filled in and its
//! validation's ranges checked. Pure conversions of one block each; which block applies
//! to which route or cluster is `routes`' and `policy`'s business.
//!
//! Durations are protobuf durations (`0.5s`; Go-style `100ms`, `1m`, `3m` are accepted
//! too) and, as Istio's validation (`ValidateDuration`) wants them, at least 1 ms and a
//! whole number of milliseconds; the exceptions are a route's `timeout` and
//! `tcp.idleTimeout`, where `0s` turns the timeout off. Numbers are the `int32` /
//! `uint32` of Istio's API: negative or too large values are refused, as percentages
//! above 100. A refused value is a [`Bad`]: the caller skips the rule (VirtualService)
//! or the object (DestinationRule), as Istio's validating webhook would have refused the
//! object. What is questionable but harmless is a note: reported, the rest applied.
//!
//! Retries, as Istio's `retry.ConvertPolicy` (`pilot/pkg/networking/core/route/retry`):
//! no `retries` is the default policy ([`default_retry`]); `attempts` 0 (or unset) is no
//! retries at all; else `attempts`, `perTryTimeout`, `retryIgnorePreviousHosts`
//! (default true) and `retryOn`, split on `,` and trimmed: an HTTP status (`503`, one Go's
//! `http.StatusText` knows) goes to the retriable statuses and adds
//! `retriable-status-codes`, a condition name is taken as [`RetryOn::from_name`] has it,
//! anything else is a note and left out (Istio's validation would refuse the object; the
//! rule keeps working on its other conditions). An empty `retryOn` is the default
//! policy's conditions and statuses. `retryRemoteLocalities` is parsed and ignored (no
//! localities); so is the consistent-hash exception (Istio does not avoid previous hosts
//! when the destination hashes: `consistentHash` is not translated).
//!
//! Connection pool, as Istio's `applyConnectionPool` (`cluster_traffic_policy.go`):
//! `maxConnections`, `http1MaxPendingRequests`, `http2MaxRequests`, `maxRetries` and
//! `maxRequestsPerConnection` apply when > 0 (0 is unset: no limit); `connectTimeout`,
//! `tcp.idleTimeout` (`0s`: none), `http.idleTimeout`, which defaults to `tcp.idleTimeout`
//! as in Istio. `tcpKeepalive`, `maxConnectionDuration`, `h2UpgradePolicy`,
//! `useClientProtocol` and `maxConcurrentStreams` are checked and not applied.
//!
//! Outlier detection, as Istio's `applyOutlierDetection`: [`OutlierDetection::default`]
//! for what is unset; `consecutive5xxErrors: 0` turns 5xx ejection off,
//! `consecutiveGatewayErrors` is off unless set above 0, `maxEjectionPercent: 0` is the
//! default 10 (Istio sets it only when > 0), `consecutiveLocalOriginFailures` counts only
//! with `splitExternalLocalOriginErrors` (set without it: refused, as Istio's validation
//! does; 0: the default 5). The deprecated `consecutiveErrors` is ignored with a note, as
//! Istio has ignored it since 1.7 (it only warns).

use std::time::Duration;

use mesh_config::resilience::{ConnectionPool, OutlierDetection, RetryOn, RetryPolicy};

use super::CompatibilityVersion;
use crate::istio::destination_rule::{ConnectionPoolSettings, OutlierDetection as IOutlier};
use crate::istio::virtual_service::HttpRetry;

/// A refused value: (field, what is wrong). The caller says what is skipped.
pub type Bad = (String, String);

/// Something reported that does not stop the rule or object: (field, message).
pub type Note = (String, String);

/// The first Istio release whose default retry policy leaves 503 out
/// (`EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY`, on by default from 1.24).
pub const NO_503_DEFAULT_RETRY: CompatibilityVersion = CompatibilityVersion {
    major: 1,
    minor: 24,
};

/// Istio's default retry policy: 2 retries on a connect failure, a refused stream, or
/// gRPC `unavailable` / `cancelled`, on another endpoint than those tried. With a
/// compatibility version below 1.24, also on a 503 (`retriable-status-codes` with 503),
/// as Istio did before 1.24. (Istio ≥ 1.24 also names `retriable-status-codes`, with no
/// status: a no-op without Envoy's `x-envoy-retriable-status-codes` request header, so
/// it is left out here.)
pub fn default_retry(compat: Option<CompatibilityVersion>) -> RetryPolicy {
    let with_503 = compat.is_some_and(|v| v < NO_503_DEFAULT_RETRY);
    let mut retry_on = vec![
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::Unavailable,
        RetryOn::Cancelled,
    ];
    if with_503 {
        retry_on.push(RetryOn::RetriableStatusCodes);
    }
    RetryPolicy {
        attempts: 2,
        per_try_timeout_ms: None,
        retry_on,
        retriable_status_codes: if with_503 { vec![503] } else { Vec::new() },
        avoid_previous_hosts: true,
        backoff_ms: None,
    }
}

fn parse_duration(text: &str, field: &str) -> Result<Duration, Bad> {
    mesh_common::duration::parse(text).map_err(|e| (field.to_owned(), e.to_string()))
}

/// Whole milliseconds, at least 1 (Istio's `ValidateDuration`).
fn checked_ms(d: Duration, text: &str, field: &str) -> Result<u64, Bad> {
    if d < Duration::from_millis(1) {
        return Err((
            field.to_owned(),
            format!("duration {text:?} is shorter than 1ms"),
        ));
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err((
            field.to_owned(),
            format!("duration {text:?} is not a whole number of milliseconds"),
        ));
    }
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A duration field that must be at least 1 ms, in ms.
pub fn duration_ms(text: &str, field: &str) -> Result<u64, Bad> {
    checked_ms(parse_duration(text, field)?, text, field)
}

fn opt_duration_ms(text: Option<&str>, field: &str) -> Result<Option<u64>, Bad> {
    text.map(|t| duration_ms(t, field)).transpose()
}

/// A duration where `0s` means "none" (a route's `timeout`, `tcp.idleTimeout`).
fn zero_is_none_ms(text: Option<&str>, field: &str) -> Result<Option<u64>, Bad> {
    let Some(text) = text else {
        return Ok(None);
    };
    let d = parse_duration(text, field)?;
    if d.is_zero() {
        return Ok(None);
    }
    checked_ms(d, text, field).map(Some)
}

/// `http[].timeout`: unset or `0s` is no timeout (Istio's default); else ms.
pub fn route_timeout(text: Option<&str>, field: &str) -> Result<Option<u64>, Bad> {
    zero_is_none_ms(text, field)
}

/// An `int32` that must not be negative.
fn int32(v: i64, field: &str) -> Result<u32, Bad> {
    if v < 0 {
        return Err((
            field.to_owned(),
            format!("{v} is negative (must be 0 or more)"),
        ));
    }
    i32::try_from(v)
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| (field.to_owned(), format!("{v} is out of range (int32)")))
}

/// A `uint32`.
fn uint32(v: i64, field: &str) -> Result<u32, Bad> {
    if v < 0 {
        return Err((
            field.to_owned(),
            format!("{v} is negative (must be 0 or more)"),
        ));
    }
    u32::try_from(v).map_err(|_| (field.to_owned(), format!("{v} is out of range (uint32)")))
}

/// A limit Istio applies only when > 0.
fn limit(v: i64, field: &str) -> Result<Option<u32>, Bad> {
    Ok(Some(int32(v, field)?).filter(|v| *v > 0))
}

fn percent(v: i64, field: &str) -> Result<u32, Bad> {
    let p = int32(v, field)?;
    if p > 100 {
        return Err((
            field.to_owned(),
            format!("percentage {v} is not within 0-100"),
        ));
    }
    Ok(p)
}

/// The statuses Go's `http.StatusText` names: what Istio takes as a status in `retryOn`.
fn is_http_status(code: i64) -> bool {
    matches!(
        code,
        100..=103
            | 200..=208
            | 226
            | 300..=305
            | 307
            | 308
            | 400..=418
            | 421..=426
            | 428
            | 429
            | 431
            | 451
            | 500..=508
            | 510
            | 511
    )
}

/// Conditions Istio's validation accepts that mesh-proxy does not implement.
const NOT_SUPPORTED_RETRY_ON: [&str; 4] = [
    "reset-before-request",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
];

/// `retryOn`: conditions in order, statuses in order, without duplicates.
fn parse_retry_on(text: &str, field: &str, notes: &mut Vec<Note>) -> (Vec<RetryOn>, Vec<u16>) {
    let mut on: Vec<RetryOn> = Vec::new();
    let mut codes: Vec<u16> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Ok(code) = part.parse::<i64>()
            && is_http_status(code)
            && let Ok(code) = u16::try_from(code)
        {
            if !codes.contains(&code) {
                codes.push(code);
            }
            continue;
        }
        match RetryOn::from_name(part) {
            Some(r) => {
                if !on.contains(&r) {
                    on.push(r);
                }
            }
            None => {
                let why = if NOT_SUPPORTED_RETRY_ON.contains(&part) {
                    "is not supported by mesh-proxy"
                } else {
                    "is not a retry condition or HTTP status (Istio's validation refuses it)"
                };
                notes.push((
                    field.to_owned(),
                    format!("{part:?} {why}; ignored, the rule retries on the other conditions"),
                ));
            }
        }
    }
    if !codes.is_empty() && !on.contains(&RetryOn::RetriableStatusCodes) {
        on.push(RetryOn::RetriableStatusCodes);
    }
    (on, codes)
}

/// `http[i].retries` (`rule` is `spec.http[i]`): `Ok(None)` is no retries.
pub fn retry_policy(
    retries: Option<&HttpRetry>,
    default: &RetryPolicy,
    rule: &str,
    notes: &mut Vec<Note>,
) -> Result<Option<RetryPolicy>, Bad> {
    let Some(r) = retries else {
        return Ok(Some(default.clone()));
    };
    let f = format!("{rule}.retries");
    let attempts = int32(r.attempts, &format!("{f}.attempts"))?;
    let per_try_timeout_ms =
        opt_duration_ms(r.per_try_timeout.as_deref(), &format!("{f}.perTryTimeout"))?;
    let backoff_ms = opt_duration_ms(r.backoff.as_deref(), &format!("{f}.backoff"))?;
    if attempts == 0 {
        if per_try_timeout_ms.is_some()
            || !r.retry_on.is_empty()
            || r.retry_remote_localities.is_some()
            || backoff_ms.is_some()
        {
            notes.push((
                format!("{f}.attempts"),
                "0 or unset: the rule has no retries, and its perTryTimeout, retryOn, \
                 retryRemoteLocalities and backoff are ignored (Istio's validation refuses \
                 them with 0 attempts)"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let (retry_on, retriable_status_codes) = if r.retry_on.is_empty() {
        (
            default.retry_on.clone(),
            default.retriable_status_codes.clone(),
        )
    } else {
        parse_retry_on(&r.retry_on, &format!("{f}.retryOn"), notes)
    };
    Ok(Some(RetryPolicy {
        attempts,
        per_try_timeout_ms,
        retry_on,
        retriable_status_codes,
        avoid_previous_hosts: r.retry_ignore_previous_hosts.unwrap_or(true),
        backoff_ms,
    }))
}

/// One `connectionPool` block (`field` is its path).
pub fn connection_pool(cp: &ConnectionPoolSettings, field: &str) -> Result<ConnectionPool, Bad> {
    let mut out = ConnectionPool::default();
    if let Some(t) = &cp.tcp {
        let f = |name: &str| format!("{field}.tcp.{name}");
        out.max_connections = limit(t.max_connections, &f("maxConnections"))?;
        out.connect_timeout_ms =
            opt_duration_ms(t.connect_timeout.as_deref(), &f("connectTimeout"))?;
        if let Some(k) = &t.tcp_keepalive {
            uint32(k.probes, &f("tcpKeepalive.probes"))?;
            opt_duration_ms(k.time.as_deref(), &f("tcpKeepalive.time"))?;
            opt_duration_ms(k.interval.as_deref(), &f("tcpKeepalive.interval"))?;
        }
        opt_duration_ms(
            t.max_connection_duration.as_deref(),
            &f("maxConnectionDuration"),
        )?;
        out.tcp_idle_timeout_ms = zero_is_none_ms(t.idle_timeout.as_deref(), &f("idleTimeout"))?;
    }
    let mut http_idle_set = false;
    if let Some(h) = &cp.http {
        let f = |name: &str| format!("{field}.http.{name}");
        out.max_pending_requests =
            limit(h.http1_max_pending_requests, &f("http1MaxPendingRequests"))?;
        out.max_requests = limit(h.http2_max_requests, &f("http2MaxRequests"))?;
        out.max_requests_per_connection = limit(
            h.max_requests_per_connection,
            &f("maxRequestsPerConnection"),
        )?;
        out.max_retries = limit(h.max_retries, &f("maxRetries"))?;
        int32(h.max_concurrent_streams, &f("maxConcurrentStreams"))?;
        if let Some(idle) = &h.idle_timeout {
            out.http_idle_timeout_ms = Some(duration_ms(idle, &f("idleTimeout"))?);
            http_idle_set = true;
        }
    }
    if !http_idle_set {
        // Istio: without `http.idleTimeout`, `tcp.idleTimeout` is the HTTP one too.
        out.http_idle_timeout_ms = out.tcp_idle_timeout_ms;
    }
    Ok(out)
}

/// One `outlierDetection` block (`field` is its path).
pub fn outlier_detection(
    od: &IOutlier,
    field: &str,
    notes: &mut Vec<Note>,
) -> Result<OutlierDetection, Bad> {
    let f = |name: &str| format!("{field}.{name}");
    let d = OutlierDetection::default();
    if od.consecutive_errors != 0 {
        notes.push((
            f("consecutiveErrors"),
            "deprecated and ignored, as Istio ignores it: use consecutive5xxErrors or \
             consecutiveGatewayErrors"
                .into(),
        ));
    }
    let opt_u32 = |v: Option<i64>, name: &str| v.map(|v| uint32(v, &f(name))).transpose();
    let split = od.split_external_local_origin_errors;
    let local = opt_u32(
        od.consecutive_local_origin_failures,
        "consecutiveLocalOriginFailures",
    )?;
    if !split && local.is_some_and(|v| v > 0) {
        return Err((
            f("consecutiveLocalOriginFailures"),
            "set while splitExternalLocalOriginErrors is false".into(),
        ));
    }
    let max_ejection = percent(od.max_ejection_percent, &f("maxEjectionPercent"))?;
    Ok(OutlierDetection {
        consecutive_5xx_errors: opt_u32(od.consecutive_5xx_errors, "consecutive5xxErrors")?
            .unwrap_or(d.consecutive_5xx_errors),
        consecutive_gateway_errors: opt_u32(
            od.consecutive_gateway_errors,
            "consecutiveGatewayErrors",
        )?
        .unwrap_or(d.consecutive_gateway_errors),
        split_external_local_origin_errors: split,
        consecutive_local_origin_failures: local
            .filter(|v| *v > 0)
            .unwrap_or(d.consecutive_local_origin_failures),
        interval_ms: opt_duration_ms(od.interval.as_deref(), &f("interval"))?
            .unwrap_or(d.interval_ms),
        base_ejection_time_ms: opt_duration_ms(
            od.base_ejection_time.as_deref(),
            &f("baseEjectionTime"),
        )?
        .unwrap_or(d.base_ejection_time_ms),
        max_ejection_percent: if max_ejection == 0 {
            d.max_ejection_percent
        } else {
            max_ejection
        },
        min_health_percent: percent(od.min_health_percent, &f("minHealthPercent"))?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{Value, json};

    fn retry(v: Value) -> HttpRetry {
        serde_json::from_value(v).unwrap()
    }

    fn convert(v: Value) -> (Result<Option<RetryPolicy>, Bad>, Vec<Note>) {
        let mut notes = Vec::new();
        let r = retry_policy(
            Some(&retry(v)),
            &default_retry(None),
            "spec.http[0]",
            &mut notes,
        );
        (r, notes)
    }

    #[test]
    fn the_default_policy_follows_the_compatibility_version() {
        let new = default_retry(None);
        assert_eq!(new.attempts, 2);
        assert!(new.avoid_previous_hosts);
        assert!(new.retriable_status_codes.is_empty());
        assert!(!new.retry_on.contains(&RetryOn::RetriableStatusCodes));
        let v = |major, minor| Some(CompatibilityVersion { major, minor });
        assert_eq!(default_retry(v(1, 24)), new);
        assert_eq!(default_retry(v(2, 0)), new);
        for old in [v(1, 23), v(1, 0), v(0, 9)] {
            let p = default_retry(old);
            assert_eq!(p.retriable_status_codes, vec![503]);
            assert_eq!(p.retry_on.last(), Some(&RetryOn::RetriableStatusCodes));
            assert_eq!(p.retry_on[..4], new.retry_on[..]);
        }
    }

    #[test]
    fn retries_as_convert_policy() {
        let d = default_retry(None);
        let mut notes = Vec::new();
        assert_eq!(
            retry_policy(None, &d, "spec.http[0]", &mut notes),
            Ok(Some(d.clone()))
        );
        // `retries` present without attempts: 0, no retries at all.
        assert_eq!(convert(json!({})), (Ok(None), vec![]));
        assert_eq!(convert(json!({"attempts": 0})), (Ok(None), vec![]));
        let (r, notes) = convert(json!({"perTryTimeout": "1s"}));
        assert_eq!(r, Ok(None));
        assert_eq!(notes[0].0, "spec.http[0].retries.attempts");
        // Empty retryOn: the default's conditions.
        let (r, _) = convert(json!({"attempts": 5}));
        let p = r.unwrap().unwrap();
        assert_eq!((p.attempts, &p.retry_on), (5, &d.retry_on));
        assert!(p.avoid_previous_hosts);
        let (r, notes) = convert(json!({
            "attempts": 3, "perTryTimeout": "2s",
            "retryOn": " 5xx, 503 ,gateway-error,503,,reset-before-request,bogus,999",
            "retryIgnorePreviousHosts": false
        }));
        let p = r.unwrap().unwrap();
        assert_eq!(p.per_try_timeout_ms, Some(2000));
        assert_eq!(
            p.retry_on,
            vec![
                RetryOn::FiveXx,
                RetryOn::GatewayError,
                RetryOn::RetriableStatusCodes
            ]
        );
        assert_eq!(p.retriable_status_codes, vec![503]);
        assert!(!p.avoid_previous_hosts);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].1.contains("not supported"), "{notes:?}");
        assert!(notes[2].1.contains("\"999\""), "{notes:?}");
        // Named explicitly: not added twice.
        let (r, _) = convert(json!({"attempts": 1, "retryOn": "retriable-status-codes,502"}));
        let p = r.unwrap().unwrap();
        assert_eq!(p.retry_on, vec![RetryOn::RetriableStatusCodes]);
        assert_eq!(p.retriable_status_codes, vec![502]);
    }

    #[test]
    fn bad_retries_are_refused() {
        let field = |v: Value| convert(v).0.unwrap_err().0;
        assert_eq!(
            field(json!({"attempts": -1})),
            "spec.http[0].retries.attempts"
        );
        assert_eq!(
            field(json!({"attempts": 3_000_000_000i64})),
            "spec.http[0].retries.attempts"
        );
        for t in ["0s", "0.5ms", "1.5ms", "soon", "-1s"] {
            assert_eq!(
                field(json!({"attempts": 1, "perTryTimeout": t})),
                "spec.http[0].retries.perTryTimeout",
                "{t}"
            );
        }
    }

    #[test]
    fn timeouts() {
        let t = |s| route_timeout(Some(s), "t");
        assert_eq!(route_timeout(None, "t"), Ok(None));
        assert_eq!(t("0s"), Ok(None));
        assert_eq!(t("0.5s"), Ok(Some(500)));
        assert_eq!(t("1m"), Ok(Some(60_000)));
        assert_eq!(t("100ms"), Ok(Some(100)));
        assert!(t("0.0001s").unwrap_err().1.contains("shorter than 1ms"));
        assert!(t("1.0005s").unwrap_err().1.contains("whole number"));
        assert!(t("ten").is_err());
    }

    fn pool(v: Value) -> Result<ConnectionPool, Bad> {
        connection_pool(&serde_json::from_value(v).unwrap(), "p")
    }

    #[test]
    fn connection_pools() {
        assert_eq!(pool(json!({})), Ok(ConnectionPool::default()));
        // Istio's 0: unset.
        assert_eq!(
            pool(json!({"tcp": {"maxConnections": 0},
                        "http": {"http1MaxPendingRequests": 0, "http2MaxRequests": 0,
                                 "maxRequestsPerConnection": 0, "maxRetries": 0}})),
            Ok(ConnectionPool::default())
        );
        assert_eq!(
            pool(
                json!({"tcp": {"maxConnections": 1, "connectTimeout": "30ms",
                                "idleTimeout": "5m"},
                        "http": {"http1MaxPendingRequests": 2, "http2MaxRequests": 3,
                                 "maxRequestsPerConnection": 4, "maxRetries": 5}})
            ),
            Ok(ConnectionPool {
                max_connections: Some(1),
                connect_timeout_ms: Some(30),
                tcp_idle_timeout_ms: Some(300_000),
                max_pending_requests: Some(2),
                max_requests: Some(3),
                max_requests_per_connection: Some(4),
                max_retries: Some(5),
                http_idle_timeout_ms: Some(300_000),
            })
        );
        let p = pool(json!({"tcp": {"idleTimeout": "0s"}, "http": {"idleTimeout": "1s"}})).unwrap();
        assert_eq!(
            (p.tcp_idle_timeout_ms, p.http_idle_timeout_ms),
            (None, Some(1000))
        );
        for (v, field) in [
            (
                json!({"tcp": {"maxConnections": -1}}),
                "p.tcp.maxConnections",
            ),
            (
                json!({"tcp": {"connectTimeout": "0s"}}),
                "p.tcp.connectTimeout",
            ),
            (
                json!({"tcp": {"idleTimeout": "1.5ms"}}),
                "p.tcp.idleTimeout",
            ),
            (
                json!({"tcp": {"maxConnectionDuration": "0.1ms"}}),
                "p.tcp.maxConnectionDuration",
            ),
            (
                json!({"tcp": {"tcpKeepalive": {"time": "x"}}}),
                "p.tcp.tcpKeepalive.time",
            ),
            (
                json!({"http": {"http2MaxRequests": 2_147_483_648i64}}),
                "p.http.http2MaxRequests",
            ),
            (json!({"http": {"idleTimeout": "0s"}}), "p.http.idleTimeout"),
            (
                json!({"http": {"maxConcurrentStreams": -5}}),
                "p.http.maxConcurrentStreams",
            ),
        ] {
            assert_eq!(pool(v.clone()).unwrap_err().0, field, "{v}");
        }
    }

    fn outlier(v: Value) -> (Result<OutlierDetection, Bad>, Vec<Note>) {
        let mut notes = Vec::new();
        let r = outlier_detection(&serde_json::from_value(v).unwrap(), "o", &mut notes);
        (r, notes)
    }

    #[test]
    fn outlier_detection_defaults_and_checks() {
        assert_eq!(
            outlier(json!({})),
            (Ok(OutlierDetection::default()), vec![])
        );
        let (r, _) = outlier(json!({"consecutive5xxErrors": 1, "interval": "1s",
                                    "baseEjectionTime": "3m", "maxEjectionPercent": 100}));
        assert_eq!(
            r,
            Ok(OutlierDetection {
                consecutive_5xx_errors: 1,
                interval_ms: 1000,
                base_ejection_time_ms: 180_000,
                max_ejection_percent: 100,
                ..OutlierDetection::default()
            })
        );
        let (r, _) = outlier(
            json!({"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 3,
                                    "maxEjectionPercent": 0, "minHealthPercent": 50}),
        );
        let o = r.unwrap();
        assert_eq!(
            (o.consecutive_5xx_errors, o.consecutive_gateway_errors),
            (0, 3)
        );
        assert_eq!((o.max_ejection_percent, o.min_health_percent), (10, 50));
        let (r, _) = outlier(json!({"splitExternalLocalOriginErrors": true,
                                    "consecutiveLocalOriginFailures": 0}));
        assert_eq!(r.unwrap().consecutive_local_origin_failures, 5);
        let (r, _) = outlier(json!({"splitExternalLocalOriginErrors": true,
                                    "consecutiveLocalOriginFailures": 2}));
        let o = r.unwrap();
        assert!(o.split_external_local_origin_errors);
        assert_eq!(o.consecutive_local_origin_failures, 2);
        // Deprecated, ignored as Istio does, reported.
        let (r, notes) = outlier(json!({"consecutiveErrors": 1}));
        assert_eq!(r, Ok(OutlierDetection::default()));
        assert_eq!(notes[0].0, "o.consecutiveErrors");
        for (v, field) in [
            (
                json!({"consecutive5xxErrors": -1}),
                "o.consecutive5xxErrors",
            ),
            (
                json!({"consecutiveGatewayErrors": 4_294_967_296i64}),
                "o.consecutiveGatewayErrors",
            ),
            (
                json!({"consecutiveLocalOriginFailures": 3}),
                "o.consecutiveLocalOriginFailures",
            ),
            (json!({"interval": "0s"}), "o.interval"),
            (json!({"baseEjectionTime": "3d"}), "o.baseEjectionTime"),
            (json!({"maxEjectionPercent": 101}), "o.maxEjectionPercent"),
            (json!({"minHealthPercent": -1}), "o.minHealthPercent"),
        ] {
            assert_eq!(outlier(v.clone()).0.unwrap_err().0, field, "{v}");
        }
    }
}
