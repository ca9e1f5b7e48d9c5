//! Circuit breaking, outlier detection and retry rules: the state a cluster and its
//! endpoints keep across requests (and config updates), and the compiled policies.
//!
//! - [`ClusterState`], one per cluster name for the process (all worker threads), kept
//!   by [`super::LbStates`]: open upstream connections, requests pending a connection,
//!   requests and retries in flight, the counters an operator reads
//!   (`envoy_cluster_upstream_rq_pending_overflow`, ...) and the last limit that
//!   tripped.
//! - [`Limits`]: `connectionPool`, compiled. A request over `http1MaxPendingRequests`
//!   or `http2MaxRequests` is refused at once (503 `UO`, `x-envoy-overloaded: true`); a
//!   retry over `maxRetries` is not made (the last answer stands).
//! - [`EndpointHealth`] and [`Outlier`]: consecutive errors per endpoint, ejection at
//!   the failing answer when the threshold is reached and `maxEjectionPercent` allows,
//!   for `baseEjectionTime` × the ejection count (300 s at most), ending at a multiple of
//!   `interval` after the ejection; each `interval` an endpoint spends in rotation
//!   takes one off its ejection count.
//! - [`RetryRule`]: `retries` compiled: which outcomes are retried and the back-off
//!   (Envoy's: fully jittered, 25 ms doubling, at most 250 ms).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::time::{Duration, Instant, SystemTime};

use fastrand::Rng;
use mesh_config::{ConnectionPool, OutlierDetection, RetryOn, RetryPolicy};
use serde::Serialize;
use tokio::sync::Notify;

/// Envoy's cap on one ejection.
const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Envoy's retry back-off base where the route gives none (`retries.backoff`); the
/// cap is 10 × base.
const RETRY_BASE: Duration = Duration::from_millis(25);

/// Milliseconds since the process's first use of this clock (monotonic).
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Seconds since the Unix epoch now, for what `/debug/route` reports.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `connectionPool`, compiled: `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<Duration>,
    pub tcp_idle_timeout: Option<Duration>,
    pub max_pending: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<Duration>,
}

impl Limits {
    pub(crate) fn compile(p: &ConnectionPool) -> Limits {
        Limits {
            max_connections: p.max_connections,
            connect_timeout: p.connect_timeout_ms.map(Duration::from_millis),
            tcp_idle_timeout: p.tcp_idle_timeout_ms.map(Duration::from_millis),
            max_pending: p.max_pending_requests,
            max_requests: p.max_requests,
            max_requests_per_connection: p.max_requests_per_connection,
            max_retries: p.max_retries,
            idle_timeout: p.http_idle_timeout_ms.map(Duration::from_millis),
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// `http1MaxPendingRequests`.
    Pending,
    /// `http2MaxRequests`.
    Requests,
    /// `tcp.maxConnections` (an L4 connection refused).
    Connections,
    /// `maxRetries` (a retry not made).
    Retries,
}

impl Overflow {
    fn limit_name(self) -> &'static str {
        match self {
            Overflow::Pending => "http1MaxPendingRequests",
            Overflow::Requests => "http2MaxRequests",
            Overflow::Connections => "tcp.maxConnections",
            Overflow::Retries => "maxRetries",
        }
    }
}

/// The last time a limit refused something, for `/debug/route`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Trip {
    pub limit: &'static str,
    pub value: u32,
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
}

/// Per-cluster state shared by every worker thread. See the module docs.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub(crate) connections: AtomicU32,
    pub(crate) pending: AtomicU32,
    pub(crate) active: AtomicU32,
    pub(crate) active_retries: AtomicU32,
    pub(crate) pending_overflow: AtomicU64,
    pub(crate) cx_overflow: AtomicU64,
    pub(crate) rq_overflow: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) retry_overflow: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) ejections: AtomicU64,
    /// Signalled when a connection of the cluster is closed or goes back to its pool.
    pub(crate) freed: Notify,
    /// The limits of the latest compilation of the cluster.
    limits_seen: Mutex<Option<Limits>>,
    /// The TLS target key of the latest compilation of the cluster (0: plaintext).
    tls_seen: Mutex<Option<u64>>,
    last_trip: Mutex<Option<Trip>>,
}

impl ClusterState {
    /// Records the limits a new compilation of the cluster has; the previous ones
    /// when they differ (the caller retires what was pooled under them).
    pub(crate) fn swap_limits(&self, l: &Limits) -> Option<Limits> {
        let mut seen = self.limits_seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.replace(l.clone()) {
            Some(old) if old != *l => Some(old),
            _ => None,
        }
    }

    /// Records the TLS target key a new compilation of the cluster has; the previous
    /// one when it differs (the caller retires what was pooled under it).
    pub(crate) fn swap_tls(&self, key: u64) -> Option<u64> {
        let mut seen = self.tls_seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.replace(key) {
            Some(old) if old != key => Some(old),
            _ => None,
        }
    }

    /// The pool-key scope of connections made under `limits`: 0 (shared by every
    /// cluster without limits) or this cluster's own.
    pub(crate) fn scope(self: &Arc<Self>, limits: &Limits) -> usize {
        if *limits == Limits::default() {
            0
        } else {
            Arc::as_ptr(self) as usize
        }
    }

    /// Counts a refusal and remembers it.
    pub(crate) fn overflowed(&self, what: Overflow, limit: u32) {
        let c = match what {
            Overflow::Pending => &self.pending_overflow,
            Overflow::Requests => &self.rq_overflow,
            Overflow::Connections => &self.cx_overflow,
            Overflow::Retries => &self.retry_overflow,
        };
        c.fetch_add(1, Ordering::Relaxed);
        let at_unix = unix_now();
        *self.last_trip.lock().unwrap_or_else(|p| p.into_inner()) = Some(Trip {
            limit: what.limit_name(),
            value: limit,
            at_unix,
        });
    }

    pub fn last_trip(&self) -> Option<Trip> {
        self.last_trip
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes a slot of `counter` under `limit`; `None` when it is full.
    fn acquire(self: &Arc<Self>, which: Slot, limit: Option<u32>) -> Option<SlotGuard> {
        let counter = self.counter(which);
        match limit {
            None => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Some(max) => {
                let mut cur = counter.load(Ordering::Relaxed);
                loop {
                    if cur >= max {
                        return None;
                    }
                    match counter.compare_exchange_weak(
                        cur,
                        cur + 1,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break,
                        Err(now) => cur = now,
                    }
                }
            }
        }
        Some(SlotGuard {
            state: self.clone(),
            which,
        })
    }

    fn counter(&self, which: Slot) -> &AtomicU32 {
        match which {
            Slot::Connection => &self.connections,
            Slot::Pending => &self.pending,
            Slot::Request => &self.active,
            Slot::Retry => &self.active_retries,
        }
    }

    /// A request in flight, under `http2MaxRequests`.
    pub(crate) fn request(self: &Arc<Self>, l: &Limits) -> Result<SlotGuard, Overflow> {
        self.acquire(Slot::Request, l.max_requests)
            .ok_or(Overflow::Requests)
    }

    /// A request waiting for a connection, under `http1MaxPendingRequests`.
    pub(crate) fn pending(self: &Arc<Self>, l: &Limits) -> Result<SlotGuard, Overflow> {
        self.acquire(Slot::Pending, l.max_pending)
            .ok_or(Overflow::Pending)
    }

    /// A retry, under `maxRetries`.
    pub(crate) fn retry(self: &Arc<Self>, l: &Limits) -> Result<SlotGuard, Overflow> {
        self.acquire(Slot::Retry, l.max_retries)
            .ok_or(Overflow::Retries)
    }

    /// An upstream connection, under `tcp.maxConnections`.
    pub(crate) fn connection(self: &Arc<Self>, l: &Limits) -> Option<SlotGuard> {
        self.acquire(Slot::Connection, l.max_connections)
    }

    /// Prometheus lines for this cluster (Envoy's `envoy_cluster_*` names).
    pub(crate) fn render(&self, cluster: &str, ejected_now: u32, out: &mut String) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let g = |a: &AtomicU32| a.load(Ordering::Relaxed);
        // `upstream_cx_active` counts the connections of a cluster with
        // `tcp.maxConnections` (the ones the limit governs).
        let rows: [(&str, u64); 11] = [
            ("upstream_cx_active", u64::from(g(&self.connections))),
            ("upstream_rq_active", u64::from(g(&self.active))),
            ("upstream_rq_pending_active", u64::from(g(&self.pending))),
            ("upstream_rq_pending_overflow", n(&self.pending_overflow)),
            ("upstream_cx_overflow", n(&self.cx_overflow)),
            ("upstream_rq_overflow", n(&self.rq_overflow)),
            ("upstream_rq_retry", n(&self.retries)),
            ("upstream_rq_retry_overflow", n(&self.retry_overflow)),
            ("upstream_rq_timeout", n(&self.timeouts)),
            ("outlier_detection_ejections_active", u64::from(ejected_now)),
            (
                "outlier_detection_ejections_enforced_total",
                n(&self.ejections),
            ),
        ];
        for (name, v) in rows {
            let _ = writeln!(
                out,
                "envoy_cluster_{name}{{cluster_name=\"{cluster}\"}} {v}"
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Connection,
    Pending,
    Request,
    Retry,
}

/// A taken slot; dropping it frees the slot (and, for a connection, wakes a request
/// waiting for one).
#[derive(Debug)]
pub struct SlotGuard {
    state: Arc<ClusterState>,
    which: Slot,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.state
            .counter(self.which)
            .fetch_sub(1, Ordering::AcqRel);
        if matches!(self.which, Slot::Connection) {
            self.state.freed.notify_waiters();
        }
    }
}

/// What an exchange with one endpoint came to, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response head with this status.
    Status(u16),
    /// Connect failure, reset before the head, or a per-try timeout.
    LocalOrigin,
}

/// `outlierDetection`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub split_local_origin: bool,
    pub consecutive_local_origin: u32,
    pub interval_ms: u64,
    pub base_ejection_ms: u64,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

impl Outlier {
    pub(crate) fn compile(o: &OutlierDetection) -> Outlier {
        Outlier {
            consecutive_5xx: o.consecutive_5xx_errors,
            consecutive_gateway: o.consecutive_gateway_errors,
            split_local_origin: o.split_external_local_origin_errors,
            consecutive_local_origin: o.consecutive_local_origin_failures,
            interval_ms: o.interval_ms.max(1),
            base_ejection_ms: o.base_ejection_time_ms,
            max_ejection_percent: o.max_ejection_percent,
            min_health_percent: o.min_health_percent,
        }
    }
}

/// One endpoint's outlier state (per cluster), shared by every worker thread and kept
/// across config updates.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    c5xx: AtomicU32,
    gateway: AtomicU32,
    local: AtomicU32,
    /// Ejected while `now_ms() < ejected_until` (0: never ejected).
    ejected_until: AtomicU64,
    ejected_at: AtomicU64,
    /// The ejection multiplier.
    ejections: AtomicU32,
    /// Serialises ejection decisions for the endpoint.
    lock: Mutex<()>,
}

impl EndpointHealth {
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Acquire)
    }

    /// When the current ejection ends, in [`now_ms`] time.
    pub(crate) fn ejected_until(&self) -> Option<u64> {
        let u = self.ejected_until.load(Ordering::Acquire);
        (now_ms() < u).then_some(u)
    }

    /// Counts an outcome; `true` when the endpoint's threshold is reached (the caller
    /// decides, against `maxEjectionPercent`, whether to [`EndpointHealth::eject`]).
    pub(crate) fn record(&self, o: &Outlier, outcome: Outcome) -> bool {
        let bump =
            |c: &AtomicU32, limit: u32| limit > 0 && c.fetch_add(1, Ordering::AcqRel) + 1 >= limit;
        match outcome {
            Outcome::Status(s) if s < 500 => {
                self.c5xx.store(0, Ordering::Relaxed);
                self.gateway.store(0, Ordering::Relaxed);
                self.local.store(0, Ordering::Relaxed);
                false
            }
            Outcome::Status(s) => {
                let gw = matches!(s, 502..=504);
                let a = bump(&self.c5xx, o.consecutive_5xx);
                let b = if gw {
                    bump(&self.gateway, o.consecutive_gateway)
                } else {
                    self.gateway.store(0, Ordering::Relaxed);
                    false
                };
                a || b
            }
            Outcome::LocalOrigin if o.split_local_origin => {
                bump(&self.local, o.consecutive_local_origin)
            }
            // Not split: a local-origin failure counts as a 5xx and a gateway error.
            Outcome::LocalOrigin => {
                let a = bump(&self.c5xx, o.consecutive_5xx);
                let b = bump(&self.gateway, o.consecutive_gateway);
                a || b
            }
        }
    }

    /// Ejects the endpoint now (see the module docs for how long); returns until when.
    pub(crate) fn eject(&self, o: &Outlier, now: u64) -> u64 {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let until = self.ejected_until.load(Ordering::Acquire);
        if now < until {
            return until;
        }
        // Each interval spent in rotation since the last ejection ended takes one off.
        let mut mult = self.ejections.load(Ordering::Relaxed);
        if until > 0 {
            let healthy = now.saturating_sub(until) / o.interval_ms;
            mult = mult.saturating_sub(u32::try_from(healthy).unwrap_or(u32::MAX));
        }
        mult = mult.saturating_add(1);
        self.ejections.store(mult, Ordering::Relaxed);
        let max = u64::try_from(MAX_EJECTION.as_millis()).unwrap_or(u64::MAX);
        let time = o.base_ejection_ms.saturating_mul(u64::from(mult)).min(max);
        let until = now + time.div_ceil(o.interval_ms) * o.interval_ms;
        self.ejected_at.store(now, Ordering::Relaxed);
        self.ejected_until.store(until, Ordering::Release);
        self.c5xx.store(0, Ordering::Relaxed);
        self.gateway.store(0, Ordering::Relaxed);
        self.local.store(0, Ordering::Relaxed);
        until
    }
}

/// A retry policy, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRule {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    on: u16,
    codes: Vec<u16>,
    pub avoid_previous_hosts: bool,
    /// The back-off's base interval.
    backoff: Duration,
}

fn bit(r: RetryOn) -> u16 {
    1 << (r as u16)
}

/// Why the last try did not give an answer to pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryFailure {
    Connect,
    Reset,
    RefusedStream,
    Timeout,
}

impl RetryRule {
    pub(crate) fn compile(p: &RetryPolicy) -> RetryRule {
        RetryRule {
            attempts: p.attempts,
            per_try_timeout: p.per_try_timeout_ms.map(Duration::from_millis),
            on: p.retry_on.iter().fold(0, |acc, r| acc | bit(*r)),
            codes: p.retriable_status_codes.clone(),
            avoid_previous_hosts: p.avoid_previous_hosts,
            backoff: p.backoff_ms.map_or(RETRY_BASE, Duration::from_millis),
        }
    }

    /// The proxy's own rule where no config says (a passthrough request): retry a
    /// request that could not be sent, twice.
    pub(crate) fn connect_failure_only() -> RetryRule {
        RetryRule {
            attempts: 2,
            per_try_timeout: None,
            on: bit(RetryOn::ConnectFailure),
            codes: Vec::new(),
            avoid_previous_hosts: true,
            backoff: RETRY_BASE,
        }
    }

    fn has(&self, r: RetryOn) -> bool {
        self.on & bit(r) != 0
    }

    /// Whether a response head with `status` (and `grpc-status` in the head) is retried.
    pub(crate) fn retries_status(&self, status: u16, grpc: Option<u32>) -> bool {
        if status >= 500 && self.has(RetryOn::FiveXx) {
            return true;
        }
        if matches!(status, 502..=504) && self.has(RetryOn::GatewayError) {
            return true;
        }
        if status == 409 && self.has(RetryOn::Retriable4xx) {
            return true;
        }
        if self.has(RetryOn::RetriableStatusCodes) && self.codes.contains(&status) {
            return true;
        }
        match grpc {
            Some(1) => self.has(RetryOn::Cancelled),
            Some(4) => self.has(RetryOn::DeadlineExceeded),
            Some(8) => self.has(RetryOn::ResourceExhausted),
            Some(13) => self.has(RetryOn::Internal),
            Some(14) => self.has(RetryOn::Unavailable),
            _ => false,
        }
    }

    /// Whether this rule can retry a request after it was sent (so its body is worth
    /// holding): on statuses, resets, timeouts; gRPC statuses only for gRPC; a
    /// refused stream only upstream h2.
    pub(crate) fn may_retry_sent(&self, grpc: bool, h2: bool) -> bool {
        let any = |rs: &[RetryOn]| rs.iter().any(|r| self.has(*r));
        any(&[
            RetryOn::FiveXx,
            RetryOn::GatewayError,
            RetryOn::Reset,
            RetryOn::Retriable4xx,
            RetryOn::RetriableStatusCodes,
        ]) || (grpc
            && any(&[
                RetryOn::Cancelled,
                RetryOn::DeadlineExceeded,
                RetryOn::Internal,
                RetryOn::ResourceExhausted,
                RetryOn::Unavailable,
            ]))
            || (h2 && self.has(RetryOn::RefusedStream))
            || self.per_try_timeout.is_some()
    }

    /// Whether a try that got no response head is retried.
    pub(crate) fn retries_failure(&self, f: TryFailure) -> bool {
        let any = |rs: &[RetryOn]| rs.iter().any(|r| self.has(*r));
        match f {
            TryFailure::Connect => any(&[
                RetryOn::ConnectFailure,
                RetryOn::FiveXx,
                RetryOn::GatewayError,
            ]),
            TryFailure::Reset => any(&[RetryOn::Reset, RetryOn::FiveXx]),
            TryFailure::RefusedStream => {
                any(&[RetryOn::RefusedStream, RetryOn::Reset, RetryOn::FiveXx])
            }
            TryFailure::Timeout => any(&[RetryOn::FiveXx, RetryOn::GatewayError, RetryOn::Reset]),
        }
    }

    /// The pause before retry number `n` (1-based), as Envoy's: uniform in
    /// [0, min(base × 2^(n-1), 10 × base)], base `retries.backoff` (25 ms by default).
    pub(crate) fn backoff(&self, n: u32, rng: &mut Rng) -> Duration {
        let base = u64::try_from(self.backoff.as_micros()).unwrap_or(u64::MAX);
        let max = base
            .saturating_mul(1u64 << n.saturating_sub(1).min(16))
            .min(base.saturating_mul(10));
        Duration::from_micros(rng.u64(0..=max))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rule(on: &[RetryOn], codes: &[u16]) -> RetryRule {
        RetryRule::compile(&RetryPolicy {
            attempts: 3,
            per_try_timeout_ms: None,
            retry_on: on.to_vec(),
            retriable_status_codes: codes.to_vec(),
            avoid_previous_hosts: true,
            backoff_ms: None,
        })
    }

    #[test]
    fn retry_conditions_follow_envoy() {
        let r = rule(&[RetryOn::FiveXx], &[]);
        assert!(r.retries_status(503, None));
        assert!(r.retries_status(500, None));
        assert!(!r.retries_status(404, None));
        assert!(r.retries_failure(TryFailure::Connect));
        assert!(r.retries_failure(TryFailure::Reset));
        assert!(r.retries_failure(TryFailure::Timeout));
        let r = rule(&[RetryOn::GatewayError], &[]);
        assert!(r.retries_status(504, None));
        assert!(!r.retries_status(500, None));
        assert!(!r.retries_failure(TryFailure::Reset));
        let r = rule(&[RetryOn::RetriableStatusCodes], &[503]);
        assert!(r.retries_status(503, None));
        assert!(!r.retries_status(502, None));
        // Codes alone, without the condition, retry nothing.
        assert!(!rule(&[], &[503]).retries_status(503, None));
        let r = rule(&[RetryOn::ConnectFailure, RetryOn::Unavailable], &[]);
        assert!(!r.retries_status(503, None));
        assert!(r.retries_status(200, Some(14)));
        assert!(!r.retries_status(200, Some(13)));
        assert!(!r.retries_failure(TryFailure::Reset));
        assert!(r.retries_failure(TryFailure::Connect));
        assert!(rule(&[RetryOn::RefusedStream], &[]).retries_failure(TryFailure::RefusedStream));
        assert!(rule(&[RetryOn::Retriable4xx], &[]).retries_status(409, None));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let mut rng = Rng::with_seed(5);
        let default = rule(&[RetryOn::Reset], &[]);
        let mut slow = default.clone();
        slow.backoff = Duration::from_millis(400);
        for (r, base) in [(&default, 25u64), (&slow, 400)] {
            for n in 1..10 {
                let mut longest = Duration::ZERO;
                for _ in 0..200 {
                    let d = r.backoff(n, &mut rng);
                    let cap = (base << (n - 1)).min(10 * base);
                    assert!(d <= Duration::from_millis(cap), "{base} {n}: {d:?}");
                    longest = longest.max(d);
                }
                // Jittered over the whole range: the longest of 200 is near the cap.
                let cap = (base << (n - 1)).min(10 * base);
                assert!(
                    longest >= Duration::from_millis(cap / 2),
                    "{base} {n}: {longest:?}"
                );
            }
        }
    }

    fn outlier(c5: u32, gw: u32) -> Outlier {
        Outlier::compile(&OutlierDetection {
            consecutive_5xx_errors: c5,
            consecutive_gateway_errors: gw,
            interval_ms: 1000,
            base_ejection_time_ms: 5000,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        })
    }

    #[test]
    fn consecutive_errors_reach_the_threshold_and_success_resets() {
        let o = outlier(3, 0);
        let h = EndpointHealth::default();
        assert!(!h.record(&o, Outcome::Status(503)));
        assert!(!h.record(&o, Outcome::Status(500)));
        assert!(!h.record(&o, Outcome::Status(200)));
        assert!(!h.record(&o, Outcome::Status(503)));
        assert!(!h.record(&o, Outcome::LocalOrigin));
        assert!(h.record(&o, Outcome::Status(502)));
        // Gateway errors only.
        let o = outlier(0, 2);
        let h = EndpointHealth::default();
        assert!(!h.record(&o, Outcome::Status(500)));
        assert!(!h.record(&o, Outcome::Status(503)));
        assert!(!h.record(&o, Outcome::Status(500)));
        assert!(!h.record(&o, Outcome::Status(504)));
        assert!(h.record(&o, Outcome::LocalOrigin));
    }

    #[test]
    fn ejection_time_grows_with_ejections_and_decays_with_health() {
        let o = outlier(1, 0);
        let h = EndpointHealth::default();
        let t0 = 100_000;
        assert_eq!(h.eject(&o, t0), t0 + 5000);
        assert!(h.is_ejected(t0 + 4999));
        assert!(!h.is_ejected(t0 + 5000));
        // Ejected again right away: twice as long.
        let t1 = t0 + 5000;
        assert_eq!(h.eject(&o, t1), t1 + 10_000);
        // Ejecting an ejected endpoint changes nothing.
        assert_eq!(h.eject(&o, t1 + 1), t1 + 10_000);
        // After 2 healthy intervals the multiplier is back to 0: base time again.
        let t2 = t1 + 10_000 + 2000;
        assert_eq!(h.eject(&o, t2), t2 + 5000);
        // Times round up to the interval.
        let o = Outlier {
            base_ejection_ms: 1500,
            ..outlier(1, 0)
        };
        assert_eq!(EndpointHealth::default().eject(&o, 10), 10 + 2000);
    }

    #[test]
    fn limits_refuse_over_the_max_and_free_on_drop() {
        let s = Arc::new(ClusterState::default());
        let l = Limits {
            max_pending: Some(1),
            ..Limits::default()
        };
        let a = s.pending(&l).unwrap();
        assert_eq!(s.pending(&l).unwrap_err(), Overflow::Pending);
        drop(a);
        let _b = s.pending(&l).unwrap();
        // No limit: always.
        let many: Vec<_> = (0..100).map(|_| s.request(&l).unwrap()).collect();
        assert_eq!(s.active.load(Ordering::Relaxed), 100);
        drop(many);
        assert_eq!(s.active.load(Ordering::Relaxed), 0);
        s.overflowed(Overflow::Pending, 1);
        assert_eq!(s.last_trip().unwrap().limit, "http1MaxPendingRequests");
        let mut out = String::new();
        s.render("outbound|80||a", 0, &mut out);
        assert!(
            out.contains(
                "envoy_cluster_upstream_rq_pending_overflow{cluster_name=\"outbound|80||a\"} 1"
            ),
            "{out}"
        );
    }
}
