//! The injector's Prometheus metrics, under the names Istio's injector exports so existing
//! dashboards keep working. One struct, created at startup, shared by every request; labels
//! come from small fixed sets (never pod names or namespaces).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_common::prom::{self, Histogram, Kind, Unit};

/// How one `/inject` request ended, as the `result` label of
/// `sidecar_injection_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    /// An AdmissionReview was answered with `allowed: true`.
    Allowed,
    /// An AdmissionReview was answered with `allowed: false` (bad annotation).
    Denied,
    /// 400: the body was not an AdmissionReview.
    BadRequest,
    /// 415: wrong Content-Type.
    UnsupportedMediaType,
    /// 413: body over the limit.
    TooLarge,
    /// 408: body not received in time.
    Timeout,
}

impl RequestResult {
    const ALL: [RequestResult; 6] = [
        RequestResult::Allowed,
        RequestResult::Denied,
        RequestResult::BadRequest,
        RequestResult::UnsupportedMediaType,
        RequestResult::TooLarge,
        RequestResult::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestResult::Allowed => "allowed",
            RequestResult::Denied => "denied",
            RequestResult::BadRequest => "bad_request",
            RequestResult::UnsupportedMediaType => "unsupported_media_type",
            RequestResult::TooLarge => "too_large",
            RequestResult::Timeout => "timeout",
        }
    }
}

/// Why a pod was not injected, as the `reason` label of `sidecar_injection_skip_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipLabel {
    /// The injection policy (labels, annotations, namespace, hostNetwork) said no.
    Policy,
    /// Already injected with the same config: nothing to change.
    Unchanged,
    /// Not a Pod, or not a CREATE.
    NotPodCreate,
}

impl SkipLabel {
    const ALL: [SkipLabel; 3] = [
        SkipLabel::Policy,
        SkipLabel::Unchanged,
        SkipLabel::NotPodCreate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipLabel::Policy => "policy",
            SkipLabel::Unchanged => "unchanged",
            SkipLabel::NotPodCreate => "not_pod_create",
        }
    }
}

/// What failed, as the `type` label of `sidecar_injection_failure_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureLabel {
    /// The request body could not be read as an AdmissionReview.
    Review,
    /// The pod asked for something invalid (a malformed annotation).
    Inject,
    /// The patch could not be serialized.
    Patch,
}

impl FailureLabel {
    const ALL: [FailureLabel; 3] = [
        FailureLabel::Review,
        FailureLabel::Inject,
        FailureLabel::Patch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureLabel::Review => "review",
            FailureLabel::Inject => "inject",
            FailureLabel::Patch => "patch",
        }
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
static BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Every metric the admission server exports.
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; RequestResult::ALL.len()],
    success: AtomicU64,
    skip: [AtomicU64; SkipLabel::ALL.len()],
    failure: [AtomicU64; FailureLabel::ALL.len()],
    time: Histogram<{ BUCKETS.len() }>,
    config_reloads_ok: AtomicU64,
    config_reloads_failed: AtomicU64,
    cert_reloads_ok: AtomicU64,
    cert_reloads_failed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Default::default(),
            success: AtomicU64::new(0),
            skip: Default::default(),
            failure: Default::default(),
            time: Histogram::new(&BUCKETS, Unit::Seconds),
            config_reloads_ok: AtomicU64::new(0),
            config_reloads_failed: AtomicU64::new(0),
            cert_reloads_ok: AtomicU64::new(0),
            cert_reloads_failed: AtomicU64::new(0),
        }
    }
}

fn index_of<T: PartialEq>(all: &[T], v: &T) -> usize {
    all.iter().position(|x| x == v).unwrap_or(0)
}

impl Metrics {
    pub fn request(&self, r: RequestResult) {
        self.requests[index_of(&RequestResult::ALL, &r)].fetch_add(1, Ordering::Relaxed);
    }
    pub fn success(&self) {
        self.success.fetch_add(1, Ordering::Relaxed);
    }
    pub fn skip(&self, r: SkipLabel) {
        self.skip[index_of(&SkipLabel::ALL, &r)].fetch_add(1, Ordering::Relaxed);
    }
    pub fn failure(&self, t: FailureLabel) {
        self.failure[index_of(&FailureLabel::ALL, &t)].fetch_add(1, Ordering::Relaxed);
    }
    pub fn observe_time(&self, d: Duration) {
        self.time.observe(d);
    }
    pub fn config_reload(&self, ok: bool) {
        let c = if ok {
            &self.config_reloads_ok
        } else {
            &self.config_reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn cert_reload(&self, ok: bool) {
        let c = if ok {
            &self.cert_reloads_ok
        } else {
            &self.cert_reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        prom::counter_family(
            &mut out,
            "sidecar_injection_requests_total",
            "Total number of sidecar injection requests, by result.",
            "result",
            RequestResult::ALL
                .iter()
                .map(|r| r.as_str())
                .zip(&self.requests),
        );
        prom::header(
            &mut out,
            "sidecar_injection_success_total",
            "Total number of successful sidecar injections.",
            Kind::Counter,
        );
        prom::sample(
            &mut out,
            "sidecar_injection_success_total",
            "",
            self.success.load(Ordering::Relaxed),
        );
        prom::counter_family(
            &mut out,
            "sidecar_injection_skip_total",
            "Total number of skipped sidecar injections, by reason.",
            "reason",
            SkipLabel::ALL.iter().map(|r| r.as_str()).zip(&self.skip),
        );
        prom::counter_family(
            &mut out,
            "sidecar_injection_failure_total",
            "Total number of failed sidecar injections, by type.",
            "type",
            FailureLabel::ALL
                .iter()
                .map(|t| t.as_str())
                .zip(&self.failure),
        );
        prom::header(
            &mut out,
            "sidecar_injection_time_seconds",
            "Time taken to answer an injection request.",
            Kind::Histogram,
        );
        self.time
            .write(&mut out, "sidecar_injection_time_seconds", "");
        for (name, help, ok, failed) in [
            (
                "mesh_webhook_config_reloads_total",
                "Injection config reloads from disk, by result.",
                &self.config_reloads_ok,
                &self.config_reloads_failed,
            ),
            (
                "mesh_webhook_cert_reloads_total",
                "Serving certificate reloads from disk, by result.",
                &self.cert_reloads_ok,
                &self.cert_reloads_failed,
            ),
        ] {
            prom::counter_family(
                &mut out,
                name,
                help,
                "result",
                [("ok", ok), ("failed", failed)],
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("series {series} missing in\n{text}"))
            .to_string()
    }

    #[test]
    fn counters_and_histogram_render_with_istio_names() {
        let m = Metrics::default();
        m.request(RequestResult::Allowed);
        m.request(RequestResult::Allowed);
        m.request(RequestResult::TooLarge);
        m.success();
        m.skip(SkipLabel::Policy);
        m.failure(FailureLabel::Inject);
        m.observe_time(Duration::from_micros(700));
        m.observe_time(Duration::from_millis(30));
        let t = m.render();
        assert_eq!(
            value(&t, "sidecar_injection_requests_total{result=\"allowed\"}"),
            "2"
        );
        assert_eq!(
            value(&t, "sidecar_injection_requests_total{result=\"too_large\"}"),
            "1"
        );
        assert_eq!(
            value(&t, "sidecar_injection_requests_total{result=\"denied\"}"),
            "0"
        );
        assert_eq!(value(&t, "sidecar_injection_success_total"), "1");
        assert_eq!(
            value(&t, "sidecar_injection_skip_total{reason=\"policy\"}"),
            "1"
        );
        assert_eq!(
            value(&t, "sidecar_injection_failure_total{type=\"inject\"}"),
            "1"
        );
        assert_eq!(
            value(&t, "sidecar_injection_time_seconds_bucket{le=\"0.0005\"}"),
            "0"
        );
        assert_eq!(
            value(&t, "sidecar_injection_time_seconds_bucket{le=\"0.001\"}"),
            "1"
        );
        assert_eq!(
            value(&t, "sidecar_injection_time_seconds_bucket{le=\"0.05\"}"),
            "2"
        );
        assert_eq!(
            value(&t, "sidecar_injection_time_seconds_bucket{le=\"+Inf\"}"),
            "2"
        );
        assert_eq!(value(&t, "sidecar_injection_time_seconds_count"), "2");
        let sum: f64 = value(&t, "sidecar_injection_time_seconds_sum")
            .parse()
            .unwrap();
        assert!((sum - 0.0307).abs() < 1e-9, "{sum}");
    }

    /// The whole exposition, byte for byte as it was before it moved onto
    /// `mesh_common::prom` (dashboards and scrapers parse it).
    #[test]
    fn render_is_byte_identical() {
        let m = Metrics::default();
        m.request(RequestResult::Allowed);
        m.request(RequestResult::Denied);
        m.request(RequestResult::Timeout);
        m.success();
        m.skip(SkipLabel::Unchanged);
        m.failure(FailureLabel::Patch);
        m.observe_time(Duration::from_micros(700));
        m.observe_time(Duration::from_millis(30));
        m.observe_time(Duration::from_secs(3));
        m.config_reload(true);
        m.cert_reload(false);
        let want = "\
# HELP sidecar_injection_requests_total Total number of sidecar injection requests, by result.\n\
# TYPE sidecar_injection_requests_total counter\n\
sidecar_injection_requests_total{result=\"allowed\"} 1\n\
sidecar_injection_requests_total{result=\"denied\"} 1\n\
sidecar_injection_requests_total{result=\"bad_request\"} 0\n\
sidecar_injection_requests_total{result=\"unsupported_media_type\"} 0\n\
sidecar_injection_requests_total{result=\"too_large\"} 0\n\
sidecar_injection_requests_total{result=\"timeout\"} 1\n\
# HELP sidecar_injection_success_total Total number of successful sidecar injections.\n\
# TYPE sidecar_injection_success_total counter\n\
sidecar_injection_success_total 1\n\
# HELP sidecar_injection_skip_total Total number of skipped sidecar injections, by reason.\n\
# TYPE sidecar_injection_skip_total counter\n\
sidecar_injection_skip_total{reason=\"policy\"} 0\n\
sidecar_injection_skip_total{reason=\"unchanged\"} 1\n\
sidecar_injection_skip_total{reason=\"not_pod_create\"} 0\n\
# HELP sidecar_injection_failure_total Total number of failed sidecar injections, by type.\n\
# TYPE sidecar_injection_failure_total counter\n\
sidecar_injection_failure_total{type=\"review\"} 0\n\
sidecar_injection_failure_total{type=\"inject\"} 0\n\
sidecar_injection_failure_total{type=\"patch\"} 1\n\
# HELP sidecar_injection_time_seconds Time taken to answer an injection request.\n\
# TYPE sidecar_injection_time_seconds histogram\n\
sidecar_injection_time_seconds_bucket{le=\"0.0005\"} 0\n\
sidecar_injection_time_seconds_bucket{le=\"0.001\"} 1\n\
sidecar_injection_time_seconds_bucket{le=\"0.0025\"} 1\n\
sidecar_injection_time_seconds_bucket{le=\"0.005\"} 1\n\
sidecar_injection_time_seconds_bucket{le=\"0.01\"} 1\n\
sidecar_injection_time_seconds_bucket{le=\"0.025\"} 1\n\
sidecar_injection_time_seconds_bucket{le=\"0.05\"} 2\n\
sidecar_injection_time_seconds_bucket{le=\"0.1\"} 2\n\
sidecar_injection_time_seconds_bucket{le=\"0.25\"} 2\n\
sidecar_injection_time_seconds_bucket{le=\"0.5\"} 2\n\
sidecar_injection_time_seconds_bucket{le=\"1\"} 2\n\
sidecar_injection_time_seconds_bucket{le=\"2.5\"} 2\n\
sidecar_injection_time_seconds_bucket{le=\"+Inf\"} 3\n\
sidecar_injection_time_seconds_sum 3.0307\n\
sidecar_injection_time_seconds_count 3\n\
# HELP mesh_webhook_config_reloads_total Injection config reloads from disk, by result.\n\
# TYPE mesh_webhook_config_reloads_total counter\n\
mesh_webhook_config_reloads_total{result=\"ok\"} 1\n\
mesh_webhook_config_reloads_total{result=\"failed\"} 0\n\
# HELP mesh_webhook_cert_reloads_total Serving certificate reloads from disk, by result.\n\
# TYPE mesh_webhook_cert_reloads_total counter\n\
mesh_webhook_cert_reloads_total{result=\"ok\"} 0\n\
mesh_webhook_cert_reloads_total{result=\"failed\"} 1\n\
";
        assert_eq!(m.render(), want);
    }
}
