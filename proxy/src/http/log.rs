//! The per-request access-log line: one JSON object with Envoy's usual fields, handed
//! to a [`LogSink`] when the request ends. Built only when a sink is set. Every key is
//! always present (`null` when it does not apply); with mTLS the peers' verified SPIFFE
//! ids are `downstream_peer_uri_san` (inbound) and `upstream_peer_uri_san` (outbound),
//! as Envoy's `%DOWNSTREAM_PEER_URI_SAN%` / `%UPSTREAM_PEER_URI_SAN%`, and a failed
//! upstream handshake is `upstream_transport_failure_reason`, as Istio's default JSON
//! format names it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::direction::Direction;

/// Where access-log lines go: a function given one JSON object per request (no
/// newline). The flow passes one when `--access-log json` is on, e.g. [`stdout_sink`].
#[derive(Clone)]
pub struct LogSink(Arc<dyn Fn(&str) + Send + Sync>);

impl LogSink {
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> LogSink {
        LogSink(Arc::new(f))
    }

    /// Lines kept in memory (for tests).
    pub fn capture() -> (LogSink, Arc<std::sync::Mutex<Vec<String>>>) {
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = lines.clone();
        let sink = LogSink::new(move |l: &str| {
            keep.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(l.to_owned());
        });
        (sink, lines)
    }

    pub fn write(&self, line: &str) {
        (self.0)(line)
    }
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

/// Lines on stdout, one per request.
pub fn stdout_sink() -> LogSink {
    LogSink::new(|line: &str| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.write_all(b"\n");
    })
}

/// What the log line says about a request besides its outcome; filled at request start.
#[derive(Debug, Default)]
pub(crate) struct LogFields {
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub authority: String,
    pub request_id: String,
    pub user_agent: Option<String>,
    pub downstream_peer: Option<SocketAddr>,
    pub route_name: Option<String>,
    pub upstream_cluster: Option<String>,
    pub upstream_host: Option<SocketAddr>,
    /// Inbound over mTLS: the client's verified SPIFFE id.
    pub downstream_peer_uri_san: Option<Arc<str>>,
    /// Outbound over mTLS: the server's verified SPIFFE id.
    pub upstream_peer_uri_san: Option<Arc<str>>,
    /// Why the upstream TLS handshake failed (the request's last try).
    pub upstream_transport_failure_reason: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    start_time: String,
    direction: &'a str,
    method: &'a str,
    path: &'a str,
    protocol: &'a str,
    response_code: u16,
    response_flags: String,
    bytes_received: u64,
    bytes_sent: u64,
    duration: u64,
    upstream_host: Option<String>,
    upstream_cluster: Option<&'a str>,
    downstream_remote_address: Option<String>,
    authority: &'a str,
    user_agent: Option<&'a str>,
    request_id: &'a str,
    route_name: Option<&'a str>,
    downstream_peer_uri_san: Option<&'a str>,
    upstream_peer_uri_san: Option<&'a str>,
    upstream_transport_failure_reason: Option<&'a str>,
}

/// The outcome part of a line.
pub(crate) struct Outcome {
    pub started: SystemTime,
    pub direction: Direction,
    pub code: u16,
    pub flags: String,
    pub received: u64,
    pub sent: u64,
    pub duration: Duration,
}

pub(crate) fn line(f: &LogFields, o: &Outcome) -> String {
    let l = Line {
        start_time: rfc3339_millis(o.started),
        direction: o.direction.as_str(),
        method: &f.method,
        path: &f.path,
        protocol: f.protocol,
        response_code: o.code,
        response_flags: o.flags.clone(),
        bytes_received: o.received,
        bytes_sent: o.sent,
        duration: o.duration.as_millis() as u64,
        upstream_host: f.upstream_host.map(|a| a.to_string()),
        upstream_cluster: f.upstream_cluster.as_deref(),
        downstream_remote_address: f.downstream_peer.map(|a| a.to_string()),
        authority: &f.authority,
        user_agent: f.user_agent.as_deref(),
        request_id: &f.request_id,
        route_name: f.route_name.as_deref(),
        downstream_peer_uri_san: f.downstream_peer_uri_san.as_deref(),
        upstream_peer_uri_san: f.upstream_peer_uri_san.as_deref(),
        upstream_transport_failure_reason: f.upstream_transport_failure_reason.as_deref(),
    };
    serde_json::to_string(&l).unwrap_or_default()
}

/// `2024-05-06T07:08:09.123Z` (UTC), as Envoy's `%START_TIME%`.
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // leap year, Feb 29
        assert_eq!(rfc3339_millis(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn line_is_json_with_escaping() {
        let f = LogFields {
            method: "GET".into(),
            path: "/a\"b".into(),
            protocol: "HTTP/1.1",
            authority: "reviews:9080".into(),
            request_id: "id-1".into(),
            route_name: Some("r1".into()),
            upstream_host: Some("10.0.0.1:9080".parse().unwrap()),
            ..Default::default()
        };
        let o = Outcome {
            started: UNIX_EPOCH,
            direction: Direction::Outbound,
            code: 200,
            flags: "-".into(),
            received: 1,
            sent: 2,
            duration: Duration::from_millis(3),
        };
        let v: serde_json::Value = serde_json::from_str(&line(&f, &o)).unwrap();
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["upstream_host"], "10.0.0.1:9080");
        assert_eq!(v["route_name"], "r1");
        assert_eq!(v["duration"], 3);
        assert_eq!(v["direction"], "outbound");
        assert!(v["upstream_peer_uri_san"].is_null());
        let f = LogFields {
            downstream_peer_uri_san: Some(Arc::from("spiffe://cluster.local/ns/foo/sa/sleep")),
            ..f
        };
        let v: serde_json::Value = serde_json::from_str(&line(&f, &o)).unwrap();
        assert_eq!(
            v["downstream_peer_uri_san"],
            "spiffe://cluster.local/ns/foo/sa/sleep"
        );
    }
}
